//! Golden vectors of batch norm: PyTorch's CPU batch norm (scripts/gen_golden_bn.py writes
//! tests/golden/bn_golden.json) against the shim's host path — descriptor decoding
//! (`bn_problem`), layout and dtype conversion, the engine, alpha/beta — for training
//! (y, running statistics, saved mean and inverse standard deviation), inference (with
//! running statistics and with batch statistics) and backward (with saved and with
//! recomputed statistics), spatial and per-activation, NCHW and channels-last.
//!
//! The JSON file is generated on a machine with PyTorch; while it is absent these tests
//! say so loudly and pass, so that the generator's output can be committed later.

use rdna1shim::cpu::batchnorm::BnMode;
use rdna1shim::describe::{bn_problem, BnProblem};
use rdna1shim::execute_bn::{
    backward_on_host, infer_on_host, train_on_host, BwdOld, BwdScalars, FwdScalars,
};
use rdna1shim::layout::DType;
use serde_json::Value;

mod common;
use common::*;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/bn_golden.json");

/// One case's problem and inputs, in one layout.
struct Case {
    label: String,
    p: BnProblem,
    dt: DType,
    momentum: f64,
    eps: f64,
    x: Vec<u8>,
    dy: Vec<u8>,
    scale: Vec<u8>,
    bias: Vec<u8>,
    rm0: Vec<u8>,
    rv0: Vec<u8>,
}

impl Case {
    fn new(c: &Value, channels_last: bool) -> Case {
        let dt = match c["dtype"].as_str().unwrap() {
            "fp32" => DType::F32,
            "fp16" => DType::F16,
            _ => DType::BF16,
        };
        let mode = match c["mode"].as_str().unwrap() {
            "spatial" => BnMode::Spatial,
            _ => BnMode::PerActivation,
        };
        // PyTorch's descriptors have at least 4 dims: [N, C] -> [N, C, 1, 1].
        let mut dims = usizes(&c["shape"]);
        while dims.len() < 4 {
            dims.push(1);
        }
        let pdims: Vec<usize> = dims
            .iter()
            .enumerate()
            .map(|(i, &d)| match (i, mode) {
                (0, _) => 1,
                (1, _) => d,
                (_, BnMode::Spatial) => 1,
                (_, BnMode::PerActivation) => d,
            })
            .collect();
        let xd = desc(dt, &dims, channels_last);
        let pd = desc(DType::F32, &pdims, false);
        let p = bn_problem(mode, &xd, &xd, None, &pd).unwrap_or_else(|e| panic!("{e}"));
        let numel: usize = dims.iter().product();
        let feats = p.shape.features();
        let f = |k: &str| c[k].as_f64().unwrap();
        let par = |vals: Vec<f32>| bytes(&vals, DType::F32, &p.param);
        Case {
            label: format!(
                "{} {}",
                c["name"].as_str().unwrap(),
                if channels_last { "nhwc" } else { "nchw" }
            ),
            dt,
            momentum: f("momentum"),
            eps: f("eps"),
            x: bytes(&values(numel, 1, f("x_scale"), f("x_offset")), dt, &p.x),
            dy: bytes(&values(numel, 6, 1.0, 0.0), dt, &p.y),
            scale: par(values(feats, 2, 0.5, 1.0)),
            bias: par(values(feats, 3, 1.0, 0.0)),
            rm0: par(values(feats, 4, 0.5, 0.0)),
            rv0: par(values(feats, 5, 0.25, 1.0)),
            p,
        }
    }

    fn fwd(&self, alpha: f32, beta: f32) -> FwdScalars {
        FwdScalars {
            alpha,
            beta,
            eps: self.eps,
            factor: self.momentum,
        }
    }

    fn bwd(&self, alpha: f32, beta: f32) -> BwdScalars {
        BwdScalars {
            alpha_data: alpha,
            beta_data: beta,
            alpha_param: alpha,
            beta_param: beta,
            eps: self.eps,
        }
    }

