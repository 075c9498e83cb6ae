//! Convolutions computed directly on packed channels-last f32 tensors (`[n, h, w, c]`;
//! 1-D and 2-D), for the layers where that order is the natural one, so channels-last
//! calls of them need no transposes at all (and the forward pass and stride-1 input
//! gradient of the layers the engine's implicit GEMM takes, which reads and writes this
//! order: [`forward_applies`], [`backward_data_applies`]):
//! - pointwise layers (1×1, stride 1, no padding, one group) are matrix products over
//!   the positions: `y[P×Co] = x[P×Ci] · Wᵀ`, `dx = dy · W`, `dW = dyᵀ · x`;
//! - depthwise layers (one input and one output channel per group) run along rows of
//!   positions, each position a vector of channels, with any stride, padding and
//!   dilation.
//!
//! Weights keep the engine's order `[c_out, c_in / groups, kh, kw]`, which for both
//! kinds is also their channels-last order. Every pass overwrites its output; work runs
//! on the current rayon pool.

use std::ops::Range;

use rayon::prelude::*;

use super::matmul::{matmul, Mat, MatMut};
use super::par::SendPtr;
use super::scratch::Tuning;
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
    if s.groups == 1 && pointwise_step(s).is_some() {
        Some(Kind::Pointwise)
    } else if s.groups == s.c_in && s.c_out == s.c_in && s.groups > 1 {
        Some(Kind::Depthwise)
    } else {
        None
    }
}

/// Input pixels from one output position to the next, where every output position of
/// the batch reads one input pixel and those lie evenly apart: a 1×1 kernel without
/// padding whose vertical stride steps over whole rows (`stride_h · W = stride_w · OW`
/// and `H = stride_h · OH`). That is stride 1 (a step of 1), or a horizontal stride over
/// rows that are all read — a strided 1×1 layer whose unread rows the call path left on
/// the device (`skipped_rows`): its positions are `stride_w` pixels apart across the
/// whole batch.
fn pointwise_step(s: &ConvShape) -> Option<usize> {
    if s.kernel != [1; 3] || s.pad != [0; 3] || s.stride[0] != 1 {
        return None;
    }
    let (sh, sw) = (s.stride[1], s.stride[2]);
    (sh * s.input[2] == sw * s.output[2] && s.input[1] == sh * s.output[1]).then_some(sw)
}

fn check(s: &ConvShape, pass: &str, lens: [(&str, usize, usize); 3]) {
    assert!(
        kind(s).is_some(),
        "channels_last::{pass}: {s:?} is neither pointwise nor depthwise"
    );
    s.check_buffers(pass, lens);
}

/// Whether [`forward`] computes `s`: a layer of a [`Kind`], or one the
/// engine's implicit GEMM takes (2-D, one group, more than one tap, few
/// phantom positions), which reads and writes channels-last directly.
pub fn forward_applies(s: &ConvShape) -> bool {
    kind(s).is_some() || super::lowered::channels_last_forward_applies(s, &Tuning::default())
}

/// Whether [`backward_data`] computes `s`: a layer of a [`Kind`], or a
/// stride-1 layer whose input gradient is a forward convolution (of `dy`
/// with the flipped kernel) that the implicit GEMM takes.
pub fn backward_data_applies(s: &ConvShape) -> bool {
    kind(s).is_some() || super::lowered::channels_last_backward_data_applies(s, &Tuning::default())
}

/// `y = conv(x, w)`, `x` and `y` channels-last.
///
/// # Panics
/// If `s` is not one [`forward_applies`] to or a buffer's length differs
/// from the shape's.
pub fn forward(s: &ConvShape, x: &[f32], w: &[f32], y: &mut [f32]) {
    if kind(s).is_none() {
        return general(s, Pass::Forward, [x, w], y);
    }
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
            let step = pointwise_step(s).expect("pointwise");
            // SAFETY: lengths checked above (output position `q` reads input pixel
            // `step · q`); y is exclusively borrowed.
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
                        rs: step * ci,
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
        _ => depthwise_forward(s, x, w, y, vector_available()),
    }
}

/// A pass the general [`forward`] and [`backward_data`] fall back on.
#[derive(Clone, Copy)]
enum Pass {
    Forward,
    BackwardData,
}

