//! A last summary when the process dies of SIGSEGV, SIGBUS or SIGABRT (a GPU memory
//! fault aborts the process): per-op call counts, written with async-signal-safe calls
//! only — fixed buffers, `open`/`write` — then the previous handler (Python's
//! faulthandler, say) or the default action runs as if the shim were not there.
//! Installed on the first intercepted call, never at load time.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::config::Op;
use crate::stats::STATS;

const SIGNALS: [libc::c_int; 3] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGABRT];
const NO_ACTION: libc::sigaction = unsafe { std::mem::zeroed() };
static mut PREVIOUS: [libc::sigaction; 3] = [NO_ACTION; 3];
static INSTALLED: AtomicBool = AtomicBool::new(false);
static IN_HANDLER: AtomicBool = AtomicBool::new(false);
/// NUL-terminated path of the log file, when logging goes to one.
static mut LOG_PATH: [u8; 512] = [0; 512];

/// A fixed-size text buffer that never allocates.
struct Buf {
    bytes: [u8; 1024],
    len: usize,
}

impl Buf {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }
    fn number(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The crash summary for `sig`, formatted without allocating.
fn summary(sig: libc::c_int) -> Buf {
    let mut b = Buf {
        bytes: [0; 1024],
        len: 0,
    };
    b.push(b"rdna1shim: summary at crash (signal ");
    b.number(sig as u64);
    b.push(b"): ");
    let mut any = false;
    for op in Op::ALL {
        let s = STATS.op(op);
        let (cpu, gpu, failed) = (
            s.cpu_calls.load(Relaxed),
            s.gpu_calls.load(Relaxed),
            s.failed_calls.load(Relaxed),
        );
        if cpu + gpu + failed == 0 {
            continue;
        }
        if any {
            b.push(b"; ");
        }
        any = true;
        b.push(op.name().as_bytes());
        b.push(b" cpu=");
        b.number(cpu);
        b.push(b" gpu=");
        b.number(gpu);
        b.push(b" failed=");
        b.number(failed);
    }
    if !any {
        b.push(b"no convolution or batch-norm call had completed");
    }
    b.push(b". Rerun with RDNA1SHIM_TRACE_ALL=1 for the call that crashed.\n");
    b
}

extern "C" fn on_fatal_signal(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    if !IN_HANDLER.swap(true, Relaxed) {
        let b = summary(sig);
        // SAFETY: write/open/close are async-signal-safe; LOG_PATH is written once before
        // the handlers are installed.
        unsafe {
            libc::write(2, b.bytes.as_ptr() as *const libc::c_void, b.len);
            let path = std::ptr::addr_of!(LOG_PATH) as *const libc::c_char;
            if *path != 0 {
                let fd = libc::open(path, libc::O_WRONLY | libc::O_APPEND);
                if fd >= 0 {
                    libc::write(fd, b.bytes.as_ptr() as *const libc::c_void, b.len);
                    libc::close(fd);
                }
            }
        }
    }
    // Hand the signal to whoever had it before, as if the shim were not there.
    let i = SIGNALS.iter().position(|s| *s == sig).unwrap_or(0);
    // SAFETY: PREVIOUS was filled by sigaction before this handler was installed.
    unsafe {
        let prev = &*std::ptr::addr_of!(PREVIOUS[i]);
        if prev.sa_sigaction == libc::SIG_IGN {
            return;
        }
        if prev.sa_sigaction != libc::SIG_DFL && prev.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(prev.sa_sigaction);
            f(sig, info, ctx);
            return;
        }
        if prev.sa_sigaction != libc::SIG_DFL {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(prev.sa_sigaction);
            f(sig);
            return;
        }
        // Default action: restore it and re-raise (the fault repeats for SIGSEGV on return).
        libc::sigaction(sig, prev, std::ptr::null_mut());
        libc::raise(sig);
    }
}

/// Installs the handlers (once). `log_file` also receives the summary.
pub fn install(log_file: Option<&str>) {
    if INSTALLED.swap(true, Relaxed) {
        return;
    }
    if let Some(p) = log_file {
        let bytes = p.as_bytes();
        if bytes.len() < 511 && !bytes.contains(&0) {
            // SAFETY: written once, before any handler that reads it is installed.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    std::ptr::addr_of_mut!(LOG_PATH) as *mut u8,
                    bytes.len(),
                )
            };
        }
    }
    for (i, sig) in SIGNALS.iter().enumerate() {
        // SAFETY: plain sigaction calls; the handler only uses async-signal-safe functions.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_fatal_signal as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(*sig, &act, std::ptr::addr_of_mut!(PREVIOUS[i]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_formatted_without_allocation() {
        let b = summary(6);
        let text = std::str::from_utf8(&b.bytes[..b.len]).unwrap();
        assert!(
            text.starts_with("rdna1shim: summary at crash (signal 6): "),
            "{text}"
        );
        assert!(text.ends_with("for the call that crashed.\n"), "{text}");
        let mut n = Buf {
            bytes: [0; 1024],
            len: 0,
        };
        n.number(0);
        n.number(18446744073709551615);
        assert_eq!(&n.bytes[..n.len], b"018446744073709551615");
    }
}
