//! What the process leaves behind about its convolutions at exit, all made from one
//! snapshot of the per-configuration table (`config_stats`) and the per-operation
//! counters (`stats`): the exit summary's lines on configurations (the top ones by
//! time; with a routes file, every configuration's calls and route), the record file
//! (`RDNA1SHIM_RECORD`, one configuration a line) and the whole summary as JSON
//! (`RDNA1SHIM_SUMMARY_JSON`).
//!
//! Files are written whole, under a temporary name first and then renamed, so a reader
//! never sees half a file. `%p` in a path becomes the process id; without it, a forked
//! child (which inherits the parent's counters and exit handler) leaves the files to
//! the process that created the runtime.

use crate::config_stats::{by_total_time, summary_line, ConfigEntry};
use crate::json;
use crate::stats::STATS;

/// How many configurations the text summary itemises by time.
pub const TOP: usize = 10;

/// What became of the routes file, for the summary.
#[derive(Clone, Debug, Default)]
pub struct RoutesStatus {
    pub file: Option<String>,
    /// (configurations to the CPU, to the GPU) of a file in use.
    pub counts: Option<(usize, usize)>,
    /// Why a file was not used.
    pub error: Option<String>,
}

/// The summary lines on configurations.
pub fn config_lines(entries: &[ConfigEntry], dropped: u64, routes_in_use: bool) -> Vec<String> {
    let mut out = Vec::new();
    if entries.is_empty() {
        return out;
    }
    let ranked = by_total_time(entries);
    out.push(format!(
        "top {} of {} convolution configurations by time on the CPU (compute + copies):",
        ranked.len().min(TOP),
        entries.len()
    ));
    out.extend(
        ranked
            .iter()
            .take(TOP)
            .enumerate()
            .map(|(i, e)| format!("  {}", summary_line(i + 1, e))),
    );
    if dropped > 0 {
        out.push(format!(
            "  ({dropped} calls of configurations beyond the first {} are not itemised)",
            crate::config_stats::MAX_CONFIGS
        ));
    }
    if routes_in_use {
        out.push("calls per configuration and route:".to_string());
        for e in entries {
            out.push(format!(
                "  {} {:<16} cpu={} gpu={} failed={} route={}",
                e.id,
                e.config.op().name(),
                e.cpu_calls,
                e.gpu_calls,
                e.failed_calls,
                e.route_text()
            ));
        }
    }
    out
}

/// The record file: one JSON object a line per configuration, in first-seen order.
pub fn record_text(entries: &[ConfigEntry]) -> String {
    entries.iter().map(|e| e.to_json() + "\n").collect()
}

/// The per-operation counters as JSON objects (operations that saw a call, as the text
/// summary lists them).
fn ops_json() -> Vec<String> {
    STATS
        .totals()
        .into_iter()
        .map(|(op, t)| {
            json::Object::new()
                .str("op", op.name())
                .uint("cpu_calls", t.cpu_calls)
                .uint("gpu_calls", t.gpu_calls)
                .uint("failed_calls", t.failed_calls)
                .float("compute_s", t.compute_s)
                .float("copy_s", t.copy_s)
                .float("gflops", t.gflops())
                .uint("bytes_to_host", t.bytes_to_host)
                .uint("bytes_to_device", t.bytes_to_device)
                .float("call_s", t.call_s)
                .float("engine_s", t.engine_s)
                .float("conversions_s", t.conversions_s)
                .float("waiting_for_copies_s", t.waiting_for_copies_s)
                .finish()
        })
        .collect()
}

/// The whole summary as one JSON object. `configurations` is ordered by time, longest
/// first, as the text's top list (whose entries are its first `TOP`).
pub fn summary_json(entries: &[ConfigEntry], dropped: u64, routes: &RoutesStatus) -> String {
    let opt = |v: &Option<String>| v.as_deref().map_or("null".to_string(), json::string);
    let mut r = json::Object::new().raw("file", &opt(&routes.file));
    r = match (&routes.counts, &routes.error) {
        (Some((cpu, gpu)), _) => r
            .str("status", "in use")
            .uint("cpu", *cpu as u64)
            .uint("gpu", *gpu as u64),
        (None, Some(e)) => r.str("status", "rejected").str("error", e),
        (None, None) => r.str("status", "none"),
    };
    let ranked = by_total_time(entries);
    let configs = ranked.iter().enumerate().map(|(i, e)| {
        // The entry's own object with its rank first.
        format!("{{\"rank\":{},{}", i + 1, &e.to_json()[1..])
    });
    json::Object::new()
        .str("rdna1shim", env!("CARGO_PKG_VERSION"))
        .uint("pid", std::process::id() as u64)
        .raw("operations", &json::array(ops_json()))
        .raw("routes", &r.finish())
        .uint("top", TOP as u64)
        .raw("configurations", &json::array(configs))
        .uint("dropped_calls", dropped)
        .finish()
        + "\n"
}

/// Writes `contents` to `template` (`%p` replaced by the process id), whole or not at
/// all. Returns the path written.
pub fn write_file(template: &str, contents: &str) -> Result<String, String> {
    let path = template.replace("%p", &std::process::id().to_string());
    let tmp = format!("{path}.tmp{}", std::process::id());
    std::fs::write(&tmp, contents)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {path:?}: {e}")
        })?;
    Ok(path)
}

