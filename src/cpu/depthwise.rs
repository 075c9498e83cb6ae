//! Direct loops for convolutions with one input channel per group (depthwise,
//! with or without a channel multiplier). Each output plane is a sum of
//! shifted, scaled input rows; the row loops are written so LLVM vectorizes
//! them (and emits FMA under the AVX2 entry points of [`super::simd`]).
//!
//! - forward: one task per output plane, rows accumulated in place;
//! - backward data: one task per input-gradient plane; stride 1 is a forward
//!   correlation of `dy` with the flipped kernel, larger strides scatter rows;
//! - backward weights: one task per (channel, block of images) with lane-wise
//!   partial dot products, reduced at the end.

use rayon::prelude::*;

use super::geometry::valid_range;
use super::simd::{dispatch_mul_add, MulAdd};
use super::ConvShape;

/// Accumulator lanes of the dot products in backward weights.
const LANES: usize = 16;
/// Rough number of output elements one rayon task should cover at least.
const MIN_TASK_ELEMS: usize = 8192;

/// A correlation of one input plane with one kernel:
/// `out[o] += Σ_t w[t] · inp[o · stride + t · dil + off]` per spatial dim,
/// taps outside `inp` reading zero.
#[derive(Clone, Copy, Debug)]
struct PlaneGeom {
    out: [usize; 3],
    inp: [usize; 3],
    kernel: [usize; 3],
    stride: [usize; 3],
    dil: [usize; 3],
    off: [isize; 3],
}

impl PlaneGeom {
    fn forward(s: &ConvShape) -> PlaneGeom {
        PlaneGeom {
            out: s.output,
            inp: s.input,
            kernel: s.kernel,
            stride: s.stride,
            dil: s.dilation,
            off: std::array::from_fn(|a| -(s.pad[a] as isize)),
        }
    }

    /// Backward data at stride 1: correlate `dy` with the flipped kernel.
    fn transposed_unit_stride(s: &ConvShape) -> PlaneGeom {
        PlaneGeom {
            out: s.input,
            inp: s.output,
            kernel: s.kernel,
            stride: [1; 3],
            dil: s.dilation,
            off: std::array::from_fn(|a| {
                s.pad[a] as isize - ((s.kernel[a] - 1) * s.dilation[a]) as isize
            }),
        }
    }

    /// Start of the input row that kernel row `(kd, kh)` reads for output row
    /// `(od, oh)`, or `None` when that row is padding.
    #[inline(always)]
    fn input_row(&self, od: usize, oh: usize, kd: usize, kh: usize) -> Option<usize> {
        let id = (od * self.stride[0] + kd * self.dil[0]) as isize + self.off[0];
        let ih = (oh * self.stride[1] + kh * self.dil[1]) as isize + self.off[1];
        if id < 0 || ih < 0 || id >= self.inp[0] as isize || ih >= self.inp[1] as isize {
            return None;
        }
        Some((id as usize * self.inp[1] + ih as usize) * self.inp[2])
    }
}

fn planes_per_task(plane: usize) -> usize {
    (MIN_TASK_ELEMS / plane.max(1)).max(1)
}

pub(crate) fn forward(s: &ConvShape, x: &[f32], w: &[f32], y: &mut [f32]) {
    let (isp, osp, ks) = (s.input_spatial(), s.output_spatial(), s.kernel_spatial());
    let mult = s.c_out_per_group();
    let geom = PlaneGeom::forward(s);
    y.par_chunks_mut(osp)
        .enumerate()
        .with_min_len(planes_per_task(osp))
        .for_each(|(q, out)| {
            let (n, co) = (q / s.c_out, q % s.c_out);
            let ci = co / mult;
            let inp = &x[(n * s.c_in + ci) * isp..][..isp];
            plane_corr(out, inp, &w[co * ks..][..ks], &geom, false);
        });
}

