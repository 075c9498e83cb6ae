//! Function table of the real MIOpen: the descriptor getters the shim reads problems
//! with (required), and the real versions of every function the shim exports, used when
//! an operation is switched to the GPU (optional: an older MIOpen may lack some).

use std::ffi::c_void;
use std::os::raw::c_int;

use super::fn_table;
use crate::ffi::miopen::*;

type H = miopenHandle_t;
type T = miopenTensorDescriptor_t;
type C = miopenConvolutionDescriptor_t;
type S = miopenStatus_t;
type V = *const c_void;
type M = *mut c_void;

fn_table! {
    /// Getters of the real MIOpen, needed for every intercepted call.
    pub struct Getters {
        required miopenGetStream: fn(H, *mut miopenAcceleratorQueue_t) -> S;
        required miopenGetTensorDescriptorSize: fn(T, *mut c_int) -> S;
        required miopenGetTensorDescriptor: fn(T, *mut miopenDataType_t, *mut c_int, *mut c_int) -> S;
        required miopenGetConvolutionSpatialDim: fn(C, *mut c_int) -> S;
        required miopenGetConvolutionNdDescriptor: fn(C, c_int, *mut c_int, *mut c_int, *mut c_int, *mut c_int, *mut miopenConvolutionMode_t) -> S;
        required miopenGetConvolutionGroupCount: fn(C, *mut c_int) -> S;
        optional miopenGetConvolutionAttribute: fn(C, miopenConvolutionAttrib_t, *mut c_int) -> S;
    }
}

fn_table! {
    /// The real implementations of the functions the shim exports.
    pub struct Forwarded {
        optional miopenConvolutionForward: fn(H, V, T, V, T, V, C, c_int, V, T, M, M, usize) -> S;
        optional miopenConvolutionBackwardData: fn(H, V, T, V, T, V, C, c_int, V, T, M, M, usize) -> S;
        optional miopenConvolutionBackwardWeights: fn(H, V, T, V, T, V, C, c_int, V, T, M, M, usize) -> S;
        optional miopenFindConvolutionForwardAlgorithm: fn(H, T, V, T, V, C, T, M, c_int, *mut c_int, *mut miopenConvAlgoPerf_t, M, usize, bool) -> S;
        optional miopenFindConvolutionBackwardDataAlgorithm: fn(H, T, V, T, V, C, T, M, c_int, *mut c_int, *mut miopenConvAlgoPerf_t, M, usize, bool) -> S;
        optional miopenFindConvolutionBackwardWeightsAlgorithm: fn(H, T, V, T, V, C, T, M, c_int, *mut c_int, *mut miopenConvAlgoPerf_t, M, usize, bool) -> S;
        optional miopenConvolutionForwardGetWorkSpaceSize: fn(H, T, T, C, T, *mut usize) -> S;
        optional miopenConvolutionBackwardDataGetWorkSpaceSize: fn(H, T, T, C, T, *mut usize) -> S;
        optional miopenConvolutionBackwardWeightsGetWorkSpaceSize: fn(H, T, T, C, T, *mut usize) -> S;
        optional miopenConvolutionForwardGetSolutionCount: fn(H, T, T, C, T, *mut usize) -> S;
        optional miopenConvolutionBackwardDataGetSolutionCount: fn(H, T, T, C, T, *mut usize) -> S;
        optional miopenConvolutionBackwardWeightsGetSolutionCount: fn(H, T, T, C, T, *mut usize) -> S;
        optional miopenConvolutionForwardGetSolution: fn(H, T, T, C, T, usize, *mut usize, *mut miopenConvSolution_t) -> S;
        optional miopenConvolutionBackwardDataGetSolution: fn(H, T, T, C, T, usize, *mut usize, *mut miopenConvSolution_t) -> S;
        optional miopenConvolutionBackwardWeightsGetSolution: fn(H, T, T, C, T, usize, *mut usize, *mut miopenConvSolution_t) -> S;
        optional miopenConvolutionForwardGetSolutionWorkspaceSize: fn(H, T, T, C, T, u64, *mut usize) -> S;
        optional miopenConvolutionBackwardDataGetSolutionWorkspaceSize: fn(H, T, T, C, T, u64, *mut usize) -> S;
        optional miopenConvolutionBackwardWeightsGetSolutionWorkspaceSize: fn(H, T, T, C, T, u64, *mut usize) -> S;
        optional miopenConvolutionForwardCompileSolution: fn(H, T, T, C, T, u64) -> S;
        optional miopenConvolutionBackwardDataCompileSolution: fn(H, T, T, C, T, u64) -> S;
        optional miopenConvolutionBackwardWeightsCompileSolution: fn(H, T, T, C, T, u64) -> S;
        optional miopenConvolutionForwardImmediate: fn(H, T, V, T, V, C, T, M, M, usize, u64) -> S;
        optional miopenConvolutionBackwardDataImmediate: fn(H, T, V, T, V, C, T, M, M, usize, u64) -> S;
        optional miopenConvolutionBackwardWeightsImmediate: fn(H, T, V, T, V, C, T, M, M, usize, u64) -> S;
        optional miopenConvolutionForwardBias: fn(H, V, T, V, V, T, M) -> S;
        optional miopenConvolutionBackwardBias: fn(H, V, T, V, V, T, M) -> S;
        optional miopenBatchNormalizationForwardTraining: fn(H, miopenBatchNormMode_t, M, M, T, V, T, M, T, M, M, f64, M, M, f64, M, M) -> S;
        optional miopenBatchNormalizationForwardInference: fn(H, miopenBatchNormMode_t, M, M, T, V, T, M, T, M, M, M, M, f64) -> S;
        optional miopenBatchNormalizationBackward: fn(H, miopenBatchNormMode_t, V, V, V, V, T, V, T, V, T, M, T, V, M, M, f64, V, V) -> S;
    }
}
