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

/// The parts of `len`-long items, laid end to end, that `run` covers, in
/// order: each as (item, range within it). A run of rows or positions over
/// a batch of images, cut at the images' boundaries.
pub(crate) fn per_item(
    run: Range<usize>,
    len: usize,
) -> impl Iterator<Item = (usize, Range<usize>)> {
    let mut at = run.start;
    std::iter::from_fn(move || {
        (at < run.end).then(|| {
            let (item, r0) = (at / len, at % len);
            let r1 = len.min(r0 + run.end - at);
            at += r1 - r0;
            (item, r0..r1)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_cut_at_item_boundaries() {
        let parts: Vec<_> = per_item(5..23, 8).collect();
        assert_eq!(parts, [(0, 5..8), (1, 0..8), (2, 0..7)]);
        assert_eq!(per_item(8..16, 8).collect::<Vec<_>>(), [(1, 0..8)]);
        assert_eq!(per_item(3..3, 8).count(), 0);
    }
}
