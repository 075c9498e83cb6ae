//! The three passes lowered to matrix products.
//!
//! Per group `g`, with `M = c_out / groups`, `K = (c_in / groups) · taps` and a
//! chunk of `C` output positions:
//! - forward:          `y[M×C]  = W[M×K] · col[K×C]`
//! - backward data:    `col[K×C] = Wᵀ[K×M] · dy[M×C]`, then `col2im` into `dx`
//! - backward weights: `dW[M×K] += dy[M×C] · colᵀ[C×K]`
//!
//! A stride-1 input gradient of a wide layer is instead computed as the
//! forward convolution of `dy` with the flipped, transposed kernel
//! ([`data_as_forward`]). On the packed back end, the forward pass of most
//! 2-D layers of one group is an implicit GEMM over a channels-last copy of
//! the input instead (`implicit`), which also serves channels-last calls
//! directly ([`forward_channels_last`]). The input gradient of a strided
//! layer of many channels goes by phase at AVX2, one product per kernel
//! tap (`subpixel`); small weight gradients over short rows run over the
//! implicit forward's channels-last planes (`implicit_weights`), over wide
//! rows with a stride-1 kernel over channel-blocked planes read in place
//! (`blocked_weights`).
//!
//! Chunks cut the positions of the batch into independent tasks; chunks of
//! small images span several whole images so the products stay large.
//! Backward-data tasks own disjoint parts of `dx` (images × group × channel
//! range), so `col2im` needs no synchronisation; backward-weights tasks either
//! own disjoint blocks of `dW` or sum into per-worker partials reduced at the
//! end. Two back ends share this plan, chosen by the tuning's instruction
//! set: `packed` (the packed GEMM, im2col fused into its packing, compiled
//! for AVX-512 and for AVX2) and [`portable`] (explicit im2col chunks and
//! the `gemm` crate).

#[cfg(target_arch = "x86_64")]
mod blocked_weights;
#[cfg(target_arch = "x86_64")]
mod implicit;
#[cfg(target_arch = "x86_64")]
mod implicit_weights;
#[cfg(target_arch = "x86_64")]
mod packed;
mod portable;
#[cfg(target_arch = "x86_64")]
mod slabs;
#[cfg(target_arch = "x86_64")]
mod subpixel;

use rayon::prelude::*;

use super::gate::Gate;
use super::im2col::{gather_rows, Chunk};
use super::matmul::Mat;
use super::scratch::Tuning;
use super::simd::Isa;
use super::ConvShape;

/// The back end of the lowered passes of `s`: the packed GEMM at the
/// tuning's instruction set, or the portable one (the `gemm` crate) where
/// that is portable or, at AVX2, for 1×1 kernels (`Tuning::gemm_crate_1x1`).
fn back_end(s: &ConvShape, t: &Tuning) -> Isa {
    match t.isa.supported() {
        Isa::Avx2 if t.gemm_crate_1x1 && s.kernel_spatial() == 1 => Isa::Portable,
        isa => isa,
    }
}

/// `packed::$pass::<S>(args)` for the back end's instruction set `S`, or
/// `portable::$pass(args)`.
macro_rules! by_isa {
    ($s:expr, $t:expr, $pass:ident($($arg:expr),* $(,)?)) => {
        match back_end($s, $t) {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => packed::$pass::<super::simd::Avx512>($($arg),*),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => packed::$pass::<super::simd::Avx2>($($arg),*),
            _ => portable::$pass($($arg),*),
        }
    };
}

/// Matrix sizes of one group's products.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    /// Output channels per group.
    pub m: usize,
    /// Rows of the lowered matrix: input channels per group × kernel taps.
    pub k: usize,
    /// Output positions per image.
    pub p: usize,
    /// Kernel taps.
    pub ks: usize,
    /// Input channels per group.
    pub cin_g: usize,
    /// 1×1 kernel, stride 1, no padding, output size = input size.
    pub pointwise: bool,
}

impl Dims {
    pub fn of(s: &ConvShape) -> Dims {
        Dims {
            m: s.c_out_per_group(),
            k: s.c_in_per_group() * s.kernel_spatial(),
            p: s.output_spatial(),
            ks: s.kernel_spatial(),
            cin_g: s.c_in_per_group(),
            pointwise: s.is_pointwise(),
        }
    }
}

/// Fewest columns a chunk is cut to for load balance alone.
const MIN_BALANCE_COLS: usize = 64;

/// Narrows `cols` so the `groups × chunks` tasks number at least `want`.
pub(super) fn balanced_cols(cols: usize, total_cols: usize, groups: usize, want: usize) -> usize {
    let per_group = want.div_ceil(groups).max(1);
    cols.min(total_cols.div_ceil(per_group).max(MIN_BALANCE_COLS))
        .max(1)
}

/// Most threads for which [`even_ranges`] evens out the tasks: on more,
/// unevenly fast threads (a shared machine) gain from the dynamic balance
/// of a few extra tasks (24 tasks on 16 threads beat 16 by 10–25 %, while 4
/// beat 5 on 2 threads by 20 %).
const EVEN_MAX_THREADS: usize = 4;

