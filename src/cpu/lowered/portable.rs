//! The three passes lowered to matrix products with `gemm`.
//!
//! Per group `g`, with `M = c_out / groups`, `K = (c_in / groups) · taps` and a
//! chunk of `C` output positions:
//! - forward:          `y[M×C]  = W[M×K] · col[K×C]`
//! - backward data:    `col[K×C] = Wᵀ[K×M] · dy[M×C]`, then `col2im` into `dx`
//! - backward weights: `dW[M×K] += dy[M×C] · colᵀ[C×K]`
//!
//! Chunks cut the positions of the batch so each task's lowered matrix stays
//! within its share of the scratch budget; chunks of small images span several
//! whole images so the products stay large. Pointwise (1×1, stride 1, no
//! padding) problems read the input in place and skip `im2col`. Every task runs
//! `gemm` single-threaded on the current rayon pool, except backward weights
//! when the per-worker partial sums would not fit in the budget.

use std::ops::Range;

use rayon::prelude::*;

use super::im2col::{col2im, gather_rows, im2col, scatter_rows, Chunk};
use super::matmul::{matmul, Mat, MatMut};
use super::par::{split_range, SendPtr};
use super::scratch::{Slot, Tuning};
use super::ConvShape;

/// Fewest columns a chunk is cut to for load balance alone.
const MIN_BALANCE_COLS: usize = 64;
/// Fewest columns a chunk gets for cache reasons alone (keeps the weight
/// operand's packing cost amortised when `K` is large).
const MIN_GEMM_COLS: usize = 192;

/// Matrix sizes of one group's products.
#[derive(Clone, Copy)]
struct Dims {
    /// Output channels per group.
    m: usize,
    /// Rows of the lowered matrix: input channels per group × kernel taps.
    k: usize,
    /// Output positions per image.
    p: usize,
    /// Kernel taps.
    ks: usize,
    /// Input channels per group.
    cin_g: usize,
    pointwise: bool,
}

impl Dims {
    fn of(s: &ConvShape) -> Dims {
        Dims {
            m: s.c_out_per_group(),
            k: s.c_in_per_group() * s.kernel_spatial(),
            p: s.output_spatial(),
            ks: s.kernel_spatial(),
            cin_g: s.c_in_per_group(),
            pointwise: s.is_pointwise(),
        }
    }
}

/// Preferred chunk width: large enough for cache reuse and `gemm` efficiency,
/// within `budget` scratch floats at `floats_per_col` floats per column.
fn preferred_cols(t: &Tuning, d: &Dims, budget: usize, floats_per_col: usize) -> usize {
    let cache = (t.chunk_bytes / 4 / d.k).max(MIN_GEMM_COLS);
    cache.min(budget / floats_per_col.max(1)).max(1)
}

/// Narrows `cols` so the `groups × chunks` tasks number at least `want`.
fn balanced_cols(cols: usize, total_cols: usize, groups: usize, want: usize) -> usize {
    let per_group = want.div_ceil(groups).max(1);
    cols.min(total_cols.div_ceil(per_group).max(MIN_BALANCE_COLS))
        .max(1)
}

pub(crate) fn forward(s: &ConvShape, x: &[f32], w: &[f32], y: &mut [f32], t: &Tuning) {
    let d = Dims::of(s);
    let threads = rayon::current_num_threads();
    let budget = t.floats_per_worker(threads);
    let cols = preferred_cols(t, &d, budget, d.k + d.m);
    let want = if threads > 1 { 4 * threads } else { 1 };
    let cols = balanced_cols(cols, s.n * d.p, s.groups, want);
    let chunks = Chunk::cover(0..s.n, d.p, cols);
    let tasks: Vec<(usize, Chunk)> = (0..s.groups)
        .flat_map(|g| chunks.iter().map(move |c| (g, *c)))
        .collect();
    let yp = SendPtr(y.as_mut_ptr());
    tasks
        .into_par_iter()
        .for_each(|(g, ch)| forward_chunk(s, t, &d, x, w, yp, g, ch));
}

/// Computes the outputs of group `g` at the positions of chunk `ch`.
#[allow(clippy::too_many_arguments)]
fn forward_chunk(
    s: &ConvShape,
    t: &Tuning,
    d: &Dims,
    x: &[f32],
    w: &[f32],
    y: SendPtr,
    g: usize,
    ch: Chunk,
) {
    let cols = ch.cols();
    let in_place = d.pointwise && ch.nimg == 1;
    let col_len = if in_place { 0 } else { d.k * cols };
    let tmp_len = if ch.nimg == 1 { 0 } else { d.m * cols };
    t.scratch(Slot::Task, col_len + tmp_len, |buf| {
        let (colbuf, tmp) = buf.split_at_mut(col_len);
        let b = if in_place {
            let at = (ch.n0 * s.c_in + g * d.cin_g) * d.p + ch.p0;
            Mat {
                ptr: x[at..].as_ptr(),
                rs: d.p,
                cs: 1,
            }
        } else {
            im2col(s, x, g, ch, 0..d.cin_g, colbuf);
            Mat {
                ptr: colbuf.as_ptr(),
                rs: cols,
                cs: 1,
            }
        };
        let a = Mat {
            ptr: w[g * d.m * d.k..].as_ptr(),
            rs: d.k,
            cs: 1,
        };
        // SAFETY: operands lie inside their buffers; this task alone writes the
        // chunk's positions of group `g` in `y`.
        unsafe {
            if ch.nimg == 1 {
                let at = (ch.n0 * s.c_out + g * d.m) * d.p + ch.p0;
                let dst = MatMut {
                    ptr: y.0.add(at),
                    rs: d.p,
                    cs: 1,
                };
                matmul(d.m, cols, d.k, dst, false, a, b, 1);
            } else {
                let dst = MatMut {
                    ptr: tmp.as_mut_ptr(),
                    rs: cols,
                    cs: 1,
                };
                matmul(d.m, cols, d.k, dst, false, a, b, 1);
                scatter_rows(tmp, s.c_out, g * d.m, d.m, ch, y);
            }
        }
    });
}

