//! Host staging buffers and stream-ordered copies between device and host.
//!
//! Every copy is `hipMemcpyAsync` on the handle's stream, so it runs after the work the
//! application queued before the call; `sync` waits for the stream. Staging buffers are
//! pinned (`hipHostMalloc`) when the runtime allows it, kept in a small cache for reuse
//! across calls, and pageable memory otherwise. A device pointer is never read or
//! written by the host.

use std::ffi::c_void;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{ShimError, ShimResult};
use crate::ffi::hip::*;
use crate::real::hip::Hip;

/// Cached pinned buffers are kept up to this many bytes in total.
const PINNED_CACHE_BYTES: usize = 1 << 30;

struct Pinned {
    ptr: *mut u8,
    cap: usize,
}
// SAFETY: pinned host memory is plain memory owned by whoever holds the struct.
unsafe impl Send for Pinned {}

static PINNED_CACHE: Mutex<Vec<Pinned>> = Mutex::new(Vec::new());

/// `len` zero bytes, or `None` when the host cannot provide them. Zeroed by the allocator
/// (fresh pages of a large block are not touched), so asking for a huge buffer costs
/// nothing until it is used.
fn zeroed_bytes(len: usize) -> Option<Vec<u8>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u8>(len).ok()?;
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    // SAFETY: ptr comes from the global allocator with the layout of len bytes, all
    // initialised to zero; length and capacity are len.
    (!ptr.is_null()).then(|| unsafe { Vec::from_raw_parts(ptr, len, len) })
}

/// Host memory holding one tensor's bytes.
pub struct HostBuffer {
    inner: Inner,
    len: usize,
}

enum Inner {
    Pinned(Pinned, &'static Hip),
    Pageable(Vec<u8>),
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
                let p = cache.swap_remove(i);
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
            inner: Inner::Pageable(zeroed_bytes(len).ok_or_else(|| {
                ShimError::alloc_failed(format!("cannot allocate {len} bytes of host memory"))
            })?),
            len,
        })
    }

    pub fn is_pinned(&self) -> bool {
        matches!(self.inner, Inner::Pinned(..))
    }

    pub fn as_slice(&self) -> &[u8] {
        match &self.inner {
            // SAFETY: ptr holds cap >= len bytes owned by this buffer.
            Inner::Pinned(p, _) => unsafe { std::slice::from_raw_parts(p.ptr, self.len) },
            Inner::Pageable(v) => &v[..self.len],
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.inner {
            // SAFETY: as above, exclusively borrowed.
            Inner::Pinned(p, _) => unsafe { std::slice::from_raw_parts_mut(p.ptr, self.len) },
            Inner::Pageable(v) => &mut v[..self.len],
        }
    }

    fn as_ptr(&self) -> *const c_void {
        self.as_slice().as_ptr() as *const c_void
    }

    fn as_mut_ptr(&mut self) -> *mut c_void {
        self.as_mut_slice().as_mut_ptr() as *mut c_void
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        if let Inner::Pinned(p, hip) =
            std::mem::replace(&mut self.inner, Inner::Pageable(Vec::new()))
        {
            if let Ok(mut cache) = PINNED_CACHE.lock() {
                let cached: usize = cache.iter().map(|c| c.cap).sum();
                if cached + p.cap <= PINNED_CACHE_BYTES {
                    cache.push(p);
                    return;
                }
            }
            if let Some(free) = hip.hipHostFree {
                // SAFETY: ptr came from hipHostMalloc and is no longer used.
                unsafe { free(p.ptr as *mut c_void) };
            }
        }
    }
}

/// Copies of one call on one stream, with their byte counts and time.
///
/// The staging buffers belong to the `Transfers`, so none is released while a copy
/// into or out of it may still be queued: dropping a `Transfers` with copies in flight
/// waits for the stream first.
pub struct Transfers {
    hip: &'static Hip,
    stream: hipStream_t,
    pending: bool,
    buffers: Vec<HostBuffer>,
    pub bytes_to_host: u64,
    pub bytes_to_device: u64,
    pub time: Duration,
}

impl Transfers {
    pub fn new(hip: &'static Hip, stream: hipStream_t) -> Self {
        Transfers {
            hip,
            stream,
            pending: false,
            buffers: Vec::new(),
            bytes_to_host: 0,
            bytes_to_device: 0,
            time: Duration::ZERO,
        }
    }

