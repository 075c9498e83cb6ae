//! shim-tests: owns the Rust helpers of the integration tests -- locating the
//! C test doubles built by `build.rs` (`bin_dir`), locating `librdna1shim.so`
//! (`shim_so`), and running a double or the harness with or without
//! `LD_PRELOAD` in a clean environment (`run`), plus parsing of the harness
//! summary, and running `scripts/probe.py` with the probe's child program
//! (`run_probe`).
//!
//! The doubles (all in `bin_dir()`): `libamdhip64.so` (fake HIP),
//! `libMIOpen.so` (fake MIOpen whose convolutions crash like RDNA1),
//! `harness_direct`, `harness_dlopen` + `libconvplugin.so` (also built with `-z now`
//! as `libconvplugin_now.so`), `train_direct` + `libtrainplugin.so` (a training run,
//! see train_seq.c), `doubles_probe`, `naive_selftest`, `quiet_main`, and, built
//! against HIP's real header, `hip_abi_check` and the sample client `sample_conv`.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Printed by the fake MIOpen when a convolution "runs on the GPU" without
/// `FAKE_MIOPEN_HEALTHY=1`: the RDNA1 failure this project exists to avoid.
pub const CRASH_MARKER: &str = "Memory access fault by GPU node-1";
/// Printed by the fake MIOpen when it really executed a convolution.
pub const GPU_RAN_MARKER: &str = "ran on the GPU";
/// Default wall-clock limit for one child process.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Directory holding the compiled doubles, harness and probes.
pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("SHIM_TESTS_BIN"))
}

/// Path of one compiled double/program by name (e.g. `"harness_direct"`).
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// The repository's root (scripts/, target/ are below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("shim-tests lives in the repository")
        .to_path_buf()
}

/// Runs `scripts/probe.py` (the checkout's way to `rdna1shim probe`) with `args` and the
/// probe's child program `child` (the tests pass their `probe_child` binary, built from
/// the current sources), in a clean `RDNA1SHIM_*`/`FAKE_*`/`LD_PRELOAD` environment plus
/// `envs`; output captured.
pub fn run_probe(child: &Path, args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> Output {
    let mut cmd = Command::new("python3");
    cmd.arg(repo_root().join("scripts").join("probe.py"));
    cmd.args(args).arg("--child").arg(child);
    for (k, _) in std::env::vars_os() {
        if is_scrubbed(&k) {
            cmd.env_remove(&k);
        }
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    run_command(cmd, false, timeout)
}

/// Candidate locations of `librdna1shim.so` for an executable living in `exe_dir`.
pub fn shim_candidates(exe_dir: &Path) -> Vec<PathBuf> {
    vec![
        exe_dir.join("librdna1shim.so"),
        exe_dir.join("deps").join("librdna1shim.so"),
    ]
}

/// Path of the shim under test.
///
/// Test executables live in `target/<profile>/deps/`, next to the
/// `librdna1shim.so` that cargo builds as a dependency of this crate; binaries
/// such as `demo` live in `target/<profile>/`, so `deps/` below them is tried
/// as well. When both exist the newer file wins (`target/<profile>/
/// librdna1shim.so` is only refreshed by building rdna1shim itself and can be
/// stale). `SHIM_TESTS_SO` overrides the search.
pub fn shim_so() -> PathBuf {
    if let Some(p) = std::env::var_os("SHIM_TESTS_SO") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "SHIM_TESTS_SO={} does not exist", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("executable has a directory");
    let candidates = shim_candidates(dir);
    let newest = candidates
        .iter()
        .filter_map(|c| Some((std::fs::metadata(c).ok()?.modified().ok()?, c)))
        .max_by_key(|(t, _)| *t);
    if let Some((_, c)) = newest {
        return c.clone();
    }
    panic!(
        "librdna1shim.so not found (looked at {}). Build it with `cargo build -p shim-tests` \
         (or run `cargo test -p shim-tests`), which builds the rdna1shim cdylib into \
         target/<profile>/deps/, or point SHIM_TESTS_SO at it.",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

fn is_scrubbed(key: &OsStr) -> bool {
    let k = key.to_string_lossy();
    k.starts_with("RDNA1SHIM_")
        || k.starts_with("FAKE_HIP_")
        || k.starts_with("FAKE_MIOPEN_")
        || k == "LD_PRELOAD"
}

/// Builds the command: `program` is a name in `bin_dir()` or a path; the
/// environment loses every `RDNA1SHIM_*`, `FAKE_HIP_*`, `FAKE_MIOPEN_*` and
/// `LD_PRELOAD` variable, then gets `envs` and, with `preload`,
/// `LD_PRELOAD=shim_so()`.
pub fn command(program: &str, args: &[&str], envs: &[(&str, &str)], preload: bool) -> Command {
    let path = if program.contains('/') {
        PathBuf::from(program)
    } else {
        bin(program)
    };
    assert!(
        path.is_file(),
        "{} missing (build.rs should have built it)",
        path.display()
    );
    let mut cmd = Command::new(&path);
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if is_scrubbed(&k) {
            cmd.env_remove(&k);
        }
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    if preload {
        cmd.env("LD_PRELOAD", shim_so());
    }
    cmd
}

fn pump<R: Read + Send + 'static>(src: R, echo: Option<fn(&[u8])>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut reader = BufReader::new(src);
        let mut all = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Some(f) = echo {
                        f(&line);
                    }
                    all.extend_from_slice(&line);
                }
            }
        }
        all
    })
}

