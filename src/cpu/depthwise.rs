//! Direct loops for convolutions with one input channel per group (depthwise,
//! with or without a channel multiplier; a single-input-channel convolution
//! is the multiplier case with one group).
//!
//! Each task copies its input plane once into a zero-padded buffer whose rows
//! are split into `stride` phases, so every kernel tap of every output row
//! reads a contiguous, in-bounds run: the row loops have no edge cases and
//! work on whole vectors (AVX-512, AVX2 or portable code chosen at run time
//! by [`super::simd`]).
//! - forward: one task per input plane, producing its `multiplier` outputs;
//! - backward data: one task per input-gradient plane; at stride 1 it is the
//!   forward correlation of the padded `dy` with the flipped kernel, at larger
//!   strides rows are scattered;
//! - backward weights: one task per (input channel, block of images), with
//!   per-tap vector accumulators, reduced over image blocks at the end.

use rayon::prelude::*;

use super::geometry::valid_range;
use super::padded::{pad_plane, Geom, MAX_ROWS};
use super::scratch::{Slot, Tuning};
use super::simd::{dispatch_simd, load_upto, store_upto, Simd};
use super::ConvShape;

/// Rough number of output elements one rayon task should cover at least.
const MIN_TASK_ELEMS: usize = 8192;

fn planes_per_task(plane: usize) -> usize {
    (MIN_TASK_ELEMS / plane.max(1)).max(1)
}

pub(crate) fn forward(s: &ConvShape, x: &[f32], w: &[f32], y: &mut [f32], t: &Tuning) {
    let (isp, osp, ks) = (s.input_spatial(), s.output_spatial(), s.kernel_spatial());
    let mult = s.c_out_per_group();
    let g = Geom::forward(s);
    // Output channels ci·mult.. of image n are contiguous: one task per input plane.
    y.par_chunks_mut(mult * osp)
        .enumerate()
        .with_min_len(planes_per_task(mult * osp))
        .for_each(|(q, outs)| {
            let (n, ci) = (q / s.c_in, q % s.c_in);
            t.scratch(Slot::Task, g.padded_len(), |xp| {
                pad_plane(t.isa, xp, &x[(n * s.c_in + ci) * isp..][..isp], s.input, &g);
                let mut m = 0;
                // Output channels CB at a time: each input vector loaded
                // feeds CB of them.
                while mult >= CB && m + CB <= mult {
                    let co = ci * mult + m;
                    let outs = &mut outs[m * osp..(m + CB) * osp];
                    corr_planes(t.isa, outs, xp, &w[co * ks..(co + CB) * ks], &g);
                    m += CB;
                }
                for (k, out) in outs[m * osp..].chunks_exact_mut(osp).enumerate() {
                    let co = ci * mult + m + k;
                    corr_plane(t.isa, out, xp, &w[co * ks..][..ks], &g, false);
                }
            });
        });
}

/// Output channels one pass of [`corr_planes`] computes.
const CB: usize = 4;

pub(crate) fn backward_data(s: &ConvShape, dy: &[f32], w: &[f32], dx: &mut [f32], t: &Tuning) {
    let (isp, osp, ks) = (s.input_spatial(), s.output_spatial(), s.kernel_spatial());
    let mult = s.c_out_per_group();
    let unit_stride = s.stride == [1; 3];
    let g = Geom::transposed_unit_stride(s);
    dx.par_chunks_mut(isp)
        .enumerate()
        .with_min_len(planes_per_task(isp))
        .for_each(|(q, grad)| {
            let (n, ci) = (q / s.c_in, q % s.c_in);
            let mut flipped = vec![0.0f32; if unit_stride { ks } else { 0 }];
            for m in 0..mult {
                let co = ci * mult + m;
                let dyp = &dy[(n * s.c_out + co) * osp..][..osp];
                let wk = &w[co * ks..][..ks];
                if unit_stride {
                    for (f, v) in flipped.iter_mut().zip(wk.iter().rev()) {
                        *f = *v;
                    }
                    t.scratch(Slot::Task, g.padded_len(), |yp| {
                        pad_plane(t.isa, yp, dyp, s.output, &g);
                        corr_plane(t.isa, grad, yp, &flipped, &g, m > 0);
                    });
                } else {
                    scatter_plane(t.isa, grad, dyp, wk, s, m > 0);
                }
            }
        });
}

