//! Forwarding wrappers for the MIOpen functions the shim does not compute (their list is
//! generated: passthrough_list.rs). Each resolves the real function once and calls it;
//! with `RDNA1SHIM_TRACE_ALL=1` it first logs the call with its arguments, written before
//! the real function is entered, so the last log line of a crashing process names the
//! call that crashed. Without it, a wrapper costs one atomic load and an indirect call.

use std::ffi::{c_char, c_void};
use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::ffi::miopen::miopenStatusNotInitialized;
use crate::runtime;

/// Value a wrapper returns when the real MIOpen lacks the function.
pub trait Missing {
    fn missing() -> Self;
}
impl Missing for i32 {
    fn missing() -> Self {
        miopenStatusNotInitialized
    }
}
impl Missing for *mut c_void {
    fn missing() -> Self {
        std::ptr::null_mut()
    }
}
impl Missing for *const c_char {
    fn missing() -> Self {
        c"rdna1shim: the real MIOpen has no such function".as_ptr()
    }
}

/// Address of the real `name` (NUL-terminated), cached in `slot`; 0 when not found.
pub fn resolve(slot: &AtomicUsize, name: &str) -> usize {
    let cached = slot.load(Ordering::Acquire);
    if cached > 1 {
        return cached;
    }
    if cached == 1 {
        return 0; // looked up before and missing
    }
    let rt = runtime::get();
    let found = match rt.miopen_symbol(name) {
        Ok(p) => p as usize,
        Err(e) => {
            tracing::error!("{e}");
            1
        }
    };
    slot.store(found, Ordering::Release);
    if found == 1 {
        0
    } else {
        found
    }
}

/// Logs `name(arg=value, ...)` when tracing every call.
pub fn trace(name: &str, args: &[(&str, &dyn Debug)]) {
    let rt = runtime::get();
    if !rt.config.trace_all {
        return;
    }
    let mut text = String::with_capacity(64 + 24 * args.len());
    for (i, (n, v)) in args.iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        text.push_str(n);
        text.push('=');
        text.push_str(&format!("{v:?}"));
    }
    tracing::info!(target: "rdna1shim_trace", "call {name}({text})");
}

/// One exported forwarding wrapper per declared function.
macro_rules! passthrough {
    ($( fn $name:ident ( $($arg:ident : $ty:ty),* $(,)? ) -> $ret:ty ; )*) => { $(
        /// Forwards to the real MIOpen function of the same name.
        ///
        /// # Safety
        /// MIOpen's contract for this function.
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            static REAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            const NAME: &str = stringify!($name);
            let real = std::panic::catch_unwind(|| {
                let real = $crate::intercept::passthrough::resolve(&REAL, NAME);
                $crate::intercept::passthrough::trace(NAME, &[$((stringify!($arg), &$arg as &dyn std::fmt::Debug)),*]);
                real
            })
            .unwrap_or(0);
            if real == 0 {
                return <$ret as $crate::intercept::passthrough::Missing>::missing();
            }
            // SAFETY: `real` is the address of the C function `NAME`, whose signature is
            // the one declared in the list.
            let f: unsafe extern "C" fn($($ty),*) -> $ret = unsafe { std::mem::transmute(real) };
            unsafe { f($($arg),*) }
        }
    )* };
}
pub(crate) use passthrough;
