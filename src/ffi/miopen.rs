//! MIOpen's C types: status codes, data types, convolution and batch-norm modes,
//! perf/solution structs.
#![allow(non_camel_case_types, non_upper_case_globals)]

use std::ffi::c_void;
use std::os::raw::c_int;

pub type miopenStatus_t = c_int;
pub const miopenStatusSuccess: miopenStatus_t = 0;
pub const miopenStatusNotInitialized: miopenStatus_t = 1;
pub const miopenStatusInvalidValue: miopenStatus_t = 2;
pub const miopenStatusBadParm: miopenStatus_t = 3;
pub const miopenStatusAllocFailed: miopenStatus_t = 4;
pub const miopenStatusInternalError: miopenStatus_t = 5;
pub const miopenStatusNotImplemented: miopenStatus_t = 6;
pub const miopenStatusUnknownError: miopenStatus_t = 7;

pub type miopenDataType_t = c_int;
pub const miopenHalf: miopenDataType_t = 0;
pub const miopenFloat: miopenDataType_t = 1;
pub const miopenInt32: miopenDataType_t = 2;
pub const miopenInt8: miopenDataType_t = 3;
pub const miopenBFloat16: miopenDataType_t = 5;
pub const miopenDouble: miopenDataType_t = 6;
pub const miopenFloat8: miopenDataType_t = 7;
pub const miopenBFloat8: miopenDataType_t = 8;
pub const miopenInt64: miopenDataType_t = 9;

pub type miopenConvolutionMode_t = c_int;
pub const miopenConvolution: miopenConvolutionMode_t = 0;
pub const miopenTranspose: miopenConvolutionMode_t = 1;
pub const miopenGroupConv: miopenConvolutionMode_t = 2;
pub const miopenDepthwise: miopenConvolutionMode_t = 3;

/// `miopenConvolutionAttrib_t`.
pub type miopenConvolutionAttrib_t = c_int;
pub const MIOPEN_CONVOLUTION_ATTRIB_DETERMINISTIC: miopenConvolutionAttrib_t = 1;

pub type miopenBatchNormMode_t = c_int;
pub const miopenBNPerActivation: miopenBatchNormMode_t = 0;
pub const miopenBNSpatial: miopenBatchNormMode_t = 1;

/// `miopenConvFwdAlgorithm_t`, `miopenConvBwdDataAlgorithm_t`,
/// `miopenConvBwdWeightsAlgorithm_t` and `miopenConvAlgorithm_t` share value 0 for GEMM,
/// which is the algorithm the shim reports (PyTorch's default choice).
pub type miopenConvAlgorithm_t = c_int;
pub const miopenConvolutionAlgoGEMM: miopenConvAlgorithm_t = 0;

pub type miopenHandle_t = *mut c_void;
pub type miopenTensorDescriptor_t = *mut c_void;
pub type miopenConvolutionDescriptor_t = *mut c_void;
pub type miopenAcceleratorQueue_t = *mut c_void;

/// `miopenConvAlgoPerf_t`: a union of the three algorithm enums, then time and workspace.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct miopenConvAlgoPerf_t {
    pub algo: c_int,
    pub time: f32,
    pub memory: usize,
}

/// `miopenConvSolution_t` of the immediate-mode API.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct miopenConvSolution_t {
    pub time: f32,
    pub workspace_size: usize,
    pub solution_id: u64,
    pub algorithm: miopenConvAlgorithm_t,
}

/// Short name of a status code for log lines.
pub fn status_name(s: miopenStatus_t) -> &'static str {
    match s {
        0 => "miopenStatusSuccess",
        1 => "miopenStatusNotInitialized",
        2 => "miopenStatusInvalidValue",
        3 => "miopenStatusBadParm",
        4 => "miopenStatusAllocFailed",
        5 => "miopenStatusInternalError",
        6 => "miopenStatusNotImplemented",
        7 => "miopenStatusUnknownError",
        8 => "miopenStatusUnsupportedOp",
        9 => "miopenStatusGpuOperationsSkipped",
        10 => "miopenStatusVersionMismatch",
        _ => "miopenStatus(unknown)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layouts_match_miopen_h() {
        // union of 4-byte enums, float, size_t: 4 + 4 + 8 on LP64.
        assert_eq!(std::mem::size_of::<miopenConvAlgoPerf_t>(), 16);
        assert_eq!(std::mem::offset_of!(miopenConvAlgoPerf_t, memory), 8);
        // float, size_t, uint64_t, enum (+ padding): 4(+4) + 8 + 8 + 4(+4).
        assert_eq!(std::mem::size_of::<miopenConvSolution_t>(), 32);
        assert_eq!(
            std::mem::offset_of!(miopenConvSolution_t, workspace_size),
            8
        );
        assert_eq!(std::mem::offset_of!(miopenConvSolution_t, solution_id), 16);
        assert_eq!(std::mem::offset_of!(miopenConvSolution_t, algorithm), 24);
    }
}