pub(crate) fn backward_data(s: &ConvShape, dy: &[f32], w: &[f32], dx: &mut [f32], t: &Tuning) {
    let d = Dims::of(s);
    let threads = rayon::current_num_threads();
    let budget = t.floats_per_worker(threads);
    let cols = preferred_cols(t, &d, budget, d.k + d.m);
    let want = if threads > 1 { 2 * threads } else { 1 };
    // Tasks own disjoint parts of dx: (block of images, group, channel range).
    let imgs = (cols / d.p)
        .max(1)
        .min((s.n * s.groups / want).max(1))
        .min(s.n);
    let n_blocks = s.n.div_ceil(imgs);
    let tasks_ng = n_blocks * s.groups;
    let ci_parts = if tasks_ng >= want {
        1
    } else {
        want.div_ceil(tasks_ng).min(d.cin_g)
    };
    let mut tasks = Vec::with_capacity(tasks_ng * ci_parts);
    for b in 0..n_blocks {
        let images = b * imgs..((b + 1) * imgs).min(s.n);
        for g in 0..s.groups {
            for c in 0..ci_parts {
                tasks.push((images.clone(), g, split_range(d.cin_g, ci_parts, c)));
            }
        }
    }
    let dxp = SendPtr(dx.as_mut_ptr());
    tasks
        .into_par_iter()
        .for_each(|(images, g, ci)| backward_data_task(s, t, &d, dy, w, dxp, images, g, ci, cols));
}

/// Computes dx for `images`, group `g`, channels `ci` of the group.
#[allow(clippy::too_many_arguments)]
fn backward_data_task(
    s: &ConvShape,
    t: &Tuning,
    d: &Dims,
    dy: &[f32],
    w: &[f32],
    dx: SendPtr,
    images: Range<usize>,
    g: usize,
    ci: Range<usize>,
    cols: usize,
) {
    let isp = s.input_spatial();
    let c0 = g * d.cin_g + ci.start;
    if !d.pointwise {
        for n in images.clone() {
            // SAFETY: this task owns channels c0..c0+len of these images.
            unsafe { dx.slice((n * s.c_in + c0) * isp, ci.len() * isp) }.fill(0.0);
        }
    }
    let kr = ci.len() * d.ks;
    let chunks = Chunk::cover(images, d.p, cols);
    let max_cols = chunks.iter().map(Chunk::cols).max().unwrap_or(0);
    t.scratch(Slot::Task, (kr + d.m) * max_cols, |buf| {
        for ch in chunks {
            let cols = ch.cols();
            let (colbuf, rest) = buf.split_at_mut(kr * cols);
            let b = if ch.nimg == 1 {
                let at = (ch.n0 * s.c_out + g * d.m) * d.p + ch.p0;
                Mat {
                    ptr: dy[at..].as_ptr(),
                    rs: d.p,
                    cs: 1,
                }
            } else {
                let tmp = &mut rest[..d.m * cols];
                gather_rows(dy, s.c_out, g * d.m, d.m, ch, tmp);
                Mat {
                    ptr: tmp.as_ptr(),
                    rs: cols,
                    cs: 1,
                }
            };
            // Wᵀ restricted to the task's channels: element (r, o) = W[g][o][ci0·ks + r].
            let a = Mat {
                ptr: w[g * d.m * d.k + ci.start * d.ks..].as_ptr(),
                rs: 1,
                cs: d.k,
            };
            // SAFETY: operands lie inside their buffers; this task alone
            // touches dx channels c0.. of its images.
            unsafe {
                if d.pointwise && ch.nimg == 1 {
                    let at = (ch.n0 * s.c_in + c0) * d.p + ch.p0;
                    let dst = MatMut {
                        ptr: dx.0.add(at),
                        rs: d.p,
                        cs: 1,
                    };
                    matmul(kr, cols, d.m, dst, false, a, b, 1);
                } else {
                    let dst = MatMut {
                        ptr: colbuf.as_mut_ptr(),
                        rs: cols,
                        cs: 1,
                    };
                    matmul(kr, cols, d.m, dst, false, a, b, 1);
                    if d.pointwise {
                        scatter_rows(colbuf, s.c_in, c0, kr, ch, dx);
                    } else {
                        col2im(s, colbuf, g, ch, ci.clone(), dx);
                    }
                }
            }
        }
    });
}

