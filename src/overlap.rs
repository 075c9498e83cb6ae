//! The chunks of a pipelined convolution call computed as tasks of the pool while
//! their copies run: each chunk's task waits for its own downloads on its worker, up
//! to [`chunking::LIVE_CHUNKS`] chunks are computed at once (so the threads take up
//! the next chunk's work as the current one runs out, instead of idling at its end
//! and waking for the next), and the calling thread queues the copies — a finished
//! chunk's upload, then the downloads into the slot it freed. A weight gradient's
//! chunks each compute a part of their own, summed in chunk order at the end.
//!
//! A plain fp32 forward pass or input gradient that the engine computes as its
//! implicit GEMM, or a weight gradient whose tasks sweep the images in order, is
//! instead one gated engine call over the whole batch ([`compute_gated`]): its tasks
//! wait for the pieces of the inputs they read, and each piece of a batched output
//! leaves as soon as it is done (a weight gradient's whole, at the end).

use std::ffi::c_void;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::chunking;
use crate::config::Chunks;
use crate::convert;
use crate::cpu::conv;
use crate::cpu::gate::Gate;
use crate::cpu::ConvShape;
use crate::describe::{ConvProblem, Pass};
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

/// Pieces of the batch whose input copies a gated pass waits for one by one,
/// and whose results leave as they are done (the first half as large, so the
/// engine starts early).
const GATE_PIECES: usize = 8;

/// Largest share of the engine's modelled time a gated pass's modelled copies may
/// take: where the copies are as long as the engine, the chunked pipeline already
/// overlaps them and costs the engine little, while a gated pass's copies of the
/// output run behind the engine. On the 16-core Xeon at 16 threads with the copies
/// sharing the cores, ResNet's stem at batch 32 (copies 0.9 of the model's engine
/// time) took 14.1 ms gated against 13.6 chunked (23.1 against 14.6 in another run),
/// while the 3×3 layers over 28×28 to 7×7 (0.1–0.2) took 10–20 % less gated.
const GATE_MAX_COPY_SHARE: f64 = 0.5;

/// Whether a weight gradient the engine can run gated is, without
/// `RDNA1SHIM_CHUNKS`. Not yet: on the 16-core Xeon at 16 threads (12 GB/s,
/// batch 32) ResNet's 64-channel weight gradient took 7.2–7.4 ms gated against
/// 8.3 chunked when timed alone, but 18.6–21.6 against 8.0–8.9 in the training
/// step's sequence of passes (four runs over two builds), its engine waiting on
/// copies that fell behind; at two threads on Zen 3, within ±3 % of the chunked
/// calls (the 128-channel layer's column ranges 3 % slower over the whole batch).
/// In that sequence every gated call faulted in new pinned staging (the cache
/// then refused returning buffers once full; it keeps them now); with that
/// fixed, 9.76 ms gated against 8.70 chunked, the step's passes 405.4 against
/// 396.4 ms.
const GATE_WEIGHTS_BY_DEFAULT: bool = false;

