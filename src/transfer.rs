//! Host staging buffers and stream-ordered copies between device and host.
//!
//! Every download is `hipMemcpyAsync` on the handle's stream, so it runs after the work
//! the application queued before the call; `record` puts an event behind the copies
//! queued so far and `wait` blocks until they are done, so a pipelined call can compute
//! one chunk while the next one's copies are in flight; `sync` waits for everything.
//! A pipelined call may send its uploads on a second stream of its own (`with_side`),
//! so that results go to the device while inputs still come from it (PCIe and the GPU's
//! copy engines are full duplex); `record_upload` and `order_after` order the two.
//! Staging buffers are pinned (`hipHostMalloc`) when the runtime allows it, kept in a
//! cache bounded by the per-call memory cap for reuse across calls, and 64-byte aligned
//! pageable memory otherwise. A device pointer is never read or written by the host.

use std::ffi::c_void;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{ShimError, ShimResult};
use crate::ffi::hip::*;
use crate::real::hip::Hip;

/// Alignment of pageable staging (pinned memory is page-aligned).
const PAGEABLE_ALIGN: usize = 64;

struct Pinned {
    ptr: *mut u8,
    cap: usize,
}
// SAFETY: pinned host memory is plain memory owned by whoever holds the struct.
unsafe impl Send for Pinned {}

/// Pinned buffers kept for later calls, least recently used first, within
/// `RDNA1SHIM_HOST_MEMORY_MIB` in all.
static PINNED_CACHE: Mutex<Vec<Pinned>> = Mutex::new(Vec::new());

/// Pageable host memory of `len` bytes, 64-byte aligned, zeroed by the allocator (fresh
/// pages of a large block are not touched, so a huge buffer costs nothing until used).
struct Pageable {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}
// SAFETY: as Pinned.
unsafe impl Send for Pageable {}

impl Pageable {
    fn new(len: usize) -> Option<Pageable> {
        let layout = std::alloc::Layout::from_size_align(len.max(1), PAGEABLE_ALIGN).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        (!ptr.is_null()).then_some(Pageable { ptr, layout })
    }
}

impl Drop for Pageable {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Host memory holding one tensor's bytes (or one chunk's).
pub struct HostBuffer {
    inner: Inner,
    len: usize,
}

enum Inner {
    Pinned(Pinned, &'static Hip),
    Pageable(Pageable),
    Empty,
}

impl HostBuffer {
    /// A buffer of `len` bytes: a cached pinned one, a new pinned one, or pageable memory.
    pub fn new(hip: &'static Hip, len: usize) -> ShimResult<Self> {
        if let Ok(mut cache) = PINNED_CACHE.lock() {
            let best = cache
                .iter()
                .enumerate()
                .filter(|(_, p)| p.cap >= len)
                .min_by_key(|(_, p)| p.cap)
                .map(|(i, _)| i);
            if let Some(i) = best {
                let p = cache.remove(i);
                return Ok(HostBuffer {
                    inner: Inner::Pinned(p, hip),
                    len,
                });
            }
        }
        if let Some(alloc) = hip.hipHostMalloc {
            let mut ptr: *mut c_void = std::ptr::null_mut();
            // SAFETY: out-pointer to a local; size in bytes.
            let e = unsafe { alloc(&mut ptr, len.max(1), hipHostMallocDefault) };
            if e == hipSuccess && !ptr.is_null() {
                return Ok(HostBuffer {
                    inner: Inner::Pinned(
                        Pinned {
                            ptr: ptr as *mut u8,
                            cap: len.max(1),
                        },
                        hip,
                    ),
                    len,
                });
            }
            tracing::debug!(
                "hipHostMalloc({len}) failed ({}); using pageable memory",
                hip.error_text(e)
            );
        }
        Ok(HostBuffer {
            inner: Inner::Pageable(Pageable::new(len).ok_or_else(|| {
                ShimError::alloc_failed(format!("cannot allocate {len} bytes of host memory"))
            })?),
            len,
        })
    }

    pub fn is_pinned(&self) -> bool {
        matches!(self.inner, Inner::Pinned(..))
    }