pub(crate) fn backward_weights(s: &ConvShape, x: &[f32], dy: &[f32], dw: &mut [f32], t: &Tuning) {
    let (isp, osp, ks) = (s.input_spatial(), s.output_spatial(), s.kernel_spatial());
    let mult = s.c_out_per_group();
    let g = Geom::forward(s);
    let threads = rayon::current_num_threads();
    let blocks = if s.c_in >= 4 * threads {
        1
    } else {
        (4 * threads).div_ceil(s.c_in).min(s.n)
    };
    // Partial sums per (input channel, image block): mult · ks floats each.
    let per = mult * ks;
    let mut partial = vec![0.0f32; s.c_in * blocks * per];
    partial
        .par_chunks_mut(per)
        .enumerate()
        .for_each(|(task, acc)| {
            let (ci, b) = (task / blocks, task % blocks);
            let images = s.n.div_ceil(blocks);
            t.scratch(Slot::Task, g.padded_len(), |xp| {
                for n in b * images..((b + 1) * images).min(s.n) {
                    pad_plane(t.isa, xp, &x[(n * s.c_in + ci) * isp..][..isp], s.input, &g);
                    for (m, a) in acc.chunks_exact_mut(ks).enumerate() {
                        let co = ci * mult + m;
                        weights_plane(t.isa, a, &dy[(n * s.c_out + co) * osp..][..osp], xp, &g);
                    }
                }
            });
        });
    for (ci, out) in dw.chunks_mut(per).enumerate() {
        out.fill(0.0);
        for b in 0..blocks {
            for (o, v) in out
                .iter_mut()
                .zip(&partial[(ci * blocks + b) * per..][..per])
            {
                *o += *v;
            }
        }
    }
}

dispatch_simd!(fn corr_plane(out: &mut [f32], xp: &[f32], w: &[f32], g: &Geom, accumulate: bool) => corr_plane_impl);
dispatch_simd!(fn corr_planes(outs: &mut [f32], xp: &[f32], w: &[f32], g: &Geom) => corr_planes_impl);

/// `CB` output planes (one after another in `outs`) of the same padded input
/// plane, kernels one after another in `w`.
#[inline(always)]
fn corr_planes_impl<S: Simd>(outs: &mut [f32], xp: &[f32], w: &[f32], g: &Geom) {
    let osp: usize = g.out.iter().product();
    let ks: usize = g.kernel.iter().product();
    assert!(xp.len() >= g.padded_len() && outs.len() >= CB * osp && w.len() >= CB * ks);
    let fits = g.kernel[0] * g.kernel[1] <= MAX_ROWS;
    match (fits, g.kernel[2]) {
        (true, 1) => corr_multi::<S, 1>(outs, xp, w, g),
        (true, 2) => corr_multi::<S, 2>(outs, xp, w, g),
        (true, 3) => corr_multi::<S, 3>(outs, xp, w, g),
        (true, 4) => corr_multi::<S, 4>(outs, xp, w, g),
        (true, 5) => corr_multi::<S, 5>(outs, xp, w, g),
        (true, 7) => corr_multi::<S, 7>(outs, xp, w, g),
        _ => {
            for (out, wk) in outs.chunks_exact_mut(osp).zip(w.chunks_exact(ks)) {
                corr_any::<S>(out, xp, wk, g, false);
            }
        }
    }
}

