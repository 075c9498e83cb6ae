//! Packed back end of the lowered passes, on the packed GEMM of
//! [`crate::cpu::packed_gemm`], written once over its instruction set `S`
//! (AVX-512 or AVX2): chunks are cut at whole `S::NR`-column panels and
//! row splits at `S::MR`-row tiles. The weights are read in place; the
//! lowered input is packed straight from `x` block by block (no im2col
//! buffer), so a task's scratch is one packed `B` block plus, where a chunk
//! spans several images or feeds `col2im`, one matrix of its outputs.

use std::ops::Range;

use rayon::prelude::*;

use super::slabs::Slabs;
use super::{balanced_cols, dy_rows, even_ranges, partial_workers, sum_over_workers, Dims};
use crate::cpu::gate::Gate;
use crate::cpu::im2col::{col2im, scatter_rows, Chunk};
use crate::cpu::matmul::{Mat, MatMut};
use crate::cpu::pack::{
    DirectIm2colB, DirectIm2colTB, Im2colB, Im2colTB, ImagesB, ImagesTB, PaddedChunk, PaddedGrad,
    Shifted,
};
use crate::cpu::packed_gemm::{
    gemm, gemm_shifted, pack_a_whole, packed_a_len, ASource, PackB, Packed, PackedA,
};
use crate::cpu::par::{per_item, split_range, SendPtr};
use crate::cpu::scratch::{Slot, Tuning};
use crate::cpu::ConvShape;

/// Preferred columns of a forward chunk.
const FORWARD_COLS: usize = 960;
/// Preferred columns of a weight-gradient chunk (its depth in the product).
const WEIGHTS_COLS: usize = 2048;
/// Lowered rows one backward-data task produces per chunk.
const DATA_ROWS: usize = 1024;
/// Fewest input channels of a backward-data task's channel range where
/// ranges are added to occupy the threads ([`data_parts`]).
const MIN_DATA_CHANNELS: usize = 8;
/// Fewest and most columns of a backward-data chunk.
const DATA_MIN_COLS: usize = 96;
const DATA_MAX_COLS: usize = 960;
/// Preferred size of the backward-data output matrix, kept cache-resident
/// between the product and `col2im`.
const DATA_COL_BYTES: usize = 768 << 10;
/// Weights larger than this (bytes per group) are not kept in L2 across a
/// forward task's columns.
const WIDE_WEIGHTS_BYTES: usize = 1 << 20;
/// Fewest columns of a forward chunk over such weights.
const WIDE_MIN_COLS: usize = 192;
/// Fewest rows of W a forward task over such weights computes.
const MIN_TASK_ROWS: usize = 64;
/// Fewest dW columns a backward-weights task owns in column-split mode.
const MIN_TASK_COLS: usize = 96;
/// Preferred most dW columns of a backward-weights task in column-split mode.
const WEIGHTS_RANGE_COLS: usize = 480;

/// Size of the packed-B buffer within a per-worker budget of `budget` floats.
pub(super) fn b_block<S: Packed>(budget: usize) -> usize {
    S::B_BLOCK_LEN.min(budget / 2).max(S::MIN_BUF_LEN)
}

/// Fewest products over the same weights for which the input gradient
/// packs its `Wᵀ` whole beforehand: column-major, it costs far more to pack
/// per block than the forward pass's row-major weights (a strided sweep
/// across the weights' rows), up to a sixth of the time of ResNet's
/// 512-channel and DCGAN's backward-data passes at AVX2, which gain 3 % and
/// 10-16 % with it packed once per call.
const DATA_MIN_USES: usize = 2;

/// Floats of `Wᵀ` packed whole once per call ([`pack_a_whole`]) for an
/// input gradient whose products meet each of `parts` `rows × depth`
/// blocks of it `uses` times, or 0 where each product packs it itself
/// (fewer than [`DATA_MIN_USES`] products, or the packed weights would take
/// more than [`Tuning::packed_weights_floats`]).
fn packed_weights_len<S: Packed>(
    t: &Tuning,
    parts: usize,
    rows: usize,
    depth: usize,
    uses: usize,
) -> usize {
    let len = parts * packed_a_len::<S>(rows, depth);
    if t.pack_weights_once && uses >= DATA_MIN_USES && len <= t.packed_weights_floats() {
        len
    } else {
        0
    }
}

/// Chunk width for whole-image chunks limited by a staging matrix of `rows`
/// rows within `cap` floats: one image per chunk when two do not fit.
fn image_cols(cols: usize, p: usize, rows: usize, cap: usize) -> usize {
    if cols < p {
        return cols;
    }
    let fit = cap / (rows * p).max(1);
    if fit >= 2 {
        cols.min(fit * p)
    } else {
        p
    }
}

/// The forward pass's column chunks and how many parts the rows of W are
/// split into (tasks: groups × chunks × row parts), for `threads` workers
/// with `cap` scratch floats each for staging.
fn forward_plan<S: Packed>(
    s: &ConvShape,
    d: &Dims,
    threads: usize,
    cap: usize,
) -> (Vec<Chunk>, usize) {
    let want = if threads > 1 { 4 * threads } else { 1 };
    let cols = balanced_cols(FORWARD_COLS, s.n * d.p, s.groups, want);
    let cover = |cols: usize| Chunk::cover(0..s.n, d.p, image_cols(cols, d.p, d.m, cap), S::NR);
    let chunks = cover(cols);
    // Weights too large for L2: narrow chunks re-read them for little work
    // and leave partial B panels, so chunks are made of equal whole images,
    // two or one per thread, where those are WIDE_MIN_COLS wide; else
    // WIDE_MIN_COLS wide, or as wide as still gives every thread two tasks,
    // where either is wider than the balanced width; where even the narrow
    // chunks cannot occupy the threads, the rows of W are split across
    // tasks too. One chunk of four 7×7 images per thread (196 columns, A
    // packed) rather than two of two (98: two full panels and a sliver)
    // measured +4–8 % on ResNet's 512-channel forward at two threads, and
    // two of 16 images per thread +9–11 % on DCGAN's 4×4 data gradient
    // (six chunks of 12 before, one thread doing the odd one).
    if threads > 1 && d.m * d.k * 4 > WIDE_WEIGHTS_BYTES && cols < WIDE_MIN_COLS {
        // Chunks of equal whole images, two or one per thread, where those
        // are wide enough.
        for per_thread in [2, 1] {
            let even = (s.n * d.p).div_ceil(per_thread * threads * s.groups);
            if even >= WIDE_MIN_COLS {
                let balanced = cover(even);
                if s.groups * balanced.len() == per_thread * threads
                    && balanced.iter().all(|c| c.cols() == balanced[0].cols())
                {
                    return (balanced, 1);
                }
            }
        }
        let wide = cover(WIDE_MIN_COLS);
        let units = s.groups * wide.len();
        if units >= 2 * threads {
            return (wide, 1);
        }
        let even = (s.n * d.p).div_ceil(2 * threads * s.groups);
        if even > cols {
            let wider = cover(even);
            if s.groups * wider.len() >= 2 * threads {
                return (wider, 1);
            }
        }
        if s.groups * chunks.len() < threads && d.m >= 2 * MIN_TASK_ROWS {
            let parts = (2 * threads).div_ceil(units).min(d.m / MIN_TASK_ROWS);
            return (wide, parts);
        }
    }
    (chunks, 1)
}