    fn base(&self) -> *mut u8 {
        match &self.inner {
            Inner::Pinned(p, _) => p.ptr,
            Inner::Pageable(p) => p.ptr,
            Inner::Empty => std::ptr::NonNull::dangling().as_ptr(),
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: base holds at least len bytes owned by this buffer.
        unsafe { std::slice::from_raw_parts(self.base(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.base(), self.len) }
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        if let Inner::Pinned(p, hip) = std::mem::replace(&mut self.inner, Inner::Empty) {
            let free = |p: Pinned| {
                if let Some(free) = hip.hipHostFree {
                    // SAFETY: ptr came from hipHostMalloc and is no longer used.
                    unsafe { free(p.ptr as *mut c_void) };
                }
            };
            let limit = crate::config::call_memory_bytes();
            match PINNED_CACHE.lock() {
                // The buffer just used is kept, the least recently used ones freed to
                // make room: refusing it when the cache was full left a cache of other
                // sizes (a chunked call's slots) that turned every larger buffer away,
                // so each call of a larger tensor allocated, and faulted in, new
                // pinned memory.
                Ok(mut cache) if p.cap <= limit => {
                    let mut cached: usize = cache.iter().map(|c| c.cap).sum();
                    while cached + p.cap > limit && !cache.is_empty() {
                        let old = cache.remove(0);
                        cached -= old.cap;
                        free(old);
                    }
                    cache.push(p);
                }
                _ => free(p),
            }
        }
    }
}

/// A recorded point in the stream: everything queued before it is done once it is.
#[derive(Clone, Copy)]
pub struct Event(hipEvent_t);
// SAFETY: an event handle is an opaque token of the runtime, whose calls are
// thread-safe; it stays alive (owned by its `Transfers`) until the streams are idle.
unsafe impl Send for Event {}
// SAFETY: as above.
unsafe impl Sync for Event {}

/// Waits for events from any thread (a chunk's task on the pool waits for its own
/// copies); the events must belong to a `Transfers` that outlives the wait.
#[derive(Clone, Copy)]
pub struct Waiter(&'static Hip);

impl Waiter {
    /// Blocks until everything queued before `ev` was recorded is done; returns how long
    /// it blocked. An event without a record (the runtime has none) is already done:
    /// the owner synchronizes the stream instead.
    pub fn wait(&self, ev: Event) -> ShimResult<Duration> {
        let Some(sync) = self.0.hipEventSynchronize.filter(|_| !ev.0.is_null()) else {
            return Ok(Duration::ZERO);
        };
        let t = Instant::now();
        // SAFETY: an event recorded by a live `Transfers`.
        let e = unsafe { sync(ev.0) };
        let waited = t.elapsed();
        if e == hipSuccess {
            Ok(waited)
        } else {
            Err(ShimError::internal(format!(
                "hipEventSynchronize failed: {}",
                self.0.error_text(e)
            )))
        }
    }
}

/// A staging buffer's memory as a raw range, for a task on another thread that reads
/// or writes it while the owning `Transfers` queues copies of other buffers.
#[derive(Clone, Copy)]
pub struct RawBuf {
    ptr: *mut u8,
    len: usize,
}
// SAFETY: plain host memory; who may touch it when is the users' contract (`slice`).
unsafe impl Send for RawBuf {}
// SAFETY: as above.
unsafe impl Sync for RawBuf {}

impl RawBuf {
    /// The first `len` bytes.
    ///
    /// # Safety
    /// The owning `Transfers` is alive, no copy into the buffer is queued or running,
    /// and nothing writes the bytes while the slice lives.
    pub unsafe fn slice<'a>(&self, len: usize) -> &'a [u8] {
        assert!(len <= self.len);
        std::slice::from_raw_parts(self.ptr, len)
    }

    /// The first `len` bytes, exclusively.
    ///
    /// # Safety
    /// As [`RawBuf::slice`], and nothing else reads or writes the bytes (no copy out
    /// of the buffer either) while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut<'a>(&self, len: usize) -> &'a mut [u8] {
        assert!(len <= self.len);
        std::slice::from_raw_parts_mut(self.ptr, len)
    }
}

/// Events kept for reuse across calls (creating one costs a runtime call).
static EVENT_CACHE: Mutex<Vec<usize>> = Mutex::new(Vec::new());
const EVENT_CACHE_MAX: usize = 256;

/// The upload stream made for each handle stream (created once, kept for the process).
static SIDE_STREAMS: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
const SIDE_STREAMS_MAX: usize = 64;

/// The upload stream of `stream`, made on first use; `None` when the runtime cannot
/// make one (the uploads then share the handle's stream).
fn side_stream(hip: &Hip, stream: hipStream_t) -> Option<hipStream_t> {
    let create = hip
        .hipStreamCreateWithFlags
        .filter(|_| hip.has_side_streams())?;
    let mut streams = SIDE_STREAMS.lock().ok()?;
    if let Some((_, side)) = streams.iter().find(|(s, _)| *s == stream as usize) {
        return Some(*side as hipStream_t);
    }
    if streams.len() >= SIDE_STREAMS_MAX {
        return None;
    }
    let mut side: hipStream_t = std::ptr::null_mut();
    // SAFETY: out-pointer to a local.
    let e = unsafe { create(&mut side, hipStreamNonBlocking) };
    if e != hipSuccess || side.is_null() {
        tracing::debug!(
            "hipStreamCreateWithFlags failed ({}); uploads share the handle's stream",
            hip.error_text(e)
        );
        return None;
    }
    streams.push((stream as usize, side as usize));
    Some(side)
}

/// Copies of one call on one stream, with their byte counts and time.
///
/// The staging buffers belong to the `Transfers`, so none is released while a copy
/// into or out of it may still be queued: dropping a `Transfers` with copies in flight
/// waits for the stream first. A `Transfers` may be handed to (or, behind a lock,
/// shared with) the pool's threads: HIP's calls are thread-safe.
pub struct Transfers {
    hip: &'static Hip,
    stream: hipStream_t,
    /// The stream uploads go on: the handle's, or one of the shim's own.
    up: hipStream_t,
    pending: bool,
    buffers: Vec<HostBuffer>,
    events: Vec<hipEvent_t>,
    pub bytes_to_host: u64,
    pub bytes_to_device: u64,
    /// Time spent queueing copies and events.
    pub enqueue_time: Duration,
    /// Time spent blocked in `wait` and `sync`.
    pub wait_time: Duration,
}

// SAFETY: the streams and events are tokens of the HIP runtime, whose calls may come
// from any thread; the staging buffers are plain host memory owned by the struct.
unsafe impl Send for Transfers {}

impl Transfers {
    pub fn new(hip: &'static Hip, stream: hipStream_t) -> Self {
        Transfers {
            hip,
            stream,
            up: stream,
            pending: false,
            buffers: Vec::new(),
            events: Vec::new(),
            bytes_to_host: 0,
            bytes_to_device: 0,
            enqueue_time: Duration::ZERO,
            wait_time: Duration::ZERO,
        }
    }

    /// Sends the uploads on a stream of their own from now on, where the runtime allows.
    pub fn with_side(&mut self) {
        if let Some(side) = side_stream(self.hip, self.stream) {
            self.up = side;
        }
    }

    /// Whether uploads have a stream of their own.
    pub fn has_side(&self) -> bool {
        self.up != self.stream
    }

    /// All time spent in HIP calls.
    pub fn time(&self) -> Duration {
        self.enqueue_time + self.wait_time
    }

    fn hip_call(&self, what: &str, e: hipError_t) -> ShimResult<()> {
        if e == hipSuccess {
            Ok(())
        } else {
            Err(ShimError::internal(format!(
                "{what} failed: {}",
                self.hip.error_text(e)
            )))
        }
    }

    /// A new staging buffer of `len` bytes, owned by these transfers; returns its index.
    pub fn buffer(&mut self, len: usize) -> ShimResult<usize> {
        self.buffers.push(HostBuffer::new(self.hip, len)?);
        Ok(self.buffers.len() - 1)
    }

    pub fn bytes(&self, buf: usize) -> &[u8] {
        self.buffers[buf].as_slice()
    }

    pub fn bytes_mut(&mut self, buf: usize) -> &mut [u8] {
        self.buffers[buf].as_mut_slice()
    }

    /// Staging buffers by index: the `read` ones shared, the `write` ones exclusive.
    ///
    /// # Panics
    /// If an index is out of range or a written buffer appears twice or is also read.
    pub fn views<const R: usize, const W: usize>(
        &mut self,
        read: [usize; R],
        write: [usize; W],
    ) -> ([&[u8]; R], [&mut [u8]; W]) {
        let n = self.buffers.len();
        for (i, w) in write.iter().enumerate() {
            assert!(*w < n && !read.contains(w) && !write[..i].contains(w));
        }
        assert!(read.iter().all(|r| *r < n));
        let bufs = self.buffers.as_mut_ptr();
        // SAFETY: indices are in bounds; every written buffer is distinct from every
        // other index, so no mutable slice aliases another slice.
        unsafe {
            (
                read.map(|r| (*bufs.add(r)).as_slice()),
                write.map(|w| (*bufs.add(w)).as_mut_slice()),
            )
        }
    }

    /// Staging buffer `buf` as a raw range for a task on another thread.
    pub fn raw(&mut self, buf: usize) -> RawBuf {
        let len = self.buffers[buf].len;
        RawBuf {
            ptr: self.buffers[buf].base(),
            len,
        }
    }

    /// A waiter for this call's events, usable from other threads.
    pub fn waiter(&self) -> Waiter {
        Waiter(self.hip)
    }

    /// Queues a copy of `len` bytes at device address `src` into a new staging buffer and
    /// returns its index. The contents are valid after `sync` or a `wait` recorded later.
    pub fn download(&mut self, src: *const c_void, len: usize) -> ShimResult<usize> {
        let buf = self.buffer(len)?;
        self.download_into(buf, src, len)?;
        Ok(buf)
    }

    /// Queues a copy of `len` bytes at device address `src` into the start of staging
    /// buffer `buf`.
    pub fn download_into(&mut self, buf: usize, src: *const c_void, len: usize) -> ShimResult<()> {
        self.download_at(buf, 0, src, len)
    }

    /// Queues a copy of `len` bytes at device address `src` into staging buffer `buf`
    /// from byte `at` on.
    pub fn download_at(
        &mut self,
        buf: usize,
        at: usize,
        src: *const c_void,
        len: usize,
    ) -> ShimResult<()> {
        assert!(at + len <= self.buffers[buf].len);
        // SAFETY (pointer arithmetic only): inside the buffer.
        let dst = unsafe { self.buffers[buf].base().add(at) } as *mut c_void;
        let t = Instant::now();
        // SAFETY: dst holds len bytes owned by self; it is not released before the stream
        // is synchronized (see Drop).
        let e =
            unsafe { (self.hip.hipMemcpyAsync)(dst, src, len, hipMemcpyDeviceToHost, self.stream) };
        self.pending = true;
        self.enqueue_time += t.elapsed();
        self.hip_call("hipMemcpyAsync (device to host)", e)?;
        self.bytes_to_host += len as u64;
        Ok(())
    }

    /// Queues a copy of the `len / width` rows of `width` bytes at device address `src`,
    /// `pitch` bytes apart, packed into the start of staging buffer `buf`.
    // The device address is handed to HIP, never dereferenced by the host.
    #[allow(clippy::not_unsafe_ptr_arg_deref)]
    pub fn download_rows_into(
        &mut self,
        buf: usize,
        src: *const c_void,
        rows: (usize, usize),
        len: usize,
    ) -> ShimResult<()> {
        self.pitched(true, src as *mut c_void, buf, rows, len)
    }

    /// Queues a copy of the first `len` bytes of staging buffer `buf`, rows of `width`
    /// bytes, to device address `dst` with the rows `pitch` bytes apart.
    // The device address is handed to HIP, never dereferenced by the host.
    #[allow(clippy::not_unsafe_ptr_arg_deref)]
    pub fn upload_rows_from(
        &mut self,
        dst: *mut c_void,
        buf: usize,
        rows: (usize, usize),
        len: usize,
    ) -> ShimResult<()> {
        self.pitched(false, dst, buf, rows, len)
    }

    /// A pitched copy between the first `len` bytes of staging buffer `buf` (rows of
    /// `width` bytes, packed) and rows `pitch` bytes apart at device address `device`:
    /// to the host on the handle's stream, or to the device on the uploads' one.
    fn pitched(
        &mut self,
        to_host: bool,
        device: *mut c_void,
        buf: usize,
        (width, pitch): (usize, usize),
        len: usize,
    ) -> ShimResult<()> {
        assert!(
            len <= self.buffers[buf].len
                && width > 0
                && len.is_multiple_of(width)
                && width <= pitch
        );
        let copy = self.hip.hipMemcpy2DAsync.ok_or_else(|| {
            ShimError::internal("hipMemcpy2DAsync is missing from the HIP runtime")
        })?;
        let host = self.buffers[buf].base() as *mut c_void;
        let (dst, dpitch, src, spitch) = if to_host {
            (host, width, device as *const c_void, pitch)
        } else {
            (device, pitch, host as *const c_void, width)
        };
        let (kind, stream, what) = if to_host {
            (
                hipMemcpyDeviceToHost,
                self.stream,
                "hipMemcpy2DAsync (device to host)",
            )
        } else {
            (
                hipMemcpyHostToDevice,
                self.up,
                "hipMemcpy2DAsync (host to device)",
            )
        };
        let t = Instant::now();
        // SAFETY: the staging buffer holds len bytes owned by self until the streams are
        // synchronized (see Drop); the rows lie inside the caller's device tensor.
        let e = unsafe { copy(dst, dpitch, src, spitch, width, len / width, kind, stream) };
        self.pending = true;
        self.enqueue_time += t.elapsed();
        self.hip_call(what, e)?;
        if to_host {
            self.bytes_to_host += len as u64;
        } else {
            self.bytes_to_device += len as u64;
        }
        Ok(())
    }

    /// Queues zeroing `rows` rows of `width` bytes at device address `dst`, `pitch`
    /// bytes apart, on the uploads' stream.
    // The device address is handed to HIP, never dereferenced by the host.
    #[allow(clippy::not_unsafe_ptr_arg_deref)]
    pub fn zero_rows(
        &mut self,
        dst: *mut c_void,
        (width, pitch): (usize, usize),
        rows: usize,
    ) -> ShimResult<()> {
        let set = self.hip.hipMemset2DAsync.ok_or_else(|| {
            ShimError::internal("hipMemset2DAsync is missing from the HIP runtime")
        })?;
        let t = Instant::now();
        // SAFETY: the rows lie inside the caller's device tensor.
        let e = unsafe { set(dst, pitch, 0, width, rows, self.up) };
        self.pending = true;
        self.enqueue_time += t.elapsed();
        self.hip_call("hipMemset2DAsync", e)
    }

    /// Queues a copy of staging buffer `buf` to device address `dst`.
    pub fn upload(&mut self, dst: *mut c_void, buf: usize) -> ShimResult<()> {
        let len = self.buffers[buf].len;
        self.upload_from(dst, buf, len)
    }

    /// Queues a copy of the first `len` bytes of staging buffer `buf` to device address
    /// `dst`.
    pub fn upload_from(&mut self, dst: *mut c_void, buf: usize, len: usize) -> ShimResult<()> {
        self.upload_at(dst, buf, 0, len)
    }

    /// Queues a copy of `len` bytes of staging buffer `buf`, from byte `at` on, to device
    /// address `dst`.
    pub fn upload_at(
        &mut self,
        dst: *mut c_void,
        buf: usize,
        at: usize,
        len: usize,
    ) -> ShimResult<()> {
        assert!(at + len <= self.buffers[buf].len);
        // SAFETY (pointer arithmetic only): inside the buffer.
        let src = unsafe { self.buffers[buf].base().add(at) } as *const c_void;
        let t = Instant::now();
        // SAFETY: src holds len bytes owned by self until the streams are synchronized.
        let e = unsafe { (self.hip.hipMemcpyAsync)(dst, src, len, hipMemcpyHostToDevice, self.up) };
        self.pending = true;
        self.enqueue_time += t.elapsed();
        self.hip_call("hipMemcpyAsync (host to device)", e)?;
        self.bytes_to_device += len as u64;
        Ok(())
    }

    /// Whether `record`/`wait` are available (the runtime has events).
    pub fn can_pipeline(&self) -> bool {
        self.hip.has_events()
    }

    /// Records an event behind everything queued on the handle's stream so far. Without
    /// events in the runtime, waiting for the returned one waits for everything.
    pub fn record(&mut self) -> ShimResult<Event> {
        self.record_on(self.stream)
    }

    /// Records an event behind the uploads queued so far.
    pub fn record_upload(&mut self) -> ShimResult<Event> {
        self.record_on(self.up)
    }

    /// Makes the handle's stream wait for `ev` (an upload event) before what is queued on
    /// it next. Nothing to do when uploads share the stream.
    pub fn order_after(&mut self, ev: Event) -> ShimResult<()> {
        let Some(wait) = self.hip.hipStreamWaitEvent.filter(|_| self.has_side()) else {
            return Ok(());
        };
        if ev.0.is_null() {
            return Ok(());
        }
        let t = Instant::now();
        // SAFETY: the handle's stream and an event these transfers recorded.
        let e = unsafe { wait(self.stream, ev.0, 0) };
        self.enqueue_time += t.elapsed();
        self.hip_call("hipStreamWaitEvent", e)
    }

    fn record_on(&mut self, stream: hipStream_t) -> ShimResult<Event> {
        let (Some(create), Some(record)) =
            (self.hip.hipEventCreateWithFlags, self.hip.hipEventRecord)
        else {
            return Ok(Event(std::ptr::null_mut()));
        };
        let t = Instant::now();
        let cached = EVENT_CACHE.lock().ok().and_then(|mut c| c.pop());
        let ev = match cached {
            Some(e) => e as hipEvent_t,
            None => {
                let mut e: hipEvent_t = std::ptr::null_mut();
                // SAFETY: out-pointer to a local.
                let r = unsafe { create(&mut e, hipEventDisableTiming) };
                self.enqueue_time += t.elapsed();
                self.hip_call("hipEventCreateWithFlags", r)?;
                e
            }
        };
        self.events.push(ev);
        // SAFETY: a live event and one of the call's streams.
        let r = unsafe { record(ev, stream) };
        self.pending = true;
        self.enqueue_time += t.elapsed();
        self.hip_call("hipEventRecord", r)?;
        Ok(Event(ev))
    }

    /// Blocks until everything queued before `ev` was recorded is done.
    pub fn wait(&mut self, ev: Event) -> ShimResult<()> {
        if ev.0.is_null() || self.hip.hipEventSynchronize.is_none() {
            return self.sync();
        }
        let t = Instant::now();
        let r = self.waiter().wait(ev);
        self.wait_time += t.elapsed();
        r.map(drop)
    }

    /// Waits until everything queued on the handle's stream (and the uploads' stream),
    /// ours included, has finished. When a wait fails, our copies count as still queued
    /// (see Drop).
    pub fn sync(&mut self) -> ShimResult<()> {
        let t = Instant::now();
        // SAFETY: the handle's stream (null is the default stream) and the uploads' one.
        let mut e = unsafe { (self.hip.hipStreamSynchronize)(self.stream) };
        if e == hipSuccess && self.has_side() {
            // SAFETY: as above.
            e = unsafe { (self.hip.hipStreamSynchronize)(self.up) };
        }
        self.wait_time += t.elapsed();
        self.hip_call("hipStreamSynchronize", e)?;
        self.pending = false;
        Ok(())
    }
}

impl Drop for Transfers {
    fn drop(&mut self) {
        if self.pending {
            // A copy into or out of a staging buffer may still be queued (a call failed
            // between queueing and waiting, or the wait itself failed): wait once more,
            // and if the stream cannot say that it is done, leak the buffers and events
            // rather than hand memory that a copy may still write to back to the
            // allocator or the cache.
            // SAFETY: as in sync.
            let mut e = unsafe { (self.hip.hipStreamSynchronize)(self.stream) };
            if e == hipSuccess && self.has_side() {
                // SAFETY: as in sync.
                e = unsafe { (self.hip.hipStreamSynchronize)(self.up) };
            }
            if e != hipSuccess {
                let bytes: usize = self.buffers.iter().map(|b| b.len).sum();
                tracing::warn!(
                    "hipStreamSynchronize failed again ({}); leaving {} staging buffers ({bytes} bytes) allocated because copies may still use them",
                    self.hip.error_text(e),
                    self.buffers.len()
                );
                for b in self.buffers.drain(..) {
                    std::mem::forget(b);
                }
                self.events.clear();
                return;
            }
        }
        let mut cache = EVENT_CACHE.lock().ok();
        for ev in self.events.drain(..) {
            match cache.as_mut() {
                Some(c) if c.len() < EVENT_CACHE_MAX => c.push(ev as usize),
                _ => {
                    if let Some(destroy) = self.hip.hipEventDestroy {
                        // SAFETY: an event these transfers created or took from the cache,
                        // whose records are complete (the stream is idle).
                        unsafe { destroy(ev) };
                    }
                }
            }
        }
    }
}
