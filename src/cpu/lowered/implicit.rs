//! The forward pass as an implicit GEMM over a channels-last copy of the
//! input, on the packed GEMM's micro-kernel.
//!
//! Each task takes a band of output rows of one image, or several whole
//! small images, and where those are too few for the threads, a range of
//! the panels of output channels. Where bands within the images would
//! leave the threads' last round part-filled (a chunk of a few images on
//! many threads), the tasks are instead runs over the rows of all the
//! images, one image after another, a multiple of the thread count of them;
//! a run that crosses from one image into the next is a band of each.
//!
//! A band copies the input rows it reads into padded channels-last planes
//! — one per phase of the vertical stride, rows `pitch = owv · stride_w`
//! columns wide — so that output position `(r, ow)` of the band reads, for
//! kernel row `kh`, the `kw_n · C` contiguous floats at
//! `plane(kh) + (r·owv + ow) · stride_w · C`. The product is then
//! `C[q][co] = Σ A[q][(kh, kw, ci)] · B[(kh, kw, ci)][co]` over the task's
//! positions `q`, with `A` read in place (the positions are its rows,
//! broadcast by the micro-kernel from a row address each, so a tile runs
//! on across output rows and images) and `B` the weights, packed once per
//! call into panels of output channels. The virtual positions `ow ≥ OW`
//! of a row (`owv − OW`, where the next row's reads begin) are only
//! copied, never computed; kernel rows that read padding only are skipped
//! per tile.
//!
//! Nothing of the lowered input is packed and the input is copied once,
//! with vector transposes, where the NCHW lowering ([`super::packed`]) pays
//! for padding and packing rows of a few columns one short run at a time:
//! a strided layer over small images (MNIST's 3×3/2 at 12×12) spends a
//! third of its time there.

use std::ops::Range;

use rayon::prelude::*;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::cpu::gate::{Gate, Pending};
use crate::cpu::packed_gemm::{tile_a_rows, ARows, Packed, WithPacked, MAX_MR};
use crate::cpu::par::{per_item, split_range, SendPtr};
use crate::cpu::scratch::{Slot, Tuning};
use crate::cpu::simd::load_upto;
use crate::cpu::ConvShape;

/// Preferred output positions of one task.
const TASK_POSITIONS: usize = 1024;
/// Fewest output positions of one task where the images have them and the
/// packed weights are more than [`CACHED_WEIGHTS_FLOATS`]: every task
/// streams the weights of its panels, so a task of a few positions (a row
/// of a 7×7 image) would be bound by that stream. Where positions are too
/// few for the threads, tasks split the panels of output channels instead.
const MIN_TASK_POSITIONS: usize = 96;
/// Packed weights (floats) up to which short tasks stream them well enough:
/// 4 MiB. On the Xeon at 8 and 16 threads, the longer tasks with split
/// panels measured +29–63 % on ResNet's 512-channel layer at 7×7 (9.4 MiB)
/// and +12–28 % on DCGAN's 4×4 outputs (8.4 MiB), but −7 to +8 % on the
/// 256-channel layer at 14×14 (2.3 MiB).
const CACHED_WEIGHTS_FLOATS: usize = 1 << 20;
/// Largest share of phantom positions per virtual row (`owv − OW` of
/// `owv`): 1/2. They are not computed, but copied into the planes with
/// their padding. (Until tiles took a row address each they were computed,
/// and the share was held to 1/8: ResNet's 512-channel layer at 7×7, 2 of
/// 9, and DCGAN's 4×4 outputs, 1 of 5, now run here: on Zen 4 at AVX2
/// +5–16 % and +22–30 % against the NCHW lowering, at AVX-512 −6 to +5 %
/// and +13–20 %.)
const MAX_WASTE: usize = 2;
/// Most products per tile (kernel taps, with horizontal dilation).
const MAX_PARTS: usize = 64;

/// How one call is cut and laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Plan {
    /// Most output rows of a task's run (a whole image where `images > 1`).
    band: usize,
    /// Tasks the batch is cut into before the panels are split: bands or
    /// runs of rows where `images == 1`, groups of whole images otherwise.
    pieces: usize,
    /// The pieces are runs over the rows of all the images, one image after
    /// another (else bands of `band` rows within each image).
    across: bool,
    /// Whole images per task (more than one only where `band` is a whole
    /// image): a task's tiles run on across its images, so small images do
    /// not each end in a part-empty tile.
    images: usize,
    /// Ranges the panels of output channels are split into, each a task
    /// of its own (more than one where positions are too few to give every
    /// thread two tasks).
    panels: usize,
}

/// Sizes of the problem, in the terms of the module's description.
#[derive(Clone, Copy)]
pub(super) struct Geo {
    pub(super) c: usize,
    pub(super) co: usize,
    /// Output channels rounded up to whole `B` panels (the row length of
    /// the task's `C`).
    pub(super) co_pad: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) stride: [usize; 2],
    pub(super) dil: [usize; 2],
    pub(super) pad: [usize; 2],
    pub(super) oh: usize,
    pub(super) ow: usize,
    pub(super) owv: usize,
    pub(super) pitch: usize,
}

impl Geo {
    pub(super) fn of<S: Packed>(s: &ConvShape) -> Geo {
        let (stride, dil) = ([s.stride[1], s.stride[2]], [s.dilation[1], s.dilation[2]]);
        let ow = s.output[2];
        // Columns the output positions read, from the padded row's start.
        let need = (ow - 1) * stride[1] + (s.kernel[2] - 1) * dil[1] + 1;
        let owv = need.div_ceil(stride[1]).max(ow);
        Geo {
            c: s.c_in,
            co: s.c_out,
            co_pad: s.c_out.div_ceil(S::NR) * S::NR,
            h: s.input[1],
            w: s.input[2],
            kh: s.kernel[1],
            kw: s.kernel[2],
            stride,
            dil,
            pad: [s.pad[1], s.pad[2]],
            oh: s.output[1],
            ow,
            owv,
            pitch: owv * stride[1],
        }
    }

