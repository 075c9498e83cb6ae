//! Index arithmetic shared by the lowering and direct paths: which output
//! positions a kernel tap can reach, how a flat range of output positions splits
//! into output rows, and classification helpers on [`ConvShape`].

use super::ConvShape;

/// Indices `o` in `0..count` with `0 <= o * stride + off < len`, as `(lo, hi)`
/// with `lo <= hi` (an empty range is `lo == hi`).
#[inline]
pub(crate) fn valid_range(count: usize, stride: usize, off: isize, len: usize) -> (usize, usize) {
    let s = stride as isize;
    let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
    let lim = len as isize - off; // need o * s < lim
    let hi = if lim <= 0 { 0 } else { (lim + s - 1) / s };
    let lo = (lo as usize).min(count);
    let hi = (hi as usize).min(count).max(lo);
    (lo, hi)
}

/// One contiguous run of output positions inside an output row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RowSegment {
    pub od: usize,
    pub oh: usize,
    /// First and one-past-last output column of the run.
    pub ow0: usize,
    pub ow1: usize,
    /// Offset of `ow0` from the start of the flat range.
    pub offset: usize,
}

/// Splits the flat output positions `p0..p0 + len` of an `[od, oh, ow]` volume
/// into row segments, calling `f` on each in order.
#[inline(always)]
pub(crate) fn for_each_segment(
    out: [usize; 3],
    p0: usize,
    len: usize,
    mut f: impl FnMut(RowSegment),
) {
    for seg in segments(out, p0, len) {
        f(seg);
    }
}

/// The row segments of [`for_each_segment`] as an iterator (a loop over it
/// keeps its body in the caller, which matters for code compiled for an
/// instruction set the iterator itself is not).
#[inline(always)]
pub(crate) fn segments(out: [usize; 3], p0: usize, len: usize) -> Segments {
    Segments {
        ow_n: out[2],
        plane: out[1] * out[2],
        p0,
        p: p0,
        end: p0 + len,
    }
}

/// Iterator of [`segments`].
pub(crate) struct Segments {
    ow_n: usize,
    plane: usize,
    p0: usize,
    p: usize,
    end: usize,
}

impl Iterator for Segments {
    type Item = RowSegment;
    #[inline]
    fn next(&mut self) -> Option<RowSegment> {
        let p = self.p;
        if p >= self.end {
            return None;
        }
        let od = p / self.plane;
        let rem = p - od * self.plane;
        let oh = rem / self.ow_n;
        let ow0 = rem - oh * self.ow_n;
        let ow1 = (ow0 + (self.end - p)).min(self.ow_n);
        self.p += ow1 - ow0;
        Some(RowSegment {
            od,
            oh,
            ow0,
            ow1,
            offset: p - self.p0,
        })
    }
}

impl ConvShape {
    /// Kernel taps `[kd, kh, kw]` in the canonical flattened order.
    pub(crate) fn taps(&self) -> impl Iterator<Item = [usize; 3]> + '_ {
        let k = self.kernel;
        (0..k[0]).flat_map(move |a| (0..k[1]).flat_map(move |b| (0..k[2]).map(move |c| [a, b, c])))
    }

    /// A 1x1x1 kernel with stride 1, no padding and output size equal to the
    /// input size: every output position reads exactly its own input position,
    /// so the input itself is the lowered matrix.
    pub(crate) fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1, 1]
            && self.stride == [1, 1, 1]
            && self.pad == [0, 0, 0]
            && self.output == self.input
    }

    /// One input channel per group (depthwise, possibly with a channel
    /// multiplier; a single-input-channel convolution also qualifies).
    pub(crate) fn is_depthwise(&self) -> bool {
        self.c_in_per_group() == 1
    }

    /// Panics with a readable message unless the shape validates and the three
    /// buffers have exactly the lengths the shape implies.
    pub(crate) fn check_buffers(&self, pass: &str, lens: [(&str, usize, usize); 3]) {
        if let Err(e) = self.validate() {
            panic!("cpu::conv::{pass}: invalid shape: {e}");
        }
        for (name, got, want) in lens {
            assert!(
                got == want,
                "cpu::conv::{pass}: buffer `{name}` has {got} elements, shape {self:?} needs {want}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_range_matches_brute_force() {
        for count in 0..9 {
            for stride in 1..4 {
                for off in -7isize..7 {
                    for len in 0..9 {
                        let want: Vec<usize> = (0..count)
                            .filter(|&o| {
                                let i = o as isize * stride as isize + off;
                                i >= 0 && i < len as isize
                            })
                            .collect();
                        let (lo, hi) = valid_range(count, stride, off, len);
                        let got: Vec<usize> = (lo..hi).collect();
                        assert_eq!(
                            got, want,
                            "count {count} stride {stride} off {off} len {len}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn segments_cover_range_in_order() {
        let out = [3, 4, 5];
        for p0 in 0..60 {
            for len in 0..(60 - p0) {
                let mut seen = Vec::new();
                for_each_segment(out, p0, len, |s| {
                    assert!(s.ow0 < s.ow1 && s.ow1 <= 5 && s.oh < 4 && s.od < 3);
                    for ow in s.ow0..s.ow1 {
                        assert_eq!(seen.len(), s.offset + ow - s.ow0);
                        seen.push((s.od * 4 + s.oh) * 5 + ow);
                    }
                });
                assert_eq!(seen, (p0..p0 + len).collect::<Vec<_>>());
            }
        }
    }
}
