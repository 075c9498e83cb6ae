//! Conversions between tensors as the caller stores them (fp32, fp16 or bf16 at any
//! non-overlapping strides: NCHW, channels-last, padded) and the engine's packed
//! canonical f32, in parallel on the current rayon pool: gathering inputs, storing
//! results with MIOpen's alpha/beta blend folded in, and zero-copy f32 views where the
//! caller's bytes already are what the engine reads. Pure Rust, no FFI.
//!
//! Both directions walk the tensor as rows `(n, d, h)`, each a `[c × w]` block: with
//! `w` contiguous (NCHW-like) every channel is one converted run; with `c` contiguous
//! (channels-last) tiles of [`TILE`] channels × [`TILE`] columns are converted as runs
//! of channels and transposed in L1; anything else is converted element by element.

use half::{bf16, f16, slice::HalfFloatSliceExt};
use rayon::prelude::*;

use crate::layout::{DType, Layout5};

#[cfg(target_arch = "x86_64")]
mod x86;

/// Whether rows convert with the vector kernels: x86-64 with AVX2 and F16C, within
/// the engine's instruction-set cap (`RDNA1SHIM_MAX_ISA=portable` turns them off too).
fn simd_rows() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::cpu::isa() >= crate::cpu::Isa::Avx2 && x86::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Side of the square tiles channels-last rows are transposed in.
const TILE: usize = 16;

/// Elements a parallel task converts at most (unless one row is longer).
const TASK_ELEMS: usize = 1 << 15;

/// The bytes as the engine's packed f32, without a copy, when they are exactly that:
/// fp32, packed canonical order, 4-byte aligned.
pub fn f32_view<'a>(bytes: &'a [u8], dt: DType, l: &Layout5) -> Option<&'a [f32]> {
    let n = l.numel();
    (dt == DType::F32
        && l.is_packed_canonical()
        && bytes.len() >= 4 * n
        && (bytes.as_ptr() as usize).is_multiple_of(4))
    .then(|| {
        // SAFETY: aligned, in bounds, every bit pattern is a valid f32.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, n) }
    })
}

/// [`f32_view`] for writing.
pub fn f32_view_mut<'a>(bytes: &'a mut [u8], dt: DType, l: &Layout5) -> Option<&'a mut [f32]> {
    let n = l.numel();
    (dt == DType::F32
        && l.is_packed_canonical()
        && bytes.len() >= 4 * n
        && (bytes.as_ptr() as usize).is_multiple_of(4))
    .then(|| {
        // SAFETY: as above, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr() as *mut f32, n) }
    })
}

#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: tasks write disjoint elements (the tensor is non-overlapping), read shared ones.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// Rows `(n, d, h)` of a tensor and how many make one parallel task.
fn rows(l: &Layout5) -> (usize, usize) {
    let [n, c, d, h, w] = l.dims;
    let rows = n * d * h;
    let per_row = (c * w).max(1);
    // Tasks of at most TASK_ELEMS values, and at least four per thread where the rows
    // allow (a chunk of a call is small next to the threads of a big machine).
    let by_size = TASK_ELEMS.div_ceil(per_row);
    let by_threads = rows.div_ceil(4 * rayon::current_num_threads());
    (rows, by_size.min(by_threads).clamp(1, rows.max(1)))
}

/// Reads `n` contiguous elements of type `dt` at `src` into `dst` as f32.
///
/// # Safety
/// `src` is valid for `n` elements of `dt`, aligned to the element size.
#[inline]
unsafe fn load_run(dt: DType, src: *const u8, dst: &mut [f32]) {
    let n = dst.len();
    match dt {
        DType::F32 => std::ptr::copy_nonoverlapping(src as *const f32, dst.as_mut_ptr(), n),
        DType::F16 => std::slice::from_raw_parts(src as *const f16, n).convert_to_f32_slice(dst),
        DType::BF16 => {
            let s = std::slice::from_raw_parts(src as *const u16, n);
            for (d, v) in dst.iter_mut().zip(s) {
                *d = f32::from_bits((*v as u32) << 16);
            }
        }
    }
}

