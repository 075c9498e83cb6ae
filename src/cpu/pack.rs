//! Packing of the `B` operand of the AVX-512 GEMM straight from the tensors:
//! the lowered input (im2col) for the forward pass, its transpose for the
//! weight gradient, and plain channel rows (`dy`, or `x` of a pointwise
//! convolution).
//!
//! The lowered input is read from a [`PaddedChunk`] — the chunk's input planes
//! copied once with zero padding and stride phases split out — so each run of
//! a lowered row is a plain contiguous copy; the run layout of a block is
//! computed once and replayed for every lowered row. When the padded planes do
//! not fit in the budget, the `Direct*` providers gather from `x` itself.
//! Copies use AVX-512 loads and stores (stride 2 via a two-register permute);
//! transposes go through 16×16 register transposes.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::avx512_gemm::{PackB, KC, NR};
use std::ops::Range;

use super::geometry::{for_each_segment, valid_range};
use super::im2col::{for_each_image_run, input_row, tap_of, tap_offsets, Chunk};
use super::padded::{pad_rows, unpad_plane, Geom};
use super::simd::Isa;
use super::ConvShape;

/// Destination of one row of `B` in packed panels: column `c` of the block
/// lands at `base + (c / NR) · stride + c % NR`.
#[derive(Clone, Copy)]
struct PanelRow {
    base: *mut f32,
    stride: usize,
}

impl PanelRow {
    /// `B[row][c..c + len] = 0`, split at panel boundaries.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn zeros(&self, mut c: usize, mut len: usize) {
        while len > 0 {
            let n = (NR - c % NR).min(len);
            store_zeros(self.base.add((c / NR) * self.stride + c % NR), n);
            c += n;
            len -= n;
        }
    }

    /// `B[row][c + j] = src[j · step]` for `j < len`, split at panel boundaries.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn copy(&self, mut c: usize, mut src: *const f32, mut len: usize, step: usize) {
        while len > 0 {
            let n = (NR - c % NR).min(len);
            copy_run(self.base.add((c / NR) * self.stride + c % NR), src, n, step);
            c += n;
            src = src.add(n * step);
            len -= n;
        }
    }
}

/// Mask of the first `n` (at most 16) lanes.
#[inline(always)]
fn lanes(n: usize) -> u16 {
    ((1u32 << n.min(16)) - 1) as u16
}

#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_zeros(dst: *mut f32, n: usize) {
    let z = _mm512_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        _mm512_storeu_ps(dst.add(i), z);
        i += 16;
    }
    if i < n {
        _mm512_mask_storeu_ps(dst.add(i), lanes(n - i), z);
    }
}

/// `dst[j] = src[j · step]` for `j < n`, reading nothing past `src[(n-1)·step]`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn copy_run(dst: *mut f32, src: *const f32, n: usize, step: usize) {
    let mut i = 0;
    match step {
        1 => {
            while i + 16 <= n {
                _mm512_storeu_ps(dst.add(i), _mm512_loadu_ps(src.add(i)));
                i += 16;
            }
            if i < n {
                let m = lanes(n - i);
                _mm512_mask_storeu_ps(dst.add(i), m, _mm512_maskz_loadu_ps(m, src.add(i)));
            }
        }
        2 => {
            let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
            while i < n {
                // Elements src[2i ..= 2(i+15)], of which 2(n-i) - 1 exist.
                let avail = 2 * (n - i) - 1;
                let s = src.add(2 * i);
                let lo = _mm512_maskz_loadu_ps(lanes(avail), s);
                let hi = _mm512_maskz_loadu_ps(lanes(avail.saturating_sub(16)), s.add(16));
                let v = _mm512_permutex2var_ps(lo, even, hi);
                _mm512_mask_storeu_ps(dst.add(i), lanes(n - i), v);
                i += 16;
            }
        }
        _ => {
            for j in 0..n {
                *dst.add(j) = *src.add(j * step);
            }
        }
    }
}

/// A piece of one lowered row: `n` zeros (padding) or `n` input values
/// starting at `src`, `stride` apart.
enum Piece {
    Zeros(usize),
    Run(*const f32, usize),
}

