//! `miopenFindConvolution{Forward,BackwardData,BackwardWeights}Algorithm`. MIOpen runs
//! every candidate kernel here to time it; on the CPU route the shim runs nothing and
//! reports one result: the GEMM algorithm, no workspace, and the CPU's expected time.

use std::ffi::c_void;
use std::os::raw::c_int;

use super::{estimated_ms, fail, guard, route_conv, to_gpu, Route};
use crate::config::Op;
use crate::config_stats::EntryPoint;
use crate::describe::{describe, Direction};
use crate::error::ShimError;
use crate::ffi::miopen::*;
use crate::real::miopen::Forwarded;
use crate::runtime;

type T = miopenTensorDescriptor_t;
type C = miopenConvolutionDescriptor_t;

#[allow(clippy::too_many_arguments)]
fn find(
    name: &'static str,
    op: Op,
    direction: Direction,
    conv: C,
    (xd, wd, yd): (T, T, T),
    request: c_int,
    returned: *mut c_int,
    perf: *mut miopenConvAlgoPerf_t,
    gpu: impl FnOnce(&Forwarded) -> Option<miopenStatus_t>,
) -> miopenStatus_t {
    let rt = runtime::get();
    let (p, d) = match route_conv(rt, op, direction, EntryPoint::Find, conv, xd, wd, yd) {
        Ok(Route::Cpu(p, d)) => (p, d),
        Ok(Route::Gpu(d)) => return to_gpu(name, op, &d.rule.to_string(), gpu),
        Err(e) => return fail(name, op, &e),
    };
    if returned.is_null() || perf.is_null() || request < 1 {
        return fail(
            name,
            op,
            &ShimError::bad_parm(
                "returnedAlgoCount or perfResults is null, or requestAlgoCount < 1",
            ),
        );
    }
    let result = miopenConvAlgoPerf_t {
        algo: miopenConvolutionAlgoGEMM,
        time: estimated_ms(&p),
        memory: 0,
    };
    // SAFETY: non-null out-pointers with room for requestAlgoCount >= 1 results.
    unsafe {
        *perf = result;
        *returned = 1;
    }
    tracing::debug!(
        "{name}: answered by the shim (algo GEMM, workspace 0, nothing run; route cpu by {}) for {}",
        d.rule,
        describe(&p)
    );
    miopenStatusSuccess
}

/// # Safety
/// MIOpen's contract: valid handle, descriptors and pointers.
#[no_mangle]
pub unsafe extern "C" fn miopenFindConvolutionForwardAlgorithm(
    handle: miopenHandle_t,
    x_desc: T,
    x: *const c_void,
    w_desc: T,
    w: *const c_void,
    conv: C,
    y_desc: T,
    y: *mut c_void,
    request: c_int,
    returned: *mut c_int,
    perf: *mut miopenConvAlgoPerf_t,
    ws: *mut c_void,
    ws_size: usize,
    exhaustive: bool,
) -> miopenStatus_t {
    const NAME: &str = "miopenFindConvolutionForwardAlgorithm";
    guard(NAME, || {
        find(
            NAME,
            Op::ConvFwd,
            Direction::Forward,
            conv,
            (x_desc, w_desc, y_desc),
            request,
            returned,
            perf,
            |f| {
                f.miopenFindConvolutionForwardAlgorithm.map(|r| {
                    r(
                        handle, x_desc, x, w_desc, w, conv, y_desc, y, request, returned, perf, ws,
                        ws_size, exhaustive,
                    )
                })
            },
        )
    })
}

/// # Safety
/// MIOpen's contract: valid handle, descriptors and pointers.
#[no_mangle]
pub unsafe extern "C" fn miopenFindConvolutionBackwardDataAlgorithm(
    handle: miopenHandle_t,
    dy_desc: T,
    dy: *const c_void,
    w_desc: T,
    w: *const c_void,
    conv: C,
    dx_desc: T,
    dx: *mut c_void,
    request: c_int,
    returned: *mut c_int,
    perf: *mut miopenConvAlgoPerf_t,
    ws: *mut c_void,
    ws_size: usize,
    exhaustive: bool,
) -> miopenStatus_t {
    const NAME: &str = "miopenFindConvolutionBackwardDataAlgorithm";
    guard(NAME, || {
        find(
            NAME,
            Op::ConvBwdData,
            Direction::BackwardData,
            conv,
            (dx_desc, w_desc, dy_desc),
            request,
            returned,
            perf,
            |f| {
                f.miopenFindConvolutionBackwardDataAlgorithm.map(|r| {
                    r(
                        handle, dy_desc, dy, w_desc, w, conv, dx_desc, dx, request, returned, perf,
                        ws, ws_size, exhaustive,
                    )
                })
            },
        )
    })
}

/// # Safety
/// MIOpen's contract: valid handle, descriptors and pointers.
#[no_mangle]
pub unsafe extern "C" fn miopenFindConvolutionBackwardWeightsAlgorithm(
    handle: miopenHandle_t,
    dy_desc: T,
    dy: *const c_void,
    x_desc: T,
    x: *const c_void,
    conv: C,
    dw_desc: T,
    dw: *mut c_void,
    request: c_int,
    returned: *mut c_int,
    perf: *mut miopenConvAlgoPerf_t,
    ws: *mut c_void,
    ws_size: usize,
    exhaustive: bool,
) -> miopenStatus_t {
    const NAME: &str = "miopenFindConvolutionBackwardWeightsAlgorithm";
    guard(NAME, || {
        find(
            NAME,
            Op::ConvBwdWeights,
            Direction::BackwardWeights,
            conv,
            (x_desc, dw_desc, dy_desc),
            request,
            returned,
            perf,
            |f| {
                f.miopenFindConvolutionBackwardWeightsAlgorithm.map(|r| {
                    r(
                        handle, dy_desc, dy, x_desc, x, conv, dw_desc, dw, request, returned, perf,
                        ws, ws_size, exhaustive,
                    )
                })
            },
        )
    })
}
