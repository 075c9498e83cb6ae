//! Portable back end of the lowered passes: each task writes its chunk's
//! lowered matrix (im2col) into scratch and multiplies with the `gemm` crate
//! (which picks AVX2/FMA, SSE or NEON at run time). Pointwise problems read
//! the input in place.

use std::ops::Range;

use rayon::prelude::*;

use super::{balanced_cols, dy_rows, partial_workers, sum_over_workers, Dims};
use crate::cpu::im2col::{col2im, im2col, scatter_rows, Chunk};
use crate::cpu::matmul::{matmul, Mat, MatMut};
use crate::cpu::par::{split_range, SendPtr};
use crate::cpu::scratch::{Slot, Tuning};
use crate::cpu::ConvShape;

/// Fewest columns a chunk gets for cache reasons alone (keeps the weight
/// operand's packing cost amortised when `K` is large).
const MIN_GEMM_COLS: usize = 192;
/// Preferred size of one lowered chunk, for cache reuse.
const CHUNK_BYTES: usize = 768 << 10;

/// Preferred chunk width within `budget` scratch floats at `floats_per_col`
/// floats per column.
fn preferred_cols(t: &Tuning, d: &Dims, budget: usize, floats_per_col: usize) -> usize {
    let cache = (t.chunk_bytes.min(CHUNK_BYTES) / 4 / d.k).max(MIN_GEMM_COLS);
    cache.min(budget / floats_per_col.max(1)).max(1)
}

pub(super) fn forward(s: &ConvShape, x: &[f32], w: &[f32], y: &mut [f32], t: &Tuning) {
    let d = Dims::of(s);
    let threads = rayon::current_num_threads();
    let budget = t.floats_per_worker(threads);
    let cols = preferred_cols(t, &d, budget, d.k + d.m);
    let want = if threads > 1 { 4 * threads } else { 1 };
    let cols = balanced_cols(cols, s.n * d.p, s.groups, want);
    let chunks = Chunk::cover(0..s.n, d.p, cols, 1);
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
                    ptr: y.at(at),
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

pub(super) fn backward_data(s: &ConvShape, dy: &[f32], w: &[f32], dx: &mut [f32], t: &Tuning) {
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
    let chunks = Chunk::cover(images, d.p, cols, 1);
    let max_cols = chunks.iter().map(Chunk::cols).max().unwrap_or(0);
    t.scratch(Slot::Task, (kr + d.m) * max_cols, |buf| {
        for ch in chunks {
            let cols = ch.cols();
            let (colbuf, rest) = buf.split_at_mut(kr * cols);
            let b = dy_rows(s, d, dy, g, ch, &mut rest[..d.m * cols]);
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
                        ptr: dx.at(at),
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

pub(super) fn backward_weights(s: &ConvShape, x: &[f32], dy: &[f32], dw: &mut [f32], t: &Tuning) {
    let d = Dims::of(s);
    let threads = rayon::current_num_threads();
    // Each worker sums into a private copy of dW as long as the copies fit;
    // otherwise one worker runs and `gemm` spreads each product over the pool.
    let workers = partial_workers(t, dw.len(), threads);
    let gemm_threads = if workers == 1 { threads } else { 1 };
    let total = t.scratch_bytes / 4;
    let budget = (total - (workers - 1) * dw.len()) / workers;
    let cols = preferred_cols(t, &d, budget, d.k + d.m);
    let want = if workers > 1 { 4 * workers } else { 1 };
    let cols = balanced_cols(cols, s.n * d.p, s.groups, want);
    let chunks = Chunk::cover(0..s.n, d.p, cols, 1);
    let tasks: Vec<(usize, Chunk)> = (0..s.groups)
        .flat_map(|g| chunks.iter().map(move |c| (g, *c)))
        .collect();
    sum_over_workers(t, dw, workers, |wi, acc| {
        for &(g, ch) in &tasks[split_range(tasks.len(), workers, wi)] {
            weights_chunk(s, t, &d, x, dy, acc, g, ch, gemm_threads);
        }
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
        let a = dy_rows(s, d, dy, g, ch, tmp);
        let dst = MatMut {
            ptr: acc[g * d.m * d.k..].as_mut_ptr(),
            rs: d.k,
            cs: 1,
        };
        // SAFETY: operands lie inside their buffers; `acc` is this worker's own.
        unsafe { matmul(d.m, d.k, cols, dst, true, a, b, threads) };
    });
}