    /// Padded input rows a band of `rows` output rows reads.
    fn band_rows_in(&self, rows: usize) -> usize {
        (rows - 1) * self.stride[0] + (self.kh - 1) * self.dil[0] + 1
    }

    /// Floats of one phase plane of a band of `rows` output rows (one
    /// slack row).
    pub(super) fn plane_len(&self, rows: usize) -> usize {
        (self.band_rows_in(rows).div_ceil(self.stride[0]) + 1) * self.pitch * self.c
    }

    /// Floats of a task's input planes: every phase plane, and slack for
    /// the reads of the rows of a partial last tile.
    pub(super) fn input_len<S: Packed>(&self, rows: usize) -> usize {
        self.planes_len(rows) + (S::MR * self.stride[1] + self.kw * self.dil[1] + 1) * self.c
    }

    /// Floats of one image's phase planes in a task of `rows` output rows.
    fn planes_len(&self, rows: usize) -> usize {
        self.stride[0] * self.plane_len(rows)
    }

    /// Floats of a task's `C`.
    fn output_len(&self, rows: usize) -> usize {
        rows * self.ow * self.co_pad
    }

    /// Floats of the input planes of a task of `images` × `rows` output
    /// rows, one image after another, with the slack after the last.
    fn task_input_len<S: Packed>(&self, rows: usize, images: usize) -> usize {
        (images - 1) * self.planes_len(rows) + self.input_len::<S>(rows)
    }

    /// Floats of the scratch of a task of `images` × `rows` output rows.
    fn task_len<S: Packed>(&self, rows: usize, images: usize) -> usize {
        self.task_input_len::<S>(rows, images) + images * self.output_len(rows)
    }

    /// Depth of the product: kernel taps × input channels.
    fn depth(&self) -> usize {
        self.kh * self.kw * self.c
    }
}

/// The plan for `s`, if this path applies: a 2-D convolution (no kernel
/// over depth) of one group with more than one tap, at most
/// 1/[`MAX_WASTE`] phantom positions, packed weights within
/// [`Tuning::packed_weights_floats`], a task of one output row within a worker's share of
/// the rest, and two tasks per thread (bands, images and ranges of panels).
pub(super) fn plan<S: Packed>(s: &ConvShape, t: &Tuning, threads: usize) -> Option<Plan> {
    plan_with::<S>(s, t, threads, true)
}

/// [`plan`], with the rule of two tasks per thread (a matter of speed, not
/// of what the path can compute) only where `task_rule`.
pub(super) fn plan_with<S: Packed>(
    s: &ConvShape,
    t: &Tuning,
    threads: usize,
    task_rule: bool,
) -> Option<Plan> {
    if !t.implicit_forward
        || s.groups != 1
        || s.input[0] != 1
        || s.kernel[0] != 1
        || s.kernel_spatial() == 1
        || s.kernel_spatial() > MAX_PARTS
    {
        return None;
    }
    let g = Geo::of::<S>(s);
    let weights = g.depth() * g.co_pad;
    if MAX_WASTE * (g.owv - g.ow) > g.owv || weights > t.packed_weights_floats() {
        return None;
    }
    let budget = (t.scratch_bytes / 4 - weights) / threads.max(1);
    let task = |rows: usize| g.task_len::<S>(rows, 1);
    // Bands of about TASK_POSITIONS positions, cut further so that every
    // thread gets four tasks where the images are few.
    let want = if threads > 1 { 4 * threads } else { 1 };
    let per_image = want.div_ceil(s.n).min(g.oh);
    let least = if weights > CACHED_WEIGHTS_FLOATS {
        MIN_TASK_POSITIONS
    } else {
        1
    };
    let mut band = (TASK_POSITIONS / g.owv)
        .clamp(1, g.oh)
        .min(g.oh.div_ceil(per_image))
        .max(least.div_ceil(g.ow).min(g.oh));
    while task(band) > budget {
        if band == 1 {
            return None;
        }
        band = band.div_ceil(2);
    }
    // Where bands cut image by image leave the last round of the threads
    // part-filled by more than a tenth (56 rows of 7 images in bands of 6
    // rows are 70 tasks, five rounds of 16 threads for 4.4 rounds' work),
    // runs of rows over the whole batch instead: a multiple of the threads
    // of them (the nearest to the runs of `band` rows that fits). Elsewhere
    // the bands stay within images: a run crossing into the next image is
    // two shorter bands, each with its halo rows and last part-empty tile.
    let rows_total = s.n * g.oh;
    let mut pieces = s.n * g.oh.div_ceil(band);
    let threads_n = threads.max(1);
    let filled = pieces as f64 / (pieces.div_ceil(threads_n) * threads_n) as f64;
    let mut across = false;
    if band < g.oh && threads > 1 && filled < 0.9 {
        pieces = rows_total.div_ceil(band);
        let fits = |p: usize| {
            let b = rows_total.div_ceil(p.max(1));
            (threads..=rows_total).contains(&p)
                && b <= g.oh
                && task(b) <= budget
                && b * g.ow >= least.min(g.oh * g.ow)
        };
        let (down, up) = (
            pieces / threads * threads,
            pieces.div_ceil(threads) * threads,
        );
        let nearer_down = pieces - down < up - pieces;
        pieces = match (fits(down), fits(up)) {
            (true, true) if nearer_down => down,
            (_, true) => up,
            (true, false) => down,
            _ => pieces,
        };
        band = rows_total.div_ceil(pieces);
        across = true;
    }
    // Small whole images: several a task, up to TASK_POSITIONS, keeping
    // two tasks per thread, and at least `least` positions.
    let mut images = 1;
    if band == g.oh {
        let per = g.oh * g.ow;
        images = (TASK_POSITIONS / per)
            .min(s.n / (2 * threads.max(1)))
            .max(least.div_ceil(per))
            .clamp(1, s.n);
        while images > 1 && g.task_len::<S>(band, images) > budget {
            images -= 1;
        }
    }
    if band == g.oh {
        pieces = s.n.div_ceil(images);
    }
    // Too few of them for two tasks per thread: split the panels too. Still
    // too few (a 1-D convolution over a few long signals, whose tasks are
    // whole rows) go the NCHW way, which cuts rows.
    let tasks = pieces;
    let panels = if threads > 1 && tasks < 2 * threads {
        (2 * threads).div_ceil(tasks).min(g.co_pad / S::NR)
    } else {
        1
    };
    if task_rule && threads > 1 && tasks * panels < 2 * threads {
        return None;
    }
    Some(Plan {
        band,
        pieces,
        across,
        images,
        panels,
    })
}