/// Walks the values tap `tap` reads from the input plane at `plane` for the
/// output positions `p..p + len`, calling `f(offset from p, piece)` in order.
#[inline(always)]
unsafe fn walk_tap(
    s: &ConvShape,
    plane: *const f32,
    tap: [usize; 3],
    p: usize,
    len: usize,
    mut f: impl FnMut(usize, Piece),
) {
    let off = tap_offsets(s, tap);
    let sw = s.stride[2];
    let (lo_w, hi_w) = valid_range(s.output[2], sw, off[2], s.input[2]);
    for_each_segment(s.output, p, len, |seg| {
        let n = seg.ow1 - seg.ow0;
        let Some(row_at) = input_row(s, off, seg.od, seg.oh) else {
            f(seg.offset, Piece::Zeros(n));
            return;
        };
        let lo = lo_w.clamp(seg.ow0, seg.ow1);
        let hi = hi_w.clamp(lo, seg.ow1);
        if lo > seg.ow0 {
            f(seg.offset, Piece::Zeros(lo - seg.ow0));
        }
        if hi > lo {
            let start = ((lo * sw) as isize + off[2]) as usize;
            f(
                seg.offset + lo - seg.ow0,
                Piece::Run(plane.add(row_at + start), hi - lo),
            );
        }
        if seg.ow1 > hi {
            f(seg.offset + hi - seg.ow0, Piece::Zeros(seg.ow1 - hi));
        }
    });
}

/// Start of the input plane of chunk image `i`, channel `ci` of group `g`.
#[inline(always)]
fn plane_at(s: &ConvShape, ch: Chunk, g: usize, i: usize, ci: usize) -> usize {
    ((ch.n0 + i) * s.c_in + g * s.c_in_per_group() + ci) * s.input_spatial()
}

/// The lowered input of group `g` for chunk `ch` (rows `(channel, tap)`,
/// columns the chunk's positions), gathered straight from `x` with padding
/// and stride handled per run: the fallback when a [`PaddedChunk`] does not
/// fit in the scratch budget.
pub(crate) struct DirectIm2colB<'a> {
    pub s: &'a ConvShape,
    pub x: &'a [f32],
    pub g: usize,
    pub ch: Chunk,
}

impl PackB for DirectIm2colB<'_> {
    #[inline(always)]
    unsafe fn pack(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        self.pack_avx512(k0, kc, j0, nc, dst);
    }
}

impl DirectIm2colB<'_> {
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_avx512(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        let s = self.s;
        let ks = s.kernel_spatial();
        let sw = s.stride[2];
        assert!(dst.len() >= nc.div_ceil(NR) * kc * NR);
        assert!(k0 + kc <= s.c_in_per_group() * ks && j0 + nc <= self.ch.cols());
        for r in k0..k0 + kc {
            let (ci, tap) = (r / ks, tap_of(s, r % ks));
            let row = PanelRow {
                base: dst.as_mut_ptr().add((r - k0) * NR),
                stride: kc * NR,
            };
            for_each_image_run(self.ch, j0, nc, |i, p, c, len| {
                let plane = self.x.as_ptr().add(plane_at(s, self.ch, self.g, i, ci));
                walk_tap(s, plane, tap, p, len, |o, piece| match piece {
                    Piece::Zeros(n) => row.zeros(c + o, n),
                    Piece::Run(src, n) => row.copy(c + o, src, n, sw),
                });
            });
            row.zeros(nc, nc.div_ceil(NR) * NR - nc);
        }
    }
}

/// Transposed [`DirectIm2colB`]: rows are the chunk's positions, columns the
/// lowered rows `(channel, tap)`.
pub(crate) struct DirectIm2colTB<'a> {
    pub s: &'a ConvShape,
    pub x: &'a [f32],
    pub g: usize,
    pub ch: Chunk,
}

impl PackB for DirectIm2colTB<'_> {
    #[inline(always)]
    unsafe fn pack(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        self.pack_avx512(k0, kc, j0, nc, dst);
    }
}

