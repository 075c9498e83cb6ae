//! The chunk plan of a convolution call: how many pieces of the batch it is cut into,
//! how large each is, and how many chunks' staging buffers are in flight at once.
//!
//! While one chunk is computed, the next chunks' inputs are copied to the host and the
//! previous chunks' results back to the device, so a call costs about
//! `max(copies, engine) + the first chunk's copy in + the last chunk's copy out` instead
//! of their sum. More chunks hide more of the copies but cost per chunk (the engine
//! re-packs the weights; a weight gradient reduces its partial sums each time), so
//! the count balances the two with a rough cost model: a 12 GB/s link, an engine at
//! about 40 GFLOP/s per thread. The first chunk is half the size of the others, so
//! compute starts early.
//!
//! The model is rough (the engine is less efficient on fewer samples for some layers,
//! the link may be faster or slower), so `plan_tuner` tries a few counts around its
//! choice on the first calls of each configuration and keeps the fastest.
//!
//! The staging of the chunks in flight, the whole tensors and the work buffers stay
//! within the per-call host memory cap; a batch too large for it is cut into more,
//! smaller chunks and fewer are in flight. Pure arithmetic, no FFI.

use std::ops::Range;

/// What the plan needs to know of a call.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput {
    /// Batch size.
    pub n: usize,
    /// Staging bytes of one sample of every tensor cut along the batch (inputs, the
    /// output, and the old output when it is read).
    pub staged_per_sample: usize,
    /// Work-buffer bytes of one sample (converted inputs, the result before its store).
    pub work_per_sample: usize,
    /// Staging and work bytes of the tensors not cut (weights, a weight gradient and
    /// its sums, a fused bias).
    pub whole_bytes: usize,
    /// Bytes the call copies between host and device.
    pub copy_bytes: usize,
    /// Floating-point operations of the whole call.
    pub flops: f64,
    /// Elements of the weight tensor.
    pub weight_len: usize,
    /// The output is the weight gradient, summed over the chunks.
    pub weight_gradient: bool,
    pub threads: usize,
    /// The per-call host memory cap in bytes.
    pub cap: usize,
    /// `RDNA1SHIM_CHUNKS=N`: cut into this many chunks where the batch allows.
    pub forced: Option<usize>,
    /// A chunk count to try instead of the model's (see `plan_tuner`); the chunks are
    /// shaped as the model's are.
    pub trial: Option<usize>,
    /// `RDNA1SHIM_CHUNKS=N/M`: at most this many chunks staged at once.
    pub max_in_flight: Option<usize>,
    /// Every tensor cut along the batch keeps its samples apart in memory.
    pub separable: bool,
    /// The runtime has events, so copies can overlap the engine.
    pub can_overlap: bool,
}

/// Ranges of samples, in order, and how many chunks' staging buffers exist at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub chunks: Vec<Range<usize>>,
    pub slots: usize,
    /// Bytes the call needs when even one sample per chunk exceeds the cap.
    pub over_cap: Option<usize>,
}

impl Plan {
    /// The most samples in one chunk.
    pub fn max_chunk(&self) -> usize {
        self.chunks.iter().map(|r| r.len()).max().unwrap_or(0)
    }

    /// Host bytes the plan holds at once.
    pub fn bytes(&self, i: &PlanInput) -> usize {
        footprint(i, self.max_chunk(), self.slots)
    }
}

/// Most chunks the cost model chooses.
pub const MAX_CHUNKS: usize = 16;
/// Assumed host<->device bandwidth (PCIe 3.0 x16 / 4.0 x8 in practice).
const LINK_BYTES_PER_S: f64 = 12e9;
/// Assumed engine speed per thread.
const ENGINE_FLOPS_PER_THREAD: f64 = 40e9;
/// Fixed cost of one more chunk: a copy and an event queued, a wait, an engine call.
const CHUNK_OVERHEAD_S: f64 = 30e-6;
/// Speed at which the engine re-reads the weights (packing, partial sums) per chunk.
const WEIGHT_BYTES_PER_S: f64 = 8e9;

/// Chunks computed at once: a chunk's work starts while the one before it ends, so
/// that the engine's threads never wait at a chunk's end (each holds its work buffers).
pub const LIVE_CHUNKS: usize = 2;

fn footprint(i: &PlanInput, chunk: usize, slots: usize) -> usize {
    i.whole_bytes
        + slots * chunk * i.staged_per_sample
        + slots.min(LIVE_CHUNKS) * chunk * i.work_per_sample
}

