//! Fused convolution plans (PyTorch's `miopen_convolution_relu`): the shim runs
//! conv (+ bias) (+ activation) plans on the CPU, never reaching the fake MIOpen's
//! crashing fused kernel; plans it does not model go to MIOpen with a warning.

use shim_tests::{assert_harness_passed, describe, run, signal_of, CRASH_MARKER, GPU_RAN_MARKER};

const CASES: [&str; 4] = ["relu", "leaky", "clipped", "conv_only"];

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn without_the_shim_the_fused_kernel_crashes() {
    let out = run("fusion_probe", &["relu"], &[], false);
    assert_eq!(signal_of(&out.status), Some(6), "{}", describe(&out));
    assert!(stderr(&out).contains(CRASH_MARKER));
}

#[test]
fn the_healthy_fake_agrees_with_the_probe_reference() {
    let mut args = CASES.to_vec();
    args.push("bias_alpha2");
    let out = run(
        "fusion_probe",
        &args,
        &[("FAKE_MIOPEN_HEALTHY", "1")],
        false,
    );
    assert_eq!(assert_harness_passed(&out), 5);
}

#[test]
fn the_shim_runs_conv_bias_activation_plans_on_the_cpu() {
    let out = run("fusion_probe", &CASES, &[("RDNA1SHIM_LOG", "debug")], true);
    assert_eq!(assert_harness_passed(&out), CASES.len());
    let err = stderr(&out);
    assert!(
        !err.contains(CRASH_MARKER) && !err.contains(GPU_RAN_MARKER),
        "{err}"
    );
    assert!(
        err.contains("miopenExecuteFusionPlan: cpu [conv -> bias -> activation:relu]"),
        "{err}"
    );
    assert!(
        err.contains("miopenCompileFusionPlan: nothing to compile"),
        "{err}"
    );
}

#[test]
fn a_plan_the_shim_does_not_model_goes_to_miopen_with_a_warning() {
    // Healthy fake: the plan is computed by "MIOpen" and the result is right.
    let out = run(
        "fusion_probe",
        &["bias_alpha2"],
        &[("FAKE_MIOPEN_HEALTHY", "1")],
        true,
    );
    assert_harness_passed(&out);
    let err = stderr(&out);
    assert!(
        err.contains("fake MIOpen: miopenExecuteFusionPlan ran on the GPU"),
        "{err}"
    );
    assert!(
        err.contains("bias alpha=2 beta=0 in a fused plan"),
        "the warning names the reason: {err}"
    );
    // RDNA1 fake: the same plan reaches the crashing kernel (the shim did pass it on).
    let out = run("fusion_probe", &["bias_alpha2"], &[], true);
    assert_eq!(signal_of(&out.status), Some(6), "{}", describe(&out));
}

#[test]
fn rdna1shim_fusion_gpu_sends_plans_to_miopen() {
    let out = run(
        "fusion_probe",
        &["relu"],
        &[("RDNA1SHIM_FUSION", "gpu"), ("FAKE_MIOPEN_HEALTHY", "1")],
        true,
    );
    assert_harness_passed(&out);
    assert!(
        stderr(&out).contains("miopenExecuteFusionPlan ran on the GPU"),
        "{}",
        describe(&out)
    );
}
