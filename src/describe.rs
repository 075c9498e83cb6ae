//! Reading MIOpen descriptors (through the real MIOpen getters) into plain problem
//! structs, and checking that the tensors and the convolution (or batch norm) fit
//! together. The only module that reads descriptors.

use std::os::raw::c_int;

use crate::cpu::ConvShape;
use crate::error::{ShimError, ShimResult};
use crate::ffi::miopen::*;
use crate::layout::{DType, Layout5};
use crate::real::miopen::Getters;

/// A tensor descriptor's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorDesc {
    pub dtype: DType,
    pub dims: Vec<usize>,
    pub strides: Vec<usize>,
}

impl TensorDesc {
    /// A packed (row-major) tensor of `dims`.
    pub fn packed(dtype: DType, dims: &[usize]) -> Self {
        let mut strides = vec![1; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * dims[i + 1];
        }
        TensorDesc {
            dtype,
            dims: dims.to_vec(),
            strides,
        }
    }

    /// The canonical 5-D view `[n, c, d, h, w]`: missing leading spatial dims become 1.
    /// Needs 3 to 5 dims (callers check).
    pub fn layout5(&self) -> Layout5 {
        let sd = self.dims.len() - 2;
        let mut dims = [1; 5];
        let mut strides = [0; 5];
        dims[..2].copy_from_slice(&self.dims[..2]);
        strides[..2].copy_from_slice(&self.strides[..2]);
        dims[5 - sd..].copy_from_slice(&self.dims[2..]);
        strides[5 - sd..].copy_from_slice(&self.strides[2..]);
        Layout5 { dims, strides }
    }
}

/// A convolution descriptor's contents (as many entries as spatial dims).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvDesc {
    pub mode: miopenConvolutionMode_t,
    pub pads: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub groups: usize,
}

/// The API-level direction of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    BackwardData,
    BackwardWeights,
}

/// The engine pass that computes a call (transposed mode swaps forward and backward-data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward,
    BackwardData,
    BackwardWeights,
}

/// One convolution call, stated as a regular (non-transposed) convolution:
/// `x` is its input, `y` its output, `w` the weights. Which of them the call reads and
/// which it writes follows from `pass`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvProblem {
    pub direction: Direction,
    pub transposed: bool,
    pub pass: Pass,
    pub dtype: DType,
    pub shape: ConvShape,
    pub x: Layout5,
    pub w: Layout5,
    pub y: Layout5,
    /// Spatial dims as the caller described them (1, 2 or 3), for logs.
    pub spatial_dims: usize,
}

const MAX_DIMS: usize = 8;

fn check(status: miopenStatus_t, what: &str) -> ShimResult<()> {
    if status == miopenStatusSuccess {
        Ok(())
    } else {
        Err(ShimError::new(
            status,
            format!("{what} failed: MIOpen returned {}", status_name(status)),
        ))
    }
}

#[allow(non_upper_case_globals)]
fn dtype_of(t: miopenDataType_t) -> ShimResult<DType> {
    match t {
        miopenFloat => Ok(DType::F32),
        miopenHalf => Ok(DType::F16),
        miopenBFloat16 => Ok(DType::BF16),
        miopenDouble => Err(ShimError::not_implemented(
            "data type double is not supported by the CPU engine",
        )),
        miopenInt8 | miopenInt32 | miopenInt64 => Err(ShimError::not_implemented(format!(
            "integer data type {t} is not supported by the CPU engine"
        ))),
        miopenFloat8 | miopenBFloat8 => Err(ShimError::not_implemented(format!(
            "8-bit float data type {t} is not supported by the CPU engine"
        ))),
        other => Err(ShimError::bad_parm(format!(
            "unknown miopenDataType_t {other}"
        ))),
    }
}

