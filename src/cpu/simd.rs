//! A minimal f32 vector abstraction with run-time instruction-set dispatch,
//! and the engine's instruction-set levels ([`Isa`]) with their process-wide
//! cap.
//!
//! Kernels are written once as `#[inline(always)]` functions generic over
//! [`Simd`]; [`dispatch_simd!`] compiles them three times — AVX-512
//! (16 lanes), AVX2 + FMA (8 lanes) and a portable 8-lane array type — and
//! picks the best the CPU supports, up to the caller's level, on each call.
//! The packed GEMM (`packed_gemm`) builds on the same vector types.

/// A vector of `N` f32 lanes.
pub(crate) trait Simd: Copy {
    const N: usize;
    fn zero() -> Self;
    fn splat(v: f32) -> Self;
    /// Loads `N` floats.
    ///
    /// # Safety
    /// `p..p + N` must be readable.
    unsafe fn load(p: *const f32) -> Self;
    /// Loads `n <= N` floats, zero in the other lanes.
    ///
    /// # Safety
    /// `p..p + n` must be readable.
    unsafe fn load_part(p: *const f32, n: usize) -> Self;
    /// # Safety
    /// `p..p + N` must be writable.
    unsafe fn store(self, p: *mut f32);
    /// Stores the first `n <= N` lanes.
    ///
    /// # Safety
    /// `p..p + n` must be writable.
    unsafe fn store_part(self, p: *mut f32, n: usize);
    /// `a · b + c` (fused where the instruction set has it).
    fn mul_add(a: Self, b: Self, c: Self) -> Self;
    fn add(a: Self, b: Self) -> Self;
    fn sum(self) -> f32;
    /// Lane `i` = `p[2i]` where `2i < avail`, zero elsewhere; reads nothing
    /// at or past `p + avail`.
    ///
    /// # Safety
    /// `p..p + avail` must be readable.
    #[inline(always)]
    unsafe fn load_even(p: *const f32, avail: usize) -> Self {
        let mut v = [0.0f32; 64];
        for (i, x) in v
            .iter_mut()
            .enumerate()
            .take(avail.div_ceil(2).min(Self::N))
        {
            *x = *p.add(2 * i);
        }
        Self::load(v.as_ptr())
    }
    /// Writes `a[0], b[0], a[1], b[1], …` — the first `n <= 2N` of them.
    ///
    /// # Safety
    /// `p..p + n` must be writable.
    #[inline(always)]
    unsafe fn store_interleaved(a: Self, b: Self, p: *mut f32, n: usize) {
        let (mut va, mut vb) = ([0.0f32; 64], [0.0f32; 64]);
        a.store(va.as_mut_ptr());
        b.store(vb.as_mut_ptr());
        for i in 0..n.min(2 * Self::N) {
            *p.add(i) = if i % 2 == 0 { va[i / 2] } else { vb[i / 2] };
        }
    }
}

/// Loads the first `n` lanes at `p` (all of them when `n >= N`), zero in
/// the others.
///
/// # Safety
/// `p..p + min(n, N)` must be readable.
#[inline(always)]
pub(crate) unsafe fn load_upto<S: Simd>(p: *const f32, n: usize) -> S {
    if n >= S::N {
        S::load(p)
    } else {
        S::load_part(p, n)
    }
}

/// Stores the first `n` lanes of `v` at `p` (all of them when `n >= N`).
///
/// # Safety
/// `p..p + min(n, N)` must be writable.
#[inline(always)]
pub(crate) unsafe fn store_upto<S: Simd>(v: S, p: *mut f32, n: usize) {
    if n >= S::N {
        v.store(p)
    } else {
        v.store_part(p, n)
    }
}

/// Portable fallback: eight lanes in an array, multiply then add.
#[derive(Clone, Copy)]
pub(crate) struct Lanes8([f32; 8]);