/// `ranges` lowered down to a count whose `groups × ranges` equal tasks fill
/// the threads' rounds evenly (3 tasks on 2 threads keep one thread idle
/// for a third of the time), where there are few threads, few tasks per
/// thread and such a count of at least one task per thread exists.
pub(super) fn even_ranges(ranges: usize, groups: usize, threads: usize) -> usize {
    let tasks = groups * ranges;
    if threads <= 1
        || threads > EVEN_MAX_THREADS
        || tasks < threads
        || tasks >= 4 * threads
        || tasks.is_multiple_of(threads)
    {
        return ranges;
    }
    (1..ranges)
        .rev()
        .find(|&r| groups * r >= threads && (groups * r).is_multiple_of(threads))
        .unwrap_or(ranges)
}

pub(crate) fn forward(s: &ConvShape, x: &[f32], w: &[f32], y: &mut [f32], t: &Tuning) {
    by_isa!(s, t, forward(s, x, w, y, t))
}

/// Whether the implicit GEMM has a plan for `s` on `threads` at the tuning's
/// instruction set (with the rule of two tasks per thread where `task_rule`).
fn implicit_plans(s: &ConvShape, t: &Tuning, threads: usize, task_rule: bool) -> bool {
    match t.isa.supported() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            implicit::plan_with::<super::simd::Avx512>(s, t, threads, task_rule).is_some()
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => implicit::plan_with::<super::simd::Avx2>(s, t, threads, task_rule).is_some(),
        _ => false,
    }
}

/// `y = conv(x, w)` by the implicit GEMM on the current pool, channels-last
/// where `nhwc`, through `gate` where given; false (nothing read or written)
/// where it has no plan for `s` (with the rule of two tasks per thread where
/// `task_rule`).
#[allow(clippy::too_many_arguments)]
fn implicit_run(
    s: &ConvShape,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    t: &Tuning,
    (nhwc, task_rule): (bool, bool),
    gate: Option<&dyn Gate>,
) -> bool {
    /// The implicit GEMM at instruction set `S`, if it can run.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    fn at<S: super::packed_gemm::Packed>(
        s: &ConvShape,
        x: &[f32],
        w: &[f32],
        y: &mut [f32],
        t: &Tuning,
        (nhwc, task_rule): (bool, bool),
        gate: Option<&dyn Gate>,
    ) -> bool {
        implicit::plan_with::<S>(s, t, rayon::current_num_threads(), task_rule)
            .map(|p| implicit::forward::<S>(s, x, w, y, t, p, nhwc, gate))
            .is_some()
    }
    match t.isa.supported() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => at::<super::simd::Avx512>(s, x, w, y, t, (nhwc, task_rule), gate),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => at::<super::simd::Avx2>(s, x, w, y, t, (nhwc, task_rule), gate),
        _ => false,
    }
}

/// Whether the implicit GEMM computes `s` channels-last
/// ([`forward_channels_last`]) at the tuning's instruction set: a property
/// of the shape, whatever the batch a call is cut into and the pool's size
/// (a task of one output row still has to fit the pool's share of scratch
/// when it runs).
pub(crate) fn channels_last_forward_applies(s: &ConvShape, t: &Tuning) -> bool {
    implicit_plans(s, t, 1, false)
}

/// `y = conv(x, w)` with `x` and `y` channels-last, by the implicit GEMM,
/// which reads and writes that order directly; false (nothing written)
/// where it cannot run on the current pool.
pub(crate) fn forward_channels_last(
    s: &ConvShape,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    t: &Tuning,
) -> bool {
    implicit_run(s, x, w, y, t, (true, false), None)
}

/// Whether the forward pass of `s` (NCHW) on a pool of `threads` is the
/// implicit GEMM ([`packed::forward`]'s first choice).
pub(crate) fn implicit_forward_chosen(s: &ConvShape, t: &Tuning, threads: usize) -> bool {
    implicit_plans(s, t, threads, true)
}

/// `y = conv(x, w)` (NCHW) by the implicit GEMM with a [`Gate`] between it
/// and the copies of `x`'s and `y`'s images; false (nothing read or written)
/// where the implicit GEMM is not the engine's choice for `s` on the
/// current pool.
pub(crate) fn forward_gated(
    s: &ConvShape,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    t: &Tuning,
    gate: &dyn Gate,
) -> bool {
    implicit_run(s, x, w, y, t, (false, true), Some(gate))
}

/// The tuning left to [`data_as_forward`]'s forward pass beside the flipped
/// kernel it holds.
fn beside_flipped(s: &ConvShape, t: &Tuning) -> Tuning {
    Tuning {
        scratch_bytes: t.scratch_bytes - 4 * s.weight_len(),
        ..*t
    }
}

/// The forward convolution ([`data_as_forward`]) that computes the input
/// gradient of `s` (NCHW) on a pool of `threads`, where that is the implicit
/// GEMM over the flipped kernel ([`backward_data`]'s choice).
fn implicit_flipped(s: &ConvShape, t: &Tuning, threads: usize) -> Option<ConvShape> {
    data_as_forward(s, t).filter(|f| implicit_plans(f, &beside_flipped(s, t), threads, true))
}

/// Whether the input gradient of `s` (NCHW) on a pool of `threads` is the
/// implicit GEMM over the flipped kernel ([`backward_data`]'s choice).
pub(crate) fn implicit_backward_data_chosen(s: &ConvShape, t: &Tuning, threads: usize) -> bool {
    implicit_flipped(s, t, threads).is_some()
}

