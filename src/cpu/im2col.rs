//! Lowered-matrix construction for the GEMM paths: `im2col` (input patches as
//! matrix columns), `col2im` (the adjoint scatter-add), and moves of per-image
//! channel blocks between `[n, c, positions]` tensors and chunk matrices.
//!
//! A lowered matrix covers one [`Chunk`] of output positions. Its rows are
//! `(channel, kd, kh, kw)` in weight order; its columns are the chunk's output
//! positions, image-major.

use std::ops::Range;

use super::geometry::{for_each_segment, valid_range};
use super::par::SendPtr;
use super::ConvShape;

/// A block of output positions handled by one matrix product: the run
/// `p0..p0 + np` of every image in `n0..n0 + nimg`. When `nimg > 1` the run is
/// a whole image (`p0 == 0`, `np` = output positions per image).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub n0: usize,
    pub nimg: usize,
    pub p0: usize,
    pub np: usize,
}

impl Chunk {
    /// Number of matrix columns.
    pub fn cols(&self) -> usize {
        self.nimg * self.np
    }

    /// Chunks covering all positions of `images`, each about `cols` columns:
    /// whole images grouped when an image is smaller than `cols`, otherwise
    /// each image cut into runs of equal length, rounded up to a multiple of
    /// `align` when that stays within `cols`, else down when that leaves a
    /// whole multiple (the last run may be shorter): a run just past a
    /// multiple of `align` would cost a nearly empty GEMM panel.
    pub fn cover(images: Range<usize>, positions: usize, cols: usize, align: usize) -> Vec<Chunk> {
        let cols = cols.max(1);
        let mut out = Vec::new();
        if cols >= positions {
            let per = cols / positions;
            let mut n0 = images.start;
            while n0 < images.end {
                let nimg = per.min(images.end - n0);
                out.push(Chunk {
                    n0,
                    nimg,
                    p0: 0,
                    np: positions,
                });
                n0 += nimg;
            }
        } else {
            for n0 in images {
                out.extend(Chunk::cover_positions(n0, 0..positions, cols, align));
            }
        }
        out
    }

    /// Chunks covering positions `span` of image `n0`: one where the span
    /// fits in `cols`, else cut as [`Chunk::cover`] cuts an image larger than
    /// `cols`.
    pub fn cover_positions(n0: usize, span: Range<usize>, cols: usize, align: usize) -> Vec<Chunk> {
        let len = span.len();
        let cols = cols.max(1);
        if len <= cols {
            let whole = Chunk {
                n0,
                nimg: 1,
                p0: span.start,
                np: len,
            };
            return if len == 0 { Vec::new() } else { vec![whole] };
        }
        let runs = len.div_ceil(cols);
        let run = len.div_ceil(runs).max(1);
        let align = align.max(1);
        let aligned = run.next_multiple_of(align);
        let run = if aligned <= cols {
            aligned
        } else if run > align {
            run / align * align
        } else {
            run
        };
        let mut out = Vec::new();
        let mut p0 = span.start;
        while p0 < span.end {
            let np = run.min(span.end - p0);
            out.push(Chunk {
                n0,
                nimg: 1,
                p0,
                np,
            });
            p0 += np;
        }
        out
    }
}

/// Writes the lowered input of group `g`, channels `ci` (relative to the group),
/// for chunk `ch` into `col` (`ci.len() * kernel taps` rows × `ch.cols()`).
pub(crate) fn im2col(
    s: &ConvShape,
    x: &[f32],
    g: usize,
    ch: Chunk,
    ci: Range<usize>,
    col: &mut [f32],
) {
    let cols = ch.cols();
    let ks = s.kernel_spatial();
    let isp = s.input_spatial();
    debug_assert_eq!(col.len(), ci.len() * ks * cols);
    for i in 0..ch.nimg {
        for (r, c) in ci.clone().enumerate() {
            let plane_at = ((ch.n0 + i) * s.c_in + g * s.c_in_per_group() + c) * isp;
            let plane = &x[plane_at..plane_at + isp];
            for (t, tap) in s.taps().enumerate() {
                let row = (r * ks + t) * cols + i * ch.np;
                gather_tap(s, plane, tap, ch.p0, &mut col[row..row + ch.np]);
            }
        }
    }
}

