//! Running one decoded call on the CPU. A convolution is cut into chunks of the batch
//! (`chunking`) whose copies to the host, computation and copies back overlap, ordered
//! on the handle's stream, the chunks computed as tasks of the pool (`overlap`); packed
//! fp32 is computed straight from and into the staging buffers, other dtypes and
//! layouts are converted in parallel (`convert`) into reused work buffers (`host_mem`).
//! Input rows a strided kernel one row tall never reads stay on the device
//! (`skipped_rows`). Bias and batch-norm calls are copied in whole, computed, and
//! copied back.

use std::ffi::c_void;
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::activation::Activation;
use crate::chunking;
use crate::config::Chunks;
use crate::convert::{self, Blend};
use crate::cpu::{channels_last, conv, ConvShape};
use crate::describe::{ConvProblem, Pass, TensorDesc};
use crate::error::{ShimError, ShimResult};
use crate::ffi::hip::hipStream_t;
use crate::ffi::miopen::*;
use crate::host_mem::WorkBuf;
use crate::layout::{DType, Layout5};
use crate::overlap::{sum_parts, Sink, Staging};
use crate::runtime::Runtime;
use crate::skipped_rows::{self, RowCopy};
use crate::stats::CallRecord;
use crate::transfer::Transfers;
use rayon::prelude::*;

/// Device pointers of a convolution call in the call's own roles, as `conv_problem`
/// takes its tensors: forward (x, w, y), backward-data (dx, w, dy), backward-weights
/// (x, dw, dy).
pub struct ConvBuffers {
    pub x: *mut c_void,
    pub w: *mut c_void,
    pub y: *mut c_void,
}

/// The handle's stream, on which every copy is ordered.
pub fn stream_of(rt: &Runtime, handle: miopenHandle_t) -> ShimResult<hipStream_t> {
    if handle.is_null() {
        return Err(ShimError::bad_parm("handle is null"));
    }
    let mut stream: miopenAcceleratorQueue_t = std::ptr::null_mut();
    // SAFETY: non-null handle from the caller; out-pointer to a local.
    let s = unsafe { (rt.getters()?.miopenGetStream)(handle, &mut stream) };
    if s != miopenStatusSuccess {
        return Err(ShimError::new(
            s,
            format!("miopenGetStream failed: {}", status_name(s)),
        ));
    }
    Ok(stream)
}

/// Reads `alpha`/`beta` (floats for fp32/fp16/bf16 data, as MIOpen defines them).
pub fn scalars(alpha: *const c_void, beta: *const c_void) -> ShimResult<(f32, f32)> {
    if alpha.is_null() || beta.is_null() {
        return Err(ShimError::bad_parm("alpha or beta is null"));
    }
    // SAFETY: non-null host pointers to float, per the MIOpen API.
    Ok(unsafe { (*(alpha as *const f32), *(beta as *const f32)) })
}

pub(crate) fn bytes_of(l: &Layout5, dtype: DType) -> usize {
    l.span() * dtype.size()
}

/// What a fused plan adds after a forward convolution.
pub struct Fused {
    /// Per-channel bias `[1, C, 1, ...]` in the output's dtype.
    pub bias: Option<FusedBias>,
    pub activation: Option<Activation>,
}

pub struct FusedBias {
    pub ptr: *const c_void,
    pub layout: Layout5,
}

/// The time of one call's host work, by phase.
#[derive(Clone, Copy, Debug, Default)]
pub struct Phases {
    /// Converting inputs (dtype, layout) into the engine's packed f32.
    pub convert: Duration,
    /// The engine.
    pub engine: Duration,
    /// Alpha/beta, the fused epilogue, summing chunks, conversion back.
    pub store: Duration,
}

impl Phases {
    pub(crate) fn add(&mut self, o: &Phases) {
        self.convert += o.convert;
        self.engine += o.engine;
        self.store += o.store;
    }

    /// Each phase scaled by `num / den` (phases of chunks computed at once, counted
    /// by the time the pool was busy with them).
    pub(crate) fn scaled(&self, num: Duration, den: Duration) -> Phases {
        if den.is_zero() || num >= den {
            return *self;
        }
        let f = num.as_secs_f64() / den.as_secs_f64();
        let s = |d: Duration| d.mul_f64(f);
        Phases {
            convert: s(self.convert),
            engine: s(self.engine),
            store: s(self.store),
        }
    }
}

/// One operand of the pass in the regular-convolution form.
#[derive(Clone, Copy)]
pub(crate) struct Operand {
    pub ptr: *mut c_void,
    pub layout: Layout5,
    /// Cut along the batch with the chunks (x and y are; weights are not).
    pub batched: bool,
    /// Only these rows of it cross the link (`layout` is then their packed host form).
    pub rows: Option<RowCopy>,
}

impl Operand {
    /// Device address of sample `n`, where samples `r` of the host form start at byte
    /// `host_off`.
    pub fn device_at(&self, n: usize, host_off: usize) -> *mut c_void {
        let off = self.rows.map_or(host_off, |rc| rc.offset(n));
        // SAFETY (pointer arithmetic only): sample `n` lies inside the tensor.
        unsafe { (self.ptr as *mut u8).add(off) as *mut c_void }
    }
}