/// The cost model's seconds of a call's copies over the link and of its engine.
pub fn model_seconds(copy_bytes: usize, flops: f64, threads: usize) -> (f64, f64) {
    (
        copy_bytes as f64 / LINK_BYTES_PER_S,
        flops / (threads.max(1) as f64 * ENGINE_FLOPS_PER_THREAD),
    )
}

/// The number of chunks the cost model prefers.
pub fn preferred_chunks(i: &PlanInput) -> usize {
    if !i.can_overlap || i.n <= 1 {
        return 1;
    }
    let (copy, engine) = model_seconds(i.copy_bytes, i.flops, i.threads);
    let weight_reads = if i.weight_gradient {
        i.threads.max(1) as f64 + 1.0
    } else {
        1.0
    };
    let per_chunk =
        CHUNK_OVERHEAD_S + weight_reads * 4.0 * i.weight_len as f64 / WEIGHT_BYTES_PER_S;
    let k = (copy.min(engine) / per_chunk).sqrt().round() as usize;
    k.clamp(1, MAX_CHUNKS.min(i.n))
}

/// Ranges of `n` samples in chunks of `size`, the first one half as large when
/// `small_first` (and there is more than one).
pub(crate) fn ranges(n: usize, size: usize, small_first: bool) -> Vec<Range<usize>> {
    let size = size.clamp(1, n.max(1));
    let mut out = Vec::new();
    let mut at = 0;
    if small_first && size < n {
        let first = size.div_ceil(2);
        out.push(0..first);
        at = first;
    }
    while at < n {
        let end = (at + size).min(n);
        out.push(at..end);
        at = end;
    }
    out
}