    /// Data values after storage in the case's dtype and layout.
    fn data(&self, vals: &[f32]) -> Vec<f32> {
        stored(vals, self.dt, &self.p.x)
    }
}

/// Every check of one case with alpha 1, beta 0.
fn run_case(c: &Value, channels_last: bool) -> Result<(), String> {
    let k = Case::new(c, channels_last);
    let (p, dt, l) = (&k.p, k.dt, &k.label);
    let f32s = DType::F32;
    let want = |key: &str| floats(&c[key]);

    let t = train_on_host(
        p,
        &k.x,
        &k.scale,
        &k.bias,
        None,
        Some((&k.rm0, &k.rv0)),
        k.fwd(1.0, 0.0),
    );
    compare(&format!("{l} y"), &k.data(&t.y), &want("y"), dt)?;
    let (rm, rv) = t.running.clone().ok_or("no running statistics")?;
    compare(
        &format!("{l} running_mean"),
        &rm,
        &want("running_mean"),
        f32s,
    )?;
    compare(&format!("{l} running_var"), &rv, &want("running_var"), f32s)?;
    compare(
        &format!("{l} saved_mean"),
        &t.saved_mean,
        &want("saved_mean"),
        f32s,
    )?;
    compare(
        &format!("{l} saved_invstd"),
        &t.saved_inv_var,
        &want("saved_invstd"),
        f32s,
    )?;

    // Training without running statistics leaves nothing else to update.
    let t2 = train_on_host(p, &k.x, &k.scale, &k.bias, None, None, k.fwd(1.0, 0.0));
    if t2.running.is_some() || t2.y != t.y {
        return Err(format!("{l}: training without running statistics differs"));
    }

    let est = Some((k.rm0.as_slice(), k.rv0.as_slice()));
    let yi = infer_on_host(p, &k.x, &k.scale, &k.bias, est, None, k.fwd(1.0, 0.0));
    compare(&format!("{l} y_infer"), &k.data(&yi), &want("y_infer"), dt)?;
    // Inference without estimates uses the batch's statistics: the training output.
    let yb = infer_on_host(p, &k.x, &k.scale, &k.bias, None, None, k.fwd(1.0, 0.0));
    compare(&format!("{l} y_infer(batch)"), &k.data(&yb), &want("y"), dt)?;

    // Backward with PyTorch's saved statistics as a caller stores them (f32), then
    // recomputed. Storing the mean in f32 moves x - mean by up to |mean| 2^-24, which
    // is not small against the standard deviation when the mean is large: that much
    // more slack for the saved variant.
    let (smv, siv) = (want("saved_mean"), want("saved_invstd"));
    let most = |v: &[f32]| v.iter().fold(0f32, |m, a| m.max(a.abs()));
    let shift = most(&smv) * most(&siv) * f32::EPSILON;
    let sm = bytes(&smv, f32s, &p.param);
    let si = bytes(&siv, f32s, &p.param);
    for saved in [Some((sm.as_slice(), si.as_slice())), None] {
        let (how, slack) = match saved {
            Some(_) => ("saved", shift),
            None => ("recomputed", 0.0),
        };
        let g = backward_on_host(
            p,
            &k.x,
            &k.dy,
            &k.scale,
            saved,
            BwdOld::default(),
            k.bwd(1.0, 0.0),
        );
        let (dx, tol) = (k.data(&g.dx), tolerance(dt) + slack);
        compare_within(&format!("{l} dx ({how})"), &dx, &want("dx"), tol)?;
        let (ds, tol) = (&g.dscale, tolerance(f32s) + slack);
        compare_within(&format!("{l} dscale ({how})"), ds, &want("dscale"), tol)?;
        compare(
            &format!("{l} dbias ({how})"),
            &g.dbias,
            &want("dbias"),
            f32s,
        )?;
    }
    Ok(())
}

