//! rdna1shim: runs MIOpen convolutions on the CPU for GPUs whose kernels crash (AMD RDNA1).
//!
//! Loaded with `LD_PRELOAD`, the library exports MIOpen's convolution entry points; every
//! other MIOpen function resolves to the real `libMIOpen.so`. Layers, top to bottom:
//! `intercept` (exports) -> `describe` (descriptors to problems) and `execute` (the
//! pipelined call: `chunking` plans it, `convert` and `host_mem` feed the engine) ->
//! `transfer` (staging, stream-ordered copies, events) -> `real` (resolved functions) ->
//! `ffi` (C types); `cpu` is the engine and depends on nothing else of the crate;
//! `layout` describes strided fp16/bf16/fp32 tensors.
//! `intercept` routes each convolution by its configuration (`conv_config`): the routes
//! file (`routes`) or the operation's switch; `config_stats` counts per configuration and
//! `report` writes the record, the JSON summary and the top configurations at exit.
//! `probe` is the probe's child program (`rdna1shim-probe`), not part of the shim's calls.

pub mod activation;
pub mod chunking;
pub mod config;
pub mod config_stats;
pub mod conv_config;
pub mod convert;
pub mod cpu;
pub mod crash;
pub mod describe;
pub mod error;
pub mod execute;
pub mod execute_bn;
pub mod ffi;
pub mod host_mem;
pub mod identity;
pub mod intercept;
pub mod json;
pub mod layout;
pub mod log;
pub mod overlap;
pub mod plan_tuner;
pub mod probe;
pub mod profile;
pub mod real;
pub mod report;
pub mod repro;
pub mod routes;
pub mod runtime;
pub mod skipped_rows;
pub mod stats;
pub mod transfer;