/// The pass's first input, second input and output (see [`ConvBuffers`]); `x_rows`: only
/// those rows of the regular convolution's input cross the link.
fn operands(p: &ConvProblem, bufs: &ConvBuffers, x_rows: Option<RowCopy>) -> [Operand; 3] {
    // The regular convolution's x and y: transposed mode swaps the call's two.
    let (x, y) = if p.transposed {
        (bufs.y, bufs.x)
    } else {
        (bufs.x, bufs.y)
    };
    let op = |ptr, layout, batched| Operand {
        ptr,
        layout,
        batched,
        rows: None,
    };
    let x = Operand {
        rows: x_rows,
        ..op(x, p.x, true)
    };
    match p.pass {
        Pass::Forward => [x, op(bufs.w, p.w, false), op(y, p.y, true)],
        Pass::BackwardData => [op(y, p.y, true), op(bufs.w, p.w, false), x],
        Pass::BackwardWeights => [x, op(y, p.y, true), op(bufs.w, p.w, false)],
    }
}

/// The samples `r` of a batched tensor `l`.
fn chunk_layout(l: &Layout5, r: &Range<usize>) -> Layout5 {
    let mut c = *l;
    c.dims[0] = r.len();
    c
}

/// Byte offset and length of samples `r` of `l` (their span).
pub(crate) fn chunk_span(l: &Layout5, r: &Range<usize>, dt: DType) -> (usize, usize) {
    (
        r.start * l.strides[0] * dt.size(),
        bytes_of(&chunk_layout(l, r), dt),
    )
}

/// The samples of `l` lie apart in memory (each sample's span ends before the next
/// begins), so they can be copied and written chunk by chunk.
fn separable(l: &Layout5) -> bool {
    l.dims[0] == 1 || l.strides[0] >= chunk_layout(l, &(0..1)).span()
}

/// What a convolution call computes on the host, independent of where its bytes come
/// from: the problem, MIOpen's blend and a fused plan's epilogue.
pub(crate) struct HostConv<'a> {
    p: &'a ConvProblem,
    blend: Blend,
    epilogue: Option<&'a (dyn Fn(&mut [f32]) + Sync)>,
    /// x and y stay channels-last: the engine's [`channels_last`] kernels (or, for a
    /// forward pass or input gradient, its implicit GEMM) compute the layer in that
    /// order.
    channels_last: bool,
}

impl<'a> HostConv<'a> {
    fn new(
        p: &'a ConvProblem,
        blend: Blend,
        epilogue: Option<&'a (dyn Fn(&mut [f32]) + Sync)>,
    ) -> Self {
        // Pointwise and depthwise layers, and the forward pass and stride-1 input
        // gradient of the layers the implicit GEMM takes, on packed channels-last x
        // and y; a fused epilogue (per-channel bias in NCHW order) takes the general
        // path.
        let in_order = match p.pass {
            Pass::Forward => channels_last::forward_applies(&p.shape),
            Pass::BackwardData => channels_last::backward_data_applies(&p.shape),
            Pass::BackwardWeights => channels_last::kind(&p.shape).is_some(),
        };
        let channels_last = epilogue.is_none()
            && in_order
            && p.x.is_packed_channels_last()
            && p.y.is_packed_channels_last()
            && !(p.x.is_packed_canonical() && p.y.is_packed_canonical());
        HostConv {
            p,
            blend,
            epilogue,
            channels_last,
        }
    }
}

/// An input in the engine's packed f32: the caller's own bytes, or a converted copy.
enum F32In<'b> {
    View(&'b [f32]),
    Owned(WorkBuf),
}

impl std::ops::Deref for F32In<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            F32In::View(v) => v,
            F32In::Owned(b) => b,
        }
    }
}

fn f32_input<'b>(bytes: &'b [u8], dt: DType, l: &Layout5, what: &str) -> ShimResult<F32In<'b>> {
    if let Some(v) = convert::f32_view(bytes, dt, l) {
        return Ok(F32In::View(v));
    }
    let mut buf = WorkBuf::new(l.numel(), what)?;
    convert::gather(bytes, dt, l, &mut buf);
    Ok(F32In::Owned(buf))
}

fn timed<T>(acc: &mut Duration, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    *acc += t.elapsed();
    r
}