/// `y = conv(x, w)` by the plan; `x` and `y` channels-last (`[n, h, w,
/// c]`) when `nhwc`, else NCHW.
///
/// With a `gate`, the weights and the images of `x` may still be arriving and
/// `y`'s images leaving: the weights are packed once the gate has the first
/// image, the threads take the tasks in order of their images, each asking
/// the gate for the last image it reads, and the gate hears of each image
/// whose tasks have all finished.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward<S: Packed>(
    s: &ConvShape,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    t: &Tuning,
    plan: Plan,
    nhwc: bool,
    gate: Option<&dyn Gate>,
) {
    let g = Geo::of::<S>(s);
    let (band, per) = (plan.band, plan.images);
    let (np, ranges) = (g.co_pad / S::NR, plan.panels);
    let tasks: Vec<(Vec<Segment>, Range<usize>)> = segments(&g, s.n, plan)
        .into_iter()
        .flat_map(|piece| {
            (0..ranges).map(move |q| (piece.clone(), q * np / ranges..(q + 1) * np / ranges))
        })
        .filter(|t| !t.1.is_empty())
        .collect();
    let yp = SendPtr(y.as_mut_ptr());
    let wlen = g.depth() * g.co_pad;
    if gate.is_some_and(|gate| !gate.input_ready(0)) {
        return;
    }
    t.scratch(Slot::Weights, wlen, |wb| {
        pack_weights::<S>(&g, w, wb);
        let wb: &[f32] = wb;
        let len = g.task_len::<S>(band, per);
        let run = |piece: &[Segment], panels: &Range<usize>| {
            t.scratch(Slot::Task, len, |buf| {
                let (input, out) = buf.split_at_mut(g.task_input_len::<S>(band, per));
                for (images, rows) in piece {
                    let task = Task {
                        g: &g,
                        x,
                        wb,
                        input: &mut *input,
                        out: &mut *out,
                        y: yp,
                        images: images.clone(),
                        rows: rows.clone(),
                        panels: panels.clone(),
                        nhwc,
                    };
                    // SAFETY: the instruction set is available (checked by
                    // the caller); this task alone writes its rows of its
                    // images.
                    unsafe { S::enter(task) }
                }
            })
        };
        let Some(gate) = gate else {
            tasks
                .par_iter()
                .for_each(|(piece, panels)| run(piece, panels));
            return;
        };
        // In order of their images, whichever thread is free next.
        let spans: Vec<Range<usize>> = tasks
            .iter()
            .map(|(piece, _)| piece[0].0.start..piece[piece.len() - 1].0.end)
            .collect();
        let pending = Pending::new(s.n, spans.iter());
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let workers = rayon::current_num_threads().min(tasks.len()).max(1);
        (0..workers)
            .into_par_iter()
            .with_max_len(1)
            .for_each(|_| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((piece, panels)) = tasks.get(i) else {
                    break;
                };
                let span = spans[i].clone();
                if !failed.load(Ordering::Relaxed) && gate.input_ready(span.end - 1) {
                    run(piece, panels);
                } else {
                    failed.store(true, Ordering::Relaxed);
                }
                pending.finished(span, gate);
            });
    });
}

/// A band of output rows of a range of images (every row of several
/// whole images, or some rows of one).
type Segment = (Range<usize>, Range<usize>);

/// The pieces of the plan, in order, each as the bands it computes one
/// after another: groups of `images` whole images; bands of `band` rows of
/// each image; or, `across`, runs of the rows of all the images one image
/// after another, cut into `pieces` nearly equal runs (of `band` rows or one
/// fewer), a run crossing into the next image split at the boundary.
fn segments(g: &Geo, n: usize, plan: Plan) -> Vec<Vec<Segment>> {
    if plan.images > 1 {
        return (0..plan.pieces)
            .map(|b| vec![(b * plan.images..((b + 1) * plan.images).min(n), 0..g.oh)])
            .collect();
    }
    if !plan.across {
        let bands = g.oh.div_ceil(plan.band);
        return (0..n * bands)
            .map(|i| {
                let (image, r) = (i / bands, i % bands);
                vec![(
                    image..image + 1,
                    r * plan.band..((r + 1) * plan.band).min(g.oh),
                )]
            })
            .collect();
    }
    (0..plan.pieces)
        .map(|i| {
            per_item(split_range(n * g.oh, plan.pieces, i), g.oh)
                .map(|(image, rows)| (image..image + 1, rows))
                .collect()
        })
        .collect()
}

