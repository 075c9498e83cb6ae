//! Running one decoded batch-norm call on the CPU: stream-ordered copies of exactly the
//! tensors the call reads, the engine (`cpu::batchnorm`), alpha/beta blending, copies of
//! the outputs back. Every output is computed in host staging and copied to the device
//! only after everything before succeeded.
//!
//! The `*_on_host` functions are the host part alone (bytes in the call's dtypes and
//! layouts in, packed f32 results out), shared with the golden-vector tests.

use std::ffi::c_void;
use std::time::Instant;

use crate::convert::{self, Blend};
use crate::cpu::batchnorm as engine;
use crate::describe::BnProblem;
use crate::error::{ShimError, ShimResult};
use crate::execute::stream_of;
use crate::ffi::miopen::miopenHandle_t;
use crate::layout::{DType, Layout5};
use crate::runtime::Runtime;
use crate::stats::CallRecord;
use crate::transfer::Transfers;

fn bytes_of(l: &Layout5, dtype: DType) -> usize {
    l.span() * dtype.size()
}

/// Scalars of a forward call.
#[derive(Clone, Copy, Debug)]
pub struct FwdScalars {
    pub alpha: f32,
    pub beta: f32,
    pub eps: f64,
    /// Exponential-average factor of the running statistics (training only).
    pub factor: f64,
}

/// Scalars of a backward call.
#[derive(Clone, Copy, Debug)]
pub struct BwdScalars {
    pub alpha_data: f32,
    pub beta_data: f32,
    pub alpha_param: f32,
    pub beta_param: f32,
    pub eps: f64,
}

/// Forward-training results in the engine's packed order.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainResult {
    pub y: Vec<f32>,
    /// Updated running mean and variance, when the call passed both.
    pub running: Option<(Vec<f32>, Vec<f32>)>,
    /// Batch mean and `1 / sqrt(var + eps)`, for the backward pass.
    pub saved_mean: Vec<f32>,
    pub saved_inv_var: Vec<f32>,
}

/// Backward results in the engine's packed order.
#[derive(Clone, Debug, PartialEq)]
pub struct BwdResult {
    pub dx: Vec<f32>,
    pub dscale: Vec<f32>,
    pub dbias: Vec<f32>,
}

fn param(p: &BnProblem, bytes: &[u8]) -> Vec<f32> {
    convert::gathered(bytes, p.param_dtype, &p.param)
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|a| *a as f32).collect()
}

/// Host part of `miopenBatchNormalizationForwardTraining`. `y_old` (y's current bytes)
/// is read only when `beta != 0`; `running` holds the current running mean and
/// variance when they are to be updated.
pub fn train_on_host(
    p: &BnProblem,
    x: &[u8],
    scale: &[u8],
    bias: &[u8],
    y_old: Option<&[u8]>,
    running: Option<(&[u8], &[u8])>,
    s: FwdScalars,
) -> TrainResult {
    let xv = convert::gathered(x, p.dtype, &p.x);
    let mut y = vec![0f32; p.shape.numel()];
    let m = engine::forward_training(
        &p.shape,
        &xv,
        &param(p, scale),
        &param(p, bias),
        s.eps,
        &mut y,
    );
    blend(&mut y, s.alpha, s.beta, y_old, p.dtype, &p.y);
    let running = running.map(|(rm, rv)| {
        let (mut rm, mut rv) = (param(p, rm), param(p, rv));
        engine::update_running(&p.shape, &m, s.factor, &mut rm, &mut rv);
        (rm, rv)
    });
    let inv: Vec<f64> = m.var.iter().map(|v| engine::inv_std(*v, s.eps)).collect();
    TrainResult {
        y,
        running,
        saved_mean: to_f32(&m.mean),
        saved_inv_var: to_f32(&inv),
    }
}

/// Host part of `miopenBatchNormalizationForwardInference`: with `estimated` (mean,
/// variance) normalizes with them; without, with the batch's own statistics (MIOpen
/// then runs its training kernel without running or saved outputs).
pub fn infer_on_host(
    p: &BnProblem,
    x: &[u8],
    scale: &[u8],
    bias: &[u8],
    estimated: Option<(&[u8], &[u8])>,
    y_old: Option<&[u8]>,
    s: FwdScalars,
) -> Vec<f32> {
    let xv = convert::gathered(x, p.dtype, &p.x);
    let (scale, bias) = (param(p, scale), param(p, bias));
    let mut y = vec![0f32; p.shape.numel()];
    match estimated {
        Some((mean, var)) => engine::forward_inference(
            &p.shape,
            &xv,
            &scale,
            &bias,
            &param(p, mean),
            &param(p, var),
            s.eps,
            &mut y,
        ),
        None => {
            engine::forward_training(&p.shape, &xv, &scale, &bias, s.eps, &mut y);
        }
    }
    blend(&mut y, s.alpha, s.beta, y_old, p.dtype, &p.y);
    y
}

