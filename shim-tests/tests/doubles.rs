//! Owns the tests of the test doubles themselves (no shim involved): the fake
//! MIOpen really crashes like RDNA1, the harness + naive reference + fake HIP
//! agree in every mode (directly and through dlopen), device memory and
//! stream ordering behave like a discrete GPU, fault injection works, and the
//! harness notices deliberately wrong results.

use shim_tests::{
    assert_harness_passed, describe, run, signal_of, summary, CRASH_MARKER, GPU_RAN_MARKER,
};

const SIGABRT: i32 = 6;
const SIGSEGV: i32 = 11;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_rdna1_crash(program: &str) {
    let out = run(program, &["--mode", "default"], &[], false);
    assert_eq!(
        signal_of(&out.status),
        Some(SIGABRT),
        "expected an abort\n{}",
        describe(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains(CRASH_MARKER) && err.contains("HSA_STATUS_ERROR_MEMORY_APERTURE_VIOLATION"),
        "crash message missing\n{}",
        describe(&out)
    );
    // The very first kernel-running call (PyTorch's Find) is the one that dies.
    assert!(
        err.contains("fake MIOpen: miopenFindConvolutionForwardAlgorithm: Memory access fault"),
        "{}",
        describe(&out)
    );
    assert!(summary(&stdout(&out)).is_none(), "{}", describe(&out));
}

#[test]
fn without_shim_the_first_convolution_aborts_like_rdna1() {
    assert_rdna1_crash("harness_direct");
}

#[test]
fn without_shim_the_first_convolution_aborts_like_rdna1_via_dlopen() {
    assert_rdna1_crash("harness_dlopen");
}

#[test]
fn every_kernel_entry_point_crashes_without_healthy_mode() {
    for (mode, case, only, func) in [
        (
            "default",
            "",
            "bwd_data",
            "miopenFindConvolutionBackwardDataAlgorithm",
        ),
        (
            "default",
            "",
            "bwd_weights",
            "miopenFindConvolutionBackwardWeightsAlgorithm",
        ),
        ("default", "alpha", "fwd", "miopenConvolutionForward"),
        (
            "default",
            "alpha",
            "bwd_data",
            "miopenConvolutionBackwardData",
        ),
        (
            "default",
            "alpha",
            "bwd_weights",
            "miopenConvolutionBackwardWeights",
        ),
        ("immediate", "", "fwd", "miopenConvolutionForwardImmediate"),
        (
            "immediate",
            "",
            "bwd_data",
            "miopenConvolutionBackwardDataImmediate",
        ),
        (
            "immediate",
            "",
            "bwd_weights",
            "miopenConvolutionBackwardWeightsImmediate",
        ),
        (
            "compile",
            "",
            "fwd",
            "miopenConvolutionForwardCompileSolution",
        ),
        (
            "compile",
            "",
            "bwd_data",
            "miopenConvolutionBackwardDataCompileSolution",
        ),
        (
            "compile",
            "",
            "bwd_weights",
            "miopenConvolutionBackwardWeightsCompileSolution",
        ),
        ("default", "", "fwd_bias", "miopenConvolutionForwardBias"),
        ("default", "", "bwd_bias", "miopenConvolutionBackwardBias"),
    ] {
        let out = run(
            "harness_direct",
            &["--mode", mode, "--case", case, "--only", only],
            &[],
            false,
        );
        assert_eq!(signal_of(&out.status), Some(SIGABRT), "{}", describe(&out));
        let want = format!("fake MIOpen: {func}: {CRASH_MARKER}");
        assert!(stderr(&out).contains(&want), "{want}\n{}", describe(&out));
    }
}

fn healthy(program: &str, mode: &str) {
    let out = run(
        program,
        &["--mode", mode],
        &[("FAKE_MIOPEN_HEALTHY", "1")],
        false,
    );
    let n = assert_harness_passed(&out);
    assert!(n >= 100, "only {n} checks ran");
    assert!(stderr(&out).contains(GPU_RAN_MARKER), "{}", describe(&out));
    assert!(!stderr(&out).contains(CRASH_MARKER), "{}", describe(&out));
}

#[test]
fn healthy_fake_passes_default_mode() {
    healthy("harness_direct", "default");
}

#[test]
fn healthy_fake_passes_benchmark_mode() {
    healthy("harness_direct", "benchmark");
}

#[test]
fn healthy_fake_passes_deterministic_mode() {
    healthy("harness_direct", "deterministic");
}

#[test]
fn healthy_fake_passes_immediate_mode() {
    healthy("harness_direct", "immediate");
}

#[test]
fn healthy_fake_passes_compile_mode() {
    healthy("harness_direct", "compile");
}

#[test]
fn healthy_fake_passes_every_mode_via_dlopen() {
    healthy("harness_dlopen", "all");
}

#[test]
fn harness_cli_filters_and_lists() {
    let out = run("harness_direct", &["--list"], &[], false);
    assert!(out.status.success(), "{}", describe(&out));
    let list = stdout(&out);
    for needle in [
        "1d_k3_p1_f32 fwd bwd_data bwd_weights",
        "3d_k3_p1_f32",
        "2d_depthwise_p1_f32",
        "2d_nhwc_f32",
        "2d_padded_strides_f32",
        "2d_transpose_pt_s2_p1_adj1_f32",
        "2d_transpose_mode_s2_p1_adj1_f32",
        "2d_alpha_beta_f32",
        "2d_bias_f32 fwd_bias bwd_bias",
        "bf16",
        "f16",
    ] {
        assert!(list.contains(needle), "--list lacks {needle}\n{list}");
    }
    let out = run(
        "harness_direct",
        &[
            "--mode",
            "immediate",
            "--case",
            "2d_cnn_3x3_p1_f32",
            "--only",
            "bwd_data",
        ],
        &[("FAKE_MIOPEN_HEALTHY", "1")],
        false,
    );
    assert_eq!(assert_harness_passed(&out), 1);
    let s = stdout(&out);
    assert!(
        s.contains("ok 2d_cnn_3x3_p1_f32 immediate bwd_data max_err="),
        "{s}"
    );
    // The fake library's own workspace answer (1 MiB) is reported.
    assert!(s.contains("workspace=1048576"), "{s}");
    let out = run("harness_direct", &["--mode", "nope"], &[], false);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn naive_reference_self_test() {
    let out = run("naive_selftest", &[], &[], false);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("checks passed"), "{}", describe(&out));
}

#[test]
fn host_read_of_device_pointer_segfaults() {
    let out = run("doubles_probe", &["segv"], &[], false);
    assert_eq!(signal_of(&out.status), Some(SIGSEGV), "{}", describe(&out));
}

#[test]
fn unsynchronized_reads_see_stale_data() {
    // A long latency makes "read before the stream caught up" deterministic.
    let out = run(
        "doubles_probe",
        &["stale"],
        &[("FAKE_HIP_DELAY_US", "200000")],
        false,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let s = stdout(&out);
    assert!(
        s.contains("ok null-stream read before sync sees stale device bytes"),
        "{s}"
    );
    assert!(s.contains("ok host buffer unchanged before sync"), "{s}");
    assert!(
        s.contains("ok null stream waits for a blocking stream"),
        "{s}"
    );
}

#[test]
fn fake_hip_validates_pointers_and_counts_calls() {
    let out = run("doubles_probe", &["validate"], &[], false);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn events_complete_in_stream_order() {
    // A long latency makes "the record waits for the copies queued before it" visible.
    let out = run(
        "doubles_probe",
        &["events"],
        &[("FAKE_HIP_DELAY_US", "20000")],
        false,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let s = stdout(&out);
    for line in [
        "ok record behind queued copies is not ready",
        "ok after the event the copies before it are done",
        "ok a stream waiting for an event sees the work before it",
        "ok the queued record still completes",
    ] {
        assert!(s.lines().any(|l| l == line), "missing {line}\n{s}");
    }
}

/// The timings `doubles_probe pcie` prints, in milliseconds.
fn pcie_timings(gbps: &str) -> std::collections::HashMap<String, f64> {
    let out = run(
        "doubles_probe",
        &["pcie"],
        &[("FAKE_HIP_DELAY_US", "0"), ("FAKE_HIP_GBPS", gbps)],
        false,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let s = stdout(&out);
    let line = s
        .lines()
        .find(|l| l.starts_with("pcie "))
        .unwrap_or_else(|| panic!("no timing line\n{s}"));
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

#[test]
fn pcie_model_takes_bytes_over_bandwidth_like_a_dma_engine() {
    // 64 MiB at 2 GB/s: 33.6 ms a copy, well above what the memcpy behind it takes.
    let t = pcie_timings("2");
    let one = t["bytes"] / 2e9 * 1e3;
    // Asynchronous: enqueueing returns at once, the host is free.
    assert!(t["enqueue_ms"] < one / 4.0, "{t:?}");
    // A copy takes its modelled time (and not much more: memcpy overlaps it).
    assert!(
        t["one_ms"] >= one * 0.97 && t["one_ms"] < one * 1.8,
        "{t:?}"
    );
    // One link per direction: two copies the same way take twice as long...
    assert!(t["same_dir_ms"] >= 2.0 * one * 0.97, "{t:?}");
    // ... while opposite directions overlap (full duplex).
    assert!(t["duplex_ms"] < 1.6 * one, "{t:?}");
    // A null-stream copy blocks its caller for the modelled time.
    assert!(t["sync_copy_ms"] >= one * 0.97, "{t:?}");
}

#[test]
fn stream_workers_run_on_the_copy_cpus() {
    let out = run(
        "doubles_probe",
        &["affinity"],
        &[("FAKE_HIP_COPY_CPUS", "0")],
        false,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let s = stdout(&out);
    let main = s
        .lines()
        .find_map(|l| l.strip_prefix("main "))
        .unwrap_or_else(|| panic!("{s}"));
    let threads: Vec<(&str, &str)> = s
        .lines()
        .filter_map(|l| l.strip_prefix("thread "))
        .filter_map(|l| l.split_once(" cpus "))
        .collect();
    let workers: Vec<_> = threads.iter().filter(|(t, _)| *t != main).collect();
    assert_eq!(workers.len(), 2, "one worker per stream\n{s}");
    for (t, cpus) in workers {
        assert_eq!(*cpus, "0", "worker {t}\n{s}");
    }
    // Without the variable they run anywhere the process may.
    let out = run("doubles_probe", &["affinity"], &[], false);
    let s = stdout(&out);
    let lists: Vec<&str> = s
        .lines()
        .filter_map(|l| l.strip_prefix("thread "))
        .filter_map(|l| l.split_once(" cpus ").map(|(_, c)| c))
        .collect();
    assert!(
        lists.len() == 3 && lists.iter().all(|c| *c == lists[0]),
        "{s}"
    );
}

#[test]
fn fake_miopen_descriptor_semantics() {
    let out = run("doubles_probe", &["miopen"], &[], false);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn fault_injection_fails_the_named_calls() {
    let out = run(
        "doubles_probe",
        &["fail"],
        &[(
            "FAKE_HIP_FAIL",
            "hipMemcpyAsync:3,hipStreamSynchronize:1,hipHostMalloc:*",
        )],
        false,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let s = stdout(&out);
    for line in [
        "hipMalloc#1=0",
        "hipMemcpyAsync#1=0",
        "hipMemcpyAsync#2=0",
        "hipMemcpyAsync#3=999",
        "last_error=999",
        "hipStreamSynchronize#1=999",
        "hipStreamSynchronize#2=0",
        "hipHostMalloc#1=2",
        "hipHostMalloc#2=2",
        "hipMemcpy#1=0",
        // the failed third copy did nothing: the second one's bytes remain
        "device_value=2",
    ] {
        assert!(s.lines().any(|l| l == line), "missing {line}\n{s}");
    }
    assert!(stderr(&out).contains("injected failure of hipMemcpyAsync (call #3)"));

    // Without injection every call succeeds.
    let out = run("doubles_probe", &["fail"], &[], false);
    let s = stdout(&out);
    assert!(
        s.contains("hipMemcpyAsync#3=0") && s.contains("device_value=3"),
        "{s}"
    );
}

#[test]
fn fault_injection_is_reported_by_the_harness() {
    let out = run(
        "harness_direct",
        &["--mode", "default", "--case", "2d_cnn_3x3_p1_f32"],
        &[
            ("FAKE_MIOPEN_HEALTHY", "1"),
            ("FAKE_HIP_FAIL", "hipMemcpyAsync:*"),
        ],
        false,
    );
    let s = stdout(&out);
    assert_eq!(summary(&s), Some((0, 3)), "{}", describe(&out));
    assert!(!out.status.success());
    assert!(
        s.contains("hipMemcpyAsync") && s.contains("hipErrorUnknown"),
        "{s}"
    );
}

/// The harness must notice the mistakes a shim could make.
#[test]
fn harness_detects_wrong_results() {
    for (bug, case) in [
        ("nosync", "2d_cnn"),
        ("beta_always", "2d_cnn"),
        ("flip_kernel", "2d_cnn"),
        ("clobber_gaps", "padded"),
        ("scribble_input", "2d_cnn"),
        ("ignore_alpha", "alpha"),
    ] {
        let out = run(
            "harness_direct",
            &["--mode", "default", "--case", case],
            &[
                ("FAKE_MIOPEN_HEALTHY", "1"),
                ("FAKE_MIOPEN_BUG", bug),
                ("FAKE_HIP_DELAY_US", "20000"),
            ],
            false,
        );
        let s = stdout(&out);
        let (_, failed) = summary(&s).unwrap_or_else(|| panic!("{bug}: {}", describe(&out)));
        assert!(
            failed > 0 && !out.status.success(),
            "bug {bug} went unnoticed\n{}",
            describe(&out)
        );
    }
}

#[test]
fn quiet_main_exits_cleanly() {
    let out = run("quiet_main", &[], &[], false);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
}

/// `FAKE_HIP_COPY_SPLIT_KIB` sets the size from which a copy is split over four
/// threads: at 4 KiB nearly every copy of the shim's run is split, and every
/// convolution still matches the naive oracle; a value that is not a size aborts
/// with a message naming the variable.
#[test]
fn copies_split_over_threads_from_a_configurable_size() {
    let out = run(
        "harness_direct",
        &["--mode", "default"],
        &[("FAKE_HIP_COPY_SPLIT_KIB", "4"), ("FAKE_HIP_DELAY_US", "0")],
        true,
    );
    assert!(assert_harness_passed(&out) > 0, "{}", describe(&out));
    for bad in ["0", "8k", "-1"] {
        let out = run(
            "doubles_probe",
            &["events"],
            &[("FAKE_HIP_COPY_SPLIT_KIB", bad)],
            false,
        );
        assert_eq!(
            signal_of(&out.status),
            Some(SIGABRT),
            "{bad}: {}",
            describe(&out)
        );
        assert!(
            stderr(&out).contains("FAKE_HIP_COPY_SPLIT_KIB"),
            "{bad}: {}",
            describe(&out)
        );
    }
}