/// Whether every tap reads inside the input (a 1×1 kernel without padding,
/// e.g. a strided 1×1 downsample): the lowered input is then gathered
/// straight from `x` (strided runs) and the input gradient scattered
/// straight into `dx`, since padded copies would only add passes over the
/// whole tensor.
fn unpadded_taps(s: &ConvShape) -> bool {
    s.kernel == [1; 3] && s.pad == [0; 3]
}

/// Most output channels per group for [`shifted_forward`]: packing a
/// lowered column costs about as much as `M` multiply-adds with it, so with
/// more rows of W packing is cheaper than the wasted columns (ResNet's and
/// MNIST's 64- and 128-channel layers gain 6-15 %, DeepLab's 256 loses 5 %).
const SHIFTED_MAX_ROWS: usize = 128;
/// Largest share of wasted columns per phase row for [`shifted_forward`]
/// (`⌊(kw − 1)·d₂/s₂⌋` past each output row): 1/8.
const SHIFTED_MAX_WASTE: usize = 8;
/// Fewest kernel taps per plane for [`shifted_forward`] at a stride above
/// 1: measured side by side at AVX2, the phase planes gain 8 % on the 7×7/2
/// stem but lose 4-7 % on 3×3/2 layers (MNIST conv3, ResNet's downsample)
/// and 30 % on the 1×1/2 downsample (which gathers straight from `x`).
const SHIFTED_STRIDED_MIN_TAPS: usize = 16;

/// How [`shifted_forward`] cuts the outputs into tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ShiftedPlan {
    /// Output rows (flattened `od·H + oh`) per task, and output columns per
    /// task (all of a row, unless `rows` is 1).
    rows: usize,
    seg: usize,
}

/// The plan of [`shifted_forward`], if it applies: no kernel taps over depth
/// nor depth stride (a kernel over depth would pad many slices per band of
/// rows), not pointwise, at most [`SHIFTED_MAX_ROWS`] output channels per
/// group, at most 1/[`SHIFTED_MAX_WASTE`] wasted columns, stride 1 unless
/// the kernel has [`SHIFTED_STRIDED_MIN_TAPS`] taps, and a chunk of one row
/// (window) fits in the budget.
fn shifted_plan<S: Packed>(
    s: &ConvShape,
    d: &Dims,
    threads: usize,
    budget: usize,
) -> Option<ShiftedPlan> {
    let w_out = s.output[2];
    let shift = (s.kernel[2] - 1) * s.dilation[2] / s.stride[2];
    if d.pointwise
        || s.kernel[0] > 1
        || s.stride[0] > 1
        || (s.stride != [1; 3] && d.ks < SHIFTED_STRIDED_MIN_TAPS)
        || d.m > SHIFTED_MAX_ROWS
        || SHIFTED_MAX_WASTE * shift > w_out + shift
    {
        return None;
    }
    let want = if threads > 1 { 4 * threads } else { 1 };
    let cols = balanced_cols(FORWARD_COLS, s.n * d.p, s.groups, want);
    let all_rows = s.output[0] * s.output[1];
    let fits = |p: ShiftedPlan| {
        let sh = Shifted::new(s, p.rows, p.seg);
        let cols = sh.cols(&(0..p.rows.min(all_rows)));
        d.m * cols + sh.len(d.cin_g) + shifted_a_len::<S>(d.k) <= budget
    };
    let mut plan = if w_out > cols {
        // Rows wider than a chunk: column windows of one row.
        ShiftedPlan {
            rows: 1,
            seg: w_out.div_ceil(w_out.div_ceil(cols)),
        }
    } else {
        ShiftedPlan {
            rows: (cols / w_out).clamp(1, all_rows),
            seg: w_out,
        }
    };
    while !fits(plan) {
        if plan.rows > 1 {
            plan.rows /= 2;
        } else if plan.seg > 4 * S::NR {
            plan.seg = plan.seg.div_ceil(2);
        } else {
            return None;
        }
    }
    Some(plan)
}

/// Floats of the packed-A buffer of [`shifted_forward`]'s products.
fn shifted_a_len<S: Packed>(k: usize) -> usize {
    S::MC * k.min(S::KC_L1) + 16
}

/// The forward pass with the lowered input read in place from padded phase
/// planes ([`Shifted`]): tasks are bands of output rows (or column windows
/// of one row) of one image and group, each padding its planes once and
/// multiplying W by their shifted windows, with no packing of `B` at all.
fn shifted_forward<S: Packed>(
    s: &ConvShape,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    t: &Tuning,
    plan: ShiftedPlan,
) {
    let d = Dims::of(s);
    let sh = Shifted::new(s, plan.rows, plan.seg);
    let (all_rows, rows, wins) = (s.output[0] * s.output[1], plan.rows, sh.windows());
    let tasks: Vec<(usize, usize, Range<usize>, usize)> = (0..s.n)
        .flat_map(|n| {
            (0..s.groups).flat_map(move |g| {
                (0..all_rows.div_ceil(rows)).flat_map(move |b| {
                    let band = b * rows..((b + 1) * rows).min(all_rows);
                    (0..wins).map(move |win| (n, g, band.clone(), win))
                })
            })
        })
        .collect();
    let yp = SendPtr(y.as_mut_ptr());
    let (pad_len, a_len) = (sh.len(d.cin_g), shifted_a_len::<S>(d.k));
    tasks.into_par_iter().for_each(|(n, g, band, win)| {
        let cols = sh.cols(&band);
        t.scratch(Slot::Task, d.m * cols + pad_len + a_len, |buf| {
            let (cbuf, rest) = buf.split_at_mut(d.m * cols);
            let (pbuf, abuf) = rest.split_at_mut(pad_len);
            let b = sh.build(t.isa, pbuf, s, x, g, n, band.clone(), win);
            let a = Mat {
                ptr: w[g * d.m * d.k..].as_ptr(),
                rs: d.k,
                cs: 1,
            };
            let c = MatMut {
                ptr: cbuf.as_mut_ptr(),
                rs: cols,
                cs: 1,
            };
            // SAFETY: the instruction set is available (checked by the
            // caller); the planes carry the slack the shifted reads need;
            // this task alone writes these outputs of image n, group g.
            unsafe {
                gemm_shifted::<S>(d.m, cols, d.k, a, b, c, abuf);
                sh.store(cbuf, d.m, s, yp, n, g * d.m, band, win);
            }
        });
    });
}