/// [`corr_planes_impl`] for a kernel width known at compile time: runs of up
/// to two vectors of each output row, for all `CB` channels at once.
#[inline(always)]
fn corr_multi<S: Simd, const KW: usize>(outs: &mut [f32], xp: &[f32], w: &[f32], g: &Geom) {
    let osp: usize = g.out.iter().product();
    let taps: [usize; KW] = std::array::from_fn(|kw| g.tap(kw));
    let outp = outs.as_mut_ptr();
    for_each_run(g, 2 * S::N, |rows, at, ow0, n| {
        // SAFETY: `outs[c·osp + at + ow0 ..][..n]` lies in `outs` (checked
        // by the caller); the reads stay in the padded rows (Geom::wq leaves
        // a vector past the outputs).
        unsafe {
            let run = MultiRun {
                xp: xp.as_ptr().add(ow0),
                rows,
                w,
                dst: outp.add(at + ow0),
                plane: osp,
                n,
            };
            if n > S::N {
                run.corr::<S, KW, 2>(&taps);
            } else {
                run.corr::<S, KW, 1>(&taps);
            }
        }
    });
}

/// Calls `f(rows, at, ow0, n)` for every run of at most `max` consecutive
/// outputs of every output row: `rows` are the padded rows the row's kernel
/// taps read, `at` the row's first output, `ow0..ow0 + n` the run's columns.
#[inline(always)]
fn for_each_run(g: &Geom, max: usize, mut f: impl FnMut(&[usize], usize, usize, usize)) {
    let [od_n, oh_n, ow_n] = g.out;
    let nrows = g.kernel[0] * g.kernel[1];
    let mut rows = [0usize; MAX_ROWS];
    for od in 0..od_n {
        for oh in 0..oh_n {
            g.tap_rows(od, oh, &mut rows);
            let at = (od * oh_n + oh) * ow_n;
            let mut ow0 = 0;
            while ow0 < ow_n {
                let n = max.min(ow_n - ow0);
                f(&rows[..nrows], at, ow0, n);
                ow0 += n;
            }
        }
    }
}

/// `n` (at most two vectors of) consecutive outputs of one row in each of
/// `CB` planes (`plane` apart from `dst`), reading padded rows `rows` of `xp`.
struct MultiRun<'a> {
    xp: *const f32,
    rows: &'a [usize],
    w: &'a [f32],
    dst: *mut f32,
    plane: usize,
    n: usize,
}

impl MultiRun<'_> {
    /// # Safety
    /// Every `dst + c·plane .. + n` writable; every `xp + row + tap + NV·N`
    /// readable; `w` holds `CB` kernels of `rows.len() · KW` taps.
    #[inline(always)]
    unsafe fn corr<S: Simd, const KW: usize, const NV: usize>(&self, taps: &[usize; KW]) {
        let ks = self.rows.len() * KW;
        let mut acc = [[S::zero(); NV]; CB];
        for (t, &base) in self.rows.iter().enumerate() {
            let at = self.xp.add(base);
            for (kw, tap) in taps.iter().enumerate() {
                let p = at.add(*tap);
                let xv: [S; NV] = std::array::from_fn(|v| S::load(p.add(v * S::N)));
                for (c, row) in acc.iter_mut().enumerate() {
                    let wv = S::splat(*self.w.get_unchecked(c * ks + t * KW + kw));
                    for (v, a) in row.iter_mut().enumerate() {
                        *a = S::mul_add(wv, xv[v], *a);
                    }
                }
            }
        }
        for (c, row) in acc.iter().enumerate() {
            for (v, a) in row.iter().enumerate() {
                store_upto(
                    *a,
                    self.dst.add(c * self.plane + v * S::N),
                    self.n - v * S::N,
                );
            }
        }
    }
}
dispatch_simd!(fn weights_plane(acc: &mut [f32], dy: &[f32], xp: &[f32], g: &Geom) => weights_plane_impl);
dispatch_simd!(fn scatter_plane(grad: &mut [f32], dy: &[f32], w: &[f32], s: &ConvShape, accumulate: bool) => scatter_plane_impl);