/// y and the gradients blended with the outputs' old contents.
fn run_case_alpha_beta(c: &Value, alpha: f32, beta: f32) -> Result<(), String> {
    let k = Case::new(c, true);
    let (p, dt, l) = (&k.p, k.dt, &k.label);
    let n = p.shape.numel();
    let feats = p.shape.features();
    let old_y = bytes(&values(n, 7, 1.0, 0.0), dt, &p.y);
    let old_p = bytes(&values(feats, 8, 1.0, 0.0), DType::F32, &p.param);
    let old_y_vals = decode(&old_y, dt, &p.y);
    let old_p_vals = decode(&old_p, DType::F32, &p.param);
    let blend = |want: Vec<f32>, old: &[f32]| -> Vec<f32> {
        want.iter()
            .zip(old)
            .map(|(w, o)| alpha * w + beta * o)
            .collect()
    };
    let t = train_on_host(
        p,
        &k.x,
        &k.scale,
        &k.bias,
        Some(&old_y),
        None,
        k.fwd(alpha, beta),
    );
    let want_y = blend(floats(&c["y"]), &old_y_vals);
    compare(&format!("{l} y (alpha/beta)"), &k.data(&t.y), &want_y, dt)?;
    let est = Some((k.rm0.as_slice(), k.rv0.as_slice()));
    let yi = infer_on_host(
        p,
        &k.x,
        &k.scale,
        &k.bias,
        est,
        Some(&old_y),
        k.fwd(alpha, beta),
    );
    let want_yi = blend(floats(&c["y_infer"]), &old_y_vals);
    compare(
        &format!("{l} y_infer (alpha/beta)"),
        &k.data(&yi),
        &want_yi,
        dt,
    )?;
    let old = BwdOld {
        dx: Some(&old_y),
        dscale: Some(&old_p),
        dbias: Some(&old_p),
    };
    let g = backward_on_host(p, &k.x, &k.dy, &k.scale, None, old, k.bwd(alpha, beta));
    let want_dx = blend(floats(&c["dx"]), &old_y_vals);
    compare(
        &format!("{l} dx (alpha/beta)"),
        &k.data(&g.dx),
        &want_dx,
        dt,
    )?;
    let f32s = DType::F32;
    let want_ds = blend(floats(&c["dscale"]), &old_p_vals);
    compare(
        &format!("{l} dscale (alpha/beta)"),
        &g.dscale,
        &want_ds,
        f32s,
    )?;
    let want_db = blend(floats(&c["dbias"]), &old_p_vals);
    compare(&format!("{l} dbias (alpha/beta)"), &g.dbias, &want_db, f32s)?;
    Ok(())
}

/// The golden file (generated by scripts/gen_golden_bn.py from PyTorch, committed).
fn golden() -> Value {
    let text = std::fs::read_to_string(GOLDEN)
        .unwrap_or_else(|e| panic!("{GOLDEN}: {e}; regenerate it with python3 scripts/gen_golden_bn.py where PyTorch is installed"));
    serde_json::from_str(&text).expect("bn_golden.json is valid JSON")
}

fn run_all(check: impl Fn(&Value) -> Result<(), String>) {
    let doc = golden();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 14, "golden file has {} cases", cases.len());
    let failures: Vec<String> = cases.iter().filter_map(|c| check(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} golden batch-norm cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn golden_bn_nchw() {
    run_all(|c| run_case(c, false));
}

#[test]
fn golden_bn_channels_last() {
    run_all(|c| run_case(c, true));
}

#[test]
fn golden_bn_alpha_beta() {
    run_all(|c| run_case_alpha_beta(c, 0.5, 0.25));
    run_all(|c| run_case_alpha_beta(c, -1.5, 1.0));
}

#[test]
fn golden_bn_check_detects_a_wrong_answer() {
    // The comparison itself must be able to fail, NaN included.
    assert!(compare("t", &[1.0, 2.0], &[1.0, 2.1], DType::F32).is_err());
    assert!(compare("t", &[1.0, f32::NAN], &[1.0, 2.0], DType::F32).is_err());
    assert!(compare("t", &[1.0, 2.0], &[1.0, 2.0], DType::F32).is_ok());
}
