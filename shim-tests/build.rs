//! Build script of shim-tests: owns compiling the C test doubles (fake
//! libamdhip64.so, fake libMIOpen.so), the integration harness (executable and
//! dlopen plugin, linked lazily and with `-z now`), the training sequence (executable
//! and plugin), the reliability driver, the probes and the reference self-test into
//! `$OUT_DIR/bin`, and exporting that directory as `SHIM_TESTS_BIN`.
//!
//! Two programs are built against HIP's real header (`/usr/include/hip`, Debian's
//! `libamdhip64-dev` 5.x) when it is installed: `hip_abi_check` and the MIOpen sample
//! client `sample_conv`. `SHIM_TESTS_REAL_HIP` tells the tests whether they were.
//!
//! Plain `gcc` (or `$CC`) via `std::process::Command`; every binary gets
//! `-Wl,-rpath,$ORIGIN` (as DT_RPATH, which outranks LD_LIBRARY_PATH) so it
//! finds the doubles next to itself and never a real ROCm.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

const CFLAGS: &[&str] = &[
    "-O2",
    "-g",
    "-fPIC",
    "-Wall",
    "-Werror",
    "-pthread",
    "-std=gnu11",
];
/// HIP's real runtime header, from Debian's libamdhip64-dev (HIP 5.x).
const REAL_HIP_HEADER: &str = "/usr/include/hip/hip_runtime_api.h";
const RPATH: &[&str] = &["-Wl,-rpath,$ORIGIN", "-Wl,--disable-new-dtags"];

struct Unit {
    output: &'static str,
    sources: &'static [&'static str],
    extra: &'static [&'static str],
}

fn spawn(cc: &str, src: &Path, bin: &Path, unit: &Unit) -> Child {
    let mut cmd = Command::new(cc);
    cmd.args(CFLAGS).arg("-I").arg(src);
    for s in unit.sources {
        cmd.arg(src.join(s));
    }
    cmd.arg("-o").arg(bin.join(unit.output));
    cmd.arg("-L").arg(bin);
    cmd.args(unit.extra).args(RPATH);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot run C compiler `{cc}`: {e} (install gcc or set CC)"))
}