impl HostConv<'_> {
    fn engine(&self, s: &ConvShape, a: &[f32], b: &[f32], out: &mut [f32]) {
        match (self.p.pass, self.channels_last) {
            (Pass::Forward, false) => conv::forward(s, a, b, out),
            (Pass::BackwardData, false) => conv::backward_data(s, a, b, out),
            (Pass::BackwardWeights, false) => conv::backward_weights(s, a, b, out),
            (Pass::Forward, true) => channels_last::forward(s, a, b, out),
            (Pass::BackwardData, true) => channels_last::backward_data(s, a, b, out),
            (Pass::BackwardWeights, true) => channels_last::backward_weights(s, a, b, out),
        }
    }

    /// Layouts of the pass's inputs and output for the samples `r`.
    fn layouts(&self, r: &Range<usize>) -> [Layout5; 3] {
        let p = self.p;
        let (la, lb, lo) = match p.pass {
            Pass::Forward => (p.x, p.w, p.y),
            Pass::BackwardData => (p.y, p.w, p.x),
            Pass::BackwardWeights => (p.x, p.y, p.w),
        };
        // Channels-last tensors are computed in their own order: as one packed row.
        let cut = |l: Layout5, batched: bool| match (batched, self.channels_last) {
            (true, false) => chunk_layout(&l, r),
            (true, true) => chunk_layout(&l, r).flat(),
            (false, _) => l,
        };
        let w = p.pass == Pass::BackwardWeights;
        [cut(la, true), cut(lb, w), cut(lo, !w)]
    }

    fn inputs<'b>(
        &self,
        r: &Range<usize>,
        a: &'b [u8],
        b: &'b [u8],
        ph: &mut Phases,
    ) -> ShimResult<(F32In<'b>, F32In<'b>)> {
        let [la, lb, _] = self.layouts(r);
        let dt = self.p.dtype;
        timed(&mut ph.convert, || {
            Ok((
                f32_input(a, dt, &la, "the first input")?,
                f32_input(b, dt, &lb, "the second input")?,
            ))
        })
    }

    /// Computes samples `r` and stores the result, blended, into `out` (the bytes of
    /// the output's span for those samples, holding the old output where it is read).
    /// A weight gradient computed in one piece is stored the same way (`r` = the batch).
    pub(crate) fn compute_store(
        &self,
        r: &Range<usize>,
        a: &[u8],
        b: &[u8],
        out: &mut [u8],
        ph: &mut Phases,
    ) -> ShimResult<()> {
        let sub = ConvShape {
            n: r.len(),
            ..self.p.shape
        };
        let [_, _, lo] = self.layouts(r);
        let (a, b) = self.inputs(r, a, b, ph)?;
        let dt = self.p.dtype;
        if self.blend.beta == 0.0 {
            if let Some(y) = convert::f32_view_mut(out, dt, &lo) {
                // The engine writes straight into the staging buffer.
                timed(&mut ph.engine, || self.engine(&sub, &a, &b, y));
                timed(&mut ph.store, || {
                    convert::scale(y, self.blend.alpha);
                    if let Some(e) = self.epilogue {
                        e(y);
                    }
                });
                return Ok(());
            }
        }
        let mut res = WorkBuf::new(lo.numel(), "the result")?;
        timed(&mut ph.engine, || self.engine(&sub, &a, &b, &mut res));
        drop((a, b));
        self.store(&mut res, &lo, out, ph)
    }

    /// Stores the packed result `res` into `out` (layout `lo`): blended, the epilogue
    /// applied, converted.
    fn store(
        &self,
        res: &mut [f32],
        lo: &Layout5,
        out: &mut [u8],
        ph: &mut Phases,
    ) -> ShimResult<()> {
        let dt = self.p.dtype;
        let t = Instant::now();
        match self.epilogue {
            None => convert::store(res, self.blend, dt, lo, out),
            Some(e) => {
                // The epilogue sees the blended result: blend first, store plainly.
                if self.blend.beta != 0.0 {
                    let mut old = WorkBuf::new(lo.numel(), "the old output")?;
                    convert::gather(out, dt, lo, &mut old);
                    convert::blend_into(&mut old, res, self.blend);
                    e(&mut old);
                    convert::store(&old, Blend::PLAIN, dt, lo, out);
                } else {
                    convert::scale(res, self.blend.alpha);
                    e(res);
                    convert::store(res, Blend::PLAIN, dt, lo, out);
                }
            }
        }
        ph.store += t.elapsed();
        Ok(())
    }

    /// Adds the weight gradient of samples `r` to `acc` (or sets it, for the first).
    pub(crate) fn accumulate(
        &self,
        r: &Range<usize>,
        a: &[u8],
        b: &[u8],
        acc: &mut [f32],
        first: bool,
        ph: &mut Phases,
    ) -> ShimResult<()> {
        let sub = ConvShape {
            n: r.len(),
            ..self.p.shape
        };
        let (a, b) = self.inputs(r, a, b, ph)?;
        if first {
            timed(&mut ph.engine, || self.engine(&sub, &a, &b, acc));
        } else {
            let mut part = WorkBuf::new(acc.len(), "a weight-gradient part")?;
            timed(&mut ph.engine, || self.engine(&sub, &a, &b, &mut part));
            timed(&mut ph.store, || convert::add_into(acc, &part));
        }
        Ok(())
    }
}

/// The host part of a convolution call: `a`, `b` are the pass's inputs and `out` its
/// output, each as the bytes of its span in the problem's dtype and layout. `out` holds
/// the old output when `beta != 0` (and the bytes between elements of a non-dense one).
///
/// `epilogue` runs on the blended result (packed canonical f32) before it is stored:
/// fused plans add a bias and an activation there. Panics where [`try_compute_on_host`]
/// fails (tests and tools).
pub fn compute_on_host(
    p: &ConvProblem,
    a: &[u8],
    b: &[u8],
    out: &mut [u8],
    alpha: f32,
    beta: f32,
    epilogue: &(dyn Fn(&mut [f32]) + Sync),
) {
    try_compute_on_host(p, a, b, out, alpha, beta, epilogue).unwrap_or_else(|e| panic!("{e}"));
}