/// The forward pass or input gradient of a layer of no [`Kind`] (`[a, w]` →
/// `out`): on the implicit GEMM where it runs on the current pool, else
/// through NCHW copies.
fn general(s: &ConvShape, pass: Pass, [a, w]: [&[f32]; 2], out: &mut [f32]) {
    // The input, weights and output of the pass, and the shape's sizes of
    // the first and last.
    let (name, applies, [an, on], [alen, olen]) = match pass {
        Pass::Forward => (
            "forward",
            forward_applies(s),
            ["x", "y"],
            [s.input_len(), s.output_len()],
        ),
        Pass::BackwardData => (
            "backward_data",
            backward_data_applies(s),
            ["dy", "dx"],
            [s.output_len(), s.input_len()],
        ),
    };
    let lens = [
        (an, a.len(), alen),
        ("w", w.len(), s.weight_len()),
        (on, out.len(), olen),
    ];
    assert!(
        applies,
        "channels_last::{name}: {s:?} is neither pointwise, depthwise nor one the implicit GEMM takes"
    );
    s.check_buffers(name, lens);
    let t = Tuning::default();
    let done = match pass {
        Pass::Forward => super::lowered::forward_channels_last(s, a, w, out, &t),
        Pass::BackwardData => super::lowered::backward_data_channels_last(s, a, w, out, &t),
    };
    if !done {
        through_nchw(s, [a, w], out, pass);
    }
}

/// The engine's NCHW pass on NCHW copies of the channels-last input and
/// output (`[a, w]` → `out`): the fallback of the general [`forward`] and
/// [`backward_data`] for the rare call whose single output row does not fit
/// the pool's share of scratch.
fn through_nchw(s: &ConvShape, [a, w]: [&[f32]; 2], out: &mut [f32], pass: Pass) {
    let (ci, co, pi, po) = (s.c_in, s.c_out, s.input_spatial(), s.output_spatial());
    let ((ca, pa), (cout, pout)) = match pass {
        Pass::Forward => ((ci, pi), (co, po)),
        Pass::BackwardData => ((co, po), (ci, pi)),
    };
    let mut an = vec![0.0f32; a.len()];
    for n in 0..s.n {
        for p in 0..pa {
            for c in 0..ca {
                an[(n * ca + c) * pa + p] = a[(n * pa + p) * ca + c];
            }
        }
    }
    let mut on = vec![0.0f32; out.len()];
    match pass {
        Pass::Forward => super::conv::forward(s, &an, w, &mut on),
        Pass::BackwardData => super::conv::backward_data(s, &an, w, &mut on),
    }
    for n in 0..s.n {
        for p in 0..pout {
            for c in 0..cout {
                out[(n * pout + p) * cout + c] = on[(n * cout + c) * pout + p];
            }
        }
    }
}

