//! Statistics per convolution configuration: for every distinct configuration the
//! process saw, the entry points it came through, where it was routed and by which
//! rule, its calls on the CPU and the GPU, CPU and copy time, bytes and work. The
//! record file, the exit summary's top configurations and its JSON form are all made
//! from this one table (`report` writes them).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use once_cell::sync::Lazy;

use crate::config::Target;
use crate::conv_config::{layout_name, ConvConfig};
use crate::describe::{describe, ConvProblem, Pass};
use crate::json;
use crate::routes::Rule;
use crate::stats::CallRecord;

/// The families of entry points a configuration can be reached by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// `miopenConvolution*GetWorkSpaceSize`.
    Workspace,
    /// `miopenFindConvolution*Algorithm`.
    Find,
    /// `miopenConvolutionForward`, `...BackwardData`, `...BackwardWeights`.
    Classic,
    /// `miopenConvolution*GetSolutionCount`, `*GetSolution`, `*GetSolutionWorkspaceSize`.
    Solutions,
    /// `miopenConvolution*CompileSolution`.
    Compile,
    /// `miopenConvolution*Immediate`.
    Immediate,
}

impl EntryPoint {
    pub const ALL: [EntryPoint; 6] = [
        EntryPoint::Workspace,
        EntryPoint::Find,
        EntryPoint::Classic,
        EntryPoint::Solutions,
        EntryPoint::Compile,
        EntryPoint::Immediate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EntryPoint::Workspace => "workspace",
            EntryPoint::Find => "find",
            EntryPoint::Classic => "classic",
            EntryPoint::Solutions => "solutions",
            EntryPoint::Compile => "compile",
            EntryPoint::Immediate => "immediate",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// Whether the entry point computes the convolution (and so counts as a call).
    pub fn computes(self) -> bool {
        matches!(self, EntryPoint::Classic | EntryPoint::Immediate)
    }
}

/// What the process did with one configuration.
#[derive(Clone, Debug)]
pub struct ConfigEntry {
    pub config: ConvConfig,
    pub id: String,
    /// The log's one-line description of the problem.
    pub description: String,
    /// The engine pass that computes it.
    pub pass: Pass,
    /// MIOpenDriver command reproducing it, with its `-F` direction flag.
    pub driver: String,
    pub cpu_calls: u64,
    pub gpu_calls: u64,
    pub failed_calls: u64,
    pub compute: Duration,
    pub copy: Duration,
    pub bytes_to_host: u64,
    pub bytes_to_device: u64,
    /// Floating-point operations computed on the CPU.
    pub flops: f64,
    entry_points: u8,
    /// The last routing decision and its rule.
    pub route: (Target, Rule),
}

impl ConfigEntry {
    pub fn calls(&self) -> u64 {
        self.cpu_calls + self.gpu_calls + self.failed_calls
    }

    /// Time the shim spent on it: CPU compute and copies.
    pub fn total(&self) -> Duration {
        self.compute + self.copy
    }

    pub fn gflops(&self) -> f64 {
        let s = self.compute.as_secs_f64();
        if s > 0.0 {
            self.flops / s * 1e-9
        } else {
            0.0
        }
    }

    pub fn entry_points(&self) -> Vec<EntryPoint> {
        EntryPoint::ALL
            .into_iter()
            .filter(|e| self.entry_points & e.bit() != 0)
            .collect()
    }

    /// "cpu (RDNA1SHIM_CONV_FWD=cpu)" and the like.
    pub fn route_text(&self) -> String {
        format!("{} ({})", self.route.0, self.route.1)
    }