impl DirectIm2colTB<'_> {
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_avx512(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        const L: usize = 16;
        let s = self.s;
        let ks = s.kernel_spatial();
        let sw = s.stride[2];
        assert!(kc <= KC && dst.len() >= nc.div_ceil(NR) * kc * NR);
        assert!(k0 + kc <= self.ch.cols() && j0 + nc <= s.c_in_per_group() * ks);
        // L lowered rows over the block's positions, one row after another.
        let mut rows = [0.0f32; L * KC];
        let rp = rows.as_mut_ptr();
        for jp in 0..nc.div_ceil(NR) {
            for q in 0..NR / L {
                let r0 = j0 + jp * NR + q * L;
                let live = (j0 + nc).saturating_sub(r0).min(L);
                for l in 0..L {
                    let out = rp.add(l * kc);
                    if l >= live {
                        store_zeros(out, kc);
                        continue;
                    }
                    let r = r0 + l;
                    let (ci, tap) = (r / ks, tap_of(s, r % ks));
                    for_each_image_run(self.ch, k0, kc, |i, p, c, len| {
                        let plane = self.x.as_ptr().add(plane_at(s, self.ch, self.g, i, ci));
                        walk_tap(s, plane, tap, p, len, |o, piece| match piece {
                            Piece::Zeros(n) => store_zeros(out.add(c + o), n),
                            Piece::Run(src, n) => copy_run(out.add(c + o), src, n, sw),
                        });
                    });
                }
                transpose_out(rp, kc, dst.as_mut_ptr().add(jp * kc * NR + q * L));
            }
        }
    }
}

/// The input planes a chunk reads — its images × channels `ci0..ci0 + cin`
/// of group `g` — padded (see [`Geom`]) over the band of padded rows its
/// output positions touch.
pub(crate) struct PaddedChunk<'a> {
    s: &'a ConvShape,
    g: Geom,
    ch: Chunk,
    ci0: usize,
    cin: usize,
    /// First padded row held and rows per plane.
    row0: usize,
    rows: usize,
    data: &'a [f32],
}

impl<'a> PaddedChunk<'a> {
    /// Padded rows (flattened `d·hp + h`) the chunk's positions read.
    fn band(s: &ConvShape, g: &Geom, ch: Chunk) -> Range<usize> {
        let positions = s.output_spatial();
        if ch.nimg > 1 || ch.np == positions {
            return 0..g.dp * g.hp;
        }
        let [_, oh_n, ow_n] = s.output;
        let at = |p: usize| (p / (oh_n * ow_n), (p / ow_n) % oh_n);
        let ((od0, oh0), (od1, oh1)) = (at(ch.p0), at(ch.p0 + ch.np - 1));
        let first = od0 * g.stride[0] * g.hp + oh0 * g.stride[1];
        let last = (od1 * g.stride[0] + (g.kernel[0] - 1) * g.dil[0]) * g.hp
            + oh1 * g.stride[1]
            + (g.kernel[1] - 1) * g.dil[1];
        first..last + 1
    }

    /// Floats needed for chunk `ch` and `cin` channels.
    pub fn len(s: &ConvShape, ch: Chunk, cin: usize) -> usize {
        let g = Geom::forward(s);
        ch.nimg * cin * Self::band(s, &g, ch).len() * g.row_len()
    }

