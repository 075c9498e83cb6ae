//! Convolutions computed directly on packed channels-last f32 tensors (`[n, h, w, c]`;
//! 1-D and 2-D), for the layers where that order is the natural one, so channels-last
//! calls of them need no transposes at all:
//! - pointwise layers (1×1, stride 1, no padding, one group) are matrix products over
//!   the positions: `y[P×Co] = x[P×Ci] · Wᵀ`, `dx = dy · W`, `dW = dyᵀ · x`;
//! - depthwise layers (one input and one output channel per group) run along rows of
//!   positions, each position a vector of channels, with any stride, padding and
//!   dilation.
//!
//! Weights keep the engine's order `[c_out, c_in / groups, kh, kw]`, which for both
//! kinds is also their channels-last order. Every pass overwrites its output; work runs
//! on the current rayon pool.

use rayon::prelude::*;

use super::matmul::{matmul, Mat, MatMut};
use super::par::SendPtr;
use super::ConvShape;

/// The layers this module computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Pointwise,
    Depthwise,
}

/// Which kind `s` is, if any (2-D and 1-D problems only).
pub fn kind(s: &ConvShape) -> Option<Kind> {
    if s.input[0] != 1 || s.kernel[0] != 1 || s.output[0] != 1 {
        return None;
    }
    if s.groups == 1 && s.is_pointwise() {
        Some(Kind::Pointwise)
    } else if s.groups == s.c_in && s.c_out == s.c_in && s.groups > 1 {
        Some(Kind::Depthwise)
    } else {
        None
    }
}

fn check(s: &ConvShape, pass: &str, lens: [(&str, usize, usize); 3]) {
    assert!(
        kind(s).is_some(),
        "channels_last::{pass}: {s:?} is neither pointwise nor depthwise"
    );
    s.check_buffers(pass, lens);
}

/// `y = conv(x, w)`, `x` and `y` channels-last.
///
/// # Panics
/// If `s` is not of a [`Kind`] or a buffer's length differs from the shape's.
pub fn forward(s: &ConvShape, x: &[f32], w: &[f32], y: &mut [f32]) {
    check(
        s,
        "forward",
        [
            ("x", x.len(), s.input_len()),
            ("w", w.len(), s.weight_len()),
            ("y", y.len(), s.output_len()),
        ],
    );
    match kind(s) {
        Some(Kind::Pointwise) => {
            let (p, ci, co) = (s.n * s.output_spatial(), s.c_in, s.c_out);
            // SAFETY: lengths checked above; y is exclusively borrowed.
            unsafe {
                matmul(
                    p,
                    co,
                    ci,
                    MatMut {
                        ptr: y.as_mut_ptr(),
                        rs: co,
                        cs: 1,
                    },
                    false,
                    Mat {
                        ptr: x.as_ptr(),
                        rs: ci,
                        cs: 1,
                    },
                    Mat {
                        ptr: w.as_ptr(),
                        rs: 1,
                        cs: ci,
                    },
                    rayon::current_num_threads(),
                )
            }
        }
        _ => depthwise_forward(s, x, w, y),
    }
}

/// `dx = convᵀ(dy, w)`, `dy` and `dx` channels-last.
///
/// # Panics
/// As [`forward`].
pub fn backward_data(s: &ConvShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    check(
        s,
        "backward_data",
        [
            ("dy", dy.len(), s.output_len()),
            ("w", w.len(), s.weight_len()),
            ("dx", dx.len(), s.input_len()),
        ],
    );
    match kind(s) {
        Some(Kind::Pointwise) => {
            let (p, ci, co) = (s.n * s.output_spatial(), s.c_in, s.c_out);
            // SAFETY: as in forward.
            unsafe {
                matmul(
                    p,
                    ci,
                    co,
                    MatMut {
                        ptr: dx.as_mut_ptr(),
                        rs: ci,
                        cs: 1,
                    },
                    false,
                    Mat {
                        ptr: dy.as_ptr(),
                        rs: co,
                        cs: 1,
                    },
                    Mat {
                        ptr: w.as_ptr(),
                        rs: ci,
                        cs: 1,
                    },
                    rayon::current_num_threads(),
                )
            }
        }
        _ => depthwise_backward_data(s, dy, w, dx),
    }
}

/// `dw = Σ dy ⊗ x`, `x` and `dy` channels-last.
///
/// # Panics
/// As [`forward`].
pub fn backward_weights(s: &ConvShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    check(
        s,
        "backward_weights",
        [
            ("x", x.len(), s.input_len()),
            ("dy", dy.len(), s.output_len()),
            ("dw", dw.len(), s.weight_len()),
        ],
    );
    match kind(s) {
        Some(Kind::Pointwise) => pointwise_backward_weights(s, x, dy, dw),
        _ => depthwise_backward_weights(s, x, dy, dw),
    }
}

