//! Owns the end-to-end tests of rdna1shim itself: the harness runs with
//! `LD_PRELOAD=librdna1shim.so` against the fake MIOpen (whose convolutions
//! crash like RDNA1) and the fake HIP (whose device memory the host cannot
//! touch and whose streams deliver data late). The shim must answer every
//! convolution itself, correctly, in every call sequence, whether MIOpen is
//! linked directly or dlopen()ed with RTLD_LOCAL; the per-direction `gpu`
//! toggles must really forward to MIOpen.

use shim_tests::{assert_harness_passed, describe, run, signal_of, CRASH_MARKER, GPU_RAN_MARKER};

const SIGABRT: i32 = 6;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A panic inside the shim (even a caught one, e.g. at exit) is a bug.
fn assert_no_panic(out: &std::process::Output) {
    assert!(
        !stderr(out).contains("panicked at"),
        "the shim panicked\n{}",
        describe(out)
    );
}

fn shim_answers(program: &str, mode: &str) {
    shim_answers_with(program, mode, &[]);
}

fn shim_answers_with(program: &str, mode: &str, extra: &[(&str, &str)]) {
    let mut envs = vec![("RDNA1SHIM_LOG", "debug")];
    envs.extend_from_slice(extra);
    let out = run(program, &["--mode", mode], &envs, true);
    let err = stderr(&out);
    assert!(
        !err.contains(CRASH_MARKER),
        "a convolution reached the (crashing) GPU path\n{}",
        describe(&out)
    );
    assert!(
        !err.contains(GPU_RAN_MARKER),
        "MIOpen ran a convolution although the shim should have\n{}",
        describe(&out)
    );
    let n = assert_harness_passed(&out);
    assert!(n >= 100, "only {n} checks ran");
    assert_no_panic(&out);
}

/// `RDNA1SHIM_MAX_ISA` lowers the engine's instruction set: the start-up line
/// names it and every convolution is still right.
#[test]
fn shim_passes_with_the_instruction_set_capped() {
    for isa in ["avx2", "portable"] {
        let out = run(
            "harness_direct",
            &["--mode", "default"],
            &[("RDNA1SHIM_LOG", "info"), ("RDNA1SHIM_MAX_ISA", isa)],
            true,
        );
        let err = stderr(&out);
        let line = err
            .lines()
            .find(|l| l.contains("rdna1shim") && l.contains(" active "))
            .unwrap_or_else(|| panic!("no start-up line\n{}", describe(&out)));
        // A CPU without AVX2 runs portable code and says so.
        #[cfg(target_arch = "x86_64")]
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        let runs = if avx2 { isa } else { "portable" };
        assert!(
            line.contains(&format!("isa={runs} (RDNA1SHIM_MAX_ISA={isa}")),
            "{line}"
        );
        assert!(assert_harness_passed(&out) >= 100);
        assert_no_panic(&out);
    }
}

#[test]
fn shim_passes_default_mode() {
    shim_answers("harness_direct", "default");
}

#[test]
fn shim_passes_benchmark_mode() {
    shim_answers("harness_direct", "benchmark");
}

#[test]
fn shim_passes_deterministic_mode() {
    shim_answers("harness_direct", "deterministic");
}

#[test]
fn shim_passes_immediate_mode() {
    shim_answers("harness_direct", "immediate");
}

#[test]
fn shim_passes_compile_mode() {
    shim_answers("harness_direct", "compile");
}

#[test]
fn shim_passes_every_mode_when_miopen_is_dlopened_locally() {
    shim_answers("harness_dlopen", "all");
}