/// f32 to bf16 bits, rounding to nearest even (quiet NaNs stay NaN).
#[inline]
fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// Writes `vals` (already blended) as `dt` to `dst`, contiguous.
///
/// # Safety
/// `dst` is valid for `vals.len()` elements of `dt`, aligned to the element size.
#[inline]
unsafe fn store_run(dt: DType, vals: &[f32], dst: *mut u8) {
    let n = vals.len();
    match dt {
        DType::F32 => std::ptr::copy_nonoverlapping(vals.as_ptr(), dst as *mut f32, n),
        DType::F16 => {
            std::slice::from_raw_parts_mut(dst as *mut f16, n).convert_from_f32_slice(vals)
        }
        DType::BF16 => {
            let d = std::slice::from_raw_parts_mut(dst as *mut u16, n);
            for (o, v) in d.iter_mut().zip(vals) {
                *o = bf16_bits(*v);
            }
        }
    }
}

/// One element at `p`, which need not be aligned.
#[inline]
unsafe fn load_one(dt: DType, p: *const u8) -> f32 {
    match dt {
        DType::F32 => (p as *const f32).read_unaligned(),
        DType::F16 => f16::from_bits((p as *const u16).read_unaligned()).to_f32(),
        DType::BF16 => bf16::from_bits((p as *const u16).read_unaligned()).to_f32(),
    }
}

/// Writes one element at `p`, which need not be aligned.
#[inline]
unsafe fn store_one(dt: DType, p: *mut u8, v: f32) {
    match dt {
        DType::F32 => (p as *mut f32).write_unaligned(v),
        DType::F16 => (p as *mut u16).write_unaligned(f16::from_f32(v).to_bits()),
        DType::BF16 => (p as *mut u16).write_unaligned(bf16_bits(v)),
    }
}

/// The blend MIOpen applies to results: `alpha · r + beta · old`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Blend {
    pub alpha: f32,
    pub beta: f32,
}

impl Blend {
    pub const PLAIN: Blend = Blend {
        alpha: 1.0,
        beta: 0.0,
    };

    /// `vals = alpha · vals + beta · old`, `old` the `vals.len()` elements of type `dt` at
    /// `old` (contiguous), read only when `beta != 0`.
    ///
    /// # Safety
    /// As [`store_run`] for `old` when `beta != 0`.
    #[inline]
    unsafe fn apply_run(self, vals: &mut [f32], dt: DType, old: *const u8, scratch: &mut [f32]) {
        if self.beta != 0.0 {
            let o = &mut scratch[..vals.len()];
            load_run(dt, old, o);
            for (v, p) in vals.iter_mut().zip(o.iter()) {
                *v = self.alpha * *v + self.beta * p;
            }
        } else if self.alpha != 1.0 {
            for v in vals.iter_mut() {
                *v *= self.alpha;
            }
        }
    }
}

/// Reads the tensor `l` of type `dt` out of its byte span `bytes` into the packed
/// canonical f32 buffer `out` (`l.numel()` values).
pub fn gather(bytes: &[u8], dt: DType, l: &Layout5, out: &mut [f32]) {
    gather_with(bytes, dt, l, out, simd_rows());
}