    /// The configuration as a JSON object: its identifying members (readable back by
    /// `ConvConfig::from_json`), then what the process saw. It has no `route` member:
    /// `routed` and `rule` say what this run did, a routes file says what to do.
    pub fn to_json(&self) -> String {
        let c = &self.config;
        let o = json::Object::new().str("id", &self.id);
        c.key_members(o)
            .bool("transposed", c.transposed)
            .uint("spatial_dims", c.spatial_dims() as u64)
            .str("layout", layout_name(&c.x))
            .str(
                "pass",
                match self.pass {
                    Pass::Forward => "forward",
                    Pass::BackwardData => "backward_data",
                    Pass::BackwardWeights => "backward_weights",
                },
            )
            .str("description", &self.description)
            .uint("calls", self.calls())
            .uint("cpu_calls", self.cpu_calls)
            .uint("gpu_calls", self.gpu_calls)
            .uint("failed_calls", self.failed_calls)
            .float("time_s", self.total().as_secs_f64())
            .float("compute_s", self.compute.as_secs_f64())
            .float("copy_s", self.copy.as_secs_f64())
            .float("gflops", self.gflops())
            .uint("bytes_to_host", self.bytes_to_host)
            .uint("bytes_to_device", self.bytes_to_device)
            .raw(
                "entry_points",
                &json::array(self.entry_points().iter().map(|e| json::string(e.name()))),
            )
            .str("routed", &self.route.0.to_string())
            .str("rule", &self.route.1.to_string())
            .str("driver", &self.driver)
            .finish()
    }
}

/// At most this many configurations are remembered; later ones are counted only.
pub const MAX_CONFIGS: usize = 4096;

#[derive(Default)]
struct Inner {
    index: HashMap<ConvConfig, usize>,
    entries: Vec<ConfigEntry>,
    /// Calls of configurations beyond `MAX_CONFIGS`.
    dropped: u64,
}

/// The table of configurations (one per process, [`CONFIGS`]).
#[derive(Default)]
pub struct ConfigTable {
    inner: Mutex<Inner>,
}

pub static CONFIGS: Lazy<ConfigTable> = Lazy::new(ConfigTable::default);

/// A configuration's place in the table, to record a call's outcome with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot(usize);

impl ConfigTable {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// Notes that `config` (the configuration of `p`) came through `entry` and was
    /// routed to `target` by `rule`. `None` when the table is full.
    pub fn note(
        &self,
        p: &ConvProblem,
        config: ConvConfig,
        entry: EntryPoint,
        target: Target,
        rule: &Rule,
    ) -> Option<Slot> {
        self.with(|t| {
            let i = match t.index.get(&config) {
                Some(&i) => i,
                None => {
                    if t.entries.len() >= MAX_CONFIGS {
                        if entry.computes() {
                            t.dropped += 1;
                        }
                        return None;
                    }
                    let flag = crate::repro::direction_flag(p.direction);
                    t.entries.push(ConfigEntry {
                        id: config.id(),
                        config: config.clone(),
                        description: describe(p),
                        pass: p.pass,
                        driver: format!("{} -F {flag}", crate::repro::driver_command(p)),
                        cpu_calls: 0,
                        gpu_calls: 0,
                        failed_calls: 0,
                        compute: Duration::ZERO,
                        copy: Duration::ZERO,
                        bytes_to_host: 0,
                        bytes_to_device: 0,
                        flops: 0.0,
                        entry_points: 0,
                        route: (target, rule.clone()),
                    });
                    t.index.insert(config, t.entries.len() - 1);
                    t.entries.len() - 1
                }
            };
            let e = &mut t.entries[i];
            e.entry_points |= entry.bit();
            if e.route.0 != target || e.route.1 != *rule {
                e.route = (target, rule.clone());
            }
            Some(Slot(i))
        })
    }

    /// A call computed on the CPU.
    pub fn record_cpu(&self, slot: Slot, r: &CallRecord) {
        self.with(|t| {
            let e = &mut t.entries[slot.0];
            e.cpu_calls += 1;
            e.compute += r.compute;
            e.copy += r.copy;
            e.bytes_to_host += r.bytes_to_host;
            e.bytes_to_device += r.bytes_to_device;
            e.flops += r.flops;
        })
    }

    /// A call passed to the real MIOpen.
    pub fn record_gpu(&self, slot: Slot) {
        self.with(|t| t.entries[slot.0].gpu_calls += 1)
    }

    /// A call the shim refused or failed.
    pub fn record_failure(&self, slot: Slot) {
        self.with(|t| t.entries[slot.0].failed_calls += 1)
    }

    /// Every configuration in first-seen order, and the calls of those not kept.
    /// `None` when another thread holds the table (at exit, never wait for it).
    pub fn snapshot(&self) -> Option<(Vec<ConfigEntry>, u64)> {
        let g = match self.inner.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some((g.entries.clone(), g.dropped))
    }
}

/// `entries` ordered by total time, longest first (first-seen order among equals).
pub fn by_total_time(entries: &[ConfigEntry]) -> Vec<&ConfigEntry> {
    let mut v: Vec<&ConfigEntry> = entries.iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.total()));
    v
}