/// `out = corr(xp, w)` (or `out +=` when `accumulate`) over a whole plane.
#[inline(always)]
fn corr_plane_impl<S: Simd>(out: &mut [f32], xp: &[f32], w: &[f32], g: &Geom, accumulate: bool) {
    assert!(xp.len() >= g.padded_len() && out.len() >= g.out.iter().product());
    if g.kernel[0] * g.kernel[1] > MAX_ROWS {
        return corr_any::<S>(out, xp, w, g, accumulate);
    }
    match g.kernel[2] {
        1 => corr::<S, 1>(out, xp, w, g, accumulate),
        2 => corr::<S, 2>(out, xp, w, g, accumulate),
        3 => corr::<S, 3>(out, xp, w, g, accumulate),
        4 => corr::<S, 4>(out, xp, w, g, accumulate),
        5 => corr::<S, 5>(out, xp, w, g, accumulate),
        7 => corr::<S, 7>(out, xp, w, g, accumulate),
        _ => corr_any::<S>(out, xp, w, g, accumulate),
    }
}

/// [`corr_plane_impl`] for a kernel width `KW` known at compile time: each
/// output row is computed in runs of up to four vectors held in registers.
#[inline(always)]
fn corr<S: Simd, const KW: usize>(
    out: &mut [f32],
    xp: &[f32],
    w: &[f32],
    g: &Geom,
    accumulate: bool,
) {
    let taps: [usize; KW] = std::array::from_fn(|kw| g.tap(kw));
    let outp = out.as_mut_ptr();
    for_each_run(g, 4 * S::N, |rows, at, ow0, n| {
        // SAFETY: `out[at + ow0..][..n]` lies in `out` (checked by the
        // caller); the reads stay in the padded rows (Geom::wq leaves a
        // vector past the outputs).
        unsafe {
            let run = Run {
                xp: xp.as_ptr(),
                rows,
                w,
                ow0,
                dst: outp.add(at + ow0),
                n,
            };
            match n.div_ceil(S::N) {
                1 => run.corr::<S, KW, 1>(&taps, accumulate),
                2 => run.corr::<S, KW, 2>(&taps, accumulate),
                3 => run.corr::<S, KW, 3>(&taps, accumulate),
                _ => run.corr::<S, KW, 4>(&taps, accumulate),
            }
        }
    });
}

/// `n` (at most four vectors of) consecutive outputs of one row at `dst`,
/// whose taps read padded rows `rows` from `xp` starting at column `ow0`.
struct Run<'a> {
    xp: *const f32,
    rows: &'a [usize],
    w: &'a [f32],
    ow0: usize,
    dst: *mut f32,
    n: usize,
}

impl Run<'_> {
    /// # Safety
    /// `dst..dst + n` writable; every `xp + row + ow0 + tap + NV·N` readable.
    #[inline(always)]
    unsafe fn corr<S: Simd, const KW: usize, const NV: usize>(
        &self,
        taps: &[usize; KW],
        accumulate: bool,
    ) {
        let mut acc = [S::zero(); NV];
        if accumulate {
            for (v, a) in acc.iter_mut().enumerate() {
                *a = load_upto(self.dst.add(v * S::N), self.n - v * S::N);
            }
        }
        for (t, &base) in self.rows.iter().enumerate() {
            let at = self.xp.add(base + self.ow0);
            for (kw, tap) in taps.iter().enumerate() {
                let wv = S::splat(*self.w.get_unchecked(t * KW + kw));
                let p = at.add(*tap);
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = S::mul_add(wv, S::load(p.add(v * S::N)), *a);
                }
            }
        }
        for (v, a) in acc.iter().enumerate() {
            store_upto(*a, self.dst.add(v * S::N), self.n - v * S::N);
        }
    }
}