/// Reads a tensor descriptor.
pub fn read_tensor(
    g: &Getters,
    desc: miopenTensorDescriptor_t,
    name: &str,
) -> ShimResult<TensorDesc> {
    if desc.is_null() {
        return Err(ShimError::bad_parm(format!(
            "tensor descriptor {name} is null"
        )));
    }
    let mut n: c_int = 0;
    // SAFETY: desc is non-null and comes from the caller as a MIOpen descriptor.
    check(
        unsafe { (g.miopenGetTensorDescriptorSize)(desc, &mut n) },
        "miopenGetTensorDescriptorSize",
    )?;
    if n < 1 || n as usize > MAX_DIMS {
        return Err(ShimError::bad_parm(format!(
            "tensor {name} has {n} dimensions"
        )));
    }
    let mut dt: miopenDataType_t = 0;
    let mut dims = [0 as c_int; MAX_DIMS];
    let mut strides = [0 as c_int; MAX_DIMS];
    // SAFETY: arrays hold MAX_DIMS >= n entries.
    check(
        unsafe {
            (g.miopenGetTensorDescriptor)(desc, &mut dt, dims.as_mut_ptr(), strides.as_mut_ptr())
        },
        "miopenGetTensorDescriptor",
    )?;
    let n = n as usize;
    if let Some(d) = dims[..n].iter().find(|&&d| d <= 0) {
        return Err(ShimError::bad_parm(format!(
            "tensor {name} has a dimension of size {d}: {:?}",
            &dims[..n]
        )));
    }
    if let Some(s) = strides[..n].iter().find(|&&s| s < 0) {
        return Err(ShimError::bad_parm(format!(
            "tensor {name} has a negative stride {s}: {:?}",
            &strides[..n]
        )));
    }
    let t = TensorDesc {
        dtype: dtype_of(dt)
            .map_err(|e| ShimError::new(e.status, format!("tensor {name}: {}", e.message)))?,
        dims: dims[..n].iter().map(|&d| d as usize).collect(),
        strides: strides[..n].iter().map(|&s| s as usize).collect(),
    };
    check_size(name, &t)?;
    Ok(t)
}

/// Reads a convolution descriptor.
pub fn read_conv(g: &Getters, desc: miopenConvolutionDescriptor_t) -> ShimResult<ConvDesc> {
    if desc.is_null() {
        return Err(ShimError::bad_parm("convolution descriptor is null"));
    }
    let mut sd: c_int = 0;
    // SAFETY: desc is non-null.
    check(
        unsafe { (g.miopenGetConvolutionSpatialDim)(desc, &mut sd) },
        "miopenGetConvolutionSpatialDim",
    )?;
    if !(1..=3).contains(&sd) {
        return Err(ShimError::not_implemented(format!(
            "{sd} spatial dimensions (1 to 3 are supported)"
        )));
    }
    let (mut got, mut mode) = (0 as c_int, 0 as miopenConvolutionMode_t);
    let mut pads = [0 as c_int; 3];
    let mut strides = [0 as c_int; 3];
    let mut dil = [0 as c_int; 3];
    // SAFETY: arrays hold 3 >= sd entries.
    check(
        unsafe {
            (g.miopenGetConvolutionNdDescriptor)(
                desc,
                sd,
                &mut got,
                pads.as_mut_ptr(),
                strides.as_mut_ptr(),
                dil.as_mut_ptr(),
                &mut mode,
            )
        },
        "miopenGetConvolutionNdDescriptor",
    )?;
    let mut groups: c_int = 1;
    // SAFETY: desc is non-null.
    check(
        unsafe { (g.miopenGetConvolutionGroupCount)(desc, &mut groups) },
        "miopenGetConvolutionGroupCount",
    )?;
    let sd = sd as usize;
    if pads[..sd].iter().any(|&p| p < 0)
        || strides[..sd].iter().any(|&s| s < 1)
        || dil[..sd].iter().any(|&d| d < 1)
    {
        return Err(ShimError::bad_parm(format!(
            "invalid convolution parameters pads {:?} strides {:?} dilations {:?}",
            &pads[..sd],
            &strides[..sd],
            &dil[..sd]
        )));
    }
    if groups < 1 {
        return Err(ShimError::bad_parm(format!("group count {groups}")));
    }
    if !(miopenConvolution..=miopenDepthwise).contains(&mode) {
        return Err(ShimError::not_implemented(format!(
            "convolution mode {mode}"
        )));
    }
    let u = |a: &[c_int]| a[..sd].iter().map(|&v| v as usize).collect::<Vec<_>>();
    Ok(ConvDesc {
        mode,
        pads: u(&pads),
        strides: u(&strides),
        dilations: u(&dil),
        groups: groups as usize,
    })
}