/// [`gather`] with the vector kernels (where the CPU has them) or without.
fn gather_with(bytes: &[u8], dt: DType, l: &Layout5, out: &mut [f32], vector: bool) {
    let es = dt.size();
    assert!(
        bytes.len() >= l.span() * es,
        "gather: span {} > buffer",
        l.span()
    );
    assert_eq!(out.len(), l.numel(), "gather: value count");
    if l.numel() == 0 {
        return;
    }
    if let Some(v) = f32_view(bytes, dt, l) {
        out.par_chunks_mut(TASK_ELEMS)
            .zip(v.par_chunks(TASK_ELEMS))
            .for_each(|(o, s)| o.copy_from_slice(s));
        return;
    }
    // Misaligned bytes (never staging, which is aligned) take the element-wise path.
    let aligned = (bytes.as_ptr() as usize).is_multiple_of(es);
    let simd = aligned && vector && simd_rows();
    if aligned && l.is_packed_canonical() {
        // One contiguous run, however the dims are cut: converted in parallel pieces.
        let src = bytes.as_ptr() as usize;
        out.par_chunks_mut(TASK_ELEMS)
            .enumerate()
            .for_each(|(i, o)| {
                let at = (src + i * TASK_ELEMS * es) as *const u8;
                // SAFETY: the piece lies inside the span (checked above), aligned.
                unsafe {
                    #[cfg(target_arch = "x86_64")]
                    if simd {
                        return x86::load_span(dt, at, o.as_mut_ptr(), o.len());
                    }
                    load_run(dt, at, o)
                }
            });
        return;
    }
    let [_, c, d, h, w] = l.dims;
    let [sn, sc, sd, sh, sw] = l.strides;
    let (nrows, per_task) = rows(l);
    let src = bytes.as_ptr() as usize;
    let dst = SendPtr(out.as_mut_ptr());
    let plane = d * h * w;
    (0..nrows.div_ceil(per_task)).into_par_iter().for_each(|t| {
        let dst = dst;
        let mut tile = [0f32; TILE * TILE];
        for r in t * per_task..((t + 1) * per_task).min(nrows) {
            let (n, z, y) = (r / (d * h), (r / h) % d, r % h);
            let base = src + (n * sn + z * sd + y * sh) * es;
            // Element (c, x) of this row goes to out[row0 + c * plane + x].
            let row0 = n * c * plane + z * h * w + y * w;
            // SAFETY: every (c, x) of the row is inside the span (checked above) and
            // aligned; rows write disjoint elements of `out`.
            unsafe {
                #[cfg(target_arch = "x86_64")]
                if simd && (sw == 1 || w == 1 || sc == 1) {
                    x86::gather_row(
                        dt,
                        base as *const u8,
                        (c, w),
                        (sc, sw),
                        dst.0.add(row0),
                        plane,
                    );
                    continue;
                }
                if aligned && (sw == 1 || w == 1) {
                    for ch in 0..c {
                        let o = std::slice::from_raw_parts_mut(dst.0.add(row0 + ch * plane), w);
                        load_run(dt, (base + ch * sc * es) as *const u8, o);
                    }
                } else if aligned && sc == 1 {
                    for x0 in (0..w).step_by(TILE) {
                        let tw = TILE.min(w - x0);
                        for c0 in (0..c).step_by(TILE) {
                            let tc = TILE.min(c - c0);
                            for x in 0..tw {
                                let run = &mut tile[x * TILE..x * TILE + tc];
                                load_run(dt, (base + ((x0 + x) * sw + c0) * es) as *const u8, run);
                            }
                            for ch in 0..tc {
                                let o = dst.0.add(row0 + (c0 + ch) * plane + x0);
                                for x in 0..tw {
                                    *o.add(x) = tile[x * TILE + ch];
                                }
                            }
                        }
                    }
                } else {
                    for ch in 0..c {
                        let o = dst.0.add(row0 + ch * plane);
                        for x in 0..w {
                            *o.add(x) = load_one(dt, (base + (ch * sc + x * sw) * es) as *const u8);
                        }
                    }
                }
            }
        }
    });
}

/// [`gather`] into a new vector.
pub fn gathered(bytes: &[u8], dt: DType, l: &Layout5) -> Vec<f32> {
    let mut v = vec![0f32; l.numel()];
    gather(bytes, dt, l, &mut v);
    v
}

