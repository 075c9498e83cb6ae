//! Tests of the engine: every path against a naive f64 reference on many
//! shapes (`cases`), adjoint identities over random shapes (`adjoint`), and
//! the bounded-memory chunking (`chunking`). Shared helpers live here.

mod adjoint;
mod cases;
mod chunking;
mod gated;
mod reference;

use std::sync::OnceLock;

use rayon::{ThreadPool, ThreadPoolBuilder};

use super::conv::{backward_data_with, backward_weights_with, forward_with};
use super::scratch::Tuning;
use super::simd::Isa;
use super::ConvShape;

/// xorshift64* — a small seeded generator, reproducible across platforms.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() - 1)]
    }
    /// Uniform in `[-1, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.unit()).collect()
    }
}

/// A 2-D [`shape`]: `[h, w]` sizes, kernel, padding, stride and dilation
/// (one plane of depth).
#[allow(clippy::too_many_arguments)]
pub fn shape2d(
    n: usize,
    c_in: usize,
    c_out: usize,
    groups: usize,
    [h, w]: [usize; 2],
    [kh, kw]: [usize; 2],
    [ph, pw]: [usize; 2],
    [sh, sw]: [usize; 2],
    [dh, dw]: [usize; 2],
) -> ConvShape {
    shape(
        n,
        c_in,
        c_out,
        groups,
        [1, h, w],
        [1, kh, kw],
        [0, ph, pw],
        [1, sh, sw],
        [1, dh, dw],
    )
}

/// A shape whose output size follows the forward formula.
#[allow(clippy::too_many_arguments)]
pub fn shape(
    n: usize,
    c_in: usize,
    c_out: usize,
    groups: usize,
    input: [usize; 3],
    kernel: [usize; 3],
    pad: [usize; 3],
    stride: [usize; 3],
    dilation: [usize; 3],
) -> ConvShape {
    let output = ConvShape::forward_output(input, kernel, pad, stride, dilation)
        .unwrap_or_else(|| panic!("no output for input {input:?} kernel {kernel:?} pad {pad:?}"));
    let s = ConvShape {
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
    };
    s.validate().unwrap();
    s
}

/// The same shape with `extra` more input positions per dim and the same
/// output: a transposed convolution with output padding.
pub fn output_padded(s: ConvShape, extra: [usize; 3]) -> ConvShape {
    let mut t = s;
    for a in 0..3 {
        t.input[a] += extra[a];
    }
    t.validate().unwrap();
    t
}

/// Relative tolerance against the sum of |terms| of each element.
pub const REL_TOL: f64 = 1e-5;
/// Absolute slack for elements whose terms are all tiny.
pub const ABS_TOL: f64 = 1e-7;

/// Checks `got` element-wise against `want` within `REL_TOL · mag + ABS_TOL`.
pub fn compare(what: &str, got: &[f32], want: &[f64], mag: &[f64]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: length {} != {}", got.len(), want.len()));
    }
    let mut bad = 0;
    let mut first = String::new();
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let err = (g as f64 - w).abs();
        if err.is_nan() || err > REL_TOL * m + ABS_TOL {
            if bad == 0 {
                first = format!("element {i}: got {g}, want {w} (term magnitude {m})");
            }
            bad += 1;
        }
    }
    if bad > 0 {
        return Err(format!(
            "{what}: {bad} of {} elements wrong; first {first}",
            got.len()
        ));
    }
    Ok(())
}

/// Weights of 128 × 256·9 floats (over 1 MiB) over 2 images of 3×3
/// positions: one forward chunk holds every position, so several threads
/// split the rows of W across tasks.
pub fn wide_weights_few_positions() -> ConvShape {
    shape(
        2,
        256,
        128,
        1,
        [1, 3, 3],
        [1, 3, 3],
        [0, 1, 1],
        [1, 1, 1],
        [1, 1, 1],
    )
}

/// The default tuning at instruction set `isa`.
pub fn at(isa: Isa) -> Tuning {
    Tuning {
        isa,
        ..Tuning::default()
    }
}

/// `base` with scratch small enough that most shapes are chunked below one
/// image, and every problem through the lowered (GEMM) path.
pub fn tight(base: Tuning) -> Tuning {
    Tuning {
        scratch_bytes: 8 << 10,
        chunk_bytes: 1 << 10,
        direct_depthwise: false,
        ..base
    }
}

/// One way of running the engine: internal tuning and pool size.
#[derive(Clone, Copy)]
pub struct Variant {
    pub name: &'static str,
    pub tuning: Tuning,
    pub threads: usize,
}

