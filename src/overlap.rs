//! The chunks of a pipelined convolution call computed as tasks of the pool while
//! their copies run: each chunk's task waits for its own downloads on its worker, up
//! to [`chunking::LIVE_CHUNKS`] chunks are computed at once (so the threads take up
//! the next chunk's work as the current one runs out, instead of idling at its end
//! and waking for the next), and the calling thread queues the copies — a finished
//! chunk's upload, then the downloads into the slot it freed. A weight gradient's
//! chunks each compute a part of their own, summed in chunk order at the end.

use std::ffi::c_void;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::chunking;
use crate::error::{ShimError, ShimResult};
use crate::execute::{bytes_of, chunk_span, HostConv, Operand, Phases};
use crate::host_mem::WorkBuf;
use crate::layout::DType;
use crate::transfer::{Event, Transfers, Waiter};

/// The operands of a call cut into chunks, where each one is staged, and the copies
/// that bring a chunk to the host.
pub(crate) struct Staging<'s> {
    pub plan: &'s chunking::Plan,
    /// The pass's first input, second input and output (see [`operands`]).
    pub ops: [Operand; 3],
    /// Each operand's staging slots, one a chunk in flight (none for a tensor staged
    /// whole).
    pub slots: [&'s [usize]; 3],
    /// The staging of the second input where it is not cut (the weights).
    pub b_whole: Option<usize>,
    pub dt: DType,
    /// The old output is read (beta, or the gaps of a non-dense output).
    pub read_out: bool,
}

/// Where the chunks of an overlapped call put their results.
pub(crate) enum Sink<'b> {
    /// Into their output slots, uploaded as each chunk (and those before it) is done.
    Upload,
    /// A weight gradient: each chunk's part into a buffer of its own (taken by the
    /// chunk's task), summed in chunk order once all are done.
    Parts(Vec<Option<&'b mut [f32]>>),
}

/// One chunk computed by a task of the pool: its phases and when it computed.
struct ChunkRun {
    ph: Phases,
    span: (Instant, Instant),
}