/// `dx = convᵀ(dy, w)` (NCHW) as the implicit GEMM over the flipped kernel
/// with a [`Gate`] between it and the copies of `dy`'s and `dx`'s images
/// (the kernel is flipped once the gate has the first image: the weights
/// come before it); false (nothing read or written) where that is not the
/// engine's choice for `s` on the current pool.
pub(crate) fn backward_data_gated(
    s: &ConvShape,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    t: &Tuning,
    gate: &dyn Gate,
) -> bool {
    let Some(f) = implicit_flipped(s, t, rayon::current_num_threads()) else {
        return false;
    };
    if !gate.input_ready(0) {
        return true;
    }
    with_flipped_kernel(s, w, t, |wf, rest| {
        implicit_run(&f, dy, wf, dx, rest, (false, true), Some(gate))
    })
}

/// Whether [`backward_data_channels_last`] computes `s`: its input gradient
/// is a forward convolution ([`flipped_forward`], whose flipped kernel fits
/// as [`as_forward`] says) that the implicit GEMM takes.
pub(crate) fn channels_last_backward_data_applies(s: &ConvShape, t: &Tuning) -> bool {
    s.weight_len() <= as_forward(s, t).kernel_floats
        && flipped_forward(s).is_some_and(|f| channels_last_forward_applies(&f, t))
}

/// `dx = convᵀ(dy, w)` with `dy` and `dx` channels-last, as the forward
/// convolution of `dy` with the flipped, transposed kernel on the implicit
/// GEMM; false (nothing written) where it cannot run
/// ([`channels_last_backward_data_applies`], or the pool's scratch share).
pub(crate) fn backward_data_channels_last(
    s: &ConvShape,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    t: &Tuning,
) -> bool {
    let Some(f) = flipped_forward(s).filter(|_| channels_last_backward_data_applies(s, t)) else {
        return false;
    };
    with_flipped_kernel(s, w, t, |wf, rest| {
        forward_channels_last(&f, dy, wf, dx, rest)
    })
}

/// Runs `f` on the flipped, transposed kernel of `s` ([`flip_transpose`],
/// in the per-call buffer) and a tuning whose scratch cap leaves room for it.
fn with_flipped_kernel<R>(
    s: &ConvShape,
    w: &[f32],
    t: &Tuning,
    f: impl FnOnce(&[f32], &Tuning) -> R,
) -> R {
    let wlen = s.weight_len();
    let rest = beside_flipped(s, t);
    t.scratch(super::scratch::Slot::Partials, wlen, |wf| {
        flip_transpose(s, w, wf);
        f(wf, &rest)
    })
}

pub(crate) fn backward_data(s: &ConvShape, dy: &[f32], w: &[f32], dx: &mut [f32], t: &Tuning) {
    if let Some(f) = data_as_forward(s, t) {
        // dx = dy correlated with the flipped kernel, channels swapped.
        return with_flipped_kernel(s, w, t, |wf, rest| forward(&f, dy, wf, dx, rest));
    }
    by_isa!(s, t, backward_data(s, dy, w, dx, t))
}

pub(crate) fn backward_weights(s: &ConvShape, x: &[f32], dy: &[f32], dw: &mut [f32], t: &Tuning) {
    by_isa!(s, t, backward_weights(s, x, dy, dw, t))
}

/// Whether the weight gradient of `s` (NCHW) on a pool of `threads` can run
/// gated ([`backward_weights_gated`]): where the packed back end's choice
/// sweeps the images in order (`packed::weights_gated_applies`).
pub(crate) fn backward_weights_gated_chosen(s: &ConvShape, t: &Tuning, threads: usize) -> bool {
    match back_end(s, t) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => packed::weights_gated_applies::<super::simd::Avx512>(s, t, threads),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => packed::weights_gated_applies::<super::simd::Avx2>(s, t, threads),
        _ => false,
    }
}

/// `dw` of `s` (NCHW) with a [`Gate`] between the engine and the copies of
/// `x`'s and `dy`'s images: each task asks for the images it reads as it
/// reaches them, the images in order; false (nothing read or written) where
/// the engine's choice for `s` on the current pool cannot run so
/// ([`backward_weights_gated_chosen`]). The gate hears of no output image:
/// `dw` is whole when the call returns.
pub(crate) fn backward_weights_gated(
    s: &ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    t: &Tuning,
    gate: &dyn Gate,
) -> bool {
    match back_end(s, t) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            packed::backward_weights_gated::<super::simd::Avx512>(s, x, dy, dw, t, Some(gate))
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            packed::backward_weights_gated::<super::simd::Avx2>(s, x, dy, dw, t, Some(gate))
        }
        _ => false,
    }
}

/// Where [`data_as_forward`] applies at an instruction set: the fewest input
/// channels per group and input positions per image, and the largest kernel
/// (floats) whose flipped copy it holds beside the forward pass's scratch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AsForward {
    channels: usize,
    positions: usize,
    kernel_floats: usize,
}