/// One summary line for a configuration, as the top list prints it.
pub fn summary_line(rank: usize, e: &ConfigEntry) -> String {
    format!(
        "{rank:>2}. {} {:<16} {}  calls={} cpu={} gpu={} failed={} cpu_time={:.3}s copies={:.3}s ({:.1} GFLOP/s) route={}",
        e.id,
        e.config.op().name(),
        e.description,
        e.calls(),
        e.cpu_calls,
        e.gpu_calls,
        e.failed_calls,
        e.compute.as_secs_f64(),
        e.copy.as_secs_f64(),
        e.gflops(),
        e.route_text()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Op;
    use crate::describe::{conv_problem, ConvDesc, Direction, TensorDesc};
    use crate::ffi::miopen::miopenConvolution;
    use crate::layout::DType;

    fn problem(direction: Direction, k: usize) -> ConvProblem {
        let c = ConvDesc {
            mode: miopenConvolution,
            pads: vec![1, 1],
            strides: vec![1, 1],
            dilations: vec![1, 1],
            groups: 1,
        };
        conv_problem(
            direction,
            &c,
            &TensorDesc::packed(DType::F32, &[2, 3, 8, 8]),
            &TensorDesc::packed(DType::F32, &[k, 3, 3, 3]),
            &TensorDesc::packed(DType::F32, &[2, k, 8, 8]),
        )
        .unwrap()
    }

    fn switch(target: Target) -> Rule {
        Rule::Switch {
            op: Op::ConvFwd,
            target,
            unlisted: false,
        }
    }

    #[test]
    fn counts_calls_entry_points_and_routes_per_configuration() {
        let t = ConfigTable::default();
        let p = problem(Direction::Forward, 8);
        let q = problem(Direction::BackwardWeights, 8);
        let c = ConvConfig::of(&p, false);
        let cpu = switch(Target::Cpu);
        let a = t.note(&p, c.clone(), EntryPoint::Workspace, Target::Cpu, &cpu);
        let a2 = t.note(&p, c.clone(), EntryPoint::Find, Target::Cpu, &cpu);
        let a3 = t.note(&p, c.clone(), EntryPoint::Classic, Target::Cpu, &cpu);
        assert!(a.is_some() && a == a2 && a2 == a3);
        #[allow(clippy::needless_update)] // stays valid when CallRecord gains fields
        let rec = CallRecord {
            compute: Duration::from_millis(300),
            copy: Duration::from_millis(100),
            bytes_to_host: 10,
            bytes_to_device: 5,
            flops: 3e9,
            ..Default::default()
        };
        t.record_cpu(a.unwrap(), &rec);
        t.record_cpu(a.unwrap(), &rec);
        let line = Rule::RoutesFile { line: 2 };
        let b = t
            .note(
                &q,
                ConvConfig::of(&q, false),
                EntryPoint::Immediate,
                Target::Gpu,
                &line,
            )
            .unwrap();
        t.record_gpu(b);
        t.record_failure(b);
        let (entries, dropped) = t.snapshot().unwrap();
        assert_eq!((entries.len(), dropped), (2, 0));
        let e = &entries[0];
        assert_eq!((e.calls(), e.cpu_calls, e.gpu_calls), (2, 2, 0));
        assert_eq!(e.total(), Duration::from_millis(800));
        assert!((e.gflops() - 10.0).abs() < 1e-9, "{}", e.gflops());
        assert_eq!(
            e.entry_points(),
            vec![EntryPoint::Workspace, EntryPoint::Find, EntryPoint::Classic]
        );
        assert_eq!(e.route_text(), "cpu (RDNA1SHIM_CONV_FWD=cpu)");
        assert!(e.driver.starts_with("MIOpenDriver conv -n 2 -c 3") && e.driver.ends_with("-F 1"));
        let f = &entries[1];
        assert_eq!((f.calls(), f.gpu_calls, f.failed_calls), (2, 1, 1));
        assert_eq!(f.route_text(), "gpu (routes file line 2)");
        assert_eq!(by_total_time(&entries)[0].id, e.id);
    }

    #[test]
    fn json_form_reads_back_as_the_same_configuration_without_a_route() {
        let t = ConfigTable::default();
        let p = problem(Direction::BackwardData, 4);
        let s = t
            .note(
                &p,
                ConvConfig::of(&p, true),
                EntryPoint::Classic,
                Target::Cpu,
                &switch(Target::Cpu),
            )
            .unwrap();
        t.record_cpu(
            s,
            &CallRecord {
                compute: Duration::from_micros(1500),
                ..Default::default()
            },
        );
        let (entries, _) = t.snapshot().unwrap();
        let text = entries[0].to_json();
        let v = json::parse(&text).unwrap();
        assert_eq!(ConvConfig::from_json(&v).unwrap(), entries[0].config);
        assert_eq!(v.get("route"), None);
        assert_eq!(v.get("routed").unwrap().as_str(), Some("cpu"));
        assert_eq!(v.get("calls").unwrap().as_u64(), Some(1));
        assert_eq!(v.get("compute_s").unwrap().as_f64(), Some(0.0015));
        assert_eq!(v.get("pass").unwrap().as_str(), Some("backward_data"));
        assert_eq!(v.get("id").unwrap().as_str(), Some(entries[0].id.as_str()));
        let eps: Vec<&str> = v
            .get("entry_points")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert_eq!(eps, vec!["classic"]);
        let l = summary_line(1, &entries[0]);
        assert!(
            l.contains("cpu_time=0.002s") && l.contains("calls=1 cpu=1 gpu=0"),
            "{l}"
        );
    }

    #[test]
    fn a_full_table_keeps_counting_what_it_drops() {
        let t = ConfigTable::default();
        let rule = switch(Target::Cpu);
        for k in 1..=MAX_CONFIGS + 2 {
            let p = problem(Direction::Forward, k);
            t.note(
                &p,
                ConvConfig::of(&p, false),
                EntryPoint::Classic,
                Target::Cpu,
                &rule,
            );
        }
        let (entries, dropped) = t.snapshot().unwrap();
        assert_eq!((entries.len(), dropped), (MAX_CONFIGS, 2));
    }
}
