//! Owns the tests of the exit summary's "where the time went" part: the top
//! configurations by time in the text summary, and `RDNA1SHIM_SUMMARY_JSON`, which must
//! parse and carry the same numbers as the text (per operation and per configuration).

use std::collections::BTreeMap;

use serde_json::Value;
use shim_tests::{describe, run};

/// `key=value` pairs of a summary line.
fn fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The number in "(12.3 GFLOP/s)".
fn gflops(line: &str) -> String {
    let end = line.find(" GFLOP/s)").expect("GFLOP/s");
    let start = line[..end].rfind('(').unwrap() + 1;
    line[start..end].to_string()
}

fn secs(v: &Value) -> String {
    format!("{:.3}s", v.as_f64().unwrap())
}

#[test]
fn json_summary_has_the_numbers_of_the_text_summary() {
    let dir = std::env::temp_dir().join(format!("rdna1shim-summary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("summary.json");
    // Backward-data on the (healthy) GPU, the rest on the CPU: both kinds of rows.
    let out = run(
        "train_direct",
        &["--steps", "2"],
        &[
            ("RDNA1SHIM_SUMMARY_JSON", path.to_str().unwrap()),
            ("RDNA1SHIM_CONV_BWD_DATA", "gpu"),
            ("FAKE_MIOPEN_FAULTS", ""),
        ],
        true,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("rdna1shim: "))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("JSON summary written to")),
        "{text}"
    );
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();

    // Per operation.
    let ops: BTreeMap<&str, &Value> = s["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["op"].as_str().unwrap(), o))
        .collect();
    let op_lines: Vec<&&str> = lines.iter().filter(|l| l.starts_with("  conv_")).collect();
    assert_eq!(op_lines.len(), 3, "{text}");
    assert_eq!(ops.len(), 3);
    for l in op_lines {
        let name = l.split_whitespace().next().unwrap();
        let (f, o) = (fields(l), ops[name]);
        assert_eq!(f["cpu_calls"], o["cpu_calls"].to_string(), "{l}");
        assert_eq!(f["gpu_calls"], o["gpu_calls"].to_string(), "{l}");
        assert_eq!(f["failed"], o["failed_calls"].to_string(), "{l}");
        assert_eq!(f["compute"], secs(&o["compute_s"]), "{l}");
        assert_eq!(f["copies"], secs(&o["copy_s"]), "{l}");
        // where the convolution calls' time went (ops that computed on the CPU)
        if o["cpu_calls"].as_u64().unwrap() > 0 {
            assert_eq!(f["call_time"], secs(&o["call_s"]), "{l}");
            assert_eq!(f["engine"], secs(&o["engine_s"]), "{l}");
            assert_eq!(f["conversions"], secs(&o["conversions_s"]), "{l}");
            assert_eq!(
                f["waiting_for_copies"],
                secs(&o["waiting_for_copies_s"]),
                "{l}"
            );
        } else {
            assert!(!f.contains_key("call_time"), "{l}");
            assert_eq!(o["call_s"].as_f64(), Some(0.0), "{l}");
        }
        assert_eq!(
            gflops(l),
            format!("{:.1}", o["gflops"].as_f64().unwrap()),
            "{l}"
        );
    }
    assert!(ops["conv_bwd_data"]["gpu_calls"].as_u64().unwrap() > 0);
    assert!(
        text.contains("call_time="),
        "no operation says where its calls' time went\n{text}"
    );

    // Per configuration: the text's top list is the JSON's first entries.
    let configs = s["configurations"].as_array().unwrap();
    assert_eq!(configs.len(), 11);
    let head = lines
        .iter()
        .position(|l| l.starts_with("top 10 of 11 convolution configurations"))
        .unwrap_or_else(|| panic!("{text}"));
    let top: Vec<&str> = lines[head + 1..head + 11].to_vec();
    let mut last = f64::INFINITY;
    for (i, l) in top.iter().enumerate() {
        let c = &configs[i];
        assert_eq!(c["rank"].as_u64(), Some(i as u64 + 1));
        let words: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(words[0], format!("{}.", i + 1), "{l}");
        assert_eq!(words[1], c["id"].as_str().unwrap(), "{l}");
        assert_eq!(words[2], c["op"].as_str().unwrap(), "{l}");
        let f = fields(l);
        for (k, j) in [
            ("calls", "calls"),
            ("cpu", "cpu_calls"),
            ("gpu", "gpu_calls"),
            ("failed", "failed_calls"),
        ] {
            assert_eq!(f[k], c[j].to_string(), "{k} in {l}");
        }
        assert_eq!(f["cpu_time"], secs(&c["compute_s"]), "{l}");
        assert_eq!(f["copies"], secs(&c["copy_s"]), "{l}");
        assert_eq!(
            gflops(l),
            format!("{:.1}", c["gflops"].as_f64().unwrap()),
            "{l}"
        );
        let route = format!(
            "route={} ({})",
            c["routed"].as_str().unwrap(),
            c["rule"].as_str().unwrap()
        );
        assert!(l.ends_with(&route), "{l} vs {route}");
        assert!(l.contains(c["description"].as_str().unwrap()), "{l}");
        let t = c["time_s"].as_f64().unwrap();
        assert!(t <= last, "ordered by time");
        last = t;
        let sum = c["compute_s"].as_f64().unwrap() + c["copy_s"].as_f64().unwrap();
        assert!((t - sum).abs() < 1e-9, "time is compute + copies");
    }
    // Every configuration is there, GPU ones included (2 calls each, no CPU time).
    for c in configs {
        assert_eq!(c["calls"], 2, "{c}");
        if c["op"] == "conv_bwd_data" {
            assert_eq!(
                (c["gpu_calls"].as_u64(), c["compute_s"].as_f64()),
                (Some(2), Some(0.0))
            );
        }
    }
    assert_eq!(s["routes"]["status"], "none");
    assert_eq!(s["pid"].as_u64().is_some(), true);
    let _ = std::fs::remove_dir_all(&dir);
}
