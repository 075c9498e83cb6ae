//! `miopenConvolutionForwardBias` and `miopenConvolutionBackwardBias`.

use std::ffi::c_void;

use super::{fail, guard, ms, to_gpu};
use crate::config::{Op, Target};
use crate::describe::read_tensor;
use crate::error::ShimResult;
use crate::execute::{run_backward_bias, run_forward_bias, scalars};
use crate::ffi::miopen::*;
use crate::real::miopen::Forwarded;
use crate::runtime::{self, Runtime};
use crate::stats::{CallRecord, STATS};

type T = miopenTensorDescriptor_t;

fn bias_call(
    name: &'static str,
    run: impl FnOnce(&'static Runtime) -> ShimResult<(CallRecord, String)>,
    gpu: impl FnOnce(&Forwarded) -> Option<miopenStatus_t>,
) -> miopenStatus_t {
    let op = Op::ConvBias;
    let rt = runtime::get();
    if rt.config.target(op) == Target::Gpu {
        return to_gpu(
            name,
            op,
            if rt.config.disabled {
                "RDNA1SHIM_DISABLE=1"
            } else {
                op.env_var()
            },
            gpu,
        );
    }
    match run(rt) {
        Ok((rec, what)) => {
            STATS.record_cpu(op, &rec);
            tracing::debug!(
                "{name}: cpu {what} compute {:.3} ms copies {:.3} ms",
                ms(rec.compute),
                ms(rec.copy)
            );
            miopenStatusSuccess
        }
        Err(e) => fail(name, op, &e),
    }
}

/// # Safety
/// MIOpen's contract: valid handle, descriptors and device pointers.
#[no_mangle]
pub unsafe extern "C" fn miopenConvolutionForwardBias(
    handle: miopenHandle_t,
    alpha: *const c_void,
    b_desc: T,
    b: *const c_void,
    beta: *const c_void,
    y_desc: T,
    y: *mut c_void,
) -> miopenStatus_t {
    const NAME: &str = "miopenConvolutionForwardBias";
    guard(NAME, || {
        bias_call(
            NAME,
            |rt| {
                let g = rt.getters()?;
                let (bd, yd) = (read_tensor(g, b_desc, "b")?, read_tensor(g, y_desc, "y")?);
                let (a, be) = scalars(alpha, beta)?;
                let rec = run_forward_bias(rt, handle, &bd, b, &yd, y, a, be)?;
                Ok((
                    rec,
                    format!("{} y={:?} alpha={a} beta={be}", yd.dtype.name(), yd.dims),
                ))
            },
            |f| {
                f.miopenConvolutionForwardBias
                    .map(|r| r(handle, alpha, b_desc, b, beta, y_desc, y))
            },
        )
    })
}

/// # Safety
/// MIOpen's contract: valid handle, descriptors and device pointers.
#[no_mangle]
pub unsafe extern "C" fn miopenConvolutionBackwardBias(
    handle: miopenHandle_t,
    alpha: *const c_void,
    dy_desc: T,
    dy: *const c_void,
    beta: *const c_void,
    db_desc: T,
    db: *mut c_void,
) -> miopenStatus_t {
    const NAME: &str = "miopenConvolutionBackwardBias";
    guard(NAME, || {
        bias_call(
            NAME,
            |rt| {
                let g = rt.getters()?;
                let (dyd, dbd) = (
                    read_tensor(g, dy_desc, "dy")?,
                    read_tensor(g, db_desc, "db")?,
                );
                let (a, be) = scalars(alpha, beta)?;
                let rec = run_backward_bias(rt, handle, &dyd, dy, &dbd, db, a, be)?;
                Ok((
                    rec,
                    format!("{} dy={:?} alpha={a} beta={be}", dyd.dtype.name(), dyd.dims),
                ))
            },
            |f| {
                f.miopenConvolutionBackwardBias
                    .map(|r| r(handle, alpha, dy_desc, dy, beta, db_desc, db))
            },
        )
    })
}
