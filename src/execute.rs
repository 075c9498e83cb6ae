//! Running one decoded call on the CPU: stream-ordered copies in, the engine, alpha/beta
//! blending, copies out. Results are computed in host memory and copied to the device
//! only when everything before succeeded, so a failure never leaves an output half-written.

use std::ffi::c_void;
use std::time::Instant;

use crate::activation::Activation;
use crate::cpu::{conv, ConvShape};
use crate::describe::{ConvProblem, Pass, TensorDesc};
use crate::error::{ShimError, ShimResult};
use crate::ffi::hip::hipStream_t;
use crate::ffi::miopen::*;
use crate::layout::{self, DType, Layout5};
use crate::runtime::Runtime;
use crate::stats::CallRecord;
use crate::transfer::Transfers;
use rayon::prelude::*;

/// Device pointers of a convolution call in the call's own roles, as `conv_problem`
/// takes its tensors: forward (x, w, y), backward-data (dx, w, dy), backward-weights
/// (x, dw, dy).
pub struct ConvBuffers {
    pub x: *mut c_void,
    pub w: *mut c_void,
    pub y: *mut c_void,
}

/// The handle's stream, on which every copy is ordered.
pub fn stream_of(rt: &Runtime, handle: miopenHandle_t) -> ShimResult<hipStream_t> {
    if handle.is_null() {
        return Err(ShimError::bad_parm("handle is null"));
    }
    let mut stream: miopenAcceleratorQueue_t = std::ptr::null_mut();
    // SAFETY: non-null handle from the caller; out-pointer to a local.
    let s = unsafe { (rt.getters()?.miopenGetStream)(handle, &mut stream) };
    if s != miopenStatusSuccess {
        return Err(ShimError::new(
            s,
            format!("miopenGetStream failed: {}", status_name(s)),
        ));
    }
    Ok(stream)
}

/// Reads `alpha`/`beta` (floats for fp32/fp16/bf16 data, as MIOpen defines them).
pub fn scalars(alpha: *const c_void, beta: *const c_void) -> ShimResult<(f32, f32)> {
    if alpha.is_null() || beta.is_null() {
        return Err(ShimError::bad_parm("alpha or beta is null"));
    }
    // SAFETY: non-null host pointers to float, per the MIOpen API.
    Ok(unsafe { (*(alpha as *const f32), *(beta as *const f32)) })
}

fn bytes_of(l: &Layout5, dtype: DType) -> usize {
    l.span() * dtype.size()
}

/// What a fused plan adds after a forward convolution.
pub struct Fused {
    /// Per-channel bias `[1, C, 1, ...]` in the output's dtype.
    pub bias: Option<FusedBias>,
    pub activation: Option<Activation>,
}

pub struct FusedBias {
    pub ptr: *const c_void,
    pub layout: Layout5,
}

/// Computes one convolution call on the CPU.
pub fn run_conv(
    rt: &'static Runtime,
    handle: miopenHandle_t,
    p: &ConvProblem,
    bufs: &ConvBuffers,
    alpha: f32,
    beta: f32,
) -> ShimResult<CallRecord> {
    run_conv_fused(rt, handle, p, bufs, alpha, beta, None)
}