pub(super) fn forward<S: Packed>(s: &ConvShape, x: &[f32], w: &[f32], y: &mut [f32], t: &Tuning) {
    let d = Dims::of(s);
    let threads = rayon::current_num_threads();
    let budget = t.floats_per_worker(threads);
    if let Some(plan) = super::implicit::plan::<S>(s, t, threads) {
        return super::implicit::forward::<S>(s, x, w, y, t, plan, false, None);
    }
    if let Some(plan) = shifted_plan::<S>(s, &d, threads, budget) {
        return shifted_forward::<S>(s, x, w, y, t, plan);
    }
    let bblock = b_block::<S>(budget);
    let (chunks, row_parts) = forward_plan::<S>(s, &d, threads, budget - bblock);
    let tasks: Vec<(usize, Chunk, Range<usize>)> = (0..s.groups)
        .flat_map(|g| {
            chunks.iter().flat_map(move |c| {
                (0..row_parts).map(move |r| {
                    let rows = split_range(d.m.div_ceil(S::MR), row_parts, r);
                    (g, *c, rows.start * S::MR..(rows.end * S::MR).min(d.m))
                })
            })
        })
        .collect();
    let yp = SendPtr(y.as_mut_ptr());
    tasks.into_par_iter().for_each(|(g, ch, mr)| {
        let cols = ch.cols();
        let mrows = mr.len();
        let tmp_len = if ch.nimg == 1 { 0 } else { mrows * cols };
        // Padded input planes when they fit, else gather from x directly.
        let pad_len = if d.pointwise || unpadded_taps(s) {
            0
        } else {
            PaddedChunk::len(s, ch, d.cin_g)
        };
        let pad_len = if tmp_len + bblock + pad_len <= budget {
            pad_len
        } else {
            0
        };
        t.scratch(Slot::Task, tmp_len + bblock + pad_len, |buf| {
            let (tmp, rest) = buf.split_at_mut(tmp_len);
            let (bbuf, pbuf) = rest.split_at_mut(bblock);
            // The weights are read in place and packed per block: row-major,
            // they pack cheaply (register transposes), and packed per block
            // they reach the kernel from L2. Packed whole beforehand they
            // measured no faster (ResNet's 512-channel forward: −3 % at
            // AVX-512, +1 % at AVX2; DCGAN's: +4 % / 0 %).
            let a = ASource::Mat(Mat {
                ptr: w[(g * d.m + mr.start) * d.k..].as_ptr(),
                rs: d.k,
                cs: 1,
            });
            let c = if ch.nimg == 1 {
                let at = (ch.n0 * s.c_out + g * d.m + mr.start) * d.p + ch.p0;
                // SAFETY: in bounds of y.
                MatMut {
                    ptr: unsafe { yp.at(at) },
                    rs: d.p,
                    cs: 1,
                }
            } else {
                MatMut {
                    ptr: tmp.as_mut_ptr(),
                    rs: cols,
                    cs: 1,
                }
            };
            // SAFETY: the kernel is available (checked by the caller); this
            // task alone writes the chunk's positions of group `g`.
            unsafe {
                if d.pointwise {
                    let b = ImagesB {
                        src: x,
                        channels: s.c_in,
                        c0: g * d.cin_g,
                        plane: d.p,
                        ch,
                    };
                    run::<S>(mrows, cols, d.k, a, &b, c, false, bbuf);
                } else if pad_len > 0 {
                    let padded = PaddedChunk::build(t.isa, pbuf, s, x, g, ch, 0, d.cin_g);
                    run::<S>(
                        mrows,
                        cols,
                        d.k,
                        a,
                        &Im2colB { padded: &padded },
                        c,
                        false,
                        bbuf,
                    );
                } else {
                    let b = DirectIm2colB { s, x, g, ch };
                    run::<S>(mrows, cols, d.k, a, &b, c, false, bbuf);
                }
                if ch.nimg > 1 {
                    scatter_rows(tmp, s.c_out, g * d.m + mr.start, mrows, ch, yp);
                }
            }
        });
    });
}

/// [`gemm`] on this back end (a separate function keeps the generic
/// instantiations small).
///
/// # Safety
/// As [`gemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn run<S: Packed>(
    m: usize,
    n: usize,
    k: usize,
    a: ASource,
    b: &impl PackB,
    c: MatMut,
    acc: bool,
    bbuf: &mut [f32],
) {
    gemm::<S>(m, n, k, a, b, c, acc, bbuf);
}