/// Old contents of the backward outputs, each read only when its beta is not 0.
#[derive(Clone, Copy, Default)]
pub struct BwdOld<'a> {
    pub dx: Option<&'a [u8]>,
    pub dscale: Option<&'a [u8]>,
    pub dbias: Option<&'a [u8]>,
}

/// Host part of `miopenBatchNormalizationBackward`. With `saved` (mean, inverse
/// variance) the forward pass's statistics are used as given; without, they are
/// recomputed from `x` with `eps`.
pub fn backward_on_host(
    p: &BnProblem,
    x: &[u8],
    dy: &[u8],
    scale: &[u8],
    saved: Option<(&[u8], &[u8])>,
    old: BwdOld,
    s: BwdScalars,
) -> BwdResult {
    let xv = convert::gathered(x, p.dtype, &p.x);
    let dyv = convert::gathered(dy, p.dtype, &p.y);
    let (mean, inv) = match saved {
        Some((m, iv)) => {
            let f64s = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
            (f64s(param(p, m)), f64s(param(p, iv)))
        }
        None => {
            let m = engine::moments(&p.shape, &xv);
            let inv = m.var.iter().map(|v| engine::inv_std(*v, s.eps)).collect();
            (m.mean, inv)
        }
    };
    let mut dx = vec![0f32; p.shape.numel()];
    let g = engine::backward(&p.shape, &xv, &dyv, &param(p, scale), &mean, &inv, &mut dx);
    let ldx = p.dx.as_ref().unwrap_or(&p.x);
    blend(&mut dx, s.alpha_data, s.beta_data, old.dx, p.dtype, ldx);
    let (mut dscale, mut dbias) = (to_f32(&g.dscale), to_f32(&g.dbias));
    let (a, b) = (s.alpha_param, s.beta_param);
    blend(&mut dscale, a, b, old.dscale, p.param_dtype, &p.param);
    blend(&mut dbias, a, b, old.dbias, p.param_dtype, &p.param);
    BwdResult { dx, dscale, dbias }
}

/// Stores `vals` into `bytes` on the shim's pool (never on rayon's global one).
fn store(pool: &rayon::ThreadPool, vals: &[f32], dt: DType, l: &Layout5, bytes: &mut [u8]) {
    pool.install(|| convert::store(vals, Blend::PLAIN, dt, l, bytes));
}

/// `out = alpha * out + beta * old`; `old` is read only when `beta != 0`.
fn blend(out: &mut [f32], alpha: f32, beta: f32, old: Option<&[u8]>, dt: DType, l: &Layout5) {
    match old {
        Some(bytes) if beta != 0.0 => {
            let mut o = convert::gathered(bytes, dt, l);
            convert::blend_into(&mut o, out, Blend { alpha, beta });
            out.copy_from_slice(&o);
        }
        _ => convert::scale(out, alpha),
    }
}

/// Device pointers of a forward-training call (null where the caller passed null).
pub struct TrainBuffers {
    pub x: *const c_void,
    pub y: *mut c_void,
    pub scale: *const c_void,
    pub bias: *const c_void,
    pub running_mean: *mut c_void,
    pub running_var: *mut c_void,
    pub saved_mean: *mut c_void,
    pub saved_inv_var: *mut c_void,
}

/// Device pointers of an inference call.
pub struct InferBuffers {
    pub x: *const c_void,
    pub y: *mut c_void,
    pub scale: *const c_void,
    pub bias: *const c_void,
    pub mean: *const c_void,
    pub var: *const c_void,
}

/// Device pointers of a backward call.
pub struct BwdBuffers {
    pub x: *const c_void,
    pub dy: *const c_void,
    pub dx: *mut c_void,
    pub scale: *const c_void,
    pub dscale: *mut c_void,
    pub dbias: *mut c_void,
    pub saved_mean: *const c_void,
    pub saved_inv_var: *const c_void,
}

/// Both pointers, or neither (MIOpen uses a pair only when both are given).
fn pair<T>(a: *mut T, b: *mut T) -> Option<(*mut T, *mut T)> {
    (!a.is_null() && !b.is_null()).then_some((a, b))
}