    /// Pads the planes of chunk `ch`, channels `ci0..ci0 + cin` of group `g`,
    /// into `buf` (of [`PaddedChunk::len`] floats).
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        level: Isa,
        buf: &'a mut [f32],
        s: &'a ConvShape,
        x: &[f32],
        group: usize,
        ch: Chunk,
        ci0: usize,
        cin: usize,
    ) -> PaddedChunk<'a> {
        let g = Geom::forward(s);
        let band = Self::band(s, &g, ch);
        let (rows, isp) = (band.len(), s.input_spatial());
        let plane = rows * g.row_len();
        assert!(buf.len() >= ch.nimg * cin * plane);
        for i in 0..ch.nimg {
            for c in 0..cin {
                let at = ((ch.n0 + i) * s.c_in + group * s.c_in_per_group() + ci0 + c) * isp;
                let dst = &mut buf[(i * cin + c) * plane..][..plane];
                pad_rows(level, dst, &x[at..at + isp], s.input, &g, band.clone());
            }
        }
        PaddedChunk {
            s,
            g,
            ch,
            ci0,
            cin,
            row0: band.start,
            rows,
            data: buf,
        }
    }

    /// Start of the padded plane of chunk image `i`, channel `ci` of the group.
    #[inline(always)]
    fn plane(&self, i: usize, ci: usize) -> *const f32 {
        debug_assert!(i < self.ch.nimg && ci >= self.ci0 && ci < self.ci0 + self.cin);
        let at = (i * self.cin + ci - self.ci0) * self.rows * self.g.row_len();
        self.data[at..].as_ptr()
    }

    #[inline(always)]
    fn tap_offset(&self, t: usize) -> usize {
        tap_offset(self.s, &self.g, t)
    }

    /// Distance between the planes of consecutive images of one channel.
    #[inline(always)]
    fn image_len(&self) -> usize {
        self.cin * self.rows * self.g.row_len()
    }

    #[inline(always)]
    fn runs(&self, c0: usize, len: usize, split: usize, out: &mut [Run; MAX_RUNS]) -> usize {
        chunk_runs(self.s, &self.g, self.ch, self.row0, c0, len, split, out)
    }
}

/// Splits chunk columns `c0..c0 + len` into runs inside one output row of
/// one image, also cut at multiples of `split` from `c0`; `base` is relative
/// to padded row `row0`. Returns the number of runs written to `out`
/// (`len <= MAX_RUNS / 2` keeps it in bounds).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn chunk_runs(
    s: &ConvShape,
    g: &Geom,
    ch: Chunk,
    row0: usize,
    c0: usize,
    len: usize,
    split: usize,
    out: &mut [Run; MAX_RUNS],
) -> usize {
    let [_, oh_n, ow_n] = s.output;
    let mut count = 0;
    let mut c = c0;
    let end = c0 + len;
    while c < end {
        let (i, q) = (c / ch.np, c % ch.np);
        let p = ch.p0 + q;
        let (od, oh, ow) = (p / (oh_n * ow_n), (p / ow_n) % oh_n, p % ow_n);
        let n = (ow_n - ow)
            .min(ch.np - q)
            .min(end - c)
            .min(split - (c - c0) % split);
        let row = od * g.stride[0] * g.hp + oh * g.stride[1];
        out[count] = Run {
            c: c - c0,
            len: n,
            img: i,
            base: (row - row0) * g.row_len() + ow,
        };
        count += 1;
        c += n;
    }
    count
}

/// Offset, within a padded plane, of the run tap `t` reads relative to tap
/// `(0, 0, 0)`.
#[inline(always)]
fn tap_offset(s: &ConvShape, g: &Geom, t: usize) -> usize {
    let [kd, kh, kw] = tap_of(s, t);
    (kd * g.dil[0] * g.hp + kh * g.dil[1]) * g.row_len() + g.tap(kw)
}

/// Most runs one packed block can hold: every column its own run, plus a
/// cut at each panel boundary.
const MAX_RUNS: usize = 2 * (if KC > NC_RUNS { KC } else { NC_RUNS });
const NC_RUNS: usize = 512;

/// A run of consecutive columns of a block: `len` columns from column `c`
/// (relative to the block), read from chunk image `img` at `base` within
/// the padded plane (for tap `(0, 0, 0)`).
#[derive(Clone, Copy, Default)]
struct Run {
    c: usize,
    len: usize,
    img: usize,
    base: usize,
}

/// The lowered input of one group for one chunk (rows `(channel, tap)`,
/// columns the chunk's positions), read from its [`PaddedChunk`].
pub(crate) struct Im2colB<'a> {
    pub padded: &'a PaddedChunk<'a>,
}

impl PackB for Im2colB<'_> {
    #[inline(always)]
    unsafe fn pack(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        self.pack_avx512(k0, kc, j0, nc, dst);
    }
}