pub(super) fn backward_data<S: Packed>(
    s: &ConvShape,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    t: &Tuning,
) {
    if super::subpixel::backward_data::<S>(s, dy, w, dx, t) {
        return;
    }
    let d = Dims::of(s);
    let threads = rayon::current_num_threads();
    // Tasks own disjoint parts of dx: (block of images, group, channel range).
    let ci_parts = data_parts(s, &d, threads);
    let kr = d.cin_g.div_ceil(ci_parts) * d.ks;
    let units = s.groups * ci_parts;
    // Chunk width and images per task within a per-worker budget.
    let plan = |budget: usize| {
        let cap = (budget - b_block::<S>(budget)) / kr;
        let cols = (DATA_COL_BYTES / 4 / kr)
            .clamp(DATA_MIN_COLS, DATA_MAX_COLS)
            .min(cap)
            .max(1);
        let want = if threads > 1 { 2 * threads } else { 1 };
        let imgs = if cols >= d.p { cols / d.p } else { 1 };
        let imgs = imgs.min((s.n * units / want).max(1)).clamp(1, s.n);
        let cols = if cols >= d.p { imgs * d.p } else { cols };
        (cols, imgs)
    };
    let budget = t.floats_per_worker(threads);
    let (cols, imgs) = plan(budget);
    // Products per (group, channel range): its image blocks' chunks.
    let uses = s.n.div_ceil(imgs) * (imgs * d.p).div_ceil(cols);
    let part_len = packed_a_len::<S>(kr, d.m);
    let wlen = packed_weights_len::<S>(t, units, kr, d.m, uses);
    let (budget, (cols, imgs)) = if wlen > 0 {
        let rest = budget - wlen.div_ceil(threads);
        (rest, plan(rest))
    } else {
        (budget, (cols, imgs))
    };
    let bblock = b_block::<S>(budget);
    // Few whole-image tasks for many threads: slabs of each image instead.
    let slabs = Slabs::plan(s, imgs, units, threads);
    if slabs.is_some() {
        let isp = s.input_spatial();
        dx.par_chunks_mut(isp.max(1)).for_each(|p| p.fill(0.0));
    }
    let dxp = SendPtr(dx.as_mut_ptr());
    // Wᵀ restricted to channels `ci` of group `g`: element (r, o) =
    // W[g][o][ci.start·ks + r].
    let wt = |g: usize, ci: &Range<usize>| Mat {
        ptr: w[g * d.m * d.k + ci.start * d.ks..].as_ptr(),
        rs: 1,
        cs: d.k,
    };
    t.scratch(Slot::Weights, wlen, |pw| {
        let packed: Vec<PackedA> = if wlen > 0 {
            pw.chunks_mut(part_len)
                .enumerate()
                .map(|(part, out)| {
                    let (g, ci) = (
                        part / ci_parts,
                        split_range(d.cin_g, ci_parts, part % ci_parts),
                    );
                    // SAFETY: the instruction set is available (checked by
                    // the caller); `pw` outlives the products.
                    unsafe { pack_a_whole::<S>(wt(g, &ci), ci.len() * d.ks, d.m, out) }
                })
                .collect()
        } else {
            Vec::new()
        };
        let run_task = |images: Range<usize>, g: usize, c: usize, span: Option<Range<usize>>| {
            let ci = split_range(d.cin_g, ci_parts, c);
            let a = match packed.get(g * ci_parts + c) {
                Some(p) => ASource::Packed(*p),
                None => ASource::Mat(wt(g, &ci)),
            };
            let part = DataPart {
                images,
                g,
                ci,
                span,
            };
            backward_data_task::<S>(s, t, &d, dy, a, dxp, part, cols, bblock, budget)
        };
        let Some(sl) = slabs else {
            let mut tasks = Vec::new();
            for b in 0..s.n.div_ceil(imgs) {
                let images = b * imgs..((b + 1) * imgs).min(s.n);
                for g in 0..s.groups {
                    for c in 0..ci_parts {
                        tasks.push((images.clone(), g, c));
                    }
                }
            }
            tasks
                .into_par_iter()
                .for_each(|(images, g, c)| run_task(images, g, c, None));
            return;
        };
        // One colour at a time: its slabs add into disjoint slices of dx.
        for colour in 0..sl.colours {
            let mut tasks = Vec::new();
            for n in 0..s.n {
                for g in 0..s.groups {
                    for c in 0..ci_parts {
                        tasks.extend(sl.of_colour(colour).map(|i| (n, g, c, i)));
                    }
                }
            }
            tasks
                .into_par_iter()
                .for_each(|(n, g, c, i)| run_task(n..n + 1, g, c, Some(sl.positions(i))));
        }
    });
}

/// What one backward-data task computes: `dx` of `images`, group `g`,
/// channels `ci` of the group, from all of the images' output positions or
/// (with one image) from `span` of them only. A task with a span adds into
/// `dx`, which its caller zeroed; other tasks own their part of `dx` whole.
struct DataPart {
    images: Range<usize>,
    g: usize,
    ci: Range<usize>,
    span: Option<Range<usize>>,
}

/// Channel ranges per group of the input gradient's tasks: enough that a
/// task's lowered rows stay within [`DATA_ROWS`], raised where one task per
/// image and range (what few images get) is fewer tasks than threads, to
/// the first count that gives every thread a task and fills whole rounds
/// (or four tasks a thread), with at least [`MIN_DATA_CHANNELS`] channels a
/// range. At 16 threads ResNet's stride-2 downsample at batch 8 had 8 tasks
/// (now 16: +26–47 %) and DeepLab's layer at batch 4 had 12 (now 16:
/// +12–27 %). Raising counts that already occupy every thread (ResNet's
/// 256-channel layer: 24 tasks to 32) measured −30 % to +7 %, so those stay.
fn data_parts(s: &ConvShape, d: &Dims, threads: usize) -> usize {
    let base = d.cin_g.div_ceil((DATA_ROWS / d.ks).max(1));
    let tasks = |parts: usize| s.n * s.groups * parts;
    if tasks(base) >= threads {
        return base;
    }
    let most = (d.cin_g / MIN_DATA_CHANNELS).max(base);
    let enough = |p: &usize| tasks(*p) >= threads;
    (base..=most)
        .filter(enough)
        .find(|&p| tasks(p) % threads == 0 || tasks(p) >= 4 * threads)
        .or_else(|| (base..=most).find(enough))
        .unwrap_or(most)
}

