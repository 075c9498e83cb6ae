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
//! Modules: [`conv`] (entry points and dispatch), `lowered` (im2col + GEMM
//! paths), `im2col` (lowered-matrix construction), `depthwise` (direct loops),
//! `geometry` (index arithmetic), `matmul` (`gemm` wrapper), `scratch`
//! (bounded reusable buffers), `par` (task splitting), `simd` (CPU-feature
//! dispatch).

mod avx512_gemm;
pub mod batchnorm;
pub mod conv;
mod depthwise;
mod geometry;
mod im2col;
mod lowered;
mod matmul;
mod pack;
mod padded;
mod par;
mod scratch;
pub mod shape;
mod simd;

#[cfg(test)]
mod tests;

pub use scratch::MAX_SCRATCH_BYTES;
pub use shape::ConvShape;