/// [`corr_plane_impl`] for any kernel size, one vector at a time.
#[inline(always)]
fn corr_any<S: Simd>(out: &mut [f32], xp: &[f32], w: &[f32], g: &Geom, accumulate: bool) {
    let [od_n, oh_n, ow_n] = g.out;
    let [kd_n, kh_n, kw_n] = g.kernel;
    for od in 0..od_n {
        for oh in 0..oh_n {
            let row = out[(od * oh_n + oh) * ow_n..][..ow_n].as_mut_ptr();
            for ow0 in (0..ow_n).step_by(S::N) {
                let n = S::N.min(ow_n - ow0);
                // SAFETY: as in `corr`.
                unsafe {
                    let mut acc = if accumulate {
                        S::load_part(row.add(ow0), n)
                    } else {
                        S::zero()
                    };
                    for kd in 0..kd_n {
                        for kh in 0..kh_n {
                            let at = g.row(
                                od * g.stride[0] + kd * g.dil[0],
                                oh * g.stride[1] + kh * g.dil[1],
                            ) + ow0;
                            for kw in 0..kw_n {
                                let wv = S::splat(w[(kd * kh_n + kh) * kw_n + kw]);
                                acc = S::mul_add(wv, S::load(xp.as_ptr().add(at + g.tap(kw))), acc);
                            }
                        }
                    }
                    acc.store_part(row.add(ow0), n);
                }
            }
        }
    }
}

/// Adds one image's contribution `Σ_o dy[o] · xp[o·s + t·d]` to every tap
/// `t` of one channel's weight gradient `acc`.
#[inline(always)]
fn weights_plane_impl<S: Simd>(acc: &mut [f32], dy: &[f32], xp: &[f32], g: &Geom) {
    assert!(xp.len() >= g.padded_len() && dy.len() >= g.out.iter().product());
    assert!(acc.len() >= g.kernel.iter().product());
    match g.kernel[2] {
        1 => weights::<S, 1>(acc, dy, xp, g),
        2 => weights::<S, 2>(acc, dy, xp, g),
        3 => weights::<S, 3>(acc, dy, xp, g),
        4 => weights::<S, 4>(acc, dy, xp, g),
        5 => weights::<S, 5>(acc, dy, xp, g),
        7 => weights::<S, 7>(acc, dy, xp, g),
        _ => {
            // One tap column at a time for other widths.
            let one = Geom {
                kernel: [g.kernel[0], g.kernel[1], 1],
                ..*g
            };
            let mut part = vec![0.0f32; g.kernel[0] * g.kernel[1]];
            for kw in 0..g.kernel[2] {
                part.fill(0.0);
                weights_shifted::<S, 1>(&mut part, dy, xp, &one, [g.tap(kw)]);
                for (t, v) in part.iter().enumerate() {
                    acc[t * g.kernel[2] + kw] += *v;
                }
            }
        }
    }
}

#[inline(always)]
fn weights<S: Simd, const KW: usize>(acc: &mut [f32], dy: &[f32], xp: &[f32], g: &Geom) {
    let taps: [usize; KW] = std::array::from_fn(|kw| g.tap(kw));
    weights_shifted::<S, KW>(acc, dy, xp, g, taps);
}

/// Weight gradient of `KW` tap columns whose runs start at `taps` within a
/// padded row; `acc` has `kd · kh · KW` entries. Kernel rows are taken three
/// at a time where the columns are few, so each `dy` vector feeds `3 · KW`
/// independent accumulators.
#[inline(always)]
fn weights_shifted<S: Simd, const KW: usize>(
    acc: &mut [f32],
    dy: &[f32],
    xp: &[f32],
    g: &Geom,
    taps: [usize; KW],
) {
    let [kd_n, kh_n, _] = g.kernel;
    for kd in 0..kd_n {
        let mut kh = 0;
        while KW <= 3 && kh + 3 <= kh_n {
            weights_rows::<S, KW, 3>(acc, dy, xp, g, taps, kd, kh);
            kh += 3;
        }
        while kh < kh_n {
            weights_rows::<S, KW, 1>(acc, dy, xp, g, taps, kd, kh);
            kh += 1;
        }
    }
}