/// Computes the part of dx that `part` names.
#[allow(clippy::too_many_arguments)]
fn backward_data_task<S: Packed>(
    s: &ConvShape,
    t: &Tuning,
    d: &Dims,
    dy: &[f32],
    a: ASource,
    dx: SendPtr,
    part: DataPart,
    cols: usize,
    bblock: usize,
    budget: usize,
) {
    let DataPart {
        images,
        g,
        ci,
        span,
    } = part;
    let isp = s.input_spatial();
    let c0 = g * d.cin_g + ci.start;
    let kr = ci.len() * d.ks;
    let chunks = match &span {
        Some(span) => Chunk::cover_positions(images.start, span.clone(), cols, S::NR),
        None => Chunk::cover(images.clone(), d.p, cols, S::NR),
    };
    let max_cols = chunks.iter().map(Chunk::cols).max().unwrap_or(0);
    // Accumulate into padded gradient planes when they fit; otherwise zero dx
    // (unless the caller has) and scatter straight into it.
    let grad_len = if d.pointwise || unpadded_taps(s) || span.is_some() {
        0
    } else {
        PaddedGrad::len(s, images.len(), ci.len())
    };
    let grad_len = if kr * max_cols + bblock + grad_len <= budget {
        grad_len
    } else {
        0
    };
    if !d.pointwise && grad_len == 0 && span.is_none() {
        for n in images.clone() {
            // SAFETY: this task owns channels c0..c0+len of these images.
            unsafe { dx.slice((n * s.c_in + c0) * isp, ci.len() * isp) }.fill(0.0);
        }
    }
    t.scratch(Slot::Task, kr * max_cols + bblock + grad_len, |buf| {
        let (colbuf, rest) = buf.split_at_mut(kr * max_cols);
        let (bbuf, gbuf) = rest.split_at_mut(bblock);
        let mut grad = (grad_len > 0).then(|| PaddedGrad::new(gbuf, s, images.clone(), ci.len()));
        for ch in chunks {
            let cols = ch.cols();
            let b = ImagesB {
                src: dy,
                channels: s.c_out,
                c0: g * d.m,
                plane: d.p,
                ch,
            };
            // SAFETY: the kernel is available; this task alone touches dx
            // channels c0.. of its images.
            unsafe {
                if d.pointwise && ch.nimg == 1 {
                    let at = (ch.n0 * s.c_in + c0) * d.p + ch.p0;
                    let dst = MatMut {
                        ptr: dx.at(at),
                        rs: d.p,
                        cs: 1,
                    };
                    run::<S>(kr, cols, d.m, a, &b, dst, false, bbuf);
                    continue;
                }
                let colbuf = &mut colbuf[..kr * cols];
                let dst = MatMut {
                    ptr: colbuf.as_mut_ptr(),
                    rs: cols,
                    cs: 1,
                };
                run::<S>(kr, cols, d.m, a, &b, dst, false, bbuf);
                if d.pointwise {
                    scatter_rows(colbuf, s.c_in, c0, kr, ch, dx);
                } else if let Some(grad) = grad.as_mut() {
                    grad.add_lowered::<S>(ch, colbuf);
                } else {
                    col2im(s, colbuf, g, ch, ci.clone(), dx);
                }
            }
        }
        if let Some(grad) = grad {
            grad.unpad(t.isa, dx, c0);
        }
    });
}

pub(super) fn backward_weights<S: Packed>(
    s: &ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    t: &Tuning,
) {
    backward_weights_gated::<S>(s, x, dy, dw, t, None);
}

/// The weight gradient's path for `s` on `threads`, in order of preference.
enum WeightsPath {
    /// Partial sums over bands of short rows (`implicit_weights`).
    Implicit(super::implicit_weights::Plan),
    /// Partial sums over bands of wide rows on blocked planes (`blocked_weights`).
    Blocked(super::blocked_weights::Plan),
    /// Panels of the blocked planes of the whole batch (`blocked_weights`).
    Columns(super::blocked_weights::Columns),
    /// Column ranges of the NCHW lowering, each task sweeping the images.
    Ranges(usize),
    /// Partial sums of the NCHW lowering by runs of positions.
    Positions,
}

fn weights_path<S: Packed>(s: &ConvShape, t: &Tuning, threads: usize) -> WeightsPath {
    if let Some(plan) = super::implicit_weights::plan::<S>(s, t, threads) {
        return WeightsPath::Implicit(plan);
    }
    let short_rows = super::implicit_weights::MAX_ROW;
    if let Some(plan) = super::blocked_weights::plan::<S>(s, t, threads, short_rows) {
        return WeightsPath::Blocked(plan);
    }
    if let Some(plan) = super::blocked_weights::plan_columns::<S>(s, t, threads) {
        return WeightsPath::Columns(plan);
    }
    match column_ranges(s, &Dims::of(s), t, threads) {
        Some(ranges) => WeightsPath::Ranges(ranges),
        None => WeightsPath::Positions,
    }
}

/// Whether [`backward_weights_gated`] runs `s` on `threads` with a gate: where
/// its path sweeps the images in order — the two partial-sum paths over
/// bands of images (`implicit_weights`, `blocked_weights`) and the column
/// ranges over the NCHW lowering. The column split over blocked planes
/// builds the planes of the whole batch first, and the NCHW lowering's
/// partial sums give each worker a run of the positions, the last worker
/// the last images.
pub(super) fn weights_gated_applies<S: Packed>(s: &ConvShape, t: &Tuning, threads: usize) -> bool {
    matches!(
        weights_path::<S>(s, t, threads),
        WeightsPath::Implicit(_) | WeightsPath::Blocked(_) | WeightsPath::Ranges(_)
    )
}

/// `dw` of `s`; with a `gate`, whose images arrive while it runs, where
/// [`weights_gated_applies`] (else false, with nothing read or written).
pub(super) fn backward_weights_gated<S: Packed>(
    s: &ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    t: &Tuning,
    gate: Option<&dyn Gate>,
) -> bool {
    match weights_path::<S>(s, t, rayon::current_num_threads()) {
        WeightsPath::Implicit(plan) => {
            super::implicit_weights::backward_weights::<S>(s, x, dy, dw, t, plan, gate)
        }
        WeightsPath::Blocked(plan) => {
            super::blocked_weights::backward_weights::<S>(s, x, dy, dw, t, plan, gate)
        }
        WeightsPath::Columns(_) | WeightsPath::Positions if gate.is_some() => return false,
        WeightsPath::Columns(plan) => {
            super::blocked_weights::backward_weights_by_columns::<S>(s, x, dy, dw, t, plan)
        }
        WeightsPath::Ranges(ranges) => weights_by_ranges::<S>(s, (x, dy, dw), t, ranges, gate),
        WeightsPath::Positions => weights_by_positions::<S>(s, (x, dy, dw), t),
    }
    true
}