/// Positions each weight-gradient task sums over at least.
const MIN_TASK_POSITIONS: usize = 2048;

/// Splits `positions` into parts for partial sums: one per thread where each gets
/// enough positions, fewer otherwise.
fn parts(positions: usize) -> usize {
    rayon::current_num_threads()
        .min(positions / MIN_TASK_POSITIONS)
        .max(1)
}

/// `dW[Co×Ci] = dyᵀ · x` summed over all positions: the positions are split into
/// parts whose partial products are added up.
fn pointwise_backward_weights(s: &ConvShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let (p, ci, co) = (s.n * s.output_spatial(), s.c_in, s.c_out);
    let k = parts(p);
    let mut partials = vec![0f32; (k - 1) * dw.len()];
    let wlen = dw.len();
    let dwp = SendPtr(dw.as_mut_ptr());
    let pp = SendPtr(partials.as_mut_ptr());
    (0..k).into_par_iter().for_each(|t| {
        let (from, to) = (t * p / k, (t + 1) * p / k);
        // SAFETY: part t writes dW itself (t = 0) or its own partial; it reads rows
        // from..to of x and dy, in bounds.
        unsafe {
            let out = if t == 0 {
                dwp.at(0)
            } else {
                pp.at((t - 1) * wlen)
            };
            matmul(
                co,
                ci,
                to - from,
                MatMut {
                    ptr: out,
                    rs: ci,
                    cs: 1,
                },
                false,
                Mat {
                    ptr: dy.as_ptr().add(from * co),
                    rs: 1,
                    cs: co,
                },
                Mat {
                    ptr: x.as_ptr().add(from * ci),
                    rs: ci,
                    cs: 1,
                },
                1,
            )
        }
    });
    for part in partials.chunks(wlen) {
        for (d, v) in dw.iter_mut().zip(part) {
            *d += v;
        }
    }
}

/// Geometry of a depthwise layer as rows of positions.
#[derive(Clone, Copy)]
struct Rows {
    c: usize,
    ih: usize,
    iw: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    s: [usize; 2],
    p: [usize; 2],
    d: [usize; 2],
}

impl Rows {
    fn of(s: &ConvShape) -> Rows {
        Rows {
            c: s.c_in,
            ih: s.input[1],
            iw: s.input[2],
            oh: s.output[1],
            ow: s.output[2],
            kh: s.kernel[1],
            kw: s.kernel[2],
            s: [s.stride[1], s.stride[2]],
            p: [s.pad[1], s.pad[2]],
            d: [s.dilation[1], s.dilation[2]],
        }
    }

    /// Input position of output `o` and tap `t` along axis `a`, if inside the input.
    #[inline]
    fn input_of(&self, a: usize, o: usize, t: usize) -> Option<usize> {
        let v = (o * self.s[a] + t * self.d[a]).checked_sub(self.p[a])?;
        (v < [self.ih, self.iw][a]).then_some(v)
    }

    /// Output position that tap `t` of input `i` feeds along axis `a`, if any.
    #[inline]
    fn output_of(&self, a: usize, i: usize, t: usize) -> Option<usize> {
        let v = (i + self.p[a]).checked_sub(t * self.d[a])?;
        (v % self.s[a] == 0 && v / self.s[a] < [self.oh, self.ow][a]).then_some(v / self.s[a])
    }
}

/// The weights `[c][kh][kw]` as `[kh][kw][c]`, so that a tap's weights are one vector.
fn taps_by_channel(r: &Rows, w: &[f32]) -> Vec<f32> {
    let k = r.kh * r.kw;
    let mut t = vec![0f32; k * r.c];
    for ch in 0..r.c {
        for tap in 0..k {
            t[tap * r.c + ch] = w[ch * k + tap];
        }
    }
    t
}

/// `acc[i] += a[i] · b[i]`, vectorised where the CPU allows.
#[inline]
fn fma_into(acc: &mut [f32], a: &[f32], b: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if fma_available() {
        // SAFETY: the CPU has AVX2 and FMA.
        unsafe { fma_into_avx2(acc, a, b) };
        return;
    }
    fma_into_portable(acc, a, b);
}