/// The descriptor's deterministic attribute (`MIOPEN_CONVOLUTION_ATTRIB_DETERMINISTIC`);
/// false when MIOpen has no attribute getter or cannot say. It is part of a
/// configuration's identity (MIOpen picks other kernels for deterministic descriptors).
pub fn read_deterministic(g: &Getters, desc: miopenConvolutionDescriptor_t) -> bool {
    let Some(get) = g.miopenGetConvolutionAttribute else {
        return false;
    };
    if desc.is_null() {
        return false;
    }
    let mut v: c_int = 0;
    // SAFETY: desc is non-null; out-pointer to a local.
    let s = unsafe { get(desc, MIOPEN_CONVOLUTION_ATTRIB_DETERMINISTIC, &mut v) };
    s == miopenStatusSuccess && v == 1
}

/// Largest tensor span the shim accepts, in bytes (far beyond any GPU's memory).
pub const MAX_TENSOR_BYTES: usize = 1 << 47;

/// Rejects tensors whose element count or byte span overflows or is absurd, before any
/// arithmetic on them can wrap: zero-sized dimensions, dims and strides of different
/// lengths, a span beyond `MAX_TENSOR_BYTES`, or more elements than an f32 working copy
/// of `MAX_TENSOR_BYTES` holds (inputs may repeat elements through zero strides).
pub fn check_size(name: &str, t: &TensorDesc) -> ShimResult<()> {
    if t.dims.len() != t.strides.len() || t.dims.contains(&0) {
        return Err(ShimError::bad_parm(format!(
            "tensor {name} has dims {:?} and strides {:?}",
            t.dims, t.strides
        )));
    }
    let numel = t
        .dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|n| n.checked_mul(4).is_some_and(|b| b <= MAX_TENSOR_BYTES));
    let span = t
        .dims
        .iter()
        .zip(&t.strides)
        .try_fold(1usize, |a, (&d, &s)| {
            (d - 1).checked_mul(s).and_then(|v| a.checked_add(v))
        });
    let bytes = span.and_then(|s| s.checked_mul(t.dtype.size()));
    match (numel, bytes) {
        (Some(_), Some(b)) if b <= MAX_TENSOR_BYTES => Ok(()),
        _ => Err(ShimError::bad_parm(format!(
            "tensor {name} with dims {:?} and strides {:?} spans an impossible number of bytes",
            t.dims, t.strides
        ))),
    }
}

/// Places `sd` spatial entries at the end of a 3-array whose other entries are `fill`.
fn spatial3(v: &[usize], fill: usize) -> [usize; 3] {
    let mut out = [fill; 3];
    out[3 - v.len()..].copy_from_slice(v);
    out
}

