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

pub struct Runtime {
    pub config: Config,
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
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(print_summary) };
        crate::crash::install(config.log_file.as_deref());
        Runtime {
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

extern "C" fn print_summary() {
    let _ = std::panic::catch_unwind(|| {
        let lines = crate::stats::STATS.summary_lines();
        if lines.is_empty() {
            return;
        }
        let mut out = vec![format!("summary at exit (pid {}):", std::process::id())];
        out.extend(lines.into_iter().map(|l| format!("  {l}")));
        let configs = crate::stats::STATS.config_lines();
        if !configs.is_empty() {
            out.push(format!(
                "{} distinct convolution configurations (MIOpenDriver reproductions):",
                configs.len()
            ));
            out.extend(configs.into_iter().map(|l| format!("  {l}")));
        }
        crate::log::write_at_exit(&out);
    });
}