impl Im2colB<'_> {
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_avx512(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        let pc = self.padded;
        let ks = pc.s.kernel_spatial();
        let npan = nc.div_ceil(NR);
        assert!(nc <= NC_RUNS && dst.len() >= npan * kc * NR && j0 + nc <= pc.ch.cols());
        assert!(k0 / ks >= pc.ci0 && (k0 + kc).div_ceil(ks) <= pc.ci0 + pc.cin);
        let mut runs = [Run::default(); MAX_RUNS];
        let count = pc.runs(j0, nc, NR, &mut runs);
        let d = dst.as_mut_ptr();
        for r in k0..k0 + kc {
            let (ci, t) = (r / ks, r % ks);
            let tap = pc.tap_offset(t);
            let row = d.add((r - k0) * NR);
            for run in &runs[..count] {
                let src = pc.plane(run.img, ci).add(run.base + tap);
                copy_run(
                    row.add((run.c / NR) * kc * NR + run.c % NR),
                    src,
                    run.len,
                    1,
                );
            }
            if nc % NR != 0 {
                store_zeros(row.add((npan - 1) * kc * NR + nc % NR), NR - nc % NR);
            }
        }
    }
}

/// Transposed [`Im2colB`]: rows are the chunk's positions, columns the
/// lowered rows `(channel, tap)`.
pub(crate) struct Im2colTB<'a> {
    pub padded: &'a PaddedChunk<'a>,
}

impl PackB for Im2colTB<'_> {
    #[inline(always)]
    unsafe fn pack(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        self.pack_avx512(k0, kc, j0, nc, dst);
    }
}

impl Im2colTB<'_> {
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_avx512(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        const L: usize = 16;
        let pc = self.padded;
        let ks = pc.s.kernel_spatial();
        assert!(kc <= KC && dst.len() >= nc.div_ceil(NR) * kc * NR && k0 + kc <= pc.ch.cols());
        assert!(j0 / ks >= pc.ci0 && (j0 + nc).div_ceil(ks) <= pc.ci0 + pc.cin);
        let mut runs = [Run::default(); MAX_RUNS];
        let count = pc.runs(k0, kc, usize::MAX, &mut runs);
        if kc >= DIRECT_MIN_RUN * count {
            // Long runs: transpose straight from the planes.
            transpose_panels(j0, nc, kc, dst, pc.image_len(), &runs[..count], |r| {
                pc.plane(0, r / ks).add(pc.tap_offset(r % ks))
            });
            return;
        }
        // L lowered rows over the block's positions, one row after another.
        let mut rows = [0.0f32; L * KC];
        let rp = rows.as_mut_ptr();
        for jp in 0..nc.div_ceil(NR) {
            for q in 0..NR / L {
                let r0 = j0 + jp * NR + q * L;
                let live = (j0 + nc).saturating_sub(r0).min(L);
                for l in 0..L {
                    let out = rp.add(l * kc);
                    if l >= live {
                        store_zeros(out, kc);
                        continue;
                    }
                    let r = r0 + l;
                    let (ci, tap) = (r / ks, pc.tap_offset(r % ks));
                    for run in &runs[..count] {
                        copy_run(
                            out.add(run.c),
                            pc.plane(run.img, ci).add(run.base + tap),
                            run.len,
                            1,
                        );
                    }
                }
                transpose_out(rp, kc, dst.as_mut_ptr().add(jp * kc * NR + q * L));
            }
        }
    }
}

/// Shortest average run for which [`Im2colTB`] transposes straight from the
/// padded planes rather than through a row buffer (a run's last partial
/// 16-position block costs a whole transpose).
const DIRECT_MIN_RUN: usize = 24;

