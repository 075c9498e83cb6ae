//! The weight gradient of stride-1 2-D kernels over wide rows, with the
//! lowered input read in place from channel-blocked planes: nothing of it
//! is packed.
//!
//! Each task takes one image and a band of its output rows, and copies the
//! input rows the band reads, zero-padded, into planes of `B` channels
//! ([`block`]: two vectors, 16 at AVX2 and 32 at AVX-512):
//! `plane[cb][row][col][i]` holds channel `cb·B + i`. For a
//! stride-1 kernel, lowered column `(tap, ci)` at output position `(r, ow)`
//! is then the input at plane position `(r + kh·dh, ow + kw·dw)`: the
//! `B` columns `(tap, cb·B..)` of one position are one vector run,
//! and along the positions of a band they are the plane itself, shifted by
//! the tap. So the product `dW'[co][(tap, ci)] += Σ_p dy[co][p] · B[p][(tap,
//! ci)]` runs on the packed GEMM's micro-kernel with `B` read in place,
//! row `p` at a per-position offset (phantom columns of the plane rows
//! skipped), and only `dy` packed. The NCHW lowering (`super::packed`)
//! instead transposes every lowered row into packed panels — taps times
//! the input, 9× for a 3×3 kernel, a tenth of its time on ResNet's
//! 64-channel layer at AVX2 — where this path transposes the input once.
//!
//! Gradients small enough for per-worker partials: workers sum into them
//! (`super::sum_over_workers`) over bands of wide rows; short rows (a few
//! dozen columns) go to `super::implicit_weights`, which is ahead there.
//! Larger gradients ([`backward_weights_by_columns`]): the planes of every
//! image and `dy` are built and packed once for the batch, and each task
//! owns a range of the panels `(tap, block)` over all positions, in depth
//! blocks that run across images (49 positions at 7×7 would make shallow
//! products). Either way the result, `[co][(tap, ci)]`, is permuted into
//! `[co][ci][kh][kw]` at the end. The micro-tile is `B` columns wide: the
//! whole AVX2 tile, two of the three vectors of AVX-512's.

use std::ops::Range;

use super::partial_workers;
use crate::cpu::gate::Gate;
use crate::cpu::matmul::Mat;
use crate::cpu::packed_gemm::{pack_a, tile_shifted_b, Packed, WithPacked};
use crate::cpu::par::split_range;
use crate::cpu::scratch::{Slot, Tuning};
use crate::cpu::ConvShape;

/// Channels of one plane at instruction set `S`: the width of the
/// micro-tile's `B` panel, two vectors.
pub(super) fn block<S: Packed>() -> usize {
    2 * S::N
}
/// Bytes of the block of `dW` a column task computes over all positions
/// before its next: within a 512 KiB L2 beside the packed `dy`.
const C_BYTES: usize = 256 << 10;

/// The geometry of one call.
#[derive(Clone, Copy, Debug)]
struct Geo {
    c: usize,
    co: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    dil: [usize; 2],
    pad: [usize; 2],
    /// Columns of a plane row: the output row and the kernel's reach.
    pitch: usize,
    /// Channels of one plane ([`block`]).
    block: usize,
}

impl Geo {
    fn of<S: Packed>(s: &ConvShape) -> Geo {
        let (kh, kw) = (s.kernel[1], s.kernel[2]);
        let dil = [s.dilation[1], s.dilation[2]];
        Geo {
            c: s.c_in,
            co: s.c_out,
            h: s.input[1],
            w: s.input[2],
            oh: s.output[1],
            ow: s.output[2],
            kh,
            kw,
            dil,
            pad: [s.pad[1], s.pad[2]],
            pitch: s.output[2] + (kw - 1) * dil[1],
            block: block::<S>(),
        }
    }

    /// Plane rows a band of `rows` output rows reads.
    fn rows_in(&self, rows: usize) -> usize {
        rows + (self.kh - 1) * self.dil[0]
    }

    /// Floats of the planes of a band of `rows` output rows.
    fn planes_len(&self, rows: usize) -> usize {
        self.c * self.rows_in(rows) * self.pitch
    }

    /// Floats of the packed `dy` of one depth block.
    fn a_len<S: Packed>(&self) -> usize {
        self.co.div_ceil(S::MR) * S::MR * S::KC_L1
    }
}