pub(crate) fn backward_data(s: &ConvShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let (isp, osp, ks) = (s.input_spatial(), s.output_spatial(), s.kernel_spatial());
    let mult = s.c_out_per_group();
    let unit_stride = s.stride == [1; 3];
    let geom = if unit_stride {
        PlaneGeom::transposed_unit_stride(s)
    } else {
        PlaneGeom::forward(s)
    };
    dx.par_chunks_mut(isp)
        .enumerate()
        .with_min_len(planes_per_task(isp))
        .for_each(|(q, grad)| {
            let (n, ci) = (q / s.c_in, q % s.c_in);
            let mut flipped = vec![0.0f32; if unit_stride { ks } else { 0 }];
            for j in 0..mult {
                let co = ci * mult + j;
                let dyp = &dy[(n * s.c_out + co) * osp..][..osp];
                let wk = &w[co * ks..][..ks];
                if unit_stride {
                    for (f, v) in flipped.iter_mut().zip(wk.iter().rev()) {
                        *f = *v;
                    }
                    plane_corr(grad, dyp, &flipped, &geom, j > 0);
                } else {
                    plane_scatter(grad, dyp, wk, &geom, j > 0);
                }
            }
        });
}

pub(crate) fn backward_weights(s: &ConvShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let (isp, osp, ks) = (s.input_spatial(), s.output_spatial(), s.kernel_spatial());
    let mult = s.c_out_per_group();
    let geom = PlaneGeom::forward(s);
    let threads = rayon::current_num_threads();
    let blocks = if s.c_out >= 4 * threads {
        1
    } else {
        (4 * threads).div_ceil(s.c_out).min(s.n)
    };
    let mut partial = vec![0.0f32; s.c_out * blocks * ks];
    partial
        .par_chunks_mut(ks)
        .enumerate()
        .for_each(|(task, acc)| {
            let (co, b) = (task / blocks, task % blocks);
            let ci = co / mult;
            let mut lanes = vec![[0.0f32; LANES]; ks];
            let per = s.n.div_ceil(blocks);
            for n in b * per..((b + 1) * per).min(s.n) {
                let xp = &x[(n * s.c_in + ci) * isp..][..isp];
                let dyp = &dy[(n * s.c_out + co) * osp..][..osp];
                plane_weights(&mut lanes, xp, dyp, &geom);
            }
            for (a, l) in acc.iter_mut().zip(&lanes) {
                *a = l.iter().sum();
            }
        });
    for (co, out) in dw.chunks_mut(ks).enumerate() {
        out.fill(0.0);
        for b in 0..blocks {
            for (o, v) in out.iter_mut().zip(&partial[(co * blocks + b) * ks..][..ks]) {
                *o += *v;
            }
        }
    }
}

dispatch_mul_add!(fn plane_corr(out: &mut [f32], inp: &[f32], w: &[f32], g: &PlaneGeom, accumulate: bool) => plane_corr_impl);
dispatch_mul_add!(fn plane_scatter(grad: &mut [f32], dy: &[f32], w: &[f32], g: &PlaneGeom, accumulate: bool) => plane_scatter_impl);
dispatch_mul_add!(fn plane_weights(lanes: &mut [[f32; LANES]], x: &[f32], dy: &[f32], g: &PlaneGeom) => plane_weights_impl);

/// `out = corr(inp, w)` (or `out +=` when `accumulate`) over a whole plane.
#[inline(always)]
fn plane_corr_impl<M: MulAdd>(
    out: &mut [f32],
    inp: &[f32],
    w: &[f32],
    g: &PlaneGeom,
    accumulate: bool,
) {
    let [od_n, oh_n, ow_n] = g.out;
    let [kd_n, kh_n, kw_n] = g.kernel;
    let iw = g.inp[2];
    for od in 0..od_n {
        for oh in 0..oh_n {
            let row = &mut out[(od * oh_n + oh) * ow_n..][..ow_n];
            let mut init = !accumulate;
            for kd in 0..kd_n {
                for kh in 0..kh_n {
                    let Some(at) = g.input_row(od, oh, kd, kh) else {
                        continue;
                    };
                    let src = &inp[at..at + iw];
                    let taps = &w[(kd * kh_n + kh) * kw_n..][..kw_n];
                    row_corr::<M>(row, src, taps, g.stride[2], g.dil[2], g.off[2], init);
                    init = false;
                }
            }
            if init {
                row.fill(0.0);
            }
        }
    }
}