fn require(ptrs: &[(&str, *const c_void)]) -> ShimResult<()> {
    match ptrs.iter().find(|(_, p)| p.is_null()) {
        Some((name, _)) => Err(ShimError::bad_parm(format!("{name} is null"))),
        None => Ok(()),
    }
}

/// A staging buffer for an output: its current contents when they are needed (blending
/// with beta, or gaps a dense write would clobber), otherwise uninitialized.
fn output_buffer(
    tr: &mut Transfers,
    dev: *mut c_void,
    l: &Layout5,
    dt: DType,
    read: bool,
) -> ShimResult<usize> {
    if read || !l.is_dense() {
        tr.download(dev, bytes_of(l, dt))
    } else {
        tr.buffer(bytes_of(l, dt))
    }
}

fn record(tr: &Transfers, compute: std::time::Duration, p: &BnProblem) -> CallRecord {
    CallRecord {
        compute,
        copy: tr.time(),
        bytes_to_host: tr.bytes_to_host,
        bytes_to_device: tr.bytes_to_device,
        flops: p.shape.flops(),
        ..Default::default()
    }
}

/// Computes one `miopenBatchNormalizationForwardTraining` call on the CPU.
pub fn run_training(
    rt: &'static Runtime,
    handle: miopenHandle_t,
    p: &BnProblem,
    b: &TrainBuffers,
    s: FwdScalars,
) -> ShimResult<CallRecord> {
    require(&[
        ("x", b.x),
        ("y", b.y),
        ("bnScale", b.scale),
        ("bnBias", b.bias),
    ])?;
    let running = pair(b.running_mean, b.running_var);
    let saved = pair(b.saved_mean, b.saved_inv_var);
    let stream = stream_of(rt, handle)?;
    let (hip, pool) = (rt.hip()?, rt.pool()?);
    let (dt, pdt, pb) = (p.dtype, p.param_dtype, bytes_of(&p.param, p.param_dtype));
    let mut tr = Transfers::new(hip, stream);
    let bx = tr.download(b.x, bytes_of(&p.x, dt))?;
    let bs = tr.download(b.scale, pb)?;
    let bb = tr.download(b.bias, pb)?;
    let by = output_buffer(&mut tr, b.y, &p.y, dt, s.beta != 0.0)?;
    let br = running
        .map(|(m, v)| Ok::<_, ShimError>((tr.download(m, pb)?, tr.download(v, pb)?)))
        .transpose()?;
    let bsv = saved
        .map(|(m, v)| {
            Ok::<_, ShimError>((
                output_buffer(&mut tr, m, &p.param, pdt, false)?,
                output_buffer(&mut tr, v, &p.param, pdt, false)?,
            ))
        })
        .transpose()?;
    tr.sync()?;

    let t = Instant::now();
    let res = {
        let (x, scale, bias, y) = (tr.bytes(bx), tr.bytes(bs), tr.bytes(bb), tr.bytes(by));
        let running = br.map(|(m, v)| (tr.bytes(m), tr.bytes(v)));
        pool.install(|| train_on_host(p, x, scale, bias, Some(y), running, s))
    };
    store(&pool, &res.y, dt, &p.y, tr.bytes_mut(by));
    if let (Some((m, v)), Some((rm, rv))) = (br, &res.running) {
        store(&pool, rm, pdt, &p.param, tr.bytes_mut(m));
        store(&pool, rv, pdt, &p.param, tr.bytes_mut(v));
    }
    if let Some((m, v)) = bsv {
        store(&pool, &res.saved_mean, pdt, &p.param, tr.bytes_mut(m));
        store(&pool, &res.saved_inv_var, pdt, &p.param, tr.bytes_mut(v));
    }
    let compute = t.elapsed();

    tr.upload(b.y, by)?;
    if let (Some((dm, dv)), Some((m, v))) = (running, br) {
        tr.upload(dm, m)?;
        tr.upload(dv, v)?;
    }
    if let (Some((dm, dv)), Some((m, v))) = (saved, bsv) {
        tr.upload(dm, m)?;
        tr.upload(dv, v)?;
    }
    tr.sync()?;
    Ok(record(&tr, compute, p))
}

