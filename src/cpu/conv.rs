//! Public entry points of the engine: the three convolution passes on packed
//! f32 buffers, with argument checks and the choice of algorithm.
//!
//! Semantics are PyTorch's `conv{1,2,3}d` (cross-correlation) with groups,
//! stride, symmetric zero padding and dilation:
//! `y[n, co, o] = Σ_{ci ∈ group(co), t} w[co, ci, t] · x[n, ci, o·stride + t·dilation − pad]`.
//! All passes overwrite their output. Work runs on the current rayon pool.

pub use super::scratch::MAX_SCRATCH_BYTES;

use super::scratch::{self, Tuning};
use super::{depthwise, lowered, ConvShape};

/// `y = conv(x, w)`.
///
/// # Panics
/// If the shape does not validate or a buffer length differs from the one
/// the shape implies.
pub fn forward(s: &ConvShape, x: &[f32], w: &[f32], y: &mut [f32]) {
    forward_with(s, x, w, y, &Tuning::default());
}

/// `dx = convᵀ(dy, w)`: the gradient of `forward` with respect to `x`, which
/// is also the forward pass of a transposed convolution. Input positions that
/// no kernel tap reaches (output padding) get 0.
///
/// # Panics
/// As [`forward`].
pub fn backward_data(s: &ConvShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    backward_data_with(s, dy, w, dx, &Tuning::default());
}

/// `dw = Σ_{n, positions} dy ⊗ x-patch`: the gradient of `forward` with
/// respect to `w`.
///
/// # Panics
/// As [`forward`].
pub fn backward_weights(s: &ConvShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    backward_weights_with(s, x, dy, dw, &Tuning::default());
}

/// `y = conv(x, w)` over a batch whose images arrive and leave while it runs
/// (see [`super::gate`]): by the implicit GEMM where it takes `s` at the
/// process's instruction set (see [`forward_gated_applies`]) on the current
/// pool; false, with nothing read or written, where it does not.
///
/// # Panics
/// As [`forward`].
pub fn forward_gated(
    s: &ConvShape,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    gate: &dyn super::gate::Gate,
) -> bool {
    forward_gated_with(s, x, w, y, gate, &Tuning::default())
}

pub(crate) fn forward_gated_with(
    s: &ConvShape,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    gate: &dyn super::gate::Gate,
    t: &Tuning,
) -> bool {
    check_forward(s, x, w, y);
    !use_direct(s, t) && lowered::forward_gated(s, x, w, y, t, gate)
}

/// Whether [`forward_gated`] takes `s` on a pool of `threads`: where the
/// engine's own choice for the whole batch is the implicit GEMM, at the
/// process's instruction set.
pub fn forward_gated_applies(s: &ConvShape, threads: usize) -> bool {
    let t = Tuning::default();
    !use_direct(s, &t) && lowered::implicit_forward_chosen(s, &t, threads)
}

/// `dx = convᵀ(dy, w)` over a batch whose images arrive and leave while it
/// runs, as [`forward_gated`]: where the engine's choice for `s` is the
/// implicit GEMM over the flipped kernel (a stride-1 input gradient, see
/// [`backward_data_gated_applies`]); false, with nothing read or written,
/// where it is not.
///
/// # Panics
/// As [`backward_data`].
pub fn backward_data_gated(
    s: &ConvShape,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    gate: &dyn super::gate::Gate,
) -> bool {
    backward_data_gated_with(s, dy, w, dx, gate, &Tuning::default())
}

pub(crate) fn backward_data_gated_with(
    s: &ConvShape,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    gate: &dyn super::gate::Gate,
    t: &Tuning,
) -> bool {
    check_backward_data(s, dy, w, dx);
    !use_direct(s, t) && lowered::backward_data_gated(s, dy, w, dx, t, gate)
}

/// Whether [`backward_data_gated`] takes `s` on a pool of `threads`.
pub fn backward_data_gated_applies(s: &ConvShape, threads: usize) -> bool {
    let t = Tuning::default();
    !use_direct(s, &t) && lowered::implicit_backward_data_chosen(s, &t, threads)
}

