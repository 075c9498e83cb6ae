//! Configuration from `RDNA1SHIM_*` environment variables, read once on first use.
//! The table of variables is in docs/configuration.md; keep the two in step.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::cpu::Isa;

/// Where an operation family runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Computed by the shim on the host CPU.
    Cpu,
    /// Passed to the real MIOpen untouched.
    Gpu,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Cpu => "cpu",
            Target::Gpu => "gpu",
        })
    }
}

/// The operation families with their own switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    ConvFwd,
    ConvBwdData,
    ConvBwdWeights,
    ConvBias,
    BatchNorm,
    Fusion,
}

impl Op {
    pub const ALL: [Op; 6] = [
        Op::ConvFwd,
        Op::ConvBwdData,
        Op::ConvBwdWeights,
        Op::ConvBias,
        Op::BatchNorm,
        Op::Fusion,
    ];

    /// Position in `ALL`, for per-op arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The environment variable that switches this family.
    pub fn env_var(self) -> &'static str {
        match self {
            Op::ConvFwd => "RDNA1SHIM_CONV_FWD",
            Op::ConvBwdData => "RDNA1SHIM_CONV_BWD_DATA",
            Op::ConvBwdWeights => "RDNA1SHIM_CONV_BWD_WEIGHTS",
            Op::ConvBias => "RDNA1SHIM_CONV_BIAS",
            Op::BatchNorm => "RDNA1SHIM_BATCHNORM",
            Op::Fusion => "RDNA1SHIM_FUSION",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::ConvFwd => "conv_fwd",
            Op::ConvBwdData => "conv_bwd_data",
            Op::ConvBwdWeights => "conv_bwd_weights",
            Op::ConvBias => "conv_bias",
            Op::BatchNorm => "batchnorm",
            Op::Fusion => "fusion",
        }
    }
}

/// What to do with a problem the CPU engine does not support.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsupported {
    /// Return `miopenStatusNotImplemented` with a log line.
    Error,
    /// Pass the call to the real MIOpen (which may crash on RDNA1).
    Gpu,
}

/// How a convolution call is cut into chunks along the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunks {
    /// As the chunk plan's cost model decides.
    Auto,
    /// At most `chunks` chunks for every call that can be cut, and at most `in_flight`
    /// of them staged at once when given (tests, tuning).
    Fixed {
        chunks: usize,
        in_flight: Option<usize>,
    },
}

/// The per-call host memory cap in bytes (see [`Config::call_memory_mib`]), readable by
/// modules below the runtime.
static CALL_MEMORY_BYTES: AtomicUsize = AtomicUsize::new(crate::host_mem::DEFAULT_CALL_MIB << 20);

/// The cap on the host memory one call holds (staging and work buffers).
pub fn call_memory_bytes() -> usize {
    CALL_MEMORY_BYTES.load(Relaxed)
}

#[derive(Clone, Debug)]
pub struct Config {
    /// `RDNA1SHIM_DISABLE=1`: every call goes to the real MIOpen.
    pub disabled: bool,
    targets: [Target; Op::ALL.len()],
    pub unsupported: Unsupported,
    /// Worker threads of the CPU engine.
    pub threads: usize,
    /// `RDNA1SHIM_HOST_MEMORY_MIB`: host memory one call may hold for staging and work
    /// buffers; larger tensors are processed in more chunks.
    pub call_memory_mib: usize,
    /// `RDNA1SHIM_CHUNKS`: `auto` or the most chunks a call is cut into.
    pub chunks: Chunks,
    /// `RDNA1SHIM_MAX_ISA`: the widest instruction set the CPU engine may
    /// use (`None`: the best the CPU has).
    pub max_isa: Option<Isa>,
    pub log_filter: String,
    /// `RDNA1SHIM_TRACE_ALL=1`: log every MIOpen call before it is made.
    pub trace_all: bool,
    pub log_file: Option<String>,
    pub miopen_lib: Option<String>,
    pub hip_lib: Option<String>,
    /// `RDNA1SHIM_ROUTES`: per-configuration routes (docs/routes.md).
    pub routes_file: Option<String>,
    /// `RDNA1SHIM_RECORD`: where the configurations seen are written at exit.
    pub record_file: Option<String>,
    /// `RDNA1SHIM_SUMMARY_JSON`: where the exit summary is written as JSON.
    pub summary_json: Option<String>,
    /// Problems found while reading the variables, logged once logging is up.
    pub warnings: Vec<String>,
}

