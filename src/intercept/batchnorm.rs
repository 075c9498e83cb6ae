//! Batch-norm exports: `miopenBatchNormalizationForwardTraining`,
//! `miopenBatchNormalizationForwardInference` and `miopenBatchNormalizationBackward`,
//! switched together by `RDNA1SHIM_BATCHNORM` (`Op::BatchNorm`).

use std::ffi::c_void;

use super::{fail, guard, ms, to_gpu};
use crate::config::{Op, Target, Unsupported};
use crate::describe::{bn_mode, bn_problem, describe_bn, read_tensor, BnProblem};
use crate::error::ShimResult;
use crate::execute::scalars;
use crate::execute_bn::{
    run_backward, run_inference, run_training, BwdBuffers, BwdScalars, FwdScalars, InferBuffers,
    TrainBuffers,
};
use crate::ffi::miopen::*;
use crate::real::miopen::Forwarded;
use crate::runtime::{self, Runtime};
use crate::stats::{CallRecord, STATS};

type T = miopenTensorDescriptor_t;

/// Shared body: route, decode, compute on the CPU, record, log.
fn bn_call(
    name: &'static str,
    decode: impl FnOnce(&'static Runtime) -> ShimResult<BnProblem>,
    run: impl FnOnce(&'static Runtime, &BnProblem) -> ShimResult<(CallRecord, String)>,
    gpu: impl FnOnce(&Forwarded) -> Option<miopenStatus_t>,
) -> miopenStatus_t {
    let op = Op::BatchNorm;
    let rt = runtime::get();
    if rt.config.target(op) == Target::Gpu {
        let why = if rt.config.disabled {
            "RDNA1SHIM_DISABLE=1"
        } else {
            op.env_var()
        };
        return to_gpu(name, op, why, gpu);
    }
    let p = match decode(rt) {
        Ok(p) => p,
        Err(e) if e.is_unsupported() && rt.config.unsupported == Unsupported::Gpu => {
            tracing::warn!(
                "{name}: {}; passing it to MIOpen (RDNA1SHIM_UNSUPPORTED=gpu)",
                e.message
            );
            return to_gpu(name, op, "unsupported on the CPU", gpu);
        }
        Err(e) => return fail(name, op, &e),
    };
    match run(rt, &p) {
        Ok((rec, what)) => {
            STATS.record_cpu(op, &rec);
            let secs = rec.compute.as_secs_f64();
            tracing::debug!(
                "{name}: cpu {} {what} compute {:.3} ms ({:.1} GFLOP/s) copies {:.3} ms ({} B in, {} B out)",
                describe_bn(&p),
                secs * 1e3,
                if secs > 0.0 { rec.flops / secs * 1e-9 } else { 0.0 },
                ms(rec.copy),
                rec.bytes_to_host,
                rec.bytes_to_device
            );
            miopenStatusSuccess
        }
        Err(e) => fail(name, op, &e.with_context(&describe_bn(&p))),
    }
}

/// Reads the data and parameter descriptors of a call.
fn decode(
    rt: &Runtime,
    mode: miopenBatchNormMode_t,
    x: T,
    y: T,
    dx: Option<T>,
    param: T,
) -> ShimResult<BnProblem> {
    let g = rt.getters()?;
    let mode = bn_mode(mode)?;
    let yname = if dx.is_some() { "dy" } else { "y" };
    let tx = read_tensor(g, x, "x")?;
    let ty = read_tensor(g, y, yname)?;
    let tdx = dx.map(|d| read_tensor(g, d, "dx")).transpose()?;
    let tp = read_tensor(g, param, "bnScaleBiasMeanVar")?;
    bn_problem(mode, &tx, &ty, tdx.as_ref(), &tp)
}

/// # Safety
/// MIOpen's contract: valid handle, descriptors, host scalars and device pointers.
#[no_mangle]
pub unsafe extern "C" fn miopenBatchNormalizationForwardTraining(
    handle: miopenHandle_t,
    bn_mode: miopenBatchNormMode_t,
    alpha: *mut c_void,
    beta: *mut c_void,
    x_desc: T,
    x: *const c_void,
    y_desc: T,
    y: *mut c_void,
    bn_desc: T,
    bn_scale: *mut c_void,
    bn_bias: *mut c_void,
    exp_avg_factor: f64,
    running_mean: *mut c_void,
    running_var: *mut c_void,
    epsilon: f64,
    saved_mean: *mut c_void,
    saved_inv_var: *mut c_void,
) -> miopenStatus_t {
    const NAME: &str = "miopenBatchNormalizationForwardTraining";
    guard(NAME, || {
        bn_call(
            NAME,
            |rt| decode(rt, bn_mode, x_desc, y_desc, None, bn_desc),
            |rt, p| {
                let (a, b) = scalars(alpha, beta)?;
                let s = FwdScalars {
                    alpha: a,
                    beta: b,
                    eps: epsilon,
                    factor: exp_avg_factor,
                };
                let bufs = TrainBuffers {
                    x,
                    y,
                    scale: bn_scale,
                    bias: bn_bias,
                    running_mean,
                    running_var,
                    saved_mean,
                    saved_inv_var,
                };
                let rec = run_training(rt, handle, p, &bufs, s)?;
                let running = !running_mean.is_null() && !running_var.is_null();
                let saved = !saved_mean.is_null() && !saved_inv_var.is_null();
                Ok((
                    rec,
                    format!(
                        "training factor={exp_avg_factor} eps={epsilon} running={} saved={} alpha={a} beta={b}",
                        if running { "yes" } else { "no" },
                        if saved { "yes" } else { "no" },
                    ),
                ))
            },
            |f| {
                f.miopenBatchNormalizationForwardTraining.map(|r| {
                    r(
                        handle,
                        bn_mode,
                        alpha,
                        beta,
                        x_desc,
                        x,
                        y_desc,
                        y,
                        bn_desc,
                        bn_scale,
                        bn_bias,
                        exp_avg_factor,
                        running_mean,
                        running_var,
                        epsilon,
                        saved_mean,
                        saved_inv_var,
                    )
                })
            },
        )
    })
}

/// # Safety
/// MIOpen's contract: valid handle, descriptors, host scalars and device pointers.
#[no_mangle]
pub unsafe extern "C" fn miopenBatchNormalizationForwardInference(
    handle: miopenHandle_t,
    bn_mode: miopenBatchNormMode_t,
    alpha: *mut c_void,
    beta: *mut c_void,
    x_desc: T,
    x: *const c_void,
    y_desc: T,
    y: *mut c_void,
    bn_desc: T,
    bn_scale: *mut c_void,
    bn_bias: *mut c_void,
    estimated_mean: *mut c_void,
    estimated_var: *mut c_void,
    epsilon: f64,
) -> miopenStatus_t {
    const NAME: &str = "miopenBatchNormalizationForwardInference";
    guard(NAME, || {
        bn_call(
            NAME,
            |rt| decode(rt, bn_mode, x_desc, y_desc, None, bn_desc),
            |rt, p| {
                let (a, b) = scalars(alpha, beta)?;
                let s = FwdScalars {
                    alpha: a,
                    beta: b,
                    eps: epsilon,
                    factor: 0.0,
                };
                let bufs = InferBuffers {
                    x,
                    y,
                    scale: bn_scale,
                    bias: bn_bias,
                    mean: estimated_mean,
                    var: estimated_var,
                };
                let rec = run_inference(rt, handle, p, &bufs, s)?;
                let est = !estimated_mean.is_null() && !estimated_var.is_null();
                Ok((
                    rec,
                    format!(
                        "inference eps={epsilon} statistics={} alpha={a} beta={b}",
                        if est { "estimated" } else { "batch" }
                    ),
                ))
            },
            |f| {
                f.miopenBatchNormalizationForwardInference.map(|r| {
                    r(
                        handle,
                        bn_mode,
                        alpha,
                        beta,
                        x_desc,
                        x,
                        y_desc,
                        y,
                        bn_desc,
                        bn_scale,
                        bn_bias,
                        estimated_mean,
                        estimated_var,
                        epsilon,
                    )
                })
            },
        )
    })
}

/// # Safety
/// MIOpen's contract: valid handle, descriptors, host scalars and device pointers.
#[no_mangle]
pub unsafe extern "C" fn miopenBatchNormalizationBackward(
    handle: miopenHandle_t,
    bn_mode: miopenBatchNormMode_t,
    alpha_data_diff: *const c_void,
    beta_data_diff: *const c_void,
    alpha_param_diff: *const c_void,
    beta_param_diff: *const c_void,
    x_desc: T,
    x: *const c_void,
    dy_desc: T,
    dy: *const c_void,
    dx_desc: T,
    dx: *mut c_void,
    bn_desc: T,
    bn_scale: *const c_void,
    result_bn_scale_diff: *mut c_void,
    result_bn_bias_diff: *mut c_void,
    epsilon: f64,
    saved_mean: *const c_void,
    saved_inv_var: *const c_void,
) -> miopenStatus_t {
    const NAME: &str = "miopenBatchNormalizationBackward";
    guard(NAME, || {
        bn_call(
            NAME,
            |rt| decode(rt, bn_mode, x_desc, dy_desc, Some(dx_desc), bn_desc),
            |rt, p| {
                let (ad, bd) = scalars(alpha_data_diff, beta_data_diff)?;
                let (ap, bp) = scalars(alpha_param_diff, beta_param_diff)?;
                let s = BwdScalars {
                    alpha_data: ad,
                    beta_data: bd,
                    alpha_param: ap,
                    beta_param: bp,
                    eps: epsilon,
                };
                let bufs = BwdBuffers {
                    x,
                    dy,
                    dx,
                    scale: bn_scale,
                    dscale: result_bn_scale_diff,
                    dbias: result_bn_bias_diff,
                    saved_mean,
                    saved_inv_var,
                };
                let rec = run_backward(rt, handle, p, &bufs, s)?;
                let saved = !saved_mean.is_null() && !saved_inv_var.is_null();
                Ok((
                    rec,
                    format!(
                        "backward eps={epsilon} statistics={} alpha_data={ad} beta_data={bd} alpha_param={ap} beta_param={bp}",
                        if saved { "saved" } else { "recomputed" }
                    ),
                ))
            },
            |f| {
                f.miopenBatchNormalizationBackward.map(|r| {
                    r(
                        handle,
                        bn_mode,
                        alpha_data_diff,
                        beta_data_diff,
                        alpha_param_diff,
                        beta_param_diff,
                        x_desc,
                        x,
                        dy_desc,
                        dy,
                        dx_desc,
                        dx,
                        bn_desc,
                        bn_scale,
                        result_bn_scale_diff,
                        result_bn_bias_diff,
                        epsilon,
                        saved_mean,
                        saved_inv_var,
                    )
                })
            },
        )
    })
}