/// How one call is cut: output rows per task and the workers summing into
/// partials.
pub(super) type Plan = super::PartialBands;

/// Whether the path takes `s` at all (under `t`): a 2-D convolution of one
/// group, stride 1, more than one tap, input channels a multiple of the
/// planes' [`block`].
fn takes<S: Packed>(s: &ConvShape, t: &Tuning) -> bool {
    t.blocked_weights
        && s.groups == 1
        && s.input[0] == 1
        && s.kernel[0] == 1
        && s.kernel_spatial() > 1
        && s.stride[1..] == [1, 1]
        && s.c_in.is_multiple_of(block::<S>())
}

/// The plan for `s` on `threads` workers, if the path applies: a shape it
/// [`takes`], output rows wider than `min_row`, a gradient within
/// [`Tuning::partial_weights_floats`] with a partial for every thread, and
/// a task's planes within a worker's share of the budget.
pub(super) fn plan<S: Packed>(
    s: &ConvShape,
    t: &Tuning,
    threads: usize,
    min_row: usize,
) -> Option<Plan> {
    if !takes::<S>(s, t) || s.output[2] <= min_row || s.weight_len() > t.partial_weights_floats {
        return None;
    }
    let g = Geo::of::<S>(s);
    super::partial_bands(s, t, threads, |band, _| g.planes_len(band) + g.a_len::<S>())
}

/// `dw` of `s` by `plan` (made for the current pool).
pub(super) fn backward_weights<S: Packed>(
    s: &ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    t: &Tuning,
    plan: Plan,
    gate: Option<&dyn Gate>,
) {
    let g = Geo::of::<S>(s);
    let band = plan.band;
    let tasks = super::image_bands(s.n, g.oh, band);
    let units = super::unit_runs(&tasks, plan.units(gate.is_some()));
    // Plane offset of each output position of a band (the same for every
    // band: its planes start at its first row).
    let offs: Vec<usize> = (0..band * g.ow)
        .map(|p| (p / g.ow * g.pitch + p % g.ow) * g.block)
        .collect();
    let (planes_len, a_len) = (g.planes_len(band), g.a_len::<S>());
    let (image, out_image) = (g.c * g.h * g.w, g.co * g.oh * g.ow);
    super::sum_over_units(t, dw, (&tasks, &units), gate, |acc, run| {
        t.scratch(Slot::Task, planes_len + a_len, |buf| {
            let (planes, abuf) = buf.split_at_mut(planes_len);
            for (n, rows) in run {
                let task = Task {
                    g: &g,
                    x: &x[n * image..][..image],
                    dy: &dy[n * out_image..][..out_image],
                    planes: &mut *planes,
                    abuf: &mut *abuf,
                    offs: &offs,
                    acc: &mut *acc,
                    rows,
                };
                // SAFETY: the instruction set is available (checked by the
                // caller).
                unsafe { S::enter(task) }
            }
        });
    });
    super::implicit_weights::from_tap_major(t, dw, g.c, g.kh * g.kw);
}

/// How a gradient too large for per-worker partials is cut: ranges of the
/// planes' panels `(tap, block)` times groups of the tiles of output
/// channels, one task each, every task sweeping all positions of the
/// batch. About [`TASKS_PER_THREAD`] tasks a thread, so that tasks of one
/// panel more than others even out (ResNet's 256-channel layer has 72
/// panels at AVX-512: 2 or 3 a task for 32 tasks on 16 threads left some
/// threads 6 for an average of 4.5).
#[derive(Clone, Copy, Debug)]
pub(super) struct Columns {
    ranges: usize,
    row_groups: usize,
}

/// Tasks a thread of a column split.
const TASKS_PER_THREAD: usize = 4;