/// [`AsForward`] for `s` at `t`'s instruction set. The channels are the
/// output channels of the forward pass, whose panels are `NR` wide (16 at
/// AVX2, 48 at AVX-512); the forward pass spreads large images over many
/// threads better than the lowered input gradient does, which was ahead on
/// small images before the implicit forward's deeper steps.
///
/// At AVX2, since those steps ([`super::packed_gemm::Packed::IMPLICIT_STEP`]),
/// 16 channels (one panel), images of any size, and kernels up to a quarter
/// of the scratch cap (ResNet's 512-channel 3×3, 9 MiB). On Zen 3 at two threads
/// (`conv_bench`, alternated, best of three or four): ResNet's 128-channel
/// input gradient at 28×28 took 10–11 % less time at batch 8 and 32, the
/// 256-channel one at 14×14 7–9 %, MNIST's 32 → 64 one at 26×26 (batch 64)
/// 9.1–9.3 → 8.6 ms; the 512-channel one at 7×7 44.2 → 40.0 ms at batch 32
/// and even at batch 8 (11.9 against 11.8); 3×3 kernels over 7×7 images of
/// 64, 128 and 256 channels at batch 32 41, 30 and 14 % less, over 5×5,
/// 4×4 and 3×3 images 28–47 % less, at batch 4 12–31 % less but for 256
/// channels at 4×4 (+4 %); 16 input channels (CIFAR's ResNets: 16 at 32×32,
/// batch 128) 30 % less, 24 at 28×28 27 %, 16 → 64 at 32×32 11 %. Below 16
/// channels it was mixed: 12 → 48 at 28×28 +14 %, 8 → 32 at 64×64 +9 %,
/// 8 → 8 at 32×32 −16 %, 4 → 32 more than twice as slow. On the 16-core
/// Xeon capped at AVX2, at 16 threads (best of three alternations, the
/// machine's noise ±15 %): 7×7 images of 64, 128 and 256 channels 42, 32 and
/// 22 % less, 96 channels at 10×10 34 %, 3×3 images 41 %, CIFAR's 16
/// channels 21 %; 256 channels at 4×4 +4 %, ResNet's 512 at 7×7 +3.5 %.
///
/// At AVX-512, 64 channels (32 would fill two thirds of a panel), 784
/// positions (ResNet's 128 at 28×28, DeepLab's 33×33) and kernels up to an
/// eighth of the cap: on the 16-core Xeon at 16 threads those went from
/// 907–1002 to 1184–1215 and from 963–1060 to 1101–1210 GFLOP/s at batch 8
/// and 4; at batch 32 ResNet's was even and DeepLab's 1386–1624 against
/// 1557–1647, at 8 threads both even; smaller images were not measured
/// there then. The AVX2 rule, tried at AVX-512 on the Xeon (two runs, medians
/// of three alternations, noisy), was ahead at two threads on most small
/// shapes (0.49–0.86 of the time) but behind on 256 channels at 7×7 and 4×4
/// (1.12–1.38), and at 16 threads behind on 256 channels at 4×4 (1.39–1.52)
/// and CIFAR's 16 channels (1.09–1.16), ResNet's 512 at 7×7 between 0.89 and
/// 1.22: not adopted. Kernels of one tap, whose forward pass is not the implicit GEMM
/// these figures are of, and the portable back end keep 64 channels, 2048
/// positions and an eighth.
fn as_forward(s: &ConvShape, t: &Tuning) -> AsForward {
    let share = |part: usize| AsForward {
        channels: 64,
        positions: 2048,
        kernel_floats: t.scratch_bytes / 4 / part,
    };
    match t.isa.supported() {
        _ if s.kernel_spatial() == 1 => share(8),
        Isa::Avx2 => AsForward {
            channels: 16,
            positions: 1,
            ..share(4)
        },
        Isa::Avx512 => AsForward {
            positions: 784,
            ..share(8)
        },
        Isa::Portable => share(8),
    }
}

/// Rows `g·m .. g·m + m` of `dy` over the positions of `ch`, as an `m × cols`
/// matrix: read in place when the chunk lies in one image, else gathered into
/// `tmp` (`m · cols` long).
pub(super) fn dy_rows(
    s: &ConvShape,
    d: &Dims,
    dy: &[f32],
    g: usize,
    ch: Chunk,
    tmp: &mut [f32],
) -> Mat {
    if ch.nimg == 1 {
        let at = (ch.n0 * s.c_out + g * d.m) * d.p + ch.p0;
        Mat {
            ptr: dy[at..].as_ptr(),
            rs: d.p,
            cs: 1,
        }
    } else {
        gather_rows(dy, s.c_out, g * d.m, d.m, ch, tmp);
        Mat {
            ptr: tmp.as_ptr(),
            rs: ch.cols(),
            cs: 1,
        }
    }
}

/// The forward convolution whose output is the input gradient of `s`, where
/// the tuning allows it ([`as_forward`]: enough input channels per group and
/// input positions, a kernel whose flipped copy fits): stride 1, padding
/// within the kernel's reach, and the gradient exactly the size that forward
/// produces. Its input is `dy`, its weights the flipped, transposed kernel
/// ([`flip_transpose`]).
pub(super) fn data_as_forward(s: &ConvShape, t: &Tuning) -> Option<ConvShape> {
    let at = as_forward(s, t);
    if !t.data_as_forward
        || s.c_in_per_group() < at.channels
        || s.input_spatial() < at.positions
        || s.weight_len() > at.kernel_floats
    {
        return None;
    }
    flipped_forward(s)
}

