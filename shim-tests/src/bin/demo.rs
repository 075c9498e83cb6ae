//! `cargo run -p shim-tests --bin demo`: owns the human-facing demonstration
//! of rdna1shim against the test doubles. It first shows the failure (the
//! harness without the shim: the fake MIOpen aborts with the RDNA1 memory
//! access fault), then replays PyTorch's forward/backward call sequence for a
//! small 2-D CNN layer with `LD_PRELOAD=librdna1shim.so` and
//! `RDNA1SHIM_LOG=debug`, streaming everything, and explains the outcome.
//! Exits nonzero when the shim run fails.

use shim_tests::{
    bin_dir, describe, run, run_echo, shim_so, summary, CRASH_MARKER, GPU_RAN_MARKER,
};

const CASE: &str = "2d_cnn_3x3_p1_f32";

fn main() {
    let shim = shim_so();
    println!("rdna1shim demo");
    println!("  shim:    {}", shim.display());
    println!(
        "  doubles: {} (fake libMIOpen.so + fake libamdhip64.so)",
        bin_dir().display()
    );
    println!();

    println!("== 1. Without the shim: PyTorch's call sequence on the fake RDNA1 MIOpen ==");
    let bare = run(
        "harness_direct",
        &["--mode", "default", "--case", CASE],
        &[],
        false,
    );
    let bare_err = String::from_utf8_lossy(&bare.stderr);
    match bare_err.lines().find(|l| l.contains(CRASH_MARKER)) {
        Some(line) => println!("  the process died (signal {:?}):\n  {line}", {
            use std::os::unix::process::ExitStatusExt;
            bare.status.signal()
        }),
        None => println!(
            "  unexpected: no crash without the shim\n{}",
            describe(&bare)
        ),
    }
    println!();

    println!(
        "== 2. With LD_PRELOAD={} RDNA1SHIM_LOG=debug ==",
        shim.display()
    );
    let out = run_echo(
        "harness_direct",
        &["--mode", "default", "--case", CASE],
        &[("RDNA1SHIM_LOG", "debug")],
        true,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let crashed = stderr.contains(CRASH_MARKER);
    let forwarded = stderr.contains(GPU_RAN_MARKER);
    let panicked = stderr.contains("panicked at");
    let sum = summary(&stdout);
    println!();
    println!("== What this showed ==");
    println!(
        "  The harness described a {CASE} layer (N=2, C=3, K=8, 8x8, 3x3 kernel, pad 1) with \
         miopenSetTensorDescriptor and miopenInitConvolutionNdDescriptor exactly as PyTorch \
         does, then ran forward, backward-data and backward-weights through \
         GetWorkSpaceSize -> Find*Algorithm -> miopenConvolution*, on a non-blocking HIP \
         stream whose uploads land late."
    );
    println!(
        "  Without the shim the first kernel launch aborts the process (step 1), which is what \
         MIOpen does on RDNA1."
    );
    let ok = out.status.success()
        && !crashed
        && !forwarded
        && !panicked
        && matches!(sum, Some((p, 0)) if p > 0);
    if ok {
        let (p, _) = sum.unwrap_or((0, 0));
        println!(
            "  With the shim all {p} checks matched the naive reference: the shim intercepted \
             the convolution entry points, read the descriptors through MIOpen's getters, \
             copied the operands off the device in stream order, computed on the CPU and \
             copied the results back, and no convolution reached the crashing GPU path."
        );
    } else {
        println!("  The shim run FAILED:");
        if crashed {
            println!("   - a convolution still reached the crashing GPU path");
        }
        if forwarded {
            println!("   - MIOpen itself ran a convolution (the shim did not answer)");
        }
        if panicked {
            println!("   - the shim panicked (see the stderr above)");
        }
        match sum {
            Some((p, f)) => println!("   - harness summary: {p} passed, {f} failed"),
            None => println!("   - the harness did not finish (status {:?})", out.status),
        }
        std::process::exit(1);
    }
}
