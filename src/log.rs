//! Logging: a `tracing` subscriber filtered by `RDNA1SHIM_LOG` (EnvFilter syntax),
//! writing to stderr or, with `RDNA1SHIM_LOG_FILE`, appending to a file. Each event is
//! written with one `write` call, so the last line survives a crash that follows it.

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::config::Config;

/// Installs the global subscriber (once; later calls and a subscriber set by someone
/// else are left alone). Returns a message when the configuration could not be used.
pub fn init(cfg: &Config) -> Option<String> {
    let mut problem = None;
    let filter = EnvFilter::try_new(&cfg.log_filter).unwrap_or_else(|e| {
        problem = Some(format!(
            "RDNA1SHIM_LOG={:?} is not a valid filter ({e}); using \"info\"",
            cfg.log_filter
        ));
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_thread_ids(true)
        .with_ansi(false);
    let file = cfg.log_file.as_ref().and_then(|path| {
        match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Some(f),
            Err(e) => {
                problem = Some(format!(
                    "RDNA1SHIM_LOG_FILE={path:?} cannot be opened ({e}); logging to stderr"
                ));
                None
            }
        }
    });
    let result = match file {
        Some(f) => builder.with_writer(Mutex::new(f)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    drop(result); // an application's own subscriber wins; that is not an error
    problem
}