fn echo_stdout(b: &[u8]) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(b);
    let _ = o.flush();
}

fn echo_stderr(b: &[u8]) {
    let mut o = std::io::stderr().lock();
    let _ = o.write_all(b);
    let _ = o.flush();
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("waiting for child: {e}"),
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` to completion, capturing (and with `echo`, also streaming)
/// stdout and stderr; panics with the partial output after `timeout`.
pub fn run_command(mut cmd: Command, echo: bool, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {shown}: {e}"));
    let out = pump(
        child.stdout.take().expect("stdout"),
        if echo { Some(echo_stdout) } else { None },
    );
    let err = pump(
        child.stderr.take().expect("stderr"),
        if echo { Some(echo_stderr) } else { None },
    );
    let status = wait_with_timeout(&mut child, timeout);
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{shown} timed out after {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            tail(&String::from_utf8_lossy(&stdout), 60),
            tail(&String::from_utf8_lossy(&stderr), 60)
        ),
    }
}

/// Runs a double/harness (name in `bin_dir()` or a path) with `args`, a clean
/// `RDNA1SHIM_*`/`FAKE_*` environment plus `envs`, and `LD_PRELOAD` of the
/// shim when `preload` is set. Output is captured, not echoed.
pub fn run(program: &str, args: &[&str], envs: &[(&str, &str)], preload: bool) -> Output {
    run_command(
        command(program, args, envs, preload),
        false,
        DEFAULT_TIMEOUT,
    )
}

/// Like [`run`], but also streams the child's stdout/stderr as they arrive.
pub fn run_echo(program: &str, args: &[&str], envs: &[(&str, &str)], preload: bool) -> Output {
    run_command(command(program, args, envs, preload), true, DEFAULT_TIMEOUT)
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The harness's final "N passed, M failed" line, if present.
pub fn summary(stdout: &str) -> Option<(usize, usize)> {
    stdout.lines().rev().find_map(|l| {
        let (p, rest) = l.trim().split_once(" passed, ")?;
        let f = rest.strip_suffix(" failed")?;
        Some((p.parse().ok()?, f.parse().ok()?))
    })
}

/// Signal that terminated the process, if any.
pub fn signal_of(status: &ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

/// A readable account of a finished process for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {:?} (signal {:?})\n--- stdout (tail) ---\n{}\n--- stderr (tail) ---\n{}",
        out.status,
        signal_of(&out.status),
        tail(&String::from_utf8_lossy(&out.stdout), 40),
        tail(&String::from_utf8_lossy(&out.stderr), 40)
    )
}

/// Asserts that a harness run exited 0 with "N passed, 0 failed" and N > 0;
/// returns N.
pub fn assert_harness_passed(out: &Output) -> usize {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let sum = summary(&stdout);
    match sum {
        Some((p, 0)) if p > 0 && out.status.success() => p,
        _ => panic!(
            "harness did not pass (summary {sum:?})\nfailures:\n{}\n{}",
            stdout
                .lines()
                .filter(|l| l.starts_with("FAIL"))
                .take(20)
                .collect::<Vec<_>>()
                .join("\n"),
            describe(out)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_parses_the_last_line() {
        assert_eq!(summary("ok a\n12 passed, 3 failed\n"), Some((12, 3)));
        assert_eq!(summary("FAIL x\n"), None);
        assert_eq!(summary("0 passed, 0 failed"), Some((0, 0)));
    }

    #[test]
    fn shim_candidates_cover_deps_and_profile_dirs() {
        let c = shim_candidates(Path::new("/t/debug"));
        assert_eq!(c[0], Path::new("/t/debug/librdna1shim.so"));
        assert_eq!(c[1], Path::new("/t/debug/deps/librdna1shim.so"));
    }

    #[test]
    fn scrubbed_variables() {
        assert!(is_scrubbed(OsStr::new("RDNA1SHIM_LOG")));
        assert!(is_scrubbed(OsStr::new("FAKE_HIP_FAIL")));
        assert!(is_scrubbed(OsStr::new("LD_PRELOAD")));
        assert!(!is_scrubbed(OsStr::new("PATH")));
    }
}
