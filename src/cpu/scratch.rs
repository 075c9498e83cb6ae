//! Bounded, reusable scratch memory: the global cap on extra memory, the
//! tuning knobs derived from it, and the buffers reused across calls (one
//! per pool thread for tasks, one per process for per-call partial sums).

use std::cell::Cell;
use std::sync::{Mutex, MutexGuard};

/// Upper bound on the extra memory (lowered matrices, temporaries, partial
/// sums) one convolution call allocates, summed over all worker threads.
pub const MAX_SCRATCH_BYTES: usize = 64 << 20;

/// Internal knobs of the engine. The public entry points use [`Tuning::default`]
/// (whose instruction set is the process-wide one of [`super::simd::isa`]);
/// tests shrink the limits to force chunking on small shapes and lower the
/// instruction set to cover every back end.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tuning {
    /// Cap on extra memory for one call, over all threads.
    pub scratch_bytes: usize,
    /// Preferred size of one lowered (im2col) chunk, for cache reuse.
    pub chunk_bytes: usize,
    /// Route `c_in / groups == 1` problems to the direct depthwise loops.
    pub direct_depthwise: bool,
    /// Widest instruction set the kernels may use (lowered further to what
    /// the CPU has): it picks the back end of the lowered passes — the
    /// packed GEMM at AVX-512 or AVX2, the `gemm` crate when portable — and
    /// the vector width of the direct loops.
    pub isa: super::simd::Isa,
    /// Compute a stride-1 input gradient as a forward convolution of `dy`
    /// with the flipped kernel where the shape allows it.
    pub data_as_forward: bool,
    /// At AVX2, run 1×1 kernels on the `gemm` crate's back end, measured
    /// 5-17 % ahead of the packed AVX2 GEMM on them (a shallow product).
    pub gemm_crate_1x1: bool,
    /// Pack the input gradient's `Wᵀ` whole once per call for the packed
    /// GEMM where its column chunks would each pack it again.
    pub pack_weights_once: bool,
    /// Run the forward pass of the convolutions it suits as an implicit
    /// GEMM over a channels-last copy of the input (`lowered::implicit`).
    pub implicit_forward: bool,
    /// Most floats of a weight gradient split by positions into per-worker
    /// partial sums even where its columns would give every thread a task
    /// (`lowered::packed::backward_weights`).
    pub partial_weights_floats: usize,
    /// Compute the weight gradients small enough for per-worker partials
    /// of 2-D layers over a channels-last copy of the input
    /// (`lowered::implicit_weights`).
    pub implicit_weights: bool,
    /// Compute stride-1 weight gradients of 2-D layers with the lowered
    /// input read in place from channel-blocked planes
    /// (`lowered::blocked_weights`): by per-worker partials over wide rows,
    /// or split by columns where the gradient is too large for partials.
    pub blocked_weights: bool,
    /// Compute the input gradient of a strided layer by phase, one product
    /// per kernel tap over gathered columns (`lowered::subpixel`).
    pub subpixel_data: bool,
    /// Fewest input channels per group for `subpixel_data`: the rows of
    /// its products, over which each packed column of `dy` is reused (the
    /// lowered product reuses it over channels × taps). Measured at AVX2 on
    /// two threads against the lowered product: 256 channels gain (DCGAN's
    /// 4×4/2 over 4×4 outputs +24 %, ResNet's 256 → 512 3×3/2 at 14×14
    /// +15–20 %); 128 and 64 lose 3–30 %, most over large images.
    pub subpixel_min_channels: usize,
    /// Widest instruction set at which `subpixel_data` applies. AVX2: at
    /// AVX-512 the lowered product's fewer, deeper products won on the
    /// Xeon with two 512-bit FMA units a core (DCGAN −15 % at 4 threads,
    /// −34 % at 16), though not on Zen 4 (+11–18 % at 2 threads).
    pub subpixel_max_isa: super::simd::Isa,
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
            isa: super::simd::isa(),
            data_as_forward: true,
            gemm_crate_1x1: true,
            pack_weights_once: true,
            implicit_forward: true,
            partial_weights_floats: 1 << 16,
            implicit_weights: true,
            blocked_weights: true,
            subpixel_data: true,
            subpixel_min_channels: 256,
            subpixel_max_isa: super::simd::Isa::Avx2,
            #[cfg(test)]
            probe: None,
        }
    }
}

