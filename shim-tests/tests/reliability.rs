//! Owns the reliability tests of rdna1shim, run in child processes with
//! `LD_PRELOAD=librdna1shim.so` against the fake MIOpen and fake HIP through
//! `reliability_driver` (shim-tests/c/reliability.c):
//! - bad input: each bad call returns its status, logs one line and writes nothing;
//! - HIP faults injected at every HIP call a shim call makes (copy, stream sync,
//!   pinned allocation) and host memory exhaustion: a status and a log line, the
//!   output untouched (or, when only the final wait fails, completely written), the
//!   next call works;
//! - concurrency: threads with their own handles and streams get the single-threaded
//!   results byte for byte, without deadlock;
//! - fork: a child that calls the shim after fork, and one that does not, finish;
//! - quiet when unused: loading the shim into a process that never calls MIOpen
//!   starts no thread, creates no file and logs nothing;
//! - panics inside exports become `miopenStatusInternalError` with a log line.
//!
//! Each test prints the counts the issue asks for (bad inputs tried, faults
//! injected, concurrent calls made).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use shim_tests::{assert_harness_passed, command, describe, run, run_command, shim_so};

const DRIVER: &str = "reliability_driver";
const BAD_PARM: i32 = 3;
const ALLOC_FAILED: i32 = 4;
const INTERNAL_ERROR: i32 = 5;
const NOT_IMPLEMENTED: i32 = 6;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The shim's log lines of each call, from the driver's `@@case NAME` / `@@end NAME`
/// markers on stderr.
fn case_logs(err: &str) -> Vec<(String, Vec<String>)> {
    let mut cases = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in err.lines() {
        if let Some(name) = line.strip_prefix("@@case ") {
            current = Some((name.to_string(), Vec::new()));
        } else if line.starts_with("@@end ") {
            cases.extend(current.take());
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push(line.to_string());
        }
    }
    cases
}

/// The log lines of the call named `name`.
fn log_of<'a>(logs: &'a [(String, Vec<String>)], name: &str) -> &'a [String] {
    &logs
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no log section for {name}"))
        .1
}

/// The value of `key=` in the stdout line starting with `@@tag `.
fn field(out: &str, tag: &str, key: &str) -> Option<String> {
    let line = out.lines().find(|l| l.starts_with(&format!("@@{tag} ")))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

fn num(out: &str, tag: &str, key: &str) -> i64 {
    field(out, tag, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no @@{tag} {key}= in\n{out}"))
}

#[test]
fn bad_input_returns_its_status_logs_and_writes_nothing() {
    let out = run(DRIVER, &["badinput"], &[], true);
    let checks = assert_harness_passed(&out);
    let o = stdout(&out);
    // expected status of every bad case, by name "case/export"
    let bad: Vec<(String, i32)> = o
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("@@bad ")?;
            let (name, expect) = rest.split_once(" expect=")?;
            Some((name.to_string(), expect.parse().ok()?))
        })
        .collect();
    let tried = num(&o, "bad_inputs_tried", "n") as usize;
    assert_eq!(tried, bad.len());
    assert!(tried >= 55, "only {tried} bad inputs");
    let kinds: BTreeSet<i32> = bad.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([BAD_PARM, INTERNAL_ERROR, NOT_IMPLEMENTED])
    );
    let logs = case_logs(&stderr(&out));
    for (name, expect) in &bad {
        let export = name.rsplit('/').next().unwrap();
        let lines = log_of(&logs, name);
        let level = if *expect == NOT_IMPLEMENTED {
            " WARN "
        } else {
            " ERROR "
        };
        let logged = lines
            .iter()
            .filter(|l| l.contains(level) && l.contains(&format!("{export}: ")))
            .count();
        assert_eq!(
            logged, 1,
            "{name}: expected one{level}line naming {export}, got {lines:#?}"
        );
    }
    // the good calls at the edges (pad covering the kernel, no or tiny workspace) log nothing
    for (name, lines) in logs.iter().filter(|(n, _)| !n.contains('/')) {
        assert!(
            !lines
                .iter()
                .any(|l| l.contains(" ERROR ") || l.contains(" WARN ")),
            "good call {name} logged a problem: {lines:#?}"
        );
    }
    println!("{tried} bad inputs tried ({checks} checks passed)");
}