/// Packs `w` (`co × c × kh × kw`) as `B` panels of `NR` output channels
/// over depth `(kh, kw, ci)`: `wb[jp][((kh·KW + kw)·C + ci)·NR + j] =
/// w[jp·NR + j][ci][kh][kw]`, zero past the last channel; one task per
/// panel.
fn pack_weights<S: Packed>(g: &Geo, w: &[f32], wb: &mut [f32]) {
    let k = g.depth();
    wb.par_chunks_mut(k * S::NR)
        .enumerate()
        .for_each(|(jp, panel)| {
            // SAFETY: the instruction set is available (checked by the
            // caller).
            unsafe { S::enter(PackPanel { g, w, jp, panel }) }
        });
}

/// One panel of [`pack_weights`].
struct PackPanel<'a> {
    g: &'a Geo,
    w: &'a [f32],
    jp: usize,
    panel: &'a mut [f32],
}

impl WithPacked for PackPanel<'_> {
    type Output = ();
    /// `N × N` transposes of the weights read as a `co × K` matrix (row `co`
    /// holds its `(ci, tap)` depths), each transposed row `(ci, tap)` stored
    /// at its panel row `tap·C + ci`.
    #[inline(always)]
    unsafe fn run<S: Packed>(self) {
        let (g, l_n, nr) = (self.g, S::N, S::NR);
        let (k, taps) = (g.depth(), g.kh * g.kw);
        let out = self.panel.as_mut_ptr();
        for jb in (0..nr).step_by(l_n) {
            let co0 = self.jp * nr + jb;
            let live = g.co.saturating_sub(co0).min(l_n);
            for k0 in (0..k).step_by(l_n) {
                let n = l_n.min(k - k0);
                S::transpose(
                    |l| {
                        let src = self.w.as_ptr().add((co0 + l) * k + k0);
                        if l >= live {
                            S::zero()
                        } else {
                            load_upto(src, n)
                        }
                    },
                    |j, v| {
                        if j < n {
                            let (ci, tap) = ((k0 + j) / taps, (k0 + j) % taps);
                            v.store(out.add((tap * g.c + ci) * nr + jb));
                        }
                    },
                );
            }
        }
    }
}

/// One task: a band of output rows of one or more images.
struct Task<'a> {
    g: &'a Geo,
    /// The batch's input.
    x: &'a [f32],
    wb: &'a [f32],
    input: &'a mut [f32],
    out: &'a mut [f32],
    y: SendPtr,
    images: Range<usize>,
    rows: Range<usize>,
    /// Panels of output channels it computes.
    panels: Range<usize>,
    /// `x` and `y` are channels-last.
    nhwc: bool,
}

