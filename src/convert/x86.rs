//! AVX2 + F16C kernels of the conversions, for the x86-64 CPUs that have them (every
//! Ryzen and every Intel core since Haswell): one row `(n, d, h)` of a tensor at a time,
//! eight values to a vector. Contiguous runs convert straight through; channels-last
//! rows go through 8×8 register transposes, so every load and store is a whole vector.
//! fp16 uses the F16C conversions (round to nearest even); bf16 is a shift one way and
//! integer round-to-nearest-even the other, with NaNs kept quiet.

use std::arch::x86_64::*;

use super::Blend;
use crate::cpu::transpose8;
use crate::layout::DType;

/// Whether the CPU has what these kernels use (asked once).
pub fn available() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("f16c")
            && is_x86_feature_detected!("fma")
    })
}

/// Eight contiguous elements of `dt` at `p` as f32.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
unsafe fn load8(dt: DType, p: *const u8) -> __m256 {
    match dt {
        DType::F32 => _mm256_loadu_ps(p as *const f32),
        DType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
        DType::BF16 => {
            let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
        }
    }
}

/// Stores eight f32 as `dt` at `p` (round to nearest even).
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
unsafe fn store8(dt: DType, p: *mut u8, v: __m256) {
    match dt {
        DType::F32 => _mm256_storeu_ps(p as *mut f32, v),
        DType::F16 => _mm_storeu_si128(
            p as *mut __m128i,
            _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v),
        ),
        DType::BF16 => {
            let b = _mm256_castps_si256(v);
            let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(1));
            let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(
                _mm256_add_epi32(b, _mm256_set1_epi32(0x7fff)),
                lsb,
            ));
            let quiet = _mm256_or_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(0x40));
            let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
            let h = _mm256_blendv_epi8(rounded, quiet, nan);
            // 8 × u32 (each < 2^16) -> 8 × u16, in order
            let packed = _mm256_packus_epi32(h, h);
            let ordered = _mm256_permute4x64_epi64::<0b1000>(packed);
            _mm_storeu_si128(p as *mut __m128i, _mm256_castsi256_si128(ordered));
        }
    }
}

/// `alpha · v + beta · old(p)`; the old value is read only when `beta != 0`.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
unsafe fn blend8(b: Blend, dt: DType, v: __m256, p: *const u8) -> __m256 {
    if b.beta != 0.0 {
        _mm256_fmadd_ps(
            _mm256_set1_ps(b.beta),
            load8(dt, p),
            _mm256_mul_ps(_mm256_set1_ps(b.alpha), v),
        )
    } else if b.alpha != 1.0 {
        _mm256_mul_ps(_mm256_set1_ps(b.alpha), v)
    } else {
        v
    }
}

/// Converts `n` contiguous elements at `src` to f32 at `dst`.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
unsafe fn load_run(dt: DType, src: *const u8, dst: *mut f32, n: usize) {
    let es = dt.size();
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(dst.add(i), load8(dt, src.add(i * es)));
        i += 8;
    }
    for j in i..n {
        *dst.add(j) = super::load_one(dt, src.add(j * es));
    }
}

/// Stores `n` contiguous f32 from `src`, blended, as `dt` at `dst`.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
unsafe fn store_run(b: Blend, dt: DType, src: *const f32, dst: *mut u8, n: usize) {
    let es = dt.size();
    let mut i = 0;
    while i + 8 <= n {
        let at = dst.add(i * es);
        store8(dt, at, blend8(b, dt, _mm256_loadu_ps(src.add(i)), at));
        i += 8;
    }
    for j in i..n {
        let at = dst.add(j * es);
        let mut v = b.alpha * *src.add(j);
        if b.beta != 0.0 {
            v += b.beta * super::load_one(dt, at);
        }
        super::store_one(dt, at, v);
    }
}