/// HIP functions a call uses, in the order a call's fault windows are walked.
const HIP_CALLS: [&str; 5] = [
    "hipMemcpyAsync",
    "hipEventCreateWithFlags",
    "hipEventRecord",
    "hipEventSynchronize",
    "hipStreamSynchronize",
];

/// The fake HIP's call counter of `f` around the driver's first call of an op:
/// (before, after).
fn window(out: &str, f: &str) -> (i64, i64) {
    (num(out, "counts before", f), num(out, "counts after", f))
}

fn fault_run(op: &str, beta0: bool, fail: Option<&str>) -> Output {
    fault_run_with(op, beta0, fail, &[])
}

fn fault_run_with(op: &str, beta0: bool, fail: Option<&str>, extra: &[(&str, &str)]) -> Output {
    let mut args = vec!["fault", "--op", op];
    if beta0 {
        args.push("--beta0");
    }
    let mut envs = vec![("RDNA1SHIM_LOG", "debug")];
    if let Some(f) = fail {
        envs.push(("FAKE_HIP_FAIL", f));
    }
    envs.extend_from_slice(extra);
    run(DRIVER, &args, &envs, true)
}

fn outcome(out: &Output, label: &str) -> (i32, String) {
    let o = stdout(out);
    (
        num(&o, label, "status") as i32,
        field(&o, label, "output").unwrap_or_default(),
    )
}

/// One injected fault: the call fails with `status`, its output is one of `outputs`,
/// the log says `log`, and the recovery call succeeds completely.
fn expect_fault(out: &Output, what: &str, status: i32, outputs: &[&str], log: &str) {
    assert_harness_passed(out);
    let (s, o) = outcome(out, "first");
    assert_eq!(s, status, "{what}: status\n{}", describe(out));
    assert!(
        outputs.contains(&o.as_str()),
        "{what}: output {o}, expected one of {outputs:?}\n{}",
        describe(out)
    );
    assert_eq!(
        outcome(out, "recovery"),
        (0, "complete".to_string()),
        "{what}: the next call\n{}",
        describe(out)
    );
    let logs = case_logs(&stderr(out));
    let first = log_of(&logs, "first");
    assert!(
        first.iter().any(|l| l.contains(log)),
        "{what}: no log line containing {log:?}: {first:#?}"
    );
}