/// Whether this process should write a file configured as `template` (see the module
/// documentation on forked children).
pub fn owns(template: &str, owner_pid: u32) -> bool {
    template.contains("%p") || std::process::id() == owner_pid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Target;
    use crate::config_stats::{ConfigTable, EntryPoint};
    use crate::conv_config::ConvConfig;
    use crate::describe::{conv_problem, ConvDesc, Direction, TensorDesc};
    use crate::ffi::miopen::miopenConvolution;
    use crate::layout::DType;
    use crate::routes::Rule;
    use crate::stats::CallRecord;
    use std::time::Duration;

    fn table(n: usize) -> Vec<ConfigEntry> {
        let t = ConfigTable::default();
        for k in 1..=n {
            let c = ConvDesc {
                mode: miopenConvolution,
                pads: vec![0, 0],
                strides: vec![1, 1],
                dilations: vec![1, 1],
                groups: 1,
            };
            let p = conv_problem(
                Direction::Forward,
                &c,
                &TensorDesc::packed(DType::F32, &[1, 2, 4, 4]),
                &TensorDesc::packed(DType::F32, &[k, 2, 1, 1]),
                &TensorDesc::packed(DType::F32, &[1, k, 4, 4]),
            )
            .unwrap();
            let rule = Rule::RoutesFile { line: k };
            let s = t
                .note(
                    &p,
                    ConvConfig::of(&p, false),
                    EntryPoint::Classic,
                    Target::Cpu,
                    &rule,
                )
                .unwrap();
            t.record_cpu(
                s,
                &CallRecord {
                    compute: Duration::from_millis(k as u64),
                    ..Default::default()
                },
            );
        }
        t.snapshot().unwrap().0
    }

    #[test]
    fn top_list_is_ordered_by_time_and_capped() {
        let entries = table(TOP + 3);
        let lines = config_lines(&entries, 0, false);
        assert!(
            lines[0].starts_with(&format!("top {TOP} of {}", TOP + 3)),
            "{}",
            lines[0]
        );
        assert_eq!(lines.len(), 1 + TOP);
        assert!(
            lines[1].contains(&format!("cpu_time={:.3}s", (TOP + 3) as f64 * 1e-3)),
            "{}",
            lines[1]
        );
        let with_routes = config_lines(&entries, 7, true);
        assert!(with_routes
            .iter()
            .any(|l| l.contains("7 calls of configurations beyond")));
        let per: Vec<_> = with_routes
            .iter()
            .skip_while(|l| !l.starts_with("calls per"))
            .collect();
        assert_eq!(per.len(), 1 + TOP + 3, "every configuration with its route");
        assert!(
            per[1].contains("cpu=1 gpu=0 failed=0 route=cpu (routes file line 1)"),
            "{}",
            per[1]
        );
        assert!(config_lines(&[], 0, true).is_empty());
    }

    #[test]
    fn summary_json_lists_every_configuration_by_rank() {
        let entries = table(3);
        let routes = RoutesStatus {
            file: Some("r.jsonl".into()),
            counts: Some((2, 1)),
            error: None,
        };
        let v = json::parse(&summary_json(&entries, 0, &routes)).unwrap();
        let cs = v.get("configurations").unwrap().as_array().unwrap();
        assert_eq!(cs.len(), 3);
        assert_eq!(cs[0].get("rank").unwrap().as_u64(), Some(1));
        assert_eq!(cs[0].get("compute_s").unwrap().as_f64(), Some(0.003));
        assert_eq!(cs[2].get("compute_s").unwrap().as_f64(), Some(0.001));
        assert_eq!(
            v.get("routes").unwrap().get("status").unwrap().as_str(),
            Some("in use")
        );
        assert_eq!(
            v.get("routes").unwrap().get("gpu").unwrap().as_u64(),
            Some(1)
        );
        let rejected = RoutesStatus {
            file: Some("x".into()),
            counts: None,
            error: Some("line 1: bad".into()),
        };
        let v = json::parse(&summary_json(&[], 0, &rejected)).unwrap();
        assert_eq!(
            v.get("routes").unwrap().get("error").unwrap().as_str(),
            Some("line 1: bad")
        );
        assert_eq!(
            v.get("configurations").unwrap().as_array().unwrap().len(),
            0
        );
    }

    #[test]
    fn record_lines_are_first_seen_order_and_files_are_whole() {
        let entries = table(2);
        let text = record_text(&entries);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let first = ConvConfig::from_json(&json::parse(lines[0]).unwrap()).unwrap();
        assert_eq!(first, entries[0].config);
        let dir = std::env::temp_dir().join(format!("rdna1shim-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let template = dir.join("rec-%p.jsonl");
        let path = write_file(template.to_str().unwrap(), &text).unwrap();
        assert!(path.ends_with(&format!("rec-{}.jsonl", std::process::id())));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        let e = write_file(dir.join("no/such/dir.jsonl").to_str().unwrap(), "x").unwrap_err();
        assert!(e.contains("cannot write"), "{e}");
        assert!(owns("a-%p", 1) && owns("a", std::process::id()) && !owns("a", 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