/// The pieces a pass is cut into when it runs as one gated engine call over the
/// whole batch ([`compute_gated`]): NCHW fp32 in and out (the engine reads and
/// writes the staging itself), a plain result (alpha 1, beta 0, nothing fused), all
/// of the batch's staging within the memory cap, and a shape whose pass the engine
/// computes in order of the images: a forward pass or input gradient as the
/// implicit GEMM (an input gradient: at stride 1, over the flipped kernel), with
/// copies modelled well under the engine's time ([`GATE_MAX_COPY_SHARE`]); a
/// weight gradient by partial sums over bands of images or by column ranges
/// sweeping them (`conv::backward_weights_gated_applies`), only where
/// `RDNA1SHIM_CHUNKS=N` asks for pieces ([`GATE_WEIGHTS_BY_DEFAULT`]).
/// `RDNA1SHIM_CHUNKS=N` gates every such call, in N pieces; one chunk, or a limit on
/// those in flight, keeps the chunked path.
pub(crate) fn gated_pieces(
    p: &ConvProblem,
    [x, w, y]: [&Operand; 3],
    (alpha, beta, fused): (f32, f32, bool),
    (chunks, threads): (Chunks, usize),
    can_pipeline: bool,
) -> Option<Vec<Range<usize>>> {
    let n = p.shape.n;
    let dt = p.dtype;
    let bytes = bytes_of(&x.layout, dt) + bytes_of(&w.layout, dt) + bytes_of(&y.layout, dt);
    let pieces = match chunks {
        Chunks::Auto => {
            let (copy, engine) = chunking::model_seconds(bytes, p.shape.flops(), threads);
            if p.pass == Pass::BackwardWeights {
                if !GATE_WEIGHTS_BY_DEFAULT {
                    return None;
                }
            } else if copy > GATE_MAX_COPY_SHARE * engine {
                return None;
            }
            GATE_PIECES
        }
        Chunks::Fixed {
            chunks,
            in_flight: None,
        } if chunks > 1 => chunks,
        Chunks::Fixed { .. } => return None,
    };
    let takes = match p.pass {
        Pass::Forward => conv::forward_gated_applies(&p.shape, threads),
        Pass::BackwardData => conv::backward_data_gated_applies(&p.shape, threads),
        Pass::BackwardWeights => conv::backward_weights_gated_applies(&p.shape, threads),
    };
    let applies = takes
        && dt == DType::F32
        && alpha == 1.0
        && beta == 0.0
        && !fused
        && can_pipeline
        && n > 1
        && [x, w, y]
            .iter()
            .all(|o| o.rows.is_none() && o.layout.is_packed_canonical())
        && bytes <= crate::config::call_memory_bytes();
    applies.then(|| chunking::ranges(n, n.div_ceil(pieces.clamp(1, n)), true))
}

/// The uploads of a gated pass: queued by whichever thread finishes a piece, in
/// order of the pieces.
struct Uploads<'t> {
    tr: &'t mut Transfers,
    done: Vec<bool>,
    /// The first piece not yet queued.
    next: usize,
    /// The output's samples `0..written` may have been written.
    written: usize,
    failure: Option<ShimError>,
}

/// The gate of a pass over staging that copies fill: an image's input is
/// ready once its piece's download event is; once all images of a piece are done,
/// the thread that finished the last queues the uploads of the pieces done in order.
struct CopyGate<'e, 't> {
    waiter: Waiter,
    events: &'e [Event],
    pieces: &'e [Range<usize>],
    piece_of: Vec<usize>,
    /// Images of each piece not yet done.
    left: Vec<AtomicUsize>,
    /// Pieces known to have arrived.
    ready: AtomicUsize,
    /// How long the first piece kept the engine from starting; held by the thread
    /// that waits for the next event.
    first_wait: Mutex<Duration>,
    failure: Mutex<Option<ShimError>>,
    /// The output (its device tensor and staging buffer) where it leaves piece by
    /// piece (not a weight gradient's), and the copies.
    y: Option<(Operand, usize, DType)>,
    uploads: Mutex<Uploads<'t>>,
}

// SAFETY: the device pointer in `y` is only handed to HIP (thread-safe), never
// dereferenced; everything else is shared through atomics and locks.
unsafe impl Sync for CopyGate<'_, '_> {}

impl Gate for CopyGate<'_, '_> {
    fn input_ready(&self, image: usize) -> bool {
        let want = self.piece_of[image];
        if self.ready.load(Ordering::Acquire) > want {
            return true;
        }
        // One thread waits for each event, once; the others wait for that thread.
        let mut first_wait = lock(&self.first_wait);
        while self.ready.load(Ordering::Acquire) <= want {
            if lock(&self.failure).is_some() {
                return false;
            }
            let q = self.ready.load(Ordering::Acquire);
            match self.waiter.wait(self.events[q]) {
                Ok(waited) => {
                    if q == 0 {
                        *first_wait = waited;
                    }
                    self.ready.store(q + 1, Ordering::Release);
                }
                Err(e) => {
                    lock(&self.failure).get_or_insert(e);
                    return false;
                }
            }
        }
        true
    }

