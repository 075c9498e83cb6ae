//! Queries PyTorch and other clients make before a convolution: workspace sizes, the
//! immediate-mode solution list, and solution compilation. On the CPU route they are
//! answered consistently with the CPU implementation: one solution (GEMM, id
//! `CPU_SOLUTION_ID`), no GPU workspace, nothing to compile.

use super::{estimated_ms, fail, guard, route_conv, to_gpu, Route, CPU_SOLUTION_ID};
use crate::config::Op;
use crate::config_stats::EntryPoint;
use crate::describe::{describe, ConvProblem, Direction};
use crate::error::{ShimError, ShimResult};
use crate::ffi::miopen::*;
use crate::real::miopen::Forwarded;
use crate::runtime;

type T = miopenTensorDescriptor_t;
type C = miopenConvolutionDescriptor_t;

#[allow(clippy::too_many_arguments)]
fn query(
    name: &'static str,
    op: Op,
    direction: Direction,
    entry: EntryPoint,
    conv: C,
    (xd, wd, yd): (T, T, T),
    answer: impl FnOnce(&ConvProblem) -> ShimResult<String>,
    gpu: impl FnOnce(&Forwarded) -> Option<miopenStatus_t>,
) -> miopenStatus_t {
    let rt = runtime::get();
    let (p, d) = match route_conv(rt, op, direction, entry, conv, xd, wd, yd) {
        Ok(Route::Cpu(p, d)) => (p, d),
        Ok(Route::Gpu(d)) => return to_gpu(name, op, &d.rule.to_string(), gpu),
        Err(e) => return fail(name, op, &e),
    };
    match answer(&p) {
        Ok(what) => {
            tracing::debug!(
                "{name}: answered by the shim ({what}; route cpu by {}) for {}",
                d.rule,
                describe(&p)
            );
            miopenStatusSuccess
        }
        Err(e) => fail(name, op, &e),
    }
}

/// Writes `v` through an out-pointer the caller gave.
fn put<V>(out: *mut V, v: V, what: &str) -> ShimResult<()> {
    if out.is_null() {
        return Err(ShimError::bad_parm(format!("{what} is null")));
    }
    // SAFETY: non-null out-pointer from the caller.
    unsafe { out.write(v) };
    Ok(())
}

/// One export of a query family. `roles` maps the C argument names to the regular
/// convolution's (x, w, y) tensors.
macro_rules! conv_query {
    ($name:ident, $op:expr, $dir:expr, $entry:expr, ($a:ident, $b:ident, $c:ident) => ($x:ident, $w:ident, $y:ident),
     ($($p:ident: $t:ty),*), |$prob:ident| $answer:expr) => {
        /// # Safety
        /// MIOpen's contract: valid handle, descriptors and out-pointers.
        #[no_mangle]
        pub unsafe extern "C" fn $name(handle: miopenHandle_t, $a: T, $b: T, conv: C, $c: T, $($p: $t),*) -> miopenStatus_t {
            const NAME: &str = stringify!($name);
            guard(NAME, || {
                query(NAME, $op, $dir, $entry, conv, ($x, $w, $y), |$prob: &ConvProblem| $answer, |f| {
                    f.$name.map(|r| r(handle, $a, $b, conv, $c, $($p),*))
                })
            })
        }
    };
}

/// The three directions of one query, with their MIOpen argument orders:
/// forward (w, x, conv, y), backward-data (dy, w, conv, dx), backward-weights (dy, x, conv, dw).
macro_rules! conv_query_family {
    ([$fwd:ident, $bwd_data:ident, $bwd_weights:ident], $entry:expr, ($($p:ident: $t:ty),*), |$prob:ident| $answer:expr) => {
        conv_query!($fwd, Op::ConvFwd, Direction::Forward, $entry, (w_desc, x_desc, y_desc) => (x_desc, w_desc, y_desc),
            ($($p: $t),*), |$prob| $answer);
        conv_query!($bwd_data, Op::ConvBwdData, Direction::BackwardData, $entry, (dy_desc, w_desc, dx_desc) => (dx_desc, w_desc, dy_desc),
            ($($p: $t),*), |$prob| $answer);
        conv_query!($bwd_weights, Op::ConvBwdWeights, Direction::BackwardWeights, $entry, (dy_desc, x_desc, dw_desc) => (x_desc, dw_desc, dy_desc),
            ($($p: $t),*), |$prob| $answer);
    };
}

conv_query_family!(
    [
        miopenConvolutionForwardGetWorkSpaceSize,
        miopenConvolutionBackwardDataGetWorkSpaceSize,
        miopenConvolutionBackwardWeightsGetWorkSpaceSize
    ],
    EntryPoint::Workspace,
    (size: *mut usize),
    |_p| put(size, 0, "workSpaceSize").map(|_| "workspace 0".to_string())
);

conv_query_family!(
    [
        miopenConvolutionForwardGetSolutionCount,
        miopenConvolutionBackwardDataGetSolutionCount,
        miopenConvolutionBackwardWeightsGetSolutionCount
    ],
    EntryPoint::Solutions,
    (count: *mut usize),
    |_p| put(count, 1, "solutionCount").map(|_| "1 solution".to_string())
);

conv_query_family!(
    [
        miopenConvolutionForwardGetSolution,
        miopenConvolutionBackwardDataGetSolution,
        miopenConvolutionBackwardWeightsGetSolution
    ],
    EntryPoint::Solutions,
    (max: usize, count: *mut usize, solutions: *mut miopenConvSolution_t),
    |p| {
        if max < 1 {
            return Err(ShimError::bad_parm("maxSolutionCount is 0"));
        }
        if solutions.is_null() || count.is_null() {
            return Err(ShimError::bad_parm("solutions or solutionCount is null"));
        }
        let s = miopenConvSolution_t {
            time: estimated_ms(p),
            workspace_size: 0,
            solution_id: CPU_SOLUTION_ID,
            algorithm: miopenConvolutionAlgoGEMM,
        };
        put(solutions, s, "solutions")?;
        put(count, 1, "solutionCount").map(|_| format!("solution {CPU_SOLUTION_ID:#x}, GEMM, workspace 0"))
    }
);

conv_query_family!(
    [
        miopenConvolutionForwardGetSolutionWorkspaceSize,
        miopenConvolutionBackwardDataGetSolutionWorkspaceSize,
        miopenConvolutionBackwardWeightsGetSolutionWorkspaceSize
    ],
    EntryPoint::Solutions,
    (solution_id: u64, size: *mut usize),
    |_p| put(size, 0, "workSpaceSize").map(|_| format!("workspace 0 for solution {solution_id:#x}"))
);

conv_query_family!(
    [
        miopenConvolutionForwardCompileSolution,
        miopenConvolutionBackwardDataCompileSolution,
        miopenConvolutionBackwardWeightsCompileSolution
    ],
    EntryPoint::Compile,
    (solution_id: u64),
    |_p| Ok(format!("nothing to compile for solution {solution_id:#x}"))
);