/// Stores the packed canonical f32 result `res` into the tensor `l` of type `dt` inside
/// `bytes`, blended: `alpha · res + beta · old` (the old value is read from `bytes` only
/// when `beta != 0`), rounded to nearest even for fp16/bf16. Bytes outside the tensor's
/// elements are left as they are.
pub fn store(res: &[f32], blend: Blend, dt: DType, l: &Layout5, bytes: &mut [u8]) {
    store_with(res, blend, dt, l, bytes, simd_rows());
}

/// [`store`] with the vector kernels (where the CPU has them) or without.
fn store_with(res: &[f32], blend: Blend, dt: DType, l: &Layout5, bytes: &mut [u8], vector: bool) {
    let es = dt.size();
    assert_eq!(res.len(), l.numel(), "store: value count");
    assert!(
        bytes.len() >= l.span() * es,
        "store: span {} > buffer",
        l.span()
    );
    if l.numel() == 0 {
        return;
    }
    if let Some(v) = f32_view_mut(bytes, dt, l) {
        v.par_chunks_mut(TASK_ELEMS)
            .zip(res.par_chunks(TASK_ELEMS))
            .for_each(|(o, r)| match blend {
                Blend::PLAIN => o.copy_from_slice(r),
                Blend { alpha, beta } if beta != 0.0 => o
                    .iter_mut()
                    .zip(r)
                    .for_each(|(o, r)| *o = alpha * r + beta * *o),
                Blend { alpha, .. } => o.iter_mut().zip(r).for_each(|(o, r)| *o = alpha * r),
            });
        return;
    }
    let aligned = (bytes.as_ptr() as usize).is_multiple_of(es);
    let simd = aligned && vector && simd_rows();
    if aligned && l.is_packed_canonical() {
        // One contiguous run, however the dims are cut: stored in parallel pieces.
        let dst = bytes.as_mut_ptr() as usize;
        res.par_chunks(TASK_ELEMS).enumerate().for_each(|(i, r)| {
            let at = (dst + i * TASK_ELEMS * es) as *mut u8;
            // SAFETY: the pieces are disjoint parts of the span (checked above), aligned.
            unsafe {
                #[cfg(target_arch = "x86_64")]
                if simd {
                    return x86::store_span(blend, dt, r.as_ptr(), at, r.len());
                }
                let mut vals = r.to_vec();
                let mut old = vec![0f32; r.len()];
                blend.apply_run(&mut vals, dt, at, &mut old);
                store_run(dt, &vals, at)
            }
        });
        return;
    }
    let [_, c, d, h, w] = l.dims;
    let [sn, sc, sd, sh, sw] = l.strides;
    let (nrows, per_task) = rows(l);
    let dst = bytes.as_mut_ptr() as usize;
    let plane = d * h * w;
    (0..nrows.div_ceil(per_task)).into_par_iter().for_each(|t| {
        let mut tile = [0f32; TILE * TILE];
        let mut run = vec![0f32; 2 * w.max(TILE)];
        let (run, scratch) = run.split_at_mut(w.max(TILE));
        for r in t * per_task..((t + 1) * per_task).min(nrows) {
            let (n, z, y) = (r / (d * h), (r / h) % d, r % h);
            let base = dst + (n * sn + z * sd + y * sh) * es;
            let row0 = n * c * plane + z * h * w + y * w;
            // SAFETY: as in gather; the tensor is non-overlapping, so rows (and the
            // elements within one) are written by one task each.
            unsafe {
                #[cfg(target_arch = "x86_64")]
                if simd && (sw == 1 || w == 1 || sc == 1) {
                    x86::store_row(
                        blend,
                        dt,
                        res.as_ptr().add(row0),
                        plane,
                        (c, w),
                        (sc, sw),
                        base as *mut u8,
                    );
                    continue;
                }
                if aligned && (sw == 1 || w == 1) {
                    for ch in 0..c {
                        let vals = &mut run[..w];
                        vals.copy_from_slice(&res[row0 + ch * plane..][..w]);
                        let at = (base + ch * sc * es) as *mut u8;
                        blend.apply_run(vals, dt, at, scratch);
                        store_run(dt, vals, at);
                    }
                } else if aligned && sc == 1 {
                    for x0 in (0..w).step_by(TILE) {
                        let tw = TILE.min(w - x0);
                        for c0 in (0..c).step_by(TILE) {
                            let tc = TILE.min(c - c0);
                            for ch in 0..tc {
                                let src = &res[row0 + (c0 + ch) * plane + x0..][..tw];
                                for (x, v) in src.iter().enumerate() {
                                    tile[x * TILE + ch] = *v;
                                }
                            }
                            for x in 0..tw {
                                let vals = &mut tile[x * TILE..x * TILE + tc];
                                let at = (base + ((x0 + x) * sw + c0) * es) as *mut u8;
                                blend.apply_run(vals, dt, at, scratch);
                                store_run(dt, vals, at);
                            }
                        }
                    }
                } else {
                    for ch in 0..c {
                        for x in 0..w {
                            let at = (base + (ch * sc + x * sw) * es) as *mut u8;
                            let mut v = blend.alpha * res[row0 + ch * plane + x];
                            if blend.beta != 0.0 {
                                v += blend.beta * load_one(dt, at);
                            }
                            store_one(dt, at, v);
                        }
                    }
                }
            }
        }
    });
}