/// `dx = convᵀ(dy, w)`, `dy` and `dx` channels-last.
///
/// # Panics
/// If `s` is not one [`backward_data_applies`] to or a buffer's length
/// differs from the shape's.
pub fn backward_data(s: &ConvShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    if kind(s).is_none() {
        return general(s, Pass::BackwardData, [dy, w], dx);
    }
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
            let step = pointwise_step(s).expect("pointwise");
            if step > 1 {
                // The pixels no position reads get no gradient.
                dx.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
            }
            // SAFETY: as in forward.
            unsafe {
                matmul(
                    p,
                    ci,
                    co,
                    MatMut {
                        ptr: dx.as_mut_ptr(),
                        rs: step * ci,
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
        _ => depthwise_backward_data(s, dy, w, dx, vector_available()),
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
        _ => depthwise_backward_weights(s, x, dy, dw, vector_available()),
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
    let step = pointwise_step(s).expect("pointwise");
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
                    ptr: x.as_ptr().add(from * step * ci),
                    rs: step * ci,
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

/// Most kernel taps a position gathers (a 7×7 kernel has 49).
const MAX_TAPS: usize = 64;

/// `out[c] = Σ_j a_j[c] · b_j[c]` over the pairs, for `c < len`.
///
/// # Safety
/// Every pointer is valid for `len` values; `out` overlaps none of them.
#[inline]
unsafe fn dot_pairs(out: *mut f32, pairs: &[(*const f32, *const f32)], len: usize, vector: bool) {
    #[cfg(target_arch = "x86_64")]
    if vector {
        return dot_pairs_avx2(out, pairs, len);
    }
    let _ = vector;
    for c in 0..len {
        let mut acc = 0f32;
        for (a, b) in pairs {
            acc = (*a.add(c)).mul_add(*b.add(c), acc);
        }
        *out.add(c) = acc;
    }
}

/// `acc_j[c] += a[c] · b_j[c]` for every pair `(acc_j, b_j)` and `c < len`.
///
/// # Safety
/// As [`dot_pairs`]; the accumulators overlap nothing else.
#[inline]
unsafe fn axpy_pairs(a: *const f32, pairs: &[(*mut f32, *const f32)], len: usize, vector: bool) {
    #[cfg(target_arch = "x86_64")]
    if vector {
        return axpy_pairs_avx2(a, pairs, len);
    }
    let _ = vector;
    for (acc, b) in pairs {
        for c in 0..len {
            *acc.add(c) = (*a.add(c)).mul_add(*b.add(c), *acc.add(c));
        }
    }
}

/// Whether the depthwise loops use AVX2 + FMA: where the CPU has them and the
/// engine's instruction-set cap (`RDNA1SHIM_MAX_ISA`) allows.
fn vector_available() -> bool {
    super::isa() >= super::Isa::Avx2
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_pairs_avx2(out: *mut f32, pairs: &[(*const f32, *const f32)], len: usize) {
    use std::arch::x86_64::*;
    let mut c = 0;
    // Four vectors of channels at a time, the accumulators in registers.
    while c + 32 <= len {
        let mut acc = [_mm256_setzero_ps(); 4];
        for (a, b) in pairs {
            for (v, r) in acc.iter_mut().enumerate() {
                let o = c + 8 * v;
                *r = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(o)), _mm256_loadu_ps(b.add(o)), *r);
            }
        }
        for (v, r) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(c + 8 * v), *r);
        }
        c += 32;
    }
    while c + 8 <= len {
        let mut r = _mm256_setzero_ps();
        for (a, b) in pairs {
            r = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(c)), _mm256_loadu_ps(b.add(c)), r);
        }
        _mm256_storeu_ps(out.add(c), r);
        c += 8;
    }
    for c in c..len {
        let mut acc = 0f32;
        for (a, b) in pairs {
            acc = (*a.add(c)).mul_add(*b.add(c), acc);
        }
        *out.add(c) = acc;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_pairs_avx2(a: *const f32, pairs: &[(*mut f32, *const f32)], len: usize) {
    use std::arch::x86_64::*;
    let mut c = 0;
    while c + 16 <= len {
        let (a0, a1) = (_mm256_loadu_ps(a.add(c)), _mm256_loadu_ps(a.add(c + 8)));
        for (acc, b) in pairs {
            let (p0, p1) = (acc.add(c), acc.add(c + 8));
            _mm256_storeu_ps(
                p0,
                _mm256_fmadd_ps(a0, _mm256_loadu_ps(b.add(c)), _mm256_loadu_ps(p0)),
            );
            _mm256_storeu_ps(
                p1,
                _mm256_fmadd_ps(a1, _mm256_loadu_ps(b.add(c + 8)), _mm256_loadu_ps(p1)),
            );
        }
        c += 16;
    }
    for c in c..len {
        for (acc, b) in pairs {
            *acc.add(c) = (*a.add(c)).mul_add(*b.add(c), *acc.add(c));
        }
    }
}

/// Rows of output (or input) positions per task.
fn rows_per_task(row_elems: usize, rows: usize) -> usize {
    (1usize << 14)
        .div_ceil(row_elems.max(1))
        .clamp(1, rows.max(1))
}

/// Runs `row(g, values)` for every row `g` of `out` (rows of `row` values), in parallel.
fn by_rows(out: &mut [f32], row: usize, rows: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let per = rows_per_task(row, rows);
    out.par_chunks_mut(row * per)
        .enumerate()
        .for_each(|(t, part)| {
            for (j, r) in part.chunks_mut(row).enumerate() {
                f(t * per + j, r);
            }
        });
}

fn depthwise_forward(s: &ConvShape, x: &[f32], w: &[f32], y: &mut [f32], vector: bool) {
    let r = Rows::of(s);
    let taps = taps_by_channel(&r, w);
    assert!(r.kh * r.kw <= MAX_TAPS, "depthwise kernel too large");
    #[cfg(target_arch = "x86_64")]
    if vector && r.kw == 3 && r.s[1] == 1 && r.d[1] == 1 && r.c >= 16 {
        return by_rows(y, r.ow * r.c, s.n * r.oh, |g, orow| {
            // SAFETY: the CPU has AVX2 and FMA (vector is only set when it does); orow
            // is output row g, x and the taps are whole tensors.
            unsafe { forward_row_slide_avx2(&r, x, &taps, g, orow) }
        });
    }
    by_rows(y, r.ow * r.c, s.n * r.oh, |g, orow| {
        let (n, oh) = (g / r.oh, g % r.oh);
        let mut pairs = [(std::ptr::null(), std::ptr::null()); MAX_TAPS];
        for ow in 0..r.ow {
            let mut k = 0;
            for kh in 0..r.kh {
                let Some(ih) = r.input_of(0, oh, kh) else {
                    continue;
                };
                for kw in 0..r.kw {
                    if let Some(iw) = r.input_of(1, ow, kw) {
                        pairs[k] = (
                            x[((n * r.ih + ih) * r.iw + iw) * r.c..][..r.c].as_ptr(),
                            taps[(kh * r.kw + kw) * r.c..][..r.c].as_ptr(),
                        );
                        k += 1;
                    }
                }
            }
            let out = &mut orow[ow * r.c..][..r.c];
            // SAFETY: the pairs point at whole channel vectors of x and the taps (sliced
            // above); out is this row's own.
            unsafe { dot_pairs(out.as_mut_ptr(), &pairs[..k], r.c, vector) };
        }
    });
}

/// With stride and dilation 1, a depthwise layer's input gradient is the forward
/// convolution of dy with the kernel flipped along both axes and padding `k - 1 - p`:
/// that convolution's shape and kernel, where the padding allows.
fn as_forward(s: &ConvShape, w: &[f32]) -> Option<(ConvShape, Vec<f32>)> {
    let (k, p) = (s.kernel, s.pad);
    if s.stride != [1; 3] || s.dilation != [1; 3] || (0..3).any(|a| p[a] >= k[a]) {
        return None;
    }
    let t = ConvShape {
        input: s.output,
        output: s.input,
        pad: [k[0] - 1 - p[0], k[1] - 1 - p[1], k[2] - 1 - p[2]],
        ..*s
    };
    let taps = k[1] * k[2];
    let flipped = w
        .chunks(taps)
        .flat_map(|ch| ch.iter().rev().copied())
        .collect();
    Some((t, flipped))
}

/// Output row `g` (`n · oh + oh`) of a depthwise layer with three taps a row, stride and
/// dilation 1 along it: for each kernel row and sixteen channels, the three taps'
/// weights stay in registers and the input slides through them a position at a time
/// (one vector pair loaded a position, the sums added to the row in L1); the columns
/// whose taps cross the row's ends and the channels past the last sixteen are summed
/// tap by tap.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_row_slide_avx2(r: &Rows, x: &[f32], taps: &[f32], g: usize, orow: &mut [f32]) {
    use std::arch::x86_64::*;
    let (n, oh) = (g / r.oh, g % r.oh);
    let c16 = r.c - r.c % 16;
    let lo = r.p[1].min(r.ow);
    let hi = (r.iw + r.p[1]).saturating_sub(2).min(r.ow);
    orow.fill(0.0);
    let yp = orow.as_mut_ptr();
    for kh in 0..r.kh {
        let Some(ih) = r.input_of(0, oh, kh) else {
            continue;
        };
        let xrow = x[(n * r.ih + ih) * r.iw * r.c..][..r.iw * r.c].as_ptr();
        let wk = taps[kh * 3 * r.c..][..3 * r.c].as_ptr();
        for c in (0..c16).step_by(16) {
            let pair = |p: *const f32| [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))];
            let w = [
                pair(wk.add(c)),
                pair(wk.add(r.c + c)),
                pair(wk.add(2 * r.c + c)),
            ];
            let at = |iw: usize| pair(xrow.add(iw * r.c + c));
            let add = |ow: usize, a: [__m256; 2]| {
                let out = yp.add(ow * r.c + c);
                _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), a[0]));
                _mm256_storeu_ps(out.add(8), _mm256_add_ps(_mm256_loadu_ps(out.add(8)), a[1]));
            };
            for ow in (0..lo).chain(hi.max(lo)..r.ow) {
                let mut a = [_mm256_setzero_ps(); 2];
                for (t, wt) in w.iter().enumerate() {
                    if let Some(iw) = r.input_of(1, ow, t) {
                        let xv = at(iw);
                        a[0] = _mm256_fmadd_ps(xv[0], wt[0], a[0]);
                        a[1] = _mm256_fmadd_ps(xv[1], wt[1], a[1]);
                    }
                }
                add(ow, a);
            }
            if lo < hi {
                let (mut x0, mut x1) = (at(lo - r.p[1]), at(lo + 1 - r.p[1]));
                for ow in lo..hi {
                    let x2 = at(ow + 2 - r.p[1]);
                    let mut a0 = _mm256_mul_ps(x0[0], w[0][0]);
                    let mut a1 = _mm256_mul_ps(x0[1], w[0][1]);
                    a0 = _mm256_fmadd_ps(x1[0], w[1][0], a0);
                    a1 = _mm256_fmadd_ps(x1[1], w[1][1], a1);
                    a0 = _mm256_fmadd_ps(x2[0], w[2][0], a0);
                    a1 = _mm256_fmadd_ps(x2[1], w[2][1], a1);
                    add(ow, [a0, a1]);
                    (x0, x1) = (x1, x2);
                }
            }
        }
        // The channels past the last block of sixteen.
        for ow in 0..r.ow {
            for t in 0..3 {
                if let Some(iw) = r.input_of(1, ow, t) {
                    for ch in c16..r.c {
                        *yp.add(ow * r.c + ch) += *xrow.add(iw * r.c + ch) * *wk.add(t * r.c + ch);
                    }
                }
            }
        }
    }
}

