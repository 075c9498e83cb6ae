//! Measures the floating-point peak of the cores the engine runs on: a loop
//! of independent fused multiply-adds on the widest vectors the engine's
//! kernels use ([`super::isa`]: AVX-512F, or AVX2+FMA — also on an AVX-512
//! CPU whose engine is capped at AVX2), timed on every thread of the current
//! pool at once. The benchmark divides its GFLOP/s by this to report percent
//! of peak.

use std::time::Instant;

use rayon::prelude::*;

use super::Isa;

/// Summed FMA peak, in GFLOP/s (2 flops per lane per FMA), of the threads of
/// the current rayon pool running together, at the engine's instruction set;
/// `None` when that is portable (no AVX2+FMA, or capped).
pub fn fma_peak_gflops() -> Option<f64> {
    let threads = rayon::current_num_threads();
    let per: Vec<Option<f64>> = (0..threads).into_par_iter().map(|_| one_thread()).collect();
    per.into_iter().sum()
}

fn one_thread() -> Option<f64> {
    // Warm up (frequency transitions), then keep the best of a few runs.
    let mut best = 0.0f64;
    for _ in 0..5 {
        let (flops, t) = run(20_000_000)?;
        best = best.max(flops / t.max(1e-9) / 1e9);
    }
    Some(best)
}

/// Flops done and seconds taken by `iters` steps of the kernel of the
/// engine's instruction set.
#[allow(unreachable_code)]
fn run(iters: usize) -> Option<(f64, f64)> {
    #[cfg(target_arch = "x86_64")]
    match super::isa() {
        Isa::Avx512 => {
            let t = Instant::now();
            // SAFETY: `isa()` never exceeds what the CPU has.
            let sink = unsafe { x86::fma512(iters) };
            std::hint::black_box(sink);
            return Some((iters as f64 * 24.0 * 32.0, t.elapsed().as_secs_f64()));
        }
        Isa::Avx2 => {
            let t = Instant::now();
            // SAFETY: as above.
            let sink = unsafe { x86::fma256(iters) };
            std::hint::black_box(sink);
            return Some((iters as f64 * 12.0 * 16.0, t.elapsed().as_secs_f64()));
        }
        Isa::Portable => {}
    }
    let _ = iters;
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 24 independent accumulator chains: enough to cover the FMA latency
    /// of two pipes.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma512(iters: usize) -> f32 {
        let m = _mm512_set1_ps(0.999_999);
        let a = _mm512_set1_ps(1e-7);
        let mut acc = [_mm512_set1_ps(1.0); 24];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, m, a);
            }
        }
        let mut s = _mm512_setzero_ps();
        for x in acc {
            s = _mm512_add_ps(s, x);
        }
        _mm512_reduce_add_ps(s)
    }

    /// 12 chains of 8-lane FMAs.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma256(iters: usize) -> f32 {
        let m = _mm256_set1_ps(0.999_999);
        let a = _mm256_set1_ps(1e-7);
        let mut acc = [_mm256_set1_ps(1.0); 12];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, m, a);
            }
        }
        let mut out = [0.0f32; 8];
        let mut s = _mm256_setzero_ps();
        for x in acc {
            s = _mm256_add_ps(s, x);
        }
        _mm256_storeu_ps(out.as_mut_ptr(), s);
        out.iter().sum()
    }
}