/// Packs columns `j0..j0 + nc` of a transposed B block of `kc` positions,
/// 16 columns at a time with [`transpose_runs`]: column `r` is read at
/// `row(r)` (image 0, run base 0); columns past `nc` are zero.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose_panels(
    j0: usize,
    nc: usize,
    kc: usize,
    dst: &mut [f32],
    image_len: usize,
    runs: &[Run],
    row: impl Fn(usize) -> *const f32,
) {
    const L: usize = 16;
    for jp in 0..nc.div_ceil(NR) {
        for q in 0..NR / L {
            let r0 = j0 + jp * NR + q * L;
            let live = (j0 + nc).saturating_sub(r0).min(L);
            // Dead columns point at a live one; they are never read.
            let rows: [*const f32; L] =
                std::array::from_fn(|l| row(if live == 0 { j0 } else { r0 + l.min(live - 1) }));
            let out = dst.as_mut_ptr().add(jp * kc * NR + q * L);
            transpose_runs(&rows, live, image_len, runs, out);
        }
    }
}

/// For each run, writes the transpose of 16 rows read at `rows[l] + img ·
/// image_len + base` (rows `l >= live` read as zeros): position `c + p` of
/// the run becomes the 16-float line at `dst + (c + p) · NR`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose_runs(
    rows: &[*const f32; 16],
    live: usize,
    image_len: usize,
    runs: &[Run],
    dst: *mut f32,
) {
    let zero = _mm512_setzero_ps();
    for run in runs {
        let off = run.img * image_len + run.base;
        let mut p = 0;
        while p < run.len {
            let n = (run.len - p).min(16);
            let m = lanes(n);
            let block: [__m512; 16] = std::array::from_fn(|l| {
                if l < live {
                    _mm512_maskz_loadu_ps(m, rows[l].add(off + p))
                } else {
                    zero
                }
            });
            let lines = transpose16(block);
            let out = dst.add((run.c + p) * NR);
            for (j, line) in lines.iter().enumerate().take(n) {
                _mm512_storeu_ps(out.add(j * NR), *line);
            }
            p += 16;
        }
    }
}

/// Writes 16 rows of `kc` floats at `rows` transposed: position `p` becomes
/// the 16-float line at `dst + p · NR`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose_out(rows: *const f32, kc: usize, dst: *mut f32) {
    let mut p0 = 0;
    while p0 < kc {
        let block: [__m512; 16] = std::array::from_fn(|l| _mm512_loadu_ps(rows.add(l * kc + p0)));
        let lines = transpose16(block);
        for (j, line) in lines.iter().enumerate().take(kc - p0) {
            _mm512_storeu_ps(dst.add((p0 + j) * NR), *line);
        }
        p0 += 16;
    }
}

/// Input-gradient planes of a backward-data task — images `n0..n0 + nimg`,
/// channels `ci0..ci0 + cin` of a group — held padded like [`PaddedChunk`]
/// (whole planes) and zero-initialised: `col2im` becomes contiguous vector
/// adds, and [`PaddedGrad::unpad`] writes the valid region to `dx`.
pub(crate) struct PaddedGrad<'a> {
    s: &'a ConvShape,
    g: Geom,
    n0: usize,
    nimg: usize,
    cin: usize,
    data: &'a mut [f32],
}

impl<'a> PaddedGrad<'a> {
    /// Floats needed for `nimg` images and `cin` channels.
    pub fn len(s: &ConvShape, nimg: usize, cin: usize) -> usize {
        nimg * cin * Geom::forward(s).padded_len()
    }

    /// Zeroed planes for `images` × `cin` channels in `buf` (of
    /// [`PaddedGrad::len`] floats).
    pub fn new(buf: &'a mut [f32], s: &'a ConvShape, images: Range<usize>, cin: usize) -> Self {
        let g = Geom::forward(s);
        let len = images.len() * cin * g.padded_len();
        buf[..len].fill(0.0);
        PaddedGrad {
            s,
            g,
            n0: images.start,
            nimg: images.len(),
            cin,
            data: &mut buf[..len],
        }
    }

