//! Exports that compute a convolution: `miopenConvolution{Forward,BackwardData,
//! BackwardWeights}` and their immediate-mode twins `*Immediate`.

use std::ffi::c_void;
use std::os::raw::c_int;

use super::{fail, guard, route_conv, to_gpu, Route};
use crate::config::Op;
use crate::config_stats::EntryPoint;
use crate::describe::{describe, Direction};
use crate::execute::{run_conv, scalars, ConvBuffers};
use crate::ffi::miopen::*;
use crate::runtime;
use crate::stats::STATS;

type T = miopenTensorDescriptor_t;
type C = miopenConvolutionDescriptor_t;

/// Shared body: route, compute on the CPU, record, log.
#[allow(clippy::too_many_arguments)]
fn compute(
    name: &'static str,
    op: Op,
    direction: Direction,
    entry: EntryPoint,
    handle: miopenHandle_t,
    conv: C,
    (xd, wd, yd): (T, T, T),
    bufs: ConvBuffers,
    alpha_beta: Option<(*const c_void, *const c_void)>,
    gpu: impl FnOnce(&crate::real::miopen::Forwarded) -> Option<miopenStatus_t>,
) -> miopenStatus_t {
    let rt = runtime::get();
    let (p, d) = match route_conv(rt, op, direction, entry, conv, xd, wd, yd) {
        Ok(Route::Cpu(p, d)) => (p, d),
        Ok(Route::Gpu(d)) => {
            d.record(|t, s| t.record_gpu(s));
            return to_gpu(name, op, &d.rule.to_string(), gpu);
        }
        Err(e) => return fail(name, op, &e),
    };
    let (alpha, beta) = match alpha_beta.map(|(a, b)| scalars(a, b)).transpose() {
        Ok(ab) => ab.unwrap_or((1.0, 0.0)),
        Err(e) => {
            d.record(|t, s| t.record_failure(s));
            return fail(name, op, &e);
        }
    };
    match run_conv(rt, handle, &p, &bufs, alpha, beta) {
        Ok(rec) => {
            STATS.record_cpu(op, &rec);
            d.record(|t, s| t.record_cpu(s, &rec));
            STATS.record_config(
                crate::repro::driver_command(&p),
                crate::repro::direction_flag(direction),
            );
            crate::profile::set_last(&rec);
            tracing::debug!(
                "{name}: cpu (by {}) {} alpha={alpha} beta={beta} {}",
                d.rule,
                describe(&p),
                crate::execute::timing_line(&p, &rec)
            );
            miopenStatusSuccess
        }
        Err(e) => {
            d.record(|t, s| t.record_failure(s));
            fail(name, op, &e.with_context(&describe(&p)))
        }
    }
}

/// # Safety
/// MIOpen's contract: valid handle, descriptors and device pointers.
#[no_mangle]
pub unsafe extern "C" fn miopenConvolutionForward(
    handle: miopenHandle_t,
    alpha: *const c_void,
    x_desc: T,
    x: *const c_void,
    w_desc: T,
    w: *const c_void,
    conv: C,
    algo: c_int,
    beta: *const c_void,
    y_desc: T,
    y: *mut c_void,
    ws: *mut c_void,
    ws_size: usize,
) -> miopenStatus_t {
    const NAME: &str = "miopenConvolutionForward";
    guard(NAME, || {
        let bufs = ConvBuffers {
            x: x as *mut c_void,
            w: w as *mut c_void,
            y,
        };
        compute(
            NAME,
            Op::ConvFwd,
            Direction::Forward,
            EntryPoint::Classic,
            handle,
            conv,
            (x_desc, w_desc, y_desc),
            bufs,
            Some((alpha, beta)),
            |f| {
                f.miopenConvolutionForward.map(|r| {
                    r(
                        handle, alpha, x_desc, x, w_desc, w, conv, algo, beta, y_desc, y, ws,
                        ws_size,
                    )
                })
            },
        )
    })
}

/// # Safety
/// MIOpen's contract: valid handle, descriptors and device pointers.
#[no_mangle]
pub unsafe extern "C" fn miopenConvolutionBackwardData(
    handle: miopenHandle_t,
    alpha: *const c_void,
    dy_desc: T,
    dy: *const c_void,
    w_desc: T,
    w: *const c_void,
    conv: C,
    algo: c_int,
    beta: *const c_void,
    dx_desc: T,
    dx: *mut c_void,
    ws: *mut c_void,
    ws_size: usize,
) -> miopenStatus_t {
    const NAME: &str = "miopenConvolutionBackwardData";
    guard(NAME, || {
        let bufs = ConvBuffers {
            x: dx,
            w: w as *mut c_void,
            y: dy as *mut c_void,
        };
        compute(
            NAME,
            Op::ConvBwdData,
            Direction::BackwardData,
            EntryPoint::Classic,
            handle,
            conv,
            (dx_desc, w_desc, dy_desc),
            bufs,
            Some((alpha, beta)),
            |f| {
                f.miopenConvolutionBackwardData.map(|r| {
                    r(
                        handle, alpha, dy_desc, dy, w_desc, w, conv, algo, beta, dx_desc, dx, ws,
                        ws_size,
                    )
                })
            },
        )
    })
}

