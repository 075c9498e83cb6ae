//! Per-operation counters (calls, where they ran, time, bytes, work) and the summary
//! printed at process exit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use crate::config::Op;

#[derive(Default)]
pub struct OpStats {
    pub cpu_calls: AtomicU64,
    pub gpu_calls: AtomicU64,
    pub failed_calls: AtomicU64,
    pub compute_ns: AtomicU64,
    pub copy_ns: AtomicU64,
    pub bytes_to_host: AtomicU64,
    pub bytes_to_device: AtomicU64,
    /// Floating-point operations computed on the CPU (2 per multiply-add).
    pub flops: AtomicU64,
    /// Where a convolution call's time went: the whole calls, the engine, conversions
    /// (inputs in, results out, alpha/beta), and waiting for copies the engine did not
    /// hide.
    pub call_ns: AtomicU64,
    pub engine_ns: AtomicU64,
    pub convert_ns: AtomicU64,
    pub wait_ns: AtomicU64,
}

/// Counters of one finished CPU call.
#[derive(Default, Clone, Copy, Debug)]
pub struct CallRecord {
    /// Host work: conversions, the engine, the store.
    pub compute: Duration,
    /// Time in HIP calls: queueing copies and waiting for them.
    pub copy: Duration,
    pub bytes_to_host: u64,
    pub bytes_to_device: u64,
    pub flops: f64,
    /// The call from entry to return (zero where not measured).
    pub total: Duration,
    /// Blocked waiting for inputs (copies the engine could not hide).
    pub wait_in: Duration,
    /// Blocked waiting for the last results to reach the device.
    pub wait_out: Duration,
    /// Queueing copies and events.
    pub enqueue: Duration,
    /// Phases of `compute`.
    pub convert: Duration,
    pub engine: Duration,
    pub store: Duration,
    /// Chunks of the batch the call was cut into, and how many were in flight at once.
    pub chunks: u32,
    pub slots: u32,
    /// One input row in this many crossed the link (`skipped_rows`); 0 or 1: all.
    pub row_step: u32,
    /// One engine call over the whole batch, gated by the chunks' copies
    /// (`overlap::compute_gated`).
    pub gated: bool,
}

pub struct Stats {
    ops: [OpStats; Op::ALL.len()],
    /// Distinct convolution configurations: driver command -> (direction flags, calls).
    configs: Mutex<BTreeMap<String, (u8, u64)>>,
}

/// At most this many distinct configurations are remembered.
const MAX_CONFIGS: usize = 512;

pub static STATS: Stats = Stats::new();

impl OpStats {
    const fn new_const() -> Self {
        OpStats {
            cpu_calls: AtomicU64::new(0),
            gpu_calls: AtomicU64::new(0),
            failed_calls: AtomicU64::new(0),
            compute_ns: AtomicU64::new(0),
            copy_ns: AtomicU64::new(0),
            bytes_to_host: AtomicU64::new(0),
            bytes_to_device: AtomicU64::new(0),
            flops: AtomicU64::new(0),
            call_ns: AtomicU64::new(0),
            engine_ns: AtomicU64::new(0),
            convert_ns: AtomicU64::new(0),
            wait_ns: AtomicU64::new(0),
        }
    }
}

impl Stats {
    pub const fn new() -> Self {
        Stats {
            ops: [const { OpStats::new_const() }; Op::ALL.len()],
            configs: Mutex::new(BTreeMap::new()),
        }
    }

    /// Notes a convolution configuration (`command` without `-F`) and its direction bit.
    pub fn record_config(&self, command: String, flag: u8) {
        let Ok(mut m) = self.configs.lock() else {
            return;
        };
        if m.len() >= MAX_CONFIGS && !m.contains_key(&command) {
            return;
        }
        let e = m.entry(command).or_insert((0, 0));
        e.0 |= flag;
        e.1 += 1;
    }

    /// One reproduction line per distinct configuration seen (empty if the table is busy).
    pub fn config_lines(&self) -> Vec<String> {
        let Ok(m) = self.configs.try_lock() else {
            return Vec::new();
        };
        m.iter()
            .map(|(cmd, (flags, calls))| format!("{cmd} -F {flags}   # {calls} calls"))
            .collect()
    }

    pub fn op(&self, op: Op) -> &OpStats {
        &self.ops[op.index()]
    }

    pub fn record_cpu(&self, op: Op, r: &CallRecord) {
        let s = self.op(op);
        s.cpu_calls.fetch_add(1, Relaxed);
        s.compute_ns.fetch_add(r.compute.as_nanos() as u64, Relaxed);
        s.copy_ns.fetch_add(r.copy.as_nanos() as u64, Relaxed);
        s.bytes_to_host.fetch_add(r.bytes_to_host, Relaxed);
        s.bytes_to_device.fetch_add(r.bytes_to_device, Relaxed);
        s.flops.fetch_add(r.flops as u64, Relaxed);
        let ns = |d: Duration| d.as_nanos() as u64;
        s.call_ns.fetch_add(ns(r.total), Relaxed);
        s.engine_ns.fetch_add(ns(r.engine), Relaxed);
        s.convert_ns.fetch_add(ns(r.convert + r.store), Relaxed);
        s.wait_ns.fetch_add(ns(r.wait_in + r.wait_out), Relaxed);
    }

    pub fn record_gpu(&self, op: Op) {
        self.op(op).gpu_calls.fetch_add(1, Relaxed);
    }

