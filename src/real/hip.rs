//! Function table of the HIP runtime already loaded in the process.

use std::ffi::c_void;
use std::os::raw::c_char;

use super::fn_table;
use crate::ffi::hip::*;

fn_table! {
    /// HIP functions the transfers use.
    pub struct Hip {
        required hipMemcpyAsync: fn(*mut c_void, *const c_void, usize, hipMemcpyKind, hipStream_t) -> hipError_t;
        required hipStreamSynchronize: fn(hipStream_t) -> hipError_t;
        optional hipHostMalloc: fn(*mut *mut c_void, usize, u32) -> hipError_t;
        optional hipHostFree: fn(*mut c_void) -> hipError_t;
        optional hipGetErrorString: fn(hipError_t) -> *const c_char;
        optional hipEventCreateWithFlags: fn(*mut hipEvent_t, u32) -> hipError_t;
        optional hipEventRecord: fn(hipEvent_t, hipStream_t) -> hipError_t;
        optional hipEventSynchronize: fn(hipEvent_t) -> hipError_t;
        optional hipEventDestroy: fn(hipEvent_t) -> hipError_t;
        optional hipStreamCreateWithFlags: fn(*mut hipStream_t, u32) -> hipError_t;
        optional hipStreamWaitEvent: fn(hipStream_t, hipEvent_t, u32) -> hipError_t;
        optional hipMemcpy2DAsync: fn(*mut c_void, usize, *const c_void, usize, usize, usize, hipMemcpyKind, hipStream_t) -> hipError_t;
        optional hipMemset2DAsync: fn(*mut c_void, usize, i32, usize, usize, hipStream_t) -> hipError_t;
    }
}

impl Hip {
    /// Whether the runtime can give uploads a stream of their own, ordered against the
    /// handle's stream by events.
    pub fn has_side_streams(&self) -> bool {
        self.has_events()
            && self.hipStreamCreateWithFlags.is_some()
            && self.hipStreamWaitEvent.is_some()
    }

    /// Whether the runtime has the events that pipelined calls order their chunks by.
    pub fn has_events(&self) -> bool {
        self.hipEventCreateWithFlags.is_some()
            && self.hipEventRecord.is_some()
            && self.hipEventSynchronize.is_some()
            && self.hipEventDestroy.is_some()
    }

    /// Text of a HIP error code, from the runtime when it can say.
    pub fn error_text(&self, e: hipError_t) -> String {
        let s = self.hipGetErrorString.map(|f| unsafe { f(e) });
        match s {
            Some(p) if !p.is_null() => {
                // SAFETY: hipGetErrorString returns a static C string.
                let t = unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy();
                format!("{t} (hipError_t {e})")
            }
            _ => format!("hipError_t {e}"),
        }
    }
}