#[test]
fn hip_faults_surface_as_status_never_half_write_and_the_next_call_works() {
    let mut injected = 0;
    for (op, beta0) in [
        ("fwd", false),
        ("fwd", true),
        ("bwd_data", false),
        ("bwd_weights", false),
        ("fwd_bias", false),
        ("bwd_bias", false),
    ] {
        let base = fault_run(op, beta0, None);
        assert_harness_passed(&base);
        assert_eq!(outcome(&base, "first"), (0, "complete".to_string()));
        let b = stdout(&base);
        let memcpy = window(&b, "hipMemcpyAsync");
        let sync = window(&b, "hipStreamSynchronize");
        let host_malloc = window(&b, "hipHostMalloc");
        // Downloads and one upload; the last wait is the stream's, after the upload.
        assert!(memcpy.1 - memcpy.0 >= 2 && sync.1 - sync.0 >= 1);
        let what = |f: &str| format!("{op}{} {f}", if beta0 { " beta=0" } else { "" });
        for func in HIP_CALLS {
            let (from, to) = window(&b, func);
            for n in from + 1..=to {
                let f = format!("{func}:{n}");
                let log = match func {
                    "hipMemcpyAsync" if n == to => "hipMemcpyAsync (host to device) failed",
                    "hipMemcpyAsync" => "hipMemcpyAsync (device to host) failed",
                    _ => &format!("{func} failed"),
                };
                // Once the upload is queued, the last wait failing leaves the output
                // written in full or untouched, never in part.
                let outputs: &[&str] = if func == "hipStreamSynchronize" && n == to {
                    &["untouched", "complete"]
                } else {
                    &["untouched"]
                };
                let mut specs = vec![f.clone()];
                if func.ends_with("Synchronize") {
                    // pageable staging: a buffer freed while its copy is queued corrupts the heap
                    specs.push(format!("hipHostMalloc:*,{f}"));
                }
                for spec in specs {
                    let out = fault_run(op, beta0, Some(&spec));
                    expect_fault(&out, &what(&spec), INTERNAL_ERROR, outputs, log);
                    injected += 1;
                }
            }
        }
        // pinned staging cannot be had: pageable memory instead, and the call succeeds
        let mut pinned: Vec<String> = (host_malloc.0 + 1..=host_malloc.1)
            .map(|n| format!("hipHostMalloc:{n}"))
            .collect();
        pinned.push("hipHostMalloc:*".into());
        for f in &pinned {
            let out = fault_run(op, beta0, Some(f));
            assert_harness_passed(&out);
            assert_eq!(
                outcome(&out, "first"),
                (0, "complete".to_string()),
                "{}",
                what(f)
            );
            let logs = case_logs(&stderr(&out));
            let first = log_of(&logs, "first");
            assert!(
                first.iter().any(|l| l.contains("using pageable memory")),
                "{}: {first:#?}",
                what(f)
            );
            injected += 1;
        }
    }
    println!("{injected} HIP faults injected");
    assert!(injected >= 60, "only {injected} faults");
}

/// A 1×1/2 kernel over an even height copies only the input rows it reads, with pitched
/// copies (and zeroes the rows between in an input gradient with pitched memsets): a
/// failure of any of them is a status and a log line, the output is untouched (or,
/// once the memset of an input gradient is queued, the error says that those samples
/// may have been written), and the next call works.
#[test]
fn pitched_copy_faults_surface_as_status_and_the_next_call_works() {
    let rows_run = |op: &str, beta0: bool, fail: Option<&str>| {
        let mut args = vec!["fault", "--op", op, "--rows"];
        if beta0 {
            args.push("--beta0");
        }
        let mut envs = vec![("RDNA1SHIM_LOG", "debug")];
        if let Some(f) = fail {
            envs.push(("FAKE_HIP_FAIL", f));
        }
        run(DRIVER, &args, &envs, true)
    };
    let mut injected = 0;
    for (op, beta0) in [("fwd", false), ("bwd_data", true), ("bwd_weights", false)] {
        let base = rows_run(op, beta0, None);
        assert_harness_passed(&base);
        assert_eq!(outcome(&base, "first"), (0, "complete".to_string()), "{op}");
        let b = stdout(&base);
        let logs = case_logs(&stderr(&base));
        assert!(
            log_of(&logs, "first")
                .iter()
                .any(|l| l.contains("input_rows=1/2")),
            "{op}: the call line does not say that rows were skipped"
        );
        let copies = window(&b, "hipMemcpy2DAsync");
        let memsets = window(&b, "hipMemset2DAsync");
        assert!(copies.1 > copies.0, "{op}: no pitched copy");
        assert_eq!(
            memsets.1 > memsets.0,
            op == "bwd_data",
            "{op}: pitched memsets"
        );
        for (func, (from, to)) in [("hipMemcpy2DAsync", copies), ("hipMemset2DAsync", memsets)] {
            for n in from + 1..=to {
                let f = format!("{func}:{n}");
                // An input gradient zeroes the rows between while it computes: once that
                // is queued, its samples may have been written.
                let (log, outputs): (&str, &[&str]) = match func {
                    "hipMemset2DAsync" => ("hipMemset2DAsync failed", &["untouched"]),
                    _ if op == "bwd_data" => ("may have been written", &["untouched", "partial"]),
                    _ => ("hipMemcpy2DAsync (device to host) failed", &["untouched"]),
                };
                let out = rows_run(op, beta0, Some(&f));
                expect_fault(&out, &format!("{op} {f}"), INTERNAL_ERROR, outputs, log);
                injected += 1;
            }
        }
    }
    assert!(injected >= 4, "only {injected} faults");
}