/// Converts `n` contiguous elements at `src` to f32 at `dst` (a packed tensor's span).
///
/// # Safety
/// As [`gather_row`], for the `n` elements.
#[target_feature(enable = "avx2,f16c,fma")]
pub unsafe fn load_span(dt: DType, src: *const u8, dst: *mut f32, n: usize) {
    load_run(dt, src, dst, n)
}

/// Stores `n` contiguous f32 from `src`, blended, as `dt` at `dst`.
///
/// # Safety
/// As [`gather_row`], for the `n` elements.
#[target_feature(enable = "avx2,f16c,fma")]
pub unsafe fn store_span(b: Blend, dt: DType, src: *const f32, dst: *mut u8, n: usize) {
    store_run(b, dt, src, dst, n)
}

/// One row of a gather: element `(ch, x)` at `src + (ch·sc + x·sw)·size` goes to
/// `dst[ch·plane + x]`, for `c` channels and `w` columns. `sw == 1` or `sc == 1`.
///
/// # Safety
/// The CPU has the features of [`available`]; every element read and written is in
/// bounds and aligned to its size.
#[target_feature(enable = "avx2,f16c,fma")]
pub unsafe fn gather_row(
    dt: DType,
    src: *const u8,
    (c, w): (usize, usize),
    (sc, sw): (usize, usize),
    dst: *mut f32,
    plane: usize,
) {
    let es = dt.size();
    if sw == 1 || w == 1 {
        for ch in 0..c {
            load_run(dt, src.add(ch * sc * es), dst.add(ch * plane), w);
        }
        return;
    }
    debug_assert_eq!(sc, 1);
    let (c8, w8) = (c - c % 8, w - w % 8);
    let mut r = [_mm256_setzero_ps(); 8];
    for x0 in (0..w8).step_by(8) {
        for c0 in (0..c8).step_by(8) {
            for (i, v) in r.iter_mut().enumerate() {
                *v = load8(dt, src.add(((x0 + i) * sw + c0) * es));
            }
            r = transpose8(r);
            for (j, v) in r.iter().enumerate() {
                _mm256_storeu_ps(dst.add((c0 + j) * plane + x0), *v);
            }
        }
    }
    // The ragged edges: channels past the last full block, columns past the last one.
    for x in 0..w {
        let from = if x < w8 { c8 } else { 0 };
        for ch in from..c {
            *dst.add(ch * plane + x) = super::load_one(dt, src.add((x * sw + ch) * es));
        }
    }
}

/// One row of a store, the reverse of [`gather_row`], blended with the old values.
///
/// # Safety
/// As [`gather_row`].
#[target_feature(enable = "avx2,f16c,fma")]
pub unsafe fn store_row(
    b: Blend,
    dt: DType,
    src: *const f32,
    plane: usize,
    (c, w): (usize, usize),
    (sc, sw): (usize, usize),
    dst: *mut u8,
) {
    let es = dt.size();
    if sw == 1 || w == 1 {
        for ch in 0..c {
            store_run(b, dt, src.add(ch * plane), dst.add(ch * sc * es), w);
        }
        return;
    }
    debug_assert_eq!(sc, 1);
    let (c8, w8) = (c - c % 8, w - w % 8);
    let mut r = [_mm256_setzero_ps(); 8];
    for x0 in (0..w8).step_by(8) {
        for c0 in (0..c8).step_by(8) {
            for (j, v) in r.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(src.add((c0 + j) * plane + x0));
            }
            r = transpose8(r);
            for (i, v) in r.iter().enumerate() {
                let at = dst.add(((x0 + i) * sw + c0) * es);
                store8(dt, at, blend8(b, dt, *v, at));
            }
        }
    }
    for x in 0..w {
        let from = if x < w8 { c8 } else { 0 };
        for ch in from..c {
            let at = dst.add((x * sw + ch) * es);
            let mut v = b.alpha * *src.add(ch * plane + x);
            if b.beta != 0.0 {
                v += b.beta * super::load_one(dt, at);
            }
            super::store_one(dt, at, v);
        }
    }
}