impl WithPacked for Task<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Packed>(self) {
        let g = self.g;
        let rows = self.rows.len();
        let plane_len = g.plane_len(rows);
        let (img_in, img_planes) = (g.c * g.h * g.w, g.planes_len(rows));
        for (i, n) in self.images.clone().enumerate() {
            let x = &self.x[n * img_in..][..img_in];
            let dst = &mut self.input[i * img_planes..];
            if self.nhwc {
                fill_planes_nhwc(g, x, self.rows.start, rows, plane_len, dst);
            } else {
                fill_planes::<S>(g, x, self.rows.start, rows, plane_len, dst);
            }
        }
        let (c, nr, mr) = (g.c, S::NR, S::MR);
        // Real positions `q` of the task, image by image (`r·OW + ow`
        // within one); their rows of `A` start at virtual position
        // `r·owv + ow` of the image's planes, so a tile may span output
        // rows and images and no phantom position is computed.
        let per_image = rows * g.ow;
        let positions = self.images.len() * per_image;
        let lda = g.stride[1] * c;
        // Each position's row of `A` and its band row, stepped along the
        // positions (image, row, column) without a division per position:
        // a task of few channels (a 3-channel stem) spent a sixth of its
        // time dividing here.
        let mut pos_at = Vec::with_capacity(positions);
        let mut band_row = Vec::with_capacity(positions);
        for i in 0..self.images.len() {
            for r in 0..rows {
                let start = i * img_planes + r * g.owv * lda;
                pos_at.extend((0..g.ow).map(|ow| start + ow * lda));
                band_row.extend(std::iter::repeat_n(r, g.ow));
            }
        }
        let inp = self.input.as_ptr();
        // Under test, a `C` left over from an earlier task of the thread
        // is poisoned, so that storing a part this task did not compute
        // shows.
        #[cfg(test)]
        self.out.fill(f32::NAN);
        let out = self.out.as_mut_ptr();
        // Kernel rows, with their columns in one product where those are
        // adjacent (no horizontal dilation): (input offset, depth offset,
        // depth, kernel row) of each product per tile.
        let mut parts = [(0usize, 0usize, 0usize, 0usize); MAX_PARTS];
        let mut count = 0;
        for kh in 0..g.kh {
            let dy = kh * g.dil[0];
            let base = (dy % g.stride[0]) * plane_len + (dy / g.stride[0]) * g.pitch * c;
            if g.dil[1] == 1 {
                parts[count] = (base, kh * g.kw * c, g.kw * c, kh);
                count += 1;
            } else {
                for kw in 0..g.kw {
                    parts[count] = (base + kw * g.dil[1] * c, (kh * g.kw + kw) * c, c, kh);
                    count += 1;
                }
            }
        }
        // The furthest read of any tile (a partial last tile repeats its
        // last row) stays inside the task's input.
        let last = pos_at[positions - 1];
        assert!(parts[..count]
            .iter()
            .all(|&(off, _, kc, _)| off + last + kc <= self.input.len()));
        let k = g.depth();
        let steps = depth_steps::<S>(&parts[..count]);
        let groups = step_groups::<S>(&steps);
        let tiles = positions.div_ceil(mr);
        // Kernel rows that read only padding rows for every position of a
        // tile (the top and bottom output rows) are skipped: a tile's first
        // product that is not skipped stores, later ones add, and a tile
        // none reaches is zero. Bit `kh` of a band row's mask: kernel row
        // `kh` reads an input row there.
        let row_live: Vec<u64> = (0..rows)
            .map(|r| {
                let top = ((self.rows.start + r) * g.stride[0]) as isize - g.pad[0] as isize;
                (0..g.kh)
                    .filter(|&kh| (0..g.h as isize).contains(&(top + (kh * g.dil[0]) as isize)))
                    .fold(0, |m, kh| m | 1 << kh)
            })
            .collect();
        let tile_live: Vec<u64> = (0..tiles)
            .map(|t| {
                (t * mr..((t + 1) * mr).min(positions)).fold(0, |m, q| m | row_live[band_row[q]])
            })
            .collect();
        // Row offsets of every tile's `A` rows, and whether they are evenly
        // spaced (the tile within one output row).
        let tile_rows: Vec<([usize; MAX_MR], bool)> = (0..tiles)
            .map(|t| {
                let at: [usize; MAX_MR] =
                    std::array::from_fn(|i| pos_at[(t * mr + i).min(positions - 1)]);
                let even = (1..mr).all(|i| at[i] == at[0] + i * lda);
                (at, even)
            })
            .collect();
        let mut written = vec![false; tiles];
        for jp in self.panels.clone() {
            let cols = nr.min(g.co - jp * nr);
            let panel = self.wb.as_ptr().add(jp * k * nr);
            written.fill(false);
            // Each group's slice of the panel stays in cache (L1 at
            // AVX-512, L2 at AVX2) while every tile of positions passes
            // over it, the tile's `C` loaded and stored once a group.
            for group in &groups {
                let group = &steps[group.clone()];
                let reach = group.iter().fold(0u64, |m, s| m | 1 << s.3);
                for (t, done) in written.iter_mut().enumerate() {
                    let live = tile_live[t];
                    if live & reach == 0 {
                        continue;
                    }
                    let p0 = t * mr;
                    let (at, even) = &tile_rows[t];
                    let (base, rows_of_a) = if *even {
                        (at[0], ARows::Stride(lda))
                    } else {
                        (0, ARows::At(at))
                    };
                    for &(off, k0, kc, kh) in group {
                        if live >> kh & 1 == 0 {
                            continue;
                        }
                        tile_a_rows::<S>(
                            kc,
                            inp.add(off + base),
                            rows_of_a,
                            panel.add(k0 * nr),
                            out.add(p0 * g.co_pad + jp * nr),
                            g.co_pad,
                            *done,
                            mr.min(positions - p0),
                            cols,
                        );
                        *done = true;
                    }
                }
            }
            for (t, _) in written.iter().enumerate().filter(|(_, done)| !**done) {
                let p0 = t * mr;
                for p in p0..(p0 + mr).min(positions) {
                    let row = out.add(p * g.co_pad + jp * nr);
                    std::ptr::write_bytes(row, 0, cols);
                }
            }
        }
        let chans = self.panels.start * nr..(self.panels.end * nr).min(g.co);
        for (i, n) in self.images.clone().enumerate() {
            let cbuf = &self.out[i * per_image * g.co_pad..];
            let y0 = n * g.co * g.oh * g.ow;
            if self.nhwc {
                store_rows_nhwc(g, cbuf, self.y, y0, self.rows.clone(), chans.clone());
            } else {
                store_rows::<S>(g, cbuf, self.y, y0, self.rows.clone(), chans.clone());
            }
        }
    }
}

/// The products of `parts` (input offset, depth offset, depth, kernel row) cut into
/// steps of at most [`Packed::IMPLICIT_STEP`] depth, evenly.
fn depth_steps<S: Packed>(
    parts: &[(usize, usize, usize, usize)],
) -> Vec<(usize, usize, usize, usize)> {
    let mut steps = Vec::with_capacity(parts.len() * 2);
    for &(off, k0, kc, kh) in parts {
        let n = kc.div_ceil(S::IMPLICIT_STEP);
        let mut at = 0;
        for i in 0..n {
            let len = (kc * (i + 1)) / n - at;
            steps.push((off + at, k0 + at, len, kh));
            at += len;
        }
    }
    steps
}

/// Consecutive runs of `steps` whose depths add up to at most
/// [`Packed::IMPLICIT_STEP`] (a step alone where it is that deep): the shallow
/// kernel rows of a layer with few channels (the stem's 21) go over each
/// tile together.
fn step_groups<S: Packed>(steps: &[(usize, usize, usize, usize)]) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut depth) = (0, 0);
    for (i, step) in steps.iter().enumerate() {
        if i > start && depth + step.2 > S::IMPLICIT_STEP {
            groups.push(start..i);
            (start, depth) = (i, 0);
        }
        depth += step.2;
    }
    if start < steps.len() {
        groups.push(start..steps.len());
    }
    groups
}

