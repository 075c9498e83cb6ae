//! Owns the tests of the doubles against clients built with HIP's real header
//! (`/usr/include/hip`, Debian's `libamdhip64-dev` 5.x): `hip_abi_check` proves that the
//! fake HIP keeps the real ABI (every declaration of `hip_api.h`, the `hipDeviceProp_t`
//! the fake writes, attributes, streams and events), and `sample_conv`, a client in the
//! style of MIOpen's samples, crashes on the doubles without the shim and is right with
//! it. Also: the two builds of the harness plugin bind as their names say.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use shim_tests::{
    assert_harness_passed, bin, describe, run, signal_of, CRASH_MARKER, GPU_RAN_MARKER,
};

const SIGABRT: i32 = 6;

fn require_real_hip() {
    assert_eq!(
        env!("SHIM_TESTS_REAL_HIP"),
        "1",
        "HIP's real header /usr/include/hip/hip_runtime_api.h was missing when shim-tests \
         was built, so hip_abi_check and sample_conv were not: install it \
         (apt-get install libamdhip64-dev) and rebuild"
    );
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_fake_hip_keeps_the_real_headers_abi() {
    require_real_hip();
    let out = run(
        "hip_abi_check",
        &[],
        &[("FAKE_HIP_DELAY_US", "100000")],
        false,
    );
    let n = assert_harness_passed(&out);
    assert!(n >= 300, "only {n} checks ran\n{}", describe(&out));
}

/// Every name `hip_api.h` declares (enum values, flags, members of hipDeviceProp_t and
/// hipDeviceArch_t, functions) must be in `hip_abi_list.h`, or hip_abi_check would not
/// compare it with the real header.
#[test]
fn every_declaration_of_hip_api_h_is_compared() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("c");
    let api = std::fs::read_to_string(dir.join("hip_api.h")).expect("hip_api.h");
    let list = std::fs::read_to_string(dir.join("hip_abi_list.h")).expect("hip_abi_list.h");
    let listed: BTreeSet<String> = list
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map(str::to_string)
        .collect();
    let mut declared = BTreeSet::new();
    let mut in_struct = false;
    for line in api.lines() {
        let t = line.trim();
        if t.starts_with("typedef struct {") || t.starts_with("typedef struct hipDeviceProp_t {") {
            in_struct = true;
            continue;
        }
        if in_struct && t.starts_with('}') {
            in_struct = false;
            continue;
        }
        let word = |s: &str| {
            s.trim_start_matches('*')
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .unwrap_or("")
                .to_string()
        };
        if in_struct {
            // "int maxThreadsDim[3];", "unsigned hasDoubles : 1;", "unsigned int* hdpMemFlushCntl;"
            let decl = t
                .split(';')
                .next()
                .unwrap_or("")
                .split(':')
                .next()
                .unwrap_or("");
            if let Some(last) = decl.split_whitespace().last() {
                declared.insert(word(last));
            }
        } else if let Some((name, _)) = t.split_once(" = ") {
            if name.starts_with("hip") {
                declared.insert(name.to_string());
            }
        } else if let Some(rest) = t.strip_prefix("#define hip") {
            declared.insert(format!("hip{}", word(rest)));
        } else if t.starts_with("hipError_t hip") || t.starts_with("const char* hip") {
            let name = t
                .split('(')
                .next()
                .unwrap()
                .split_whitespace()
                .last()
                .unwrap();
            declared.insert(name.to_string());
        }
    }
    assert!(declared.len() > 200, "parsed only {declared:?}");
    let missing: Vec<_> = declared.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "declared in hip_api.h but not compared by hip_abi_check: {missing:?}"
    );
}

#[test]
fn the_sample_client_crashes_on_the_doubles_without_the_shim() {
    require_real_hip();
    let out = run("sample_conv", &[], &[], false);
    assert_eq!(signal_of(&out.status), Some(SIGABRT), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains(CRASH_MARKER),
        "{}",
        describe(&out)
    );
    // It got as far as MIOpen: the device query went through the real header's layout.
    assert!(
        text(&out.stdout).contains(
            "Device 0: AMD Radeon RX 5700 XT (gfx1010:xnack-), 40 compute units, wave32, 8.0 GiB"
        ),
        "{}",
        describe(&out)
    );
}

#[test]
fn the_sample_client_is_right_through_the_shim() {
    require_real_hip();
    let shapes: &[&[&str]] = &[
        &[],
        &["2", "3", "17", "13", "8", "5", "5", "2", "2", "1"],
        &["1", "8", "9", "9", "4", "3", "3", "2", "1", "2"],
        &["3", "32", "7", "7", "16", "1", "1", "0", "1", "1"],
    ];
    for args in shapes {
        let out = run("sample_conv", args, &[("RDNA1SHIM_LOG", "debug")], true);
        let stdout = text(&out.stdout);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{args:?}\n{}", describe(&out));
        assert!(stdout.contains(": PASSED"), "{args:?}\n{}", describe(&out));
        assert!(
            stdout.contains("Checksum (sum of y): "),
            "{}",
            describe(&out)
        );
        assert!(
            !stderr.contains(CRASH_MARKER) && !stderr.contains(GPU_RAN_MARKER),
            "{}",
            describe(&out)
        );
        // The exit summary counts the forward call as the shim's.
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("conv_fwd") && l.contains("cpu_calls=1")),
            "{}",
            describe(&out)
        );
    }
}

/// The client itself is right: on a healthy fake MIOpen (no shim) it passes too.
#[test]
fn the_sample_client_is_right_on_a_healthy_fake() {
    require_real_hip();
    let out = run("sample_conv", &[], &[("FAKE_MIOPEN_HEALTHY", "1")], false);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(text(&out.stdout).contains(": PASSED"), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains(GPU_RAN_MARKER),
        "{}",
        describe(&out)
    );
}

/// libconvplugin.so resolves MIOpen's functions at their first call, libconvplugin_now.so
/// at load (the Python import tests depend on having both).
#[test]
fn the_plugin_builds_bind_as_named() {
    let dynamic = |name: &str| {
        let out = Command::new("readelf")
            .arg("-d")
            .arg(bin(name))
            .output()
            .expect("readelf (binutils) runs");
        assert!(out.status.success(), "{}", describe(&out));
        text(&out.stdout)
    };
    let lazy = dynamic("libconvplugin.so");
    let now = dynamic("libconvplugin_now.so");
    assert!(
        !lazy.contains("BIND_NOW") && !lazy.contains("Flags: NOW"),
        "{lazy}"
    );
    assert!(
        now.contains("BIND_NOW") || now.contains("Flags: NOW"),
        "{now}"
    );
}