/// Adds the lowered matrix `col` (layout as [`im2col`]) back into the input
/// gradient planes of group `g`, channels `ci`, for chunk `ch`.
///
/// # Safety
/// `dx` must point to a buffer of `s.input_len()` floats, and no other thread
/// may access the planes of images `ch.n0..ch.n0 + ch.nimg`, channels `ci`.
pub(crate) unsafe fn col2im(
    s: &ConvShape,
    col: &[f32],
    g: usize,
    ch: Chunk,
    ci: Range<usize>,
    dx: SendPtr,
) {
    let cols = ch.cols();
    let ks = s.kernel_spatial();
    let isp = s.input_spatial();
    debug_assert_eq!(col.len(), ci.len() * ks * cols);
    for i in 0..ch.nimg {
        for (r, c) in ci.clone().enumerate() {
            let plane_at = ((ch.n0 + i) * s.c_in + g * s.c_in_per_group() + c) * isp;
            let plane = dx.slice(plane_at, isp);
            for (t, tap) in s.taps().enumerate() {
                let row = (r * ks + t) * cols + i * ch.np;
                scatter_add_tap(s, plane, tap, ch.p0, &col[row..row + ch.np]);
            }
        }
    }
}

/// Copies channel rows `c0..c0 + rows` of every image of a whole-image chunk
/// from a `[n, channels, positions]` tensor into `dst` (`rows × ch.cols()`).
pub(crate) fn gather_rows(
    src: &[f32],
    channels: usize,
    c0: usize,
    rows: usize,
    ch: Chunk,
    dst: &mut [f32],
) {
    let cols = ch.cols();
    for i in 0..ch.nimg {
        for r in 0..rows {
            let from = ((ch.n0 + i) * channels + c0 + r) * ch.np + ch.p0;
            let to = r * cols + i * ch.np;
            dst[to..to + ch.np].copy_from_slice(&src[from..from + ch.np]);
        }
    }
}

/// The inverse of [`gather_rows`]: overwrites the tensor rows from `src`.
///
/// # Safety
/// `dst` must point to a `[n, channels, positions]` buffer with
/// `positions == ch.np`, and no other thread may access the rows written.
pub(crate) unsafe fn scatter_rows(
    src: &[f32],
    channels: usize,
    c0: usize,
    rows: usize,
    ch: Chunk,
    dst: SendPtr,
) {
    let cols = ch.cols();
    for i in 0..ch.nimg {
        for r in 0..rows {
            let from = r * cols + i * ch.np;
            let to = ((ch.n0 + i) * channels + c0 + r) * ch.np + ch.p0;
            dst.slice(to, ch.np)
                .copy_from_slice(&src[from..from + ch.np]);
        }
    }
}

/// Offsets (input index of output 0) of one tap along each spatial dim.
#[inline(always)]
pub(crate) fn tap_offsets(s: &ConvShape, tap: [usize; 3]) -> [isize; 3] {
    std::array::from_fn(|a| (tap[a] * s.dilation[a]) as isize - s.pad[a] as isize)
}

/// The input row `(id, ih)` one tap reads for output row `(od, oh)`, if inside.
#[inline(always)]
pub(crate) fn input_row(s: &ConvShape, off: [isize; 3], od: usize, oh: usize) -> Option<usize> {
    let id = (od * s.stride[0]) as isize + off[0];
    let ih = (oh * s.stride[1]) as isize + off[1];
    if id < 0 || ih < 0 || id >= s.input[0] as isize || ih >= s.input[1] as isize {
        return None;
    }
    Some((id as usize * s.input[1] + ih as usize) * s.input[2])
}

