//! MIOpen's fusion-plan API as PyTorch's `miopen_convolution_relu` uses it: the shim keeps
//! a shadow record of each plan's operators (decoded when they are created) and of each
//! argument set, and executes convolution (+ bias) (+ activation) plans on the CPU. The
//! real plan is built alongside, so a plan the shim cannot run — other operators, other
//! orders, alpha/beta it does not model — goes to MIOpen with a warning naming its ops.

use std::collections::HashMap;
use std::ffi::c_void;
use std::os::raw::c_int;
use std::sync::Mutex;

use once_cell::sync::Lazy;

use super::{fail, guard, to_gpu};
use crate::activation::{self, Activation};
use crate::config::{Op, Target};
use crate::describe::{
    self, conv_problem, describe as describe_problem, ConvDesc, Direction, TensorDesc,
};
use crate::error::{ShimError, ShimResult};
use crate::execute::{run_conv_fused, scalars, ConvBuffers, Fused, FusedBias};
use crate::ffi::miopen::*;
use crate::layout::Layout5;
use crate::runtime;
use crate::stats::STATS;

type P = *mut c_void; // miopenFusionPlanDescriptor_t
type O = *mut c_void; // miopenFusionOpDescriptor_t
type A = *mut c_void; // miopenOperatorArgs_t
type T = miopenTensorDescriptor_t;

/// An operator of a plan, as the shim understood it at creation.
#[derive(Clone, Debug)]
enum OpKind {
    Conv {
        conv: ConvDesc,
        w: TensorDesc,
    },
    Bias {
        b: TensorDesc,
    },
    Activation {
        mode: c_int,
    },
    /// An operator the shim does not run (its MIOpen function name), or one it could not decode.
    Other(String),
}

impl OpKind {
    fn name(&self) -> String {
        match self {
            OpKind::Conv { .. } => "conv".into(),
            OpKind::Bias { .. } => "bias".into(),
            OpKind::Activation { mode } => format!(
                "activation:{}",
                activation::mode_name(*mode).unwrap_or("unknown")
            ),
            OpKind::Other(n) => n.clone(),
        }
    }
}

#[derive(Default)]
struct PlanRecord {
    ops: Vec<(usize, OpKind)>,
    /// The real plan was compiled (needed before MIOpen can execute it).
    compiled_on_gpu: bool,
}

/// Arguments of one operator, as set with `miopenSetOpArgs*`.
#[derive(Clone, Copy, Debug)]
enum OpArgs {
    Conv {
        alpha: f32,
        beta: f32,
        w: usize,
    },
    Bias {
        alpha: f32,
        beta: f32,
        b: usize,
    },
    Activation {
        alpha: f32,
        beta: f32,
        a: f64,
        b: f64,
        g: f64,
    },
}

static PLANS: Lazy<Mutex<HashMap<usize, PlanRecord>>> = Lazy::new(|| Mutex::new(HashMap::new()));
static ARGS: Lazy<Mutex<HashMap<usize, HashMap<usize, OpArgs>>>> =
    Lazy::new(|| Mutex::new(HashMap::new()));

fn plans() -> std::sync::MutexGuard<'static, HashMap<usize, PlanRecord>> {
    PLANS.lock().unwrap_or_else(|e| e.into_inner())
}

fn args() -> std::sync::MutexGuard<'static, HashMap<usize, HashMap<usize, OpArgs>>> {
    ARGS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Calls a real fusion function; `None` when the real MIOpen lacks it.
fn real(name: &str) -> Option<usize> {
    runtime::get().miopen_symbol(name).ok().map(|p| p as usize)
}

macro_rules! call_real {
    ($name:expr, fn($($t:ty),*), $($a:expr),*) => {{
        match real($name) {
            // SAFETY: the real MIOpen function of that name with its C signature.
            Some(p) => unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($t),*) -> miopenStatus_t>(p)($($a),*) },
            None => {
                tracing::error!("{}: the real MIOpen has no such function", $name);
                miopenStatusNotInitialized
            }
        }
    }};
}

/// Records an operator after the real MIOpen created it.
fn record_op(plan: P, op: *mut O, kind: impl FnOnce() -> ShimResult<OpKind>) {
    if op.is_null() {
        return;
    }
    // SAFETY: the real function succeeded and wrote the operator handle.
    let op = unsafe { *op } as usize;
    let kind =
        kind().unwrap_or_else(|e| OpKind::Other(format!("undecodable operator ({})", e.message)));
    plans()
        .entry(plan as usize)
        .or_default()
        .ops
        .push((op, kind));
}