/// The column split for `s` on `threads` workers, if the path applies: a
/// shape it [`takes`] (any row width) with a gradient beyond
/// [`Tuning::partial_weights_floats`] or without a partial for every
/// thread, and the planes and packed `dy` of the whole batch within a
/// quarter of the budget. Every task streams all of `dy` for its panels,
/// so larger data is read from memory over and over: ResNet's 128-channel
/// layer at 28×28, batch 32 (27 MiB), took 11.4 against 8.3 ms on the
/// NCHW lowering at 16 threads, where the 256- and 512-channel layers
/// (15 and 8 MiB) gained 17 and 27 %.
pub(super) fn plan_columns<S: Packed>(
    s: &ConvShape,
    t: &Tuning,
    threads: usize,
) -> Option<Columns> {
    if !takes::<S>(s, t) {
        return None;
    }
    let small = s.weight_len() <= t.partial_weights_floats
        && partial_workers(t, s.weight_len(), threads) >= threads;
    let g = Geo::of::<S>(s);
    let total = t.scratch_bytes / 4;
    if small && threads > 1
        || s.n * g.planes_len(g.oh) + DepthBlocks::of::<S>(&g, s.n).packed_len() > total / 4
    {
        return None;
    }
    let panels = s.kernel_spatial() * s.c_in / g.block;
    let tiles = s.c_out.div_ceil(S::MR);
    Some(split_columns(
        TASKS_PER_THREAD * threads,
        panels,
        tiles,
        s.c_out,
        g.block,
    ))
}

/// About `want` tasks over `panels` panels of `block` columns and `tiles`
/// tiles of `co` output channels, cut so as to stream the least: every
/// task reads its rows of the packed `dy` (all positions) once, and its
/// panels of the planes once, so `ranges` panel ranges read `dy` `ranges`
/// times over (`∝ ranges · co`) and `row_groups` groups of tiles read the
/// planes `row_groups` times over (`∝ row_groups · panels · block`). At 16
/// threads at AVX-512 the 256-channel layer at 14×14 then takes 22 ranges
/// of three groups, reading a third less than 64 ranges of one.
fn split_columns(want: usize, panels: usize, tiles: usize, co: usize, block: usize) -> Columns {
    (1..=tiles.min(want).max(1))
        .map(|row_groups| Columns {
            ranges: want.div_ceil(row_groups).min(panels),
            row_groups,
        })
        .filter(|c| c.ranges * c.row_groups >= want.min(panels * tiles))
        .min_by_key(|c| c.ranges * co + c.row_groups * panels * block)
        .unwrap_or(Columns {
            ranges: panels.min(want).max(1),
            row_groups: 1,
        })
}

/// `dw` of `s` split by [`Columns`] (made for the current pool): the planes
/// of every image and `dy` packed whole first (each once, where every task
/// packing its own `dy` would pack it once a task), then each task's panels
/// over every position.
pub(super) fn backward_weights_by_columns<S: Packed>(
    s: &ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    t: &Tuning,
    plan: Columns,
) {
    use rayon::prelude::*;

    let g = Geo::of::<S>(s);
    let rows_in = g.rows_in(g.oh);
    let image_planes = g.planes_len(g.oh);
    let image = g.c * g.h * g.w;
    let d = DepthBlocks::of::<S>(&g, s.n);
    // Plane offset of every output position of the batch (images one
    // planes-length apart).
    let offs: Vec<usize> = (0..d.all)
        .map(|q| {
            let p = q % d.per_image;
            q / d.per_image * image_planes + (p / g.ow * g.pitch + p % g.ow) * g.block
        })
        .collect();
    let planes_len = s.n * image_planes;
    t.scratch(Slot::Partials, planes_len + d.packed_len(), |buf| {
        let (planes, packed) = buf.split_at_mut(planes_len);
        planes
            .par_chunks_mut(image_planes)
            .zip(x.par_chunks(image))
            // SAFETY: the instruction set is available (checked by the
            // caller).
            .for_each(|(p, x)| unsafe {
                S::enter(Fill {
                    g: &g,
                    x,
                    rows_in,
                    planes: p,
                })
            });
        pack_dy::<S>(&g, &d, dy, packed);
        t.scratch(Slot::Weights, dw.len(), |wt| {
            let wtp = crate::cpu::par::SendPtr(wt.as_mut_ptr());
            let panels = g.kh * g.kw * g.c / g.block;
            let (planes, packed) = (&*planes, &*packed);
            let tiles = d.rows / d.mr;
            (0..plan.ranges * plan.row_groups)
                .into_par_iter()
                .for_each(|r| {
                    let (pr, rg) = (r / plan.row_groups, r % plan.row_groups);
                    let task = ColumnTask {
                        g: &g,
                        d: &d,
                        planes,
                        rows_in,
                        packed,
                        offs: &offs,
                        // SAFETY: each task writes only its own panels'
                        // columns of `wt`.
                        wt: &wtp,
                        panels: split_range(panels, plan.ranges, pr),
                        tiles: split_range(tiles, plan.row_groups, rg),
                    };
                    // SAFETY: the instruction set is available.
                    unsafe { S::enter(task) }
                });
            super::implicit_weights::permute_tap_major(wt, dw, g.c, g.kh * g.kw);
        });
    });
}