/// Computes a convolution and, for a fused plan, its bias and activation.
pub fn run_conv_fused(
    rt: &'static Runtime,
    handle: miopenHandle_t,
    p: &ConvProblem,
    bufs: &ConvBuffers,
    alpha: f32,
    beta: f32,
    fused: Option<&Fused>,
) -> ShimResult<CallRecord> {
    // The regular convolution's x and y: transposed mode swaps the call's two.
    let (x, y) = if p.transposed {
        (bufs.y, bufs.x)
    } else {
        (bufs.x, bufs.y)
    };
    let ((in_a, la), (in_b, lb), (out, lo)) = match p.pass {
        Pass::Forward => ((x, &p.x), (bufs.w, &p.w), (y, &p.y)),
        Pass::BackwardData => ((y, &p.y), (bufs.w, &p.w), (x, &p.x)),
        Pass::BackwardWeights => ((x, &p.x), (y, &p.y), (bufs.w, &p.w)),
    };
    if in_a.is_null() || in_b.is_null() || out.is_null() {
        return Err(ShimError::bad_parm("a data pointer is null"));
    }
    let stream = stream_of(rt, handle)?;
    let hip = rt.hip()?;
    let pool = rt.pool()?;
    let dt = p.dtype;
    let mut tr = Transfers::new(hip, stream);
    let ba = tr.download(in_a, bytes_of(la, dt))?;
    let bb = tr.download(in_b, bytes_of(lb, dt))?;
    // The output's old contents are needed for beta, or to keep the gaps of a
    // non-dense output intact.
    let read_out = beta != 0.0 || !lo.is_dense();
    let bo = if read_out {
        tr.download(out, bytes_of(lo, dt))?
    } else {
        tr.buffer(bytes_of(lo, dt))?
    };
    let extra = match fused.and_then(|f| f.bias.as_ref()) {
        Some(bias) => Some(tr.download(bias.ptr, bytes_of(&bias.layout, dt))?),
        None => None,
    };
    tr.sync()?;

    let t = Instant::now();
    // Host work runs on the shim's pool (rebuilt after fork), never on rayon's global one.
    let bias = match fused.and_then(|f| f.bias.as_ref()) {
        Some(bias) => {
            let (bytes, layout) = (tr.bytes(extra.expect("bias downloaded")), &bias.layout);
            Some(pool.install(|| gathered(bytes, dt, layout, "the fused bias"))?)
        }
        None => None,
    };
    let (a, b, o) = tr.io(ba, bb, bo);
    let activation = fused.and_then(|f| f.activation);
    let epilogue = |res: &mut [f32]| {
        if let Some(bias) = &bias {
            let plane = lo.dims[2] * lo.dims[3] * lo.dims[4];
            let c = lo.dims[1];
            res.par_chunks_mut(plane)
                .enumerate()
                .for_each(|(i, ch)| ch.iter_mut().for_each(|v| *v += bias[i % c]));
        }
        if let Some(act) = activation {
            act.apply_all(res);
        }
    };
    pool.install(|| try_compute_on_host(p, a, b, o, alpha, beta, &epilogue))?;
    let compute = t.elapsed();

    tr.upload(out, bo)?;
    tr.sync()?;
    Ok(CallRecord {
        compute,
        copy: tr.time,
        bytes_to_host: tr.bytes_to_host,
        bytes_to_device: tr.bytes_to_device,
        flops: p.shape.flops(),
    })
}

/// The host part of a convolution call: `a`, `b` are the pass's inputs and `out` its
/// output, each as the bytes of its span in the problem's dtype and layout. `out` holds
/// the old output when `beta != 0` (and the bytes between elements of a non-dense one).
///
/// `epilogue` runs on the blended result (packed canonical f32) before it is stored:
/// fused plans add a bias and an activation there. Panics where [`try_compute_on_host`]
/// fails (tests and tools).
pub fn compute_on_host(
    p: &ConvProblem,
    a: &[u8],
    b: &[u8],
    out: &mut [u8],
    alpha: f32,
    beta: f32,
    epilogue: &(dyn Fn(&mut [f32]) + Sync),
) {
    try_compute_on_host(p, a, b, out, alpha, beta, epilogue).unwrap_or_else(|e| panic!("{e}"));
}

/// [`compute_on_host`], returning `miopenStatusAllocFailed` when the host has no memory
/// for the f32 working copies (instead of aborting the process). `out` is written only
/// after every allocation succeeded.
pub fn try_compute_on_host(
    p: &ConvProblem,
    a: &[u8],
    b: &[u8],
    out: &mut [u8],
    alpha: f32,
    beta: f32,
    epilogue: &(dyn Fn(&mut [f32]) + Sync),
) -> ShimResult<()> {
    let (la, lb, lo) = match p.pass {
        Pass::Forward => (&p.x, &p.w, &p.y),
        Pass::BackwardData => (&p.y, &p.w, &p.x),
        Pass::BackwardWeights => (&p.x, &p.y, &p.w),
    };
    let dt = p.dtype;
    let a = gathered(a, dt, la, "the first input")?;
    let b = gathered(b, dt, lb, "the second input")?;
    let mut res = host_vec(lo.numel(), "the result")?;
    let old = if beta != 0.0 {
        Some(gathered(out, dt, lo, "the old output")?)
    } else {
        None
    };
    match p.pass {
        Pass::Forward => conv::forward(&p.shape, &a, &b, &mut res),
        Pass::BackwardData => conv::backward_data(&p.shape, &a, &b, &mut res),
        Pass::BackwardWeights => conv::backward_weights(&p.shape, &a, &b, &mut res),
    }
    layout::blend(&mut res, alpha, beta, old.as_deref());
    epilogue(&mut res);
    layout::scatter(&res, dt, lo, out);
    Ok(())
}

