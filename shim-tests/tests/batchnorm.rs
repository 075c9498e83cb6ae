//! Owns the end-to-end tests of batch norm on the CPU: the fake MIOpen's batch-norm
//! kernels abort like RDNA1's; the harness (checked against the healthy fake) notices
//! wrong batch-norm results; with `LD_PRELOAD=librdna1shim.so` every batch-norm case and
//! the conv -> batch norm -> backward training step pass in both loading scenarios with
//! no MIOpen kernel ever entered; `RDNA1SHIM_BATCHNORM=gpu` really forwards (with every
//! argument intact); a panic in an export becomes a status, not a crash.

use shim_tests::{
    assert_harness_passed, describe, run, signal_of, summary, CRASH_MARKER, GPU_RAN_MARKER,
};

const SIGABRT: i32 = 6;
const PROGRAMS: [&str; 2] = ["harness_direct", "harness_dlopen"];
/// Batch-norm checks in the harness: 24 cases x 3 directions + 3 training steps.
const BN_CHECKS: usize = 75;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_no_gpu(out: &std::process::Output) {
    let err = stderr(out);
    assert!(
        !err.contains(CRASH_MARKER),
        "a kernel reached the (crashing) GPU path\n{}",
        describe(out)
    );
    assert!(
        !err.contains(GPU_RAN_MARKER),
        "MIOpen ran a kernel although the shim should have\n{}",
        describe(out)
    );
    assert!(
        !err.contains("panicked at"),
        "the shim panicked\n{}",
        describe(out)
    );
}

#[test]
fn without_shim_batch_norm_kernels_abort_like_rdna1() {
    for (only, func) in [
        ("bn_train", "miopenBatchNormalizationForwardTraining"),
        ("bn_infer", "miopenBatchNormalizationForwardInference"),
        ("bn_bwd", "miopenBatchNormalizationBackward"),
    ] {
        let out = run(
            "harness_direct",
            &["--mode", "default", "--only", only],
            &[],
            false,
        );
        assert_eq!(signal_of(&out.status), Some(SIGABRT), "{}", describe(&out));
        let want = format!("fake MIOpen: {func}: {CRASH_MARKER}");
        assert!(stderr(&out).contains(&want), "{want}\n{}", describe(&out));
    }
}

#[test]
fn healthy_fake_passes_every_batch_norm_check() {
    for program in PROGRAMS {
        let out = run(
            program,
            &["--mode", "default", "--only", "bn"],
            &[("FAKE_MIOPEN_HEALTHY", "1")],
            false,
        );
        assert_eq!(assert_harness_passed(&out), BN_CHECKS, "{}", describe(&out));
        assert!(
            stderr(&out).contains("miopenBatchNormalizationBackward ran on the GPU"),
            "{}",
            describe(&out)
        );
    }
}

/// The harness must notice the mistakes a batch-norm implementation could make.
#[test]
fn harness_detects_wrong_batch_norm_results() {
    for (bug, case, only, needle) in [
        ("nosync", "bn_spatial_4d_nchw", "bn", "got -nan"),
        (
            "bn_factor_flip",
            "bn_spatial_4d",
            "bn_train",
            "running_mean",
        ),
        ("bn_saved_var", "bn_spatial_4d", "bn_train", "saved_inv_var"),
        ("clobber_gaps", "padded", "bn", "between strided elements"),
    ] {
        let out = run(
            "harness_direct",
            &["--mode", "default", "--case", case, "--only", only],
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
            failed > 0 && !out.status.success() && s.contains(needle),
            "bug {bug} went unnoticed\n{}",
            describe(&out)
        );
    }
}

#[test]
fn shim_computes_every_batch_norm_case_in_both_loading_scenarios() {
    for program in PROGRAMS {
        let out = run(
            program,
            &["--mode", "default", "--only", "bn"],
            &[("RDNA1SHIM_LOG", "debug")],
            true,
        );
        assert_no_gpu(&out);
        assert_eq!(assert_harness_passed(&out), BN_CHECKS, "{}", describe(&out));
        let err = stderr(&out);
        for line in [
            "miopenBatchNormalizationForwardTraining: cpu spatial 2d fp16 (params fp32)",
            "miopenBatchNormalizationForwardInference: cpu per-activation 3d fp32",
            "miopenBatchNormalizationBackward: cpu spatial 3d bf16 (params fp32)",
            "statistics=recomputed",
            "running=no saved=no",
        ] {
            assert!(err.contains(line), "log lacks {line:?}\n{}", describe(&out));
        }
        assert!(
            err.lines()
                .any(|l| l.contains("batchnorm") && l.contains("cpu_calls=")),
            "no batchnorm line in the exit summary\n{}",
            describe(&out)
        );
    }
}

