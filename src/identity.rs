//! Exports that let a process (and `rdna1shim doctor`) ask whether the shim is loaded and
//! how it is configured, without initialising it.

use std::ffi::{c_char, CString};

use once_cell::sync::OnceCell;

/// The shim's version, e.g. `"rdna1shim 0.1.0"` (a static C string).
#[no_mangle]
pub extern "C" fn rdna1shim_version() -> *const c_char {
    static V: OnceCell<CString> = OnceCell::new();
    V.get_or_init(|| CString::new(format!("rdna1shim {}", env!("CARGO_PKG_VERSION"))).unwrap())
        .as_ptr()
}

/// The configuration the shim would use in this process, as one line (a static C string;
/// read from the environment at the first call of this function).
#[no_mangle]
pub extern "C" fn rdna1shim_config_summary() -> *const c_char {
    static S: OnceCell<CString> = OnceCell::new();
    S.get_or_init(|| {
        let text = std::panic::catch_unwind(|| {
            let c = crate::config::Config::from_env();
            let mut s = c.summary();
            for w in &c.warnings {
                s.push_str("; warning: ");
                s.push_str(w);
            }
            s
        })
        .unwrap_or_else(|_| "configuration could not be read".into());
        CString::new(text.replace('\0', " ")).unwrap()
    })
    .as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn version_and_summary_are_c_strings() {
        let v = unsafe { CStr::from_ptr(rdna1shim_version()) }
            .to_str()
            .unwrap();
        assert!(v.starts_with("rdna1shim "), "{v}");
        let s = unsafe { CStr::from_ptr(rdna1shim_config_summary()) }
            .to_str()
            .unwrap();
        assert!(s.contains("conv_fwd=") || s.contains("disabled"), "{s}");
    }
}