/// Writes the phase planes of the band of `rows` output rows from `oh0`:
/// padded row `t` of the band (input row `oh0·stride_h + t − pad_h`) at
/// `(t mod stride_h) · plane_len + (t div stride_h) · pitch · C`, each row
/// `pitch` channels-last columns with input column `iw` at `pad_w + iw`.
#[inline(always)]
pub(super) unsafe fn fill_planes<S: Packed>(
    g: &Geo,
    x: &[f32],
    oh0: usize,
    rows: usize,
    plane_len: usize,
    dst: &mut [f32],
) {
    let (c, l_n) = (g.c, S::N);
    let rows_in = RowsIn::new(g, oh0, rows, plane_len);
    let (wn, lead) = (rows_in.wn, rows_in.lead);
    let band = rows_in.pad(dst);
    // The data a few channels at a time over every row, so the input is
    // read as a few sequential streams (one plane per channel) rather than
    // a jump across every channel's plane per row.
    let plane = g.h * g.w;
    let out = dst.as_mut_ptr().add(lead);
    for c0 in (0..c).step_by(l_n) {
        let cn = l_n.min(c - c0);
        for t in band.clone() {
            let Some(ih) = rows_in.input_row(t) else {
                continue;
            };
            let src = x.as_ptr().add(c0 * plane + ih * g.w);
            let out = out.add(rows_in.at(t) + c0);
            for w0 in (0..wn).step_by(l_n) {
                let n = l_n.min(wn - w0);
                transpose_block::<S>(src.add(w0), plane, cn, n, out.add(w0 * c), c);
            }
        }
    }
}

/// Where a band's padded input rows go in its phase planes, and which
/// input rows and columns fill them.
struct RowsIn {
    oh0: usize,
    rows: usize,
    plane_len: usize,
    row_len: usize,
    stride_h: usize,
    pad_h: usize,
    h: usize,
    /// Input columns that land inside a row (those past it are never
    /// read), and the floats of left padding before them.
    wn: usize,
    lead: usize,
    c: usize,
}

impl RowsIn {
    fn new(g: &Geo, oh0: usize, rows: usize, plane_len: usize) -> RowsIn {
        RowsIn {
            oh0,
            rows: g.band_rows_in(rows),
            plane_len,
            row_len: g.pitch * g.c,
            stride_h: g.stride[0],
            pad_h: g.pad[0],
            h: g.h,
            wn: g.w.min(g.pitch.saturating_sub(g.pad[1])),
            lead: g.pad[1].min(g.pitch) * g.c,
            c: g.c,
        }
    }

    /// Offset of padded row `t` of the band.
    fn at(&self, t: usize) -> usize {
        (t % self.stride_h) * self.plane_len + (t / self.stride_h) * self.row_len
    }

    /// The input row padded row `t` holds, if any.
    fn input_row(&self, t: usize) -> Option<usize> {
        let ih = (self.oh0 * self.stride_h + t) as isize - self.pad_h as isize;
        (ih >= 0 && ih < self.h as isize).then_some(ih as usize)
    }

    /// Zeroes the padding of every row of the band (whole rows outside the
    /// input); returns the band's rows.
    fn pad(&self, dst: &mut [f32]) -> Range<usize> {
        for t in 0..self.rows {
            let row = &mut dst[self.at(t)..][..self.row_len];
            if self.input_row(t).is_none() {
                row.fill(0.0);
            } else {
                row[..self.lead].fill(0.0);
                row[self.lead + self.wn * self.c..].fill(0.0);
            }
        }
        0..self.rows
    }
}

/// [`fill_planes`] from a channels-last image (`[h][w][c]`): each row's
/// columns are one contiguous copy.
fn fill_planes_nhwc(
    g: &Geo,
    x: &[f32],
    oh0: usize,
    rows: usize,
    plane_len: usize,
    dst: &mut [f32],
) {
    let rows_in = RowsIn::new(g, oh0, rows, plane_len);
    let len = rows_in.wn * g.c;
    for t in rows_in.pad(dst) {
        if let Some(ih) = rows_in.input_row(t) {
            let at = rows_in.at(t) + rows_in.lead;
            dst[at..at + len].copy_from_slice(&x[ih * g.w * g.c..][..len]);
        }
    }
}

/// [`store_rows`] into a channels-last image (`[oh][ow][co]`): each
/// position's channels are one contiguous copy.
fn store_rows_nhwc(
    g: &Geo,
    cbuf: &[f32],
    y: SendPtr,
    y0: usize,
    rows: Range<usize>,
    chans: Range<usize>,
) {
    for r in 0..rows.len() {
        for ow in 0..g.ow {
            let src = &cbuf[(r * g.ow + ow) * g.co_pad + chans.start..][..chans.len()];
            // SAFETY: this task alone writes these outputs of the image.
            let at = y0 + ((rows.start + r) * g.ow + ow) * g.co + chans.start;
            let dst = unsafe { y.slice(at, chans.len()) };
            dst.copy_from_slice(src);
        }
    }
}

/// Writes the band's outputs from its `C` (`[position][co]`) into the
/// image's `y` planes.
#[inline(always)]
unsafe fn store_rows<S: Packed>(
    g: &Geo,
    cbuf: &[f32],
    y: SendPtr,
    y0: usize,
    rows: Range<usize>,
    chans: Range<usize>,
) {
    let l_n = S::N;
    let plane = g.oh * g.ow;
    assert!(rows.len() * g.ow * g.co_pad <= cbuf.len());
    for r in 0..rows.len() {
        let src = cbuf.as_ptr().add(r * g.ow * g.co_pad);
        let dst = y.at(y0 + (rows.start + r) * g.ow);
        for co0 in chans.clone().step_by(l_n) {
            let cn = l_n.min(chans.end - co0);
            for w0 in (0..g.ow).step_by(l_n) {
                let n = l_n.min(g.ow - w0);
                let from = src.add(w0 * g.co_pad + co0);
                transpose_block::<S>(from, g.co_pad, n, cn, dst.add(co0 * plane + w0), plane);
            }
        }
    }
}