/// # Safety
/// MIOpen's contract.
#[no_mangle]
pub unsafe extern "C" fn miopenCreateFusionPlan(
    plan: *mut P,
    direction: c_int,
    input: T,
) -> miopenStatus_t {
    guard("miopenCreateFusionPlan", || {
        let s = call_real!(
            "miopenCreateFusionPlan",
            fn(*mut P, c_int, T),
            plan,
            direction,
            input
        );
        if s == miopenStatusSuccess && !plan.is_null() {
            let mut rec = PlanRecord::default();
            if direction != 0 {
                rec.ops.push((0, OpKind::Other("horizontal fusion".into())));
            }
            plans().insert(*plan as usize, rec);
        }
        s
    })
}

/// # Safety
/// MIOpen's contract.
#[no_mangle]
pub unsafe extern "C" fn miopenDestroyFusionPlan(plan: P) -> miopenStatus_t {
    guard("miopenDestroyFusionPlan", || {
        plans().remove(&(plan as usize));
        call_real!("miopenDestroyFusionPlan", fn(P), plan)
    })
}

/// # Safety
/// MIOpen's contract.
#[no_mangle]
pub unsafe extern "C" fn miopenCreateOpConvForward(
    plan: P,
    op: *mut O,
    conv: miopenConvolutionDescriptor_t,
    w: T,
) -> miopenStatus_t {
    guard("miopenCreateOpConvForward", || {
        let s = call_real!(
            "miopenCreateOpConvForward",
            fn(P, *mut O, miopenConvolutionDescriptor_t, T),
            plan,
            op,
            conv,
            w
        );
        if s == miopenStatusSuccess {
            record_op(plan, op, || {
                let g = runtime::get().getters()?;
                Ok(OpKind::Conv {
                    conv: describe::read_conv(g, conv)?,
                    w: describe::read_tensor(g, w, "w")?,
                })
            });
        }
        s
    })
}

/// # Safety
/// MIOpen's contract.
#[no_mangle]
pub unsafe extern "C" fn miopenCreateOpBiasForward(plan: P, op: *mut O, b: T) -> miopenStatus_t {
    guard("miopenCreateOpBiasForward", || {
        let s = call_real!("miopenCreateOpBiasForward", fn(P, *mut O, T), plan, op, b);
        if s == miopenStatusSuccess {
            record_op(plan, op, || {
                Ok(OpKind::Bias {
                    b: describe::read_tensor(runtime::get().getters()?, b, "bias")?,
                })
            });
        }
        s
    })
}

/// # Safety
/// MIOpen's contract.
#[no_mangle]
pub unsafe extern "C" fn miopenCreateOpActivationForward(
    plan: P,
    op: *mut O,
    mode: c_int,
) -> miopenStatus_t {
    guard("miopenCreateOpActivationForward", || {
        let s = call_real!(
            "miopenCreateOpActivationForward",
            fn(P, *mut O, c_int),
            plan,
            op,
            mode
        );
        if s == miopenStatusSuccess {
            record_op(plan, op, || Ok(OpKind::Activation { mode }));
        }
        s
    })
}

/// Operators the shim does not run: recorded by name so their plans go to MIOpen.
macro_rules! other_op {
    ($name:ident ( $($a:ident : $t:ty),* )) => {
        /// # Safety
        /// MIOpen's contract.
        #[no_mangle]
        pub unsafe extern "C" fn $name(plan: P, op: *mut O, $($a: $t),*) -> miopenStatus_t {
            guard(stringify!($name), || {
                let s = call_real!(stringify!($name), fn(P, *mut O, $($t),*), plan, op, $($a),*);
                if s == miopenStatusSuccess {
                    record_op(plan, op, || Ok(OpKind::Other(stringify!($name).into())));
                }
                s
            })
        }
    };
}
other_op!(miopenCreateOpActivationBackward(mode: c_int));
other_op!(miopenCreateOpBatchNormInference(bn_mode: c_int, desc: T));
other_op!(miopenCreateOpBatchNormForward(bn_mode: c_int, running: bool));
other_op!(miopenCreateOpBatchNormBackward(bn_mode: c_int));