/// The depth blocks of a column split: the positions of the whole batch,
/// so that small images (49 positions at 7×7) still make deep products,
/// cut evenly into blocks of at most `KC_L1`.
struct DepthBlocks {
    per_image: usize,
    all: usize,
    blocks: usize,
    /// Rows of the packed `dy`: `co` up to a whole tile.
    rows: usize,
    mr: usize,
}

impl DepthBlocks {
    fn of<S: Packed>(g: &Geo, n: usize) -> DepthBlocks {
        let all = n * g.oh * g.ow;
        DepthBlocks {
            per_image: g.oh * g.ow,
            all,
            blocks: all.div_ceil(S::KC_L1),
            rows: g.co.div_ceil(S::MR) * S::MR,
            mr: S::MR,
        }
    }

    /// Positions of block `b`.
    fn block(&self, b: usize) -> Range<usize> {
        self.all * b / self.blocks..self.all * (b + 1) / self.blocks
    }

    /// Floats of the packed `dy`.
    fn packed_len(&self) -> usize {
        self.rows * self.all
    }

    /// Offset of panel `ip` of block `b` in the packed `dy` (`pack_a`'s
    /// layout within a block: `kc · MR` floats a panel).
    fn panel(&self, b: usize, ip: usize) -> usize {
        let r = self.block(b);
        r.start * self.rows + ip * r.len() * self.mr
    }
}

/// Packs `dy` (every image) into `packed` as [`DepthBlocks`] lays it out,
/// split over the pool by block and group of panels.
fn pack_dy<S: Packed>(g: &Geo, d: &DepthBlocks, dy: &[f32], packed: &mut [f32]) {
    use crate::cpu::par::SendPtr;
    use rayon::prelude::*;
    /// Panels per task.
    const PANELS: usize = 16;
    let groups = (d.rows / d.mr).div_ceil(PANELS);
    let out = SendPtr(packed.as_mut_ptr());
    (0..d.blocks * groups).into_par_iter().for_each(|task| {
        let (b, grp) = (task / groups, task % groups);
        let panels = grp * PANELS..((grp + 1) * PANELS).min(d.rows / d.mr);
        // SAFETY: each task writes its own panels of its own block; the
        // instruction set is available.
        unsafe {
            S::enter(PackDy {
                g,
                d,
                dy,
                out: &out,
                b,
                panels,
            })
        }
    });
}

/// One task of [`pack_dy`].
struct PackDy<'a> {
    g: &'a Geo,
    d: &'a DepthBlocks,
    dy: &'a [f32],
    out: &'a crate::cpu::par::SendPtr,
    b: usize,
    panels: Range<usize>,
}

impl WithPacked for PackDy<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Packed>(self) {
        let (g, d, mr) = (self.g, self.d, S::MR);
        let k = d.block(self.b);
        let out_image = g.co * d.per_image;
        for ip in self.panels {
            let row = ip * mr;
            let panel = self.out.slice(d.panel(self.b, ip), k.len() * mr);
            // Each image's run of the block into its place in the panel.
            for (n, run) in crate::cpu::par::per_item(k.clone(), d.per_image) {
                let a = Mat {
                    ptr: self.dy[n * out_image..].as_ptr(),
                    rs: d.per_image,
                    cs: 1,
                };
                let at = (n * d.per_image + run.start - k.start) * mr;
                let rows = mr.min(g.co - row);
                pack_a::<S>(a, row, rows, run.start, run.len(), &mut panel[at..]);
            }
        }
    }
}

/// The planes of one whole image ([`fill_planes`] from row 0).
struct Fill<'a> {
    g: &'a Geo,
    x: &'a [f32],
    rows_in: usize,
    planes: &'a mut [f32],
}

impl WithPacked for Fill<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Packed>(self) {
        fill_planes::<S>(self.g, self.x, 0, self.rows_in, self.planes)
    }
}

