//! Owns the end-to-end tests of per-configuration routes: a PyTorch-style training run
//! (train_seq.c, four layers, benchmark and immediate paths) is recorded with
//! `RDNA1SHIM_RECORD`, probed with `scripts/probe.py` against the fake MIOpen with a
//! mixed fault map (`FAKE_MIOPEN_FAULTS`: one configuration crashes, one computes
//! wrongly, one hangs, one fails, the others work), and run again with
//! `RDNA1SHIM_ROUTES`: what works runs on the (fake) GPU, the rest on the CPU, and the
//! results match the all-CPU run — with MIOpen linked directly and dlopen()ed
//! RTLD_LOCAL. Also: malformed routes files, configurations missing from the file,
//! one layer's three directions routed differently, every entry point of a
//! configuration following its route, and the probe on every configuration of the
//! harness (healthy: all work; a kernel bug: wrong).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use shim_tests::{bin, command, describe, run_command, run_probe, CRASH_MARKER, GPU_RAN_MARKER};

/// L0 forward crashes, L1 backward-weights is wrong, L2 backward-data hangs, L3
/// forward fails with an error status; everything else works.
const FAULTS: &str =
    "dir=fwd,c=3:crash;dir=bwd_weights,g=2:wrong;dir=bwd_data,g=8:hang;dir=fwd,k=4:error";
const HANG_TIMEOUT_S: f64 = 2.0;
const LIMIT: Duration = Duration::from_secs(120);

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rdna1shim-routes-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Loading {
    Direct,
    Plugin,
}

/// Runs the training sequence under the shim.
fn train(loading: Loading, extra: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut args: Vec<&str> = match loading {
        Loading::Direct => vec![],
        Loading::Plugin => vec!["--plugin", "libtrainplugin.so", "--entry", "train_main"],
    };
    args.extend_from_slice(extra);
    let program = match loading {
        Loading::Direct => "train_direct",
        Loading::Plugin => "harness_dlopen",
    };
    run_command(command(program, &args, envs, true), false, LIMIT)
}

fn assert_trained(out: &Output) {
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("train: done"),
        "the training run failed\n{}",
        describe(out)
    );
    assert!(!stderr(out).contains("panicked at"), "{}", describe(out));
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn json_file(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn channels(v: &Value, t: &str) -> u64 {
    v[t]["dims"][1].as_u64().unwrap()
}

/// Which layer of train_seq.c a configuration belongs to.
fn layer(v: &Value) -> usize {
    match (
        channels(v, "x"),
        channels(v, "y"),
        v["groups"].as_u64().unwrap(),
    ) {
        (3, 8, 1) => 0,
        (8, 8, 2) => 1,
        (8, 8, 8) => 2,
        (8, 4, 1) => 3,
        other => panic!("not a layer of the training run: {other:?}"),
    }
}

fn op(v: &Value) -> &str {
    v["op"].as_str().unwrap()
}

/// The probe's verdict for a configuration of the training run under `FAULTS`.
fn expected_verdict(v: &Value) -> &'static str {
    match (layer(v), op(v)) {
        (0, "conv_fwd") => "crashes",
        (1, "conv_bwd_weights") => "wrong",
        (2, "conv_bwd_data") => "hangs",
        (3, "conv_fwd") => "error",
        _ => "works",
    }
}

/// The numbers a training run wrote (losses, then final weights).
fn numbers(path: &Path) -> Vec<f64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

fn assert_same_training(a: &Path, b: &Path) {
    let (x, y) = (numbers(a), numbers(b));
    assert_eq!(x.len(), y.len());
    assert!(x.len() > 600, "losses and weights");
    for (i, (u, v)) in x.iter().zip(&y).enumerate() {
        assert!(
            (u - v).abs() <= 1e-4 * u.abs().max(v.abs()) + 1e-6,
            "value {i} differs: {u} (all-CPU run) vs {v} (routed run)"
        );
    }
}