/// The log lines of the first call of a run without faults, which succeeded whole.
fn first_call_lines(base: &Output) -> Vec<String> {
    assert_harness_passed(base);
    assert_eq!(outcome(base, "first"), (0, "complete".to_string()));
    log_of(&case_logs(&stderr(base)), "first").to_vec()
}

/// The call after a failed one succeeds and writes its whole output.
fn assert_recovered(out: &Output, what: &str) {
    assert_eq!(
        outcome(out, "recovery"),
        (0, "complete".to_string()),
        "{what}"
    );
}

/// Where the log says that the first of two samples may have been written (`prefix`),
/// that sample is written or not and the second untouched; else both are untouched.
/// Returns `prefix`.
fn check_written_prefix(prefix: bool, letters: &str, what: &str) -> bool {
    if prefix {
        assert!(["UU", "CU"].contains(&letters), "{what}");
    } else {
        assert_eq!(letters, "UU", "{what}");
    }
    prefix
}

/// The letters `samples=` of a case (one a sample: U untouched, C complete, P partial).
fn samples(out: &Output, label: &str) -> String {
    field(&stdout(out), label, "samples").unwrap_or_default()
}

#[test]
fn a_fault_inside_a_pipelined_call_says_which_samples_were_written() {
    // Two samples, one a chunk: the first chunk's result is queued for upload before
    // the second chunk's copies are waited for.
    let chunked = [("RDNA1SHIM_CHUNKS", "2")];
    let mut injected = 0;
    for (op, beta0) in [("fwd", false), ("bwd_data", true), ("bwd_weights", false)] {
        let base = fault_run_with(op, beta0, None, &chunked);
        let lines = first_call_lines(&base);
        assert!(
            lines.iter().any(|l| l.contains("chunks=2")),
            "{op}: the call is not cut in two: {lines:#?}"
        );
        let b = stdout(&base);
        let mut saw_prefix = false;
        for func in HIP_CALLS {
            let (from, to) = window(&b, func);
            for n in from + 1..=to {
                let f = format!("{func}:{n}");
                let out = fault_run_with(op, beta0, Some(&f), &chunked);
                assert_harness_passed(&out);
                let (status, _) = outcome(&out, "first");
                let letters = samples(&out, "first");
                let logs = case_logs(&stderr(&out));
                let lines = log_of(&logs, "first");
                let prefix = lines
                    .iter()
                    .any(|l| l.contains("samples 0..1 of 2 of the output may have been written"));
                let what = format!("{op} {f}: samples {letters}, log {lines:#?}");
                let all = |c: char| !letters.is_empty() && letters.chars().all(|l| l == c);
                if func == "hipStreamSynchronize" {
                    // the final waits (the handle's stream, the uploads' stream): every
                    // result was queued
                    assert!(all('U') || all('C'), "{what}");
                } else {
                    assert_eq!(status, INTERNAL_ERROR, "{what}");
                    assert!(!letters.contains('P'), "{what}");
                    if op == "bwd_weights" {
                        // one sum over both chunks, copied back at the end
                        assert!(all('U'), "{what}");
                        assert!(!prefix, "{what}");
                    } else {
                        saw_prefix |= check_written_prefix(prefix, &letters, &what);
                    }
                }
                assert_recovered(&out, &what);
                injected += 1;
            }
        }
        assert!(
            op == "bwd_weights" || saw_prefix,
            "{op}: no fault hit after the first chunk's upload"
        );
    }
    println!("{injected} HIP faults injected into pipelined calls");
}