/// [`compute_on_host`], returning `miopenStatusAllocFailed` when the host has no memory
/// for the f32 working copies (instead of aborting the process).
pub fn try_compute_on_host(
    p: &ConvProblem,
    a: &[u8],
    b: &[u8],
    out: &mut [u8],
    alpha: f32,
    beta: f32,
    epilogue: &(dyn Fn(&mut [f32]) + Sync),
) -> ShimResult<()> {
    compute_on_host_chunked(p, a, b, out, alpha, beta, Some(epilogue), 1)
}

/// [`try_compute_on_host`] cut into (at most) `chunks` pieces of the batch, as a
/// pipelined call computes them; the result is the same.
#[allow(clippy::too_many_arguments)]
pub fn compute_on_host_chunked(
    p: &ConvProblem,
    a: &[u8],
    b: &[u8],
    out: &mut [u8],
    alpha: f32,
    beta: f32,
    epilogue: Option<&(dyn Fn(&mut [f32]) + Sync)>,
    chunks: usize,
) -> ShimResult<()> {
    let host = HostConv::new(p, Blend { alpha, beta }, epilogue);
    let [oa, ob, oo] = operands(
        p,
        &ConvBuffers {
            x: std::ptr::null_mut(),
            w: std::ptr::null_mut(),
            y: std::ptr::null_mut(),
        },
        None,
    );
    let dt = p.dtype;
    let n = p.shape.n;
    let cut = [oa, ob, oo]
        .iter()
        .all(|o| !o.batched || separable(&o.layout));
    let k = if cut { chunks.clamp(1, n.max(1)) } else { 1 };
    let ranges: Vec<Range<usize>> = (0..k).map(|i| i * n / k..(i + 1) * n / k).collect();
    let mut ph = Phases::default();
    let part = |o: &Operand, r: &Range<usize>, bytes: &[u8]| -> (usize, usize) {
        if o.batched {
            chunk_span(&o.layout, r, dt)
        } else {
            (0, bytes.len())
        }
    };
    if !oo.batched && k > 1 {
        let mut acc = WorkBuf::new(oo.layout.numel(), "the weight gradient")?;
        for (i, r) in ranges.iter().enumerate() {
            let (ao, al) = part(&oa, r, a);
            let (bo, bl) = part(&ob, r, b);
            host.accumulate(
                r,
                &a[ao..ao + al],
                &b[bo..bo + bl],
                &mut acc,
                i == 0,
                &mut ph,
            )?;
        }
        let lo = oo.layout;
        return host.store(&mut acc, &lo, out, &mut ph);
    }
    for r in &ranges {
        let (ao, al) = part(&oa, r, a);
        let (bo, bl) = part(&ob, r, b);
        let (oo_, ol) = part(&oo, r, out);
        host.compute_store(
            r,
            &a[ao..ao + al],
            &b[bo..bo + bl],
            &mut out[oo_..oo_ + ol],
            &mut ph,
        )?;
    }
    Ok(())
}

/// Computes one convolution call on the CPU.
pub fn run_conv(
    rt: &'static Runtime,
    handle: miopenHandle_t,
    p: &ConvProblem,
    bufs: &ConvBuffers,
    alpha: f32,
    beta: f32,
) -> ShimResult<CallRecord> {
    run_conv_fused(rt, handle, p, bufs, alpha, beta, None)
}

/// What identifies a call to the plan tuner: everything the plan depends on.
fn plan_key(p: &ConvProblem, read_out: bool, fused: bool) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {read_out} {fused}",
        p.pass, p.dtype, p.shape, p.x, p.w, p.y
    )
    .hash(&mut h);
    h.finish()
}

/// The chunk plan of a call (see [`chunking`]), and the tuner's key and count when this
/// call is one of its trials.
fn call_plan(
    rt: &Runtime,
    p: &ConvProblem,
    ops: &[Operand; 3],
    (read_out, fused): (bool, bool),
    extra_whole: usize,
    can_overlap: bool,
) -> (chunking::Plan, Option<(u64, usize)>) {
    let dt = p.dtype;
    let n = p.shape.n.max(1);
    let one = 0..1;
    let mut staged = 0;
    let mut work = 0;
    let mut whole = extra_whole;
    for (i, o) in ops.iter().enumerate() {
        let is_out = i == 2;
        let converts = !(dt == DType::F32 && o.layout.is_packed_canonical());
        if o.batched {
            let sample = bytes_of(&chunk_layout(&o.layout, &one), dt);
            staged += sample;
            // A converted input, or the result before its store.
            if converts || (is_out && read_out) {
                work += chunk_layout(&o.layout, &one).numel() * 4;
            }
        } else {
            whole += bytes_of(&o.layout, dt);
            // Converted weights, or a weight gradient's sum and its part.
            whole += o.layout.numel() * 4 * if is_out { 2 } else { converts as usize };
        }
    }
    let copy_bytes = ops
        .iter()
        .enumerate()
        .map(|(i, o)| bytes_of(&o.layout, dt) * if i == 2 && read_out { 2 } else { 1 })
        .sum();
    let mut input = chunking::PlanInput {
        n,
        staged_per_sample: staged,
        work_per_sample: work,
        whole_bytes: whole,
        copy_bytes,
        flops: p.shape.flops(),
        weight_len: p.shape.weight_len(),
        weight_gradient: p.pass == Pass::BackwardWeights,
        threads: rt.config.threads,
        cap: rt.config.call_memory_mib << 20,
        forced: match rt.config.chunks {
            Chunks::Auto => None,
            Chunks::Fixed { chunks, .. } => Some(chunks),
        },
        max_in_flight: match rt.config.chunks {
            Chunks::Auto => None,
            Chunks::Fixed { in_flight, .. } => in_flight,
        },
        separable: ops.iter().all(|o| !o.batched || separable(&o.layout)),
        can_overlap,
        trial: None,
    };
    let mut trial = None;
    if input.forced.is_none() && input.separable {
        let key = plan_key(p, read_out, fused);
        let choice = crate::plan_tuner::TUNER.choose(key, chunking::preferred_chunks(&input));
        input.trial = Some(choice.chunks);
        trial = choice.trying.then_some((key, choice.chunks));
    }
    let plan = chunking::plan(&input);
    if let Some(need) = plan.over_cap {
        tracing::warn!(
            "one sample of this call needs {} of host memory, more than RDNA1SHIM_HOST_MEMORY_MIB={}; computing it anyway",
            crate::stats::human_bytes(need as u64),
            rt.config.call_memory_mib
        );
    }
    (plan, trial)
}