impl Tuning {
    /// Most floats of weights packed whole once per call (`Slot::Weights`):
    /// a quarter of the cap, the rest left to the tasks.
    pub fn packed_weights_floats(&self) -> usize {
        self.scratch_bytes / 4 / 4
    }

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

/// Which buffer to borrow; distinct slots may be held at once.
#[derive(Clone, Copy)]
pub(crate) enum Slot {
    /// Per-task lowered matrices and temporaries (one cached buffer per
    /// thread, each within its share of the budget).
    Task,
    /// Per-call buffers held by the calling thread (partial sums, a
    /// transformed kernel): one cached buffer for the whole process, since
    /// successive calls land on different pool threads.
    Partials,
    /// The weights packed whole for a call's products, held by the calling
    /// thread beside `Partials` (one cached buffer for the process).
    Weights,
}

thread_local! {
    static TASK: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

static PARTIALS: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
static WEIGHTS: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// Per-call buffers kept of each kind: one for each chunk of a pipelined call
/// computed at once (`chunking::LIVE_CHUNKS`).
const CACHED_PER_CALL: usize = 2;

/// The cached per-call buffers of a kind (a panic while one was held leaves
/// them usable: their contents are never read before being written).
fn cached(slot: &'static Mutex<Vec<Vec<f32>>>) -> MutexGuard<'static, Vec<Vec<f32>>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes the cached buffer best suited to `len` floats: the smallest that
/// holds them, else the largest (grown by the caller).
fn take_cached(slot: &'static Mutex<Vec<Vec<f32>>>, len: usize) -> Vec<f32> {
    let mut c = cached(slot);
    let fit = (0..c.len())
        .filter(|&i| c[i].len() >= len)
        .min_by_key(|&i| c[i].len())
        .or_else(|| (0..c.len()).max_by_key(|&i| c[i].len()));
    fit.map(|i| c.swap_remove(i)).unwrap_or_default()
}

/// Returns a per-call buffer to the cache, which keeps the largest
/// [`CACHED_PER_CALL`].
fn give_back(slot: &'static Mutex<Vec<Vec<f32>>>, buf: Vec<f32>) {
    let mut c = cached(slot);
    c.push(buf);
    if c.len() > CACHED_PER_CALL {
        let smallest = (0..c.len()).min_by_key(|&i| c[i].len()).expect("not empty");
        c.swap_remove(smallest);
    }
}

/// The process-wide cache of a per-call slot; `None` for the per-thread one.
fn shared(slot: Slot) -> Option<&'static Mutex<Vec<Vec<f32>>>> {
    match slot {
        Slot::Task => None,
        Slot::Partials => Some(&PARTIALS),
        Slot::Weights => Some(&WEIGHTS),
    }
}

/// Runs `f` on a cached buffer of `len` floats with unspecified contents
/// (callers write before they read). The buffer is kept for the next call; a
/// nested borrow of a task buffer, or more concurrent borrows of a per-call
/// one than are cached, get a fresh buffer instead of aliasing.
fn with_scratch<R>(slot: Slot, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let shared = shared(slot);
    let mut buf = match shared {
        None => TASK.with(Cell::take),
        Some(m) => take_cached(m, len),
    };
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    match shared {
        None => TASK.with(|c| c.set(buf)),
        Some(m) => give_back(m, buf),
    }
    r
}

/// Frees this thread's cached task buffer and the per-call buffers.
pub(crate) fn release_thread() {
    TASK.with(Cell::take);
    cached(&PARTIALS).clear();
    cached(&WEIGHTS).clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-call buffer one thread returns is the one the next call gets,
    /// whichever thread makes it (so a pool caches one, not one per thread):
    /// the per-call slots are process-wide caches, and a buffer given back on
    /// one thread is taken on another. (On the slots' own caches other tests
    /// take and return buffers of other sizes meanwhile, so the handover is
    /// checked on a cache of the test's own.)
    #[test]
    fn per_call_buffer_is_shared_by_successive_calls_on_other_threads() {
        assert!(std::ptr::eq(shared(Slot::Partials).unwrap(), &PARTIALS));
        assert!(std::ptr::eq(shared(Slot::Weights).unwrap(), &WEIGHTS));
        assert!(shared(Slot::Task).is_none());
        static MINE: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
        const LEN: usize = 1 << 16;
        const MARK: f32 = 7.25;
        std::thread::spawn(|| {
            let mut b = take_cached(&MINE, LEN);
            b.resize(LEN, 0.0);
            b.fill(MARK);
            give_back(&MINE, b);
        })
        .join()
        .unwrap();
        let got = std::thread::spawn(|| {
            let b = take_cached(&MINE, LEN);
            b.len() >= LEN && b[LEN - 1] == MARK
        })
        .join()
        .unwrap();
        assert!(
            got,
            "the buffer given back on one thread was not taken on the next"
        );
    }

    /// Two calls computed at once (two chunks of a pipelined call) each get a
    /// cached per-call buffer, not a fresh one for the second: the cache keeps
    /// [`CACHED_PER_CALL`] of them, the largest.
    #[test]
    fn two_concurrent_per_call_buffers_are_both_kept() {
        static MINE: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
        const LEN: usize = 1 << 15;
        let (mut a, mut b) = (take_cached(&MINE, LEN), take_cached(&MINE, LEN));
        a.resize(LEN, 1.0);
        b.resize(LEN, 2.0);
        give_back(&MINE, a);
        give_back(&MINE, b);
        // A smaller one given back is the one dropped.
        give_back(&MINE, vec![3.0; 8]);
        let (a, b) = (take_cached(&MINE, LEN), take_cached(&MINE, LEN));
        let mut got = [a[LEN - 1], b[LEN - 1]];
        got.sort_by(f32::total_cmp);
        assert_eq!(got, [1.0, 2.0], "only one per-call buffer was kept");
    }
}
