//! Logging: a `tracing` subscriber filtered by `RDNA1SHIM_LOG` (EnvFilter syntax),
//! writing to stderr or, with `RDNA1SHIM_LOG_FILE`, appending to a file. Each event is
//! written with one `write` call, so the last line survives a crash that follows it.

use std::fs::OpenOptions;
use std::sync::Mutex;

use once_cell::sync::OnceCell;

use tracing_subscriber::EnvFilter;

use crate::config::Config;

/// Installs the global subscriber (once; later calls and a subscriber set by someone
/// else are left alone). Returns a message when the configuration could not be used.
pub fn init(cfg: &Config) -> Option<String> {
    let mut problem = None;
    let directives = if cfg.trace_all {
        // Trace lines are wanted whatever the filter says of other events.
        format!("{},rdna1shim_trace=info", cfg.log_filter)
    } else {
        cfg.log_filter.clone()
    };
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|e| {
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
    let _ = EXIT_SINK.set(ExitSink {
        enabled: tracing::enabled!(tracing::Level::INFO),
        file: cfg.log_file.clone().filter(|_| {
            problem
                .as_ref()
                .map_or(true, |p| !p.contains("RDNA1SHIM_LOG_FILE"))
        }),
    });
    problem
}

/// Where the exit summary goes. At exit, thread-local storage is already torn down, so
/// `tracing` cannot be used; the summary is written with plain `write` calls instead.
struct ExitSink {
    enabled: bool,
    file: Option<String>,
}

static EXIT_SINK: OnceCell<ExitSink> = OnceCell::new();

/// Writes `lines` to the log destination if the filter admits `info` (exit-safe).
pub fn write_at_exit(lines: &[String]) {
    let Some(sink) = EXIT_SINK.get() else { return };
    if !sink.enabled || lines.is_empty() {
        return;
    }
    let mut text = String::new();
    for l in lines {
        text.push_str("rdna1shim: ");
        text.push_str(l);
        text.push('\n');
    }
    let file = sink
        .file
        .as_ref()
        .and_then(|p| OpenOptions::new().append(true).open(p).ok());
    let fd = match &file {
        Some(f) => std::os::unix::io::AsRawFd::as_raw_fd(f),
        None => 2,
    };
    let mut bytes = text.as_bytes();
    while !bytes.is_empty() {
        // SAFETY: writing a live buffer to an open descriptor.
        let n = unsafe { libc::write(fd, bytes.as_ptr() as *const libc::c_void, bytes.len()) };
        if n <= 0 {
            break;
        }
        bytes = &bytes[n as usize..];
    }
}