/// A plain fp32 NCHW forward pass runs as one gated engine call, its two samples two
/// pieces: a fault at any HIP call fails it with a status, never leaves a sample half
/// written, and the log says which samples may have been written; the first sample's
/// result is queued once its piece is done, so a fault after that leaves it written.
/// A plain weight gradient runs gated too: its pieces are both inputs' samples, and
/// its output, copied back whole at the end, is untouched by any failed call.
#[test]
fn a_fault_inside_a_gated_pass_says_which_samples_were_written() {
    let pieces = [("RDNA1SHIM_CHUNKS", "2")];
    for op in ["fwd", "bwd_weights"] {
        let run_plain = |fail: Option<&str>| {
            let mut args = vec!["fault", "--op", op, "--plain"];
            if fail.is_none() {
                args.push("--beta0");
            }
            let mut envs = vec![("RDNA1SHIM_LOG", "debug")];
            if let Some(f) = fail {
                envs.push(("FAKE_HIP_FAIL", f));
            }
            envs.extend_from_slice(&pieces);
            run(DRIVER, &args, &envs, true)
        };
        let base = run_plain(None);
        let lines = first_call_lines(&base);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("chunks=2") && l.contains(" gated:")),
            "{op}: the call is not gated in two pieces: {lines:#?}"
        );
        let b = stdout(&base);
        let (mut injected, mut saw_prefix) = (0, false);
        for func in HIP_CALLS {
            let (from, to) = window(&b, func);
            for n in from + 1..=to {
                let f = format!("{func}:{n}");
                let out = run_plain(Some(&f));
                assert_harness_passed(&out);
                let (status, _) = outcome(&out, "first");
                let letters = samples(&out, "first");
                let logs = case_logs(&stderr(&out));
                let lines = log_of(&logs, "first");
                let what = format!("{op} {f}: samples {letters}, log {lines:#?}");
                assert!(!letters.contains('P'), "{what}");
                // Each piece's event is waited for once, whichever thread needs it first.
                let hit = format!("injected failure of {func} (call #{n})");
                assert!(lines.iter().any(|l| l.contains(&hit)), "{what}");
                let prefix = lines
                    .iter()
                    .any(|l| l.contains("samples 0..1 of 2 of the output may have been written"));
                let all = |c: char| !letters.is_empty() && letters.chars().all(|l| l == c);
                if func == "hipStreamSynchronize" {
                    // the final waits: every result was queued
                    let whole = op == "bwd_weights" && (all('U') || all('C'));
                    assert!(
                        whole || ["UU", "CC", "CU"].contains(&letters.as_str()),
                        "{what}"
                    );
                } else if op == "bwd_weights" {
                    // one sum over both pieces, copied back at the end
                    assert_eq!(status, INTERNAL_ERROR, "{what}");
                    assert!(all('U'), "{what}");
                    assert!(!prefix, "{what}");
                } else {
                    assert_eq!(status, INTERNAL_ERROR, "{what}");
                    saw_prefix |= check_written_prefix(prefix, &letters, &what);
                }
                assert_recovered(&out, &what);
                injected += 1;
            }
        }
        assert!(injected >= 6, "{op}: only {injected} faults");
        assert!(
            op == "bwd_weights" || saw_prefix,
            "no fault hit after the first piece's upload"
        );
        println!("{op}: {injected} HIP faults injected into gated calls");
    }
}

