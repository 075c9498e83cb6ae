//! HIP runtime C types used by the shim: error codes, copy kinds, streams, events.
#![allow(non_camel_case_types, non_upper_case_globals)]

use std::ffi::c_void;
use std::os::raw::c_int;

pub type hipError_t = c_int;
pub const hipSuccess: hipError_t = 0;

pub type hipMemcpyKind = c_int;
pub const hipMemcpyHostToDevice: hipMemcpyKind = 1;
pub const hipMemcpyDeviceToHost: hipMemcpyKind = 2;

pub type hipStream_t = *mut c_void;
pub type hipEvent_t = *mut c_void;

/// `hipStreamNonBlocking`: the stream does not wait for the null stream.
pub const hipStreamNonBlocking: u32 = 0x1;

/// `hipEventDisableTiming`: the event only orders work.
pub const hipEventDisableTiming: u32 = 0x2;

pub const hipHostMallocDefault: u32 = 0;