/// Every case cut into as many chunks as its batch allows (one sample each), with all
/// of them, two or one staged at once, and a long stream latency: chunk order,
/// offsets, the weight-gradient sum and the reuse of staging must all be right, in
/// both loading scenarios.
#[test]
fn shim_passes_every_mode_with_every_call_cut_into_chunks() {
    for (program, chunks) in [
        ("harness_direct", "64"),
        ("harness_dlopen", "64/2"),
        ("harness_direct", "64/1"),
    ] {
        let out = run(
            program,
            &["--mode", "all"],
            &[
                ("RDNA1SHIM_LOG", "debug"),
                ("RDNA1SHIM_CHUNKS", chunks),
                ("FAKE_HIP_DELAY_US", "300"),
            ],
            true,
        );
        let n = assert_harness_passed(&out);
        assert!(n >= 100, "only {n} checks ran");
        assert_no_panic(&out);
        let err = stderr(&out);
        let cut = err
            .lines()
            .filter(|l| l.contains(": cpu ") && !l.contains("chunks=1 "))
            .count();
        assert!(
            cut >= 50,
            "{program}: only {cut} calls were cut into chunks"
        );
        // Plain fp32 NCHW forward passes (and input and weight gradients the engine
        // computes in order of the images) run as one gated engine call over the
        // batch, unless a limit on the chunks in flight asks for the chunked path.
        let gated = |l: &&str| l.contains("miopenConvolution") && l.contains(" gated:");
        let fp32_nchw_gated = err
            .lines()
            .filter(gated)
            .filter(|l| l.contains(" fp32 ") && l.contains("x:nchw"))
            .count();
        let others_gated = err.lines().filter(gated).count() - fp32_nchw_gated;
        assert_eq!(others_gated, 0, "{program}: only fp32 NCHW calls are gated");
        if chunks.contains('/') {
            assert_eq!(
                fp32_nchw_gated, 0,
                "{program}: {chunks} keeps the chunked path"
            );
        } else {
            assert!(
                fp32_nchw_gated >= 5,
                "{program}: only {fp32_nchw_gated} gated calls"
            );
        }
    }
}

/// With a long stream latency, any read that is not ordered after the
/// handle's stream returns garbage; the shim must still be right.
#[test]
fn shim_orders_its_copies_on_the_handle_stream() {
    for program in ["harness_direct", "harness_dlopen"] {
        let out = run(
            program,
            &["--mode", "default", "--case", "2d_"],
            &[("RDNA1SHIM_LOG", "debug"), ("FAKE_HIP_DELAY_US", "20000")],
            true,
        );
        assert!(!stderr(&out).contains(CRASH_MARKER), "{}", describe(&out));
        assert_harness_passed(&out);
        assert_no_panic(&out);
    }
}

/// The fake MIOpen answers every workspace query with 1 MiB; the harness
/// reports what it was told, so "workspace=0" proves the shim answered.
#[test]
fn shim_answers_the_workspace_queries() {
    for mode in ["default", "immediate", "compile"] {
        let out = run(
            "harness_direct",
            &["--mode", mode, "--case", "2d_cnn_3x3_p1_f32"],
            &[],
            true,
        );
        assert_harness_passed(&out);
        let s = String::from_utf8_lossy(&out.stdout);
        for line in s.lines().filter(|l| l.starts_with("ok ")) {
            assert!(
                line.ends_with(" workspace=0"),
                "MIOpen, not the shim, sized the workspace: {line}"
            );
        }
    }
}

#[test]
fn gpu_toggles_forward_to_miopen() {
    let out = run(
        "harness_direct",
        &["--mode", "all"],
        &[
            ("RDNA1SHIM_LOG", "debug"),
            ("RDNA1SHIM_CONV_FWD", "gpu"),
            ("RDNA1SHIM_CONV_BWD_DATA", "gpu"),
            ("RDNA1SHIM_CONV_BWD_WEIGHTS", "gpu"),
            ("FAKE_MIOPEN_HEALTHY", "1"),
        ],
        true,
    );
    assert!(
        stderr(&out).contains(GPU_RAN_MARKER),
        "nothing was forwarded to MIOpen\n{}",
        describe(&out)
    );
    assert_harness_passed(&out);
}

#[test]
fn gpu_toggle_really_reaches_the_crashing_kernels() {
    for (var, only) in [
        ("RDNA1SHIM_CONV_FWD", "fwd"),
        ("RDNA1SHIM_CONV_BWD_DATA", "bwd_data"),
        ("RDNA1SHIM_CONV_BWD_WEIGHTS", "bwd_weights"),
    ] {
        let out = run(
            "harness_direct",
            &["--mode", "default", "--only", only],
            &[("RDNA1SHIM_LOG", "debug"), (var, "gpu")],
            true,
        );
        assert_eq!(
            signal_of(&out.status),
            Some(SIGABRT),
            "{var}=gpu did not forward\n{}",
            describe(&out)
        );
        assert!(stderr(&out).contains(CRASH_MARKER), "{}", describe(&out));
    }
}

#[test]
fn preloading_into_an_unrelated_program_is_harmless() {
    for envs in [&[][..], &[("RDNA1SHIM_LOG", "debug")][..]] {
        let out = run("quiet_main", &[], envs, true);
        assert!(out.status.success(), "{}", describe(&out));
        assert!(out.stdout.is_empty(), "{}", describe(&out));
        assert_no_panic(&out);
    }
}