impl Variant {
    pub fn default_pool() -> Variant {
        Variant {
            name: "default, 3 threads",
            tuning: Tuning::default(),
            threads: 3,
        }
    }
    /// Default tuning on one thread, strided input gradients by phase
    /// whatever their channel counts.
    pub fn single() -> Variant {
        Variant {
            name: "default, 1 thread, every strided input gradient by phase",
            tuning: Tuning {
                subpixel_min_channels: 1,
                subpixel_max_isa: Isa::Avx512,
                ..Tuning::default()
            },
            threads: 1,
        }
    }
    /// Scratch small enough that most shapes are chunked below one image,
    /// everything through the GEMM path of the best instruction set.
    pub fn tight() -> Variant {
        Variant {
            name: "tight scratch, gemm only, 2 threads",
            tuning: tight(Tuning::default()),
            threads: 2,
        }
    }
    /// The AVX2 kernels (packed GEMM and direct loops), three threads,
    /// every strided input gradient by phase; the portable ones on CPUs
    /// without AVX2.
    pub fn avx2_pool() -> Variant {
        Variant {
            name: "avx2, 3 threads, every strided input gradient by phase",
            tuning: Tuning {
                subpixel_min_channels: 1,
                ..at(Isa::Avx2)
            },
            threads: 3,
        }
    }
    /// [`Variant::tight`] at AVX2, 1×1 kernels on the packed GEMM too.
    pub fn avx2_tight() -> Variant {
        Variant {
            name: "avx2, tight scratch, gemm only, packed 1x1, 2 threads",
            tuning: Tuning {
                gemm_crate_1x1: false,
                ..tight(at(Isa::Avx2))
            },
            threads: 2,
        }
    }
    /// The portable back end with tight scratch: its chunks fall below one
    /// image and backward weights often cannot afford per-worker partials.
    pub fn portable_tight() -> Variant {
        Variant {
            name: "portable, tight scratch, 3 threads",
            tuning: Tuning {
                direct_depthwise: true,
                ..tight(at(Isa::Portable))
            },
            threads: 3,
        }
    }
    /// Direct loops in portable code (no SIMD intrinsics), one thread.
    pub fn portable_loops() -> Variant {
        Variant {
            name: "portable gemm and loops, 1 thread",
            tuning: at(Isa::Portable),
            threads: 1,
        }
    }
    /// Everything through the portable im2col + `gemm` crate path, single-threaded.
    pub fn portable_gemm_only() -> Variant {
        let tuning = Tuning {
            direct_depthwise: false,
            ..at(Isa::Portable)
        };
        Variant {
            name: "portable, gemm only, 1 thread",
            tuning,
            threads: 1,
        }
    }
    /// The paths the default tuning prefers switched off: the input
    /// gradient always through the lowered product and `col2im` (not as a
    /// forward convolution, nor by phase), `Wᵀ` packed per block by each product (never
    /// whole beforehand), and the forward pass on the NCHW lowering (not
    /// the implicit GEMM); two threads.
    pub fn lowered_data() -> Variant {
        let tuning = Tuning {
            data_as_forward: false,
            pack_weights_once: false,
            implicit_forward: false,
            partial_weights_floats: 0,
            subpixel_data: false,
            implicit_weights: false,
            blocked_weights: false,
            ..Tuning::default()
        };
        Variant {
            name: "NCHW lowering only, weights packed per product, weight gradients split by columns, 2 threads",
            tuning,
            threads: 2,
        }
    }
    /// Every variant: each instruction set the CPU has (a wider one it
    /// lacks runs as the next narrower one) with the default and tight
    /// tunings, on one and several threads.
    pub fn all() -> [Variant; 9] {
        [
            Variant::default_pool(),
            Variant::lowered_data(),
            Variant::single(),
            Variant::tight(),
            Variant::avx2_pool(),
            Variant::avx2_tight(),
            Variant::portable_tight(),
            Variant::portable_gemm_only(),
            Variant::portable_loops(),
        ]
    }

    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        pool(self.threads).install(f)
    }
    pub fn forward(&self, s: &ConvShape, x: &[f32], w: &[f32]) -> Vec<f32> {
        let mut y = vec![f32::NAN; s.output_len()];
        self.install(|| forward_with(s, x, w, &mut y, &self.tuning));
        y
    }
    pub fn backward_data(&self, s: &ConvShape, dy: &[f32], w: &[f32]) -> Vec<f32> {
        let mut dx = vec![f32::NAN; s.input_len()];
        self.install(|| backward_data_with(s, dy, w, &mut dx, &self.tuning));
        dx
    }
    pub fn backward_weights(&self, s: &ConvShape, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let mut dw = vec![f32::NAN; s.weight_len()];
        self.install(|| backward_weights_with(s, x, dy, &mut dw, &self.tuning));
        dw
    }
}

/// A shared rayon pool of `threads` threads (1 to 4).
pub fn pool(threads: usize) -> &'static ThreadPool {
    static POOLS: [OnceLock<ThreadPool>; 4] = [const { OnceLock::new() }; 4];
    POOLS[threads - 1].get_or_init(|| {
        ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    })
}

/// Runs all three passes of `s` under `v` and compares them with the reference.
pub fn check_against_reference(s: &ConvShape, v: &Variant, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (x, w, dy) = (
        rng.vec(s.input_len()),
        rng.vec(s.weight_len()),
        rng.vec(s.output_len()),
    );
    let (y_ref, y_mag) = reference::forward(s, &x, &w);
    let (dx_ref, dx_mag) = reference::backward_data(s, &dy, &w);
    let (dw_ref, dw_mag) = reference::backward_weights(s, &x, &dy);
    let ctx = |pass: &str| format!("{pass} [{}] {s:?}", v.name);
    compare(&ctx("forward"), &v.forward(s, &x, &w), &y_ref, &y_mag)?;
    compare(
        &ctx("backward_data"),
        &v.backward_data(s, &dy, &w),
        &dx_ref,
        &dx_mag,
    )?;
    compare(
        &ctx("backward_weights"),
        &v.backward_weights(s, &x, &dy),
        &dw_ref,
        &dw_mag,
    )?;
    Ok(())
}