    fn hip_call(&mut self, what: &str, e: hipError_t) -> ShimResult<()> {
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

    /// Two staging buffers to read and a third, different one to write.
    pub fn io(&mut self, a: usize, b: usize, out: usize) -> (&[u8], &[u8], &mut [u8]) {
        assert!(
            out != a
                && out != b
                && out < self.buffers.len()
                && a < self.buffers.len()
                && b < self.buffers.len()
        );
        let bufs = self.buffers.as_mut_ptr();
        // SAFETY: indices are in bounds and `out` differs from both inputs, so the mutable
        // slice aliases neither shared one.
        unsafe {
            (
                (*bufs.add(a)).as_slice(),
                (*bufs.add(b)).as_slice(),
                (*bufs.add(out)).as_mut_slice(),
            )
        }
    }

    /// One staging buffer to read and another to write.
    pub fn read_write(&mut self, a: usize, out: usize) -> (&[u8], &mut [u8]) {
        assert!(out != a && a < self.buffers.len() && out < self.buffers.len());
        let bufs = self.buffers.as_mut_ptr();
        // SAFETY: indices are in bounds and differ, so the two slices do not alias.
        unsafe { ((*bufs.add(a)).as_slice(), (*bufs.add(out)).as_mut_slice()) }
    }

    /// Queues a copy of `len` bytes at device address `src` into a new staging buffer and
    /// returns its index. The contents are valid after `sync`.
    pub fn download(&mut self, src: *const c_void, len: usize) -> ShimResult<usize> {
        let buf = self.buffer(len)?;
        let dst = self.buffers[buf].as_mut_ptr();
        let t = Instant::now();
        // SAFETY: dst holds len bytes owned by self; it is not released before the stream
        // is synchronized (see Drop).
        let e =
            unsafe { (self.hip.hipMemcpyAsync)(dst, src, len, hipMemcpyDeviceToHost, self.stream) };
        self.pending = true;
        self.time += t.elapsed();
        self.hip_call("hipMemcpyAsync (device to host)", e)?;
        self.bytes_to_host += len as u64;
        Ok(buf)
    }

    /// Queues a copy of staging buffer `buf` to device address `dst`.
    pub fn upload(&mut self, dst: *mut c_void, buf: usize) -> ShimResult<()> {
        let len = self.buffers[buf].as_slice().len();
        let src = self.buffers[buf].as_ptr();
        let t = Instant::now();
        // SAFETY: src holds len bytes owned by self until the stream is synchronized.
        let e =
            unsafe { (self.hip.hipMemcpyAsync)(dst, src, len, hipMemcpyHostToDevice, self.stream) };
        self.pending = true;
        self.time += t.elapsed();
        self.hip_call("hipMemcpyAsync (host to device)", e)?;
        self.bytes_to_device += len as u64;
        Ok(())
    }

    /// Waits until everything queued on the stream, ours included, has finished. When
    /// the wait fails, our copies count as still queued (see Drop).
    pub fn sync(&mut self) -> ShimResult<()> {
        let t = Instant::now();
        // SAFETY: stream is the handle's stream (null is the default stream).
        let e = unsafe { (self.hip.hipStreamSynchronize)(self.stream) };
        self.time += t.elapsed();
        self.hip_call("hipStreamSynchronize", e)?;
        self.pending = false;
        Ok(())
    }
}

impl Drop for Transfers {
    fn drop(&mut self) {
        if !self.pending {
            return;
        }
        // A copy into or out of a staging buffer may still be queued (a call failed
        // between queueing and waiting, or the wait itself failed): wait once more, and
        // if the stream cannot say that it is done, leak the buffers rather than hand
        // memory that a copy may still write to back to the allocator or the cache.
        // SAFETY: as in sync.
        let e = unsafe { (self.hip.hipStreamSynchronize)(self.stream) };
        if e != hipSuccess {
            let bytes: usize = self.buffers.iter().map(|b| b.as_slice().len()).sum();
            tracing::warn!(
                "hipStreamSynchronize failed again ({}); leaving {} staging buffers ({bytes} bytes) allocated because copies may still use them",
                self.hip.error_text(e),
                self.buffers.len()
            );
            for b in self.buffers.drain(..) {
                std::mem::forget(b);
            }
        }
    }
}