/// Host memory stays flat over many calls: staging, events and work buffers are
/// reused, not accumulated. Every op and problem in turn, pipelined in chunks and not.
#[test]
fn resident_memory_stays_flat_over_ten_thousand_calls() {
    for chunks in ["auto", "2/1"] {
        let out = run(
            DRIVER,
            &["soak", "--calls", "10000"],
            &[("FAKE_HIP_DELAY_US", "0"), ("RDNA1SHIM_CHUNKS", chunks)],
            true,
        );
        assert_harness_passed(&out);
        let o = stdout(&out);
        let (warm, end) = (
            num(&o, "soak", "rss_warm_kb"),
            num(&o, "soak", "rss_end_kb"),
        );
        assert!(warm > 0 && end > 0, "{o}");
        // After the first thousand calls nothing more may pile up (1 MiB of slack for
        // the allocator's own bookkeeping).
        assert!(
            end - warm <= 1024,
            "{chunks}: resident set grew from {warm} kB to {end} kB over 9000 calls"
        );
        println!("{chunks}: resident set {warm} kB after 1000 calls, {end} kB after 10000");
    }
}

#[test]
fn out_of_host_memory_is_alloc_failed_and_the_next_call_works() {
    let out = run(DRIVER, &["oom"], &[], true);
    assert_harness_passed(&out);
    let o = stdout(&out);
    assert_eq!(num(&o, "oom_staging", "status"), ALLOC_FAILED as i64);
    assert_eq!(num(&o, "oom_working_copy", "status"), ALLOC_FAILED as i64);
    assert_eq!(outcome(&out, "recovery"), (0, "complete".to_string()));
    let logs = case_logs(&stderr(&out));
    for case in ["oom_staging", "oom_working_copy"] {
        let lines = log_of(&logs, case);
        assert!(
            lines
                .iter()
                .any(|l| l.contains(" ERROR ") && l.contains("miopenStatusAllocFailed")),
            "{case}: {lines:#?}"
        );
    }
    println!("2 out-of-host-memory faults injected");
}

#[test]
fn concurrent_threads_get_the_single_threaded_results_without_deadlock() {
    let mut total = 0;
    // fewer engine workers than calling threads, and a single one
    for (pool, threads, iters) in [("2", "8", "6"), ("1", "4", "3")] {
        let cmd = command(
            DRIVER,
            &["threads", "--threads", threads, "--iters", iters],
            &[("RDNA1SHIM_THREADS", pool), ("FAKE_HIP_DELAY_US", "300")],
            true,
        );
        let out = run_command(cmd, false, Duration::from_secs(180));
        assert_harness_passed(&out);
        let calls = num(&stdout(&out), "concurrent_calls", "n");
        assert!(calls > 0);
        total += calls;
    }
    println!("{total} concurrent calls made");
}

#[test]
fn a_forked_child_neither_hangs_nor_crashes() {
    let cmd = command(DRIVER, &["fork"], &[], true);
    let out = run_command(cmd, false, Duration::from_secs(120));
    assert_harness_passed(&out);
    // the parent and the child that called the shim each write their own summary
    let err = stderr(&out);
    let pids: BTreeSet<&str> = err
        .lines()
        .filter_map(|l| l.split("summary at exit (pid ").nth(1))
        .collect();
    assert!(pids.len() >= 2, "{}", describe(&out));
}

#[test]
fn a_panic_inside_an_export_is_internal_error_with_a_log_line() {
    let exports = [
        "miopenConvolutionForward",
        "miopenConvolutionBackwardData",
        "miopenConvolutionBackwardWeights",
        "miopenConvolutionForwardImmediate",
        "miopenConvolutionForwardBias",
        "miopenConvolutionBackwardBias",
        "miopenFindConvolutionForwardAlgorithm",
        "miopenConvolutionForwardGetWorkSpaceSize",
        "miopenConvolutionForwardGetSolution",
    ];
    for name in exports {
        let out = run(
            DRIVER,
            &["panic", "--export", name],
            &[("RDNA1SHIM_TEST_PANIC", name)],
            true,
        );
        assert_harness_passed(&out);
        assert_eq!(num(&stdout(&out), "panic", "status"), INTERNAL_ERROR as i64);
        let want = format!("{name}: internal error (panic: RDNA1SHIM_TEST_PANIC={name})");
        assert!(stderr(&out).contains(&want), "{}", describe(&out));
    }
    println!("{} forced panics contained", exports.len());
}