fn set_args(a: A, op: O, v: OpArgs) {
    args().entry(a as usize).or_default().insert(op as usize, v);
}

/// # Safety
/// MIOpen's contract.
#[no_mangle]
pub unsafe extern "C" fn miopenSetOpArgsConvForward(
    a: A,
    op: O,
    alpha: *const c_void,
    beta: *const c_void,
    w: *const c_void,
) -> miopenStatus_t {
    guard("miopenSetOpArgsConvForward", || {
        if let Ok((al, be)) = scalars(alpha, beta) {
            set_args(
                a,
                op,
                OpArgs::Conv {
                    alpha: al,
                    beta: be,
                    w: w as usize,
                },
            );
        }
        call_real!(
            "miopenSetOpArgsConvForward",
            fn(A, O, *const c_void, *const c_void, *const c_void),
            a,
            op,
            alpha,
            beta,
            w
        )
    })
}

/// # Safety
/// MIOpen's contract.
#[no_mangle]
pub unsafe extern "C" fn miopenSetOpArgsBiasForward(
    a: A,
    op: O,
    alpha: *const c_void,
    beta: *const c_void,
    b: *const c_void,
) -> miopenStatus_t {
    guard("miopenSetOpArgsBiasForward", || {
        if let Ok((al, be)) = scalars(alpha, beta) {
            set_args(
                a,
                op,
                OpArgs::Bias {
                    alpha: al,
                    beta: be,
                    b: b as usize,
                },
            );
        }
        call_real!(
            "miopenSetOpArgsBiasForward",
            fn(A, O, *const c_void, *const c_void, *const c_void),
            a,
            op,
            alpha,
            beta,
            b
        )
    })
}

/// # Safety
/// MIOpen's contract.
#[no_mangle]
pub unsafe extern "C" fn miopenSetOpArgsActivForward(
    a: A,
    op: O,
    alpha: *const c_void,
    beta: *const c_void,
    act_a: f64,
    act_b: f64,
    act_g: f64,
) -> miopenStatus_t {
    guard("miopenSetOpArgsActivForward", || {
        if let Ok((al, be)) = scalars(alpha, beta) {
            set_args(
                a,
                op,
                OpArgs::Activation {
                    alpha: al,
                    beta: be,
                    a: act_a,
                    b: act_b,
                    g: act_g,
                },
            );
        }
        call_real!(
            "miopenSetOpArgsActivForward",
            fn(A, O, *const c_void, *const c_void, f64, f64, f64),
            a,
            op,
            alpha,
            beta,
            act_a,
            act_b,
            act_g
        )
    })
}

/// # Safety
/// MIOpen's contract.
#[no_mangle]
pub unsafe extern "C" fn miopenDestroyOperatorArgs(a: A) -> miopenStatus_t {
    guard("miopenDestroyOperatorArgs", || {
        args().remove(&(a as usize));
        call_real!("miopenDestroyOperatorArgs", fn(A), a)
    })
}

/// The plan's operators, if they are conv (+ bias) (+ activation) in that order.
fn cpu_plan(
    ops: &[(usize, OpKind)],
) -> Result<(usize, usize, Option<usize>, Option<usize>), String> {
    let names = || {
        ops.iter()
            .map(|(_, k)| k.name())
            .collect::<Vec<_>>()
            .join(" -> ")
    };
    let mut it = ops.iter().enumerate();
    let conv = match it.next() {
        Some((i, (_, OpKind::Conv { .. }))) => i,
        _ => {
            return Err(format!(
                "plan [{}] does not start with a convolution",
                names()
            ))
        }
    };
    let (mut bias, mut act) = (None, None);
    for (i, (_, k)) in it {
        match k {
            OpKind::Bias { .. } if bias.is_none() && act.is_none() => bias = Some(i),
            OpKind::Activation { mode }
                if act.is_none() && activation::mode_name(*mode).is_some() =>
            {
                act = Some(i)
            }
            _ => {
                return Err(format!(
                    "plan [{}] is not conv (+ bias) (+ activation)",
                    names()
                ))
            }
        }
    }
    Ok((conv, ops.len(), bias, act))
}

