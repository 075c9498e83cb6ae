//! The routes file (`RDNA1SHIM_ROUTES`): which convolution configurations run on the
//! GPU and which on the CPU, one JSON object a line — a record line (see `conv_config`)
//! plus `"route": "cpu" | "gpu"`, as `rdna1shim probe` writes it.
//!
//! The file is read once, strictly: any line that is not a valid configuration with a
//! route, a configuration listed twice with different routes, a file that cannot be
//! read or is too large rejects the whole file, with one log line naming the line and
//! the problem; every call then follows the per-operation switches, as without a file.
//! Reading never panics and never aborts the process.

use std::collections::HashMap;
use std::fmt;

use crate::config::{Op, Target};
use crate::conv_config::ConvConfig;
use crate::json;

/// Largest routes file read (bytes).
pub const MAX_FILE: u64 = 64 << 20;
/// Most configurations a routes file may list.
pub const MAX_ROUTES: usize = 100_000;

/// The routes of a valid file: configuration -> (target, 1-based line).
#[derive(Debug, Default)]
pub struct Routes {
    pub path: String,
    table: HashMap<ConvConfig, (Target, usize)>,
}

/// Why a call went where it did, for its log line and the summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// A line of the routes file.
    RoutesFile { line: usize },
    /// The operation's switch (`RDNA1SHIM_CONV_*`); `unlisted` when a routes file is in
    /// use and does not list the configuration.
    Switch {
        op: Op,
        target: Target,
        unlisted: bool,
    },
    /// `RDNA1SHIM_DISABLE=1`.
    Disabled,
    /// The CPU engine cannot compute it and `RDNA1SHIM_UNSUPPORTED=gpu`.
    Unsupported,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::RoutesFile { line } => write!(f, "routes file line {line}"),
            Rule::Switch {
                op,
                target,
                unlisted,
            } => {
                write!(f, "{}={target}", op.env_var())?;
                if *unlisted {
                    f.write_str(", not in the routes file")?;
                }
                Ok(())
            }
            Rule::Disabled => f.write_str("RDNA1SHIM_DISABLE=1"),
            Rule::Unsupported => f.write_str("RDNA1SHIM_UNSUPPORTED=gpu"),
        }
    }
}

impl Routes {
    /// The route of `c`, with the line that gave it.
    pub fn get(&self, c: &ConvConfig) -> Option<(Target, usize)> {
        self.table.get(c).copied()
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// How many configurations go to (cpu, gpu).
    pub fn counts(&self) -> (usize, usize) {
        let gpu = self
            .table
            .values()
            .filter(|(t, _)| *t == Target::Gpu)
            .count();
        (self.table.len() - gpu, gpu)
    }

    /// Reads a routes file.
    pub fn load(path: &str) -> Result<Routes, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
        if meta.len() > MAX_FILE {
            return Err(format!(
                "it is {} bytes; a routes file may have at most {MAX_FILE}",
                meta.len()
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
        let mut routes = Routes::parse(&bytes)?;
        routes.path = path.to_string();
        Ok(routes)
    }

    /// Parses the contents of a routes file.
    pub fn parse(bytes: &[u8]) -> Result<Routes, String> {
        let mut table: HashMap<ConvConfig, (Target, usize)> = HashMap::new();
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = i + 1;
            let at = |e: String| format!("line {line}: {e}");
            let text = std::str::from_utf8(raw)
                .map_err(|e| at(format!("not UTF-8 text ({e})")))?
                .trim_end_matches('\r');
            if text.trim().is_empty() {
                continue;
            }
            let v = json::parse(text).map_err(|e| at(format!("not a JSON object: {e}")))?;
            let config = ConvConfig::from_json(&v).map_err(at)?;
            let target =
                match v.get("route").map(|r| r.as_str()) {
                    Some(Some("cpu")) => Target::Cpu,
                    Some(Some("gpu")) => Target::Gpu,
                    Some(other) => {
                        return Err(at(format!(
                            "\"route\" is {}; expected \"cpu\" or \"gpu\"",
                            other.map_or("not a string".to_string(), |s| format!("{s:?}"))
                        )))
                    }
                    None => return Err(at(
                        "no \"route\" member (a record file lists configurations without routes: \
                         run `rdna1shim probe` on it to make a routes file)"
                            .into(),
                    )),
                };
            match table.get(&config) {
                Some((t, first)) if *t != target => {
                    return Err(at(format!(
                        "configuration {} is routed to {target} here and to {t} on line {first}",
                        config.id()
                    )))
                }
                Some(_) => {}
                None => {
                    if table.len() >= MAX_ROUTES {
                        return Err(at(format!("more than {MAX_ROUTES} configurations")));
                    }
                    table.insert(config, (target, line));
                }
            }
        }
        Ok(Routes {
            path: String::new(),
            table,
        })
    }
}

#[cfg(test)]
mod tests;