impl Staging<'_> {
    /// Queues the downloads of chunk `i` into its slots and records their event.
    pub fn enqueue(&self, tr: &mut Transfers, i: usize) -> ShimResult<Event> {
        let r = &self.plan.chunks[i];
        let s = i % self.plan.slots;
        for (o, slot, read) in [
            (&self.ops[0], self.slots[0], true),
            (&self.ops[1], self.slots[1], true),
            (&self.ops[2], self.slots[2], self.read_out),
        ] {
            if o.batched && read {
                let (off, len) = chunk_span(&o.layout, r, self.dt);
                let src = o.device_at(r.start, off);
                match o.rows {
                    Some(rc) => tr.download_rows_into(slot[s], src, (rc.width, rc.pitch), len)?,
                    None => tr.download_into(slot[s], src, len)?,
                }
            }
        }
        tr.record()
    }

    /// Computes the chunks of a call, each as a task of the pool: where the output is
    /// cut with them (a forward pass or an input gradient) each result is uploaded as
    /// soon as it and the chunks before it are done; a weight gradient's parts go to
    /// the buffers of `sink`.
    ///
    /// Up to [`chunking::LIVE_CHUNKS`] chunks are computed at once: a chunk's task is
    /// queued as soon as its downloads are, waits for them on its worker, and the
    /// pool's threads take up the next chunk's work as the current one runs out
    /// (rayon runs the tasks of a chunk already started before a newly queued one), so
    /// the threads do not idle at each chunk's end, nor sleep and wake between chunks.
    /// The calling thread queues the copies: a finished chunk's upload, then the
    /// downloads into the slot it freed. Returns the phases (counted by the time the
    /// pool was busy with chunks) and the time no chunk was computing.
    pub fn compute_overlapped(
        &self,
        tr: &mut Transfers,
        pool: &rayon::ThreadPool,
        host: &HostConv,
        mut events: Vec<Event>,
        mut sink: Sink,
        written: &mut usize,
    ) -> ShimResult<(Phases, Duration)> {
        let plan = self.plan;
        let k = plan.chunks.len();
        let waiter = tr.waiter();
        let start = Instant::now();
        let mut uploaded: Vec<Option<Event>> = Vec::with_capacity(k);
        let mut results: Vec<Option<ShimResult<ChunkRun>>> = (0..k).map(|_| None).collect();
        let mut runs = Vec::with_capacity(k);
        let mut failure: Option<ShimError> = None;
        let (tx, rx) = std::sync::mpsc::channel::<(usize, ShimResult<ChunkRun>)>();
        pool.in_place_scope(|scope| {
            let (mut spawned, mut next) = (0, 0);
            loop {
                while failure.is_none()
                    && spawned < events.len()
                    && spawned < next + chunking::LIVE_CHUNKS
                {
                    let left = spawned.checked_sub(plan.slots).and_then(|i| uploaded[i]);
                    let ready = [Some(events[spawned]), left];
                    let part = match &mut sink {
                        Sink::Upload => None,
                        Sink::Parts(p) => p[spawned].take(),
                    };
                    let task = (spawned, ready, part);
                    match self.spawn_chunk(scope, tr, host, task, waiter, tx.clone()) {
                        Ok(()) => spawned += 1,
                        Err(e) => failure = Some(e),
                    }
                }
                if next == spawned {
                    break;
                }
                while results[next].is_none() {
                    let (j, res) = rx.recv().expect("every chunk task reports");
                    results[j] = Some(res);
                }
                let i = next;
                next += 1;
                let res = results[i].take().expect("received above");
                if failure.is_some() {
                    continue;
                }
                match res.and_then(|run| {
                    match sink {
                        Sink::Upload => self.finish_chunk(tr, i, &mut uploaded, written)?,
                        Sink::Parts(_) => uploaded.push(None),
                    }
                    if i + plan.slots < k {
                        if let (Some(left), true) = (uploaded[i], self.read_out) {
                            // The old output lands in the slot this chunk's result
                            // leaves from.
                            tr.order_after(left)?;
                        }
                        events.push(self.enqueue(tr, i + plan.slots)?);
                    }
                    Ok(run)
                }) {
                    Ok(run) => runs.push(run),
                    Err(e) => failure = Some(e),
                }
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(busy_phases(&runs, start))
    }

    /// Queues chunk `j` as a task of the pool: it waits for `ready` (its downloads, and
    /// the last upload out of its output slot), computes into its output slot (or
    /// into `part`, a weight gradient's), and reports on `tx`.
    #[allow(clippy::type_complexity)]
    fn spawn_chunk<'scope>(
        &self,
        scope: &rayon::Scope<'scope>,
        tr: &mut Transfers,
        host: &'scope HostConv,
        (j, ready, part): (usize, [Option<Event>; 2], Option<&'scope mut [f32]>),
        waiter: Waiter,
        tx: std::sync::mpsc::Sender<(usize, ShimResult<ChunkRun>)>,
    ) -> ShimResult<()> {
        let [a, b, out] = &self.ops;
        let [sa, sb, so] = self.slots;
        let dt = self.dt;
        let r = self.plan.chunks[j].clone();
        let s = j % self.plan.slots;
        let a_len = chunk_span(&a.layout, &r, dt).1;
        let (b_buf, b_len) = match self.b_whole {
            Some(w) => (w, bytes_of(&b.layout, dt)),
            None => (sb[s], chunk_span(&b.layout, &r, dt).1),
        };
        let (ra, rb) = (tr.raw(sa[s]), tr.raw(b_buf));
        let o = match part {
            Some(p) => Err(p),
            None => Ok((tr.raw(so[s]), chunk_span(&out.layout, &r, dt).1)),
        };
        scope.spawn(move |_| {
            let run = || -> ShimResult<ChunkRun> {
                for ev in ready.into_iter().flatten() {
                    waiter.wait(ev)?;
                }
                let t = Instant::now();
                let mut ph = Phases::default();
                // SAFETY: the chunk's downloads into its slots are done and the last
                // upload out of its output slot has left (`ready`); the calling thread
                // queues no copy into or out of these slots until this task has
                // reported, and the chunks computed at once have distinct slots (a
                // chunk's downloads are queued only once the chunk `slots` before it,
                // in the same slots, has reported). The staging outlives the scope.
                let (a, b) = unsafe { (ra.slice(a_len), rb.slice(b_len)) };
                match o {
                    // SAFETY: as above.
                    Ok((ro, o_len)) => {
                        host.compute_store(&r, a, b, unsafe { ro.slice_mut(o_len) }, &mut ph)?
                    }
                    Err(part) => host.accumulate(&r, a, b, part, true, &mut ph)?,
                }
                Ok(ChunkRun {
                    ph,
                    span: (t, Instant::now()),
                })
            };
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
                .unwrap_or_else(|_| Err(ShimError::internal("computing a chunk panicked")));
            // The receiver outlives the scope, so sending cannot fail.
            let _ = tx.send((j, res));
        });
        Ok(())
    }

    /// Queues chunk `i`'s result for the device (and, where its slot is used again,
    /// records when it has left).
    fn finish_chunk(
        &self,
        tr: &mut Transfers,
        i: usize,
        uploaded: &mut Vec<Option<Event>>,
        written: &mut usize,
    ) -> ShimResult<()> {
        let out = &self.ops[2];
        let r = &self.plan.chunks[i];
        let s = i % self.plan.slots;
        let (o_off, o_len) = chunk_span(&out.layout, r, self.dt);
        let dst = out.device_at(r.start, o_off);
        let so = self.slots[2];
        match out.rows {
            Some(rc) => {
                *written = (*written).max(r.end);
                // The rows between those computed are zero (beta is 0). Queued only now:
                // the uploads' stream is ordered after the application's earlier work
                // on its own stream only by this chunk's downloads having finished.
                // SAFETY (pointer arithmetic only): inside the chunk's samples.
                let gaps = unsafe { (dst as *mut u8).add(rc.width) } as *mut c_void;
                tr.zero_rows(gaps, (rc.pitch - rc.width, rc.pitch), r.len() * rc.rows)?;
                tr.upload_rows_from(dst, so[s], (rc.width, rc.pitch), o_len)?
            }
            None => tr.upload_from(dst, so[s], o_len)?,
        }
        *written = (*written).max(r.end);
        // Uploads on their own stream: the slot is reused only after this one left.
        let reused = tr.has_side() && i + self.plan.slots < self.plan.chunks.len();
        uploaded.push(reused.then(|| tr.record_upload()).transpose()?);
        Ok(())
    }
}

/// Adds the `rest` of a weight gradient's parts to `sum`, in order (each float summed
/// as the chunks one after another would).
pub(crate) fn sum_parts(sum: &mut [f32], rest: &[WorkBuf]) {
    const BLOCK: usize = 16 << 10;
    sum.par_chunks_mut(BLOCK).enumerate().for_each(|(i, s)| {
        let at = i * BLOCK..i * BLOCK + s.len();
        for p in rest {
            for (x, v) in s.iter_mut().zip(&p[at.clone()]) {
                *x += v;
            }
        }
    });
}

/// The phases of chunks computed at once, scaled to the time the pool was busy with
/// any of them, and the time from `start` to the last chunk's end when none was
/// computing (waiting for copies).
fn busy_phases(runs: &[ChunkRun], start: Instant) -> (Phases, Duration) {
    let mut spans: Vec<(Instant, Instant)> = runs.iter().map(|r| r.span).collect();
    spans.sort_by_key(|s| s.0);
    let (mut busy, mut idle, mut at) = (Duration::ZERO, Duration::ZERO, start);
    for (s, e) in spans {
        if s > at {
            idle += s - at;
            at = s;
        }
        if e > at {
            busy += e - at;
            at = e;
        }
    }
    let mut ph = Phases::default();
    let mut sum = Duration::ZERO;
    for r in runs {
        ph.add(&r.ph);
        sum += r.span.1 - r.span.0;
    }
    (ph.scaled(busy, sum), idle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: Instant, from_us: u64, to_us: u64, engine_us: u64) -> ChunkRun {
        let at = |us| start + Duration::from_micros(us);
        ChunkRun {
            ph: Phases {
                engine: Duration::from_micros(engine_us),
                ..Phases::default()
            },
            span: (at(from_us), at(to_us)),
        }
    }

    /// Overlapping chunks count once in the busy time, the gaps before and between
    /// them as waiting, and each phase shrinks with the overlap.
    #[test]
    fn busy_time_counts_overlapping_chunks_once_and_the_gaps_as_waiting() {
        let t = Instant::now();
        // 100..300 and 200..400 overlap (busy 300), a gap to 500, 500..600 (busy 100).
        let runs = [
            run(t, 200, 400, 200),
            run(t, 100, 300, 200),
            run(t, 500, 600, 100),
        ];
        let (ph, idle) = busy_phases(&runs, t);
        assert_eq!(idle, Duration::from_micros(100 + 100));
        // 500 µs of engine over 500 µs of spans, 400 µs busy.
        assert_eq!(ph.engine, Duration::from_micros(400));
        // Chunks one after another keep their phases.
        let runs = [run(t, 0, 100, 100), run(t, 100, 250, 150)];
        let (ph, idle) = busy_phases(&runs, t);
        assert_eq!(
            (ph.engine, idle),
            (Duration::from_micros(250), Duration::ZERO)
        );
    }

    /// The parts are added to the sum in chunk order, float for float as the chunks
    /// one after another add them (bitwise the same sum).
    #[test]
    fn parts_are_summed_in_chunk_order() {
        let len = 40_000; // more than one block, the last part-filled
        let val =
            |p: usize, i: usize| ((i * 7919 + p * 104_729) % 1000) as f32 * 1e-3 + 1e4 * p as f32;
        let mut sum: Vec<f32> = (0..len).map(|i| val(0, i)).collect();
        let mut expect = sum.clone();
        let parts: Vec<WorkBuf> = (1..4)
            .map(|p| {
                let mut b = WorkBuf::new(len, "a test part").unwrap();
                b.iter_mut().enumerate().for_each(|(i, v)| *v = val(p, i));
                b
            })
            .collect();
        for p in &parts {
            crate::convert::add_into(&mut expect, p);
        }
        sum_parts(&mut sum, &parts);
        assert!(sum
            .iter()
            .zip(&expect)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_ne!(sum[len - 1], val(0, len - 1), "nothing added");
    }
}