impl Config {
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Builds the configuration from any variable lookup (testable without the process env).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let mut warnings = Vec::new();
        let disabled = match get("RDNA1SHIM_DISABLE").as_deref().map(str::trim) {
            None | Some("") | Some("0") | Some("false") | Some("no") => false,
            Some("1") | Some("true") | Some("yes") => true,
            Some(other) => {
                warnings.push(format!("RDNA1SHIM_DISABLE={other:?} not understood (use 1 or 0); the shim stays enabled"));
                false
            }
        };
        let mut targets = [Target::Cpu; Op::ALL.len()];
        for (i, op) in Op::ALL.iter().enumerate() {
            targets[i] = match get(op.env_var())
                .as_deref()
                .map(|s| s.trim().to_ascii_lowercase())
            {
                None => Target::Cpu,
                Some(v) if v.is_empty() || v == "cpu" => Target::Cpu,
                Some(v) if v == "gpu" => Target::Gpu,
                Some(v) => {
                    warnings.push(format!(
                        "{}={v:?} not understood (use cpu or gpu); using cpu",
                        op.env_var()
                    ));
                    Target::Cpu
                }
            };
        }
        let unsupported = match get("RDNA1SHIM_UNSUPPORTED")
            .as_deref()
            .map(|s| s.trim().to_ascii_lowercase())
        {
            None => Unsupported::Error,
            Some(v) if v.is_empty() || v == "error" => Unsupported::Error,
            Some(v) if v == "gpu" => Unsupported::Gpu,
            Some(v) => {
                warnings.push(format!(
                    "RDNA1SHIM_UNSUPPORTED={v:?} not understood (use error or gpu); using error"
                ));
                Unsupported::Error
            }
        };
        let threads = match get("RDNA1SHIM_THREADS").as_deref().map(str::trim) {
            None | Some("") => default_threads(),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    let d = default_threads();
                    warnings.push(format!(
                        "RDNA1SHIM_THREADS={v:?} is not a positive integer; using {d}"
                    ));
                    d
                }
            },
        };
        let call_memory_mib = match get("RDNA1SHIM_HOST_MEMORY_MIB").as_deref().map(str::trim) {
            None | Some("") => crate::host_mem::DEFAULT_CALL_MIB,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (MIN_CALL_MIB..=1 << 30).contains(&n) => n,
                _ => {
                    warnings.push(format!(
                        "RDNA1SHIM_HOST_MEMORY_MIB={v:?} is not a size in MiB from {MIN_CALL_MIB}; using {}",
                        crate::host_mem::DEFAULT_CALL_MIB
                    ));
                    crate::host_mem::DEFAULT_CALL_MIB
                }
            },
        };
        let chunks = match get("RDNA1SHIM_CHUNKS")
            .as_deref()
            .map(|s| s.trim().to_ascii_lowercase())
        {
            None => Chunks::Auto,
            Some(v) if v.is_empty() || v == "auto" => Chunks::Auto,
            Some(v) => {
                let (count, flight) = match v.split_once('/') {
                    Some((c, f)) => (c, Some(f)),
                    None => (v.as_str(), None),
                };
                let positive = |t: &str| t.trim().parse::<usize>().ok().filter(|n| *n >= 1);
                match (positive(count), flight.map(positive)) {
                    (Some(chunks), None) => Chunks::Fixed {
                        chunks,
                        in_flight: None,
                    },
                    (Some(chunks), Some(Some(f))) => Chunks::Fixed {
                        chunks,
                        in_flight: Some(f),
                    },
                    _ => {
                        warnings.push(format!(
                            "RDNA1SHIM_CHUNKS={v:?} not understood (use auto, N or N/M with positive integers); using auto"
                        ));
                        Chunks::Auto
                    }
                }
            }
        };
        let max_isa = match get("RDNA1SHIM_MAX_ISA").as_deref().map(str::trim) {
            None | Some("") => None,
            Some(v) => Isa::parse(v).or_else(|| {
                warnings.push(format!(
                    "RDNA1SHIM_MAX_ISA={v:?} not understood (use avx512, avx2 or portable); using the best the CPU has ({})",
                    Isa::detected()
                ));
                None
            }),
        };
        let nonempty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        Config {
            disabled,
            targets,
            unsupported,
            threads,
            call_memory_mib,
            chunks,
            max_isa,
            log_filter: nonempty("RDNA1SHIM_LOG").unwrap_or_else(|| "info".to_string()),
            trace_all: matches!(
                get("RDNA1SHIM_TRACE_ALL").as_deref().map(str::trim),
                Some("1") | Some("true") | Some("yes")
            ),
            log_file: nonempty("RDNA1SHIM_LOG_FILE"),
            miopen_lib: nonempty("RDNA1SHIM_MIOPEN_LIB"),
            hip_lib: nonempty("RDNA1SHIM_HIP_LIB"),
            routes_file: nonempty("RDNA1SHIM_ROUTES"),
            record_file: nonempty("RDNA1SHIM_RECORD"),
            summary_json: nonempty("RDNA1SHIM_SUMMARY_JSON"),
            warnings,
        }
    }

    /// Makes this configuration's per-call memory cap the one [`call_memory_bytes`] reports.
    pub fn publish_call_memory(&self) {
        CALL_MEMORY_BYTES.store(self.call_memory_mib << 20, Relaxed);
    }

    /// Where `op` runs, the global switch included.
    pub fn target(&self, op: Op) -> Target {
        if self.disabled {
            return Target::Gpu;
        }
        self.targets[op.index()]
    }

    /// One line describing the effective configuration.
    pub fn summary(&self) -> String {
        if self.disabled {
            return "disabled (RDNA1SHIM_DISABLE=1): every call goes to MIOpen".into();
        }
        let ops: Vec<String> = Op::ALL
            .iter()
            .map(|o| format!("{}={}", o.name(), self.target(*o)))
            .collect();
        format!(
            "{} threads={} isa={} host_memory={}MiB chunks={} unsupported={}",
            ops.join(" "),
            self.threads,
            self.isa_summary(),
            self.call_memory_mib,
            match self.chunks {
                Chunks::Auto => "auto".to_string(),
                Chunks::Fixed {
                    chunks,
                    in_flight: None,
                } => chunks.to_string(),
                Chunks::Fixed {
                    chunks,
                    in_flight: Some(f),
                } => format!("{chunks}/{f}"),
            },
            match self.unsupported {
                Unsupported::Error => "error",
                Unsupported::Gpu => "gpu",
            }
        )
    }

    /// The instruction set the CPU engine runs at.
    pub fn isa(&self) -> Isa {
        self.max_isa.unwrap_or(Isa::Avx512).supported()
    }

    /// [`Config::isa`], and why when `RDNA1SHIM_MAX_ISA` is set.
    fn isa_summary(&self) -> String {
        let detected = Isa::detected();
        match self.max_isa {
            None => detected.to_string(),
            Some(cap) if cap < detected => {
                format!("{cap} (RDNA1SHIM_MAX_ISA={cap}; the CPU has {detected})")
            }
            Some(cap) if cap > detected => {
                format!("{detected} (RDNA1SHIM_MAX_ISA={cap}, but the CPU has only {detected})")
            }
            Some(cap) => format!("{cap} (RDNA1SHIM_MAX_ISA={cap})"),
        }
    }
}

