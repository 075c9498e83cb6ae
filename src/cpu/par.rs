//! Small helpers for splitting work across rayon tasks that write disjoint
//! parts of one output buffer.

use std::ops::Range;

/// A raw pointer that may cross threads. Users guarantee that concurrent tasks
/// touch disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);

// SAFETY: only used to hand disjoint regions of one buffer to rayon tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer `offset` elements further on.
    ///
    /// # Safety
    /// The result must stay inside the original buffer.
    #[inline]
    pub unsafe fn at(&self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }

    /// The `len` elements starting at `offset` as a mutable slice.
    ///
    /// # Safety
    /// The range must lie inside the original buffer and no other live
    /// reference may overlap it.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, offset: usize, len: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(offset), len)
    }
}

/// Part `i` of `0..total` split into `parts` nearly equal contiguous ranges.
#[inline]
pub(crate) fn split_range(total: usize, parts: usize, i: usize) -> Range<usize> {
    let base = total / parts;
    let rem = total % parts;
    let start = i * base + i.min(rem);
    start..start + base + usize::from(i < rem)
}