/// Builds the problem of a convolution call. `x`, `w`, `y` are the call's own tensors:
/// forward (x, w, y); backward-data (dx, w, dy); backward-weights (x, dw, dy).
pub fn conv_problem(
    direction: Direction,
    conv: &ConvDesc,
    x: &TensorDesc,
    w: &TensorDesc,
    y: &TensorDesc,
) -> ShimResult<ConvProblem> {
    let sd = conv.pads.len();
    if !(1..=3).contains(&sd) || conv.strides.len() != sd || conv.dilations.len() != sd {
        return Err(ShimError::bad_parm(format!(
            "convolution descriptor with pads {:?} strides {:?} dilations {:?}",
            conv.pads, conv.strides, conv.dilations
        )));
    }
    for (name, t) in [("x", x), ("w", w), ("y", y)] {
        check_size(name, t)?;
        if t.dims.len() != sd + 2 {
            return Err(ShimError::bad_parm(format!(
                "tensor {name} has {} dims but the convolution has {sd} spatial dims (expected {})",
                t.dims.len(),
                sd + 2
            )));
        }
    }
    if x.dtype != w.dtype || x.dtype != y.dtype {
        return Err(ShimError::bad_parm(format!(
            "data types differ: x {} w {} y {}",
            x.dtype.name(),
            w.dtype.name(),
            y.dtype.name()
        )));
    }
    let transposed = conv.mode == miopenTranspose;
    // Stated as the regular convolution: in transposed mode the call's y is its input.
    let (xr, yr) = if transposed { (y, x) } else { (x, y) };
    let pass = match (direction, transposed) {
        (Direction::Forward, false) | (Direction::BackwardData, true) => Pass::Forward,
        (Direction::BackwardData, false) | (Direction::Forward, true) => Pass::BackwardData,
        (Direction::BackwardWeights, _) => Pass::BackwardWeights,
    };
    let (n, c_in, c_out) = (xr.dims[0], xr.dims[1], yr.dims[1]);
    let groups = if conv.mode == miopenGroupConv || conv.mode == miopenDepthwise {
        // Legacy modes: the group count follows from the channel ratio.
        if w.dims[1] == 0 || c_in % w.dims[1] != 0 {
            return Err(ShimError::bad_parm(format!(
                "{c_in} input channels not divisible by weight's {}",
                w.dims[1]
            )));
        }
        c_in / w.dims[1]
    } else {
        conv.groups
    };
    if yr.dims[0] != n {
        return Err(ShimError::bad_parm(format!(
            "batch sizes differ: {n} and {}",
            yr.dims[0]
        )));
    }
    if w.dims[0] != c_out || w.dims[1] * groups != c_in {
        return Err(ShimError::bad_parm(format!(
            "weight {:?} does not fit {c_in} input and {c_out} output channels with {groups} groups{}",
            w.dims,
            if transposed { " (transposed: weight is [in, out/groups, ...])" } else { "" }
        )));
    }
    if c_in % groups != 0 || c_out % groups != 0 {
        return Err(ShimError::bad_parm(format!(
            "channels {c_in}/{c_out} not divisible by {groups} groups"
        )));
    }
    let shape = ConvShape {
        n,
        c_in,
        c_out,
        groups,
        input: spatial3(&xr.dims[2..], 1),
        kernel: spatial3(&w.dims[2..], 1),
        output: spatial3(&yr.dims[2..], 1),
        pad: spatial3(&conv.pads, 0),
        stride: spatial3(&conv.strides, 1),
        dilation: spatial3(&conv.dilations, 1),
    };
    check_spatial_fit(&shape)?;
    shape.validate().map_err(ShimError::bad_parm)?;
    let problem = ConvProblem {
        direction,
        transposed,
        pass,
        dtype: x.dtype,
        shape,
        x: xr.layout5(),
        w: w.layout5(),
        y: yr.layout5(),
        spatial_dims: sd,
    };
    let written = match pass {
        Pass::Forward => &problem.y,
        Pass::BackwardData => &problem.x,
        Pass::BackwardWeights => &problem.w,
    };
    if !written.is_non_overlapping() {
        return Err(ShimError::bad_parm(format!(
            "output tensor has overlapping strides {:?}",
            written.strides
        )));
    }
    for (name, l) in [("x", &problem.x), ("w", &problem.w), ("y", &problem.y)] {
        l.span()
            .checked_mul(x.dtype.size())
            .filter(|b| *b < (1usize << 47))
            .ok_or_else(|| {
                ShimError::bad_parm(format!(
                    "tensor {name} spans an impossible number of bytes: {l:?}"
                ))
            })?;
    }
    Ok(problem)
}

/// The output size must be the forward formula's for the input, except that the input
/// may exceed the smallest one that yields this output by less than max(stride, dilation)
/// (a transposed convolution's output padding). When the padding alone covers the
/// kernel's reach, that smallest input is below 1 and every input up to the bound fits.
fn check_spatial_fit(s: &ConvShape) -> ShimResult<()> {
    for i in 0..3 {
        // Sizes are at most i32::MAX (descriptors hold ints), so i128 cannot overflow.
        let span = s.dilation[i] as i128 * (s.kernel[i] as i128 - 1) + 1;
        let reach = (s.output[i] as i128 - 1) * s.stride[i] as i128 + span;
        let min_in = reach - 2 * s.pad[i] as i128;
        let slack = s.stride[i].max(s.dilation[i]) as i128;
        let input = s.input[i] as i128;
        let ok = s.output[i] >= 1 && input >= min_in.max(1) && input < min_in + slack;
        if !ok {
            return Err(ShimError::bad_parm(format!(
                "spatial size mismatch in dim {i}: input {} and output {} do not fit kernel {} pad {} stride {} dilation {}",
                s.input[i], s.output[i], s.kernel[i], s.pad[i], s.stride[i], s.dilation[i]
            )));
        }
    }
    Ok(())
}