/// Computes a convolution and, for a fused plan, its bias and activation.
///
/// The batch is cut into chunks (see [`chunking`]): every chunk's inputs are queued for
/// copying to the host up front, as far as the staging in flight allows; each chunk is
/// a task of the pool that starts as soon as its copies are done, the next one's work
/// taken up as the current one's runs out (see [`crate::overlap`]), and its result is
/// queued for copying back while the next ones compute. Downloads are ordered on the
/// handle's stream, one event per chunk; uploads go on a stream of the shim's own where
/// the runtime allows (so both directions of the link are busy at once), and a staging slot is reused only
/// after its upload has left. A weight gradient sums the chunks' parts (each chunk its
/// own where the memory cap allows, else one after another) and is copied back at the
/// end. When a failure stops the call after some chunks' results were queued,
/// the error says which samples of the output may have been written.
pub fn run_conv_fused(
    rt: &'static Runtime,
    handle: miopenHandle_t,
    p: &ConvProblem,
    bufs: &ConvBuffers,
    alpha: f32,
    beta: f32,
    fused: Option<&Fused>,
) -> ShimResult<CallRecord> {
    let start = Instant::now();
    if bufs.x.is_null() || bufs.w.is_null() || bufs.y.is_null() {
        return Err(ShimError::bad_parm("a data pointer is null"));
    }
    let stream = stream_of(rt, handle)?;
    let hip = rt.hip()?;
    let skipped = skipped_rows::plan(
        p,
        beta,
        skipped_rows::Runtime {
            pitched_copies: hip.hipMemcpy2DAsync.is_some(),
            pitched_memsets: hip.hipMemset2DAsync.is_some(),
        },
    );
    let p = skipped.as_ref().map_or(p, |s| &s.problem);
    let ops = operands(p, bufs, skipped.as_ref().map(|s| s.copy));
    let [a, b, out] = ops;
    let pool = rt.pool()?;
    let dt = p.dtype;
    let mut tr = Transfers::new(hip, stream);
    // The output's old contents are needed for beta, or to keep the gaps of a
    // non-dense output intact.
    let read_out = beta != 0.0 || !out.layout.is_dense();
    let fused_bias = fused.and_then(|f| f.bias.as_ref());
    let bias_bytes = fused_bias.map_or(0, |b| bytes_of(&b.layout, dt));
    // A pass the engine can run gated is one call over the whole batch.
    let gated = crate::overlap::gated_pieces(
        p,
        [&a, &b, &out],
        (alpha, beta, fused.is_some()),
        (rt.config.chunks, rt.config.threads),
        tr.can_pipeline(),
    );
    let (plan, trial) = match &gated {
        Some(pieces) => (
            chunking::Plan {
                chunks: pieces.clone(),
                slots: pieces.len(),
                over_cap: None,
            },
            None,
        ),
        None => call_plan(
            rt,
            p,
            &ops,
            (read_out, fused.is_some()),
            bias_bytes,
            tr.can_pipeline(),
        ),
    };
    let k = plan.chunks.len();
    let mut written = 0usize;
    let result = (|| -> ShimResult<(Phases, Duration)> {
        if let Some(pieces) = &gated {
            return crate::overlap::compute_gated(
                &mut tr,
                &pool,
                p,
                [&a, &b, &out],
                pieces,
                &mut written,
            );
        }
        // Whole tensors first: they are ready when the first chunk's event is.
        let whole = |tr: &mut Transfers, o: &Operand, read: bool| -> ShimResult<Option<usize>> {
            if o.batched {
                return Ok(None);
            }
            let len = bytes_of(&o.layout, dt);
            Ok(Some(if read {
                tr.download(o.ptr, len)?
            } else {
                tr.buffer(len)?
            }))
        };
        let b_whole = whole(&mut tr, &b, true)?;
        let out_whole = whole(&mut tr, &out, read_out)?;
        let bias_buf = match fused_bias {
            Some(bias) => Some(tr.download(bias.ptr, bias_bytes)?),
            None => None,
        };
        // Staging slots for the chunks in flight.
        let longest = plan
            .chunks
            .iter()
            .max_by_key(|r| r.len())
            .cloned()
            .unwrap_or(0..0);
        let slots = |o: &Operand, tr: &mut Transfers| -> ShimResult<Vec<usize>> {
            if !o.batched {
                return Ok(Vec::new());
            }
            let (_, len) = chunk_span(&o.layout, &longest, dt);
            (0..plan.slots).map(|_| tr.buffer(len)).collect()
        };
        let (sa, sb, so) = (
            slots(&a, &mut tr)?,
            slots(&b, &mut tr)?,
            slots(&out, &mut tr)?,
        );
        let staging = Staging {
            plan: &plan,
            ops: [a, b, out],
            slots: [&sa, &sb, &so],
            b_whole,
            dt,
            read_out,
        };
        // Results go back on a stream of their own while inputs still come in.
        if k > 1 && out.batched {
            tr.with_side();
        }
        let mut events = Vec::with_capacity(k);
        for i in 0..plan.slots.min(k) {
            events.push(staging.enqueue(&mut tr, i)?);
        }
        let mut ph = Phases::default();
        let mut wait_in = Duration::ZERO;
        // A fused bias was queued before the first chunk: ready when its event is.
        let mut bias_vals: Option<WorkBuf> = None;
        if let (Some(bias), Some(buf)) = (fused_bias, bias_buf) {
            let t = tr.wait_time;
            tr.wait(events[0])?;
            wait_in += tr.wait_time - t;
            let bytes = tr.bytes(buf);
            let lb = bias.layout;
            let v = timed(&mut ph.convert, || {
                pool.install(|| f32_input(bytes, dt, &lb, "the fused bias"))
            })?;
            let mut owned = WorkBuf::new(v.len(), "the fused bias")?;
            owned.copy_from_slice(&v);
            bias_vals = Some(owned);
        }
        let activation = fused.and_then(|f| f.activation);
        let lo = out.layout;
        let bias_ref = bias_vals.as_deref();
        let epilogue = |res: &mut [f32]| {
            if let Some(bias) = bias_ref {
                let plane = lo.dims[2] * lo.dims[3] * lo.dims[4];
                let c = lo.dims[1];
                res.par_chunks_mut(plane)
                    .enumerate()
                    .for_each(|(j, ch)| ch.iter_mut().for_each(|v| *v += bias[j % c]));
            }
            if let Some(act) = activation {
                act.apply_all(res);
            }
        };
        let host = HostConv::new(
            p,
            Blend { alpha, beta },
            fused.map(|_| &epilogue as &(dyn Fn(&mut [f32]) + Sync)),
        );
        if out.batched {
            let (chunk_ph, waited) = staging.compute_overlapped(
                &mut tr,
                &pool,
                &host,
                events,
                Sink::Upload,
                &mut written,
            )?;
            ph.add(&chunk_ph);
            wait_in += waited;
            return Ok((ph, wait_in));
        }
        // A weight gradient: the chunks' parts summed, stored once at the end.
        let ob_idx = out_whole.expect("whole output staged");
        let wlen = out.layout.numel();
        let cap = rt.config.call_memory_mib << 20;
        if k > 1 && (k - 2) * wlen * 4 <= cap / 4 {
            // A part for each chunk, so that the chunks are computed at once too.
            let mut parts = (0..k)
                .map(|_| WorkBuf::new(wlen, "a weight-gradient part"))
                .collect::<ShimResult<Vec<_>>>()?;
            let sink = Sink::Parts(parts.iter_mut().map(|b| Some(&mut b[..])).collect());
            let (chunk_ph, waited) =
                staging.compute_overlapped(&mut tr, &pool, &host, events, sink, &mut written)?;
            ph.add(&chunk_ph);
            wait_in += waited;
            let (sum, rest) = parts.split_first_mut().expect("k > 1");
            timed(&mut ph.store, || pool.install(|| sum_parts(sum, rest)));
            let ob = tr.bytes_mut(ob_idx);
            pool.install(|| host.store(sum, &lo, ob, &mut ph))?;
            tr.upload(out.ptr, ob_idx)?;
            return Ok((ph, wait_in));
        }
        let mut acc: Option<WorkBuf> = None;
        for i in 0..k {
            let t = tr.wait_time;
            tr.wait(events[i])?;
            wait_in += tr.wait_time - t;
            let r = plan.chunks[i].clone();
            let s = i % plan.slots;
            let a_len = chunk_span(&a.layout, &r, dt).1;
            let b_len = chunk_span(&b.layout, &r, dt).1;
            if k == 1 {
                let ([ab, bb], [ob]) = tr.views([sa[s], sb[s]], [ob_idx]);
                pool.install(|| host.compute_store(&r, &ab[..a_len], &bb[..b_len], ob, &mut ph))?;
            } else {
                if acc.is_none() {
                    acc = Some(WorkBuf::new(wlen, "the weight gradient")?);
                }
                let sum = acc.as_mut().expect("allocated above");
                let ([ab, bb], []) = tr.views([sa[s], sb[s]], []);
                pool.install(|| {
                    host.accumulate(&r, &ab[..a_len], &bb[..b_len], sum, i == 0, &mut ph)
                })?;
                if i + 1 == k {
                    let ob = tr.bytes_mut(ob_idx);
                    pool.install(|| host.store(sum, &lo, ob, &mut ph))?;
                }
            }
            if i + plan.slots < k {
                events.push(staging.enqueue(&mut tr, i + plan.slots)?);
            }
        }
        if let Some(ob) = out_whole {
            tr.upload(out.ptr, ob)?;
        }
        Ok((ph, wait_in))
    })();
    let (ph, wait_in) = result.map_err(|e| {
        if written > 0 {
            e.with_context(&format!(
                "samples 0..{written} of {} of the output may have been written before the failure; the rest is unchanged",
                p.shape.n
            ))
        } else {
            e
        }
    })?;
    let t = tr.wait_time;
    tr.sync()?;
    let wait_out = tr.wait_time - t;
    if let Some((key, chunks)) = trial {
        let tuner = &crate::plan_tuner::TUNER;
        if let Some(best) = tuner.report(key, chunks, start.elapsed()) {
            let tried: Vec<String> = tuner
                .trials(key)
                .iter()
                .map(|(c, t)| format!("{c}: {:.3} ms", t.map_or(0.0, |t| t.as_secs_f64() * 1e3)))
                .collect();
            tracing::debug!(
                "chunk plan of {}: {best} chunks, the fastest of [{}]",
                crate::describe::describe(p),
                tried.join(", ")
            );
        }
    }
    Ok(CallRecord {
        compute: ph.convert + ph.engine + ph.store,
        copy: tr.time(),
        bytes_to_host: tr.bytes_to_host,
        bytes_to_device: tr.bytes_to_device,
        flops: p.shape.flops(),
        total: start.elapsed(),
        wait_in,
        wait_out,
        enqueue: tr.enqueue_time,
        convert: ph.convert,
        engine: ph.engine,
        store: ph.store,
        chunks: k as u32,
        slots: plan.slots as u32,
        row_step: skipped.as_ref().map_or(1, |s| s.copy.step() as u32),
        gated: gated.is_some(),
    })
}

