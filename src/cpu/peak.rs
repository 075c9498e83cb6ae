//! Measures the floating-point peak of the cores the engine runs on: a loop
//! of independent fused multiply-adds on the widest vectors the CPU has
//! (AVX-512F, else AVX2+FMA), timed on every thread of the current pool at
//! once. The benchmark divides its GFLOP/s by this to report percent of peak.

use std::time::Instant;

use rayon::prelude::*;

/// Summed FMA peak, in GFLOP/s (2 flops per lane per FMA), of the threads of
/// the current rayon pool running together; `None` on CPUs without AVX2+FMA.
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

/// Flops done and seconds taken by `iters` steps of the widest kernel.
#[allow(unreachable_code)]
fn run(iters: usize) -> Option<(f64, f64)> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            let t = Instant::now();
            // SAFETY: the feature was detected.
            let sink = unsafe { x86::fma512(iters) };
            std::hint::black_box(sink);
            return Some((iters as f64 * 24.0 * 32.0, t.elapsed().as_secs_f64()));
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            let t = Instant::now();
            // SAFETY: the features were detected.
            let sink = unsafe { x86::fma256(iters) };
            std::hint::black_box(sink);
            return Some((iters as f64 * 12.0 * 16.0, t.elapsed().as_secs_f64()));
        }
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