/// Per-configuration statistics of a JSON summary, by id.
fn summary_configs(summary: &Value) -> BTreeMap<String, Value> {
    summary["configurations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap().to_string(), c.clone()))
        .collect()
}

/// Record -> probe -> routed re-run, in one loading scenario.
fn record_probe_rerun(loading: Loading) {
    let dir = scratch(&format!("{loading:?}"));
    let (rec, routes, table) = (
        dir.join("rec.jsonl"),
        dir.join("routes.jsonl"),
        dir.join("table.txt"),
    );
    let (cpu_out, routed_out, summary) = (
        dir.join("cpu.txt"),
        dir.join("routed.txt"),
        dir.join("summary.json"),
    );

    // 1. The all-CPU run records its configurations. The fake GPU crashes on every
    //    convolution here, so the run only finishes if all of them ran on the CPU.
    let out = train(
        loading,
        &["--out", p(&cpu_out)],
        &[("RDNA1SHIM_RECORD", p(&rec))],
    );
    assert_trained(&out);
    let record = json_lines(&rec);
    assert_eq!(
        record.len(),
        11,
        "4 forward, 3 backward-data, 4 backward-weights"
    );
    for v in &record {
        let l = layer(v);
        assert_eq!(
            (v["calls"].as_u64(), v["cpu_calls"].as_u64()),
            (Some(3), Some(3)),
            "{v}"
        );
        assert!(v.get("route").is_none(), "a record has no route: {v}");
        let eps: Vec<&str> = v["entry_points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        if l % 2 == 0 {
            assert_eq!(eps, ["workspace", "find", "classic"], "{v}");
        } else {
            assert_eq!(eps, ["solutions", "compile", "immediate"], "{v}");
        }
        assert!(
            v["driver"]
                .as_str()
                .unwrap()
                .starts_with("MIOpenDriver conv -n 2"),
            "{v}"
        );
    }
    assert!(
        !record
            .iter()
            .any(|v| layer(v) == 0 && op(v) == "conv_bwd_data"),
        "no input gradient"
    );

    // 2. The probe: one child per configuration against the faulty fake GPU.
    let miopen = bin("libMIOpen.so");
    let timeout = HANG_TIMEOUT_S.to_string();
    let args = [
        "--record",
        p(&rec),
        "--out",
        p(&routes),
        "--timeout",
        &timeout,
        "--miopen",
        p(&miopen),
        "--table",
        p(&table),
    ];
    let out = run_probe(
        Path::new(env!("CARGO_BIN_EXE_probe_child")),
        &args,
        &[("FAKE_MIOPEN_FAULTS", FAULTS)],
        LIMIT,
    );
    assert!(out.status.success(), "the probe failed\n{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    let probed = json_lines(&routes);
    assert_eq!(probed.len(), record.len());
    let mut seen = BTreeSet::new();
    for v in &probed {
        let want = expected_verdict(v);
        assert_eq!(v["verdict"].as_str(), Some(want), "{v}");
        assert_eq!(
            v["route"].as_str(),
            Some(if want == "works" { "gpu" } else { "cpu" }),
            "{v}"
        );
        seen.insert(want);
        let detail = v["probe"].as_str().unwrap();
        match want {
            "crashes" => assert!(
                detail.starts_with("SIGABRT") && detail.contains("Memory access fault"),
                "{detail}"
            ),
            "wrong" => assert!(
                detail.contains("max error") && v["max_err"].as_f64().unwrap() > 0.1,
                "{v}"
            ),
            "hangs" => {
                let s = v["probe_gpu_s"].as_f64().unwrap();
                assert!(
                    (HANG_TIMEOUT_S..HANG_TIMEOUT_S + 1.5).contains(&s),
                    "a hang cost {s} s"
                );
                assert!(detail.contains("never finishes"), "{detail}");
            }
            "error" => assert!(detail.contains("miopenStatusUnknownError"), "{detail}"),
            _ => assert!(v["max_err"].as_f64().unwrap() < 1e-5, "{v}"),
        }
    }
    assert_eq!(seen.len(), 5, "every verdict: {seen:?}");
    let table_text = std::fs::read_to_string(&table).unwrap();
    for verdict in ["works", "wrong", "crashes", "hangs", "error"] {
        assert!(
            table_text.contains(&format!("  {verdict}  ")),
            "{table_text}"
        );
    }

    // 3. The routed run on the same faulty GPU: nothing crashes or hangs, and the
    //    training computes what the all-CPU run computed.
    let out = train(
        loading,
        &["--out", p(&routed_out)],
        &[
            ("FAKE_MIOPEN_FAULTS", FAULTS),
            ("RDNA1SHIM_ROUTES", p(&routes)),
            ("RDNA1SHIM_SUMMARY_JSON", p(&summary)),
            ("RDNA1SHIM_LOG", "debug"),
        ],
    );
    assert_trained(&out);
    let err = stderr(&out);
    assert!(
        !err.contains(CRASH_MARKER)
            && !err.contains("never finishes")
            && !err.contains("wrong result"),
        "{err}"
    );
    assert!(err.contains(GPU_RAN_MARKER), "nothing ran on the GPU");
    assert!(
        err.contains("routes: 11 convolution configurations from"),
        "{err}"
    );
    let s = json_file(&summary);
    assert_eq!(s["routes"]["status"], "in use");
    assert_eq!(
        (s["routes"]["gpu"].as_u64(), s["routes"]["cpu"].as_u64()),
        (Some(7), Some(4))
    );
    let configs = summary_configs(&s);
    assert_eq!(configs.len(), 11);
    for (line, v) in probed.iter().enumerate() {
        let c = &configs[v["id"].as_str().unwrap()];
        let works = v["verdict"] == "works";
        let (cpu, gpu) = (
            c["cpu_calls"].as_u64().unwrap(),
            c["gpu_calls"].as_u64().unwrap(),
        );
        assert_eq!((cpu, gpu), if works { (0, 3) } else { (3, 0) }, "{c}");
        assert_eq!(c["routed"], if works { "gpu" } else { "cpu" });
        assert_eq!(
            c["rule"].as_str().unwrap(),
            format!("routes file line {}", line + 1)
        );
    }
    assert_same_training(&cpu_out, &routed_out);

    // 4. Probing one configuration again (say, after a driver update fixed the hang)
    //    updates its line and keeps the others.
    let hung = probed.iter().find(|v| v["verdict"] == "hangs").unwrap();
    let id = hung["id"].as_str().unwrap();
    let args = [
        "--record",
        p(&rec),
        "--out",
        p(&routes),
        "--miopen",
        p(&miopen),
        "--only",
        id,
    ];
    let out = run_probe(
        Path::new(env!("CARGO_BIN_EXE_probe_child")),
        &args,
        &[("FAKE_MIOPEN_FAULTS", "")],
        LIMIT,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let again = json_lines(&routes);
    assert_eq!(again.len(), probed.len());
    for v in &again {
        let before = probed.iter().find(|b| b["id"] == v["id"]).unwrap();
        if v["id"] == id {
            assert_eq!(
                (v["verdict"].as_str(), v["route"].as_str()),
                (Some("works"), Some("gpu"))
            );
        } else {
            assert_eq!(v, before);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn record_probe_and_routed_run_with_miopen_linked_directly() {
    record_probe_rerun(Loading::Direct);
}

#[test]
fn record_probe_and_routed_run_with_miopen_dlopened_locally() {
    record_probe_rerun(Loading::Plugin);
}

/// A routes line for a record line.
fn routed(v: &Value, route: &str) -> String {
    let mut v = v.clone();
    v["route"] = Value::from(route);
    v.to_string()
}

/// Records the training run (all on the CPU) into `dir/rec.jsonl`.
fn record(dir: &Path) -> Vec<Value> {
    let rec = dir.join("rec.jsonl");
    let out = train(
        Loading::Direct,
        &["--steps", "1", "--out", p(&dir.join("cpu.txt"))],
        &[("RDNA1SHIM_RECORD", p(&rec))],
    );
    assert_trained(&out);
    json_lines(&rec)
}

#[test]
fn a_malformed_routes_file_is_one_log_line_and_the_switches() {
    let dir = scratch("malformed");
    let rec = record(&dir);
    let good = routed(&rec[0], "gpu");
    let cases = [
        (
            "syntax",
            format!("{good}\n{{\"op\": \"conv_fwd\",\n"),
            "line 2: not a JSON object",
        ),
        (
            "record",
            std::fs::read_to_string(dir.join("rec.jsonl")).unwrap(),
            "line 1: no \"route\" member",
        ),
        (
            "conflict",
            format!("{good}\n{}", routed(&rec[0], "cpu")),
            "line 2: configuration",
        ),
        (
            "route",
            good.replace("\"gpu\"", "\"fpga\""),
            "line 1: \"route\" is \"fpga\"",
        ),
        (
            "binary",
            "\u{0}\u{1}garbage".to_string(),
            "line 1: not a JSON object",
        ),
    ];
    for (name, text, why) in cases {
        let path = dir.join(format!("{name}.jsonl"));
        std::fs::write(&path, text).unwrap();
        let summary = dir.join(format!("{name}.json"));
        // The fake GPU crashes: the run finishes only if the switches (all cpu) apply.
        let out = train(
            Loading::Direct,
            &["--steps", "1"],
            &[
                ("RDNA1SHIM_ROUTES", p(&path)),
                ("RDNA1SHIM_SUMMARY_JSON", p(&summary)),
            ],
        );
        assert_trained(&out);
        let err = stderr(&out);
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("RDNA1SHIM_ROUTES="))
            .collect();
        assert_eq!(lines.len(), 1, "one log line: {err}");
        assert!(
            lines[0].contains("ERROR")
                && lines[0].contains(why)
                && lines[0].contains("follows the per-operation switches"),
            "{name}: {}",
            lines[0]
        );
        let s = json_file(&summary);
        assert_eq!(s["routes"]["status"], "rejected", "{name}");
        assert!(
            s["routes"]["error"].as_str().unwrap().starts_with(why),
            "{name}"
        );
        for c in s["configurations"].as_array().unwrap() {
            assert_eq!(
                (c["routed"].as_str(), c["gpu_calls"].as_u64()),
                (Some("cpu"), Some(0)),
                "{c}"
            );
        }
    }
    // A missing file, with a switch set: the switch decides.
    let summary = dir.join("missing.json");
    let out = train(
        Loading::Direct,
        &["--steps", "1"],
        &[
            ("RDNA1SHIM_ROUTES", p(&dir.join("no-such-file.jsonl"))),
            ("RDNA1SHIM_SUMMARY_JSON", p(&summary)),
            ("RDNA1SHIM_CONV_BWD_WEIGHTS", "gpu"),
            ("FAKE_MIOPEN_FAULTS", ""),
        ],
    );
    assert_trained(&out);
    assert!(stderr(&out).contains("cannot read it"), "{}", stderr(&out));
    for c in json_file(&summary)["configurations"].as_array().unwrap() {
        let on_gpu = c["op"] == "conv_bwd_weights";
        assert_eq!(c["routed"], if on_gpu { "gpu" } else { "cpu" }, "{c}");
        if on_gpu {
            assert_eq!(c["rule"], "RDNA1SHIM_CONV_BWD_WEIGHTS=gpu");
            assert_eq!(c["gpu_calls"], 1);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unlisted_configurations_follow_the_switches_and_one_layers_directions_split() {
    let dir = scratch("unlisted");
    let rec = record(&dir);
    // Only layer 1 is listed: forward and backward-weights on the GPU, backward-data
    // on the CPU (against RDNA1SHIM_CONV_BWD_DATA=gpu).
    let mut listed = BTreeMap::new();
    let lines: Vec<String> = rec
        .iter()
        .filter(|v| layer(v) == 1)
        .map(|v| {
            let route = if op(v) == "conv_bwd_data" {
                "cpu"
            } else {
                "gpu"
            };
            listed.insert(v["id"].as_str().unwrap().to_string(), route);
            routed(v, route)
        })
        .collect();
    assert_eq!(listed.len(), 3);
    let routes = dir.join("routes.jsonl");
    std::fs::write(&routes, lines.join("\n")).unwrap();
    let summary = dir.join("summary.json");
    let out = train(
        Loading::Direct,
        &["--steps", "1", "--out", p(&dir.join("routed.txt"))],
        &[
            ("RDNA1SHIM_ROUTES", p(&routes)),
            ("RDNA1SHIM_SUMMARY_JSON", p(&summary)),
            ("RDNA1SHIM_CONV_FWD", "gpu"),
            ("RDNA1SHIM_CONV_BWD_DATA", "gpu"),
            ("RDNA1SHIM_LOG", "debug"),
            ("FAKE_MIOPEN_FAULTS", ""),
        ],
    );
    assert_trained(&out);
    let configs = summary_configs(&json_file(&summary));
    assert_eq!(configs.len(), rec.len());
    for v in &rec {
        let id = v["id"].as_str().unwrap();
        let c = &configs[id];
        let (route, rule) = match listed.get(id) {
            Some(r) => {
                let line = lines.iter().position(|l| l.contains(id)).unwrap() + 1;
                (r.to_string(), format!("routes file line {line}"))
            }
            None => {
                let (var, t) = match op(v) {
                    "conv_fwd" => ("RDNA1SHIM_CONV_FWD", "gpu"),
                    "conv_bwd_data" => ("RDNA1SHIM_CONV_BWD_DATA", "gpu"),
                    _ => ("RDNA1SHIM_CONV_BWD_WEIGHTS", "cpu"),
                };
                (t.to_string(), format!("{var}={t}, not in the routes file"))
            }
        };
        assert_eq!(
            (c["routed"].as_str().unwrap(), c["rule"].as_str().unwrap()),
            (route.as_str(), rule.as_str()),
            "{c}"
        );
        let calls = if route == "gpu" { (0, 1) } else { (1, 0) };
        assert_eq!(
            (
                c["cpu_calls"].as_u64().unwrap(),
                c["gpu_calls"].as_u64().unwrap()
            ),
            calls,
            "{c}"
        );
    }
    // The per-call log names the rule.
    let err = stderr(&out);
    let line_of = |o: &str| {
        lines
            .iter()
            .position(|l| l.contains(&format!("\"op\":\"{o}\"")))
            .unwrap()
            + 1
    };
    let (fwd, bwd_data) = (line_of("conv_fwd"), line_of("conv_bwd_data"));
    assert!(
        err.contains(&format!(
            "miopenConvolutionBackwardDataImmediate: cpu (by routes file line {bwd_data})"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "miopenConvolutionForwardImmediate: passed to MIOpen (routes file line {fwd})"
        )),
        "{err}"
    );
    assert!(err.contains("miopenConvolutionForward: passed to MIOpen (RDNA1SHIM_CONV_FWD=gpu, not in the routes file)"), "{err}");
    assert!(
        err.contains("(by RDNA1SHIM_CONV_BWD_WEIGHTS=cpu, not in the routes file)"),
        "{err}"
    );
    assert_same_training(&dir.join("cpu.txt"), &dir.join("routed.txt"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Routes a configuration's queries, Find, compile and compute calls alike: with
/// forward and backward-weights on the (healthy) GPU and backward-data on the CPU,
/// every mode of the harness passes, and the workspace each check was told is
/// MIOpen's 1 MiB for the GPU directions and the shim's 0 for the CPU one.
#[test]
fn every_entry_point_of_a_configuration_follows_its_route() {
    let dir = scratch("entry-points");
    let rec = dir.join("rec.jsonl");
    let case = ["--mode", "all", "--case", "2d_cnn_3x3_p1_f32"];
    let out = run_command(
        command(
            "harness_direct",
            &case,
            &[("RDNA1SHIM_RECORD", p(&rec))],
            true,
        ),
        false,
        LIMIT,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let record = json_lines(&rec);
    assert_eq!(
        record.len(),
        6,
        "three directions, with and without the deterministic attribute"
    );
    let lines: Vec<String> = record
        .iter()
        .map(|v| {
            routed(
                v,
                if op(v) == "conv_bwd_data" {
                    "cpu"
                } else {
                    "gpu"
                },
            )
        })
        .collect();
    let routes = dir.join("routes.jsonl");
    std::fs::write(&routes, lines.join("\n")).unwrap();
    let out = run_command(
        command(
            "harness_direct",
            &case,
            &[
                ("RDNA1SHIM_ROUTES", p(&routes)),
                ("FAKE_MIOPEN_HEALTHY", "1"),
            ],
            true,
        ),
        false,
        LIMIT,
    );
    shim_tests::assert_harness_passed(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut checked = 0;
    for l in stdout.lines().filter(|l| l.starts_with("ok ")) {
        let dir_word = l.split_whitespace().nth(3).unwrap();
        let want = if dir_word == "bwd_data" {
            "workspace=0"
        } else {
            "workspace=1048576"
        };
        assert!(l.ends_with(want), "{l}");
        checked += 1;
    }
    assert_eq!(checked, 15, "5 modes x 3 directions");
    assert!(stderr(&out).contains(GPU_RAN_MARKER));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Records every convolution configuration of the harness (1-D/2-D/3-D, fp32/fp16/
/// bf16, NCHW/NHWC/padded strides, groups, depthwise, both transposed forms, the
/// deterministic attribute, all entry points) and probes them: on a healthy GPU every
/// one works; with a kernel that flips its taps, those it changes are wrong.
#[test]
fn probe_rebuilds_every_harness_configuration() {
    let dir = scratch("harness");
    let (rec, rec2) = (dir.join("rec.jsonl"), dir.join("rec2.jsonl"));
    let out = run_command(
        command(
            "harness_direct",
            &["--mode", "all", "--only", "fwd"],
            &[("RDNA1SHIM_RECORD", p(&rec))],
            true,
        ),
        false,
        LIMIT,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let out = run_command(
        command(
            "harness_direct",
            &["--mode", "default", "--only", "bwd_data"],
            &[("RDNA1SHIM_RECORD", p(&rec2))],
            true,
        ),
        false,
        LIMIT,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let record = json_lines(&rec);
    let dtypes: BTreeSet<&str> = record
        .iter()
        .map(|v| v["dtype"].as_str().unwrap())
        .collect();
    let layouts: BTreeSet<&str> = record
        .iter()
        .map(|v| v["layout"].as_str().unwrap())
        .collect();
    assert_eq!(dtypes.len(), 3, "{dtypes:?}");
    assert_eq!(layouts.len(), 3, "{layouts:?}");
    assert!(
        record.iter().any(|v| v["mode"] == "transpose")
            && record.iter().any(|v| v["deterministic"] == true)
    );
    assert!(record.iter().any(|v| v["spatial_dims"] == 3));
    let miopen = bin("libMIOpen.so");
    let routes = dir.join("routes.jsonl");
    let probe = |envs: &[(&str, &str)]| {
        let args = [
            "--record",
            p(&rec),
            "--record",
            p(&rec2),
            "--out",
            p(&routes),
            "--timeout",
            "30",
            "--miopen",
            p(&miopen),
        ];
        let out = run_probe(
            Path::new(env!("CARGO_BIN_EXE_probe_child")),
            &args,
            envs,
            LIMIT * 2,
        );
        assert!(out.status.success(), "{}", describe(&out));
        json_lines(&routes)
    };
    let healthy = probe(&[("FAKE_MIOPEN_FAULTS", "")]);
    assert!(healthy.len() > 40, "{} configurations", healthy.len());
    for v in &healthy {
        assert_eq!(v["verdict"], "works", "{v}");
    }
    let flipped = probe(&[
        ("FAKE_MIOPEN_HEALTHY", "1"),
        ("FAKE_MIOPEN_BUG", "flip_kernel"),
    ]);
    for v in &flipped {
        // Flipping a kernel of size 1 changes nothing; any other is noticed.
        let k: u64 = v["w"]["dims"].as_array().unwrap()[2..]
            .iter()
            .map(|d| d.as_u64().unwrap())
            .product();
        assert_eq!(v["verdict"], if k == 1 { "works" } else { "wrong" }, "{v}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without `--miopen`, the probe asks the Python it is given where PyTorch keeps its
/// libraries (here a stand-in that answers with the doubles' folder) and probes that
/// libMIOpen; with no PyTorch and no ROCm it stops with a sentence saying what to pass.
#[test]
fn probe_defaults_to_the_libmiopen_next_to_pytorch() {
    let dir = scratch("default-lib");
    let rec = record(&dir);
    let id = rec[0]["id"].as_str().unwrap();
    let python = dir.join("python");
    let lib_dir = bin("libMIOpen.so").parent().unwrap().to_path_buf();
    std::fs::write(&python, format!("#!/bin/sh\necho {}\n", lib_dir.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let routes = dir.join("routes.jsonl");
    let rec_path = dir.join("rec.jsonl");
    let args = [
        "--record",
        p(&rec_path),
        "--out",
        p(&routes),
        "--only",
        id,
        "--python",
        p(&python),
    ];
    let child = Path::new(env!("CARGO_BIN_EXE_probe_child"));
    let out = run_probe(child, &args, &[("FAKE_MIOPEN_FAULTS", "")], LIMIT);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let miopen = lib_dir.join("libMIOpen.so");
    assert!(
        stdout.contains(&format!("MIOpen {}", miopen.display())),
        "{stdout}"
    );
    assert_eq!(json_lines(&routes)[0]["verdict"], "works");
    if !Path::new("/opt/rocm").exists() {
        std::fs::write(&python, "#!/bin/sh\nexit 1\n").unwrap();
        let out = run_probe(child, &args, &[], LIMIT);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(
            stderr(&out).contains("pass --miopen PATH"),
            "{}",
            describe(&out)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