/// `dw` of `s` by `ranges` column ranges of the NCHW lowering a group
/// (`column_ranges`), each task sweeping every position.
fn weights_by_ranges<S: Packed>(
    s: &ConvShape,
    (x, dy, dw): (&[f32], &[f32], &mut [f32]),
    t: &Tuning,
    ranges: usize,
    gate: Option<&dyn Gate>,
) {
    let d = Dims::of(s);
    let budget = t.floats_per_worker(rayon::current_num_threads());
    let bblock = b_block::<S>(budget);
    let cols = image_cols(WEIGHTS_COLS, d.p, d.m, budget - bblock);
    let chunks = Chunk::cover(0..s.n, d.p, cols, 1);
    let dwp = SendPtr(dw.as_mut_ptr());
    let tasks: Vec<(usize, Range<usize>)> = (0..s.groups)
        .flat_map(|g| (0..ranges).map(move |r| (g, split_range(d.k, ranges, r))))
        .collect();
    // Every task sweeps the chunks image after image: with a gate, each
    // waits for the images of a chunk as it reaches them.
    tasks.into_par_iter().for_each(|(g, cols_range)| {
        for (i, ch) in chunks.iter().enumerate() {
            if gate.is_some_and(|gate| !gate.input_ready(ch.n0 + ch.nimg - 1)) {
                return;
            }
            let at = g * d.m * d.k + cols_range.start;
            let c = MatMut {
                ptr: unsafe { dwp.at(at) },
                rs: d.k,
                cs: 1,
            };
            weights_chunk::<S>(
                s,
                t,
                &d,
                x,
                dy,
                c,
                g,
                *ch,
                cols_range.clone(),
                i > 0,
                bblock,
                budget,
            );
        }
    });
}

/// `dw` of `s` split by positions over workers that sum into private
/// partials (few columns: a small kernel over few channels).
fn weights_by_positions<S: Packed>(
    s: &ConvShape,
    (x, dy, dw): (&[f32], &[f32], &mut [f32]),
    t: &Tuning,
) {
    let d = Dims::of(s);
    let threads = rayon::current_num_threads();
    let workers = partial_workers(t, dw.len(), threads);
    let total = t.scratch_bytes / 4;
    let budget = (total - (workers - 1) * dw.len()) / workers;
    let bblock = b_block::<S>(budget);
    let want = 4 * workers;
    let cols = balanced_cols(WEIGHTS_COLS, s.n * d.p, s.groups, want);
    let cols = image_cols(cols, d.p, d.m, budget - bblock);
    // Whole images (several a chunk where they are small) are shared out as
    // chunks; images larger than a chunk as equal runs of positions.
    let whole_images: Option<Vec<(usize, Chunk)>> =
        (cols >= d.p).then(|| per_group(s.groups, &Chunk::cover(0..s.n, d.p, cols, 1)));
    sum_over_workers(t, dw, workers, |wi, acc| {
        let mine = match &whole_images {
            Some(tasks) => tasks[split_range(tasks.len(), workers, wi)].to_vec(),
            None => worker_chunks(s.n, d.p, cols, s.groups, workers, wi),
        };
        for &(g, ch) in &mine {
            let c = MatMut {
                ptr: acc[g * d.m * d.k..].as_mut_ptr(),
                rs: d.k,
                cs: 1,
            };
            weights_chunk::<S>(s, t, &d, x, dy, c, g, ch, 0..d.k, true, bblock, budget);
        }
    });
}

/// The chunks of worker `wi` of `workers` over `n` images of `p` positions,
/// each group's in turn: the positions of all the images, one image after
/// another, cut into one nearly equal run per worker, and each run's part
/// of an image into chunks of at most `cols` (less than `p`). Cutting the
/// images into chunks first and sharing the chunks out would leave whole
/// chunks over: 7 images of 3136 positions in chunks of 343 are 70 chunks,
/// and 16 workers would take 5 or 4 of them — the call as long as 5 for
/// the work of 4.4.
fn worker_chunks(
    n: usize,
    p: usize,
    cols: usize,
    groups: usize,
    workers: usize,
    wi: usize,
) -> Vec<(usize, Chunk)> {
    let chunks: Vec<Chunk> = per_item(split_range(n * p, workers, wi), p)
        .flat_map(|(n0, span)| Chunk::cover_positions(n0, span, cols, 1))
        .collect();
    per_group(groups, &chunks)
}

/// Every group's `(group, chunk)` task over `chunks`, group by group.
fn per_group(groups: usize, chunks: &[Chunk]) -> Vec<(usize, Chunk)> {
    (0..groups)
        .flat_map(|g| chunks.iter().map(move |c| (g, *c)))
        .collect()
}

/// How many column ranges per group a weight gradient is split into, each
/// task owning one and sweeping every position (no partial sums); `None`
/// where it is split by positions into per-worker partial sums instead:
/// too few columns for every thread, or a gradient within
/// [`Tuning::partial_weights_floats`] — with the column split every task
/// reads all of dy, which costs more than summing a few small partials.
/// Side by side on Zen 4 at two threads, against the column split: ResNet's
/// stem +15 % (AVX2) / +38 % (AVX-512), MNIST conv2 +2 % / +27 %, conv3
/// +4 % / +9 %, the others within noise; larger gradients lose (ResNet's
/// 512-channel layer, 9 MiB: −21 %; DeepLab's, 2.3 MiB: −5 %).
fn column_ranges(s: &ConvShape, d: &Dims, t: &Tuning, threads: usize) -> Option<usize> {
    let col_tasks = (2 * threads).div_ceil(s.groups);
    let ranges =
        d.k.div_ceil(WEIGHTS_RANGE_COLS)
            .max(col_tasks)
            .min(d.k.div_ceil(MIN_TASK_COLS))
            .max(1);
    let ranges = even_ranges(ranges, s.groups, threads);
    let split = s.groups * ranges >= threads && s.weight_len() > t.partial_weights_floats;
    (threads == 1 || split).then_some(ranges)
}