/// Whether the shim will run this plan on the CPU (`Ok`) or why not.
fn cpu_route(plan: P) -> Result<(), String> {
    let rt = runtime::get();
    if rt.config.target(Op::Fusion) == Target::Gpu {
        return Err(if rt.config.disabled {
            "RDNA1SHIM_DISABLE=1".into()
        } else {
            Op::Fusion.env_var().to_string()
        });
    }
    let p = plans();
    let rec = p
        .get(&(plan as usize))
        .ok_or("plan was not created through the shim")?;
    cpu_plan(&rec.ops).map(|_| ())
}

/// # Safety
/// MIOpen's contract.
#[no_mangle]
pub unsafe extern "C" fn miopenCompileFusionPlan(
    handle: miopenHandle_t,
    plan: P,
) -> miopenStatus_t {
    const NAME: &str = "miopenCompileFusionPlan";
    guard(NAME, || match cpu_route(plan) {
        Ok(()) => {
            tracing::debug!("{NAME}: nothing to compile (the plan runs on the CPU)");
            miopenStatusSuccess
        }
        Err(why) => {
            if let Some(rec) = plans().get_mut(&(plan as usize)) {
                rec.compiled_on_gpu = true;
            }
            to_gpu(NAME, Op::Fusion, &why, |_| {
                Some(call_real!(
                    "miopenCompileFusionPlan",
                    fn(miopenHandle_t, P),
                    handle,
                    plan
                ))
            })
        }
    })
}

/// # Safety
/// MIOpen's contract.
#[no_mangle]
pub unsafe extern "C" fn miopenExecuteFusionPlan(
    handle: miopenHandle_t,
    plan: P,
    x_desc: T,
    x: *const c_void,
    y_desc: T,
    y: *mut c_void,
    a: A,
) -> miopenStatus_t {
    const NAME: &str = "miopenExecuteFusionPlan";
    let gpu = |why: &str| {
        let needs_compile = plans()
            .get(&(plan as usize))
            .is_some_and(|r| !r.compiled_on_gpu);
        if needs_compile {
            tracing::warn!("{NAME}: {why}; compiling and running the plan in MIOpen");
            let s = call_real!(
                "miopenCompileFusionPlan",
                fn(miopenHandle_t, P),
                handle,
                plan
            );
            if s != miopenStatusSuccess {
                return s;
            }
            if let Some(rec) = plans().get_mut(&(plan as usize)) {
                rec.compiled_on_gpu = true;
            }
        }
        to_gpu(NAME, Op::Fusion, why, |_| {
            Some(call_real!(
                "miopenExecuteFusionPlan",
                fn(miopenHandle_t, P, T, *const c_void, T, *mut c_void, A),
                handle,
                plan,
                x_desc,
                x,
                y_desc,
                y,
                a
            ))
        })
    };
    guard(NAME, || {
        if let Err(why) = cpu_route(plan) {
            return gpu(&why);
        }
        match execute_on_cpu(handle, plan, x_desc, x, y_desc, y, a) {
            Ok(line) => {
                tracing::debug!("{NAME}: cpu {line}");
                miopenStatusSuccess
            }
            Err(e) if e.is_unsupported() => gpu(&e.message),
            Err(e) => fail(NAME, Op::Fusion, &e),
        }
    })
}

