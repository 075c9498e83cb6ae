//! Finding a library that is already loaded in the process, and its symbols.
//!
//! Order of lookup for a symbol:
//! 1. an explicit path from the environment (`RDNA1SHIM_MIOPEN_LIB` / `RDNA1SHIM_HIP_LIB`),
//!    opened with `RTLD_NOLOAD` first so the process's own copy is used;
//! 2. `dlsym(RTLD_NEXT)`: the next definition after the shim in the global scope;
//! 3. the loaded object whose file name starts with the library's name, found with
//!    `dl_iterate_phdr` and reopened with `RTLD_NOLOAD`. This is the case for PyTorch,
//!    whose extension modules load libMIOpen with `RTLD_LOCAL`, out of `RTLD_NEXT`'s reach.
//!
//! A second copy of a library is never loaded implicitly: a second HIP runtime would
//! know nothing of PyTorch's allocations and streams.

use std::ffi::{c_void, CStr, CString};
use std::os::raw::c_int;

/// A library to resolve symbols from.
pub struct Library {
    /// Name used in messages, e.g. "MIOpen".
    pub name: &'static str,
    /// Handle of the already-loaded object, when one was found or given.
    handle: Option<*mut c_void>,
    /// Path of that object, for diagnostics.
    pub path: Option<String>,
    /// Whether `RTLD_NEXT` may be tried (not when an explicit path was given).
    use_next: bool,
}

// SAFETY: a dlopen handle is a process-global token; dlsym on it is thread-safe.
unsafe impl Send for Library {}
unsafe impl Sync for Library {}

impl Library {
    /// Locates `file_prefix` (e.g. `"libMIOpen.so"`), honouring `override_path`.
    pub fn locate(name: &'static str, file_prefix: &str, override_path: Option<&str>) -> Self {
        if let Some(path) = override_path {
            let handle = dlopen(path, libc::RTLD_LAZY | libc::RTLD_NOLOAD).or_else(|| {
                tracing::warn!(
                    "{name}: {path} is not loaded in this process yet; loading it now \
                     (if the application loads another copy, the two will not share state)"
                );
                dlopen(path, libc::RTLD_LAZY | libc::RTLD_GLOBAL)
            });
            if handle.is_none() {
                tracing::error!("{name}: cannot open {path}: {}", dlerror_string());
            }
            return Library {
                name,
                handle,
                path: Some(path.to_string()),
                use_next: false,
            };
        }
        let path = loaded_objects()
            .into_iter()
            .find(|p| file_name_starts_with(p, file_prefix));
        let handle = path
            .as_deref()
            .and_then(|p| dlopen(p, libc::RTLD_LAZY | libc::RTLD_NOLOAD));
        Library {
            name,
            handle,
            path,
            use_next: true,
        }
    }

    /// Address of `symbol`, or an error naming what was tried.
    pub fn symbol(&self, symbol: &str) -> Result<*mut c_void, String> {
        let c = CString::new(symbol).map_err(|_| format!("bad symbol name {symbol:?}"))?;
        if self.use_next {
            // SAFETY: dlsym with RTLD_NEXT and a valid C string.
            let p = unsafe { libc::dlsym(libc::RTLD_NEXT, c.as_ptr()) };
            if !p.is_null() {
                return Ok(p);
            }
        }
        if let Some(h) = self.handle {
            // SAFETY: h is a live dlopen handle.
            let p = unsafe { libc::dlsym(h, c.as_ptr()) };
            if !p.is_null() {
                return Ok(p);
            }
        }
        Err(match &self.path {
            Some(path) => format!("{symbol} not found in {} ({path})", self.name),
            None => format!(
                "{symbol} not found: no {} library is loaded in this process \
                 (searched RTLD_NEXT and the loaded objects)",
                self.name
            ),
        })
    }

    /// Where symbols come from, for the start-up log line.
    pub fn describe(&self, probe: &str) -> String {
        match self.symbol(probe).ok().and_then(object_of) {
            Some(obj) => obj,
            None => "not found".to_string(),
        }
    }
}

fn dlopen(path: &str, flags: c_int) -> Option<*mut c_void> {
    let c = CString::new(path).ok()?;
    // SAFETY: valid C string; flags are dlopen flags.
    let h = unsafe { libc::dlopen(c.as_ptr(), flags) };
    (!h.is_null()).then_some(h)
}

fn dlerror_string() -> String {
    // SAFETY: dlerror returns a thread-local C string or null.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-null C string from dlerror.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

/// Path of the object that defines address `p`.
fn object_of(p: *mut c_void) -> Option<String> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr fills info for any address.
    if unsafe { libc::dladdr(p, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a C string owned by the loader.
    Some(
        unsafe { CStr::from_ptr(info.dli_fname) }
            .to_string_lossy()
            .into_owned(),
    )
}

fn file_name_starts_with(path: &str, prefix: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|f| f.starts_with(prefix))
}

/// Paths of every object loaded in the process.
pub fn loaded_objects() -> Vec<String> {
    unsafe extern "C" fn collect(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: data is the &mut Vec passed below; info is valid during the callback.
        let out = &mut *(data as *mut Vec<String>);
        let name = (*info).dlpi_name;
        if !name.is_null() {
            let s = CStr::from_ptr(name).to_string_lossy().into_owned();
            if !s.is_empty() {
                out.push(s);
            }
        }
        0
    }
    let mut out: Vec<String> = Vec::new();
    // SAFETY: the callback only touches `out` for the duration of the call.
    unsafe { libc::dl_iterate_phdr(Some(collect), &mut out as *mut Vec<String> as *mut c_void) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_libc_among_loaded_objects() {
        let objs = loaded_objects();
        assert!(
            objs.iter().any(|p| file_name_starts_with(p, "libc.so")),
            "{objs:?}"
        );
    }

    #[test]
    fn resolves_through_loaded_object_and_reports_missing() {
        let lib = Library::locate("libc", "libc.so", None);
        assert!(lib.symbol("malloc").is_ok());
        let err = lib.symbol("no_such_function_xyz").unwrap_err();
        assert!(err.contains("no_such_function_xyz"), "{err}");
        let none = Library::locate("MIOpen", "libMIOpen.so", None);
        assert!(none.path.is_none());
        let err = none.symbol("miopenGetStream").unwrap_err();
        assert!(err.contains("no MIOpen library is loaded"), "{err}");
    }
}