/// A zeroed buffer of `n` f32 values, or `miopenStatusAllocFailed` when the host cannot
/// provide it (`vec!` would abort the whole process instead).
pub fn host_vec(n: usize, what: &str) -> ShimResult<Vec<f32>> {
    crate::host_mem::fresh(n, what)
}

/// The tensor `l` in `bytes`, gathered into a packed f32 buffer obtained fallibly.
fn gathered(bytes: &[u8], dt: DType, l: &Layout5, what: &str) -> ShimResult<Vec<f32>> {
    let mut v = host_vec(l.numel(), what)?;
    convert::gather(bytes, dt, l, &mut v);
    Ok(v)
}

/// A bias tensor `[1, C, 1, ...]` (or `[C]`-like with all other dims 1) for data `data`.
fn bias_channels(bias: &TensorDesc, data: &TensorDesc) -> ShimResult<(usize, usize)> {
    if data.dims.len() < 2 {
        return Err(ShimError::bad_parm(format!(
            "tensor {:?} has no channel dimension",
            data.dims
        )));
    }
    let c = data.dims[1];
    let ok = bias.dims.len() == data.dims.len()
        && bias.dims[1] == c
        && bias.dims.iter().enumerate().all(|(i, &d)| i == 1 || d == 1);
    if !ok {
        return Err(ShimError::bad_parm(format!(
            "bias {:?} does not match data {:?} (expected [1, {c}, 1, ...])",
            bias.dims, data.dims
        )));
    }
    if bias.dtype != data.dtype {
        return Err(ShimError::bad_parm("bias and data types differ"));
    }
    Ok((c, bias.strides[1]))
}