/// A one-line description of a problem for logs.
pub fn describe(p: &ConvProblem) -> String {
    let s = &p.shape;
    let sd = p.spatial_dims;
    let sp = |a: [usize; 3]| {
        a[3 - sd..]
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("x")
    };
    let layout = |l: &Layout5| {
        if l.is_packed_canonical() {
            "nchw"
        } else if l.strides[1] == 1 && l.dims[1] > 1 {
            "nhwc"
        } else {
            "strided"
        }
    };
    format!(
        "{}d {} n={} c={}->{} in={} k={} out={} pad={} stride={} dil={} groups={}{} x:{} w:{} y:{}",
        sd,
        p.dtype.name(),
        s.n,
        s.c_in,
        s.c_out,
        sp(s.input),
        sp(s.kernel),
        sp(s.output),
        sp(s.pad),
        sp(s.stride),
        sp(s.dilation),
        s.groups,
        if p.transposed { " transposed" } else { "" },
        layout(&p.x),
        layout(&p.w),
        layout(&p.y),
    )
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn conv2d(mode: c_int, pad: usize, stride: usize, groups: usize) -> ConvDesc {
        ConvDesc {
            mode,
            pads: vec![pad; 2],
            strides: vec![stride; 2],
            dilations: vec![1; 2],
            groups,
        }
    }

    #[test]
    fn forward_2d_maps_to_canonical_3d_shape() {
        let p = conv_problem(
            Direction::Forward,
            &conv2d(miopenConvolution, 1, 2, 1),
            &TensorDesc::packed(DType::F32, &[2, 3, 9, 8]),
            &TensorDesc::packed(DType::F32, &[4, 3, 3, 3]),
            &TensorDesc::packed(DType::F32, &[2, 4, 5, 4]),
        )
        .unwrap();
        assert_eq!(p.pass, Pass::Forward);
        assert_eq!(p.shape.input, [1, 9, 8]);
        assert_eq!(p.shape.output, [1, 5, 4]);
        assert_eq!(p.shape.pad, [0, 1, 1]);
        assert_eq!(p.x.dims, [2, 3, 1, 9, 8]);
        assert!(p.x.is_packed_canonical());
        assert!(describe(&p).starts_with("2d fp32 n=2 c=3->4 in=9x8 k=3x3 out=5x4"));
    }

    #[test]
    fn transposed_mode_swaps_roles_and_accepts_output_padding() {
        // transposed: x [1, 4, 3, 3] -> y [1, 6, 8, 8] with k=3, stride 2, pad 1, adj 1; w [4, 3, 3, 3], groups 2
        let p = conv_problem(
            Direction::Forward,
            &conv2d(miopenTranspose, 1, 2, 2),
            &TensorDesc::packed(DType::F16, &[1, 4, 4, 4]),
            &TensorDesc::packed(DType::F16, &[4, 3, 3, 3]),
            &TensorDesc::packed(DType::F16, &[1, 6, 8, 8]),
        )
        .unwrap();
        assert_eq!(p.pass, Pass::BackwardData);
        assert_eq!((p.shape.c_in, p.shape.c_out, p.shape.groups), (6, 4, 2));
        assert_eq!(p.shape.input, [1, 8, 8]);
        assert_eq!(p.shape.output, [1, 4, 4]);
        let bd = conv_problem(
            Direction::BackwardData,
            &conv2d(miopenTranspose, 1, 2, 2),
            &TensorDesc::packed(DType::F16, &[1, 4, 4, 4]),
            &TensorDesc::packed(DType::F16, &[4, 3, 3, 3]),
            &TensorDesc::packed(DType::F16, &[1, 6, 8, 8]),
        )
        .unwrap();
        assert_eq!(bd.pass, Pass::Forward);
    }

    #[test]
    fn legacy_depthwise_mode_infers_groups() {
        let p = conv_problem(
            Direction::Forward,
            &conv2d(miopenDepthwise, 1, 1, 1),
            &TensorDesc::packed(DType::BF16, &[1, 8, 5, 5]),
            &TensorDesc::packed(DType::BF16, &[8, 1, 3, 3]),
            &TensorDesc::packed(DType::BF16, &[1, 8, 5, 5]),
        )
        .unwrap();
        assert_eq!(p.shape.groups, 8);
    }

    #[test]
    fn mismatches_are_bad_parm_with_reason() {
        let c = conv2d(miopenConvolution, 0, 1, 1);
        let e = conv_problem(
            Direction::Forward,
            &c,
            &TensorDesc::packed(DType::F32, &[1, 3, 5, 5]),
            &TensorDesc::packed(DType::F32, &[4, 3, 3, 3]),
            &TensorDesc::packed(DType::F32, &[1, 4, 4, 3]),
        )
        .unwrap_err();
        assert_eq!(e.status, miopenStatusBadParm);
        assert!(e.message.contains("spatial size mismatch"), "{e}");
        let e = conv_problem(
            Direction::Forward,
            &c,
            &TensorDesc::packed(DType::F32, &[1, 3, 5, 5]),
            &TensorDesc::packed(DType::F32, &[4, 2, 3, 3]),
            &TensorDesc::packed(DType::F32, &[1, 4, 3, 3]),
        )
        .unwrap_err();
        assert!(e.message.contains("does not fit"), "{e}");
        let e = conv_problem(
            Direction::Forward,
            &c,
            &TensorDesc::packed(DType::F32, &[1, 3, 5, 5]),
            &TensorDesc::packed(DType::F16, &[4, 3, 3, 3]),
            &TensorDesc::packed(DType::F32, &[1, 4, 3, 3]),
        )
        .unwrap_err();
        assert!(e.message.contains("data types differ"), "{e}");
        let e = conv_problem(
            Direction::Forward,
            &c,
            &TensorDesc::packed(DType::F32, &[1, 3, 5, 5, 5]),
            &TensorDesc::packed(DType::F32, &[4, 3, 3, 3]),
            &TensorDesc::packed(DType::F32, &[1, 4, 3, 3]),
        )
        .unwrap_err();
        assert!(e.message.contains("spatial dims"), "{e}");
    }

    #[test]
    fn absurd_sizes_are_rejected_without_overflow() {
        let huge = TensorDesc {
            dtype: DType::F32,
            dims: vec![1 << 20, 1 << 20, 1 << 12, 1 << 12],
            strides: vec![1 << 40, 1 << 20, 1 << 8, 1],
        };
        let e = check_size("x", &huge).unwrap_err();
        assert!(e.message.contains("impossible number of bytes"), "{e}");
        let wraps = TensorDesc {
            dtype: DType::F16,
            dims: vec![usize::MAX / 2, 3],
            strides: vec![4, 1],
        };
        assert!(check_size("x", &wraps).is_err());
        assert!(check_size("x", &TensorDesc::packed(DType::F32, &[64, 256, 56, 56])).is_ok());
    }

    #[test]
    fn one_d_descriptors_pad_to_width_only() {
        let c = ConvDesc {
            mode: miopenConvolution,
            pads: vec![2],
            strides: vec![1],
            dilations: vec![2],
            groups: 1,
        };
        let p = conv_problem(
            Direction::BackwardWeights,
            &c,
            &TensorDesc::packed(DType::F32, &[2, 3, 10]),
            &TensorDesc::packed(DType::F32, &[5, 3, 3]),
            &TensorDesc::packed(DType::F32, &[2, 5, 10]),
        )
        .unwrap();
        assert_eq!(p.shape.input, [1, 1, 10]);
        assert_eq!(p.shape.dilation, [1, 1, 2]);
        assert_eq!(p.pass, Pass::BackwardWeights);
    }
}

