//! Convolution passes on packed f32 buffers (placeholder; replaced by the engine).
