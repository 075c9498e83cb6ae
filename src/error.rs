//! `ShimError`: a MIOpen status plus the sentence the log line says about it.

use crate::ffi::miopen::*;

#[derive(Debug, Clone)]
pub struct ShimError {
    pub status: miopenStatus_t,
    pub message: String,
}

impl ShimError {
    pub fn new(status: miopenStatus_t, message: impl Into<String>) -> Self {
        ShimError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_parm(message: impl Into<String>) -> Self {
        Self::new(miopenStatusBadParm, message)
    }
    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(miopenStatusNotImplemented, message)
    }
    pub fn not_initialized(message: impl Into<String>) -> Self {
        Self::new(miopenStatusNotInitialized, message)
    }
    pub fn alloc_failed(message: impl Into<String>) -> Self {
        Self::new(miopenStatusAllocFailed, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(miopenStatusInternalError, message)
    }
    /// A problem the CPU engine cannot compute (may be passed to the GPU on request).
    pub fn is_unsupported(&self) -> bool {
        self.status == miopenStatusNotImplemented
    }
}

impl std::fmt::Display for ShimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", status_name(self.status), self.message)
    }
}

pub type ShimResult<T> = Result<T, ShimError>;

impl ShimError {
    /// The same error with what the call was about appended.
    pub fn with_context(&self, context: &str) -> Self {
        ShimError::new(self.status, format!("{} [{context}]", self.message))
    }
}