// ---- batch normalization ----

use crate::cpu::batchnorm::{BnMode, BnShape};

/// One batch-norm call's tensors, checked against each other: the data tensors share
/// `x`'s dims, and the scale/bias/mean/variance descriptor is the one
/// `miopenDeriveBNTensorDescriptor` derives from `x` (`[1, C, 1, ...]` for spatial mode,
/// `[1, C, spatial...]` per activation).
#[derive(Clone, Debug, PartialEq)]
pub struct BnProblem {
    pub shape: BnShape,
    /// Type of x, y, dy, dx.
    pub dtype: DType,
    /// Type of scale, bias, running and saved statistics, gradients of scale and bias.
    pub param_dtype: DType,
    /// Spatial dims as the caller described them, for logs.
    pub spatial: Vec<usize>,
    pub x: Layout5,
    /// Forward: y; backward: dy.
    pub y: Layout5,
    /// Backward: dx.
    pub dx: Option<Layout5>,
    /// Every parameter tensor (they share one descriptor).
    pub param: Layout5,
}

/// The engine's mode for a `miopenBatchNormMode_t`.
#[allow(non_upper_case_globals)]
pub fn bn_mode(mode: miopenBatchNormMode_t) -> ShimResult<BnMode> {
    match mode {
        miopenBNPerActivation => Ok(BnMode::PerActivation),
        miopenBNSpatial => Ok(BnMode::Spatial),
        other => Err(ShimError::bad_parm(format!(
            "unknown miopenBatchNormMode_t {other}"
        ))),
    }
}