/// `y[o] (= or +=) Σ_t w[t] · x[o · stride + t · dil + off]` along one row.
#[inline(always)]
fn row_corr<M: MulAdd>(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    stride: usize,
    dil: usize,
    off: isize,
    init: bool,
) {
    macro_rules! fixed {
        ($k:literal, $s:literal) => {
            if init {
                row_fixed::<M, $k, $s, true>(y, x, w, dil, off)
            } else {
                row_fixed::<M, $k, $s, false>(y, x, w, dil, off)
            }
        };
    }
    match (w.len(), stride) {
        (1, 1) => fixed!(1, 1),
        (2, 1) => fixed!(2, 1),
        (3, 1) => fixed!(3, 1),
        (4, 1) => fixed!(4, 1),
        (5, 1) => fixed!(5, 1),
        (7, 1) => fixed!(7, 1),
        (1, 2) => fixed!(1, 2),
        (3, 2) => fixed!(3, 2),
        (5, 2) => fixed!(5, 2),
        (7, 2) => fixed!(7, 2),
        _ => row_any::<M>(y, x, w, stride, dil, off, init),
    }
}

/// [`row_corr`] for a kernel width `K` and stride `S` known at compile time:
/// the interior, where every tap is inside the row, runs branch-free.
#[inline(always)]
fn row_fixed<M: MulAdd, const K: usize, const S: usize, const INIT: bool>(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    dil: usize,
    off: isize,
) {
    let n = y.len();
    let taps: [f32; K] = std::array::from_fn(|t| w[t]);
    let (a, _) = valid_range(n, S, off, x.len());
    let (_, b) = valid_range(n, S, off + ((K - 1) * dil) as isize, x.len());
    let b = b.max(a);
    for o in (0..a).chain(b..n) {
        let mut acc = if INIT { 0.0 } else { y[o] };
        for (t, wt) in taps.iter().enumerate() {
            let i = (o * S + t * dil) as isize + off;
            if i >= 0 && (i as usize) < x.len() {
                acc = M::mul_add(*wt, x[i as usize], acc);
            }
        }
        y[o] = acc;
    }
    if b > a {
        let base = ((a * S) as isize + off) as usize;
        let xs = &x[base..];
        let ys = &mut y[a..b];
        assert!((ys.len() - 1) * S + (K - 1) * dil < xs.len());
        for (j, yo) in ys.iter_mut().enumerate() {
            let mut acc = if INIT { 0.0 } else { *yo };
            for (t, wt) in taps.iter().enumerate() {
                // SAFETY: j·S + t·dil <= (len-1)·S + (K-1)·dil < xs.len() (asserted).
                let v = unsafe { *xs.get_unchecked(j * S + t * dil) };
                acc = M::mul_add(*wt, v, acc);
            }
            *yo = acc;
        }
    }
}

/// [`row_corr`] for any kernel width and stride, one tap at a time.
#[inline(always)]
fn row_any<M: MulAdd>(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    stride: usize,
    dil: usize,
    off: isize,
    init: bool,
) {
    if init {
        y.fill(0.0);
    }
    for (t, wt) in w.iter().enumerate() {
        let o = off + (t * dil) as isize;
        let (lo, hi) = valid_range(y.len(), stride, o, x.len());
        if hi > lo {
            let base = ((lo * stride) as isize + o) as usize;
            let src = x[base..].iter().step_by(stride);
            for (yo, v) in y[lo..hi].iter_mut().zip(src) {
                *yo = M::mul_add(*wt, *v, *yo);
            }
        }
    }
}

