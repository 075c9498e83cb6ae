//! The shim's process-wide state, built on the first intercepted call (never at load
//! time: LD_PRELOAD reaches every child process, most of which never call MIOpen):
//! configuration, logging, the real MIOpen and HIP tables, the CPU thread pool, and the
//! exit summary.

use std::sync::{Arc, Mutex};

use once_cell::sync::OnceCell;

use crate::config::Config;
use crate::error::{ShimError, ShimResult};
use crate::real::hip::Hip;
use crate::real::loader::Library;
use crate::real::miopen::{Forwarded, Getters};
use crate::report::RoutesStatus;
use crate::routes::Routes;

pub struct Runtime {
    pub config: Config,
    /// The routes file in use (`RDNA1SHIM_ROUTES`), if it was valid.
    pub routes: Option<Routes>,
    /// What became of the routes file, for the summary.
    pub routes_status: RoutesStatus,
    /// The process that built the runtime (a forked child inherits it).
    pub pid: u32,
    getters: Result<Getters, String>,
    pub forwarded: Forwarded,
    miopen: Library,
    hip: OnceCell<Result<Hip, String>>,
    hip_lib_override: Option<String>,
    /// The engine's pool and the process it was made in (a forked child needs its own).
    pool: Mutex<Option<(u32, Arc<rayon::ThreadPool>)>>,
}

static RUNTIME: OnceCell<Runtime> = OnceCell::new();

/// The runtime, initialised on first use.
pub fn get() -> &'static Runtime {
    RUNTIME.get_or_init(Runtime::init)
}

impl Runtime {
    fn init() -> Runtime {
        let config = Config::from_env();
        config.publish_call_memory();
        crate::cpu::set_max_isa(config.isa());
        let log_problem = crate::log::init(&config);
        for w in config.warnings.iter().chain(log_problem.iter()) {
            tracing::warn!("{w}");
        }
        let miopen = Library::locate("MIOpen", "libMIOpen.so", config.miopen_lib.as_deref());
        let getters = Getters::resolve(&miopen);
        let forwarded = Forwarded::resolve(&miopen)
            .unwrap_or_else(|_| unreachable!("optional fields never fail"));
        tracing::info!(
            "rdna1shim {} active (pid {}): {}; MIOpen from {}",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            config.summary(),
            miopen.describe("miopenGetTensorDescriptor"),
        );
        if let Err(e) = &getters {
            tracing::error!("cannot read MIOpen descriptors: {e}; intercepted calls will fail");
        }
        let (routes, routes_status) = load_routes(&config);
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(print_summary) };
        crate::crash::install(config.log_file.as_deref());
        Runtime {
            routes,
            routes_status,
            pid: std::process::id(),
            hip_lib_override: config.hip_lib.clone(),
            config,
            getters,
            forwarded,
            miopen,
            hip: OnceCell::new(),
            pool: Mutex::new(None),
        }
    }

    /// Address of a real MIOpen function, for the forwarding wrappers.
    pub fn miopen_symbol(&self, name: &str) -> Result<*mut std::ffi::c_void, String> {
        self.miopen.symbol(name)
    }

    /// The real MIOpen's descriptor getters.
    pub fn getters(&self) -> ShimResult<&Getters> {
        self.getters
            .as_ref()
            .map_err(|e| ShimError::not_initialized(format!("real MIOpen unavailable: {e}")))
    }

    /// The HIP runtime loaded in the process (resolved on first need).
    pub fn hip(&'static self) -> ShimResult<&'static Hip> {
        let r = self.hip.get_or_init(|| {
            let lib = Library::locate(
                "HIP runtime",
                "libamdhip64.so",
                self.hip_lib_override.as_deref(),
            );
            let hip = Hip::resolve(&lib);
            match &hip {
                Ok(_) => tracing::info!("HIP runtime from {}", lib.describe("hipMemcpyAsync")),
                Err(e) => tracing::error!("HIP runtime unavailable: {e}"),
            }
            hip
        });
        r.as_ref()
            .map_err(|e| ShimError::not_initialized(format!("HIP runtime unavailable: {e}")))
    }

    /// The CPU engine's thread pool for this process.
    pub fn pool(&self) -> ShimResult<Arc<rayon::ThreadPool>> {
        let pid = std::process::id();
        let mut slot = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((owner, pool)) = slot.as_ref() {
            if *owner == pid {
                return Ok(pool.clone());
            }
            // Forked child: the parent's workers do not exist here. The old pool is
            // leaked on purpose; dropping it would wait for threads that are gone.
            std::mem::forget(slot.take());
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.config.threads)
            .thread_name(|i| format!("rdna1shim-{i}"))
            .build()
            .map_err(|e| {
                ShimError::internal(format!(
                    "cannot start {} CPU threads: {e}",
                    self.config.threads
                ))
            })?;
        let pool = Arc::new(pool);
        *slot = Some((pid, pool.clone()));
        Ok(pool)
    }
}