    /// Adds the lowered gradient `col` — rows `(channel, tap)` for all the
    /// task's channels, `ch.cols()` columns — of chunk `ch` into the planes.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn add_lowered(&mut self, ch: Chunk, col: &[f32]) {
        let ks = self.s.kernel_spatial();
        let cols = ch.cols();
        assert!(col.len() >= self.cin * ks * cols);
        assert!(ch.n0 >= self.n0 && ch.n0 + ch.nimg <= self.n0 + self.nimg);
        let plane = self.g.padded_len();
        let data = self.data.as_mut_ptr();
        let mut runs = [Run::default(); MAX_RUNS];
        let mut c0 = 0;
        while c0 < cols {
            let len = (MAX_RUNS / 2).min(cols - c0);
            let count = chunk_runs(self.s, &self.g, ch, 0, c0, len, usize::MAX, &mut runs);
            for r in 0..self.cin * ks {
                let (c, t) = (r / ks, r % ks);
                let tap = tap_offset(self.s, &self.g, t);
                let src = col.as_ptr().add(r * cols + c0);
                for run in &runs[..count] {
                    let img = ch.n0 + run.img - self.n0;
                    let dst = data.add((img * self.cin + c) * plane + run.base + tap);
                    add_run(dst, src.add(run.c), run.len);
                }
            }
            c0 += len;
        }
    }

    /// Writes the valid region of every plane to the matching `dx` plane
    /// (channel `c_first + c` of each image), zero where no tap reached.
    pub fn unpad(&self, level: Isa, dx: super::par::SendPtr, c_first: usize) {
        let isp = self.s.input_spatial();
        let plane = self.g.padded_len();
        for i in 0..self.nimg {
            for c in 0..self.cin {
                let at = ((self.n0 + i) * self.s.c_in + c_first + c) * isp;
                // SAFETY: the task owns these dx planes.
                let out = unsafe { dx.slice(at, isp) };
                let src = &self.data[(i * self.cin + c) * plane..][..plane];
                unpad_plane(level, out, src, self.s.input, &self.g);
            }
        }
    }
}

/// `dst[j] += src[j]` for `j < n`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn add_run(dst: *mut f32, src: *const f32, n: usize) {
    let mut i = 0;
    while i + 16 <= n {
        let v = _mm512_add_ps(_mm512_loadu_ps(dst.add(i)), _mm512_loadu_ps(src.add(i)));
        _mm512_storeu_ps(dst.add(i), v);
        i += 16;
    }
    if i < n {
        let m = lanes(n - i);
        let v = _mm512_add_ps(
            _mm512_maskz_loadu_ps(m, dst.add(i)),
            _mm512_maskz_loadu_ps(m, src.add(i)),
        );
        _mm512_mask_storeu_ps(dst.add(i), m, v);
    }
}

/// Channel rows `c0..` of a `[n, channels, plane]` tensor at the chunk's
/// positions.
pub(crate) struct ImagesB<'a> {
    pub src: &'a [f32],
    pub channels: usize,
    pub c0: usize,
    pub plane: usize,
    pub ch: Chunk,
}

impl PackB for ImagesB<'_> {
    #[inline(always)]
    unsafe fn pack(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        self.pack_avx512(k0, kc, j0, nc, dst);
    }
}

impl ImagesB<'_> {
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_avx512(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        assert!(dst.len() >= nc.div_ceil(NR) * kc * NR);
        let last =
            ((self.ch.n0 + self.ch.nimg - 1) * self.channels + self.c0 + k0 + kc) * self.plane;
        assert!(kc == 0 || last <= self.src.len());
        for r in k0..k0 + kc {
            let row = PanelRow {
                base: dst.as_mut_ptr().add((r - k0) * NR),
                stride: kc * NR,
            };
            for_each_image_run(self.ch, j0, nc, |i, p, c, len| {
                let at = ((self.ch.n0 + i) * self.channels + self.c0 + r) * self.plane + p;
                row.copy(c, self.src.as_ptr().add(at), len, 1);
            });
            row.zeros(nc, nc.div_ceil(NR) * NR - nc);
        }
    }
}

/// Transposed [`ImagesB`]: rows are the chunk's positions, columns the
/// channel rows `c0..` (the input of a pointwise weight gradient), packed by
/// 16×16 transposes straight from the tensor.
pub(crate) struct ImagesTB<'a> {
    pub src: &'a [f32],
    pub channels: usize,
    pub c0: usize,
    pub plane: usize,
    pub ch: Chunk,
}

impl PackB for ImagesTB<'_> {
    #[inline(always)]
    unsafe fn pack(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        self.pack_avx512(k0, kc, j0, nc, dst);
    }
}