/// Computes one `miopenBatchNormalizationForwardInference` call on the CPU.
pub fn run_inference(
    rt: &'static Runtime,
    handle: miopenHandle_t,
    p: &BnProblem,
    b: &InferBuffers,
    s: FwdScalars,
) -> ShimResult<CallRecord> {
    require(&[
        ("x", b.x),
        ("y", b.y),
        ("bnScale", b.scale),
        ("bnBias", b.bias),
    ])?;
    let estimated = pair(b.mean as *mut c_void, b.var as *mut c_void);
    let stream = stream_of(rt, handle)?;
    let (hip, pool) = (rt.hip()?, rt.pool()?);
    let (dt, pb) = (p.dtype, bytes_of(&p.param, p.param_dtype));
    let mut tr = Transfers::new(hip, stream);
    let bx = tr.download(b.x, bytes_of(&p.x, dt))?;
    let bs = tr.download(b.scale, pb)?;
    let bb = tr.download(b.bias, pb)?;
    let be = estimated
        .map(|(m, v)| Ok::<_, ShimError>((tr.download(m, pb)?, tr.download(v, pb)?)))
        .transpose()?;
    let by = output_buffer(&mut tr, b.y, &p.y, dt, s.beta != 0.0)?;
    tr.sync()?;

    let t = Instant::now();
    let y = {
        let (x, scale, bias, y) = (tr.bytes(bx), tr.bytes(bs), tr.bytes(bb), tr.bytes(by));
        let estimated = be.map(|(m, v)| (tr.bytes(m), tr.bytes(v)));
        pool.install(|| infer_on_host(p, x, scale, bias, estimated, Some(y), s))
    };
    store(&pool, &y, dt, &p.y, tr.bytes_mut(by));
    let compute = t.elapsed();

    tr.upload(b.y, by)?;
    tr.sync()?;
    Ok(record(&tr, compute, p))
}

/// Computes one `miopenBatchNormalizationBackward` call on the CPU.
pub fn run_backward(
    rt: &'static Runtime,
    handle: miopenHandle_t,
    p: &BnProblem,
    b: &BwdBuffers,
    s: BwdScalars,
) -> ShimResult<CallRecord> {
    require(&[
        ("x", b.x),
        ("dy", b.dy),
        ("dx", b.dx),
        ("bnScale", b.scale),
        ("resultBnScaleDiff", b.dscale),
        ("resultBnBiasDiff", b.dbias),
    ])?;
    let saved = pair(b.saved_mean as *mut c_void, b.saved_inv_var as *mut c_void);
    let ldx = p.dx.as_ref().unwrap_or(&p.x);
    let stream = stream_of(rt, handle)?;
    let (hip, pool) = (rt.hip()?, rt.pool()?);
    let (dt, pdt, pb) = (p.dtype, p.param_dtype, bytes_of(&p.param, p.param_dtype));
    let mut tr = Transfers::new(hip, stream);
    let bx = tr.download(b.x, bytes_of(&p.x, dt))?;
    let bdy = tr.download(b.dy, bytes_of(&p.y, dt))?;
    let bs = tr.download(b.scale, pb)?;
    let bsv = saved
        .map(|(m, v)| Ok::<_, ShimError>((tr.download(m, pb)?, tr.download(v, pb)?)))
        .transpose()?;
    let bdx = output_buffer(&mut tr, b.dx, ldx, dt, s.beta_data != 0.0)?;
    let read_params = s.beta_param != 0.0;
    let bds = output_buffer(&mut tr, b.dscale, &p.param, pdt, read_params)?;
    let bdb = output_buffer(&mut tr, b.dbias, &p.param, pdt, read_params)?;
    tr.sync()?;

    let t = Instant::now();
    let res = {
        let (x, dy, scale) = (tr.bytes(bx), tr.bytes(bdy), tr.bytes(bs));
        let saved = bsv.map(|(m, v)| (tr.bytes(m), tr.bytes(v)));
        let old = BwdOld {
            dx: Some(tr.bytes(bdx)),
            dscale: Some(tr.bytes(bds)),
            dbias: Some(tr.bytes(bdb)),
        };
        pool.install(|| backward_on_host(p, x, dy, scale, saved, old, s))
    };
    store(&pool, &res.dx, dt, ldx, tr.bytes_mut(bdx));
    store(&pool, &res.dscale, pdt, &p.param, tr.bytes_mut(bds));
    store(&pool, &res.dbias, pdt, &p.param, tr.bytes_mut(bdb));
    let compute = t.elapsed();

    tr.upload(b.dx, bdx)?;
    tr.upload(b.dscale, bds)?;
    tr.upload(b.dbias, bdb)?;
    tr.sync()?;
    Ok(record(&tr, compute, p))
}