/// Reads `RDNA1SHIM_ROUTES`; a file that cannot be used is one error line, and every
/// call then follows the per-operation switches.
fn load_routes(config: &Config) -> (Option<Routes>, RoutesStatus) {
    let Some(path) = config.routes_file.as_deref() else {
        return (None, RoutesStatus::default());
    };
    let mut status = RoutesStatus {
        file: Some(path.to_string()),
        ..Default::default()
    };
    match Routes::load(path) {
        Ok(r) => {
            let (cpu, gpu) = r.counts();
            tracing::info!(
                "routes: {} convolution configurations from {path} ({gpu} to the GPU, {cpu} to the CPU); \
                 configurations not in the file follow the per-operation switches",
                r.len()
            );
            status.counts = Some((cpu, gpu));
            (Some(r), status)
        }
        Err(e) => {
            tracing::error!(
                "RDNA1SHIM_ROUTES={path:?} is not used: {e}. Every convolution follows the \
                 per-operation switches ({}); fix the file or make a new one with `rdna1shim probe`",
                config.summary()
            );
            status.error = Some(e);
            (None, status)
        }
    }
}

/// Writes the record and the JSON summary if asked for; returns the summary's lines on
/// configurations and a line per file written (or not).
fn exit_reports(rt: &Runtime) -> (Vec<String>, Vec<String>) {
    use crate::report;
    let Some((entries, dropped)) = crate::config_stats::CONFIGS.snapshot() else {
        return (
            Vec::new(),
            vec!["per-configuration statistics are busy at exit; no record or JSON summary".into()],
        );
    };
    let mut files = Vec::new();
    let mut write = |what: &str, template: &Option<String>, contents: &dyn Fn() -> String| {
        if let Some(t) = template.as_deref().filter(|t| report::owns(t, rt.pid)) {
            files.push(match report::write_file(t, &contents()) {
                Ok(path) => format!("{what} written to {path}"),
                Err(e) => format!("{what} not written: {e}"),
            });
        }
    };
    write(
        &format!("record of {} convolution configurations", entries.len()),
        &rt.config.record_file,
        &|| report::record_text(&entries),
    );
    write("JSON summary", &rt.config.summary_json, &|| {
        report::summary_json(&entries, dropped, &rt.routes_status)
    });
    let lines = report::config_lines(&entries, dropped, rt.routes.is_some());
    (lines, files)
}

extern "C" fn print_summary() {
    let _ = std::panic::catch_unwind(|| {
        let (config_lines, files) = RUNTIME.get().map(exit_reports).unwrap_or_default();
        let lines = crate::stats::STATS.summary_lines();
        if lines.is_empty() {
            crate::log::write_at_exit(&files);
            return;
        }
        let mut out = vec![format!("summary at exit (pid {}):", std::process::id())];
        out.extend(lines.into_iter().map(|l| format!("  {l}")));
        out.extend(config_lines);
        let configs = crate::stats::STATS.config_lines();
        if !configs.is_empty() {
            out.push(format!(
                "{} distinct convolution configurations (MIOpenDriver reproductions):",
                configs.len()
            ));
            out.extend(configs.into_iter().map(|l| format!("  {l}")));
        }
        out.extend(files);
        crate::log::write_at_exit(&out);
    });
}