/// # Safety
/// MIOpen's contract: valid handle, descriptors and device pointers.
#[no_mangle]
pub unsafe extern "C" fn miopenConvolutionBackwardWeights(
    handle: miopenHandle_t,
    alpha: *const c_void,
    dy_desc: T,
    dy: *const c_void,
    x_desc: T,
    x: *const c_void,
    conv: C,
    algo: c_int,
    beta: *const c_void,
    dw_desc: T,
    dw: *mut c_void,
    ws: *mut c_void,
    ws_size: usize,
) -> miopenStatus_t {
    const NAME: &str = "miopenConvolutionBackwardWeights";
    guard(NAME, || {
        let bufs = ConvBuffers {
            x: x as *mut c_void,
            w: dw,
            y: dy as *mut c_void,
        };
        compute(
            NAME,
            Op::ConvBwdWeights,
            Direction::BackwardWeights,
            EntryPoint::Classic,
            handle,
            conv,
            (x_desc, dw_desc, dy_desc),
            bufs,
            Some((alpha, beta)),
            |f| {
                f.miopenConvolutionBackwardWeights.map(|r| {
                    r(
                        handle, alpha, dy_desc, dy, x_desc, x, conv, algo, beta, dw_desc, dw, ws,
                        ws_size,
                    )
                })
            },
        )
    })
}

/// # Safety
/// MIOpen's contract: valid handle, descriptors and device pointers.
#[no_mangle]
pub unsafe extern "C" fn miopenConvolutionForwardImmediate(
    handle: miopenHandle_t,
    w_desc: T,
    w: *const c_void,
    x_desc: T,
    x: *const c_void,
    conv: C,
    y_desc: T,
    y: *mut c_void,
    ws: *mut c_void,
    ws_size: usize,
    solution_id: u64,
) -> miopenStatus_t {
    const NAME: &str = "miopenConvolutionForwardImmediate";
    guard(NAME, || {
        let bufs = ConvBuffers {
            x: x as *mut c_void,
            w: w as *mut c_void,
            y,
        };
        compute(
            NAME,
            Op::ConvFwd,
            Direction::Forward,
            EntryPoint::Immediate,
            handle,
            conv,
            (x_desc, w_desc, y_desc),
            bufs,
            None,
            |f| {
                f.miopenConvolutionForwardImmediate.map(|r| {
                    r(
                        handle,
                        w_desc,
                        w,
                        x_desc,
                        x,
                        conv,
                        y_desc,
                        y,
                        ws,
                        ws_size,
                        solution_id,
                    )
                })
            },
        )
    })
}

/// # Safety
/// MIOpen's contract: valid handle, descriptors and device pointers.
#[no_mangle]
pub unsafe extern "C" fn miopenConvolutionBackwardDataImmediate(
    handle: miopenHandle_t,
    dy_desc: T,
    dy: *const c_void,
    w_desc: T,
    w: *const c_void,
    conv: C,
    dx_desc: T,
    dx: *mut c_void,
    ws: *mut c_void,
    ws_size: usize,
    solution_id: u64,
) -> miopenStatus_t {
    const NAME: &str = "miopenConvolutionBackwardDataImmediate";
    guard(NAME, || {
        let bufs = ConvBuffers {
            x: dx,
            w: w as *mut c_void,
            y: dy as *mut c_void,
        };
        compute(
            NAME,
            Op::ConvBwdData,
            Direction::BackwardData,
            EntryPoint::Immediate,
            handle,
            conv,
            (dx_desc, w_desc, dy_desc),
            bufs,
            None,
            |f| {
                f.miopenConvolutionBackwardDataImmediate.map(|r| {
                    r(
                        handle,
                        dy_desc,
                        dy,
                        w_desc,
                        w,
                        conv,
                        dx_desc,
                        dx,
                        ws,
                        ws_size,
                        solution_id,
                    )
                })
            },
        )
    })
}

/// # Safety
/// MIOpen's contract: valid handle, descriptors and device pointers.
#[no_mangle]
pub unsafe extern "C" fn miopenConvolutionBackwardWeightsImmediate(
    handle: miopenHandle_t,
    dy_desc: T,
    dy: *const c_void,
    x_desc: T,
    x: *const c_void,
    conv: C,
    dw_desc: T,
    dw: *mut c_void,
    ws: *mut c_void,
    ws_size: usize,
    solution_id: u64,
) -> miopenStatus_t {
    const NAME: &str = "miopenConvolutionBackwardWeightsImmediate";
    guard(NAME, || {
        let bufs = ConvBuffers {
            x: x as *mut c_void,
            w: dw,
            y: dy as *mut c_void,
        };
        compute(
            NAME,
            Op::ConvBwdWeights,
            Direction::BackwardWeights,
            EntryPoint::Immediate,
            handle,
            conv,
            (x_desc, dw_desc, dy_desc),
            bufs,
            None,
            |f| {
                f.miopenConvolutionBackwardWeightsImmediate.map(|r| {
                    r(
                        handle,
                        dy_desc,
                        dy,
                        x_desc,
                        x,
                        conv,
                        dw_desc,
                        dw,
                        ws,
                        ws_size,
                        solution_id,
                    )
                })
            },
        )
    })
}