/// Smallest accepted `RDNA1SHIM_HOST_MEMORY_MIB`.
pub const MIN_CALL_MIB: usize = 16;

/// Physical cores available to this process: unique (package, core) pairs of
/// /proc/cpuinfo, capped by the affinity mask; the logical count when unknown.
pub fn default_threads() -> usize {
    let logical = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let physical = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| physical_cores(&s));
    physical.map_or(logical, |p| p.min(logical)).max(1)
}

fn physical_cores(cpuinfo: &str) -> Option<usize> {
    let mut pairs = std::collections::HashSet::new();
    let (mut pkg, mut core) = (None, None);
    for line in cpuinfo.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if let (Some(p), Some(c)) = (pkg.take(), core.take()) {
                pairs.insert((p, c));
            }
            continue;
        }
        let mut kv = line.splitn(2, ':');
        let (k, v) = (
            kv.next().unwrap_or("").trim(),
            kv.next().unwrap_or("").trim(),
        );
        match k {
            "physical id" => pkg = Some(v.to_string()),
            "core id" => core = Some(v.to_string()),
            _ => {}
        }
    }
    (!pairs.is_empty()).then_some(pairs.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Config {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_run_everything_on_cpu() {
        let c = cfg(&[]);
        assert!(!c.disabled);
        for op in Op::ALL {
            assert_eq!(c.target(op), Target::Cpu);
        }
        assert_eq!(c.unsupported, Unsupported::Error);
        assert!(c.threads >= 1);
        assert_eq!(c.log_filter, "info");
        assert!(c.routes_file.is_none() && c.record_file.is_none() && c.summary_json.is_none());
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn per_op_switches_and_global_off() {
        let c = cfg(&[
            ("RDNA1SHIM_CONV_BWD_DATA", "GPU"),
            ("RDNA1SHIM_THREADS", "3"),
        ]);
        assert_eq!(c.target(Op::ConvBwdData), Target::Gpu);
        assert_eq!(c.target(Op::ConvFwd), Target::Cpu);
        assert_eq!(c.threads, 3);
        let files = cfg(&[
            ("RDNA1SHIM_ROUTES", "r.jsonl"),
            ("RDNA1SHIM_RECORD", "rec.jsonl"),
            ("RDNA1SHIM_SUMMARY_JSON", " "),
        ]);
        assert_eq!(files.routes_file.as_deref(), Some("r.jsonl"));
        assert_eq!(files.record_file.as_deref(), Some("rec.jsonl"));
        assert_eq!(files.summary_json, None, "blank means unset");
        let off = cfg(&[("RDNA1SHIM_DISABLE", "1")]);
        assert!(Op::ALL.iter().all(|o| off.target(*o) == Target::Gpu));
    }

    #[test]
    fn bad_values_warn_and_fall_back() {
        let c = cfg(&[
            ("RDNA1SHIM_CONV_FWD", "fpga"),
            ("RDNA1SHIM_THREADS", "0"),
            ("RDNA1SHIM_UNSUPPORTED", "x"),
        ]);
        assert_eq!(c.target(Op::ConvFwd), Target::Cpu);
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("RDNA1SHIM_CONV_FWD"));
    }

    #[test]
    fn host_memory_cap_and_chunks() {
        let c = cfg(&[]);
        assert_eq!(c.call_memory_mib, 256);
        assert_eq!(c.chunks, Chunks::Auto);
        let c = cfg(&[
            ("RDNA1SHIM_HOST_MEMORY_MIB", "64"),
            ("RDNA1SHIM_CHUNKS", "3"),
        ]);
        assert_eq!(
            (c.call_memory_mib, c.chunks),
            (
                64,
                Chunks::Fixed {
                    chunks: 3,
                    in_flight: None
                }
            )
        );
        assert!(c.warnings.is_empty());
        let c = cfg(&[("RDNA1SHIM_CHUNKS", "8/2")]);
        assert_eq!(
            c.chunks,
            Chunks::Fixed {
                chunks: 8,
                in_flight: Some(2)
            }
        );
        assert!(c.summary().contains("chunks=8/2"));
        for bad in ["8/", "/2", "8/0", "x/2", "8/2/1"] {
            let c = cfg(&[("RDNA1SHIM_CHUNKS", bad)]);
            assert_eq!(c.chunks, Chunks::Auto, "{bad}");
            assert_eq!(c.warnings.len(), 1, "{bad}");
        }
        let c = cfg(&[
            ("RDNA1SHIM_HOST_MEMORY_MIB", "8"),
            ("RDNA1SHIM_CHUNKS", "0"),
        ]);
        assert_eq!((c.call_memory_mib, c.chunks), (256, Chunks::Auto));
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.summary().contains("host_memory=256MiB chunks=auto"));
    }

    #[test]
    fn max_isa_caps_the_engine() {
        let best = Isa::detected();
        assert_eq!(cfg(&[]).max_isa, None);
        assert_eq!(cfg(&[]).isa(), best);
        assert!(cfg(&[]).summary().contains(&format!("isa={best} ")));
        let c = cfg(&[("RDNA1SHIM_MAX_ISA", " AVX2 ")]);
        assert_eq!(c.max_isa, Some(Isa::Avx2));
        assert_eq!(c.isa(), Isa::Avx2.min(best));
        assert!(
            c.summary().contains("RDNA1SHIM_MAX_ISA=avx2"),
            "{}",
            c.summary()
        );
        let p = cfg(&[("RDNA1SHIM_MAX_ISA", "portable")]);
        assert_eq!(p.isa(), Isa::Portable);
        assert!(p.summary().contains("isa=portable "), "{}", p.summary());
        // A cap above the CPU is what the CPU has.
        assert_eq!(cfg(&[("RDNA1SHIM_MAX_ISA", "avx512")]).isa(), best);
        let bad = cfg(&[("RDNA1SHIM_MAX_ISA", "sse9")]);
        assert_eq!(bad.max_isa, None);
        assert_eq!(bad.warnings.len(), 1);
        assert!(bad.warnings[0].contains("RDNA1SHIM_MAX_ISA"));
    }

    #[test]
    fn counts_physical_cores_not_hyperthreads() {
        let info = "processor\t: 0\nphysical id\t: 0\ncore id\t: 0\n\nprocessor\t: 1\nphysical id\t: 0\ncore id\t: 0\n\n\
                    processor\t: 2\nphysical id\t: 0\ncore id\t: 1\n\nprocessor\t: 3\nphysical id\t: 0\ncore id\t: 1\n";
        assert_eq!(physical_cores(info), Some(2));
        assert_eq!(physical_cores("processor : 0\n"), None);
    }
}