fn depthwise_backward_data(s: &ConvShape, dy: &[f32], w: &[f32], dx: &mut [f32], vector: bool) {
    let r = Rows::of(s);
    #[cfg(target_arch = "x86_64")]
    if let Some((t, flipped)) = as_forward(s, w).filter(|_| vector && r.kw == 3 && r.c >= 16) {
        // Three taps a row: the forward's sliding kernel.
        return depthwise_forward(&t, dy, &flipped, dx, vector);
    }
    let taps = taps_by_channel(&r, w);
    assert!(r.kh * r.kw <= MAX_TAPS, "depthwise kernel too large");
    by_rows(dx, r.iw * r.c, s.n * r.ih, |g, irow| {
        let (n, ih) = (g / r.ih, g % r.ih);
        let mut pairs = [(std::ptr::null(), std::ptr::null()); MAX_TAPS];
        for iw in 0..r.iw {
            let mut k = 0;
            for kh in 0..r.kh {
                let Some(oh) = r.output_of(0, ih, kh) else {
                    continue;
                };
                for kw in 0..r.kw {
                    if let Some(ow) = r.output_of(1, iw, kw) {
                        pairs[k] = (
                            dy[((n * r.oh + oh) * r.ow + ow) * r.c..][..r.c].as_ptr(),
                            taps[(kh * r.kw + kw) * r.c..][..r.c].as_ptr(),
                        );
                        k += 1;
                    }
                }
            }
            let out = &mut irow[iw * r.c..][..r.c];
            // SAFETY: as in depthwise_forward.
            unsafe { dot_pairs(out.as_mut_ptr(), &pairs[..k], r.c, vector) };
        }
    });
}