/// The forward convolution of `dy` with the flipped, transposed kernel
/// whose output is the input gradient of `s`, if there is one: stride 1,
/// padding within the kernel's reach, and the gradient exactly the size
/// that forward produces.
fn flipped_forward(s: &ConvShape) -> Option<ConvShape> {
    if s.stride != [1; 3] {
        return None;
    }
    let mut pad = [0; 3];
    for a in 0..3 {
        pad[a] = ((s.kernel[a] - 1) * s.dilation[a]).checked_sub(s.pad[a])?;
    }
    let f = ConvShape {
        n: s.n,
        c_in: s.c_out,
        c_out: s.c_in,
        groups: s.groups,
        input: s.output,
        kernel: s.kernel,
        output: s.input,
        pad,
        stride: [1; 3],
        dilation: s.dilation,
    };
    let reach = ConvShape::forward_output(f.input, f.kernel, f.pad, f.stride, f.dilation);
    (reach == Some(s.input)).then_some(f)
}

/// `out[g][ci][co][t] = w[g][co][ci][taps − 1 − t]`: the kernel of
/// [`data_as_forward`] (`[c_in][c_out / groups][taps]`).
pub(super) fn flip_transpose(s: &ConvShape, w: &[f32], out: &mut [f32]) {
    let (cog, cig, ks) = (s.c_out_per_group(), s.c_in_per_group(), s.kernel_spatial());
    assert!(w.len() >= s.weight_len() && out.len() >= s.weight_len());
    // One task per output row `(g, ci)`, gathering its `cog` kernels.
    out[..s.weight_len()]
        .par_chunks_mut(cog * ks)
        .enumerate()
        .for_each(|(row, dst)| {
            let (g, ci) = (row / cig, row % cig);
            for (co, dst) in dst.chunks_exact_mut(ks).enumerate() {
                let src = &w[((g * cog + co) * cig + ci) * ks..][..ks];
                for (d, v) in dst.iter_mut().zip(src.iter().rev()) {
                    *d = *v;
                }
            }
        });
}

/// Workers for a weight gradient summed into private partials: every thread
/// when `threads - 1` extra copies of dW fit in half the budget, else one.
pub(super) fn partial_workers(t: &Tuning, wlen: usize, threads: usize) -> usize {
    let affordable = 1 + (t.scratch_bytes / 4 / 2) / wlen.max(1);
    if affordable >= threads {
        threads
    } else {
        1
    }
}

/// How a weight gradient summed into partials over bands of output rows
/// (`implicit_weights`, `blocked_weights`) is cut: rows per task, the
/// workers, each one's share of the scratch floats, and the partial sums
/// ([`sum_over_units`]) of a gated call.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(super) struct PartialBands {
    pub band: usize,
    pub workers: usize,
    pub budget: usize,
    pub gated_units: usize,
}

impl PartialBands {
    /// The partial sums of a call: one a worker, or with a gate more where
    /// they fit ([`UNITS_PER_WORKER`]).
    pub fn units(&self, gated: bool) -> usize {
        if gated {
            self.gated_units
        } else {
            self.workers
        }
    }
}

/// Units of [`sum_over_units`] a worker in a gated call, where their
/// partials fit: the threads take the units in order as they come free and
/// as the images arrive, so a thread slowed down (by the copies sharing its
/// core) holds up a quarter of its share at the end rather than all of it.
/// Ungated calls keep one a worker: more cost MNIST's weight gradients 5–7 %
/// at two threads (AVX2, Zen 3).
#[cfg(target_arch = "x86_64")]
const UNITS_PER_WORKER: usize = 4;

/// Preferred output positions of one task of [`partial_bands`] (the depth
/// of its product).
#[cfg(target_arch = "x86_64")]
const BAND_POSITIONS: usize = 1024;

/// [`PartialBands`] for `s` on `threads` workers: a partial for every
/// thread (else `None`), bands of about [`BAND_POSITIONS`] positions and at
/// least four tasks a worker, halved until a task's `task_floats(band,
/// budget)` fits the worker's share (`None` where one row does not).
#[cfg(target_arch = "x86_64")]
pub(super) fn partial_bands(
    s: &ConvShape,
    t: &Tuning,
    threads: usize,
    task_floats: impl Fn(usize, usize) -> usize,
) -> Option<PartialBands> {
    let (oh, ow) = (s.output[1], s.output[2]);
    let workers = partial_workers(t, s.weight_len(), threads);
    if workers < threads {
        return None;
    }
    let total = t.scratch_bytes / 4;
    // Partials within half the budget (at least one a worker: `partial_workers`).
    let affordable = 1 + (total / 2) / s.weight_len().max(1);
    let units = (UNITS_PER_WORKER * workers).min(affordable).max(workers);
    let budget = total.checked_sub((units - 1) * s.weight_len())? / workers;
    let want = if workers > 1 { 4 * workers } else { 1 };
    let per_image = want.div_ceil(s.n).min(oh);
    let mut band = (BAND_POSITIONS / ow)
        .clamp(1, oh)
        .min(oh.div_ceil(per_image));
    while task_floats(band, budget) > budget {
        if band == 1 {
            return None;
        }
        band = band.div_ceil(2);
    }
    Some(PartialBands {
        band,
        workers,
        budget,
        gated_units: units,
    })
}