fn bn_layout(name: &str, t: &TensorDesc) -> ShimResult<Layout5> {
    check_size(name, t)?;
    if t.dims.len() < 3 {
        return Err(ShimError::bad_parm(format!(
            "tensor {name} has {} dims; batch norm needs 3 to 5",
            t.dims.len()
        )));
    }
    if t.dims.len() > 5 {
        return Err(ShimError::not_implemented(format!(
            "{}-dimensional batch norm (3 to 5 dims are supported)",
            t.dims.len()
        )));
    }
    Ok(t.layout5())
}

/// Builds the problem of a batch-norm call. `y` is the forward output or, with `dx`,
/// the backward pass's `dy`; `param` is the scale/bias/mean/variance descriptor.
pub fn bn_problem(
    mode: BnMode,
    x: &TensorDesc,
    y: &TensorDesc,
    dx: Option<&TensorDesc>,
    param: &TensorDesc,
) -> ShimResult<BnProblem> {
    let yname = if dx.is_some() { "dy" } else { "y" };
    let lx = bn_layout("x", x)?;
    let ly = bn_layout(yname, y)?;
    let ldx = dx.map(|d| bn_layout("dx", d)).transpose()?;
    let lp = bn_layout("scale/bias/mean/variance", param)?;
    for (name, t) in [(yname, Some(y)), ("dx", dx)] {
        let Some(t) = t else { continue };
        if t.dims != x.dims {
            return Err(ShimError::bad_parm(format!(
                "tensor {name} {:?} differs from x {:?}",
                t.dims, x.dims
            )));
        }
        if t.dtype != x.dtype {
            return Err(ShimError::bad_parm(format!(
                "data types differ: x {} {name} {}",
                x.dtype.name(),
                t.dtype.name()
            )));
        }
    }
    let c = x.dims[1];
    let derived: Vec<usize> = (0..x.dims.len())
        .map(|i| match (i, mode) {
            (0, _) => 1,
            (1, _) => c,
            (_, BnMode::Spatial) => 1,
            (_, BnMode::PerActivation) => x.dims[i],
        })
        .collect();
    if param.dims != derived {
        return Err(ShimError::bad_parm(format!(
            "scale/bias/mean/variance descriptor {:?} does not fit x {:?} in {} mode (expected {derived:?})",
            param.dims,
            x.dims,
            bn_mode_name(mode)
        )));
    }
    for (name, l) in [
        (yname, Some(&ly)),
        ("dx", ldx.as_ref()),
        ("scale/bias/mean/variance", Some(&lp)),
    ] {
        if let Some(l) = l {
            if !l.is_non_overlapping() {
                return Err(ShimError::bad_parm(format!(
                    "tensor {name} has overlapping strides {:?}",
                    l.strides
                )));
            }
        }
    }
    let shape = BnShape {
        n: x.dims[0],
        c,
        spatial: x.dims[2..].iter().product(),
        mode,
    };
    shape.validate().map_err(ShimError::bad_parm)?;
    Ok(BnProblem {
        shape,
        dtype: x.dtype,
        param_dtype: param.dtype,
        spatial: x.dims[2..].to_vec(),
        x: lx,
        y: ly,
        dx: ldx,
        param: lp,
    })
}

fn bn_mode_name(mode: BnMode) -> &'static str {
    match mode {
        BnMode::Spatial => "spatial",
        BnMode::PerActivation => "per-activation",
    }
}

/// A one-line description of a batch-norm problem for logs.
pub fn describe_bn(p: &BnProblem) -> String {
    let layout = |l: &Layout5| {
        if l.is_packed_canonical() {
            "nchw"
        } else if l.strides[1] == 1 && l.dims[1] > 1 {
            "nhwc"
        } else {
            "strided"
        }
    };
    let sp: Vec<String> = p.spatial.iter().map(|v| v.to_string()).collect();
    let mut s = format!(
        "{} {}d {} (params {}) n={} c={} in={} x:{} {}:{}",
        bn_mode_name(p.shape.mode),
        p.spatial.len(),
        p.dtype.name(),
        p.param_dtype.name(),
        p.shape.n,
        p.shape.c,
        sp.join("x"),
        layout(&p.x),
        if p.dx.is_some() { "dy" } else { "y" },
        layout(&p.y),
    );
    if let Some(dx) = &p.dx {
        s.push_str(&format!(" dx:{}", layout(dx)));
    }
    s
}

