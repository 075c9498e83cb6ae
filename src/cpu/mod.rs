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

pub mod conv;
pub mod shape;

pub use shape::ConvShape;