fn layout_any(t: &TensorDesc) -> ShimResult<Layout5> {
    if !(3..=5).contains(&t.dims.len()) {
        return Err(ShimError::not_implemented(format!(
            "{}-dimensional tensors",
            t.dims.len()
        )));
    }
    Ok(t.layout5())
}

/// `miopenConvolutionForwardBias`: `y = alpha * (y + b) + beta * y` (MIOpen's OpTensor
/// with y as both first operand and destination).
pub fn run_forward_bias(
    rt: &'static Runtime,
    handle: miopenHandle_t,
    bdesc: &TensorDesc,
    b: *const c_void,
    ydesc: &TensorDesc,
    y: *mut c_void,
    alpha: f32,
    beta: f32,
) -> ShimResult<CallRecord> {
    let (c, bstride) = bias_channels(bdesc, ydesc)?;
    if b.is_null() || y.is_null() {
        return Err(ShimError::bad_parm("a data pointer is null"));
    }
    let ly = layout_any(ydesc)?;
    if !ly.is_non_overlapping() {
        return Err(ShimError::bad_parm("output tensor has overlapping strides"));
    }
    let dt = ydesc.dtype;
    let lb = Layout5 {
        dims: [1, c, 1, 1, 1],
        strides: [0, bstride, 0, 0, 0],
    };
    let stream = stream_of(rt, handle)?;
    let hip = rt.hip()?;
    // Host work runs on the shim's pool (rebuilt after fork), never on rayon's global one.
    let pool = rt.pool()?;
    let mut tr = Transfers::new(hip, stream);
    let bb = tr.download(b, bytes_of(&lb, dt))?;
    let by = tr.download(y, bytes_of(&ly, dt))?;
    tr.sync()?;
    let t = Instant::now();
    let ([bias_bytes], [y_bytes]) = tr.views([bb], [by]);
    pool.install(|| -> ShimResult<()> {
        let bias = gathered(bias_bytes, dt, &lb, "the bias")?;
        let mut vals = gathered(y_bytes, dt, &ly, "the output")?;
        let plane = ly.dims[2] * ly.dims[3] * ly.dims[4];
        for (i, v) in vals.iter_mut().enumerate() {
            let ch = (i / plane) % c;
            *v = alpha * (*v + bias[ch]) + beta * *v;
        }
        convert::store(&vals, Blend::PLAIN, dt, &ly, y_bytes);
        Ok(())
    })?;
    let compute = t.elapsed();
    tr.upload(y, by)?;
    tr.sync()?;
    Ok(CallRecord {
        compute,
        copy: tr.time(),
        bytes_to_host: tr.bytes_to_host,
        bytes_to_device: tr.bytes_to_device,
        flops: ly.numel() as f64,
        ..Default::default()
    })
}