/// A zeroed buffer of `n` f32 values, or `miopenStatusAllocFailed` when the host cannot
/// provide it (`vec!` would abort the whole process instead).
pub fn host_vec(n: usize, what: &str) -> ShimResult<Vec<f32>> {
    let fail = || {
        ShimError::alloc_failed(format!(
            "cannot allocate {n} f32 values of host memory for {what}"
        ))
    };
    if n == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<f32>(n).map_err(|_| fail())?;
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut f32;
    if ptr.is_null() {
        return Err(fail());
    }
    // SAFETY: ptr comes from the global allocator with the layout of n f32 values, all
    // zero bytes (valid f32 zeros); length and capacity are n.
    Ok(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

/// The tensor `l` in `bytes`, gathered into a packed f32 buffer obtained fallibly.
fn gathered(bytes: &[u8], dt: DType, l: &Layout5, what: &str) -> ShimResult<Vec<f32>> {
    let mut v = host_vec(l.numel(), what)?;
    layout::gather_into(bytes, dt, l, &mut v);
    Ok(v)
}

/// A bias tensor `[1, C, 1, ...]` (or `[C]`-like with all other dims 1) for data `data`.
fn bias_channels(bias: &TensorDesc, data: &TensorDesc) -> ShimResult<(usize, usize)> {
    if data.dims.len() < 2 {
        return Err(ShimError::bad_parm(format!(
            "tensor {:?} has no channel dimension",
            data.dims
        )));
    }
    let c = data.dims[1];
    let ok = bias.dims.len() == data.dims.len()
        && bias.dims[1] == c
        && bias.dims.iter().enumerate().all(|(i, &d)| i == 1 || d == 1);
    if !ok {
        return Err(ShimError::bad_parm(format!(
            "bias {:?} does not match data {:?} (expected [1, {c}, 1, ...])",
            bias.dims, data.dims
        )));
    }
    if bias.dtype != data.dtype {
        return Err(ShimError::bad_parm("bias and data types differ"));
    }
    Ok((c, bias.strides[1]))
}

fn layout_any(t: &TensorDesc) -> ShimResult<Layout5> {
    if !(3..=5).contains(&t.dims.len()) {
        return Err(ShimError::not_implemented(format!(
            "{}-dimensional tensors",
            t.dims.len()
        )));
    }
    Ok(t.layout5())
}

/// `miopenConvolutionForwardBias`: `y = alpha * (y + b) + beta * y` (MIOpen's OpTensor
/// with y as both first operand and destination).
pub fn run_forward_bias(
    rt: &'static Runtime,
    handle: miopenHandle_t,
    bdesc: &TensorDesc,
    b: *const c_void,
    ydesc: &TensorDesc,
    y: *mut c_void,
    alpha: f32,
    beta: f32,
) -> ShimResult<CallRecord> {
    let (c, bstride) = bias_channels(bdesc, ydesc)?;
    if b.is_null() || y.is_null() {
        return Err(ShimError::bad_parm("a data pointer is null"));
    }
    let ly = layout_any(ydesc)?;
    if !ly.is_non_overlapping() {
        return Err(ShimError::bad_parm("output tensor has overlapping strides"));
    }
    let dt = ydesc.dtype;
    let lb = Layout5 {
        dims: [1, c, 1, 1, 1],
        strides: [0, bstride, 0, 0, 0],
    };
    let stream = stream_of(rt, handle)?;
    let hip = rt.hip()?;
    // Host work runs on the shim's pool (rebuilt after fork), never on rayon's global one.
    let pool = rt.pool()?;
    let mut tr = Transfers::new(hip, stream);
    let bb = tr.download(b, bytes_of(&lb, dt))?;
    let by = tr.download(y, bytes_of(&ly, dt))?;
    tr.sync()?;
    let t = Instant::now();
    let (bias_bytes, y_bytes) = tr.read_write(bb, by);
    pool.install(|| -> ShimResult<()> {
        let bias = gathered(bias_bytes, dt, &lb, "the bias")?;
        let mut vals = gathered(y_bytes, dt, &ly, "the output")?;
        let plane = ly.dims[2] * ly.dims[3] * ly.dims[4];
        for (i, v) in vals.iter_mut().enumerate() {
            let ch = (i / plane) % c;
            *v = alpha * (*v + bias[ch]) + beta * *v;
        }
        layout::scatter(&vals, dt, &ly, y_bytes);
        Ok(())
    })?;
    let compute = t.elapsed();
    tr.upload(y, by)?;
    tr.sync()?;
    Ok(CallRecord {
        compute,
        copy: tr.time,
        bytes_to_host: tr.bytes_to_host,
        bytes_to_device: tr.bytes_to_device,
        flops: ly.numel() as f64,
    })
}

/// `miopenConvolutionBackwardBias`: `db[c] = alpha * sum(dy[:, c, ...]) + beta * db[c]`.
pub fn run_backward_bias(
    rt: &'static Runtime,
    handle: miopenHandle_t,
    dydesc: &TensorDesc,
    dy: *const c_void,
    dbdesc: &TensorDesc,
    db: *mut c_void,
    alpha: f32,
    beta: f32,
) -> ShimResult<CallRecord> {
    let (c, bstride) = bias_channels(dbdesc, dydesc)?;
    if dy.is_null() || db.is_null() {
        return Err(ShimError::bad_parm("a data pointer is null"));
    }
    let ly = layout_any(dydesc)?;
    let dt = dydesc.dtype;
    let lb = Layout5 {
        dims: [1, c, 1, 1, 1],
        strides: [0, bstride, 0, 0, 0],
    };
    if !lb.is_non_overlapping() {
        return Err(ShimError::bad_parm(format!(
            "output tensor db has overlapping strides {:?}",
            dbdesc.strides
        )));
    }
    let stream = stream_of(rt, handle)?;
    let hip = rt.hip()?;
    // Host work runs on the shim's pool (rebuilt after fork), never on rayon's global one.
    let pool = rt.pool()?;
    let mut tr = Transfers::new(hip, stream);
    let by = tr.download(dy, bytes_of(&ly, dt))?;
    let bb = if beta != 0.0 || !lb.is_dense() {
        tr.download(db, bytes_of(&lb, dt))?
    } else {
        tr.buffer(bytes_of(&lb, dt))?
    };
    tr.sync()?;
    let t = Instant::now();
    let (dy_bytes, db_bytes) = tr.read_write(by, bb);
    pool.install(|| -> ShimResult<()> {
        let vals = gathered(dy_bytes, dt, &ly, "the gradient")?;
        let plane = ly.dims[2] * ly.dims[3] * ly.dims[4];
        let mut sums = Vec::new();
        sums.try_reserve_exact(c).map_err(|_| {
            ShimError::alloc_failed(format!("cannot allocate {c} sums of host memory"))
        })?;
        sums.resize(c, 0f64);
        for (i, v) in vals.iter().enumerate() {
            sums[(i / plane) % c] += *v as f64;
        }
        let mut out = host_vec(c, "the bias gradient")?;
        for (o, s) in out.iter_mut().zip(&sums) {
            *o = *s as f32;
        }
        let old = if beta != 0.0 {
            Some(gathered(db_bytes, dt, &lb, "the old bias gradient")?)
        } else {
            None
        };
        layout::blend(&mut out, alpha, beta, old.as_deref());
        layout::scatter(&out, dt, &lb, db_bytes);
        Ok(())
    })?;
    let compute = t.elapsed();
    tr.upload(db, bb)?;
    tr.sync()?;
    Ok(CallRecord {
        compute,
        copy: tr.time,
        bytes_to_host: tr.bytes_to_host,
        bytes_to_device: tr.bytes_to_device,
        flops: ly.numel() as f64,
    })
}

/// Shape used by flop counts in logs.
pub fn gflops(shape: &ConvShape, secs: f64) -> f64 {
    if secs > 0.0 {
        shape.flops() / secs * 1e-9
    } else {
        0.0
    }
}
