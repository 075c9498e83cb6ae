//! Owns the tests of the Python package (`rdna1shim/` at the top of the repository):
//! `shim-tests/python/test_package.py` run class by class against this checkout's package
//! (`python3 -m rdna1shim`, the shim named by `RDNA1SHIM_LIBRARY`, the probe's child
//! program named by `RDNA1SHIM_PROBE_CHILD`: the tests' `probe_child`, built from the
//! current sources), and, in the ignored test that `scripts/test_pip_install.sh` runs,
//! against the package `pip install .` put in a fresh virtual environment
//! (`SHIM_TESTS_VENV`): the console script, the packaged library and probe child program,
//! `import rdna1shim` and `rdna1shim run` reaching the shim, the doctor, the probe, the
//! Jupyter kernel spec.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use shim_tests::{bin_dir, describe, run_command, shim_so, DEFAULT_TIMEOUT};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("shim-tests lives in the repository")
        .to_path_buf()
}

fn test_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/test_package.py")
}

/// `python test_package.py CLASSES... -v` in a temporary directory (so that no
/// `rdna1shim/` folder in the working directory shadows the package under test), with
/// the shim's, the doubles' and the preload variables removed.
fn python_tests(python: &Path, classes: &[&str], envs: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(python);
    cmd.arg(test_script()).args(classes).arg("-v");
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("RDNA1SHIM_")
            || k.starts_with("FAKE_HIP_")
            || k.starts_with("FAKE_MIOPEN_")
            || k.starts_with("SHIM_TESTS_")
            || k == "LD_PRELOAD"
            || k == "PYTHONPATH"
        {
            cmd.env_remove(&k);
        }
    }
    cmd.env("SHIM_TESTS_BIN", bin_dir())
        .env("SHIM_TESTS_REAL_HIP", env!("SHIM_TESTS_REAL_HIP"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(std::env::temp_dir());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    run_command(cmd, false, DEFAULT_TIMEOUT)
}

/// Asserts unittest's verdict: success, at least `min_tests` run, and exactly
/// `skipped` skipped.
fn assert_passed(out: &Output, min_tests: usize, skipped: usize) {
    let err = String::from_utf8_lossy(&out.stderr);
    let ran = err.lines().find_map(|l| {
        l.strip_prefix("Ran ")?
            .split_whitespace()
            .next()?
            .parse::<usize>()
            .ok()
    });
    let verdict = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let want = if skipped == 0 {
        "OK".to_string()
    } else {
        format!("OK (skipped={skipped})")
    };
    assert!(
        out.status.success() && verdict == want && ran.is_some_and(|n| n >= min_tests),
        "the Python tests did not pass (ran {ran:?}, verdict {verdict:?}, wanted {want:?})\n{}",
        describe(out)
    );
}

fn source_tests(class: &str, min_tests: usize, skipped: usize) {
    let out = python_tests(
        Path::new("python3"),
        &[class],
        &[
            ("PYTHONPATH", repo_root().display().to_string()),
            ("RDNA1SHIM_LIBRARY", shim_so().display().to_string()),
            (
                "RDNA1SHIM_PROBE_CHILD",
                env!("CARGO_BIN_EXE_probe_child").to_string(),
            ),
        ],
    );
    assert_passed(&out, min_tests, skipped);
}

fn real_hip_skips() -> usize {
    usize::from(env!("SHIM_TESTS_REAL_HIP") != "1")
}

#[test]
fn path_command() {
    source_tests("PathCommand", 4, 0);
}

#[test]
fn run_command_preloads_and_passes_everything_through() {
    source_tests("RunCommand", 9, real_hip_skips());
}

#[test]
fn import_activates_the_shim_for_plugins_loaded_later() {
    source_tests("ImportActivation", 5, 0);
}

#[test]
fn jupyter_kernel_spec() {
    // test_sys_prefix only runs in the installed package's own virtual environment.
    source_tests("JupyterKernel", 4, 1);
}

#[test]
fn doctor_command() {
    source_tests("Doctor", 4, 0);
}

#[test]
fn probe_command_on_a_recorded_run() {
    source_tests("ProbeCommand", 3, 0);
}

/// The package as `pip install .` installed it into the virtual environment named by
/// `SHIM_TESTS_VENV` (scripts/test_pip_install.sh creates it, then runs this test).
#[test]
#[ignore = "needs a virtual environment with the package pip-installed: scripts/test_pip_install.sh"]
fn installed_package_in_a_virtual_environment() {
    let venv = PathBuf::from(std::env::var_os("SHIM_TESTS_VENV").expect(
        "SHIM_TESTS_VENV must name the virtual environment (see scripts/test_pip_install.sh)",
    ));
    let venv_bin = venv.join("bin");
    let python = venv_bin.join("python");
    assert!(python.is_file(), "{} missing", python.display());
    let path = std::env::join_paths(std::iter::once(venv_bin.clone()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH");
    let out = python_tests(
        &python,
        &[],
        &[
            ("SHIM_TESTS_INSTALLED", "1".to_string()),
            ("PATH", path.to_string_lossy().into_owned()),
        ],
    );
    // Nothing is skipped here: test_sys_prefix runs, and so does the sample client.
    assert_passed(&out, 30, real_hip_skips());
}