#[cfg(test)]
mod bn_tests {
    use super::*;

    fn t(dtype: DType, dims: &[usize], strides: &[usize]) -> TensorDesc {
        TensorDesc {
            dtype,
            dims: dims.to_vec(),
            strides: strides.to_vec(),
        }
    }

    #[test]
    fn spatial_nhwc_fp16_with_fp32_params() {
        let x = t(DType::F16, &[2, 3, 4, 5], &[60, 1, 15, 3]);
        let p = bn_problem(
            BnMode::Spatial,
            &x,
            &x,
            None,
            &t(DType::F32, &[1, 3, 1, 1], &[3, 1, 1, 1]),
        )
        .unwrap();
        assert_eq!((p.shape.n, p.shape.c, p.shape.spatial), (2, 3, 20));
        assert_eq!((p.dtype, p.param_dtype), (DType::F16, DType::F32));
        assert_eq!(p.x.dims, [2, 3, 1, 4, 5]);
        assert_eq!(p.param.dims, [1, 3, 1, 1, 1]);
        assert_eq!(
            describe_bn(&p),
            "spatial 2d fp16 (params fp32) n=2 c=3 in=4x5 x:nhwc y:nhwc"
        );
    }

    #[test]
    fn per_activation_3d_backward() {
        let x = t(DType::F32, &[2, 2, 3, 1, 2], &[12, 6, 2, 2, 1]);
        let p = bn_problem(
            BnMode::PerActivation,
            &x,
            &x,
            Some(&x),
            &t(DType::F32, &[1, 2, 3, 1, 2], &[12, 6, 2, 2, 1]),
        )
        .unwrap();
        assert_eq!(p.shape.spatial, 6);
        assert_eq!(p.shape.features(), 12);
        assert!(describe_bn(&p).ends_with("x:nchw dy:nchw dx:nchw"));
    }

    #[test]
    fn mismatches_are_bad_parm_with_reason() {
        let x = t(DType::F32, &[2, 3, 4, 4], &[48, 16, 4, 1]);
        let p1 = t(DType::F32, &[1, 3, 1, 1], &[3, 1, 1, 1]);
        let pa = t(DType::F32, &[1, 3, 4, 4], &[48, 16, 4, 1]);
        let cases = [
            (BnMode::PerActivation, &x, &x, &p1, "does not fit"),
            (BnMode::Spatial, &x, &x, &pa, "does not fit"),
            (
                BnMode::Spatial,
                &x,
                &t(DType::F32, &[2, 3, 4, 5], &[60, 20, 5, 1]),
                &p1,
                "differs from x",
            ),
            (
                BnMode::Spatial,
                &x,
                &t(DType::F16, &[2, 3, 4, 4], &[48, 16, 4, 1]),
                &p1,
                "data types differ",
            ),
            (
                BnMode::Spatial,
                &x,
                &t(DType::F32, &[2, 3, 4, 4], &[48, 16, 0, 1]),
                &p1,
                "overlapping",
            ),
            (
                BnMode::Spatial,
                &t(DType::F32, &[2, 3], &[3, 1]),
                &t(DType::F32, &[2, 3], &[3, 1]),
                &t(DType::F32, &[1, 3], &[3, 1]),
                "3 to 5",
            ),
        ];
        for (mode, x, y, p, want) in cases {
            let e = bn_problem(mode, x, y, None, p).unwrap_err();
            assert_eq!(e.status, miopenStatusBadParm, "{e}");
            assert!(e.message.contains(want), "{want}: {e}");
        }
        let six = t(DType::F32, &[1; 6], &[1; 6]);
        assert!(bn_problem(BnMode::Spatial, &six, &six, None, &six)
            .unwrap_err()
            .is_unsupported());
        assert_eq!(bn_mode(1).unwrap(), BnMode::Spatial);
        assert_eq!(bn_mode(0).unwrap(), BnMode::PerActivation);
        assert_eq!(bn_mode(2).unwrap_err().status, miopenStatusBadParm);
    }
}
