//! Host memory of the calls: f32 work buffers reused from call to call (converted
//! inputs, results before their store, weight-gradient sums) and the cap on what one
//! call may hold (`RDNA1SHIM_HOST_MEMORY_MIB`), which the chunk plan keeps to.
//!
//! A work buffer comes from a small process-wide cache when one of fitting capacity is
//! there; only new buffers are allocated (fallibly: no memory is
//! `miopenStatusAllocFailed`, never an abort). A buffer's contents are whatever its
//! last user left: every user overwrites all of it before reading.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use crate::error::{ShimError, ShimResult};

/// Default cap on the host memory of one call (staging and work buffers), in MiB.
pub const DEFAULT_CALL_MIB: usize = 256;

/// Work buffers kept for reuse, at most the per-call cap together (what one call can
/// use at once).
pub struct Cache {
    bufs: Mutex<Vec<Vec<f32>>>,
}

/// The process's cache.
pub static CACHE: Cache = Cache::new();

/// Bytes the cache keeps.
fn cache_limit() -> usize {
    crate::config::call_memory_bytes()
}

/// A reusable buffer of f32 values; back to its cache when dropped.
pub struct WorkBuf {
    v: Vec<f32>,
    cache: &'static Cache,
}

impl WorkBuf {
    /// `len` values, from the process's cache or newly allocated.
    pub fn new(len: usize, what: &str) -> ShimResult<WorkBuf> {
        CACHE.get(len, what)
    }
}

impl Cache {
    pub const fn new() -> Cache {
        Cache {
            bufs: Mutex::new(Vec::new()),
        }
    }

    /// `len` values, from this cache or newly allocated (zeroed by the allocator).
    pub fn get(&'static self, len: usize, what: &str) -> ShimResult<WorkBuf> {
        if let Ok(mut cache) = self.bufs.lock() {
            let best = cache
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= len)
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                let mut v = cache.swap_remove(i);
                // SAFETY: cached vectors are fully initialised to their capacity
                // (see `fresh` and Drop), and len <= capacity.
                unsafe { v.set_len(len) };
                return Ok(WorkBuf { v, cache: self });
            }
        }
        Ok(WorkBuf {
            v: fresh(len, what)?,
            cache: self,
        })
    }

    /// Bytes the cache holds now.
    pub fn held_bytes(&self) -> usize {
        self.bufs
            .lock()
            .map(|c| c.iter().map(|v| v.capacity() * 4).sum())
            .unwrap_or(0)
    }
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

/// A zeroed vector of `len` f32 values, or `miopenStatusAllocFailed`.
pub fn fresh(len: usize, what: &str) -> ShimResult<Vec<f32>> {
    let fail = || {
        ShimError::alloc_failed(format!(
            "cannot allocate {len} f32 values of host memory for {what}"
        ))
    };
    if len == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<f32>(len).map_err(|_| fail())?;
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut f32;
    if ptr.is_null() {
        return Err(fail());
    }
    // SAFETY: ptr comes from the global allocator with the layout of len f32 values, all
    // zero bytes (valid f32 zeros); length and capacity are len.
    Ok(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

impl Deref for WorkBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.v
    }
}

impl DerefMut for WorkBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.v
    }
}

impl Drop for WorkBuf {
    fn drop(&mut self) {
        let mut v = std::mem::take(&mut self.v);
        let cap = v.capacity();
        if cap == 0 {
            return;
        }
        // SAFETY: the vector was initialised to its full capacity when it was made.
        unsafe { v.set_len(cap) };
        let limit = cache_limit();
        if cap * 4 > limit {
            return; // larger than the cache may hold: freed
        }
        if let Ok(mut cache) = self.cache.bufs.lock() {
            let held: usize = cache.iter().map(|c| c.capacity() * 4).sum();
            if held + cap * 4 > limit {
                // Make room by dropping the smallest buffers first: big ones are the
                // expensive ones to fault in again.
                cache.sort_by_key(|c| std::cmp::Reverse(c.capacity()));
                let mut total = cap * 4;
                cache.retain(|c| {
                    let keep = total + c.capacity() * 4 <= limit;
                    if keep {
                        total += c.capacity() * 4;
                    }
                    keep
                });
            }
            cache.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_not_reallocated_and_the_cache_is_bounded() {
        let cache: &'static Cache = Box::leak(Box::new(Cache::new()));
        let p = {
            let mut a = cache.get(1000, "a test").unwrap();
            a.fill(3.0);
            a.as_ptr()
        };
        assert_eq!(cache.held_bytes(), 4000);
        let b = cache.get(900, "a test").unwrap();
        assert_eq!(b.len(), 900);
        assert_eq!(b.as_ptr(), p, "the cached buffer comes back");
        assert_eq!(cache.held_bytes(), 0, "taken out while in use");
        drop(b);
        // A buffer larger than the cap is not kept; a smaller one is.
        let cap = crate::config::call_memory_bytes() / 4;
        drop(cache.get(cap + 1, "a test").unwrap());
        assert_eq!(cache.held_bytes(), 4000);
        // Filling past the cap drops the smallest buffers first.
        drop(cache.get(cap - 10, "a test").unwrap());
        assert!(cache.held_bytes() <= crate::config::call_memory_bytes());
        assert_eq!(cache.held_bytes(), (cap - 10) * 4, "the big one stays");
    }
}