/// A fresh empty directory under the system temp dir.
fn empty_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rdna1shim-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn entries(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[test]
fn loading_the_shim_without_calling_miopen_does_no_work() {
    let dir = empty_dir("quiet");
    let tmp = dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let log = dir.join("shim.log");
    let log_s = log.to_string_lossy().into_owned();
    let tmp_s = tmp.to_string_lossy().into_owned();
    let envs = [
        ("RDNA1SHIM_LOG", "debug"),
        ("RDNA1SHIM_LOG_FILE", log_s.as_str()),
        ("TMPDIR", tmp_s.as_str()),
        ("HOME", tmp_s.as_str()),
    ];
    let quiet = |program: &str, args: &[&str]| -> Output {
        let mut cmd = command(program, args, &envs, true);
        cmd.current_dir(&dir);
        let out = run_command(cmd, false, Duration::from_secs(60));
        assert!(out.status.success(), "{program}: {}", describe(&out));
        assert!(
            out.stderr.is_empty(),
            "{program} logged: {}",
            describe(&out)
        );
        out
    };

    // a C program: one thread, and the shim really is loaded
    let out = quiet("quiet_probe", &[]);
    assert_eq!(stdout(&out), "threads=1 shim_mapped=1\n");
    // /bin/true
    let out = quiet("/bin/true", &[]);
    assert!(out.stdout.is_empty());
    // a Python one-liner, when there is a Python
    let python = find_in_path("python3").and_then(|p| {
        let o = std::process::Command::new(p)
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()?;
        let exe = String::from_utf8_lossy(&o.stdout).trim().to_string();
        (o.status.success() && Path::new(&exe).is_file()).then_some(exe)
    });
    match &python {
        Some(py) => {
            let out = quiet(
                py,
                &[
                    "-c",
                    "import os; print(len(os.listdir('/proc/self/task')), \
                     any('librdna1shim' in l for l in open('/proc/self/maps')))",
                ],
            );
            assert_eq!(stdout(&out), "1 True\n", "{py}");
        }
        None => println!("no python3 found: the Python one-liner was not run"),
    }
    // no log file, nothing in the working directory or TMPDIR/HOME
    assert_eq!(entries(&dir), vec!["tmp".to_string()]);
    assert!(entries(&tmp).is_empty());

    // system calls, where strace exists: no thread, no file written or created
    if let Some(strace) = find_in_path("strace") {
        let trace = dir.join("trace");
        let trace_s = trace.to_string_lossy().into_owned();
        let strace_s = strace.to_string_lossy().into_owned();
        let preload = format!("LD_PRELOAD={}", shim_so().to_string_lossy());
        let mut cmd = command(
            &strace_s,
            &[
                "-f",
                "-qq",
                "-o",
                &trace_s,
                "-E",
                &preload,
                "-e",
                "trace=%process,%file,write",
                "/bin/true",
            ],
            &envs,
            false,
        );
        cmd.current_dir(&dir);
        let out = run_command(cmd, false, Duration::from_secs(60));
        assert!(out.status.success(), "{}", describe(&out));
        let text = std::fs::read_to_string(&trace).unwrap();
        assert!(
            text.contains("librdna1shim"),
            "the shim was not loaded:\n{text}"
        );
        for line in text.lines() {
            let spawns_or_writes = [
                "clone(", "clone3(", "fork(", "vfork(", "write(", "mkdir", "unlink",
            ]
            .iter()
            .any(|s| line.contains(s));
            let opens_for_writing = line.contains("open")
                && ["O_WRONLY", "O_RDWR", "O_CREAT"]
                    .iter()
                    .any(|f| line.contains(f));
            assert!(
                !spawns_or_writes && !opens_for_writing,
                "loading the shim did work: {line}\n{text}"
            );
        }
    } else {
        println!("no strace found: system calls were not traced");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