    fn output_done(&self, image: usize) {
        let Some((y, yb, dt)) = &self.y else {
            return;
        };
        let q = self.piece_of[image];
        if self.left[q].fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        if lock(&self.failure).is_some() {
            // A task skipped for a failed input wait recorded it before it finished:
            // this piece may be part-computed, and no later piece is queued either.
            return;
        }
        let mut up = lock(&self.uploads);
        up.done[q] = true;
        while up.next < self.pieces.len() && up.done[up.next] && up.failure.is_none() {
            let r = &self.pieces[up.next];
            let (off, len) = chunk_span(&y.layout, r, *dt);
            match up.tr.upload_at(y.device_at(r.start, off), *yb, off, len) {
                Ok(()) => up.written = r.end,
                Err(e) => up.failure = Some(e),
            }
            up.next += 1;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pass as one engine call over the whole batch while its copies run (see
/// [`gated_pieces`]; `x` is the pass's input, `w` its weights — for a weight
/// gradient, `dy` — and `y` its output): the weights are queued first, then the
/// batched inputs piece by piece, one event each, into one staging buffer each; the
/// engine's tasks, taken in order of their images, each wait for the pieces they
/// read; each piece of a batched output is queued for the device, by the thread that
/// finished it, once all of it and the pieces before it are done (a weight
/// gradient's, whole, at the end). Returns the phases and the time the first piece
/// kept the engine waiting (later waits are inside the engine's time).
pub(crate) fn compute_gated(
    tr: &mut Transfers,
    pool: &rayon::ThreadPool,
    p: &ConvProblem,
    [x, w, y]: [&Operand; 3],
    pieces: &[Range<usize>],
    written: &mut usize,
) -> ShimResult<(Phases, Duration)> {
    let dt = p.dtype;
    let n = p.shape.n;
    let lens = [&x.layout, &w.layout, &y.layout].map(|l| bytes_of(l, dt));
    let weights = p.pass == Pass::BackwardWeights;
    // The weights (not a weight gradient's `dy`) are queued whole, before the pieces.
    let wb = if weights {
        tr.buffer(lens[1])?
    } else {
        tr.download(w.ptr, lens[1])?
    };
    let (xb, yb) = (tr.buffer(lens[0])?, tr.buffer(lens[2])?);
    let batched: &[(&Operand, usize)] = if weights {
        &[(x, xb), (w, wb)]
    } else {
        &[(x, xb)]
    };
    let mut events = Vec::with_capacity(pieces.len());
    for r in pieces {
        for &(o, buf) in batched {
            let (off, len) = chunk_span(&o.layout, r, dt);
            tr.download_at(buf, off, o.device_at(r.start, off), len)?;
        }
        events.push(tr.record()?);
    }
    if !weights {
        tr.with_side();
    }
    let mut piece_of = vec![0; n];
    for (q, r) in pieces.iter().enumerate() {
        piece_of[r.clone()].fill(q);
    }
    let (rx_, rw, ry) = (tr.raw(xb), tr.raw(wb), tr.raw(yb));
    let waiter = tr.waiter();
    let gate = CopyGate {
        waiter,
        events: &events,
        pieces,
        piece_of,
        left: pieces.iter().map(|r| AtomicUsize::new(r.len())).collect(),
        ready: AtomicUsize::new(0),
        first_wait: Mutex::new(Duration::ZERO),
        failure: Mutex::new(None),
        y: (!weights).then_some((*y, yb, dt)),
        uploads: Mutex::new(Uploads {
            tr,
            done: vec![false; pieces.len()],
            next: 0,
            written: 0,
            failure: None,
        }),
    };
    let (lx, lw, ly) = (x.layout, w.layout, y.layout);
    type Gated = fn(&ConvShape, &[f32], &[f32], &mut [f32], &dyn Gate) -> bool;
    type Whole = fn(&ConvShape, &[f32], &[f32], &mut [f32]);
    let (gated, whole): (Gated, Whole) = match p.pass {
        Pass::BackwardData => (conv::backward_data_gated, conv::backward_data),
        Pass::BackwardWeights => (conv::backward_weights_gated, conv::backward_weights),
        Pass::Forward => (conv::forward_gated, conv::forward),
    };
    let run = || {
        let t = Instant::now();
        // SAFETY: the staging outlives the call; the engine reads an image of a
        // batched input only once its piece's download is done (the gate), and
        // the weights were queued before the first piece; no copy reads a piece of
        // `y` before the gate has heard of all of its images, which no task writes
        // again (a weight gradient's `y` is read after the engine returns). The
        // views are of whole tensors the copies touch in parts nothing reads or
        // writes meanwhile.
        let (xs, ws, ys) =
            unsafe { (rx_.slice(lens[0]), rw.slice(lens[1]), ry.slice_mut(lens[2])) };
        let xs = convert::f32_view(xs, dt, &lx).expect("packed fp32 staging");
        let ws = convert::f32_view(ws, dt, &lw).expect("packed fp32 staging");
        let ys = convert::f32_view_mut(ys, dt, &ly).expect("packed fp32 staging");
        if !gated(&p.shape, xs, ws, ys, &gate) {
            // The pool cannot run it gated (its scratch share): all at once.
            if gate.input_ready(n - 1) {
                whole(&p.shape, xs, ws, ys);
            }
            (0..n).for_each(|i| gate.output_done(i));
        }
        t.elapsed()
    };
    let res = pool
        .install(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)))
        .map_err(|_| ShimError::internal("the gated pass panicked"));
    let first = *lock(&gate.first_wait);
    let waited = lock(&gate.failure).take();
    let up = gate.uploads.into_inner().unwrap_or_else(|e| e.into_inner());
    *written = up.written;
    let engine = res?;
    if let Some(e) = waited.or(up.failure) {
        return Err(e);
    }
    if weights {
        up.tr.upload(y.ptr, yb)?;
    } else if up.next < pieces.len() {
        return Err(ShimError::internal(format!(
            "the gated pass finished with {} of {} pieces of its output not done",
            pieces.len() - up.next,
            pieces.len()
        )));
    }
    let ph = Phases {
        engine: engine.saturating_sub(first),
        ..Phases::default()
    };
    Ok((ph, first))
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

    /// An NCHW fp32 problem of `pass` over `n × c → k` channels at `hw`² with a
    /// `kernel`² kernel at `stride` (padding keeping the size at stride 1), and its
    /// operands in the pass's roles.
    fn problem(
        pass: Pass,
        [n, c, k, hw, kernel, stride]: [usize; 6],
    ) -> (ConvProblem, [Operand; 3]) {
        let pad = kernel / 2;
        let out = (hw + 2 * pad - kernel) / stride + 1;
        let shape = crate::cpu::ConvShape {
            n,
            c_in: c,
            c_out: k,
            groups: 1,
            input: [1, hw, hw],
            kernel: [1, kernel, kernel],
            output: [1, out, out],
            pad: [0, pad, pad],
            stride: [1, stride, stride],
            dilation: [1, 1, 1],
        };
        let packed = |d: [usize; 5]| crate::layout::Layout5 {
            dims: d,
            strides: [
                d[1] * d[2] * d[3] * d[4],
                d[2] * d[3] * d[4],
                d[3] * d[4],
                d[4],
                1,
            ],
        };
        let (x, w, y) = (
            packed([n, c, 1, hw, hw]),
            packed([k, c, 1, kernel, kernel]),
            packed([n, k, 1, out, out]),
        );
        let p = ConvProblem {
            direction: crate::describe::Direction::Forward,
            transposed: false,
            pass,
            dtype: DType::F32,
            shape,
            x,
            w,
            y,
            spatial_dims: 2,
        };
        let op = |layout, batched| Operand {
            ptr: std::ptr::null_mut(),
            layout,
            batched,
            rows: None,
        };
        let ops = match pass {
            Pass::Forward => [op(x, true), op(w, false), op(y, true)],
            Pass::BackwardData => [op(y, true), op(w, false), op(x, true)],
            Pass::BackwardWeights => [op(x, true), op(y, true), op(w, false)],
        };
        (p, ops)
    }

    fn pieces(
        pass: Pass,
        dims: [usize; 6],
        blend: (f32, f32, bool),
        chunks: Chunks,
    ) -> Option<Vec<Range<usize>>> {
        let (p, [a, b, o]) = problem(pass, dims);
        gated_pieces(&p, [&a, &b, &o], blend, (chunks, 16), true)
    }

    /// Which calls run gated at 16 threads: compute-bound plain fp32 forward passes and
    /// input gradients of the implicit GEMM, in pieces whose first is half as large;
    /// not the copy-bound stem (unless the pieces are set), not a blended result, a
    /// weight gradient (unless the pieces are set), an input gradient the flipped
    /// kernel does not take, nor a limit on the chunks in flight.
    #[test]
    fn compute_bound_plain_passes_of_the_implicit_gemm_are_gated() {
        if !matches!(
            crate::cpu::isa(),
            crate::cpu::Isa::Avx512 | crate::cpu::Isa::Avx2
        ) {
            return; // no implicit GEMM: nothing is gated (checked by the harness)
        }
        let plain = (1.0, 0.0, false);
        let layer128 = [32, 128, 128, 28, 3, 1];
        let layer64 = [32, 64, 64, 56, 3, 1];
        let stem = [32, 3, 64, 224, 7, 2];
        let got = pieces(Pass::Forward, layer128, plain, Chunks::Auto).expect("gated");
        assert_eq!(got.len(), 9, "{got:?}");
        assert_eq!((got[0].clone(), got[1].clone()), (0..2, 2..6));
        assert_eq!(got.iter().map(|r| r.len()).sum::<usize>(), 32);
        assert!(got.windows(2).all(|w| w[0].end == w[1].start));
        assert!(pieces(Pass::BackwardData, layer64, plain, Chunks::Auto).is_some());
        assert!(
            pieces(Pass::Forward, stem, plain, Chunks::Auto).is_none(),
            "copy-bound"
        );
        let four = Chunks::Fixed {
            chunks: 4,
            in_flight: None,
        };
        assert_eq!(
            pieces(Pass::Forward, stem, plain, four).map(|p| p.len()),
            Some(5)
        );
        let limited = Chunks::Fixed {
            chunks: 4,
            in_flight: Some(2),
        };
        assert!(pieces(Pass::Forward, layer128, plain, limited).is_none());
        assert!(pieces(Pass::Forward, layer128, (1.0, 0.5, false), Chunks::Auto).is_none());
        assert!(pieces(Pass::Forward, layer128, (2.0, 0.0, false), Chunks::Auto).is_none());
        assert!(pieces(Pass::Forward, layer128, (1.0, 0.0, true), Chunks::Auto).is_none());
        assert!(pieces(Pass::BackwardWeights, layer128, plain, Chunks::Auto).is_none());
        // The 64-channel weight gradient (partial sums over bands of images) is gated
        // only in the pieces asked for.
        assert!(pieces(Pass::BackwardWeights, layer64, plain, Chunks::Auto).is_none());
        assert_eq!(
            pieces(Pass::BackwardWeights, layer64, plain, four).map(|p| p.len()),
            Some(5)
        );
        assert!(pieces(Pass::BackwardWeights, layer64, (1.0, 1.0, false), four).is_none());
        // 784 positions: this input gradient is computed over the flipped kernel
        // at AVX2 and AVX-512, and gated; the 512-channel one at 7×7 at AVX2 only;
        // a strided one is lowered.
        if crate::cpu::isa() >= crate::cpu::Isa::Avx2 {
            assert!(pieces(Pass::BackwardData, layer128, plain, Chunks::Auto).is_some());
        }
        let layer512 = [32, 512, 512, 7, 3, 1];
        let gated512 = pieces(Pass::BackwardData, layer512, plain, Chunks::Auto);
        assert_eq!(
            gated512.is_some(),
            crate::cpu::isa() == crate::cpu::Isa::Avx2,
            "{gated512:?}"
        );
        let down = [32, 64, 128, 56, 3, 2];
        assert!(pieces(Pass::BackwardData, down, plain, Chunks::Auto).is_none());
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