/// The done-when of batch norm on the CPU: a training step (conv forward, batch norm
/// with running-statistics update, backward through both) completes through the shim
/// against doubles whose kernels abort, none of them even entered, results within
/// tolerance of the reference.
#[test]
fn training_step_completes_without_reaching_a_kernel() {
    for program in PROGRAMS {
        let out = run(
            program,
            &["--mode", "default", "--only", "train_step"],
            &[("FAKE_MIOPEN_TRACE", "1"), ("RDNA1SHIM_LOG", "debug")],
            true,
        );
        assert_no_gpu(&out);
        assert_eq!(assert_harness_passed(&out), 3, "{}", describe(&out));
        let err = stderr(&out);
        for kernel in [
            "miopenBatchNormalization",
            "miopenConvolutionForward",
            "miopenConvolutionBackward",
            "miopenFindConvolution",
        ] {
            assert!(
                !err.contains(&format!("fake MIOpen: call {kernel}")),
                "{kernel}* of the fake MIOpen was called\n{}",
                describe(&out)
            );
        }
        for call in [
            "miopenFindConvolutionForwardAlgorithm",
            "miopenBatchNormalizationForwardTraining: cpu",
            "miopenBatchNormalizationBackward: cpu",
            "miopenConvolutionBackwardData: cpu",
            "miopenConvolutionBackwardWeights: cpu",
        ] {
            assert!(err.contains(call), "log lacks {call}\n{}", describe(&out));
        }
    }
}

/// With a long stream latency, reads not ordered after the handle's stream see stale
/// bytes (NaN sentinels or garbage); the shim must still be right.
#[test]
fn batch_norm_copies_are_ordered_on_the_handle_stream() {
    for program in PROGRAMS {
        let out = run(
            program,
            &["--mode", "default", "--case", "bn_s", "--only", "bn"],
            &[("FAKE_HIP_DELAY_US", "20000")],
            true,
        );
        assert_no_gpu(&out);
        assert!(assert_harness_passed(&out) >= 50, "{}", describe(&out));
    }
}

#[test]
fn batchnorm_gpu_toggle_forwards_every_argument() {
    // Healthy fake: the forwarded calls compute there, so the results prove the
    // arguments arrived intact.
    let out = run(
        "harness_direct",
        &["--mode", "default", "--only", "bn"],
        &[
            ("RDNA1SHIM_BATCHNORM", "gpu"),
            ("RDNA1SHIM_LOG", "debug"),
            ("FAKE_MIOPEN_HEALTHY", "1"),
        ],
        true,
    );
    assert_eq!(assert_harness_passed(&out), BN_CHECKS, "{}", describe(&out));
    let err = stderr(&out);
    for func in [
        "miopenBatchNormalizationForwardTraining",
        "miopenBatchNormalizationForwardInference",
        "miopenBatchNormalizationBackward",
    ] {
        assert!(
            err.contains(&format!("fake MIOpen: {func} ran on the GPU"))
                && err.contains(&format!("{func}: passed to MIOpen (RDNA1SHIM_BATCHNORM)")),
            "{func} was not forwarded\n{}",
            describe(&out)
        );
    }
    // Crashing fake: the toggle really reaches the kernel.
    let out = run(
        "harness_direct",
        &["--mode", "default", "--only", "bn_bwd"],
        &[("RDNA1SHIM_BATCHNORM", "gpu")],
        true,
    );
    assert_eq!(signal_of(&out.status), Some(SIGABRT), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!(
            "fake MIOpen: miopenBatchNormalizationBackward: {CRASH_MARKER}"
        )),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_panic_in_a_batch_norm_export_becomes_an_internal_error() {
    let out = run(
        "harness_direct",
        &[
            "--mode",
            "default",
            "--case",
            "bn_spatial_4d_nchw_f32",
            "--only",
            "bn",
        ],
        &[("RDNA1SHIM_TEST_PANIC", "miopenBatchNormalizationBackward")],
        true,
    );
    assert_eq!(summary(&stdout(&out)), Some((2, 1)), "{}", describe(&out));
    assert!(
        stdout(&out).contains(
            "FAIL bn_spatial_4d_nchw_f32 default bn_bwd: miopenBatchNormalizationBackward returned miopenStatusInternalError"
        ),
        "{}",
        describe(&out)
    );
    assert!(!stderr(&out).contains(CRASH_MARKER), "{}", describe(&out));
}