/// `dst[j]` = input value tap `tap` sees at output position `p0 + j` (0 in padding).
#[inline(always)]
fn gather_tap(s: &ConvShape, plane: &[f32], tap: [usize; 3], p0: usize, dst: &mut [f32]) {
    let off = tap_offsets(s, tap);
    let (sw, iw) = (s.stride[2], s.input[2]);
    let (lo_w, hi_w) = valid_range(s.output[2], sw, off[2], iw);
    for_each_segment(s.output, p0, dst.len(), |seg| {
        let out = &mut dst[seg.offset..seg.offset + (seg.ow1 - seg.ow0)];
        let Some(row_at) = input_row(s, off, seg.od, seg.oh) else {
            out.fill(0.0);
            return;
        };
        let row = &plane[row_at..row_at + iw];
        let lo = lo_w.clamp(seg.ow0, seg.ow1);
        let hi = hi_w.clamp(lo, seg.ow1);
        let (head, rest) = out.split_at_mut(lo - seg.ow0);
        let (body, tail) = rest.split_at_mut(hi - lo);
        head.fill(0.0);
        tail.fill(0.0);
        if hi > lo {
            let start = ((lo * sw) as isize + off[2]) as usize;
            if sw == 1 {
                body.copy_from_slice(&row[start..start + body.len()]);
            } else {
                let src = &row[start..start + (body.len() - 1) * sw + 1];
                for (o, v) in body.iter_mut().zip(src.iter().step_by(sw)) {
                    *o = *v;
                }
            }
        }
    });
}

/// Adds `src[j]` to the input value tap `tap` sees at output position `p0 + j`.
#[inline]
fn scatter_add_tap(s: &ConvShape, plane: &mut [f32], tap: [usize; 3], p0: usize, src: &[f32]) {
    let off = tap_offsets(s, tap);
    let (sw, iw) = (s.stride[2], s.input[2]);
    let (lo_w, hi_w) = valid_range(s.output[2], sw, off[2], iw);
    for_each_segment(s.output, p0, src.len(), |seg| {
        let Some(row_at) = input_row(s, off, seg.od, seg.oh) else {
            return;
        };
        let row = &mut plane[row_at..row_at + iw];
        let lo = lo_w.clamp(seg.ow0, seg.ow1);
        let hi = hi_w.clamp(lo, seg.ow1);
        if hi > lo {
            let vals = &src[seg.offset + lo - seg.ow0..seg.offset + hi - seg.ow0];
            let start = ((lo * sw) as isize + off[2]) as usize;
            if sw == 1 {
                for (d, v) in row[start..start + vals.len()].iter_mut().zip(vals) {
                    *d += *v;
                }
            } else {
                let dst = &mut row[start..start + (vals.len() - 1) * sw + 1];
                for (d, v) in dst.iter_mut().step_by(sw).zip(vals) {
                    *d += *v;
                }
            }
        }
    });
}

/// Kernel tap `[kd, kh, kw]` of flattened tap index `t`.
#[inline(always)]
pub(crate) fn tap_of(s: &ConvShape, t: usize) -> [usize; 3] {
    let [_, kh, kw] = s.kernel;
    [t / (kh * kw), (t / kw) % kh, t % kw]
}

/// Splits chunk columns `c0..c0 + len` into runs inside one image, calling
/// `f(image index in chunk, position, offset from c0, run length)`.
#[inline(always)]
pub(crate) fn for_each_image_run(
    ch: Chunk,
    c0: usize,
    len: usize,
    mut f: impl FnMut(usize, usize, usize, usize),
) {
    for (i, p, c, n) in image_runs(ch, c0, len) {
        f(i, p, c, n);
    }
}

/// The runs of [`for_each_image_run`] as an iterator of `(image index in
/// chunk, position, offset from c0, run length)`.
#[inline(always)]
pub(crate) fn image_runs(ch: Chunk, c0: usize, len: usize) -> ImageRuns {
    ImageRuns {
        ch,
        c0,
        c: c0,
        end: c0 + len,
    }
}

/// Iterator of [`image_runs`].
pub(crate) struct ImageRuns {
    ch: Chunk,
    c0: usize,
    c: usize,
    end: usize,
}

impl Iterator for ImageRuns {
    type Item = (usize, usize, usize, usize);
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let c = self.c;
        if c >= self.end {
            return None;
        }
        let (i, q) = (c / self.ch.np, c % self.ch.np);
        let run = (self.ch.np - q).min(self.end - c);
        self.c += run;
        Some((i, self.ch.p0 + q, c - self.c0, run))
    }
}