impl ImagesTB<'_> {
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_avx512(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        assert!(kc <= KC && dst.len() >= nc.div_ceil(NR) * kc * NR && k0 + kc <= self.ch.cols());
        let last =
            ((self.ch.n0 + self.ch.nimg - 1) * self.channels + self.c0 + j0 + nc) * self.plane;
        assert!(nc == 0 || (last <= self.src.len() && self.ch.p0 + self.ch.np <= self.plane));
        let mut runs = [Run::default(); MAX_RUNS];
        let mut count = 0;
        for_each_image_run(self.ch, k0, kc, |i, p, c, len| {
            runs[count] = Run {
                c,
                len,
                img: i,
                base: p,
            };
            count += 1;
        });
        let image_len = self.channels * self.plane;
        let first = self.src.as_ptr().add(self.ch.n0 * image_len);
        transpose_panels(j0, nc, kc, dst, image_len, &runs[..count], |r| {
            first.add((self.c0 + r) * self.plane)
        });
    }
}

/// Transposes a 16×16 block: `out[j][l] = rows[l][j]`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // Within 128-bit lanes: pairs of rows, then quadruples.
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // u[4q + j] holds column 4·lane + j of rows 4q..4q+4 in each 128-bit lane.
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (q, j) = (i / 4, i % 4);
        let (a, b) = (t[4 * q + (j / 2)], t[4 * q + 2 + (j / 2)]);
        if j % 2 == 0 {
            _mm512_shuffle_ps::<0x44>(a, b)
        } else {
            _mm512_shuffle_ps::<0xEE>(a, b)
        }
    });
    let mut out = [_mm512_setzero_ps(); 16];
    for j in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[j], u[4 + j]);
        let v1 = _mm512_shuffle_f32x4::<0xDD>(u[j], u[4 + j]);
        let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + j], u[12 + j]);
        let v3 = _mm512_shuffle_f32x4::<0xDD>(u[8 + j], u[12 + j]);
        out[j] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
        out[8 + j] = _mm512_shuffle_f32x4::<0xDD>(v0, v2);
        out[4 + j] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
        out[12 + j] = _mm512_shuffle_f32x4::<0xDD>(v1, v3);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[target_feature(enable = "avx512f")]
    unsafe fn transpose_ok() -> bool {
        let src: Vec<f32> = (0..256).map(|v| v as f32).collect();
        let rows: [__m512; 16] = std::array::from_fn(|l| _mm512_loadu_ps(src.as_ptr().add(16 * l)));
        let out = transpose16(rows);
        let mut got = [0.0f32; 256];
        for (j, v) in out.iter().enumerate() {
            _mm512_storeu_ps(got.as_mut_ptr().add(16 * j), *v);
        }
        (0..16).all(|j| (0..16).all(|l| got[16 * j + l] == src[16 * l + j]))
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn strided_copies_ok() -> bool {
        let src: Vec<f32> = (0..100).map(|v| v as f32 + 0.5).collect();
        for step in 1..4 {
            for n in 0..=(99 / step + 1).min(40) {
                if n > 0 && (n - 1) * step >= src.len() {
                    continue;
                }
                let mut dst = vec![-1.0f32; 48];
                copy_run(dst.as_mut_ptr(), src.as_ptr(), n, step);
                let want: Vec<f32> = (0..n).map(|j| src[j * step]).collect();
                if dst[..n] != want[..] || dst[n..].iter().any(|&v| v != -1.0) {
                    return false;
                }
                store_zeros(dst.as_mut_ptr(), n);
                if dst[..n].iter().any(|&v| v != 0.0) || dst[n..].iter().any(|&v| v != -1.0) {
                    return false;
                }
            }
        }
        true
    }

    #[test]
    fn transpose_and_copies_are_exact() {
        if !crate::cpu::simd::has_avx512() {
            return; // nothing to check on this CPU: the kernels never run here
        }
        // SAFETY: AVX-512F is available.
        unsafe {
            assert!(transpose_ok());
            assert!(strided_copies_ok());
        }
    }
}
