//! The weight gradient of small 2-D kernels over a channels-last copy of
//! the input, on the packed GEMM: the counterpart of [`super::implicit`].
//!
//! Each task takes one image and a band of its output rows, and copies the
//! input rows the band reads into the implicit forward's padded
//! channels-last phase planes ([`super::implicit::fill_planes`]). There,
//! for output position `p` (virtual, `r·owv + ow`) and kernel row `kh`,
//! the `KW · C` depths `(kw, ci)` are contiguous at `plane(kh) + p ·
//! stride_w · C`. So the lowered input, transposed (positions × `(kh, kw,
//! ci)`), is packed as `B` by plain vector copies — where the NCHW lowering
//! gathers each `(ci, tap)` row along the positions (a stride-2 gather over
//! padded planes for MNIST's 3×3/2, a third of its time) — and the product
//! `dW'[co][(kh, kw, ci)] += Σ_p dy[co][p] · B[p][(kh, kw, ci)]` reads `dy`
//! in place as `A`. Only real positions are packed (the phantom columns of
//! the virtual rows are skipped). Workers sum into private partials in that
//! order (`super::sum_over_workers`), permuted into `[co][ci][kh][kw]` at
//! the end; so the path takes the gradients small enough for partials.

use std::ops::Range;

use rayon::prelude::*;

use super::implicit::{fill_planes, Geo};
use super::packed::b_block;
use crate::cpu::gate::Gate;
use crate::cpu::matmul::{Mat, MatMut};
use crate::cpu::pack::PlanesTB;
use crate::cpu::packed_gemm::{gemm, ASource, Packed, WithPacked};
use crate::cpu::scratch::{Slot, Tuning};
use crate::cpu::ConvShape;

/// Most contiguous runs of columns (kernel rows, or taps when dilated).
const MAX_PARTS: usize = 64;
/// Widest output rows: longer rows leave the NCHW lowering long runs to
/// transpose straight from its padded planes, which measured ahead (ResNet's
/// 64-channel layer at 56 columns −5 % this way, its 7×7/2 stem at 112
/// −14 %); at 24 and 12 columns (MNIST conv2 and conv3) this path gains
/// 6 % and 22 % at AVX2.
pub(super) const MAX_ROW: usize = 32;
/// Fewest input channels: the length of each copied run of `B`.
const MIN_CHANNELS: usize = 8;

/// How one call is cut: output rows per task, the workers summing into
/// partials and each one's scratch floats.
pub(super) type Plan = super::PartialBands;

/// The plan for `s` on `threads` workers, if the path applies: a 2-D convolution of
/// one group with more than one tap, at least [`MIN_CHANNELS`] input
/// channels, output rows of at most [`MAX_ROW`], at most [`MAX_PARTS`] runs
/// of columns, a gradient within [`Tuning::partial_weights_floats`] with a
/// partial for every thread, and a task's planes within a worker's share of
/// the budget.
pub(super) fn plan<S: Packed>(s: &ConvShape, t: &Tuning, threads: usize) -> Option<Plan> {
    let parts = if s.dilation[2] == 1 {
        s.kernel[1]
    } else {
        s.kernel_spatial()
    };
    if !t.implicit_weights
        || s.groups != 1
        || s.input[0] != 1
        || s.kernel[0] != 1
        || s.kernel_spatial() == 1
        || s.output[2] > MAX_ROW
        || s.c_in < MIN_CHANNELS
        || parts > MAX_PARTS
        || s.weight_len() > t.partial_weights_floats
    {
        return None;
    }
    let g = Geo::of::<S>(s);
    super::partial_bands(s, t, threads, |band, budget| {
        g.input_len::<S>(band) + b_block::<S>(budget)
    })
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
    let Plan { band, budget, .. } = plan;
    let bblock = b_block::<S>(budget);
    let tasks = super::image_bands(s.n, g.oh, band);
    let units = super::unit_runs(&tasks, plan.units(gate.is_some()));
    let len = g.input_len::<S>(band);
    super::sum_over_units(t, dw, (&tasks, &units), gate, |acc, run| {
        t.scratch(Slot::Task, len + bblock, |buf| {
            let (input, bbuf) = buf.split_at_mut(len);
            for (n, rows) in run {
                let task = Task {
                    s,
                    g: &g,
                    x: &x[n * g.c * g.h * g.w..][..g.c * g.h * g.w],
                    dy: &dy[n * g.co * g.oh * g.ow..][..g.co * g.oh * g.ow],
                    input: &mut *input,
                    bbuf: &mut *bbuf,
                    acc: &mut *acc,
                    rows,
                };
                // SAFETY: the instruction set is available (checked by the
                // caller).
                unsafe { S::enter(task) }
            }
        });
    });
    from_tap_major(t, dw, g.c, g.kh * g.kw);
}

/// Permutes `dw` from `[co][(tap, ci)]` (`c` channels, `taps` taps) into
/// `[co][ci][tap]`.
pub(super) fn from_tap_major(t: &Tuning, dw: &mut [f32], c: usize, taps: usize) {
    t.scratch(Slot::Weights, dw.len(), |tmp| {
        tmp.copy_from_slice(dw);
        permute_tap_major(tmp, dw, c, taps);
    });
}

/// `dw[co][ci][tap]` = `src[co][(tap, ci)]` (`c` channels, `taps` taps),
/// a row of `co` a task.
pub(super) fn permute_tap_major(src: &[f32], dw: &mut [f32], c: usize, taps: usize) {
    dw.par_chunks_mut(c * taps)
        .zip(src.par_chunks(c * taps))
        .for_each(|(out, src)| {
            // Each tap's run of `src` is read along the channels, one
            // element a channel's run of `out`.
            let runs: Vec<&[f32]> = src.chunks_exact(c).collect();
            for (ci, o) in out.chunks_exact_mut(taps).enumerate() {
                for (v, run) in o.iter_mut().zip(&runs) {
                    *v = run[ci];
                }
            }
        });
}

