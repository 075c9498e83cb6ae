//! The three passes lowered to matrix products.
//!
//! Per group `g`, with `M = c_out / groups`, `K = (c_in / groups) · taps` and a
//! chunk of `C` output positions:
//! - forward:          `y[M×C]  = W[M×K] · col[K×C]`
//! - backward data:    `col[K×C] = Wᵀ[K×M] · dy[M×C]`, then `col2im` into `dx`
//! - backward weights: `dW[M×K] += dy[M×C] · colᵀ[C×K]`
//!
//! Chunks cut the positions of the batch into independent tasks; chunks of
//! small images span several whole images so the products stay large.
//! Backward-data tasks own disjoint parts of `dx` (images × group × channel
//! range), so `col2im` needs no synchronisation; backward-weights tasks either
//! own disjoint blocks of `dW` or sum into per-worker partials reduced at the
//! end. Two back ends share this plan: [`avx512`] (the packed AVX-512 GEMM,
//! im2col fused into its packing) and [`portable`] (explicit im2col chunks
//! and the `gemm` crate).

mod avx512;
mod portable;

use super::scratch::Tuning;
use super::ConvShape;

/// Matrix sizes of one group's products.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    /// Output channels per group.
    pub m: usize,
    /// Rows of the lowered matrix: input channels per group × kernel taps.
    pub k: usize,
    /// Output positions per image.
    pub p: usize,
    /// Kernel taps.
    pub ks: usize,
    /// Input channels per group.
    pub cin_g: usize,
    /// 1×1 kernel, stride 1, no padding, output size = input size.
    pub pointwise: bool,
}

impl Dims {
    pub fn of(s: &ConvShape) -> Dims {
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

/// Fewest columns a chunk is cut to for load balance alone.
const MIN_BALANCE_COLS: usize = 64;

/// Narrows `cols` so the `groups × chunks` tasks number at least `want`.
pub(super) fn balanced_cols(cols: usize, total_cols: usize, groups: usize, want: usize) -> usize {
    let per_group = want.div_ceil(groups).max(1);
    cols.min(total_cols.div_ceil(per_group).max(MIN_BALANCE_COLS))
        .max(1)
}

fn use_avx512(t: &Tuning) -> bool {
    t.avx512 && super::avx512_gemm::available()
}

pub(crate) fn forward(s: &ConvShape, x: &[f32], w: &[f32], y: &mut [f32], t: &Tuning) {
    if use_avx512(t) {
        avx512::forward(s, x, w, y, t);
    } else {
        portable::forward(s, x, w, y, t);
    }
}

pub(crate) fn backward_data(s: &ConvShape, dy: &[f32], w: &[f32], dx: &mut [f32], t: &Tuning) {
    if use_avx512(t) {
        avx512::backward_data(s, dy, w, dx, t);
    } else {
        portable::backward_data(s, dy, w, dx, t);
    }
}

pub(crate) fn backward_weights(s: &ConvShape, x: &[f32], dy: &[f32], dw: &mut [f32], t: &Tuning) {
    if use_avx512(t) {
        avx512::backward_weights(s, x, dy, dw, t);
    } else {
        portable::backward_weights(s, x, dy, dw, t);
    }
}

/// Workers for a weight gradient summed into private partials: every thread
/// when `threads - 1` extra copies of dW fit in half the budget, else one.
pub(super) fn partial_workers(t: &Tuning, wlen: usize, threads: usize) -> usize {
    let affordable = 1 + (t.scratch_bytes / 4 / 2) / wlen.max(1);
    if affordable >= threads {
        threads
    } else {
        1
    }
}

/// Runs `work(worker, acc)` for `workers` workers, each summing into its own
/// zeroed copy of the weight gradient (worker 0 into `dw` itself), then adds
/// the copies into `dw`.
pub(super) fn sum_over_workers(
    t: &Tuning,
    dw: &mut [f32],
    workers: usize,
    work: impl Fn(usize, &mut [f32]) + Sync,
) {
    use super::par::SendPtr;
    use super::scratch::Slot;
    use rayon::prelude::*;

    let wlen = dw.len();
    t.scratch(Slot::Partials, (workers - 1) * wlen, |parts| {
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
            work(wi, acc);
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