/// `miopenConvolutionBackwardBias`: `db[c] = alpha * sum(dy[:, c, ...]) + beta * db[c]`.
pub fn run_backward_bias(
    rt: &'static Runtime,
    handle: miopenHandle_t,
    dydesc: &TensorDesc,
    dy: *const c_void,
    dbdesc: &TensorDesc,
    db: *mut c_void,
    alpha: f32,
    beta: f32,
) -> ShimResult<CallRecord> {
    let (c, bstride) = bias_channels(dbdesc, dydesc)?;
    if dy.is_null() || db.is_null() {
        return Err(ShimError::bad_parm("a data pointer is null"));
    }
    let ly = layout_any(dydesc)?;
    let dt = dydesc.dtype;
    let lb = Layout5 {
        dims: [1, c, 1, 1, 1],
        strides: [0, bstride, 0, 0, 0],
    };
    if !lb.is_non_overlapping() {
        return Err(ShimError::bad_parm(format!(
            "output tensor db has overlapping strides {:?}",
            dbdesc.strides
        )));
    }
    let stream = stream_of(rt, handle)?;
    let hip = rt.hip()?;
    // Host work runs on the shim's pool (rebuilt after fork), never on rayon's global one.
    let pool = rt.pool()?;
    let mut tr = Transfers::new(hip, stream);
    let by = tr.download(dy, bytes_of(&ly, dt))?;
    let bb = if beta != 0.0 || !lb.is_dense() {
        tr.download(db, bytes_of(&lb, dt))?
    } else {
        tr.buffer(bytes_of(&lb, dt))?
    };
    tr.sync()?;
    let t = Instant::now();
    let ([dy_bytes], [db_bytes]) = tr.views([by], [bb]);
    pool.install(|| -> ShimResult<()> {
        let vals = gathered(dy_bytes, dt, &ly, "the gradient")?;
        let plane = ly.dims[2] * ly.dims[3] * ly.dims[4];
        let mut sums = Vec::new();
        sums.try_reserve_exact(c).map_err(|_| {
            ShimError::alloc_failed(format!("cannot allocate {c} sums of host memory"))
        })?;
        sums.resize(c, 0f64);
        for (i, v) in vals.iter().enumerate() {
            sums[(i / plane) % c] += *v as f64;
        }
        let mut out = host_vec(c, "the bias gradient")?;
        for (o, s) in out.iter_mut().zip(&sums) {
            *o = *s as f32;
        }
        convert::store(&out, Blend { alpha, beta }, dt, &lb, db_bytes);
        Ok(())
    })?;
    let compute = t.elapsed();
    tr.upload(db, bb)?;
    tr.sync()?;
    Ok(CallRecord {
        compute,
        copy: tr.time(),
        bytes_to_host: tr.bytes_to_host,
        bytes_to_device: tr.bytes_to_device,
        flops: ly.numel() as f64,
        ..Default::default()
    })
}

/// The timing part of a convolution call's log line: the whole call and its GFLOP/s,
/// how it was cut, and where the time went.
pub fn timing_line(p: &ConvProblem, r: &CallRecord) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "{:.3} ms ({:.1} GFLOP/s) chunks={} in_flight={}{}{}: engine {:.3} ms ({:.1} GFLOP/s) convert {:.3} ms store {:.3} ms waiting for inputs {:.3} ms for results {:.3} ms queueing {:.3} ms; {} B in, {} B out",
        ms(r.total),
        gflops(&p.shape, r.total.as_secs_f64()),
        r.chunks,
        r.slots,
        if r.gated { " gated" } else { "" },
        if r.row_step > 1 {
            format!(" input_rows=1/{}", r.row_step)
        } else {
            String::new()
        },
        ms(r.engine),
        gflops(&p.shape, r.engine.as_secs_f64()),
        ms(r.convert),
        ms(r.store),
        ms(r.wait_in),
        ms(r.wait_out),
        ms(r.enqueue),
        r.bytes_to_host,
        r.bytes_to_device
    )
}

/// Shape used by flop counts in logs.
pub fn gflops(shape: &ConvShape, secs: f64) -> f64 {
    if secs > 0.0 {
        shape.flops() / secs * 1e-9
    } else {
        0.0
    }
}