/// One task of [`backward_weights_by_columns`]: `dW'[co][(tap, ci)]` of
/// its panels over every position (written by the first depth block,
/// added by the others), a run of panels at a time so that their block of
/// `C` stays in L2 across the depth blocks.
struct ColumnTask<'a> {
    g: &'a Geo,
    d: &'a DepthBlocks,
    planes: &'a [f32],
    rows_in: usize,
    packed: &'a [f32],
    offs: &'a [usize],
    wt: &'a crate::cpu::par::SendPtr,
    panels: Range<usize>,
    /// Its tiles of output channels (`MR` rows each).
    tiles: Range<usize>,
}

impl WithPacked for ColumnTask<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Packed>(self) {
        let (g, d) = (self.g, self.d);
        let (mr, k, bw) = (S::MR, g.kh * g.kw * g.c, g.block);
        let (cbs, plane) = (g.c / bw, self.rows_in * g.pitch * bw);
        let base = self.planes.as_ptr();
        let run = (C_BYTES / (4 * self.tiles.len() * mr * bw)).max(1);
        let tiles = self.tiles.clone();
        let tiles_mc = S::MC / mr;
        let mut first = self.panels.start;
        while first < self.panels.end {
            let panels = first..(first + run).min(self.panels.end);
            first = panels.end;
            for b in 0..d.blocks {
                let kr = d.block(b);
                let offs = self.offs[kr.start..].as_ptr();
                // Tiles of `dy` in blocks of `MC` rows: each block stays in
                // L2 while the panels' runs of the planes pass over it.
                for t0 in tiles.clone().step_by(tiles_mc) {
                    for j in panels.clone() {
                        let (tap, cb) = (j / cbs, j % cbs);
                        let shift =
                            ((tap / g.kw) * g.dil[0] * g.pitch + (tap % g.kw) * g.dil[1]) * bw;
                        let b_at = base.add(cb * plane + shift);
                        let col = tap * g.c + cb * bw;
                        for ip in t0..tiles.end.min(t0 + tiles_mc) {
                            let row = ip * mr;
                            tile_shifted_b::<S>(
                                kr.len(),
                                self.packed.as_ptr().add(d.panel(b, ip)),
                                b_at,
                                offs,
                                self.wt.at(row * k + col),
                                k,
                                b > 0,
                                mr.min(g.co - row),
                                bw,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// One task: an image's band of output rows, summed into `acc`
/// (`[co][(tap, ci)]`).
struct Task<'a> {
    g: &'a Geo,
    /// The image's input planes and output gradient.
    x: &'a [f32],
    dy: &'a [f32],
    planes: &'a mut [f32],
    abuf: &'a mut [f32],
    offs: &'a [usize],
    acc: &'a mut [f32],
    rows: Range<usize>,
}

impl WithPacked for Task<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Packed>(self) {
        let g = self.g;
        let rows_in = g.rows_in(self.rows.len());
        let (plane, bw) = (rows_in * g.pitch * g.block, g.block);
        fill_planes::<S>(g, self.x, self.rows.start, rows_in, self.planes);
        let positions = self.rows.len() * g.ow;
        let (mr, k) = (S::MR, g.kh * g.kw * g.c);
        let a = Mat {
            ptr: self.dy[self.rows.start * g.ow..].as_ptr(),
            rs: g.oh * g.ow,
            cs: 1,
        };
        let mpan = g.co.div_ceil(mr);
        let blocks = positions.div_ceil(S::KC_L1);
        let base = self.planes.as_ptr();
        let acc = self.acc.as_mut_ptr();
        for blk in 0..blocks {
            let (k0, k1) = (positions * blk / blocks, positions * (blk + 1) / blocks);
            let kc = k1 - k0;
            pack_a::<S>(a, 0, g.co, k0, kc, self.abuf);
            let offs = self.offs[k0..k1].as_ptr();
            for tap in 0..g.kh * g.kw {
                let shift = ((tap / g.kw) * g.dil[0] * g.pitch + (tap % g.kw) * g.dil[1]) * bw;
                for cb in 0..g.c / bw {
                    // Each panel of B (a run of its plane) stays in L1 while
                    // the kernel walks down the packed dy.
                    let b = base.add(cb * plane + shift);
                    let col = tap * g.c + cb * bw;
                    for ip in 0..mpan {
                        tile_shifted_b::<S>(
                            kc,
                            self.abuf.as_ptr().add(ip * kc * mr),
                            b,
                            offs,
                            acc.add(ip * mr * k + col),
                            k,
                            true,
                            mr.min(g.co - ip * mr),
                            bw,
                        );
                    }
                }
            }
        }
    }
}

/// Copies input rows `r0 - pad..` (`rows_in` of them, zero outside the
/// image) of `x` (one image, NCHW) into the planes of `B = g.block`
/// channels: `planes[cb][q][col][i]` = `x[cb·B + i][r0 + q − pad_h][col −
/// pad_w]`.
/// Full runs of `S::N` columns go through the vector transpose.
#[inline(always)]
unsafe fn fill_planes<S: Packed>(
    g: &Geo,
    x: &[f32],
    r0: usize,
    rows_in: usize,
    planes: &mut [f32],
) {
    let (n, hw) = (S::N, g.h * g.w);
    let bw = g.block;
    let row_len = g.pitch * bw;
    let plane = rows_in * row_len;
    assert!(planes.len() >= g.c / bw * plane && x.len() >= g.c * hw);
    // Input columns `iw0..iw1` land at plane columns `iw + pad_w`.
    let iw1 = g.w.min(g.pitch.saturating_sub(g.pad[1]));
    let full = iw1 / n * n;
    let (left, right) = (g.pad[1].min(g.pitch), (g.pad[1] + iw1).min(g.pitch));
    for cb in 0..g.c / bw {
        for q in 0..rows_in {
            let dst = &mut planes[cb * plane + q * row_len..][..row_len];
            let ih = (r0 + q) as isize - g.pad[0] as isize;
            if ih < 0 || ih >= g.h as isize {
                dst.fill(0.0);
                continue;
            }
            dst[..left * bw].fill(0.0);
            dst[right * bw..].fill(0.0);
            let src = x.as_ptr().add(cb * bw * hw + ih as usize * g.w);
            let out = dst.as_mut_ptr().add(left * bw);
            for half in (0..bw).step_by(n) {
                let from = src.add(half * hw);
                for iw in (0..full).step_by(n) {
                    S::transpose(
                        |l| S::load(from.add(l * hw + iw)),
                        |j, v| v.store(out.add((iw + j) * bw + half)),
                    );
                }
            }
            for iw in full..iw1 {
                for i in 0..bw {
                    *out.add(iw * bw + i) = *src.add(i * hw + iw);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::{Avx2, Avx512, Isa};
    use crate::cpu::tests::{check_against_reference, shape, shape2d, Variant};

    /// Shapes the path takes: a 3×3 kernel with padding over wide rows
    /// (several depth blocks a band); no padding with rows that are no
    /// multiple of the vector width; a 2×4 kernel dilated along both axes
    /// with uneven padding; output channels that are no multiple of the
    /// tile's rows, rows cut into several bands; 48 channels (three AVX2
    /// planes, none at AVX-512).
    fn shapes() -> Vec<ConvShape> {
        vec![
            shape2d(2, 64, 8, 1, [13, 40], [3, 3], [1, 1], [1, 1], [1, 1]),
            shape2d(3, 32, 6, 1, [7, 37], [3, 3], [0, 0], [1, 1], [1, 1]),
            shape2d(2, 32, 5, 1, [9, 41], [2, 4], [1, 2], [1, 1], [2, 3]),
            shape2d(1, 32, 11, 1, [70, 35], [3, 3], [1, 1], [1, 1], [1, 1]),
            shape2d(2, 48, 7, 1, [5, 38], [3, 3], [1, 1], [1, 1], [1, 1]),
        ]
    }

    #[test]
    fn blocked_weight_gradient_matches_reference() {
        let t = Tuning::default();
        for s in shapes() {
            for threads in [1, 3] {
                assert!(plan::<Avx2>(&s, &t, threads, 32).is_some(), "{s:?}");
                let wide = plan::<Avx512>(&s, &t, threads, 32);
                assert_eq!(wide.is_some(), s.c_in % 32 == 0, "{s:?}");
            }
            for v in Variant::all() {
                check_against_reference(&s, &v, 41).unwrap();
            }
        }
        // Several bands an image.
        let tall = shapes()[3];
        let band = plan::<Avx2>(&tall, &t, 3, 32).unwrap().band;
        assert!(band < tall.output[1], "{band}");
    }

    /// Gradients too large for partials, split by columns (and on 4
    /// threads the second shape's tiles of output channels too): small
    /// images (7×7, one depth block each) with more output channels than an
    /// AVX2 block of `dy` (`MC`); rows of several depth blocks, dilated and
    /// uneven padding; 48 channels (AVX2 only).
    #[test]
    fn column_split_matches_reference() {
        let shapes = [
            shape2d(3, 32, 260, 1, [7, 7], [3, 3], [1, 1], [1, 1], [1, 1]),
            shape2d(2, 32, 9, 1, [21, 23], [2, 3], [1, 0], [1, 1], [2, 1]),
            shape2d(2, 48, 5, 1, [9, 10], [3, 3], [1, 1], [1, 1], [1, 1]),
        ];
        for s in shapes {
            for isa in [Isa::Avx2, Isa::Avx512] {
                // 4 threads first: the scratch the result is built in then
                // holds no earlier run's answer for rows a task would miss.
                for threads in [4, 3, 1] {
                    let tuning = Tuning {
                        isa,
                        partial_weights_floats: 0,
                        ..Tuning::default()
                    };
                    let took = match isa {
                        Isa::Avx2 => plan_columns::<Avx2>(&s, &tuning, threads).is_some(),
                        _ => plan_columns::<Avx512>(&s, &tuning, threads).is_some(),
                    };
                    assert_eq!(took, isa == Isa::Avx2 || s.c_in % 32 == 0, "{s:?}");
                    let v = Variant {
                        name: "weight gradients split by columns",
                        tuning,
                        threads,
                    };
                    check_against_reference(&s, &v, 43).unwrap();
                }
            }
        }
        // Few panels for many threads: the tiles of output channels split too.
        let t = Tuning {
            partial_weights_floats: 0,
            ..Tuning::default()
        };
        for (s, threads) in [(shapes[0], 8), (shapes[1], 4)] {
            let split = plan_columns::<Avx2>(&s, &t, threads).unwrap();
            assert!(split.row_groups > 1, "{split:?}");
        }
        // The split that streams least: 16 threads over ResNet's
        // 256-channel layer at AVX-512 (72 panels of 32, 32 tiles of 8).
        let c = split_columns(64, 72, 32, 256, 32);
        let read = |c: Columns| c.ranges * 256 + c.row_groups * 72 * 32;
        let one_group = Columns {
            ranges: 64,
            row_groups: 1,
        };
        assert!(
            c.ranges * c.row_groups >= 64 && read(c) < read(one_group),
            "{c:?}"
        );
        let c = split_columns(8, 144, 42, 256, 16);
        assert_eq!((c.ranges, c.row_groups), (8, 1), "{c:?}");
        // Small gradients with a partial for every thread keep the partials.
        let small = shapes[1];
        assert!(plan_columns::<Avx2>(&small, &Tuning::default(), 3).is_none());
        assert!(plan_columns::<Avx2>(&small, &Tuning::default(), 1).is_some());
    }

    #[test]
    fn blocked_weight_gradient_only_where_it_applies() {
        let t = Tuning {
            isa: Isa::Avx2,
            ..Tuning::default()
        };
        let base = shapes()[0];
        assert!(plan::<Avx2>(&base, &t, 2, 32).is_some());
        let ragged = shape2d(2, 24, 8, 1, [13, 40], [3, 3], [1, 1], [1, 1], [1, 1]);
        let narrow = shape2d(2, 32, 8, 1, [13, 30], [3, 3], [1, 1], [1, 1], [1, 1]);
        let strided = shape2d(2, 32, 8, 1, [13, 80], [3, 3], [1, 1], [2, 2], [1, 1]);
        let grouped = shape2d(2, 32, 8, 2, [13, 40], [3, 3], [1, 1], [1, 1], [1, 1]);
        let deep = shape(2, 16, 4, 1, [3, 9, 40], [3, 3, 3], [1; 3], [1; 3], [1; 3]);
        let pointwise = shape2d(2, 32, 8, 1, [13, 40], [1, 1], [0, 0], [1, 1], [1, 1]);
        let large = shape2d(1, 128, 128, 1, [9, 40], [3, 3], [1, 1], [1, 1], [1, 1]);
        for s in [ragged, narrow, strided, grouped, deep, pointwise, large] {
            assert!(plan::<Avx2>(&s, &t, 2, 32).is_none(), "{s:?}");
        }
        let off = Tuning {
            blocked_weights: false,
            ..t
        };
        assert!(plan::<Avx2>(&base, &off, 2, 32).is_none());
    }
}