/// The plan for one call.
pub fn plan(i: &PlanInput) -> Plan {
    let n = i.n.max(1);
    if !i.separable || n == 1 {
        let need = footprint(i, n, 1);
        return Plan {
            chunks: vec![0..i.n],
            slots: 1,
            over_cap: (need > i.cap).then_some(need),
        };
    }
    let (mut size, small_first) = match (i.forced, i.trial) {
        (Some(k), _) => (n.div_ceil(k.clamp(1, n)), false),
        (None, Some(k)) => (n.div_ceil(k.clamp(1, n)), true),
        (None, None) => (n.div_ceil(preferred_chunks(i)), true),
    };
    loop {
        let chunks = ranges(n, size, small_first);
        let fixed = i.whole_bytes + LIVE_CHUNKS.min(chunks.len()) * size * i.work_per_sample;
        let per_slot = size * i.staged_per_sample;
        let room = i.cap.saturating_sub(fixed) / per_slot.max(1);
        let slots = room
            .min(chunks.len())
            .min(i.max_in_flight.unwrap_or(usize::MAX).max(1));
        if i.max_in_flight.is_some() && slots >= 1 {
            return Plan {
                chunks,
                slots,
                over_cap: None,
            };
        }
        // Overlap needs two chunks in flight; one is enough for a single chunk.
        if slots >= 2.min(chunks.len()) && slots >= 1 {
            return Plan {
                chunks,
                slots,
                over_cap: None,
            };
        }
        if size == 1 {
            let need = footprint(i, 1, 1);
            return Plan {
                chunks: ranges(n, 1, false),
                slots: 1,
                over_cap: (need > i.cap).then_some(need),
            };
        }
        size = size.div_ceil(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ResNet-18's first 3x3 layer at batch 8, forward, fp32 NCHW on 2 threads.
    fn resnet_layer() -> PlanInput {
        let sample = 64 * 56 * 56 * 4;
        PlanInput {
            n: 8,
            staged_per_sample: 2 * sample,
            work_per_sample: 0,
            whole_bytes: 64 * 64 * 9 * 4,
            copy_bytes: 16 * sample + 64 * 64 * 9 * 4,
            flops: 2.0 * 8.0 * 64.0 * 64.0 * 9.0 * 56.0 * 56.0,
            weight_len: 64 * 64 * 9,
            weight_gradient: false,
            threads: 2,
            cap: 256 << 20,
            forced: None,
            trial: None,
            max_in_flight: None,
            separable: true,
            can_overlap: true,
        }
    }

    fn sizes(p: &Plan) -> Vec<usize> {
        p.chunks.iter().map(|r| r.len()).collect()
    }

    fn covers(p: &Plan, n: usize) {
        assert_eq!(p.chunks.first().unwrap().start, 0);
        assert_eq!(p.chunks.last().unwrap().end, n);
        for w in p.chunks.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert!(p.chunks.iter().all(|r| !r.is_empty()));
    }

    #[test]
    fn copy_heavy_layers_are_cut_with_a_small_first_chunk() {
        let p = plan(&resnet_layer());
        covers(&p, 8);
        assert!(p.chunks.len() >= 4, "{p:?}");
        assert!(sizes(&p)[0] <= sizes(&p)[1], "{p:?}");
        assert_eq!(p.slots, p.chunks.len(), "everything fits: all in flight");
        assert_eq!(p.over_cap, None);
    }

    #[test]
    fn weight_heavy_layers_stay_whole() {
        // ResNet's 512-channel 3x3 layer at 7x7: 9 MiB of weights, little data.
        let sample = 512 * 49 * 4;
        let wl = 512 * 512 * 9;
        let i = PlanInput {
            staged_per_sample: 2 * sample,
            whole_bytes: 4 * wl,
            copy_bytes: 16 * sample + 4 * wl,
            flops: 2.0 * 8.0 * 512.0 * 512.0 * 9.0 * 49.0,
            weight_len: wl,
            weight_gradient: true,
            ..resnet_layer()
        };
        assert_eq!(plan(&i).chunks, vec![0..8]);
    }

    #[test]
    fn no_events_or_inseparable_samples_mean_one_chunk() {
        let i = PlanInput {
            can_overlap: false,
            ..resnet_layer()
        };
        assert_eq!(plan(&i).chunks, vec![0..8]);
        let i = PlanInput {
            separable: false,
            forced: Some(4),
            ..resnet_layer()
        };
        assert_eq!(plan(&i).chunks, vec![0..8]);
    }

    #[test]
    fn forced_counts_split_evenly() {
        for (k, want) in [
            (1, vec![8]),
            (2, vec![4, 4]),
            (3, vec![3, 3, 2]),
            (8, vec![1; 8]),
            (50, vec![1; 8]),
        ] {
            let p = plan(&PlanInput {
                forced: Some(k),
                ..resnet_layer()
            });
            covers(&p, 8);
            assert_eq!(sizes(&p), want, "{k}");
        }
    }

    #[test]
    fn a_trial_count_is_shaped_like_the_models() {
        let p = plan(&PlanInput {
            trial: Some(2),
            ..resnet_layer()
        });
        covers(&p, 8);
        assert_eq!(sizes(&p), vec![2, 4, 2]);
        let p = plan(&PlanInput {
            trial: Some(1),
            ..resnet_layer()
        });
        assert_eq!(sizes(&p), vec![8]);
    }

    #[test]
    fn in_flight_can_be_limited() {
        let p = plan(&PlanInput {
            forced: Some(8),
            max_in_flight: Some(3),
            ..resnet_layer()
        });
        assert_eq!((p.chunks.len(), p.slots), (8, 3));
        let p = plan(&PlanInput {
            forced: Some(8),
            max_in_flight: Some(1),
            ..resnet_layer()
        });
        assert_eq!((p.chunks.len(), p.slots), (8, 1));
    }

    #[test]
    fn the_cap_bounds_the_staging_in_flight() {
        let i = resnet_layer();
        let sample = i.staged_per_sample;
        for cap_samples in [2, 3, 5] {
            let cap = i.whole_bytes + cap_samples * sample;
            let p = plan(&PlanInput { cap, ..i });
            covers(&p, 8);
            assert!(p.bytes(&i) <= cap, "{cap_samples}: {p:?}");
            assert!(p.slots >= 2 || p.chunks.len() == 1, "{p:?}");
            assert_eq!(p.over_cap, None);
        }
        // Not even one sample fits: one sample at a time, and the plan says so.
        let p = plan(&PlanInput {
            cap: sample / 2,
            ..i
        });
        assert_eq!(sizes(&p), vec![1; 8]);
        assert_eq!(p.slots, 1);
        assert_eq!(p.over_cap, Some(p.bytes(&i)));
    }

    #[test]
    fn a_cap_that_allows_one_chunk_in_flight_still_works() {
        let i = resnet_layer();
        // Room for one sample and a half: chunks of one, one in flight.
        let cap = i.whole_bytes + i.staged_per_sample * 3 / 2;
        let p = plan(&PlanInput { cap, ..i });
        covers(&p, 8);
        assert_eq!((p.max_chunk(), p.slots), (1, 1));
        assert_eq!(p.over_cap, None);
    }
}
