//! Configuration from `RDNA1SHIM_*` environment variables, read once on first use.
//! The table of variables is in docs/configuration.md; keep the two in step.

use std::fmt;

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

#[derive(Clone, Debug)]
pub struct Config {
    /// `RDNA1SHIM_DISABLE=1`: every call goes to the real MIOpen.
    pub disabled: bool,
    targets: [Target; Op::ALL.len()],
    pub unsupported: Unsupported,
    /// Worker threads of the CPU engine.
    pub threads: usize,
    /// `RDNA1SHIM_MAX_ISA`: the widest instruction set the CPU engine may
    /// use (`None`: the best the CPU has).
    pub max_isa: Option<Isa>,
    pub log_filter: String,
    /// `RDNA1SHIM_TRACE_ALL=1`: log every MIOpen call before it is made.
    pub trace_all: bool,
    pub log_file: Option<String>,
    pub miopen_lib: Option<String>,
    pub hip_lib: Option<String>,
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
            max_isa,
            log_filter: nonempty("RDNA1SHIM_LOG").unwrap_or_else(|| "info".to_string()),
            trace_all: matches!(
                get("RDNA1SHIM_TRACE_ALL").as_deref().map(str::trim),
                Some("1") | Some("true") | Some("yes")
            ),
            log_file: nonempty("RDNA1SHIM_LOG_FILE"),
            miopen_lib: nonempty("RDNA1SHIM_MIOPEN_LIB"),
            hip_lib: nonempty("RDNA1SHIM_HIP_LIB"),
            warnings,
        }
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
            "{} threads={} isa={} unsupported={}",
            ops.join(" "),
            self.threads,
            self.isa_summary(),
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