/// One task: an image's band of output rows, summed into `acc`.
struct Task<'a> {
    s: &'a ConvShape,
    g: &'a Geo,
    /// The image's input planes and output gradient.
    x: &'a [f32],
    dy: &'a [f32],
    input: &'a mut [f32],
    bbuf: &'a mut [f32],
    acc: &'a mut [f32],
    rows: Range<usize>,
}

impl WithPacked for Task<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Packed>(self) {
        let (g, s) = (self.g, self.s);
        let rows = self.rows.len();
        let plane_len = g.plane_len(rows);
        fill_planes::<S>(g, self.x, self.rows.start, rows, plane_len, self.input);
        let c = g.c;
        // Runs of columns: input offset and length (all KW taps of a
        // kernel row where they are adjacent, else one tap's channels).
        let mut parts = [(0usize, 0usize); MAX_PARTS];
        let mut count = 0;
        for kh in 0..g.kh {
            let dyo = kh * g.dil[0];
            let base = (dyo % g.stride[0]) * plane_len + (dyo / g.stride[0]) * g.pitch * c;
            if g.dil[1] == 1 {
                parts[count] = (base, g.kw * c);
                count += 1;
            } else {
                for kw in 0..g.kw {
                    parts[count] = (base + kw * g.dil[1] * c, c);
                    count += 1;
                }
            }
        }
        let b = PlanesTB {
            input: self.input,
            parts: &parts[..count],
            part_len: parts[0].1,
            lda: g.stride[1] * c,
            ow: g.ow,
            owv: g.owv,
        };
        b.check(rows * g.ow);
        let positions = rows * g.ow;
        let op = g.oh * g.ow;
        let a = Mat {
            ptr: self.dy[self.rows.start * g.ow..].as_ptr(),
            rs: op,
            cs: 1,
        };
        let k = g.kh * g.kw * c;
        debug_assert_eq!(k, s.c_in * s.kernel_spatial());
        let out = MatMut {
            ptr: self.acc.as_mut_ptr(),
            rs: k,
            cs: 1,
        };
        gemm::<S>(
            g.co,
            k,
            positions,
            ASource::Mat(a),
            &b,
            out,
            true,
            self.bbuf,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::{Avx2, Avx512, Isa};
    use crate::cpu::tests::{check_against_reference, shape, shape2d, Variant};

    /// Shapes the path takes: padding, stride 2 (two phase planes),
    /// dilation along rows (one run per tap), channels not a multiple of
    /// the vector width, a 5×5 kernel, rows cut into several bands.
    fn shapes() -> Vec<ConvShape> {
        vec![
            shape2d(3, 8, 7, 1, [9, 11], [3, 3], [1, 1], [1, 1], [1, 1]),
            shape2d(2, 12, 4, 1, [12, 13], [3, 3], [1, 1], [2, 2], [1, 1]),
            shape2d(2, 9, 5, 1, [11, 14], [3, 2], [2, 1], [1, 2], [2, 2]),
            shape2d(2, 8, 8, 1, [10, 10], [5, 5], [2, 2], [1, 1], [1, 1]),
            shape2d(1, 17, 9, 1, [70, 31], [2, 4], [0, 1], [3, 1], [1, 1]),
            // 16 channels: every panel one run (`kw·C` = 48), the packing's
            // whole-vector copies at both widths; blocks of positions that
            // begin within an output row.
            shape2d(2, 16, 6, 1, [40, 30], [3, 3], [1, 1], [1, 1], [1, 1]),
        ]
    }

    #[test]
    fn implicit_weight_gradient_matches_reference() {
        for s in shapes() {
            for threads in [1, 3] {
                let t = Tuning::default();
                assert!(plan::<Avx2>(&s, &t, threads).is_some(), "{s:?}");
                assert!(plan::<Avx512>(&s, &t, threads).is_some(), "{s:?}");
            }
            for v in Variant::all() {
                check_against_reference(&s, &v, 31).unwrap();
            }
        }
        // Several bands an image.
        let tall = shapes()[4];
        let band = plan::<Avx2>(&tall, &Tuning::default(), 3).unwrap().band;
        assert!(band < tall.output[1], "{band}");
    }

    #[test]
    fn implicit_weight_gradient_only_where_it_applies() {
        let t = Tuning {
            isa: Isa::Avx2,
            ..Tuning::default()
        };
        let base = shapes()[0];
        assert!(plan::<Avx2>(&base, &t, 2).is_some());
        let few = shape2d(3, 7, 8, 1, [9, 11], [3, 3], [1, 1], [1, 1], [1, 1]);
        let wide_rows = shape2d(1, 8, 8, 1, [4, 33], [3, 3], [1, 1], [1, 1], [1, 1]);
        let grouped = shape2d(3, 6, 8, 2, [9, 11], [3, 3], [1, 1], [1, 1], [1, 1]);
        let deep = shape(2, 4, 4, 1, [5, 9, 11], [3, 3, 3], [1, 1, 1], [1; 3], [1; 3]);
        let pointwise = shape2d(2, 4, 4, 1, [9, 11], [1, 1], [0, 0], [1, 1], [1, 1]);
        let large = shape2d(1, 256, 256, 1, [9, 9], [3, 3], [1, 1], [1, 1], [1, 1]);
        for s in [few, wide_rows, grouped, deep, pointwise, large] {
            assert!(plan::<Avx2>(&s, &t, 2).is_none(), "{s:?}");
        }
        let off = Tuning {
            implicit_weights: false,
            ..t
        };
        assert!(plan::<Avx2>(&base, &off, 2).is_none());
    }
}
