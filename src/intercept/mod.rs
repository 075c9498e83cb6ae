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
use crate::config_stats::{EntryPoint, Slot, CONFIGS};
use crate::conv_config::ConvConfig;
use crate::describe::{self, ConvProblem, Direction};
use crate::error::{ShimError, ShimResult};
use crate::ffi::miopen::*;
use crate::real::miopen::Forwarded;
use crate::routes::Rule;
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

/// Where a call goes, and the rule that sent it there.
pub(crate) enum Route {
    Cpu(Box<ConvProblem>, Decision),
    Gpu(Decision),
}

/// The rule that routed a call, and its configuration's place in the per-configuration
/// table (`None` when the call could not be decoded or the table is full).
pub(crate) struct Decision {
    pub slot: Option<Slot>,
    pub rule: Rule,
}

impl Decision {
    /// Records a computing call's outcome for its configuration.
    pub fn record(&self, f: impl FnOnce(&crate::config_stats::ConfigTable, Slot)) {
        if let Some(s) = self.slot {
            f(&CONFIGS, s)
        }
    }
}

/// Decides the route of a convolution call, the same way for every entry point of a
/// configuration (Find, workspace and solution queries, compile, compute), and decodes
/// its problem. A configuration listed in the routes file goes where the file says;
/// any other follows its operation's switch. `Err` is a call to refuse.
#[allow(clippy::too_many_arguments)]
pub(crate) fn route_conv(
    rt: &Runtime,
    op: Op,
    direction: Direction,
    entry: EntryPoint,
    conv: miopenConvolutionDescriptor_t,
    x: miopenTensorDescriptor_t,
    w: miopenTensorDescriptor_t,
    y: miopenTensorDescriptor_t,
) -> ShimResult<Route> {
    if rt.config.disabled {
        return Ok(Route::Gpu(Decision {
            slot: None,
            rule: Rule::Disabled,
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
        let p = describe::conv_problem(direction, &c, &tx, &tw, &ty)?;
        Ok::<_, ShimError>((p, describe::read_deterministic(g, conv)))
    })();
    let switch = rt.config.target(op);
    let by_switch = Rule::Switch {
        op,
        target: switch,
        unlisted: rt.routes.is_some(),
    };
    match decoded {
        Ok((p, deterministic)) => {
            let config = ConvConfig::of(&p, deterministic);
            let (target, rule) = match rt.routes.as_ref().and_then(|r| r.get(&config)) {
                Some((t, line)) => (t, Rule::RoutesFile { line }),
                None => (switch, by_switch),
            };
            let slot = CONFIGS.note(&p, config, entry, target, &rule);
            let d = Decision { slot, rule };
            Ok(match target {
                Target::Cpu => Route::Cpu(Box::new(p), d),
                Target::Gpu => Route::Gpu(d),
            })
        }
        // The switch sends the operation to MIOpen, which judges the call itself.
        Err(_) if switch == Target::Gpu => Ok(Route::Gpu(Decision {
            slot: None,
            rule: by_switch,
        })),
        Err(e) if e.is_unsupported() && rt.config.unsupported == Unsupported::Gpu => {
            tracing::warn!(
                "{}: {}; passing it to MIOpen (RDNA1SHIM_UNSUPPORTED=gpu)",
                op.name(),
                e.message
            );
            Ok(Route::Gpu(Decision {
                slot: None,
                rule: Rule::Unsupported,
            }))
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
