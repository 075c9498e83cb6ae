//! Bounded, reusable scratch memory: the global cap on extra memory, the
//! tuning knobs derived from it, and thread-local buffers reused across calls.

use std::cell::Cell;

/// Upper bound on the extra memory (lowered matrices, temporaries, partial
/// sums) one convolution call allocates, summed over all worker threads.
pub const MAX_SCRATCH_BYTES: usize = 64 << 20;

/// Internal knobs of the engine. The public entry points use [`Tuning::default`];
/// tests shrink the limits to force chunking on small shapes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tuning {
    /// Cap on extra memory for one call, over all threads.
    pub scratch_bytes: usize,
    /// Preferred size of one lowered (im2col) chunk, for cache reuse.
    pub chunk_bytes: usize,
    /// Route `c_in / groups == 1` problems to the direct depthwise loops.
    pub direct_depthwise: bool,
    /// Use the AVX-512 packed GEMM when the CPU has it.
    pub avx512: bool,
    /// Compute a stride-1 input gradient as a forward convolution of `dy`
    /// with the flipped kernel where the shape allows it.
    pub data_as_forward: bool,
    /// Widest instruction set of the direct (depthwise) loops.
    pub simd: super::simd::Level,
    /// Records the largest scratch request made under this tuning.
    #[cfg(test)]
    pub probe: Option<&'static std::sync::atomic::AtomicUsize>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            scratch_bytes: MAX_SCRATCH_BYTES,
            chunk_bytes: 768 << 10,
            direct_depthwise: true,
            avx512: true,
            data_as_forward: true,
            simd: super::simd::Level::Avx512,
            #[cfg(test)]
            probe: None,
        }
    }
}

impl Tuning {
    /// Scratch floats one of `workers` concurrent tasks may hold.
    pub fn floats_per_worker(&self, workers: usize) -> usize {
        self.scratch_bytes / 4 / workers.max(1)
    }

    /// [`with_scratch`], noting the request for tests that watch the budget.
    #[inline]
    pub fn scratch<R>(&self, slot: Slot, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
        #[cfg(test)]
        if let Some(p) = self.probe {
            p.fetch_max(len, std::sync::atomic::Ordering::Relaxed);
        }
        with_scratch(slot, len, f)
    }
}

/// Which thread-local buffer to borrow; distinct slots may be held at once.
#[derive(Clone, Copy)]
pub(crate) enum Slot {
    /// Per-task lowered matrices and temporaries.
    Task,
    /// Per-call buffers held by the calling thread (partial sums, a
    /// transformed kernel).
    Partials,
}

thread_local! {
    static TASK: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static PARTIALS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on a thread-local buffer of `len` floats with unspecified contents
/// (callers write before they read). The buffer is kept for the next call; a
/// nested borrow of the same slot gets a fresh buffer instead of aliasing.
fn with_scratch<R>(slot: Slot, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let key = match slot {
        Slot::Task => &TASK,
        Slot::Partials => &PARTIALS,
    };
    let mut buf = key.with(Cell::take);
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    key.with(|c| c.set(buf));
    r
}

/// Frees this thread's cached buffers.
pub(crate) fn release_thread() {
    TASK.with(Cell::take);
    PARTIALS.with(Cell::take);
}
