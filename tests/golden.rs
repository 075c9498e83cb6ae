//! Golden vectors: outputs of PyTorch's CPU convolution (scripts/gen_golden.py, committed
//! in tests/golden/) against the shim's host path — descriptor decoding, layout and dtype
//! conversion, the engine, alpha/beta — in NCHW and channels-last layouts, for regular and
//! transposed convolutions (PyTorch's way and MIOpen's transpose mode).

use rdna1shim::describe::{conv_problem, ConvDesc, Direction, TensorDesc};
use rdna1shim::execute::compute_on_host_chunked;
use rdna1shim::ffi::miopen::{miopenConvolution, miopenTranspose};
use rdna1shim::layout::DType;
use serde_json::Value;

mod common;
use common::*;

fn fill(n: usize, seed: u64) -> Vec<f32> {
    values(n, seed, 1.0, 0.0)
}

struct Tensor {
    desc: TensorDesc,
    bytes: Vec<u8>,
}

impl Tensor {
    fn new(dtype: DType, dims: &[usize], channels_last: bool, vals: &[f32]) -> Self {
        let desc = desc(dtype, dims, channels_last);
        let bytes = bytes(vals, dtype, &desc.layout5());
        Tensor { desc, bytes }
    }
    fn values(&self) -> Vec<f32> {
        decode(&self.bytes, self.desc.dtype, &self.desc.layout5())
    }
}

thread_local! {
    /// Pieces of the batch each call is cut into, as the pipelined call path cuts them.
    static CHUNKS: std::cell::Cell<usize> = const { std::cell::Cell::new(1) };
}

/// Runs one call through the host path. `x`, `w`, `y` in the call's roles (see
/// `conv_problem`); returns the values of the written tensor.
fn call(
    dir: Direction,
    conv: &ConvDesc,
    x: &mut Tensor,
    w: &mut Tensor,
    y: &mut Tensor,
    alpha: f32,
    beta: f32,
) -> Vec<f32> {
    let p = conv_problem(dir, conv, &x.desc, &w.desc, &y.desc).unwrap_or_else(|e| panic!("{e}"));
    let transposed = conv.mode == miopenTranspose;
    // The regular convolution's x and y: swapped in transpose mode.
    let (xr, yr) = if transposed {
        (&mut *y, &mut *x)
    } else {
        (&mut *x, &mut *y)
    };
    let (a, b, out) = match p.pass {
        rdna1shim::describe::Pass::Forward => (&xr.bytes, &w.bytes, &mut yr.bytes),
        rdna1shim::describe::Pass::BackwardData => (&yr.bytes, &w.bytes, &mut xr.bytes),
        rdna1shim::describe::Pass::BackwardWeights => (&xr.bytes, &yr.bytes, &mut w.bytes),
    };
    let (a, b) = (a.clone(), b.clone());
    let chunks = CHUNKS.with(|c| c.get());
    compute_on_host_chunked(&p, &a, &b, out, alpha, beta, None, chunks)
        .unwrap_or_else(|e| panic!("{e}"));
    match p.pass {
        rdna1shim::describe::Pass::Forward => yr.values(),
        rdna1shim::describe::Pass::BackwardData => xr.values(),
        rdna1shim::describe::Pass::BackwardWeights => w.values(),
    }
}