/// [`weights_shifted`] for kernel rows `kh0..kh0 + KH` of kernel depth `kd`.
#[inline(always)]
fn weights_rows<S: Simd, const KW: usize, const KH: usize>(
    acc: &mut [f32],
    dy: &[f32],
    xp: &[f32],
    g: &Geom,
    taps: [usize; KW],
    kd: usize,
    kh0: usize,
) {
    let [od_n, oh_n, ow_n] = g.out;
    let kh_n = g.kernel[1];
    let mut lanes = [[S::zero(); KW]; KH];
    for od in 0..od_n {
        for oh in 0..oh_n {
            let grad = dy[(od * oh_n + oh) * ow_n..][..ow_n].as_ptr();
            let at: [usize; KH] = std::array::from_fn(|b| {
                g.row(
                    od * g.stride[0] + kd * g.dil[0],
                    oh * g.stride[1] + (kh0 + b) * g.dil[1],
                )
            });
            let mut ow0 = 0;
            // SAFETY: dy reads stay in the row; xp reads stay in the
            // padded rows (Geom::wq leaves a vector past the outputs).
            unsafe {
                while ow0 < ow_n {
                    let dv = load_upto::<S>(grad.add(ow0), ow_n - ow0);
                    for (b, row) in lanes.iter_mut().enumerate() {
                        let p = xp.as_ptr().add(at[b] + ow0);
                        for (kw, l) in row.iter_mut().enumerate() {
                            *l = S::mul_add(dv, S::load(p.add(taps[kw])), *l);
                        }
                    }
                    ow0 += S::N;
                }
            }
        }
    }
    for (b, row) in lanes.iter().enumerate() {
        for (kw, l) in row.iter().enumerate() {
            acc[(kd * kh_n + kh0 + b) * KW + kw] += l.sum();
        }
    }
}

/// Strided backward data for one plane: scatters `w[t] · dy[o]` to the input
/// position each tap read in the forward pass.
#[inline(always)]
fn scatter_plane_impl<S: Simd>(
    grad: &mut [f32],
    dy: &[f32],
    w: &[f32],
    s: &ConvShape,
    accumulate: bool,
) {
    if !accumulate {
        grad.fill(0.0);
    }
    let [od_n, oh_n, ow_n] = s.output;
    let [kd_n, kh_n, kw_n] = s.kernel;
    let [id_n, ih_n, iw_n] = s.input;
    let (sw, dw) = (s.stride[2], s.dilation[2]);
    for od in 0..od_n {
        for oh in 0..oh_n {
            let src = &dy[(od * oh_n + oh) * ow_n..][..ow_n];
            for kd in 0..kd_n {
                let id = (od * s.stride[0] + kd * s.dilation[0]) as isize - s.pad[0] as isize;
                if id < 0 || id >= id_n as isize {
                    continue;
                }
                for kh in 0..kh_n {
                    let ih = (oh * s.stride[1] + kh * s.dilation[1]) as isize - s.pad[1] as isize;
                    if ih < 0 || ih >= ih_n as isize {
                        continue;
                    }
                    let row = &mut grad[(id as usize * ih_n + ih as usize) * iw_n..][..iw_n];
                    for (kw, wt) in w[(kd * kh_n + kh) * kw_n..][..kw_n].iter().enumerate() {
                        let o = (kw * dw) as isize - s.pad[2] as isize;
                        let (lo, hi) = valid_range(ow_n, sw, o, iw_n);
                        if hi > lo {
                            let base = ((lo * sw) as isize + o) as usize;
                            for (d, v) in row[base..].iter_mut().step_by(sw).zip(&src[lo..hi]) {
                                *d += *wt * *v;
                            }
                        }
                    }
                }
            }
        }
    }
    let _ = S::N;
}