fn execute_on_cpu(
    handle: miopenHandle_t,
    plan: P,
    x_desc: T,
    x: *const c_void,
    y_desc: T,
    y: *mut c_void,
    a: A,
) -> ShimResult<String> {
    let rt = runtime::get();
    let ops = plans()
        .get(&(plan as usize))
        .map(|r| r.ops.clone())
        .ok_or_else(|| ShimError::bad_parm("unknown fusion plan"))?;
    let (ci, _, bi, ai) = cpu_plan(&ops).map_err(ShimError::not_implemented)?;
    let set = args().get(&(a as usize)).cloned().unwrap_or_default();
    let arg = |i: usize| set.get(&ops[i].0).copied();
    let (
        OpKind::Conv { conv, w },
        Some(OpArgs::Conv {
            alpha,
            beta,
            w: wptr,
        }),
    ) = (&ops[ci].1, arg(ci))
    else {
        return Err(ShimError::bad_parm(
            "the convolution operator has no arguments (miopenSetOpArgsConvForward)",
        ));
    };
    let g = rt.getters()?;
    let (xd, yd) = (
        describe::read_tensor(g, x_desc, "x")?,
        describe::read_tensor(g, y_desc, "y")?,
    );
    let p = conv_problem(Direction::Forward, conv, &xd, w, &yd)?;
    let bias = match bi {
        None => None,
        Some(i) => {
            let (
                OpKind::Bias { b },
                Some(OpArgs::Bias {
                    alpha: ba,
                    beta: bb,
                    b: bptr,
                }),
            ) = (&ops[i].1, arg(i))
            else {
                return Err(ShimError::bad_parm(
                    "the bias operator has no arguments (miopenSetOpArgsBiasForward)",
                ));
            };
            if ba != 1.0 || bb != 0.0 {
                return Err(ShimError::not_implemented(format!(
                    "bias alpha={ba} beta={bb} in a fused plan"
                )));
            }
            let c = p.shape.c_out;
            if b.dims.len() < 2
                || b.dims[1] != c
                || b.dims.iter().enumerate().any(|(k, &d)| k != 1 && d != 1)
                || b.dtype != p.dtype
            {
                return Err(ShimError::bad_parm(format!(
                    "bias {:?} does not fit {c} output channels",
                    b.dims
                )));
            }
            Some(FusedBias {
                ptr: bptr as *const c_void,
                layout: Layout5 {
                    dims: [1, c, 1, 1, 1],
                    strides: [0, b.strides[1], 0, 0, 0],
                },
            })
        }
    };
    let activation = match ai {
        None => None,
        Some(i) => {
            let (
                OpKind::Activation { mode },
                Some(OpArgs::Activation {
                    alpha: aa,
                    beta: ab,
                    a,
                    b,
                    g,
                }),
            ) = (&ops[i].1, arg(i))
            else {
                return Err(ShimError::bad_parm(
                    "the activation operator has no arguments (miopenSetOpArgsActivForward)",
                ));
            };
            if aa != 1.0 || ab != 0.0 {
                return Err(ShimError::not_implemented(format!(
                    "activation alpha={aa} beta={ab} in a fused plan"
                )));
            }
            Some(Activation {
                mode: *mode,
                alpha: a,
                beta: b,
                gamma: g,
            })
        }
    };
    let bufs = ConvBuffers {
        x: x as *mut c_void,
        w: wptr as *mut c_void,
        y,
    };
    let fused = Fused { bias, activation };
    let rec = run_conv_fused(rt, handle, &p, &bufs, alpha, beta, Some(&fused))?;
    STATS.record_cpu(Op::Fusion, &rec);
    let names = ops
        .iter()
        .map(|(_, k)| k.name())
        .collect::<Vec<_>>()
        .join(" -> ");
    Ok(format!(
        "[{names}] {} {}",
        describe_problem(&p),
        crate::execute::timing_line(&p, &rec)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv() -> OpKind {
        OpKind::Conv {
            conv: ConvDesc {
                mode: 0,
                pads: vec![0, 0],
                strides: vec![1, 1],
                dilations: vec![1, 1],
                groups: 1,
            },
            w: TensorDesc {
                dtype: crate::layout::DType::F32,
                dims: vec![1, 1, 1, 1],
                strides: vec![1, 1, 1, 1],
            },
        }
    }
    fn bias() -> OpKind {
        OpKind::Bias {
            b: TensorDesc {
                dtype: crate::layout::DType::F32,
                dims: vec![1, 1, 1, 1],
                strides: vec![1, 1, 1, 1],
            },
        }
    }

    #[test]
    fn accepts_conv_bias_activation_in_order_only() {
        let relu = OpKind::Activation {
            mode: activation::RELU,
        };
        assert_eq!(cpu_plan(&[(1, conv())]).unwrap(), (0, 1, None, None));
        assert_eq!(
            cpu_plan(&[(1, conv()), (2, bias()), (3, relu.clone())]).unwrap(),
            (0, 3, Some(1), Some(2))
        );
        assert_eq!(
            cpu_plan(&[(1, conv()), (3, relu.clone())]).unwrap(),
            (0, 2, None, Some(1))
        );
        let e = cpu_plan(&[(1, conv()), (3, relu.clone()), (2, bias())]).unwrap_err();
        assert!(e.contains("conv -> activation:relu -> bias"), "{e}");
        let e = cpu_plan(&[
            (1, OpKind::Other("miopenCreateOpBatchNormInference".into())),
            (2, relu),
        ])
        .unwrap_err();
        assert!(e.contains("miopenCreateOpBatchNormInference"), "{e}");
        assert!(cpu_plan(&[(1, conv()), (2, OpKind::Activation { mode: 99 })]).is_err());
    }
}