impl Simd for Lanes8 {
    const N: usize = 8;
    #[inline(always)]
    fn zero() -> Self {
        Lanes8([0.0; 8])
    }
    #[inline(always)]
    fn splat(v: f32) -> Self {
        Lanes8([v; 8])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Lanes8(std::ptr::read_unaligned(p as *const [f32; 8]))
    }
    #[inline(always)]
    unsafe fn load_part(p: *const f32, n: usize) -> Self {
        let mut v = [0.0; 8];
        for (i, x) in v.iter_mut().enumerate().take(n) {
            *x = *p.add(i);
        }
        Lanes8(v)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; 8], self.0);
    }
    #[inline(always)]
    unsafe fn store_part(self, p: *mut f32, n: usize) {
        for (i, x) in self.0.iter().enumerate().take(n) {
            *p.add(i) = *x;
        }
    }
    #[inline(always)]
    fn mul_add(a: Self, b: Self, c: Self) -> Self {
        Lanes8(std::array::from_fn(|i| a.0[i] * b.0[i] + c.0[i]))
    }
    #[inline(always)]
    fn add(a: Self, b: Self) -> Self {
        Lanes8(std::array::from_fn(|i| a.0[i] + b.0[i]))
    }
    #[inline(always)]
    fn sum(self) -> f32 {
        self.0.iter().sum()
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Simd;

    /// Sixteen lanes in a zmm register. Only used inside functions compiled
    /// with `avx512f`.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512(pub(crate) __m512);

    #[inline(always)]
    fn mask16(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    impl Simd for Avx512 {
        const N: usize = 16;
        #[inline(always)]
        fn zero() -> Self {
            unsafe { Avx512(_mm512_setzero_ps()) }
        }
        #[inline(always)]
        fn splat(v: f32) -> Self {
            unsafe { Avx512(_mm512_set1_ps(v)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx512(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn load_part(p: *const f32, n: usize) -> Self {
            Avx512(_mm512_maskz_loadu_ps(mask16(n), p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn store_part(self, p: *mut f32, n: usize) {
            _mm512_mask_storeu_ps(p, mask16(n), self.0)
        }
        #[inline(always)]
        fn mul_add(a: Self, b: Self, c: Self) -> Self {
            unsafe { Avx512(_mm512_fmadd_ps(a.0, b.0, c.0)) }
        }
        #[inline(always)]
        fn add(a: Self, b: Self) -> Self {
            unsafe { Avx512(_mm512_add_ps(a.0, b.0)) }
        }
        #[inline(always)]
        fn sum(self) -> f32 {
            unsafe { _mm512_reduce_add_ps(self.0) }
        }
        #[inline(always)]
        unsafe fn load_even(p: *const f32, avail: usize) -> Self {
            let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
            let lo = Avx512::load_part(p, avail.min(16)).0;
            let hi = Avx512::load_part(p.add(16), avail.saturating_sub(16).min(16)).0;
            Avx512(_mm512_permutex2var_ps(lo, even, hi))
        }
        #[inline(always)]
        unsafe fn store_interleaved(a: Self, b: Self, p: *mut f32, n: usize) {
            let lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
            let hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
            let n = n.min(32);
            _mm512_mask_storeu_ps(p, mask16(n), _mm512_permutex2var_ps(a.0, lo, b.0));
            if n > 16 {
                let v = _mm512_permutex2var_ps(a.0, hi, b.0);
                _mm512_mask_storeu_ps(p.add(16), mask16(n - 16), v);
            }
        }
    }

    /// Eight lanes in a ymm register. Only used inside functions compiled
    /// with `avx2,fma`.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2(pub(crate) __m256);

    #[inline(always)]
    unsafe fn mask8(n: usize) -> __m256i {
        let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), idx)
    }

    impl Simd for Avx2 {
        const N: usize = 8;
        #[inline(always)]
        fn zero() -> Self {
            unsafe { Avx2(_mm256_setzero_ps()) }
        }
        #[inline(always)]
        fn splat(v: f32) -> Self {
            unsafe { Avx2(_mm256_set1_ps(v)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx2(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn load_part(p: *const f32, n: usize) -> Self {
            Avx2(_mm256_maskload_ps(p, mask8(n)))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0)
        }
        /// Plain 4-, 2- and 1-lane stores rather than `vmaskmovps`, whose
        /// store form is microcoded and slow on AMD CPUs.
        #[inline(always)]
        unsafe fn store_part(self, p: *mut f32, n: usize) {
            if n >= 8 {
                return _mm256_storeu_ps(p, self.0);
            }
            let (mut p, mut n) = (p, n);
            let mut v = _mm256_castps256_ps128(self.0);
            if n >= 4 {
                _mm_storeu_ps(p, v);
                v = _mm256_extractf128_ps::<1>(self.0);
                p = p.add(4);
                n -= 4;
            }
            if n >= 2 {
                _mm_storel_pd(p as *mut f64, _mm_castps_pd(v));
                v = _mm_movehl_ps(v, v);
                p = p.add(2);
                n -= 2;
            }
            if n == 1 {
                _mm_store_ss(p, v);
            }
        }
        #[inline(always)]
        fn mul_add(a: Self, b: Self, c: Self) -> Self {
            unsafe { Avx2(_mm256_fmadd_ps(a.0, b.0, c.0)) }
        }
        #[inline(always)]
        fn add(a: Self, b: Self) -> Self {
            unsafe { Avx2(_mm256_add_ps(a.0, b.0)) }
        }
        #[inline(always)]
        fn sum(self) -> f32 {
            let mut v = [0.0f32; 8];
            unsafe { _mm256_storeu_ps(v.as_mut_ptr(), self.0) };
            v.iter().sum()
        }
        #[inline(always)]
        unsafe fn load_even(p: *const f32, avail: usize) -> Self {
            let (lo, hi) = if avail >= 16 {
                (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
            } else {
                (
                    Avx2::load_part(p, avail.min(8)).0,
                    Avx2::load_part(p.add(8), avail.saturating_sub(8)).0,
                )
            };
            // Even lanes of each 128-bit half: lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6.
            let v = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
            Avx2(_mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(
                _mm256_castps_pd(v),
            )))
        }
        #[inline(always)]
        unsafe fn store_interleaved(a: Self, b: Self, p: *mut f32, n: usize) {
            let lo = _mm256_unpacklo_ps(a.0, b.0); // a0 b0 a1 b1 | a4 b4 a5 b5
            let hi = _mm256_unpackhi_ps(a.0, b.0); // a2 b2 a3 b3 | a6 b6 a7 b7
                                                   // Stored through `store_part` (plain stores): `vmaskmovps`'s
                                                   // store form is microcoded and slow on AMD CPUs.
            let n = n.min(16);
            let first = _mm256_permute2f128_ps::<0x20>(lo, hi);
            Avx2(first).store_part(p, n.min(8));
            if n > 8 {
                let second = _mm256_permute2f128_ps::<0x31>(lo, hi);
                Avx2(second).store_part(p.add(8), n - 8);
            }
        }
    }
}

/// Whether the AVX2 + FMA entry points may run on this CPU (checked once).
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static DETECTED: OnceLock<bool> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX-512 entry points may run on this CPU (checked once).
#[inline]
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static DETECTED: OnceLock<bool> = OnceLock::new();
        *DETECTED.get_or_init(|| has_avx2_fma() && std::arch::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// An instruction-set level of the engine's kernels, narrowest first: each
/// kernel is compiled for every level and the widest one allowed runs.
/// [`Isa::Portable`] uses no SIMD intrinsics (its matrix products go through
/// the `gemm` crate, which picks its own instruction set at run time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    Portable,
    /// AVX2 with FMA: 16 registers of 8 lanes.
    Avx2,
    /// AVX-512F: 32 registers of 16 lanes.
    Avx512,
}

impl Isa {
    /// Every level, narrowest first.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    /// The name `RDNA1SHIM_MAX_ISA` takes: `portable`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parses a level's name (case-insensitive, surrounding blanks ignored).
    pub fn parse(name: &str) -> Option<Isa> {
        let name = name.trim();
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(name))
    }

    /// The widest level this CPU supports (checked once).
    pub fn detected() -> Isa {
        if has_avx512() {
            Isa::Avx512
        } else if has_avx2_fma() {
            Isa::Avx2
        } else {
            Isa::Portable
        }
    }

    /// This level, lowered to what the CPU supports.
    pub fn supported(self) -> Isa {
        self.min(Isa::detected())
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The process-wide cap set by [`set_max_isa`] (an `Isa` as `u8`).
static MAX_ISA: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(Isa::Avx512 as u8);

/// Caps the instruction set of the engine's kernels for the calls that
/// follow, like oneDNN's `ONEDNN_MAX_CPU_ISA` (the shim sets it from
/// `RDNA1SHIM_MAX_ISA`). A cap above what the CPU has changes nothing.
pub fn set_max_isa(cap: Isa) {
    MAX_ISA.store(cap as u8, std::sync::atomic::Ordering::Relaxed);
}

/// The level the engine's kernels run at: the best the CPU has, within the
/// cap of [`set_max_isa`].
pub fn isa() -> Isa {
    let cap = match MAX_ISA.load(std::sync::atomic::Ordering::Relaxed) {
        0 => Isa::Portable,
        1 => Isa::Avx2,
        _ => Isa::Avx512,
    };
    cap.supported()
}

/// Defines `$name(level, args)`, which runs the generic `$body::<S>(args)`
/// compiled for the best instruction set the CPU has, up to `level` (an [`Isa`]).
macro_rules! dispatch_simd {
    ($vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) => $body:ident) => {
        $vis fn $name(level: $crate::cpu::simd::Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::cpu::simd::{has_avx2_fma, has_avx512, Isa};
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn wide($($arg: $ty),*) {
                    $body::<$crate::cpu::simd::Avx512>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn narrow($($arg: $ty),*) {
                    $body::<$crate::cpu::simd::Avx2>($($arg),*)
                }
                if level >= Isa::Avx512 && has_avx512() {
                    // SAFETY: the CPU supports the features `wide` was compiled for.
                    return unsafe { wide($($arg),*) };
                }
                if level >= Isa::Avx2 && has_avx2_fma() {
                    // SAFETY: the CPU supports the features `narrow` was compiled for.
                    return unsafe { narrow($($arg),*) };
                }
            }
            let _ = level;
            $body::<$crate::cpu::simd::Lanes8>($($arg),*)
        }
    };
}
pub(crate) use dispatch_simd;

#[cfg(test)]
mod tests {
    use super::*;

    /// `store_interleaved` and `store_part` of `S` write exactly their first
    /// `n` values and nothing past them, for every `n`.
    fn partial_stores_write_exactly_n<S: Simd>() {
        let a: Vec<f32> = (0..S::N).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..S::N).map(|i| 100.0 + i as f32).collect();
        // SAFETY: every pointer covers the lanes it is used for.
        let (va, vb) = unsafe { (S::load(a.as_ptr()), S::load(b.as_ptr())) };
        for n in 0..=2 * S::N {
            let mut out = vec![-1.0f32; 2 * S::N + 4];
            unsafe { S::store_interleaved(va, vb, out.as_mut_ptr(), n) };
            for (i, &v) in out.iter().enumerate() {
                let want = match i {
                    i if i < n && i % 2 == 0 => a[i / 2],
                    i if i < n => b[i / 2],
                    _ => -1.0,
                };
                assert_eq!(v, want, "store_interleaved n={n} lane {i}");
            }
            if n <= S::N {
                let mut out = vec![-1.0f32; S::N + 4];
                unsafe { va.store_part(out.as_mut_ptr(), n) };
                for (i, &v) in out.iter().enumerate() {
                    assert_eq!(
                        v,
                        if i < n { a[i] } else { -1.0 },
                        "store_part n={n} lane {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn partial_stores_write_exactly_their_lanes() {
        partial_stores_write_exactly_n::<Lanes8>();
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn narrow() {
                partial_stores_write_exactly_n::<Avx2>();
            }
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn wide() {
                partial_stores_write_exactly_n::<Avx512>();
            }
            if has_avx2_fma() {
                // SAFETY: the CPU has the features.
                unsafe { narrow() };
            }
            if has_avx512() {
                // SAFETY: the CPU has the features.
                unsafe { wide() };
            }
        }
    }
}