/// `C (+)= dy_chunk · colᵀ` for group `g`, restricted to lowered rows `rows`
/// (the columns of `C`, which points at dW column `rows.start`).
#[allow(clippy::too_many_arguments)]
fn weights_chunk<S: Packed>(
    s: &ConvShape,
    t: &Tuning,
    d: &Dims,
    x: &[f32],
    dy: &[f32],
    c: MatMut,
    g: usize,
    ch: Chunk,
    rows: Range<usize>,
    accumulate: bool,
    bblock: usize,
    budget: usize,
) {
    let cols = ch.cols();
    let tmp_len = if ch.nimg == 1 { 0 } else { d.m * cols };
    // Channels the lowered rows `rows` come from, padded when they fit.
    let (ci0, ci1) = (rows.start / d.ks, rows.end.div_ceil(d.ks));
    let pad_len = if d.pointwise || unpadded_taps(s) {
        0
    } else {
        PaddedChunk::len(s, ch, ci1 - ci0)
    };
    let pad_len = if tmp_len + bblock + pad_len <= budget {
        pad_len
    } else {
        0
    };
    t.scratch(Slot::Task, tmp_len + bblock + pad_len, |buf| {
        let (tmp, rest) = buf.split_at_mut(tmp_len);
        let (bbuf, pbuf) = rest.split_at_mut(bblock);
        let a = ASource::Mat(dy_rows(s, d, dy, g, ch, tmp));
        // SAFETY: the kernel is available; `c` is owned by this task/worker.
        unsafe {
            if d.pointwise {
                let b = ImagesTB {
                    src: x,
                    channels: s.c_in,
                    c0: g * d.cin_g + rows.start,
                    plane: d.p,
                    ch,
                };
                run::<S>(d.m, rows.len(), cols, a, &b, c, accumulate, bbuf);
            } else if pad_len > 0 {
                let padded = PaddedChunk::build(t.isa, pbuf, s, x, g, ch, ci0, ci1 - ci0);
                let b = Columns {
                    inner: Im2colTB { padded: &padded },
                    first: rows.start,
                };
                run::<S>(d.m, rows.len(), cols, a, &b, c, accumulate, bbuf);
            } else {
                let b = Columns {
                    inner: DirectIm2colTB { s, x, g, ch },
                    first: rows.start,
                };
                run::<S>(d.m, rows.len(), cols, a, &b, c, accumulate, bbuf);
            }
        }
    });
}

/// The columns of `inner` starting at `first`.
struct Columns<B> {
    inner: B,
    first: usize,
}