/// `dw` of `s` over a batch whose images of `x` and `dy` arrive while it
/// runs (see [`super::gate`]): each task asks the gate for the images it
/// reads as it reaches them, image after image; the gate hears of no output
/// image (`dw` is whole when it returns). Where the engine's choice for `s`
/// reads the images in order ([`backward_weights_gated_applies`]); false,
/// with nothing read or written, where it does not.
///
/// # Panics
/// As [`backward_weights`].
pub fn backward_weights_gated(
    s: &ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    gate: &dyn super::gate::Gate,
) -> bool {
    backward_weights_gated_with(s, x, dy, dw, gate, &Tuning::default())
}

pub(crate) fn backward_weights_gated_with(
    s: &ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    gate: &dyn super::gate::Gate,
    t: &Tuning,
) -> bool {
    check_backward_weights(s, x, dy, dw);
    !use_direct(s, t) && lowered::backward_weights_gated(s, x, dy, dw, t, gate)
}

/// Whether [`backward_weights_gated`] takes `s` on a pool of `threads`: the
/// partial sums over bands of images of wide and short rows, and the
/// column ranges of the NCHW lowering, at the process's instruction set.
pub fn backward_weights_gated_applies(s: &ConvShape, threads: usize) -> bool {
    let t = Tuning::default();
    !use_direct(s, &t) && lowered::backward_weights_gated_chosen(s, &t, threads)
}

/// Frees the scratch buffers the engine keeps between calls, on every thread
/// of the current rayon pool and on the calling thread. Later calls simply
/// allocate again.
pub fn release_scratch() {
    rayon::broadcast(|_| scratch::release_thread());
    scratch::release_thread();
}

/// Panics unless `x`, `w` and `y` are the sizes of `s`'s forward pass.
fn check_forward(s: &ConvShape, x: &[f32], w: &[f32], y: &[f32]) {
    s.check_buffers(
        "forward",
        [
            ("x", x.len(), s.input_len()),
            ("w", w.len(), s.weight_len()),
            ("y", y.len(), s.output_len()),
        ],
    );
}

/// Panics unless `dy`, `w` and `dx` are the sizes of `s`'s input gradient.
fn check_backward_data(s: &ConvShape, dy: &[f32], w: &[f32], dx: &[f32]) {
    s.check_buffers(
        "backward_data",
        [
            ("dy", dy.len(), s.output_len()),
            ("w", w.len(), s.weight_len()),
            ("dx", dx.len(), s.input_len()),
        ],
    );
}

/// Panics unless `x`, `dy` and `dw` are the sizes of `s`'s weight gradient.
fn check_backward_weights(s: &ConvShape, x: &[f32], dy: &[f32], dw: &[f32]) {
    s.check_buffers(
        "backward_weights",
        [
            ("x", x.len(), s.input_len()),
            ("dy", dy.len(), s.output_len()),
            ("dw", dw.len(), s.weight_len()),
        ],
    );
}

fn use_direct(s: &ConvShape, t: &Tuning) -> bool {
    t.direct_depthwise && s.is_depthwise()
}

pub(crate) fn forward_with(s: &ConvShape, x: &[f32], w: &[f32], y: &mut [f32], t: &Tuning) {
    check_forward(s, x, w, y);
    if use_direct(s, t) {
        depthwise::forward(s, x, w, y, t);
    } else {
        lowered::forward(s, x, w, y, t);
    }
}

pub(crate) fn backward_data_with(s: &ConvShape, dy: &[f32], w: &[f32], dx: &mut [f32], t: &Tuning) {
    check_backward_data(s, dy, w, dx);
    if use_direct(s, t) {
        depthwise::backward_data(s, dy, w, dx, t);
    } else {
        lowered::backward_data(s, dy, w, dx, t);
    }
}

pub(crate) fn backward_weights_with(
    s: &ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    t: &Tuning,
) {
    check_backward_weights(s, x, dy, dw);
    if use_direct(s, t) {
        depthwise::backward_weights(s, x, dy, dw, t);
    } else {
        lowered::backward_weights(s, x, dy, dw, t);
    }
}