/// Compiles a group of independent units in parallel; panics on any failure.
fn build_stage(cc: &str, src: &Path, bin: &Path, units: &[Unit]) {
    let children: Vec<(&Unit, Child)> = units.iter().map(|u| (u, spawn(cc, src, bin, u))).collect();
    let mut failed = Vec::new();
    for (unit, mut child) in children {
        let status = child.wait().expect("waiting for the C compiler");
        if !status.success() {
            failed.push(unit.output);
        }
    }
    if !failed.is_empty() {
        panic!(
            "compiling the C test doubles failed for: {}",
            failed.join(", ")
        );
    }
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let src = manifest.join("c");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let bin = out.join("bin");
    std::fs::create_dir_all(&bin).expect("creating OUT_DIR/bin");
    let cc = env::var("CC").unwrap_or_else(|_| "gcc".to_string());

    println!("cargo:rerun-if-changed=c");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");

    // Stage 1: no dependencies on other outputs.
    build_stage(
        &cc,
        &src,
        &bin,
        &[
            Unit {
                output: "libamdhip64.so",
                sources: &["fake_hip.c"],
                extra: &["-shared", "-Wl,-soname,libamdhip64.so"],
            },
            Unit {
                output: "harness_dlopen",
                sources: &["harness_dlopen.c"],
                extra: &["-ldl"],
            },
            Unit {
                output: "quiet_main",
                sources: &["quiet_main.c"],
                extra: &[],
            },
            Unit {
                output: "quiet_probe",
                sources: &["quiet_probe.c"],
                extra: &[],
            },
            Unit {
                output: "naive_selftest",
                sources: &["naive_selftest.c", "naive_conv.c"],
                extra: &["-lm"],
            },
        ],
    );
    // Stage 2: the fake MIOpen links the fake HIP.
    build_stage(
        &cc,
        &src,
        &bin,
        &[Unit {
            output: "libMIOpen.so",
            sources: &["fake_miopen.c", "naive_conv.c", "naive_bn.c"],
            extra: &["-shared", "-Wl,-soname,libMIOpen.so", "-lamdhip64", "-lm"],
        }],
    );
    // Stage 3: everything that links both.
    build_stage(
        &cc,
        &src,
        &bin,
        &[
            Unit {
                output: "harness_direct",
                sources: &["harness.c", "naive_conv.c", "naive_bn.c"],
                extra: &["-DHARNESS_MAIN", "-lMIOpen", "-lamdhip64", "-lm"],
            },
            // The plugin twice: binding MIOpen's symbols at their first call, and at load.
            Unit {
                output: "libconvplugin.so",
                sources: &["harness.c", "naive_conv.c", "naive_bn.c"],
                extra: &[
                    "-shared",
                    "-Wl,-soname,libconvplugin.so",
                    "-Wl,-z,lazy",
                    "-lMIOpen",
                    "-lamdhip64",
                    "-lm",
                ],
            },
            Unit {
                output: "libconvplugin_now.so",
                sources: &["harness.c", "naive_conv.c", "naive_bn.c"],
                extra: &[
                    "-shared",
                    "-Wl,-soname,libconvplugin_now.so",
                    "-Wl,-z,now",
                    "-lMIOpen",
                    "-lamdhip64",
                    "-lm",
                ],
            },
            Unit {
                output: "doubles_probe",
                sources: &["doubles_probe.c"],
                extra: &["-lMIOpen", "-lamdhip64"],
            },
            Unit {
                output: "fusion_probe",
                sources: &["fusion_probe.c", "naive_conv.c"],
                extra: &["-lMIOpen", "-lamdhip64", "-lm"],
            },
            Unit {
                output: "train_direct",
                sources: &["train_seq.c"],
                extra: &["-DTRAIN_MAIN", "-lMIOpen", "-lamdhip64"],
            },
            Unit {
                output: "libtrainplugin.so",
                sources: &["train_seq.c"],
                extra: &[
                    "-shared",
                    "-Wl,-soname,libtrainplugin.so",
                    "-lMIOpen",
                    "-lamdhip64",
                ],
            },
            Unit {
                output: "reliability_driver",
                sources: &["reliability.c", "naive_conv.c"],
                extra: &["-lMIOpen", "-lamdhip64", "-lm"],
            },
            Unit {
                output: "callpath_bench",
                sources: &["callpath_bench.c"],
                extra: &["-lMIOpen", "-lamdhip64", "-ldl", "-lm"],
            },
        ],
    );

    // Stage 4: clients built against HIP's real header, when it is installed.
    let real_hip = Path::new(REAL_HIP_HEADER).is_file();
    if real_hip {
        println!("cargo:rerun-if-changed={REAL_HIP_HEADER}");
        build_stage(
            &cc,
            &src,
            &bin,
            &[
                Unit {
                    output: "hip_abi_check",
                    sources: &["hip_abi_check.c", "hip_abi_real.c", "hip_abi_ours.c"],
                    extra: &["-D__HIP_PLATFORM_AMD__", "-lamdhip64"],
                },
                Unit {
                    output: "sample_conv",
                    sources: &["sample_conv.c", "naive_conv.c"],
                    extra: &[
                        "-D__HIP_PLATFORM_AMD__",
                        "-DSHIM_TESTS_REAL_HIP_HEADERS",
                        "-lMIOpen",
                        "-lamdhip64",
                        "-lm",
                    ],
                },
            ],
        );
    } else {
        // Until it is installed, look again on every build.
        println!("cargo:rerun-if-changed=/usr/include/hip");
        println!(
            "cargo:warning={REAL_HIP_HEADER} is missing: hip_abi_check and sample_conv are not \
             built and their tests fail (install it: apt-get install libamdhip64-dev)"
        );
    }
    println!(
        "cargo:rustc-env=SHIM_TESTS_REAL_HIP={}",
        if real_hip { "1" } else { "0" }
    );
    println!("cargo:rustc-env=SHIM_TESTS_BIN={}", bin.display());
}