/// Strided backward data for one plane: scatters `w[t] · dy[o]` to the input
/// position each tap read in the forward pass.
#[inline(always)]
fn plane_scatter_impl<M: MulAdd>(
    grad: &mut [f32],
    dy: &[f32],
    w: &[f32],
    g: &PlaneGeom,
    accumulate: bool,
) {
    if !accumulate {
        grad.fill(0.0);
    }
    let [od_n, oh_n, ow_n] = g.out;
    let [kd_n, kh_n, kw_n] = g.kernel;
    let (sw, dw, iw) = (g.stride[2], g.dil[2], g.inp[2]);
    for od in 0..od_n {
        for oh in 0..oh_n {
            let src = &dy[(od * oh_n + oh) * ow_n..][..ow_n];
            for kd in 0..kd_n {
                for kh in 0..kh_n {
                    let Some(at) = g.input_row(od, oh, kd, kh) else {
                        continue;
                    };
                    let row = &mut grad[at..at + iw];
                    for (kw, wt) in w[(kd * kh_n + kh) * kw_n..][..kw_n].iter().enumerate() {
                        let o = (kw * dw) as isize + g.off[2];
                        let (lo, hi) = valid_range(ow_n, sw, o, iw);
                        if hi > lo {
                            let base = ((lo * sw) as isize + o) as usize;
                            for (d, v) in row[base..].iter_mut().step_by(sw).zip(&src[lo..hi]) {
                                *d = M::mul_add(*wt, *v, *d);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Adds one image's contribution to every tap of one channel's weight
/// gradient, kept as `LANES` partial sums per tap.
#[inline(always)]
fn plane_weights_impl<M: MulAdd>(lanes: &mut [[f32; LANES]], x: &[f32], dy: &[f32], g: &PlaneGeom) {
    let [od_n, oh_n, ow_n] = g.out;
    let [kd_n, kh_n, kw_n] = g.kernel;
    let (sw, dw, iw) = (g.stride[2], g.dil[2], g.inp[2]);
    for od in 0..od_n {
        for oh in 0..oh_n {
            let grad = &dy[(od * oh_n + oh) * ow_n..][..ow_n];
            for kd in 0..kd_n {
                for kh in 0..kh_n {
                    let Some(at) = g.input_row(od, oh, kd, kh) else {
                        continue;
                    };
                    let row = &x[at..at + iw];
                    for kw in 0..kw_n {
                        let o = (kw * dw) as isize + g.off[2];
                        let (lo, hi) = valid_range(ow_n, sw, o, iw);
                        if hi > lo {
                            let base = ((lo * sw) as isize + o) as usize;
                            let l = &mut lanes[(kd * kh_n + kh) * kw_n + kw];
                            match sw {
                                1 => dot_lanes::<M, 1>(l, &grad[lo..hi], &row[base..]),
                                2 => dot_lanes::<M, 2>(l, &grad[lo..hi], &row[base..]),
                                _ => dot_lanes_strided::<M>(l, &grad[lo..hi], &row[base..], sw),
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `lanes[i mod LANES] += a[i] · b[i · S]`.
#[inline(always)]
fn dot_lanes<M: MulAdd, const S: usize>(lanes: &mut [f32; LANES], a: &[f32], b: &[f32]) {
    assert!(!a.is_empty() && (a.len() - 1) * S < b.len());
    let mut l = *lanes;
    let full = a.len() / LANES * LANES;
    for (c, chunk) in a[..full].chunks_exact(LANES).enumerate() {
        for i in 0..LANES {
            // SAFETY: (c·LANES + i)·S <= (a.len()-1)·S < b.len() (asserted).
            let v = unsafe { *b.get_unchecked((c * LANES + i) * S) };
            l[i] = M::mul_add(chunk[i], v, l[i]);
        }
    }
    for (i, av) in a[full..].iter().enumerate() {
        l[i] = M::mul_add(*av, b[(full + i) * S], l[i]);
    }
    *lanes = l;
}

/// [`dot_lanes`] with a stride known only at run time.
#[inline(always)]
fn dot_lanes_strided<M: MulAdd>(lanes: &mut [f32; LANES], a: &[f32], b: &[f32], stride: usize) {
    for (i, (av, bv)) in a.iter().zip(b.iter().step_by(stride)).enumerate() {
        let l = i % LANES;
        lanes[l] = M::mul_add(*av, *bv, lanes[l]);
    }
}
