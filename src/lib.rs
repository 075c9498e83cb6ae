//! rdna1shim: runs MIOpen convolutions on the CPU for GPUs whose kernels crash.
pub mod cpu;
