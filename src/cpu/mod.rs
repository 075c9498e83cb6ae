//! The CPU convolution engine: pure Rust, no FFI, usable on its own.
//!
//! Every tensor here is a packed f32 buffer in canonical order:
//! - input  `x`  : `[n, c_in,  d, h, w]`          (`ConvShape::input_len`)
//! - weight `w`  : `[c_out, c_in / groups, kd, kh, kw]` (`ConvShape::weight_len`)
//! - output `y`  : `[n, c_out, od, oh, ow]`        (`ConvShape::output_len`)
//!
//! 1-D and 2-D problems use the same 3-D form with leading spatial sizes of 1.
//! Layout conversion (NHWC, strided, fp16/bf16) happens outside the engine.
//! The engine runs on whatever rayon pool is current; callers choose the pool.
//!
//! Convolution modules:
//! - [`conv`]: the entry points (`forward`, `backward_data`,
//!   `backward_weights`), argument checks and the choice of algorithm;
//! - `lowered`: the passes as matrix products over chunks of positions, with
//!   a packed back end written once over the vector instruction set and
//!   compiled for AVX-512 and AVX2 (`packed_gemm` kernel, `pack` providers of
//!   the packed operand; x86-64 only) and a portable one (`im2col` buffers,
//!   `matmul` over the `gemm` crate);
//! - `depthwise`: direct loops for one input channel per group;
//! - `padded`: zero-padded, phase-split input planes used by both;
//! - `geometry` (index arithmetic), `scratch` (bounded reusable buffers),
//!   `par` (task splitting), `simd` (vector types, the instruction-set
//!   levels [`Isa`] with their process-wide cap, run-time dispatch).
//!
//! [`channels_last`] computes pointwise and depthwise layers directly on channels-last
//! tensors. [`batchnorm`] is the batch-normalization engine; `peak` measures the
//! cores' FMA peak for the benchmark.

pub mod batchnorm;
pub mod channels_last;
pub mod conv;
mod depthwise;
pub mod gate;
mod geometry;
mod im2col;
mod lowered;
mod matmul;
#[cfg(target_arch = "x86_64")]
mod pack;
#[cfg(target_arch = "x86_64")]
mod packed_gemm;
mod padded;
mod par;
mod peak;
mod scratch;
pub mod shape;
mod simd;

#[cfg(test)]
mod tests;

/// The 8×8 `f32` transpose in AVX registers, shared with the layout conversions.
#[cfg(target_arch = "x86_64")]
pub(crate) use packed_gemm::transpose8;
pub use peak::fma_peak_gflops;
pub use scratch::MAX_SCRATCH_BYTES;
pub use shape::ConvShape;
pub use simd::{isa, set_max_isa, Isa};