#[inline(always)]
fn fma_into_portable(acc: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, x), y) in acc.iter_mut().zip(a).zip(b) {
        *o = x.mul_add(*y, *o);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_into_avx2(acc: &mut [f32], a: &[f32], b: &[f32]) {
    fma_into_portable(acc, a, b)
}

#[cfg(target_arch = "x86_64")]
fn fma_available() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// Rows of output (or input) positions per task.
fn rows_per_task(row_elems: usize, rows: usize) -> usize {
    (1usize << 14)
        .div_ceil(row_elems.max(1))
        .clamp(1, rows.max(1))
}

fn depthwise_forward(s: &ConvShape, x: &[f32], w: &[f32], y: &mut [f32]) {
    let r = Rows::of(s);
    let taps = taps_by_channel(&r, w);
    let row = r.ow * r.c;
    let per = rows_per_task(row, s.n * r.oh);
    y.par_chunks_mut(row * per)
        .enumerate()
        .for_each(|(t, out)| {
            for (j, orow) in out.chunks_mut(row).enumerate() {
                let g = t * per + j;
                let (n, oh) = (g / r.oh, g % r.oh);
                orow.fill(0.0);
                for kh in 0..r.kh {
                    let Some(ih) = r.input_of(0, oh, kh) else {
                        continue;
                    };
                    let xrow = &x[(n * r.ih + ih) * r.iw * r.c..][..r.iw * r.c];
                    for ow in 0..r.ow {
                        let acc = &mut orow[ow * r.c..][..r.c];
                        for kw in 0..r.kw {
                            if let Some(iw) = r.input_of(1, ow, kw) {
                                let tap = &taps[(kh * r.kw + kw) * r.c..][..r.c];
                                fma_into(acc, &xrow[iw * r.c..][..r.c], tap);
                            }
                        }
                    }
                }
            }
        });
}

fn depthwise_backward_data(s: &ConvShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let r = Rows::of(s);
    let taps = taps_by_channel(&r, w);
    let row = r.iw * r.c;
    let per = rows_per_task(row, s.n * r.ih);
    dx.par_chunks_mut(row * per)
        .enumerate()
        .for_each(|(t, out)| {
            for (j, irow) in out.chunks_mut(row).enumerate() {
                let g = t * per + j;
                let (n, ih) = (g / r.ih, g % r.ih);
                irow.fill(0.0);
                for kh in 0..r.kh {
                    let Some(oh) = r.output_of(0, ih, kh) else {
                        continue;
                    };
                    let dyrow = &dy[(n * r.oh + oh) * r.ow * r.c..][..r.ow * r.c];
                    for iw in 0..r.iw {
                        let acc = &mut irow[iw * r.c..][..r.c];
                        for kw in 0..r.kw {
                            if let Some(ow) = r.output_of(1, iw, kw) {
                                let tap = &taps[(kh * r.kw + kw) * r.c..][..r.c];
                                fma_into(acc, &dyrow[ow * r.c..][..r.c], tap);
                            }
                        }
                    }
                }
            }
        });
}

fn depthwise_backward_weights(s: &ConvShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let r = Rows::of(s);
    let k = r.kh * r.kw;
    let rows = s.n * r.oh;
    let tasks = parts(rows * r.ow);
    // Per task, sums in [kh][kw][c] order.
    let sums: Vec<Vec<f32>> = (0..tasks)
        .into_par_iter()
        .map(|t| {
            let mut acc = vec![0f32; k * r.c];
            for g in t * rows / tasks..(t + 1) * rows / tasks {
                let (n, oh) = (g / r.oh, g % r.oh);
                let dyrow = &dy[(n * r.oh + oh) * r.ow * r.c..][..r.ow * r.c];
                for kh in 0..r.kh {
                    let Some(ih) = r.input_of(0, oh, kh) else {
                        continue;
                    };
                    let xrow = &x[(n * r.ih + ih) * r.iw * r.c..][..r.iw * r.c];
                    for kw in 0..r.kw {
                        let a = &mut acc[(kh * r.kw + kw) * r.c..][..r.c];
                        for ow in 0..r.ow {
                            if let Some(iw) = r.input_of(1, ow, kw) {
                                fma_into(a, &dyrow[ow * r.c..][..r.c], &xrow[iw * r.c..][..r.c]);
                            }
                        }
                    }
                }
            }
            acc
        })
        .collect();
    for ch in 0..r.c {
        for tap in 0..k {
            dw[ch * k + tap] = sums.iter().map(|a| a[tap * r.c + ch]).sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::conv;

    /// `[n, c, h, w]` (the engine's order) to `[n, h, w, c]`.
    fn to_nhwc(s: &ConvShape, v: &[f32], c: usize, sp: [usize; 3]) -> Vec<f32> {
        let plane = sp[1] * sp[2];
        let mut out = vec![0f32; v.len()];
        for n in 0..s.n {
            for ch in 0..c {
                for i in 0..plane {
                    out[(n * plane + i) * c + ch] = v[(n * c + ch) * plane + i];
                }
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as u32 * 2654435761u32 ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn shape(
        n: usize,
        c_in: usize,
        c_out: usize,
        groups: usize,
        hw: [usize; 2],
        k: [usize; 2],
        stride: [usize; 2],
        pad: [usize; 2],
        dil: [usize; 2],
    ) -> ConvShape {
        let input = [1, hw[0], hw[1]];
        let kernel = [1, k[0], k[1]];
        let (stride, pad, dilation) = (
            [1, stride[0], stride[1]],
            [0, pad[0], pad[1]],
            [1, dil[0], dil[1]],
        );
        let output = ConvShape::forward_output(input, kernel, pad, stride, dilation).unwrap();
        ConvShape {
            n,
            c_in,
            c_out,
            groups,
            input,
            kernel,
            output,
            pad,
            stride,
            dilation,
        }
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{what}: element {i}: {x} vs {y}"
            );
        }
    }

    /// Each pass on channels-last tensors equals the engine's NCHW pass, transposed.
    fn check(s: &ConvShape) {
        assert!(kind(s).is_some(), "{s:?}");
        let (x, w, dy) = (
            values(s.input_len(), 1),
            values(s.weight_len(), 2),
            values(s.output_len(), 3),
        );
        let (xl, dyl) = (
            to_nhwc(s, &x, s.c_in, s.input),
            to_nhwc(s, &dy, s.c_out, s.output),
        );
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut y = vec![0f32; s.output_len()];
                conv::forward(s, &x, &w, &mut y);
                let mut yl = vec![f32::NAN; s.output_len()];
                forward(s, &xl, &w, &mut yl);
                close(&yl, &to_nhwc(s, &y, s.c_out, s.output), "forward");

                let mut dx = vec![0f32; s.input_len()];
                conv::backward_data(s, &dy, &w, &mut dx);
                let mut dxl = vec![f32::NAN; s.input_len()];
                backward_data(s, &dyl, &w, &mut dxl);
                close(&dxl, &to_nhwc(s, &dx, s.c_in, s.input), "backward_data");

                let mut dw = vec![0f32; s.weight_len()];
                conv::backward_weights(s, &x, &dy, &mut dw);
                let mut dwl = vec![f32::NAN; s.weight_len()];
                backward_weights(s, &xl, &dyl, &mut dwl);
                close(&dwl, &dw, "backward_weights");
            });
        }
    }

    #[test]
    fn pointwise_matches_the_engine() {
        check(&shape(2, 13, 7, 1, [5, 6], [1, 1], [1, 1], [0, 0], [1, 1]));
        // enough positions for several weight-gradient parts
        check(&shape(
            3,
            8,
            16,
            1,
            [40, 41],
            [1, 1],
            [1, 1],
            [0, 0],
            [1, 1],
        ));
        // 1-D
        check(&shape(2, 5, 3, 1, [1, 30], [1, 1], [1, 1], [0, 0], [1, 1]));
    }

    #[test]
    fn depthwise_matches_the_engine() {
        check(&shape(
            2,
            19,
            19,
            19,
            [9, 8],
            [3, 3],
            [1, 1],
            [1, 1],
            [1, 1],
        ));
        check(&shape(1, 8, 8, 8, [11, 10], [3, 3], [2, 2], [1, 1], [1, 1]));
        check(&shape(2, 5, 5, 5, [9, 9], [3, 3], [1, 1], [2, 2], [2, 2]));
        check(&shape(
            1,
            16,
            16,
            16,
            [6, 7],
            [5, 5],
            [2, 1],
            [2, 0],
            [1, 1],
        ));
        // 1-D, and enough rows for several weight-gradient parts
        check(&shape(2, 6, 6, 6, [1, 50], [1, 3], [1, 1], [0, 1], [1, 1]));
        check(&shape(4, 4, 4, 4, [64, 64], [3, 3], [1, 1], [1, 1], [1, 1]));
    }

    #[test]
    fn only_pointwise_and_depthwise_layers_qualify() {
        assert_eq!(
            kind(&shape(1, 4, 4, 1, [5, 5], [1, 1], [2, 2], [0, 0], [1, 1])),
            None,
            "strided 1x1"
        );
        assert_eq!(
            kind(&shape(1, 4, 4, 2, [5, 5], [1, 1], [1, 1], [0, 0], [1, 1])),
            None,
            "grouped 1x1"
        );
        assert_eq!(
            kind(&shape(1, 4, 8, 4, [5, 5], [3, 3], [1, 1], [1, 1], [1, 1])),
            None,
            "channel multiplier"
        );
        assert_eq!(
            kind(&shape(1, 4, 4, 1, [5, 5], [3, 3], [1, 1], [1, 1], [1, 1])),
            None,
            "dense 3x3"
        );
        let mut s3 = shape(1, 4, 4, 4, [5, 5], [3, 3], [1, 1], [1, 1], [1, 1]);
        s3.input[0] = 3;
        s3.output[0] = 3;
        assert_eq!(kind(&s3), None, "3-D");
    }
}
