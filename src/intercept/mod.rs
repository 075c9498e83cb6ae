//! The exported MIOpen entry points, one file per family. Each export is a thin
//! `extern "C"` function: guard against panics, decide CPU or GPU, decode, dispatch.
//! Shared decision logic lives here.

pub mod batchnorm;
pub mod bias;
pub mod conv_compute;
pub mod conv_find;
pub mod conv_query;
pub mod fusion;
pub mod passthrough;
mod passthrough_list;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use crate::config::{Op, Target, Unsupported};
use crate::describe::{self, ConvProblem, Direction};
use crate::error::{ShimError, ShimResult};
use crate::ffi::miopen::*;
use crate::real::miopen::Forwarded;
use crate::runtime::{self, Runtime};
use crate::stats::STATS;

/// Solution id the shim reports for its CPU implementation (ASCII "RDNA1CPU").
pub const CPU_SOLUTION_ID: u64 = 0x5244_4E41_3143_5055;

/// Runs an export's body; a panic becomes `miopenStatusInternalError` and a log line.
///
/// `RDNA1SHIM_TEST_PANIC=<export name>` makes that export panic on entry, so tests can
/// prove the containment; it is read once and costs one comparison otherwise.
pub(crate) fn guard(name: &'static str, body: impl FnOnce() -> miopenStatus_t) -> miopenStatus_t {
    static PANIC_IN: once_cell::sync::Lazy<Option<String>> =
        once_cell::sync::Lazy::new(|| std::env::var("RDNA1SHIM_TEST_PANIC").ok());
    match catch_unwind(AssertUnwindSafe(|| {
        if PANIC_IN.as_deref() == Some(name) {
            panic!("RDNA1SHIM_TEST_PANIC={name}");
        }
        if runtime::get().config.trace_all {
            tracing::info!(target: "rdna1shim_trace", "call {name} (intercepted by the shim)");
        }
        body()
    })) {
        Ok(s) => s,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let _ = catch_unwind(|| {
                tracing::error!(
                    "{name}: internal error (panic: {msg}); returning miopenStatusInternalError"
                )
            });
            miopenStatusInternalError
        }
    }
}

/// Calls the real MIOpen's version of an export; `call` is `None` when it was not found.
pub(crate) fn to_gpu(
    name: &'static str,
    op: Op,
    why: &str,
    call: impl FnOnce(&Forwarded) -> Option<miopenStatus_t>,
) -> miopenStatus_t {
    let rt = runtime::get();
    if rt.config.trace_all {
        tracing::info!(target: "rdna1shim_trace", "call {name} -> real MIOpen ({why})");
    } else {
        tracing::debug!("{name}: passed to MIOpen ({why})");
    }
    STATS.record_gpu(op);
    match call(&rt.forwarded) {
        Some(s) => s,
        None => {
            tracing::error!(
                "{name}: the real MIOpen has no {name}; returning miopenStatusNotInitialized"
            );
            miopenStatusNotInitialized
        }
    }
}

/// Logs a failed call and returns its status.
pub(crate) fn fail(name: &'static str, op: Op, e: &ShimError) -> miopenStatus_t {
    STATS.record_failure(op);
    if e.is_unsupported() {
        tracing::warn!("{name}: not supported on the CPU: {} (set RDNA1SHIM_UNSUPPORTED=gpu to pass such calls to MIOpen)", e.message);
    } else {
        tracing::error!("{name}: {e}");
    }
    e.status
}

/// Where a call goes: `Ok(Some(problem))` for the CPU, `Ok(None)` for the GPU (with the
/// reason), `Err` for a call to refuse.
pub(crate) enum Route {
    Cpu(Box<ConvProblem>),
    Gpu(&'static str),
}

/// Decides the route of a convolution call and decodes its problem.
#[allow(clippy::too_many_arguments)]
pub(crate) fn route_conv(
    rt: &Runtime,
    op: Op,
    direction: Direction,
    conv: miopenConvolutionDescriptor_t,
    x: miopenTensorDescriptor_t,
    w: miopenTensorDescriptor_t,
    y: miopenTensorDescriptor_t,
) -> ShimResult<Route> {
    if rt.config.target(op) == Target::Gpu {
        return Ok(Route::Gpu(if rt.config.disabled {
            "RDNA1SHIM_DISABLE=1"
        } else {
            op.env_var()
        }));
    }
    let decoded = (|| {
        let g = rt.getters()?;
        let c = describe::read_conv(g, conv)?;
        let (names, descs) = match direction {
            Direction::Forward => (["x", "w", "y"], [x, w, y]),
            Direction::BackwardData => (["dx", "w", "dy"], [x, w, y]),
            Direction::BackwardWeights => (["x", "dw", "dy"], [x, w, y]),
        };
        let tx = describe::read_tensor(g, descs[0], names[0])?;
        let tw = describe::read_tensor(g, descs[1], names[1])?;
        let ty = describe::read_tensor(g, descs[2], names[2])?;
        describe::conv_problem(direction, &c, &tx, &tw, &ty)
    })();
    match decoded {
        Ok(p) => Ok(Route::Cpu(Box::new(p))),
        Err(e) if e.is_unsupported() && rt.config.unsupported == Unsupported::Gpu => {
            tracing::warn!(
                "{}: {}; passing it to MIOpen (RDNA1SHIM_UNSUPPORTED=gpu)",
                op.name(),
                e.message
            );
            Ok(Route::Gpu("unsupported on the CPU"))
        }
        Err(e) => Err(e),
    }
}

/// Time the CPU engine is expected to take, reported to Find/GetSolution callers (ms).
pub(crate) fn estimated_ms(p: &ConvProblem) -> f32 {
    const NOMINAL_GFLOPS: f64 = 20.0;
    (p.shape.flops() / (NOMINAL_GFLOPS * 1e9) * 1e3) as f32
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
