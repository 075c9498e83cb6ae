//! The phases of the last convolution call each thread made, exported as
//! `rdna1shim_last_call_profile` so that a benchmark driving the shim through MIOpen's
//! API can say where a call's time went.

use std::cell::Cell;
use std::os::raw::c_int;

use crate::stats::CallRecord;

/// Entries of the profile, in this order: total, waiting for inputs, converting, the
/// engine, storing, waiting for the last results, chunks, queueing copies (all times in
/// milliseconds).
pub const FIELDS: [&str; 8] = [
    "total_ms",
    "wait_in_ms",
    "convert_ms",
    "engine_ms",
    "store_ms",
    "wait_out_ms",
    "chunks",
    "enqueue_ms",
];

thread_local! {
    static LAST: Cell<[f64; FIELDS.len()]> = const { Cell::new([0.0; FIELDS.len()]) };
}

/// The profile of one call.
pub fn of(r: &CallRecord) -> [f64; FIELDS.len()] {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    [
        ms(r.total),
        ms(r.wait_in),
        ms(r.convert),
        ms(r.engine),
        ms(r.store),
        ms(r.wait_out),
        r.chunks as f64,
        ms(r.enqueue),
    ]
}

/// Remembers `r` as this thread's last call.
pub fn set_last(r: &CallRecord) {
    LAST.with(|l| l.set(of(r)));
}

/// Writes up to `n` entries of the calling thread's last convolution call (see
/// [`FIELDS`]) to `out`; returns how many were written (0 for a null `out`).
///
/// # Safety
/// `out` is null or points to `n` writable doubles.
#[no_mangle]
pub unsafe extern "C" fn rdna1shim_last_call_profile(out: *mut f64, n: c_int) -> c_int {
    if out.is_null() || n <= 0 {
        return 0;
    }
    let vals = LAST.with(|l| l.get());
    let k = (n as usize).min(vals.len());
    for (i, v) in vals.iter().take(k).enumerate() {
        // SAFETY: the caller provides n >= k slots.
        unsafe { *out.add(i) = *v };
    }
    k as c_int
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_last_call_of_this_thread_is_exported_in_order() {
        let r = CallRecord {
            total: Duration::from_millis(10),
            engine: Duration::from_millis(7),
            chunks: 4,
            ..Default::default()
        };
        set_last(&r);
        let mut out = [f64::NAN; 9];
        let k = unsafe { rdna1shim_last_call_profile(out.as_mut_ptr(), 9) };
        assert_eq!(k, 8);
        assert_eq!(out[0], 10.0);
        assert_eq!(out[3], 7.0);
        assert_eq!(out[6], 4.0);
        assert!(out[8].is_nan(), "nothing past the fields");
        assert_eq!(
            unsafe { rdna1shim_last_call_profile(std::ptr::null_mut(), 3) },
            0
        );
        // Another thread has its own (empty) profile.
        std::thread::spawn(|| {
            let mut o = [1.0; 8];
            unsafe { rdna1shim_last_call_profile(o.as_mut_ptr(), 8) };
            assert_eq!(o, [0.0; 8]);
        })
        .join()
        .unwrap();
    }
}
