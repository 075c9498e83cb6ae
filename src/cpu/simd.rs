//! Runtime CPU-feature dispatch for the engine's hand-written loops.
//!
//! Hot loops are written once as `#[inline(always)]` generic functions over
//! [`MulAdd`]; an x86-64 entry point compiled with `avx2,fma` instantiates them
//! with [`Fused`] so LLVM emits 256-bit FMA code, while the portable entry
//! point uses [`Unfused`] (a separate multiply and add, never a libm call).

/// How a kernel combines `a * b + c`.
pub(crate) trait MulAdd: Copy {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// `a * b + c` with two roundings: the portable choice.
#[derive(Clone, Copy)]
pub(crate) struct Unfused;

impl MulAdd for Unfused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// A fused multiply-add: only used inside functions compiled with `fma`.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
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

/// Defines `$name(args)`, which runs the generic `$body::<M>(args)` with
/// `M = Fused` under `avx2,fma` when the CPU has them and `M = Unfused` otherwise.
macro_rules! dispatch_mul_add {
    ($vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) => $body:ident) => {
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fused($($arg: $ty),*) {
                    $body::<$crate::cpu::simd::Fused>($($arg),*)
                }
                if $crate::cpu::simd::has_avx2_fma() {
                    // SAFETY: the CPU supports the features `fused` was compiled for.
                    return unsafe { fused($($arg),*) };
                }
            }
            $body::<$crate::cpu::simd::Unfused>($($arg),*)
        }
    };
}
pub(crate) use dispatch_mul_add;