/// A task of the partial sums over bands: an image and a band of its output rows.
#[cfg(target_arch = "x86_64")]
pub(super) type Band = (usize, std::ops::Range<usize>);

/// The tasks `(image, output rows)` of `n` images of `rows` rows in bands
/// of `band` rows (the last of an image shorter), image after image.
#[cfg(target_arch = "x86_64")]
pub(super) fn image_bands(n: usize, rows: usize, band: usize) -> Vec<Band> {
    let bands = rows.div_ceil(band);
    (0..n)
        .flat_map(|i| (0..bands).map(move |b| (i, b * band..((b + 1) * band).min(rows))))
        .collect()
}

/// At most `units` runs of `tasks` (of [`image_bands`], image after image),
/// as ranges of their indices: contiguous, in order, of nearly equal rows.
#[cfg(target_arch = "x86_64")]
pub(super) fn unit_runs(tasks: &[Band], units: usize) -> Vec<std::ops::Range<usize>> {
    let total: usize = tasks.iter().map(|(_, r)| r.len()).sum();
    let units = units.clamp(1, tasks.len().max(1));
    let mut runs: Vec<std::ops::Range<usize>> = Vec::with_capacity(units);
    let mut before = 0;
    for (i, (_, r)) in tasks.iter().enumerate() {
        // The unit of a task: where the middle of its rows falls.
        let u = ((2 * before + r.len()) * units / (2 * total.max(1))).min(units - 1);
        before += r.len();
        if runs.len() > u {
            if let Some(last) = runs.last_mut() {
                last.end = i + 1;
            }
        } else {
            runs.push(i..i + 1);
        }
    }
    runs
}

/// `dw` as the sum of one partial a unit of `tasks` ([`unit_runs`]), unit 0's
/// in `dw` itself: the pool's threads take the units in order as they come
/// free, each running `work(acc, its tasks)` into its unit's zeroed partial,
/// and the partials are added up in unit order, so the result does not depend
/// on which thread ran which unit. With a `gate`, each task's image is asked
/// for first; after a refusal (a failed copy) every task not yet begun is
/// skipped.
#[cfg(target_arch = "x86_64")]
pub(super) fn sum_over_units(
    t: &Tuning,
    dw: &mut [f32],
    (tasks, units): (&[Band], &[std::ops::Range<usize>]),
    gate: Option<&dyn Gate>,
    work: impl Fn(&mut [f32], &mut dyn Iterator<Item = Band>) + Sync,
) {
    use super::par::SendPtr;
    use super::scratch::Slot;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let wlen = dw.len();
    let count = units.len().max(1);
    let threads = rayon::current_num_threads().min(count);
    t.scratch(Slot::Partials, (count - 1) * wlen, |parts| {
        let dwp = SendPtr(dw.as_mut_ptr());
        let pp = SendPtr(parts.as_mut_ptr());
        let (next, failed) = (AtomicUsize::new(0), AtomicBool::new(false));
        (0..threads)
            .into_par_iter()
            .with_max_len(1)
            .for_each(|_| loop {
                let u = next.fetch_add(1, Ordering::Relaxed);
                if u >= count {
                    break;
                }
                // SAFETY: unit `u` alone uses partial `u`.
                let acc = unsafe { partial(&dwp, &pp, u, wlen) };
                let mine = units.get(u).cloned().unwrap_or(0..0);
                let mut run = tasks[mine].iter().cloned().take_while(|(n, _)| {
                    let ok =
                        !failed.load(Ordering::Relaxed) && gate.is_none_or(|g| g.input_ready(*n));
                    if !ok {
                        failed.store(true, Ordering::Relaxed);
                    }
                    ok
                });
                work(acc, &mut run);
            });
        add_partials(dw, parts, count);
    });
}

/// Runs `work(worker, acc)` for `workers` workers, each summing into its own
/// zeroed copy of the weight gradient (worker 0 into `dw` itself), then adds
/// the copies into `dw`.
pub(super) fn sum_over_workers(
    t: &Tuning,
    dw: &mut [f32],
    workers: usize,
    work: impl Fn(usize, &mut [f32]) + Sync,
) {
    use super::par::SendPtr;
    use super::scratch::Slot;
    use rayon::prelude::*;

    let wlen = dw.len();
    t.scratch(Slot::Partials, (workers - 1) * wlen, |parts| {
        let dwp = SendPtr(dw.as_mut_ptr());
        let pp = SendPtr(parts.as_mut_ptr());
        (0..workers).into_par_iter().for_each(|wi| {
            // SAFETY: worker `wi` alone uses partial `wi`.
            let acc = unsafe { partial(&dwp, &pp, wi, wlen) };
            work(wi, acc);
        });
        add_partials(dw, parts, workers);
    });
}

/// Partial `i` of `wlen` floats of a sum over partials, zeroed: `dw` itself
/// for 0, else the `i`-th of the others in `parts`.
///
/// # Safety
/// Both point at buffers that hold the partials, and no other task uses
/// partial `i` meanwhile.
unsafe fn partial<'a>(
    dw: &super::par::SendPtr,
    parts: &super::par::SendPtr,
    i: usize,
    wlen: usize,
) -> &'a mut [f32] {
    let at = if i == 0 {
        dw.0
    } else {
        parts.0.add((i - 1) * wlen)
    };
    let acc = std::slice::from_raw_parts_mut(at, wlen);
    acc.fill(0.0);
    acc
}