    pub fn record_failure(&self, op: Op) {
        self.op(op).failed_calls.fetch_add(1, Relaxed);
    }

    /// What each operation that saw any call has done so far, in `Op::ALL` order.
    pub fn totals(&self) -> Vec<(Op, OpTotals)> {
        let secs = |a: &AtomicU64| a.load(Relaxed) as f64 * 1e-9;
        Op::ALL
            .into_iter()
            .filter_map(|op| {
                let s = self.op(op);
                let t = OpTotals {
                    cpu_calls: s.cpu_calls.load(Relaxed),
                    gpu_calls: s.gpu_calls.load(Relaxed),
                    failed_calls: s.failed_calls.load(Relaxed),
                    compute_s: secs(&s.compute_ns),
                    copy_s: secs(&s.copy_ns),
                    flops: s.flops.load(Relaxed) as f64,
                    bytes_to_host: s.bytes_to_host.load(Relaxed),
                    bytes_to_device: s.bytes_to_device.load(Relaxed),
                    call_s: secs(&s.call_ns),
                    engine_s: secs(&s.engine_ns),
                    conversions_s: secs(&s.convert_ns),
                    waiting_for_copies_s: secs(&s.wait_ns),
                };
                (t.cpu_calls + t.gpu_calls + t.failed_calls > 0).then_some((op, t))
            })
            .collect()
    }

    /// One line per operation that saw any call; empty when none did.
    pub fn summary_lines(&self) -> Vec<String> {
        self.totals()
            .into_iter()
            .map(|(op, t)| {
                let mut line = format!(
                    "{:<17} cpu_calls={} gpu_calls={} failed={} compute={:.3}s ({:.1} GFLOP/s) \
                     copies={:.3}s to_host={} to_device={}",
                    op.name(),
                    t.cpu_calls,
                    t.gpu_calls,
                    t.failed_calls,
                    t.compute_s,
                    t.gflops(),
                    t.copy_s,
                    human_bytes(t.bytes_to_host),
                    human_bytes(t.bytes_to_device),
                );
                if t.call_s > 0.0 {
                    // Convolutions: where the calls' time went.
                    line += &format!(
                        " | call_time={:.3}s engine={:.3}s conversions={:.3}s waiting_for_copies={:.3}s",
                        t.call_s, t.engine_s, t.conversions_s, t.waiting_for_copies_s
                    );
                }
                line
            })
            .collect()
    }
}

/// One operation's counters read at one moment, in seconds where they are times: what
/// the text summary and its JSON twin both print.
#[derive(Clone, Copy, Debug)]
pub struct OpTotals {
    pub cpu_calls: u64,
    pub gpu_calls: u64,
    pub failed_calls: u64,
    pub compute_s: f64,
    pub copy_s: f64,
    pub flops: f64,
    pub bytes_to_host: u64,
    pub bytes_to_device: u64,
    pub call_s: f64,
    pub engine_s: f64,
    pub conversions_s: f64,
    pub waiting_for_copies_s: f64,
}

impl OpTotals {
    /// GFLOP/s of the CPU compute (0 without any).
    pub fn gflops(&self) -> f64 {
        if self.compute_s > 0.0 {
            self.flops / self.compute_s * 1e-9
        } else {
            0.0
        }
    }
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_only_used_ops_with_rates() {
        let stats = Stats::new();
        assert!(stats.summary_lines().is_empty());
        stats.record_cpu(
            Op::ConvFwd,
            &CallRecord {
                compute: Duration::from_millis(500),
                flops: 1e9,
                bytes_to_host: 2048,
                ..Default::default()
            },
        );
        stats.record_gpu(Op::ConvBias);
        let lines = stats.summary_lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            !lines[0].contains("engine="),
            "no phases recorded: {}",
            lines[0]
        );
        assert!(
            lines[0].starts_with("conv_fwd")
                && lines[0].contains("cpu_calls=1")
                && lines[0].contains("(2.0 GFLOP/s)"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("to_host=2.0 KiB"), "{}", lines[0]);
        assert!(
            lines[1].starts_with("conv_bias") && lines[1].contains("gpu_calls=1"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn summary_says_where_a_convolution_call_spent_its_time() {
        let stats = Stats::new();
        let ms = Duration::from_millis;
        stats.record_cpu(
            Op::ConvBwdData,
            &CallRecord {
                total: ms(10),
                engine: ms(7),
                convert: ms(1),
                store: ms(1),
                wait_in: ms(500) / 1000,
                wait_out: ms(500) / 1000,
                compute: ms(9),
                ..Default::default()
            },
        );
        let line = &stats.summary_lines()[0];
        assert!(
            line.ends_with(
                "| call_time=0.010s engine=0.007s conversions=0.002s waiting_for_copies=0.001s"
            ),
            "{line}"
        );
    }

    #[test]
    fn configs_merge_directions_and_count_calls() {
        let stats = Stats::new();
        stats.record_config("MIOpenDriver conv -n 1".into(), 1);
        stats.record_config("MIOpenDriver conv -n 1".into(), 4);
        stats.record_config("MIOpenDriver conv -n 2".into(), 2);
        assert_eq!(
            stats.config_lines(),
            vec![
                "MIOpenDriver conv -n 1 -F 5   # 2 calls".to_string(),
                "MIOpenDriver conv -n 2 -F 2   # 1 calls".to_string()
            ]
        );
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