/// Transposes the `rows × cols` block (both at most `S::N`) whose row `l`
/// is the `cols` floats at `src + l·src_stride`: its column `j` goes to the
/// `rows` floats at `dst + j·dst_stride`. Reads and writes nothing else.
#[inline(always)]
unsafe fn transpose_block<S: Packed>(
    src: *const f32,
    src_stride: usize,
    rows: usize,
    cols: usize,
    dst: *mut f32,
    dst_stride: usize,
) {
    let n = S::N;
    S::transpose(
        |l| {
            if l >= rows {
                S::zero()
            } else {
                load_upto(src.add(l * src_stride), cols)
            }
        },
        |j, v| {
            if j < cols {
                let p = dst.add(j * dst_stride);
                if rows == n {
                    v.store(p)
                } else {
                    v.store_part(p, rows)
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::{Avx2, Avx512};
    use crate::cpu::tests::{check_against_reference, shape, shape2d, Variant};

    /// Shapes that stress the layout: unequal and large strides, dilation
    /// along the width (one product per tap), padding wider than the kernel
    /// reach, channel counts off the vector width, rows narrower than a
    /// tile (tiles spanning rows and images), phantom positions, input
    /// columns past the last one read, and several bands per image.
    fn shapes() -> Vec<ConvShape> {
        vec![
            shape2d(2, 5, 19, 1, [11, 13], [3, 3], [1, 1], [2, 3], [1, 1]),
            shape2d(3, 9, 7, 1, [10, 12], [3, 2], [2, 3], [1, 1], [1, 2]),
            shape2d(2, 17, 33, 1, [9, 20], [2, 3], [0, 1], [1, 1], [2, 1]),
            shape2d(4, 3, 8, 1, [7, 10], [1, 2], [0, 0], [1, 3], [1, 1]),
            shape2d(2, 16, 24, 1, [40, 30], [3, 3], [1, 1], [1, 1], [1, 1]),
            shape2d(6, 1, 4, 1, [1, 50], [1, 5], [0, 2], [1, 2], [1, 1]),
            // Padding taller than the kernel: the two top and bottom output
            // rows read padding only (their tiles are zero), the next ones
            // skip a kernel row.
            shape2d(2, 6, 9, 1, [6, 20], [2, 3], [3, 1], [1, 1], [1, 1]),
            // Small images, several a task: rows of 7 reading 9 columns
            // (2 phantom positions a row), tiles running across images.
            shape2d(8, 5, 17, 1, [7, 7], [3, 3], [1, 1], [1, 1], [1, 1]),
            // The same with rows that read padding only, in every image.
            shape2d(6, 3, 9, 1, [3, 5], [3, 3], [2, 1], [1, 1], [1, 1]),
            // Weights of more than 4 MiB over two images of 25 positions:
            // one task of positions, its panels split among the threads
            // (300 channels, the last panel partial).
            shape2d(2, 480, 300, 1, [5, 5], [3, 3], [1, 1], [1, 1], [1, 1]),
            // Two images of 9 rows in bands of 2 are 10 tasks, a last
            // round of three threads one third full: 9 runs of 2 rows
            // across the images instead, one of them crossing.
            shape2d(2, 5, 7, 1, [9, 13], [3, 3], [1, 1], [1, 1], [1, 1]),
            // A kernel row deeper than one step at either instruction set
            // (3 columns of 1600 channels: 4800 floats, cut in two at AVX2).
            shape2d(2, 1600, 5, 1, [6, 4], [1, 3], [0, 1], [1, 1], [1, 1]),
        ]
    }

    #[test]
    fn implicit_forward_matches_reference() {
        let t = Tuning::default();
        for s in shapes() {
            for threads in [1, 3] {
                assert!(plan::<Avx2>(&s, &t, threads).is_some(), "{s:?}");
                assert!(plan::<Avx512>(&s, &t, threads).is_some(), "{s:?}");
            }
            for v in Variant::all() {
                check_against_reference(&s, &v, 23).unwrap();
            }
        }
        // The deep kernel row is computed in several steps.
        let deep = Geo::of::<Avx2>(&shapes()[11]).depth();
        assert!(deep > Avx2::IMPLICIT_STEP && deep > Avx512::IMPLICIT_STEP);
        assert_eq!(depth_steps::<Avx2>(&[(0, 0, deep, 0)]).len(), 2);
        // Runs across the images where bands would leave a round part-filled.
        let across = shapes()[10];
        let p = plan::<Avx2>(&across, &t, 3).unwrap();
        assert!(p.across && p.pieces == 9 && p.band == 2, "{p:?}");
        assert!(segments(&Geo::of::<Avx2>(&across), 2, p)
            .iter()
            .any(|r| r.len() == 2));
        // Several bands per image: every thread gets four tasks.
        let tall = shapes()[4];
        let p = plan::<Avx2>(&tall, &t, 3).unwrap();
        assert!(p.band < tall.output[1], "{p:?}");
        // Panels split where positions are few and the weights large.
        let few = shapes()[9];
        for threads in [2, 3] {
            let p = plan::<Avx2>(&few, &t, threads).unwrap();
            assert!(p.images == 2 && p.panels == 2 * threads, "{p:?}");
        }
        assert_eq!(plan::<Avx512>(&few, &t, 1).unwrap().panels, 1);
        // Several small images a task, two tasks per thread.
        for s in &shapes()[7..9] {
            let p = plan::<Avx512>(s, &t, 1).unwrap();
            assert!(p.band == s.output[1] && p.images == s.n / 2, "{p:?}");
            let p = plan::<Avx512>(s, &t, 2).unwrap();
            assert!(p.images == s.n / 4, "{p:?}");
        }
    }

    /// Every output row of every image is computed by exactly one band of
    /// one piece, no band reaching past its image.
    fn assert_covers(g: &Geo, n: usize, plan: Plan) {
        let mut seen = vec![0u8; n * g.oh];
        for piece in segments(g, n, plan) {
            assert!(piece.len() <= 2 || plan.images > 1, "{plan:?}");
            for (images, rows) in piece {
                assert!(images.end <= n && rows.end <= g.oh && rows.len() <= plan.band);
                for i in images {
                    rows.clone().for_each(|r| seen[i * g.oh + r] += 1);
                }
            }
        }
        assert!(seen.iter().all(|&c| c == 1), "{plan:?}");
    }

    #[test]
    fn implicit_forward_tasks_fill_whole_rounds() {
        let t = Tuning::default();
        // ResNet's 64-channel 3×3 layer at 56×56 in the chunks of a batch
        // of 32, and the stem: the tasks fill at least nine tenths of their
        // rounds of the threads.
        for (c, k, hw, st, pad) in [(64, 3, 56, 1, 1), (3, 7, 224, 2, 3)] {
            for n in [1, 4, 7, 9, 32] {
                let s = shape2d(n, c, 64, 1, [hw, hw], [k, k], [pad, pad], [st, st], [1, 1]);
                let g = Geo::of::<Avx2>(&s);
                for threads in [2, 6, 16] {
                    let p = plan::<Avx2>(&s, &t, threads).unwrap();
                    let rounds = p.pieces.div_ceil(threads);
                    assert!(
                        10 * p.pieces >= 9 * rounds * threads,
                        "n {n}, {threads} threads: {p:?}"
                    );
                    assert_eq!(p.panels, 1, "{p:?}");
                    assert_covers(&g, n, p);
                }
                // One thread: bands of about TASK_POSITIONS positions.
                let p = plan::<Avx2>(&s, &t, 1).unwrap();
                assert!(p.band * g.owv <= TASK_POSITIONS && 2 * p.band * g.owv > TASK_POSITIONS);
                assert!(!p.across);
                assert_covers(&g, n, p);
            }
        }
        // A chunk of 7 images at 16 threads: bands of 6 rows within each
        // image would be 70 tasks; runs across the images make 64.
        let seven = shape2d(7, 64, 64, 1, [56, 56], [3, 3], [1, 1], [1, 1], [1, 1]);
        let p = plan::<Avx2>(&seven, &t, 16).unwrap();
        assert!(p.across && p.pieces == 64, "{p:?}");
        // Batch 8 at 2 threads fills its rounds with bands within images.
        let eight = ConvShape { n: 8, ..seven };
        let p = plan::<Avx2>(&eight, &t, 2).unwrap();
        assert!(
            !p.across && p.pieces == 8 * 56usize.div_ceil(p.band),
            "{p:?}"
        );
        for s in shapes() {
            for threads in [1, 2, 3, 16] {
                if let Some(p) = plan::<Avx512>(&s, &t, threads) {
                    assert_covers(&Geo::of::<Avx512>(&s), s.n, p);
                }
            }
        }
    }

    #[test]
    fn implicit_forward_only_where_it_applies() {
        let t = Tuning::default();
        let base = shapes()[0];
        let grouped = shape2d(2, 6, 4, 2, [9, 9], [3, 3], [1, 1], [1, 1], [1, 1]);
        let depth = shape(2, 3, 4, 1, [4, 9, 9], [3, 3, 3], [1, 1, 1], [1; 3], [1; 3]);
        let pointwise = shape2d(2, 8, 8, 1, [9, 9], [1, 1], [0, 0], [1, 1], [1, 1]);
        let big = shape2d(2, 256, 256, 1, [16, 16], [3, 3], [1, 1], [1, 1], [1, 1]);
        // Rows of 2 read 6 columns: 4 of 6 positions phantom.
        let narrow = shape2d(2, 8, 8, 1, [2, 2], [5, 5], [2, 2], [1, 1], [1, 1]);
        let few = shape2d(2, 8, 8, 1, [1, 500], [1, 5], [0, 2], [1, 1], [1, 1]);
        for (what, s) in [
            ("groups", grouped),
            ("kernel over depth", depth),
            ("one tap", pointwise),
            ("phantom columns", narrow),
        ] {
            assert!(plan::<Avx2>(&s, &t, 2).is_none(), "{what}");
        }
        // 590K floats of packed weights: within a quarter of the default
        // cap, not of a 4 MiB one.
        assert!(plan::<Avx2>(&big, &t, 2).is_some());
        let small_cap = Tuning {
            scratch_bytes: 4 << 20,
            ..t
        };
        assert!(plan::<Avx2>(&big, &small_cap, 2).is_none());
        // Two rows of output for four threads: too few tasks.
        assert!(plan::<Avx2>(&few, &t, 4).is_none());
        assert!(plan::<Avx2>(&few, &t, 1).is_some());
        let off = Tuning {
            implicit_forward: false,
            ..t
        };
        assert!(plan::<Avx2>(&base, &off, 2).is_none());
        // 4 × 4608 floats: room for the packed weights (144 × 32 floats at
        // AVX2, a quarter of it) and a task of one output row (about 3400
        // floats) on each of two threads, not on each of eight.
        let tight = Tuning {
            scratch_bytes: 4 * 4 * 144 * 32,
            ..t
        };
        assert!(plan::<Avx2>(&shapes()[4], &tight, 2).is_some());
        assert!(plan::<Avx2>(&shapes()[4], &tight, 8).is_none());
    }
}