pub(crate) fn backward_weights(s: &ConvShape, x: &[f32], dy: &[f32], dw: &mut [f32], t: &Tuning) {
    let d = Dims::of(s);
    let threads = rayon::current_num_threads();
    let wlen = dw.len();
    let total = t.scratch_bytes / 4;
    // Each worker sums into a private copy of dW (worker 0 into dW itself) as
    // long as the copies take at most half the budget; otherwise one worker
    // runs and `gemm` itself spreads each product over the pool.
    let affordable = 1 + (total / 2) / wlen.max(1);
    let workers = if affordable >= threads { threads } else { 1 };
    let gemm_threads = if workers == 1 { threads } else { 1 };
    let partial_len = (workers - 1) * wlen;
    let budget = (total - partial_len) / workers;
    let cols = preferred_cols(t, &d, budget, d.k + d.m);
    let want = if workers > 1 { 4 * workers } else { 1 };
    let cols = balanced_cols(cols, s.n * d.p, s.groups, want);
    let chunks = Chunk::cover(0..s.n, d.p, cols);
    let tasks: Vec<(usize, Chunk)> = (0..s.groups)
        .flat_map(|g| chunks.iter().map(move |c| (g, *c)))
        .collect();

    if workers == 1 {
        dw.fill(0.0);
        for &(g, ch) in &tasks {
            weights_chunk(s, t, &d, x, dy, dw, g, ch, gemm_threads);
        }
        return;
    }
    t.scratch(Slot::Partials, partial_len, |parts| {
        let dwp = SendPtr(dw.as_mut_ptr());
        let pp = SendPtr(parts.as_mut_ptr());
        (0..workers).into_par_iter().for_each(|wi| {
            // SAFETY: worker `wi` alone uses partial `wi` (dW itself for 0).
            let acc = unsafe {
                if wi == 0 {
                    dwp.slice(0, wlen)
                } else {
                    pp.slice((wi - 1) * wlen, wlen)
                }
            };
            acc.fill(0.0);
            for &(g, ch) in &tasks[split_range(tasks.len(), workers, wi)] {
                weights_chunk(s, t, &d, x, dy, acc, g, ch, 1);
            }
        });
        let parts = &*parts;
        const BLOCK: usize = 1 << 14;
        dw.par_chunks_mut(BLOCK).enumerate().for_each(|(bi, out)| {
            let len = out.len();
            for wi in 1..workers {
                let at = (wi - 1) * wlen + bi * BLOCK;
                for (o, v) in out.iter_mut().zip(&parts[at..at + len]) {
                    *o += *v;
                }
            }
        });
    });
}

/// Adds chunk `ch`'s contribution to group `g` of the weight gradient `acc`.
#[allow(clippy::too_many_arguments)]
fn weights_chunk(
    s: &ConvShape,
    t: &Tuning,
    d: &Dims,
    x: &[f32],
    dy: &[f32],
    acc: &mut [f32],
    g: usize,
    ch: Chunk,
    threads: usize,
) {
    let cols = ch.cols();
    let in_place = d.pointwise && ch.nimg == 1;
    let col_len = if in_place { 0 } else { d.k * cols };
    let tmp_len = if ch.nimg == 1 { 0 } else { d.m * cols };
    t.scratch(Slot::Task, col_len + tmp_len, |buf| {
        let (colbuf, tmp) = buf.split_at_mut(col_len);
        // colᵀ: element (c, r) = col[r][c].
        let b = if in_place {
            let at = (ch.n0 * s.c_in + g * d.cin_g) * d.p + ch.p0;
            Mat {
                ptr: x[at..].as_ptr(),
                rs: 1,
                cs: d.p,
            }
        } else {
            if threads > 1 {
                let per = d.ks * cols;
                colbuf
                    .par_chunks_mut(per)
                    .enumerate()
                    .for_each(|(c, rows)| im2col(s, x, g, ch, c..c + 1, rows));
            } else {
                im2col(s, x, g, ch, 0..d.cin_g, colbuf);
            }
            Mat {
                ptr: colbuf.as_ptr(),
                rs: 1,
                cs: cols,
            }
        };
        let a = if ch.nimg == 1 {
            let at = (ch.n0 * s.c_out + g * d.m) * d.p + ch.p0;
            Mat {
                ptr: dy[at..].as_ptr(),
                rs: d.p,
                cs: 1,
            }
        } else {
            gather_rows(dy, s.c_out, g * d.m, d.m, ch, tmp);
            Mat {
                ptr: tmp.as_ptr(),
                rs: cols,
                cs: 1,
            }
        };
        let dst = MatMut {
            ptr: acc[g * d.m * d.k..].as_mut_ptr(),
            rs: d.k,
            cs: 1,
        };
        // SAFETY: operands lie inside their buffers; `acc` is this worker's own.
        unsafe { matmul(d.m, d.k, cols, dst, true, a, b, threads) };
    });
}