/// `dw += Σ parts[i]` for the `count - 1` partials of `dw`'s length in
/// `parts`, each float summed over them in order, split over the pool.
fn add_partials(dw: &mut [f32], parts: &[f32], count: usize) {
    let wlen = dw.len();
    let block = reduce_block(wlen, rayon::current_num_threads());
    dw.par_chunks_mut(block).enumerate().for_each(|(bi, out)| {
        let len = out.len();
        for wi in 1..count {
            let at = (wi - 1) * wlen + bi * block;
            for (o, v) in out.iter_mut().zip(&parts[at..at + len]) {
                *o += *v;
            }
        }
    });
}

/// Floats of `dw` one task of [`sum_over_workers`]'s reduction adds up: a
/// share of the gradient for every thread, between 1 Ki and 16 Ki floats. (A
/// fixed 16 Ki left ResNet's 64-channel 3×3 gradient, 36 Ki floats, to three
/// of 16 threads, each adding 15 partials: a cost paid again by every chunk
/// of a pipelined call.) Each float is still summed over the workers in
/// order, so the result does not depend on the block.
fn reduce_block(wlen: usize, threads: usize) -> usize {
    wlen.div_ceil(threads.max(1))
        .next_multiple_of(64)
        .clamp(1 << 10, 1 << 14)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::tests::{check_against_reference, shape, Variant};

    /// Units are contiguous runs of the tasks in order, covering each once, with
    /// nearly equal rows; never more units than tasks.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn units_are_runs_of_the_tasks_with_nearly_equal_rows() {
        for (n, rows, band, units) in [
            (8, 56, 18, 8),
            (32, 56, 18, 64),
            (3, 7, 7, 12),
            (5, 30, 4, 7),
        ] {
            let tasks = image_bands(n, rows, band);
            let runs = unit_runs(&tasks, units);
            assert!(runs.len() <= units.min(tasks.len()), "{runs:?}");
            assert_eq!(runs[0].start, 0);
            assert_eq!(runs.last().unwrap().end, tasks.len());
            assert!(runs
                .windows(2)
                .all(|w| w[0].end == w[1].start && !w[1].is_empty()));
            let sizes: Vec<usize> = runs
                .iter()
                .map(|r| tasks[r.clone()].iter().map(|(_, b)| b.len()).sum())
                .collect();
            let (lo, hi) = (*sizes.iter().min().unwrap(), *sizes.iter().max().unwrap());
            // within one band (the largest task) of each other
            assert!(hi - lo <= band, "{n} {rows} {band} {units}: {sizes:?}");
        }
        // ResNet's 64-channel layer at 16 threads: 128 tasks, 64 units of two.
        let tasks = image_bands(32, 56, 18);
        assert_eq!(unit_runs(&tasks, 64).len(), 64);
    }

    #[test]
    fn weight_gradient_sums_are_shared_by_the_threads() {
        // ResNet's 64-channel 3×3 gradient: one block a thread at 16 threads.
        assert_eq!(36864usize.div_ceil(reduce_block(36864, 16)), 16);
        assert_eq!(reduce_block(36864, 2), 1 << 14);
        // Small gradients keep blocks of 1 Ki floats, large ones of 16 Ki.
        assert_eq!(reduce_block(1000, 16), 1 << 10);
        assert_eq!(reduce_block(1 << 24, 16), 1 << 14);
    }

    /// Stride-1 shapes with 64 input channels per group and at least 2048
    /// positions: 2-D with padding 1, 1-D dilated without padding, 3-D with
    /// two groups.
    fn eligible() -> [ConvShape; 3] {
        [
            shape(
                1,
                64,
                8,
                1,
                [1, 48, 45],
                [1, 3, 3],
                [0, 1, 1],
                [1; 3],
                [1; 3],
            ),
            shape(
                2,
                64,
                5,
                1,
                [1, 1, 2100],
                [1, 1, 3],
                [0; 3],
                [1; 3],
                [1, 1, 2],
            ),
            shape(
                1,
                128,
                6,
                2,
                [8, 16, 16],
                [2, 3, 2],
                [1, 1, 0],
                [1; 3],
                [1; 3],
            ),
        ]
    }

    #[test]
    fn input_gradient_as_forward_matches_reference() {
        for s in eligible() {
            let f = data_as_forward(&s, &Tuning::default()).expect("eligible");
            assert_eq!(
                (f.c_in, f.c_out, f.input, f.output),
                (s.c_out, s.c_in, s.output, s.input)
            );
            for threads in [1, 3] {
                let v = Variant {
                    name: "input gradient as forward",
                    tuning: Tuning::default(),
                    threads,
                };
                check_against_reference(&s, &v, 11).unwrap();
            }
        }
    }

    #[test]
    fn one_by_one_kernels_take_the_gemm_crate_at_avx2_only() {
        let [s3, ..] = eligible();
        let s1 = shape(2, 8, 8, 1, [1, 9, 9], [1; 3], [0; 3], [1; 3], [1; 3]);
        let at = |isa, gemm_crate_1x1| Tuning {
            isa,
            gemm_crate_1x1,
            ..Tuning::default()
        };
        let avx2 = Isa::Avx2.supported();
        assert_eq!(back_end(&s3, &at(Isa::Avx2, true)), avx2);
        assert_eq!(back_end(&s1, &at(Isa::Avx2, true)), Isa::Portable);
        assert_eq!(back_end(&s1, &at(Isa::Avx2, false)), avx2);
        // AVX-512 keeps its packed GEMM; a CPU without it falls to AVX2's rule.
        let want = if Isa::Avx512.supported() == Isa::Avx512 {
            Isa::Avx512
        } else {
            Isa::Portable
        };
        assert_eq!(back_end(&s1, &at(Isa::Avx512, true)), want);
    }

    #[test]
    fn weight_gradient_ranges_fill_the_threads_evenly() {
        // 3 ranges on 2 threads -> 2; 5 -> 4; 7 on 4 -> 4.
        assert_eq!(even_ranges(3, 1, 2), 2);
        assert_eq!(even_ranges(5, 1, 2), 4);
        assert_eq!(even_ranges(7, 1, 4), 4);
        // Many threads keep their extra tasks.
        assert_eq!(even_ranges(24, 1, 16), 24);
        // Already even, many tasks per thread, fewer tasks than threads,
        // one thread: unchanged.
        assert_eq!(even_ranges(4, 1, 2), 4);
        assert_eq!(even_ranges(9, 1, 2), 9);
        assert_eq!(even_ranges(6, 1, 16), 6);
        assert_eq!(even_ranges(7, 1, 1), 7);
        // Groups count as tasks: 3 groups × 1 range on 2 threads cannot be
        // evened out by fewer ranges.
        assert_eq!(even_ranges(1, 3, 2), 1);
        assert_eq!(even_ranges(3, 2, 4), 2);
    }

    #[test]
    fn input_gradient_as_forward_only_where_it_applies() {
        let t = Tuning::default();
        let [s, ..] = eligible();
        let stride2 = ConvShape {
            stride: [1, 2, 2],
            output: [1, 24, 23],
            ..s
        };
        // Padding beyond the kernel's reach (3x3, pad 3).
        let wide_pad = ConvShape {
            pad: [0, 3, 3],
            output: [1, 52, 49],
            ..s
        };
        let few_channels = ConvShape {
            c_in: 8,
            c_out: 64,
            ..s
        };
        let small_image = ConvShape {
            input: [1, 12, 12],
            output: [1, 12, 12],
            ..s
        };
        for (what, shape) in [
            ("stride 2", stride2),
            ("padding", wide_pad),
            ("channels", few_channels),
        ] {
            shape.validate().unwrap();
            assert!(data_as_forward(&shape, &t).is_none(), "{what}");
        }
        small_image.validate().unwrap();
        let off = Tuning {
            data_as_forward: false,
            ..t
        };
        assert!(data_as_forward(&s, &off).is_none());
        // ResNet's 28×28 images: as a forward pass at AVX2 and AVX-512, not
        // on the portable back end.
        let resnet = ConvShape {
            input: [1, 28, 28],
            output: [1, 28, 28],
            ..s
        };
        if t.isa.supported() >= Isa::Avx2 {
            assert!(data_as_forward(&resnet, &t).is_some());
        }
        let portable = Tuning {
            isa: Isa::Portable,
            ..t
        };
        assert!(data_as_forward(&resnet, &portable).is_none());
        assert!(data_as_forward(&small_image, &portable).is_none());
        assert!(data_as_forward(&s, &portable).is_some());
        // 16 input channels (one panel at AVX2): as a forward pass at AVX2 only.
        let c16 = ConvShape { c_in: 16, ..s };
        let avx2 = Tuning {
            isa: Isa::Avx2,
            ..t
        };
        if Isa::Avx2.supported() == Isa::Avx2 {
            assert!(data_as_forward(&c16, &avx2).is_some());
        }
        // Images of any size at AVX2, with kernels up to a quarter of the
        // scratch cap (ResNet's 512 channels at 7×7), not beyond; on the
        // portable back end an eighth.
        let deep = ConvShape {
            c_in: 512,
            c_out: 512,
            input: [1, 7, 7],
            output: [1, 7, 7],
            ..s
        };
        let deeper = ConvShape {
            c_in: 1024,
            c_out: 1024,
            ..deep
        };
        deep.validate().unwrap();
        if Isa::Avx2.supported() == Isa::Avx2 {
            assert!(data_as_forward(&small_image, &avx2).is_some());
            assert!(data_as_forward(&deep, &avx2).is_some());
            assert!(data_as_forward(&deeper, &avx2).is_none());
        }
        let big_images = ConvShape {
            input: [1, 48, 48],
            output: [1, 48, 48],
            ..deep
        };
        assert!(data_as_forward(&big_images, &portable).is_none());
        assert!(data_as_forward(
            &ConvShape {
                c_in: 256,
                ..big_images
            },
            &portable
        )
        .is_some());
        assert!(data_as_forward(&c16, &portable).is_none());
        // A 1×1 kernel over 28×28 images keeps the lowered input gradient.
        let pointwise = ConvShape {
            kernel: [1, 1, 1],
            pad: [0; 3],
            ..resnet
        };
        pointwise.validate().unwrap();
        assert!(data_as_forward(&pointwise, &t).is_none());
    }
}