fn run_case(
    c: &Value,
    channels_last: bool,
    transpose_mode: bool,
    alpha: f32,
    beta: f32,
) -> Result<(), String> {
    let dt = match c["dtype"].as_str().unwrap() {
        "fp32" => DType::F32,
        "fp16" => DType::F16,
        _ => DType::BF16,
    };
    let (n, ci, co, g) = (
        c["n"].as_u64().unwrap() as usize,
        c["c_in"].as_u64().unwrap() as usize,
        c["c_out"].as_u64().unwrap() as usize,
        c["groups"].as_u64().unwrap() as usize,
    );
    let transposed = c["transposed"].as_bool().unwrap();
    let (inp, k, y_shape) = (
        usizes(&c["input"]),
        usizes(&c["kernel"]),
        usizes(&c["y_shape"]),
    );
    let mode = if transposed && transpose_mode {
        miopenTranspose
    } else {
        miopenConvolution
    };
    let conv = ConvDesc {
        mode,
        pads: usizes(&c["pad"]),
        strides: usizes(&c["stride"]),
        dilations: usizes(&c["dilation"]),
        groups: g,
    };
    let x_dims: Vec<usize> = [n, ci].iter().copied().chain(inp.iter().copied()).collect();
    let w_dims: Vec<usize> = if transposed {
        vec![ci, co / g]
    } else {
        vec![co, ci / g]
    }
    .into_iter()
    .chain(k.iter().copied())
    .collect();
    let count = |d: &[usize]| d.iter().product::<usize>();
    let (xv, wv, dyv) = (
        fill(count(&x_dims), 1),
        fill(count(&w_dims), 2),
        fill(count(&y_shape), 3),
    );
    let old = |len: usize| fill(len, 4);
    let blend = |want: Vec<f32>| -> Vec<f32> {
        let o = old(want.len());
        // old values as stored in dtype
        let t = Tensor::new(dt, &[1, want.len(), 1], false, &o);
        want.iter()
            .zip(t.values())
            .map(|(w, o)| alpha * w + beta * o)
            .collect()
    };
    let fresh = |dims: &[usize], vals: &[f32]| Tensor::new(dt, dims, channels_last, vals);
    let init_out = |dims: &[usize]| fresh(dims, &old(count(dims)));

    // (call direction, expected key, which tensor the call writes)
    let (want_y, want_dx, want_dw) = (floats(&c["y"]), floats(&c["dx"]), floats(&c["dw"]));
    let label = format!(
        "{} {} {}",
        c["name"].as_str().unwrap(),
        if channels_last { "nhwc" } else { "nchw" },
        if transpose_mode && transposed {
            "transpose-mode"
        } else {
            "conv-mode"
        }
    );
    if !transposed {
        let y = call(
            Direction::Forward,
            &conv,
            &mut fresh(&x_dims, &xv),
            &mut fresh(&w_dims, &wv),
            &mut init_out(&y_shape),
            alpha,
            beta,
        );
        compare(&format!("{label} y"), &y, &blend(want_y), dt)?;
        let dx = call(
            Direction::BackwardData,
            &conv,
            &mut init_out(&x_dims),
            &mut fresh(&w_dims, &wv),
            &mut fresh(&y_shape, &dyv),
            alpha,
            beta,
        );
        compare(&format!("{label} dx"), &dx, &blend(want_dx), dt)?;
        let dw = call(
            Direction::BackwardWeights,
            &conv,
            &mut fresh(&x_dims, &xv),
            &mut init_out(&w_dims),
            &mut fresh(&y_shape, &dyv),
            alpha,
            beta,
        );
        compare(&format!("{label} dw"), &dw, &blend(want_dw), dt)?;
    } else if transpose_mode {
        // MIOpen transpose mode: the call's own x (input), w, y (output).
        let y = call(
            Direction::Forward,
            &conv,
            &mut fresh(&x_dims, &xv),
            &mut fresh(&w_dims, &wv),
            &mut init_out(&y_shape),
            alpha,
            beta,
        );
        compare(&format!("{label} y"), &y, &blend(want_y), dt)?;
        let dx = call(
            Direction::BackwardData,
            &conv,
            &mut init_out(&x_dims),
            &mut fresh(&w_dims, &wv),
            &mut fresh(&y_shape, &dyv),
            alpha,
            beta,
        );
        compare(&format!("{label} dx"), &dx, &blend(want_dx), dt)?;
        let dw = call(
            Direction::BackwardWeights,
            &conv,
            &mut fresh(&x_dims, &xv),
            &mut init_out(&w_dims),
            &mut fresh(&y_shape, &dyv),
            alpha,
            beta,
        );
        compare(&format!("{label} dw"), &dw, &blend(want_dw), dt)?;
    } else {
        // PyTorch's way: transposed forward is backward-data of the regular convolution
        // (its dy is our x), input-grad a regular forward, weight-grad a regular
        // backward-weights with input dy_t and output-grad x_t.
        let y = call(
            Direction::BackwardData,
            &conv,
            &mut init_out(&y_shape),
            &mut fresh(&w_dims, &wv),
            &mut fresh(&x_dims, &xv),
            alpha,
            beta,
        );
        compare(&format!("{label} y"), &y, &blend(want_y), dt)?;
        let dx = call(
            Direction::Forward,
            &conv,
            &mut fresh(&y_shape, &dyv),
            &mut fresh(&w_dims, &wv),
            &mut init_out(&x_dims),
            alpha,
            beta,
        );
        compare(&format!("{label} dx"), &dx, &blend(want_dx), dt)?;
        let dw = call(
            Direction::BackwardWeights,
            &conv,
            &mut fresh(&y_shape, &dyv),
            &mut init_out(&w_dims),
            &mut fresh(&x_dims, &xv),
            alpha,
            beta,
        );
        compare(&format!("{label} dw"), &dw, &blend(want_dw), dt)?;
    }
    Ok(())
}

fn golden() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/conv_golden.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn run_all(channels_last: bool, alpha: f32, beta: f32) {
    let doc = golden();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 28, "golden file has {} cases", cases.len());
    let mut failures = Vec::new();
    let mut checked = 0;
    for c in cases {
        let modes: &[bool] = if c["transposed"].as_bool().unwrap() {
            &[false, true]
        } else {
            &[false]
        };
        for &tm in modes {
            checked += 1;
            if let Err(e) = run_case(c, channels_last, tm, alpha, beta) {
                failures.push(e);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} golden checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn golden_nchw() {
    run_all(false, 1.0, 0.0);
}

#[test]
fn golden_channels_last() {
    run_all(true, 1.0, 0.0);
}

#[test]
fn golden_alpha_beta() {
    run_all(false, 0.5, 0.25);
    run_all(true, -1.5, 1.0);
}

/// The same vectors with every call cut into chunks of the batch (one sample each
/// where the batch is small): forward and input gradients chunk by chunk, the weight
/// gradient summed over the chunks.
#[test]
fn golden_in_chunks() {
    CHUNKS.with(|c| c.set(3));
    run_all(false, 1.0, 0.0);
    run_all(true, 0.5, 0.25);
}

#[test]
fn golden_check_detects_a_wrong_answer() {
    // The comparison itself must be able to fail.
    assert!(compare("t", &[1.0, 2.0], &[1.0, 2.1], DType::F32).is_err());
    assert!(compare("t", &[1.0, 2.0], &[1.0, 2.0], DType::F32).is_ok());
}