/// Elements of dy a depthwise weight-gradient block of output rows holds at most
/// (256 KiB, measured best of 16-1024 KiB; with the input rows it reads, within L2).
const WEIGHT_BLOCK_ELEMS: usize = 64 * 1024;

fn depthwise_backward_weights(s: &ConvShape, x: &[f32], dy: &[f32], dw: &mut [f32], vector: bool) {
    let r = Rows::of(s);
    let k = r.kh * r.kw;
    assert!(k <= MAX_TAPS, "depthwise kernel too large");
    let rows = s.n * r.oh;
    let tasks = parts(rows * r.ow);
    let block = (WEIGHT_BLOCK_ELEMS / (r.ow * r.c).max(1)).max(1);
    // Per task, sums in [kh][kw][c] order.
    let sums: Vec<Vec<f32>> = (0..tasks)
        .into_par_iter()
        .map(|t| {
            let mut acc = vec![0f32; k * r.c];
            let mine = t * rows / tasks..(t + 1) * rows / tasks;
            // A block of rows at a time, so that the rows of dy and x that every
            // kernel row and block of channels sweeps again stay in L2.
            for from in mine.clone().step_by(block) {
                let blk = from..(from + block).min(mine.end);
                #[cfg(target_arch = "x86_64")]
                if vector {
                    // SAFETY: the CPU has AVX2 and FMA (vector is only set when it does).
                    unsafe { weight_rows_avx2(&r, x, dy, blk, &mut acc) };
                    continue;
                }
                weight_rows(&r, (x, dy), blk, &mut acc, 0, vector);
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

/// Adds the weight gradient of output rows `rows` (`n · oh + oh`) over channels
/// `from..` to `acc` (`[kh][kw][c]`), a position at a time.
fn weight_rows(
    r: &Rows,
    (x, dy): (&[f32], &[f32]),
    rows: Range<usize>,
    acc: &mut [f32],
    from: usize,
    vector: bool,
) {
    let len = r.c - from;
    let mut pairs = [(std::ptr::null_mut(), std::ptr::null()); MAX_TAPS];
    for g in rows {
        let (n, oh) = (g / r.oh, g % r.oh);
        for ow in 0..r.ow {
            let mut m = 0;
            for kh in 0..r.kh {
                let Some(ih) = r.input_of(0, oh, kh) else {
                    continue;
                };
                for kw in 0..r.kw {
                    if let Some(iw) = r.input_of(1, ow, kw) {
                        pairs[m] = (
                            acc[(kh * r.kw + kw) * r.c + from..][..len].as_mut_ptr(),
                            x[((n * r.ih + ih) * r.iw + iw) * r.c + from..][..len].as_ptr(),
                        );
                        m += 1;
                    }
                }
            }
            let d = &dy[((n * r.oh + oh) * r.ow + ow) * r.c + from..][..len];
            // SAFETY: the pairs are distinct taps' sums and channel vectors of x; d is a
            // channel vector of dy.
            unsafe { axpy_pairs(d.as_ptr(), &pairs[..m], len, vector) };
        }
    }
}

/// [`weight_rows`] with the sums in registers: for each kernel row and up to three
/// taps of it, sixteen channels at a time, over all the positions of `rows`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weight_rows_avx2(r: &Rows, x: &[f32], dy: &[f32], rows: Range<usize>, acc: &mut [f32]) {
    use std::arch::x86_64::*;
    const GROUP: usize = 3;
    let (xp, dyp, ap) = (x.as_ptr(), dy.as_ptr(), acc.as_mut_ptr());
    let c16 = r.c - r.c % 16;
    for kh in 0..r.kh {
        for kw0 in (0..r.kw).step_by(GROUP) {
            let nk = GROUP.min(r.kw - kw0);
            // Output columns whose three taps are all inside the input row, when the
            // sliding form applies (empty otherwise).
            let slide = if nk == GROUP && r.s[1] == 1 && r.d[1] == 1 {
                let lo = r.p[1].saturating_sub(kw0).min(r.ow);
                let hi = (r.iw + r.p[1]).saturating_sub(kw0 + 2).min(r.ow);
                (lo, hi)
            } else {
                (0, 0)
            };
            for c in (0..c16).step_by(16) {
                let mut a = [[_mm256_setzero_ps(); 2]; GROUP];
                for g in rows.clone() {
                    let (n, oh) = (g / r.oh, g % r.oh);
                    let Some(ih) = r.input_of(0, oh, kh) else {
                        continue;
                    };
                    let xrow = xp.add((n * r.ih + ih) * r.iw * r.c + c);
                    let drow = dyp.add((n * r.oh + oh) * r.ow * r.c + c);
                    let edge = |ow: usize, a: &mut [[__m256; 2]; GROUP]| {
                        let d0 = _mm256_loadu_ps(drow.add(ow * r.c));
                        let d1 = _mm256_loadu_ps(drow.add(ow * r.c + 8));
                        for (j, aj) in a.iter_mut().enumerate().take(nk) {
                            if let Some(iw) = r.input_of(1, ow, kw0 + j) {
                                let xi = xrow.add(iw * r.c);
                                aj[0] = _mm256_fmadd_ps(d0, _mm256_loadu_ps(xi), aj[0]);
                                aj[1] = _mm256_fmadd_ps(d1, _mm256_loadu_ps(xi.add(8)), aj[1]);
                            }
                        }
                    };
                    let (lo, hi) = slide;
                    for ow in (0..lo).chain(hi.max(lo)..r.ow) {
                        edge(ow, &mut a);
                    }
                    if lo < hi {
                        // Stride and dilation 1, three taps all inside the row: the
                        // next position's first two taps are this one's last two, so
                        // the input stays in registers and one vector pair is loaded
                        // a position.
                        let at = |iw: usize| {
                            let xi = xrow.add(iw * r.c);
                            [_mm256_loadu_ps(xi), _mm256_loadu_ps(xi.add(8))]
                        };
                        let first = lo + kw0 - r.p[1];
                        let (mut x0, mut x1) = (at(first), at(first + 1));
                        for ow in lo..hi {
                            let x2 = at(ow + kw0 + 2 - r.p[1]);
                            let d0 = _mm256_loadu_ps(drow.add(ow * r.c));
                            let d1 = _mm256_loadu_ps(drow.add(ow * r.c + 8));
                            a[0][0] = _mm256_fmadd_ps(d0, x0[0], a[0][0]);
                            a[0][1] = _mm256_fmadd_ps(d1, x0[1], a[0][1]);
                            a[1][0] = _mm256_fmadd_ps(d0, x1[0], a[1][0]);
                            a[1][1] = _mm256_fmadd_ps(d1, x1[1], a[1][1]);
                            a[2][0] = _mm256_fmadd_ps(d0, x2[0], a[2][0]);
                            a[2][1] = _mm256_fmadd_ps(d1, x2[1], a[2][1]);
                            (x0, x1) = (x1, x2);
                        }
                    }
                }
                for (j, aj) in a.iter().enumerate().take(nk) {
                    let at = ap.add((kh * r.kw + kw0 + j) * r.c + c);
                    _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), aj[0]));
                    _mm256_storeu_ps(at.add(8), _mm256_add_ps(_mm256_loadu_ps(at.add(8)), aj[1]));
                }
            }
        }
    }
    // The channels past the last block of sixteen, a position at a time.
    if c16 < r.c {
        weight_rows(r, (x, dy), rows, acc, c16, true);
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

    /// A 2-D shape (stride before padding, as the cases below list them).
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
        let two = |v: [usize; 2], depth| [depth, v[0], v[1]];
        crate::cpu::tests::shape(
            n,
            c_in,
            c_out,
            groups,
            two(hw, 1),
            two(k, 1),
            two(pad, 0),
            two(stride, 1),
            two(dil, 1),
        )
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

    /// The forward pass and stride-1 input gradient of layers of no [`Kind`] (the
    /// implicit GEMM reading and writing channels-last, and the fallback through
    /// NCHW copies) equal the engine's NCHW passes, transposed.
    #[test]
    fn general_forward_matches_nchw() {
        let shapes = [
            shape(2, 5, 19, 1, [11, 20], [3, 3], [1, 1], [1, 1], [1, 1]),
            shape(3, 16, 8, 1, [12, 14], [3, 3], [2, 2], [1, 1], [1, 1]),
            shape(2, 9, 7, 1, [10, 12], [3, 2], [1, 1], [2, 3], [1, 2]),
            shape(2, 8, 12, 1, [1, 40], [1, 5], [1, 1], [0, 2], [1, 1]),
            // Large weights over small images: the implicit GEMM's tasks
            // split the panels of output channels.
            shape(2, 480, 300, 1, [5, 5], [3, 3], [1, 1], [1, 1], [1, 1]),
            // At three threads, runs of rows across the two images, one
            // crossing from the first into the second.
            shape(2, 5, 7, 1, [9, 13], [3, 3], [1, 1], [1, 1], [1, 1]),
        ];
        let mut data = 0;
        for s in &shapes {
            assert!(kind(s).is_none() && forward_applies(s), "{s:?}");
            let (x, w) = (values(s.input_len(), 4), values(s.weight_len(), 5));
            let xl = to_nhwc(s, &x, s.c_in, s.input);
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let mut y = vec![0f32; s.output_len()];
                    conv::forward(s, &x, &w, &mut y);
                    let want = to_nhwc(s, &y, s.c_out, s.output);
                    let mut yl = vec![f32::NAN; s.output_len()];
                    forward(s, &xl, &w, &mut yl);
                    close(&yl, &want, "implicit forward");
                    let mut yl = vec![f32::NAN; s.output_len()];
                    through_nchw(s, [&xl, &w], &mut yl, Pass::Forward);
                    close(&yl, &want, "forward through NCHW");
                    if backward_data_applies(s) {
                        let dy = values(s.output_len(), 6);
                        let mut dx = vec![0f32; s.input_len()];
                        conv::backward_data(s, &dy, &w, &mut dx);
                        let want = to_nhwc(s, &dx, s.c_in, s.input);
                        let dyl = to_nhwc(s, &dy, s.c_out, s.output);
                        let mut dxl = vec![f32::NAN; s.input_len()];
                        backward_data(s, &dyl, &w, &mut dxl);
                        close(&dxl, &want, "implicit backward-data");
                        let mut dxl = vec![f32::NAN; s.input_len()];
                        through_nchw(s, [&dyl, &w], &mut dxl, Pass::BackwardData);
                        close(&dxl, &want, "backward-data through NCHW");
                        data += 1;
                    }
                });
            }
        }
        // Four stride-1 shapes have their input gradient as a forward pass
        // (the second of the list pads past its kernel's reach), on each pool.
        assert_eq!(data, 4 * 2);
        // Grouped layers are not taken; nor strided input gradients.
        let grouped = shape(2, 8, 8, 2, [9, 9], [3, 3], [1, 1], [1, 1], [1, 1]);
        assert!(!forward_applies(&grouped) && !backward_data_applies(&grouped));
        assert!(!backward_data_applies(&shapes[1]) && !backward_data_applies(&shapes[2]));
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

                if kind(s) == Some(Kind::Depthwise) {
                    // the portable loops too, where the vector ones ran above
                    let mut o = vec![f32::NAN; s.output_len()];
                    depthwise_forward(s, &xl, &w, &mut o, false);
                    close(&o, &yl, "portable forward");
                    let mut o = vec![f32::NAN; s.input_len()];
                    depthwise_backward_data(s, &dyl, &w, &mut o, false);
                    close(&o, &dxl, "portable backward_data");
                    let mut o = vec![f32::NAN; s.weight_len()];
                    depthwise_backward_weights(s, &xl, &dyl, &mut o, false);
                    close(&o, &dwl, "portable backward_weights");
                }
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
        // A horizontal stride over rows that are all read: positions two pixels apart
        // across the batch (a 1x1/2 layer whose unread rows were left out); the
        // input gradient's unread pixels are zero.
        check(&shape(2, 13, 7, 1, [5, 12], [1, 1], [1, 2], [0, 0], [1, 1]));
        check(&shape(
            3,
            8,
            16,
            1,
            [20, 60],
            [1, 1],
            [1, 3],
            [0, 0],
            [1, 1],
        ));
        // and one whose rows also step: still uniform where stride_h·W = stride_w·OW
        check(&shape(2, 6, 5, 1, [4, 3], [1, 1], [2, 6], [0, 0], [1, 1]));
    }

    #[test]
    fn strided_pointwise_layers_with_uneven_positions_are_not_pointwise() {
        // 1x1/2 over every row: a position's row starts two input rows on.
        assert!(kind(&shape(2, 4, 4, 1, [8, 8], [1, 1], [2, 2], [0, 0], [1, 1])).is_none());
        // an odd width leaves a pixel over at the end of each row
        assert!(kind(&shape(2, 4, 4, 1, [4, 9], [1, 1], [1, 2], [0, 0], [1, 1])).is_none());
        assert_eq!(
            pointwise_step(&shape(2, 4, 4, 1, [4, 8], [1, 1], [1, 2], [0, 0], [1, 1])),
            Some(2)
        );
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
        // Several blocks of rows in the weight gradient, every column's taps inside
        check(&shape(
            2,
            32,
            32,
            32,
            [40, 40],
            [3, 3],
            [1, 1],
            [0, 0],
            [1, 1],
        ));
        // Rows sliding along the width under a strided, dilated height; a kernel of
        // six columns (a sliding group of three after the first) and wide padding
        check(&shape(
            1,
            16,
            16,
            16,
            [9, 12],
            [3, 3],
            [2, 1],
            [1, 1],
            [2, 1],
        ));
        check(&shape(
            1,
            24,
            24,
            24,
            [5, 9],
            [2, 6],
            [1, 1],
            [1, 4],
            [1, 1],
        ));
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
