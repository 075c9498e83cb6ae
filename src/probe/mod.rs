//! The probe's child program (`rdna1shim-probe`, a thin `main` around [`main`]): runs
//! ONE recorded convolution configuration on the GPU with a given libMIOpen and compares
//! the result with the shim's CPU engine. `rdna1shim probe` starts one child per
//! configuration, so a memory fault, an abort or a hang ends only that process; never
//! call this inside a training process.
//!
//! ```text
//! rdna1shim-probe --miopen LIB [--hip LIB] --config JSON [--entry find|immediate]...
//!                 [--compile] [--seed N]
//! ```
//! `--config` is one line of a record file (`RDNA1SHIM_RECORD`). The inputs are random
//! (uniform in [-1, 1), seeded), the output is filled with NaN before each run. The CPU
//! reference is computed first, with the engine the shim itself runs
//! (`execute::compute_on_host`), in this process: no GPU is touched until it is done.
//! Then each `--entry` sequence runs in order — `find`: workspace query, Find, the
//! classic call (PyTorch's benchmark path); `immediate`: solution count and list,
//! `--compile`d if asked, workspace, Immediate — and its output is compared.
//! Without `--hip`, HIP is the runtime the given libMIOpen links (looked up through it).
//!
//! Stdout, one JSON object a line: `{"event":"reference",...}`, `{"event":"gpu_start"}`,
//! then per sequence `{"event":"result","entry":...,"max_err":...,"max_abs_err":...}`
//! (`max_err` is the largest absolute difference divided by the largest reference
//! magnitude; NaN or infinite outputs give `null`), or `{"event":"error","message":...}`.
//! Stderr: "rdna1shim-probe: calling <function>" before each MIOpen call.
//! Exit status: 0 done, 2 bad arguments or libraries (nothing ran on the GPU),
//! 3 a MIOpen or HIP call failed.

mod gpu;

use std::io::Write;
use std::time::Instant;

use crate::conv_config::ConvConfig;
use crate::convert::{self, Blend};
use crate::describe::{ConvProblem, Pass, TensorDesc};
use crate::json;
use crate::layout::Layout5;

struct Args {
    miopen: String,
    hip: Option<String>,
    config: String,
    entries: Vec<String>,
    compile: bool,
    seed: u64,
}

fn usage() -> String {
    "usage: rdna1shim-probe --miopen LIB [--hip LIB] --config JSON [--entry find|immediate]... \
     [--compile] [--seed N]"
        .to_string()
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        miopen: String::new(),
        hip: None,
        config: String::new(),
        entries: Vec::new(),
        compile: false,
        seed: 1,
    };
    while let Some(k) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{k} needs a value; {}", usage()))
        };
        match k.as_str() {
            "--miopen" => a.miopen = value()?,
            "--hip" => a.hip = Some(value()?),
            "--config" => a.config = value()?,
            "--entry" => {
                let e = value()?;
                if e != "find" && e != "immediate" {
                    return Err(format!("--entry {e:?}: expected find or immediate"));
                }
                a.entries.push(e);
            }
            "--compile" => a.compile = true,
            "--seed" => {
                let v = value()?;
                a.seed = v
                    .parse()
                    .map_err(|_| format!("--seed {v:?} is not an integer"))?;
            }
            other => return Err(format!("unknown argument {other:?}; {}", usage())),
        }
    }
    if a.miopen.is_empty() || a.config.is_empty() {
        return Err(usage());
    }
    if a.entries.is_empty() {
        a.entries.push("find".into());
    }
    Ok(a)
}

fn emit(line: String) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

fn error(message: &str) {
    emit(
        json::Object::new()
            .str("event", "error")
            .str("message", message)
            .finish(),
    );
}

