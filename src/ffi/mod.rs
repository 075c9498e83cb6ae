//! C types of the MIOpen and HIP APIs, declared from MIOpen's `miopen.h` and HIP's
//! `hip_runtime_api.h` facts. Enums are plain `c_int` constants: a value arriving
//! from C must never be read as a Rust enum it might not fit.

pub mod hip;
pub mod miopen;