/// `v *= alpha` in parallel (no-op for 1).
pub fn scale(v: &mut [f32], alpha: f32) {
    if alpha != 1.0 {
        v.par_chunks_mut(TASK_ELEMS)
            .for_each(|c| c.iter_mut().for_each(|x| *x *= alpha));
    }
}

/// `dst = alpha · res + beta · dst` in parallel.
pub fn blend_into(dst: &mut [f32], res: &[f32], blend: Blend) {
    assert_eq!(dst.len(), res.len());
    let Blend { alpha, beta } = blend;
    dst.par_chunks_mut(TASK_ELEMS)
        .zip(res.par_chunks(TASK_ELEMS))
        .for_each(|(d, r)| {
            d.iter_mut()
                .zip(r)
                .for_each(|(d, r)| *d = alpha * r + beta * *d)
        });
}

/// `acc += v` in parallel.
pub fn add_into(acc: &mut [f32], v: &[f32]) {
    assert_eq!(acc.len(), v.len());
    acc.par_chunks_mut(TASK_ELEMS)
        .zip(v.par_chunks(TASK_ELEMS))
        .for_each(|(a, v)| a.iter_mut().zip(v).for_each(|(a, v)| *a += v));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nhwc(n: usize, c: usize, h: usize, w: usize) -> Layout5 {
        Layout5 {
            dims: [n, c, 1, h, w],
            strides: [h * w * c, 1, h * w * c, w * c, c],
        }
    }

    fn packed(dims: [usize; 5]) -> Layout5 {
        let mut strides = [1; 5];
        for i in (0..4).rev() {
            strides[i] = strides[i + 1] * dims[i + 1];
        }
        Layout5 { dims, strides }
    }

    /// Layouts that take every path: packed (short rows and rows of whole vectors and a
    /// tail), channels-last (several tiles and ragged edges), padded rows, channels-last
    /// 3-D with fewer channels than a vector, a transposed spatial order (element-wise).
    fn layouts() -> Vec<Layout5> {
        vec![
            packed([2, 3, 1, 4, 5]),
            packed([2, 3, 1, 4, 21]),
            // one long row, more than a task's worth (converted in pieces)
            packed([1, 1, 1, 1, 3 * TASK_ELEMS + 7]),
            nhwc(2, 37, 3, 19),
            nhwc(1, 3, 2, 40),
            Layout5 {
                dims: [2, 3, 1, 4, 5],
                strides: [80, 24, 24, 6, 1],
            },
            Layout5 {
                dims: [2, 5, 3, 4, 6],
                strides: [360, 1, 120, 30, 5],
            },
            Layout5 {
                dims: [2, 3, 1, 4, 5],
                strides: [60, 20, 20, 1, 4],
            },
        ]
    }

    /// Naive per-element reference of the value at canonical index `i`.
    fn offset(l: &Layout5, i: usize) -> usize {
        let mut rem = i;
        let mut off = 0;
        for a in (0..5).rev() {
            off += (rem % l.dims[a]) * l.strides[a];
            rem /= l.dims[a];
        }
        off
    }

    fn write_elem(dt: DType, bytes: &mut [u8], idx: usize, v: f32) {
        let es = dt.size();
        let b = &mut bytes[idx * es..idx * es + es];
        match dt {
            DType::F32 => b.copy_from_slice(&v.to_ne_bytes()),
            DType::F16 => b.copy_from_slice(&f16::from_f32(v).to_bits().to_ne_bytes()),
            DType::BF16 => b.copy_from_slice(&bf16::from_f32(v).to_bits().to_ne_bytes()),
        }
    }

    fn read_elem(dt: DType, bytes: &[u8], idx: usize) -> f32 {
        let es = dt.size();
        let b = &bytes[idx * es..idx * es + es];
        match dt {
            DType::F32 => f32::from_ne_bytes(b.try_into().unwrap()),
            DType::F16 => f16::from_bits(u16::from_ne_bytes(b.try_into().unwrap())).to_f32(),
            DType::BF16 => bf16::from_bits(u16::from_ne_bytes(b.try_into().unwrap())).to_f32(),
        }
    }

    /// An aligned byte buffer (u64 storage) of `len` bytes filled with `fill`.
    fn aligned(len: usize, fill: u8) -> Vec<u64> {
        vec![u64::from_ne_bytes([fill; 8]); len.div_ceil(8)]
    }

    fn bytes_of(v: &mut [u64]) -> &mut [u8] {
        let n = v.len() * 8;
        // SAFETY: u64 storage viewed as bytes.
        unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, n) }
    }

    /// The vector kernels where the CPU has them, and the portable code.
    const PATHS: [bool; 2] = [true, false];

    #[test]
    fn gather_matches_a_naive_walk_in_every_dtype_and_layout() {
        for (dt, vector) in [DType::F32, DType::F16, DType::BF16]
            .into_iter()
            .flat_map(|d| PATHS.map(|v| (d, v)))
        {
            for l in layouts() {
                let mut store = aligned(l.span() * dt.size(), 0);
                let bytes = bytes_of(&mut store);
                let want: Vec<f32> = (0..l.numel()).map(|i| (i % 251) as f32 - 100.0).collect();
                for (i, v) in want.iter().enumerate() {
                    write_elem(dt, bytes, offset(&l, i), *v);
                }
                let mut got = vec![f32::NAN; l.numel()];
                gather_with(bytes, dt, &l, &mut got, vector);
                assert_eq!(got, want, "{dt:?} {l:?} vector={vector}");
            }
        }
    }

    #[test]
    fn store_blends_converts_and_leaves_gaps_alone() {
        for (dt, vector) in [DType::F32, DType::F16, DType::BF16]
            .into_iter()
            .flat_map(|d| PATHS.map(|v| (d, v)))
        {
            for l in layouts() {
                for blend in [
                    Blend::PLAIN,
                    Blend {
                        alpha: 2.0,
                        beta: 0.0,
                    },
                    Blend {
                        alpha: 0.5,
                        beta: -1.0,
                    },
                ] {
                    let mut store_ = aligned(l.span() * dt.size(), 0xA5);
                    let bytes = bytes_of(&mut store_);
                    let old: Vec<f32> = (0..l.numel()).map(|i| (i % 7) as f32).collect();
                    for (i, v) in old.iter().enumerate() {
                        write_elem(dt, bytes, offset(&l, i), *v);
                    }
                    let snapshot = bytes.to_vec();
                    let res: Vec<f32> = (0..l.numel()).map(|i| (i % 13) as f32 - 6.0).collect();
                    store_with(&res, blend, dt, &l, bytes, vector);
                    let mut touched = vec![false; l.span()];
                    for i in 0..l.numel() {
                        let at = offset(&l, i);
                        touched[at] = true;
                        let want = blend.alpha * res[i] + blend.beta * old[i];
                        assert_eq!(
                            read_elem(dt, bytes, at),
                            want,
                            "{dt:?} {l:?} {blend:?} {i} vector={vector}"
                        );
                    }
                    let es = dt.size();
                    for (e, t) in touched.iter().enumerate() {
                        if !t {
                            assert_eq!(
                                bytes[e * es..e * es + es],
                                snapshot[e * es..e * es + es],
                                "gap {e} changed"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn misaligned_bytes_convert_element_by_element() {
        let l = nhwc(1, 3, 2, 2);
        for dt in [DType::F32, DType::F16] {
            let mut s = aligned(l.span() * dt.size() + 8, 0);
            let b = &mut bytes_of(&mut s)[1..];
            let vals: Vec<f32> = (0..l.numel()).map(|i| i as f32).collect();
            store(&vals, Blend::PLAIN, dt, &l, b);
            let mut back = vec![0.0; l.numel()];
            gather(b, dt, &l, &mut back);
            assert_eq!(back, vals, "{dt:?}");
        }
    }

    #[test]
    fn half_types_round_to_nearest_even() {
        let l = packed([1, 1, 1, 1, 2]);
        let mut s = aligned(4, 0);
        let b = bytes_of(&mut s);
        // halfway between 1 and the next fp16 / bf16: rounds to the even 1.0
        store(
            &[1.0 + 1.0 / 2048.0, 3.0e38],
            Blend::PLAIN,
            DType::F16,
            &l,
            b,
        );
        assert_eq!(read_elem(DType::F16, b, 0), 1.0);
        assert!(read_elem(DType::F16, b, 1).is_infinite());
        store(
            &[1.0 + 1.0 / 256.0, f32::NAN],
            Blend::PLAIN,
            DType::BF16,
            &l,
            b,
        );
        assert_eq!(read_elem(DType::BF16, b, 0), 1.0);
        assert!(read_elem(DType::BF16, b, 1).is_nan());
        // and ties away from an odd mantissa go up
        store(
            &[1.0 + 3.0 / 256.0],
            Blend::PLAIN,
            DType::BF16,
            &packed([1; 5]),
            b,
        );
        assert_eq!(read_elem(DType::BF16, b, 0), 1.0 + 4.0 / 256.0);
    }

    #[test]
    fn f32_views_only_where_the_bytes_are_the_engines_buffer() {
        let l = packed([1, 2, 1, 2, 2]);
        let mut s = aligned(32, 0);
        let b = bytes_of(&mut s);
        assert!(f32_view(b, DType::F32, &l).is_some());
        assert!(f32_view(&b[1..], DType::F32, &l).is_none(), "misaligned");
        assert!(f32_view(b, DType::F16, &l).is_none(), "fp16");
        assert!(
            f32_view(b, DType::F32, &nhwc(1, 2, 2, 2)).is_none(),
            "channels-last"
        );
    }

    #[test]
    fn blend_scale_and_add() {
        let mut d = vec![1.0, 2.0];
        blend_into(
            &mut d,
            &[4.0, 6.0],
            Blend {
                alpha: 0.5,
                beta: 2.0,
            },
        );
        assert_eq!(d, vec![4.0, 7.0]);
        scale(&mut d, 2.0);
        assert_eq!(d, vec![8.0, 14.0]);
        add_into(&mut d, &[1.0, 1.0]);
        assert_eq!(d, vec![9.0, 15.0]);
    }
}