impl<B: PackB> PackB for Columns<B> {
    #[inline(always)]
    unsafe fn pack<S: Packed>(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        self.inner.pack::<S>(k0, kc, self.first + j0, nc, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::{Avx2, Avx512};
    use crate::cpu::tests::{check_against_reference, shape, shape2d, Variant};

    /// Shapes [`shifted_forward`] takes: 2-D with padding; 1-D dilated; 3-D
    /// (a 2-D kernel over several slices, chunks across them) with two
    /// groups; 2-D with rows cut into several bands; stride 2 in both
    /// dimensions (four phase planes) with dilation; stride 3 along rows
    /// only; 1-D rows longer than a chunk (column windows); and an input
    /// gradient computed as such a forward pass (64 channels, 2048
    /// positions).
    fn shifted_shapes() -> Vec<ConvShape> {
        vec![
            shape2d(2, 5, 7, 1, [9, 23], [3, 3], [1, 1], [1, 1], [1, 1]),
            shape2d(3, 4, 6, 1, [1, 80], [1, 5], [0, 3], [1, 1], [1, 2]),
            shape(2, 6, 4, 2, [5, 4, 22], [1, 3, 3], [1, 0, 1], [1; 3], [1; 3]),
            shape2d(1, 3, 13, 1, [70, 24], [2, 4], [1, 2], [1, 1], [2, 1]),
            shape2d(2, 5, 6, 1, [17, 80], [4, 5], [1, 1], [2, 2], [1, 2]),
            shape2d(1, 3, 5, 1, [31, 30], [5, 4], [2, 1], [3, 1], [1, 1]),
            shape2d(2, 3, 4, 1, [1, 2100], [1, 3], [0, 1], [1, 1], [1, 1]),
            shape2d(1, 64, 8, 1, [32, 64], [3, 3], [1, 1], [1, 1], [1, 1]),
        ]
    }

    #[test]
    fn shifted_forward_matches_reference() {
        for s in shifted_shapes() {
            let d = Dims::of(&s);
            for threads in [1, 3] {
                let budget = Tuning::default().floats_per_worker(threads);
                assert!(
                    shifted_plan::<Avx2>(&s, &d, threads, budget).is_some(),
                    "{s:?}"
                );
                assert!(
                    shifted_plan::<Avx512>(&s, &d, threads, budget).is_some(),
                    "{s:?}"
                );
            }
            for v in Variant::all() {
                check_against_reference(&s, &v, 17).unwrap();
            }
        }
        // Long rows are cut into windows.
        let long = shifted_shapes()[6];
        let plan = shifted_plan::<Avx2>(&long, &Dims::of(&long), 2, 1 << 22).unwrap();
        assert!(plan.rows == 1 && plan.seg < 2100, "{plan:?}");
        // The wide input gradient goes through it as a forward pass.
        let wide = *shifted_shapes().last().unwrap();
        let f = super::super::data_as_forward(&wide, &Tuning::default()).expect("eligible");
        assert!(shifted_plan::<Avx2>(&f, &Dims::of(&f), 2, 1 << 20).is_some());
    }

    #[test]
    fn shifted_forward_only_where_it_applies() {
        let s = shifted_shapes()[0];
        let d = Dims::of(&s);
        // Output rows of 12 with two wasted columns each (more than 1/8).
        let narrow = shape(2, 5, 7, 1, [1, 9, 12], [1, 3, 3], [0, 1, 1], [1; 3], [1; 3]);
        let strided_depth = shape(
            2,
            5,
            7,
            1,
            [6, 9, 45],
            [1, 3, 3],
            [0, 1, 1],
            [2, 1, 1],
            [1; 3],
        );
        let pointwise = shape(2, 5, 7, 1, [1, 9, 23], [1; 3], [0; 3], [1; 3], [1; 3]);
        let deep = shape(2, 5, 7, 1, [4, 9, 23], [2, 3, 3], [0, 1, 1], [1; 3], [1; 3]);
        let strided_3x3 = shape(
            2,
            5,
            7,
            1,
            [1, 9, 45],
            [1, 3, 3],
            [0, 1, 1],
            [1, 2, 2],
            [1; 3],
        );
        let wide = shape(
            2,
            5,
            129,
            1,
            [1, 9, 23],
            [1, 3, 3],
            [0, 1, 1],
            [1; 3],
            [1; 3],
        );
        for other in [narrow, strided_depth, pointwise, deep, wide, strided_3x3] {
            assert!(
                shifted_plan::<Avx2>(&other, &Dims::of(&other), 2, 1 << 20).is_none(),
                "{other:?}"
            );
        }
        // Without room for one output row's planes and product.
        assert!(shifted_plan::<Avx2>(&s, &d, 2, 1000).is_none());
    }

    /// A 2-D `k × k` layer over `hw × hw` images, padded to keep the size
    /// at stride 1.
    fn square(n: usize, ci: usize, co: usize, hw: usize, k: usize, stride: usize) -> ConvShape {
        shape(
            n,
            ci,
            co,
            1,
            [1, hw, hw],
            [1, k, k],
            [0, k / 2, k / 2],
            [1, stride, stride],
            [1; 3],
        )
    }

    #[test]
    fn input_gradients_of_few_images_fill_the_threads() {
        let conv = |n, ci, hw, k, stride| square(n, ci, ci, hw, k, stride);
        let parts = |s: &ConvShape, threads| data_parts(s, &Dims::of(s), threads);
        // ResNet's 256-channel 3×3 at batch 8: 3 ranges (24 tasks) on 2 and
        // on 16 threads, where every thread has a task already.
        let r256 = conv(8, 256, 14, 3, 1);
        assert_eq!(parts(&r256, 2), 3);
        assert_eq!(parts(&r256, 16), 3);
        // DeepLab's 256 channels at batch 4: 4 ranges (16 tasks) on 16.
        let deeplab = conv(4, 256, 33, 3, 1);
        assert_eq!(parts(&deeplab, 16), 4);
        // 64 channels at batch 8: one range, or two for 16 threads.
        let r64 = conv(8, 64, 56, 3, 2);
        assert_eq!(parts(&r64, 2), 1);
        assert_eq!(parts(&r64, 16), 2);
        // Enough tasks already: unchanged.
        let many = conv(64, 32, 26, 3, 1);
        assert_eq!(parts(&many, 16), parts(&many, 1));
        // Never under MIN_DATA_CHANNELS channels a range.
        let few = conv(1, 12, 20, 3, 1);
        assert_eq!(parts(&few, 16), 1);
        // One image of 17 channels on two threads: two ranges (9 and 8
        // channels), computed right.
        let one = conv(1, 17, 11, 3, 1);
        assert_eq!(parts(&one, 2), 2);
        for v in Variant::all() {
            check_against_reference(&one, &v, 31).unwrap();
        }
    }

    #[test]
    fn small_weight_gradients_sum_partials() {
        let t = Tuning::default();
        let conv = |ci, co, hw, k| square(8, ci, co, hw, k, 1);
        // ResNet's stem (64 × 147) and 64-channel 3×3 (64 × 576): partials.
        for s in [conv(3, 64, 224, 7), conv(64, 64, 56, 3)] {
            assert_eq!(column_ranges(&s, &Dims::of(&s), &t, 2), None, "{s:?}");
        }
        // Its 512-channel 3×3 (9 MiB): a range of at most 480 columns each.
        let wide = conv(512, 512, 7, 3);
        assert_eq!(column_ranges(&wide, &Dims::of(&wide), &t, 2), Some(10));
        // Without the partials rule, the 64-channel layer splits by columns.
        let cols = Tuning {
            partial_weights_floats: 0,
            ..t
        };
        let s = conv(64, 64, 56, 3);
        assert!(column_ranges(&s, &Dims::of(&s), &cols, 2).is_some());
        // One thread has nothing to share: its single task sweeps columns.
        assert!(column_ranges(&s, &Dims::of(&s), &t, 1).is_some());
    }

    #[test]
    fn large_weights_over_few_positions_split_rows() {
        // One chunk holds every position, so four threads need row parts.
        let s = crate::cpu::tests::wide_weights_few_positions();
        let d = Dims::of(&s);
        let (chunks, parts) = forward_plan::<Avx512>(&s, &d, 4, 1 << 20);
        assert_eq!(chunks.len(), 1);
        assert_eq!(parts, 2);
        let (_, parts) = forward_plan::<Avx512>(&s, &d, 1, 1 << 20);
        assert_eq!(parts, 1);
    }

    #[test]
    fn large_weights_over_small_images_take_equal_wide_chunks() {
        // ResNet's 512-channel 3×3 at 7×7, batch 8 (W of 9.4 MB): on two
        // threads, one chunk of four images per thread (196 columns, wide
        // enough to pack A) rather than two of two (98) or one (49: a full
        // panel and a one-column one).
        let s = crate::cpu::tests::shape(
            8,
            512,
            512,
            1,
            [1, 7, 7],
            [1, 3, 3],
            [0, 1, 1],
            [1, 1, 1],
            [1, 1, 1],
        );
        let d = Dims::of(&s);
        let (chunks, parts) = forward_plan::<Avx512>(&s, &d, 2, 1 << 22);
        assert_eq!(parts, 1);
        assert_eq!(chunks.len(), 2);
        assert!(chunks.iter().all(|c| c.nimg == 4 && c.np == 49));
        // Batch 6 has no equal chunks that wide for two threads (three
        // images: 147 columns): the narrower rule, two tasks per thread.
        let six = ConvShape { n: 6, ..s };
        let (chunks, parts) = forward_plan::<Avx512>(&six, &d, 2, 1 << 22);
        assert_eq!(parts, 1);
        assert!(chunks.len() >= 4, "{chunks:?}");
    }

    #[test]
    fn weight_gradient_workers_take_equal_shares_of_the_positions() {
        // A chunk of 7 of ResNet's 56×56 images on 16 workers, in chunks of
        // 343 positions; a batch of 32 on 2; two groups over odd sizes.
        for (n, p, cols, groups, workers) in [
            (7, 3136, 343, 1, 16),
            (32, 3136, 1568, 1, 2),
            (3, 50, 7, 2, 5),
            (1, 9, 4, 1, 4),
        ] {
            let mut seen = vec![0u8; groups * n * p];
            for wi in 0..workers {
                let mine = worker_chunks(n, p, cols, groups, workers, wi);
                let share: usize = mine.iter().map(|(_, c)| c.cols()).sum();
                assert!(
                    share.abs_diff(groups * n * p / workers) <= groups,
                    "worker {wi}"
                );
                for (g, c) in mine {
                    assert!(c.nimg == 1 && c.np <= cols && c.p0 + c.np <= p);
                    for q in c.p0..c.p0 + c.np {
                        seen[(g * n + c.n0) * p + q] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&k| k == 1), "{n} × {p} on {workers}");
        }
    }
}
