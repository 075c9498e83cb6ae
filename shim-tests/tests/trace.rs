//! Crash forensics: with `RDNA1SHIM_TRACE_ALL=1` every MIOpen call is logged, with its
//! arguments, before it runs — so when a call crashes the process, the last line of the
//! log names it. Without the variable, nothing of the kind is logged.

use std::path::PathBuf;

use shim_tests::{assert_harness_passed, describe, run, signal_of, CRASH_MARKER};

fn log_path(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("rdna1shim-trace-{tag}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn read(p: &PathBuf) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn every_call_is_logged_with_arguments_in_both_loading_scenarios() {
    for program in ["harness_direct", "harness_dlopen"] {
        let log = log_path(program);
        let out = run(
            program,
            &["--mode", "default", "--case", "2d_cnn_3x3_p1_f32"],
            &[
                ("RDNA1SHIM_TRACE_ALL", "1"),
                ("RDNA1SHIM_LOG", "warn"),
                ("RDNA1SHIM_LOG_FILE", log.to_str().unwrap()),
            ],
            true,
        );
        assert_harness_passed(&out);
        let text = read(&log);
        let create = text
            .find("call miopenCreate(")
            .unwrap_or_else(|| panic!("{program}: no miopenCreate line:\n{text}"));
        let set = text
            .find("call miopenSetTensorDescriptor(")
            .expect("descriptor calls are traced");
        let fwd = text
            .find("call miopenConvolutionForward (intercepted")
            .expect("intercepted calls are traced");
        assert!(
            create < set && set < fwd,
            "{program}: calls out of order:\n{text}"
        );
        assert!(
            text.contains("dataType=1, nbDims=4"),
            "arguments are logged:\n{text}"
        );
    }
}

#[test]
fn the_last_line_names_the_call_that_crashed() {
    let log = log_path("crash");
    // Forward is sent to the fake MIOpen, whose kernel aborts like RDNA1's.
    let out = run(
        "harness_direct",
        &[
            "--mode",
            "default",
            "--case",
            "2d_cnn_3x3_p1_f32",
            "--only",
            "fwd",
        ],
        &[
            ("RDNA1SHIM_TRACE_ALL", "1"),
            ("RDNA1SHIM_CONV_FWD", "gpu"),
            ("RDNA1SHIM_LOG_FILE", log.to_str().unwrap()),
        ],
        true,
    );
    assert_eq!(
        signal_of(&out.status),
        Some(6),
        "expected the fake kernel's abort\n{}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The fake names the function whose kernel crashed: "fake MIOpen: <function>: Memory access fault ..."
    let crashed = stderr
        .lines()
        .find(|l| l.contains(CRASH_MARKER))
        .and_then(|l| l.split("fake MIOpen: ").nth(1))
        .and_then(|l| l.split(':').next())
        .unwrap_or_else(|| panic!("no crash message\n{stderr}"));
    assert!(crashed.starts_with("miopen"), "{crashed}");
    // The shim's crash summary is written on the way down, to stderr and to the log file.
    assert!(
        stderr.contains("rdna1shim: summary at crash (signal 6): conv_fwd cpu=0 gpu="),
        "{stderr}"
    );
    let text = read(&log);
    let mut lines = text.lines().rev().filter(|l| !l.trim().is_empty());
    let summary = lines.next().unwrap_or("");
    assert!(summary.starts_with("rdna1shim: summary at crash"), "{text}");
    let last = lines.next().unwrap_or("");
    assert!(
        last.contains(&format!("call {crashed} -> real MIOpen")),
        "crashed in {crashed}; last call line: {last}\n{text}"
    );
}

#[test]
fn without_trace_all_no_call_lines_are_written() {
    let log = log_path("quiet");
    let out = run(
        "harness_direct",
        &["--mode", "default", "--case", "2d_cnn_3x3_p1_f32"],
        &[
            ("RDNA1SHIM_LOG", "debug"),
            ("RDNA1SHIM_LOG_FILE", log.to_str().unwrap()),
        ],
        true,
    );
    assert_harness_passed(&out);
    let text = read(&log);
    assert!(
        text.contains("miopenConvolutionForward: cpu"),
        "the debug log was written:\n{text}"
    );
    assert!(
        !text.contains("call miopen"),
        "trace lines without RDNA1SHIM_TRACE_ALL:\n{text}"
    );
}