/// Uniform values in [-1, 1) (xorshift64*).
fn random_values(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed ^= *seed >> 12;
            *seed ^= *seed << 25;
            *seed ^= *seed >> 27;
            let r = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            r as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// The call's three tensor images: random inputs, a NaN-filled output.
fn host_images(c: &ConvConfig, seed: &mut u64) -> [Vec<u8>; 3] {
    let (_, x, w, y) = c.descriptors();
    let out = match c.direction {
        crate::describe::Direction::Forward => 2,
        crate::describe::Direction::BackwardData => 0,
        crate::describe::Direction::BackwardWeights => 1,
    };
    let mut images: Vec<Vec<u8>> = Vec::new();
    for (i, t) in [x, w, y].iter().enumerate() {
        let l = t.layout5();
        let mut bytes = vec![0u8; l.span() * c.dtype.size()];
        if i == out {
            bytes.fill(0xFF);
        } else {
            convert::store(
                &random_values(l.numel(), seed),
                Blend::PLAIN,
                c.dtype,
                &l,
                &mut bytes,
            );
        }
        images.push(bytes);
    }
    images.try_into().expect("three images")
}

/// The CPU engine's output for the call's inputs (the bytes of the output's span).
fn reference(p: &ConvProblem, images: &[Vec<u8>; 3]) -> Vec<u8> {
    let [x, w, y] = images;
    // The regular convolution's x and y: transposed mode swaps the call's two.
    let (rx, ry) = if p.transposed { (y, x) } else { (x, y) };
    let (a, b, out) = match p.pass {
        Pass::Forward => (rx, w, ry),
        Pass::BackwardData => (ry, w, rx),
        Pass::BackwardWeights => (rx, ry, w),
    };
    let mut result = out.clone();
    crate::execute::compute_on_host(p, a, b, &mut result, 1.0, 0.0, &|_| {});
    result
}

/// (largest |gpu - ref| / largest |ref|, largest |gpu - ref|); infinite for NaN.
fn compare(gpu: &[u8], reference: &[u8], c: &ConvConfig, l: &Layout5) -> (f64, f64) {
    let g = convert::gathered(gpu, c.dtype, l);
    let r = convert::gathered(reference, c.dtype, l);
    let scale = r.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let mut worst = 0f64;
    for (a, b) in g.iter().zip(&r) {
        let d = (*a as f64 - *b as f64).abs();
        if !d.is_finite() {
            return (f64::INFINITY, f64::INFINITY);
        }
        worst = worst.max(d);
    }
    (worst / scale.max(f64::MIN_POSITIVE), worst)
}

fn run(a: &Args) -> Result<(), (i32, String)> {
    let bad = |m: String| (2, m);
    let v = json::parse(&a.config).map_err(|e| bad(format!("--config is not JSON: {e}")))?;
    let c = ConvConfig::from_json(&v).map_err(|e| bad(format!("--config: {e}")))?;
    let p = c.problem().map_err(|e| bad(e.message))?;
    let mut seed = a.seed.max(1);
    let images = host_images(&c, &mut seed);
    let t = Instant::now();
    let want = reference(&p, &images);
    emit(
        json::Object::new()
            .str("event", "reference")
            .str("id", &c.id())
            .float("seconds", t.elapsed().as_secs_f64())
            .finish(),
    );
    let out_desc: TensorDesc = {
        let (_, x, w, y) = c.descriptors();
        match c.direction {
            crate::describe::Direction::Forward => y,
            crate::describe::Direction::BackwardData => x,
            crate::describe::Direction::BackwardWeights => w,
        }
    };
    let out_layout = out_desc.layout5();

    // The GPU from here on.
    let hip_lib = match &a.hip {
        Some(path) => Some(gpu::Lib::open(path, libc::RTLD_NOW | libc::RTLD_GLOBAL).map_err(bad)?),
        None => None,
    };
    let miopen = gpu::Lib::open(&a.miopen, libc::RTLD_NOW | libc::RTLD_LOCAL).map_err(bad)?;
    let hip = gpu::Hip::resolve(hip_lib.as_ref().unwrap_or(&miopen)).map_err(bad)?;
    emit(json::Object::new().str("event", "gpu_start").finish());
    let failed = |m: String| (3, m);
    let prob = gpu::Problem::new(&miopen, &hip, &c, [&images[0], &images[1], &images[2]])
        .map_err(failed)?;
    for entry in &a.entries {
        prob.poison_output().map_err(failed)?;
        let t = Instant::now();
        match entry.as_str() {
            "find" => prob.run_find(),
            _ => prob.run_immediate(a.compile),
        }
        .map_err(failed)?;
        let seconds = t.elapsed().as_secs_f64();
        let got = prob.read_output().map_err(failed)?;
        let (rel, abs) = compare(&got, &want, &c, &out_layout);
        gpu::say(&format!("{entry}: max error {rel:.3e}"));
        emit(
            json::Object::new()
                .str("event", "result")
                .str("entry", entry)
                .float("max_err", rel)
                .float("max_abs_err", abs)
                .float("seconds", seconds)
                .finish(),
        );
    }
    Ok(())
}

/// Runs the child with its arguments (without the program name); returns its exit
/// status.
pub fn main(args: impl Iterator<Item = String>) -> i32 {
    match parse_args(args) {
        Err(e) => {
            error(&e);
            eprintln!("rdna1shim-probe: {e}");
            2
        }
        Ok(a) => match run(&a) {
            Ok(()) => 0,
            Err((code, e)) => {
                error(&e);
                gpu::say(&e);
                code
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::describe::{conv_problem, ConvDesc, Direction};
    use crate::ffi::miopen::{miopenConvolution, miopenTranspose};
    use crate::layout::DType;

    fn args(v: &[&str]) -> Result<Args, String> {
        parse_args(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments() {
        let a = args(&[
            "--miopen",
            "m.so",
            "--config",
            "{}",
            "--entry",
            "immediate",
            "--compile",
        ])
        .unwrap();
        assert_eq!(
            (a.entries.as_slice(), a.compile, a.hip),
            (&["immediate".to_string()][..], true, None)
        );
        assert_eq!(
            args(&["--miopen", "m", "--config", "{}"]).unwrap().entries,
            vec!["find"]
        );
        assert!(args(&["--miopen", "m"]).is_err());
        assert!(args(&["--miopen", "m", "--config", "{}", "--entry", "classic"]).is_err());
        assert!(args(&["--miopen", "m", "--config", "{}", "--seed", "x"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }

    /// The reference of every direction, transposed or not, equals the engine applied
    /// in the regular roles, and the comparison sees a wrong element and a NaN.
    #[test]
    fn reference_uses_the_calls_roles() {
        for mode in [miopenConvolution, miopenTranspose] {
            for d in [
                Direction::Forward,
                Direction::BackwardData,
                Direction::BackwardWeights,
            ] {
                let c = ConvDesc {
                    mode,
                    pads: vec![1, 1],
                    strides: vec![2, 2],
                    dilations: vec![1, 1],
                    groups: 1,
                };
                // regular: [1, 2, 6, 6] -> [1, 4, 3, 3] with w [4, 2, 3, 3]; transpose
                // mode names the small tensor x and the large one y.
                let (big, small) = ([1, 2, 6, 6], [1, 4, 3, 3]);
                let (x, y) = if mode == miopenTranspose {
                    (small, big)
                } else {
                    (big, small)
                };
                let x = TensorDesc::packed(DType::F32, &x);
                let w = TensorDesc::packed(DType::F32, &[4, 2, 3, 3]);
                let y = TensorDesc::packed(DType::F32, &y);
                let p = conv_problem(d, &c, &x, &w, &y).unwrap();
                let cfg = ConvConfig::of(&p, false);
                let mut seed = 7;
                let images = host_images(&cfg, &mut seed);
                let out = match d {
                    Direction::Forward => 2,
                    Direction::BackwardData => 0,
                    Direction::BackwardWeights => 1,
                };
                assert!(images[out].iter().all(|&b| b == 0xFF), "output poisoned");
                let r = reference(&p, &images);
                let l = [&x, &w, &y][out].layout5();
                let vals = convert::gathered(&r, DType::F32, &l);
                assert!(vals.iter().all(|v| v.is_finite()) && vals.iter().any(|v| *v != 0.0));
                assert_eq!(compare(&r, &r, &cfg, &l), (0.0, 0.0));
                let mut off = r.clone();
                off[..4].copy_from_slice(&(vals[0] + 1.0).to_ne_bytes());
                let (rel, abs) = compare(&off, &r, &cfg, &l);
                assert!((abs - 1.0).abs() < 1e-6 && rel > 0.0, "{rel} {abs}");
                assert_eq!(compare(&images[out], &r, &cfg, &l).0, f64::INFINITY);
            }
        }
    }
}
