//! Tests of `scripts/doctor.py` (`rdna1shim doctor` run from the source checkout): on this
//! machine (no AMD GPU, no ROCm PyTorch) it must say true things both with the test
//! doubles standing in for MIOpen and without them.

use std::path::PathBuf;
use std::process::{Command, Output};

use shim_tests::{bin, describe, shim_so};

fn doctor(args: &[&str]) -> Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/doctor.py");
    Command::new("python3")
        .arg(script)
        .args(args)
        .env_remove("LD_PRELOAD")
        .env_remove("RDNA1SHIM_CONV_FWD")
        .env_remove("RDNA1SHIM_DISABLE")
        .output()
        .expect("python3 runs")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn with_the_doubles_the_shim_is_seen_to_interpose() {
    let shim = shim_so();
    let miopen = bin("libMIOpen.so");
    let o = doctor(&[
        "--shim",
        shim.to_str().unwrap(),
        "--miopen",
        miopen.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{}", describe(&o));
    assert!(
        t.contains("interposes: with libMIOpen loaded RTLD_LOCAL"),
        "{t}"
    );
    assert!(t.contains("Effective configuration: conv_fwd=cpu"), "{t}");
    assert!(t.contains("nothing blocks use of the shim"), "{t}");
}

#[test]
fn without_the_doubles_it_says_nothing_is_there_to_intercept() {
    let shim = shim_so();
    let o = doctor(&["--shim", shim.to_str().unwrap()]);
    let t = text(&o);
    assert!(o.status.success(), "{}", describe(&o));
    assert!(t.contains("No AMD GPU is visible"), "{t}");
    assert!(t.contains("No libMIOpen was found"), "{t}");
    assert!(
        !t.contains("interposes"),
        "claimed interposition with no MIOpen: {t}"
    );
}

#[test]
fn a_library_that_is_not_the_shim_is_reported() {
    // The fake HIP runtime is a real shared library, but not the shim.
    let not_shim = bin("libamdhip64.so");
    let miopen = bin("libMIOpen.so");
    let o = doctor(&[
        "--shim",
        not_shim.to_str().unwrap(),
        "--miopen",
        miopen.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(t.contains("did not see the shim"), "{t}");
}

#[test]
fn a_missing_shim_fails_with_the_build_command() {
    let o = doctor(&["--shim", "/nonexistent/librdna1shim.so"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(t.contains("cargo build --release"), "{t}");
}
