//! Packing of the `B` operand of the packed GEMM straight from the tensors:
//! the lowered input (im2col) for the forward pass, its transpose for the
//! weight gradient, and plain channel rows (`dy`, or `x` of a pointwise
//! convolution). Written once over the GEMM's instruction set ([`Packed`]).
//!
//! The lowered input is read from a [`PaddedChunk`] — the chunk's input planes
//! copied once with zero padding and stride phases split out — so each run of
//! a lowered row is a plain contiguous copy; the run layout of a block is
//! computed once and replayed for every lowered row. When the padded planes do
//! not fit in the budget, the `Direct*` providers gather from `x` itself.
//! Copies use full-width vector loads and stores (stride 2 via a
//! two-register permute); transposes go through lanes × lanes register
//! transposes (16×16 with AVX-512, 8×8 with AVX2).

use std::ops::Range;

use super::packed_gemm::{PackB, Packed, ShiftedB, WithPacked, KC, MAX_LANES};
use super::simd::{load_upto, Simd};

use super::geometry::{segments, valid_range, RowSegment};
use super::im2col::{for_each_image_run, image_runs, input_row, tap_of, tap_offsets, Chunk};
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
    #[inline(always)]
    unsafe fn zeros<S: Packed>(&self, mut c: usize, mut len: usize) {
        let nr = S::NR;
        while len > 0 {
            let n = (nr - c % nr).min(len);
            store_zeros::<S>(self.base.add((c / nr) * self.stride + c % nr), n);
            c += n;
            len -= n;
        }
    }

    /// `B[row][c + j] = src[j · step]` for `j < len`, split at panel boundaries.
    #[inline(always)]
    unsafe fn copy<S: Packed>(
        &self,
        mut c: usize,
        mut src: *const f32,
        mut len: usize,
        step: usize,
    ) {
        let nr = S::NR;
        while len > 0 {
            let n = (nr - c % nr).min(len);
            copy_run::<S>(self.base.add((c / nr) * self.stride + c % nr), src, n, step);
            c += n;
            src = src.add(n * step);
            len -= n;
        }
    }
}

/// `dst[j] = 0` for `j < n`.
#[inline(always)]
unsafe fn store_zeros<S: Simd>(dst: *mut f32, n: usize) {
    let z = S::zero();
    let mut i = 0;
    while i + S::N <= n {
        z.store(dst.add(i));
        i += S::N;
    }
    if i < n {
        z.store_part(dst.add(i), n - i);
    }
}

/// `dst[j] = src[j · step]` for `j < n`, reading nothing past `src[(n-1)·step]`.
#[inline(always)]
unsafe fn copy_run<S: Packed>(dst: *mut f32, src: *const f32, n: usize, step: usize) {
    let mut i = 0;
    match step {
        1 => {
            while i + S::N <= n {
                S::load(src.add(i)).store(dst.add(i));
                i += S::N;
            }
            if i < n {
                S::load_part(src.add(i), n - i).store_part(dst.add(i), n - i);
            }
        }
        2 => {
            while i < n {
                // Elements src[2i ..= 2(i + N - 1)], of which 2(n-i) - 1 exist.
                let v = S::load_even(src.add(2 * i), 2 * (n - i) - 1);
                if n - i >= S::N {
                    v.store(dst.add(i));
                } else {
                    v.store_part(dst.add(i), n - i);
                }
                i += S::N;
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
#[derive(Clone, Copy)]
enum Piece {
    Zeros(usize),
    Run(*const f32, usize),
}

/// The values one kernel tap reads from an input plane, by output row
/// segment. (Iterators rather than callbacks, so that the copies stay in the
/// caller's code, compiled for its instruction set.)
struct TapWalk<'a> {
    s: &'a ConvShape,
    off: [isize; 3],
    /// Output columns whose input column is inside the plane.
    lo_w: usize,
    hi_w: usize,
}

impl<'a> TapWalk<'a> {
    #[inline(always)]
    fn new(s: &'a ConvShape, tap: [usize; 3]) -> Self {
        let off = tap_offsets(s, tap);
        let (lo_w, hi_w) = valid_range(s.output[2], s.stride[2], off[2], s.input[2]);
        TapWalk { s, off, lo_w, hi_w }
    }

    /// The pieces (offset from the range's start, piece) the tap reads from
    /// the plane at `plane` for the output positions of `seg`, in order.
    #[inline(always)]
    unsafe fn pieces(
        &self,
        plane: *const f32,
        seg: RowSegment,
    ) -> impl Iterator<Item = (usize, Piece)> {
        let mut out = [(0, Piece::Zeros(0)); 3];
        let mut n = 0;
        let mut push = |o: usize, piece: Piece| {
            out[n] = (o, piece);
            n += 1;
        };
        match input_row(self.s, self.off, seg.od, seg.oh) {
            None => push(seg.offset, Piece::Zeros(seg.ow1 - seg.ow0)),
            Some(row_at) => {
                let lo = self.lo_w.clamp(seg.ow0, seg.ow1);
                let hi = self.hi_w.clamp(lo, seg.ow1);
                if lo > seg.ow0 {
                    push(seg.offset, Piece::Zeros(lo - seg.ow0));
                }
                if hi > lo {
                    let start = ((lo * self.s.stride[2]) as isize + self.off[2]) as usize;
                    push(
                        seg.offset + lo - seg.ow0,
                        Piece::Run(plane.add(row_at + start), hi - lo),
                    );
                }
                if seg.ow1 > hi {
                    push(seg.offset + hi - seg.ow0, Piece::Zeros(seg.ow1 - hi));
                }
            }
        }
        out.into_iter().take(n)
    }
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
    unsafe fn pack<S: Packed>(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        let nr = S::NR;
        let s = self.s;
        let ks = s.kernel_spatial();
        let sw = s.stride[2];
        assert!(dst.len() >= nc.div_ceil(nr) * kc * nr);
        assert!(k0 + kc <= s.c_in_per_group() * ks && j0 + nc <= self.ch.cols());
        for r in k0..k0 + kc {
            let (ci, tap) = (r / ks, tap_of(s, r % ks));
            let row = PanelRow {
                base: dst.as_mut_ptr().add((r - k0) * nr),
                stride: kc * nr,
            };
            let walk = TapWalk::new(s, tap);
            for (i, p, c, len) in image_runs(self.ch, j0, nc) {
                let plane = self.x.as_ptr().add(plane_at(s, self.ch, self.g, i, ci));
                for seg in segments(s.output, p, len) {
                    for (o, piece) in walk.pieces(plane, seg) {
                        match piece {
                            Piece::Zeros(n) => row.zeros::<S>(c + o, n),
                            Piece::Run(src, n) => row.copy::<S>(c + o, src, n, sw),
                        }
                    }
                }
            }
            row.zeros::<S>(nc, nc.div_ceil(nr) * nr - nc);
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
    unsafe fn pack<S: Packed>(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        let (l_n, nr) = (S::N, S::NR);
        let s = self.s;
        let ks = s.kernel_spatial();
        let sw = s.stride[2];
        assert!(kc <= KC && dst.len() >= nc.div_ceil(nr) * kc * nr);
        assert!(k0 + kc <= self.ch.cols() && j0 + nc <= s.c_in_per_group() * ks);
        // One vector's worth of lowered rows over the block's positions, one
        // row after another.
        let mut rows = [0.0f32; MAX_LANES * KC];
        let rp = rows.as_mut_ptr();
        for jp in 0..nc.div_ceil(nr) {
            for q in 0..nr / l_n {
                let r0 = j0 + jp * nr + q * l_n;
                let live = (j0 + nc).saturating_sub(r0).min(l_n);
                for l in 0..l_n {
                    let out = rp.add(l * kc);
                    if l >= live {
                        store_zeros::<S>(out, kc);
                        continue;
                    }
                    let r = r0 + l;
                    let (ci, tap) = (r / ks, tap_of(s, r % ks));
                    let walk = TapWalk::new(s, tap);
                    for (i, p, c, len) in image_runs(self.ch, k0, kc) {
                        let plane = self.x.as_ptr().add(plane_at(s, self.ch, self.g, i, ci));
                        for seg in segments(s.output, p, len) {
                            for (o, piece) in walk.pieces(plane, seg) {
                                match piece {
                                    Piece::Zeros(n) => store_zeros::<S>(out.add(c + o), n),
                                    Piece::Run(src, n) => copy_run::<S>(out.add(c + o), src, n, sw),
                                }
                            }
                        }
                    }
                }
                transpose_out::<S>(rp, kc, dst.as_mut_ptr().add(jp * kc * nr + q * l_n));
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

/// The geometry of a convolution's lowered input read in place from
/// zero-padded planes ([`ShiftedB`]), for kernels without depth taps and
/// unit depth stride. Each padded input plane is split into `s₁ · s₂` phase
/// planes (row phase × column phase, as many as the strides); phase plane
/// `(ph, pw)` holds padded positions `(i·s₁ + ph, j·s₂ + pw)`. Then tap
/// `(kh, kw)` of output `(oh, ow)` reads phase plane `(kh·d₁ mod s₁,
/// kw·d₂ mod s₂)` at `(oh + ⌊kh·d₁/s₁⌋, ow + ⌊kw·d₂/s₂⌋)`: with output row
/// `(od, oh)` at phase row `R = od·HP + oh` and flat column
/// `q = R·wq + ow`, every lowered row is a window of the phase planes
/// shifted by a per-tap offset. Phase rows are `wq = W + ⌊(kw − 1)·d₂/s₂⌋`
/// wide (no alignment slack), so the only wasted columns are the few past
/// each output row (and the rows between slices of a 3-D chunk). Rows wider
/// than a chunk are cut into column windows of `seg` outputs.
pub(crate) struct Shifted {
    /// Padding geometry of the window starting at output column 0.
    g: Geom,
    /// Row and column strides.
    s1: usize,
    s2: usize,
    h_out: usize,
    w_out: usize,
    /// Phase rows per output slice, and floats per phase row.
    hp: usize,
    wq: usize,
    /// Output columns per window.
    seg: usize,
    /// Phase rows a chunk holds, and floats per phase plane and channel.
    band_rows: usize,
    plane_len: usize,
    chan_len: usize,
    /// Whether some tap reads phase plane `ph·s₂ + pw`.
    used: Vec<bool>,
    /// Offset of each lowered row (channel, tap) from the chunk's first
    /// column.
    pub offs: Vec<usize>,
}

impl Shifted {
    /// The geometry for chunks of at most `rows` output rows (flattened
    /// `od·H + oh`), or of column windows of `seg < W` outputs of one row.
    pub fn new(s: &ConvShape, rows: usize, seg: usize) -> Shifted {
        assert!(s.kernel[0] == 1 && s.stride[0] == 1 && rows >= 1 && seg >= 1);
        assert!(rows == 1 || seg >= s.output[2]);
        let [_, h_out, w_out] = s.output;
        let seg = seg.min(w_out);
        let (s1, s2) = (s.stride[1], s.stride[2]);
        let (d1, d2) = (s.dilation[1], s.dilation[2]);
        let mut g = Geom::forward(s);
        g.wq = seg + (s.kernel[2] - 1) * d2 / s2;
        let (hp, wq) = (h_out + (s.kernel[1] - 1) * d1 / s1, g.wq);
        // `rows` output rows span at most this many phase rows (a chunk
        // that crosses slices also holds the rows between them).
        let span = (rows - 1) / h_out * hp + (rows - 1) % h_out + 1 + hp - h_out;
        let band_rows = span.min(s.output[0] * hp) + (s.kernel[1] - 1) * d1 / s1;
        let plane_len = band_rows * wq;
        let chan_len = s1 * s2 * plane_len;
        let ks = s.kernel_spatial();
        let mut used = vec![false; s1 * s2];
        let offs = (0..s.c_in_per_group() * ks)
            .map(|r| {
                let [_, kh, kw] = tap_of(s, r % ks);
                let phase = (kh * d1 % s1) * s2 + kw * d2 % s2;
                used[phase] = true;
                (r / ks) * chan_len + phase * plane_len + (kh * d1 / s1) * wq + kw * d2 / s2
            })
            .collect();
        Shifted {
            g,
            s1,
            s2,
            h_out,
            w_out,
            hp,
            wq,
            seg,
            band_rows,
            plane_len,
            chan_len,
            used,
            offs,
        }
    }

    /// Phase row of output row `v` (flattened `od·H + oh`).
    #[inline(always)]
    fn phase_row(&self, v: usize) -> usize {
        (v / self.h_out) * self.hp + v % self.h_out
    }

    /// Floats of a chunk's planes for `cin` channels, with the slack the
    /// kernel's reads past the last column need.
    pub fn len(&self, cin: usize) -> usize {
        cin * self.chan_len + self.wq + 3 * MAX_LANES
    }

    /// Flat columns of the chunk of output rows `rows`.
    pub fn cols(&self, rows: &Range<usize>) -> usize {
        (self.phase_row(rows.end - 1) + 1 - self.phase_row(rows.start)) * self.wq
    }

    /// Column windows per output row.
    pub fn windows(&self) -> usize {
        self.w_out.div_ceil(self.seg)
    }

    /// Pads output rows `rows` (column window `win`) of image `n`, group
    /// `group`'s channels, into `buf` (of [`Shifted::len`] floats) and
    /// returns the lowered input of the chunk as a [`ShiftedB`].
    #[allow(clippy::too_many_arguments)]
    pub fn build<'b>(
        &'b self,
        level: Isa,
        buf: &'b mut [f32],
        s: &ConvShape,
        x: &[f32],
        group: usize,
        n: usize,
        rows: Range<usize>,
        win: usize,
    ) -> ShiftedB<'b> {
        let cin = s.c_in_per_group();
        assert!(buf.len() >= self.len(cin) && rows.end <= s.output[0] * self.h_out);
        assert!(win < self.windows() && (win == 0 || rows.len() == 1));
        let mut g = self.g;
        g.lo[2] -= (win * self.seg * self.s2) as isize;
        let first = self.phase_row(rows.start);
        let last = (first + self.band_rows).min(s.output[0] * self.hp);
        let isp = s.input_spatial();
        let padded_rows = g.dp * g.hp;
        // One padded row, all its column phases (when they go to several planes).
        let mut tmp = vec![
            0.0f32;
            if self.s1 * self.s2 > 1 {
                g.row_len()
            } else {
                0
            }
        ];
        for c in 0..cin {
            let at = (n * s.c_in + group * cin + c) * isp;
            let src = &x[at..at + isp];
            let chan = &mut buf[c * self.chan_len..][..self.chan_len];
            if self.s1 * self.s2 == 1 {
                // The phase plane is the padded volume itself.
                let dst = &mut chan[..(last - first) * self.wq];
                pad_rows(level, dst, src, s.input, &g, first..last);
                continue;
            }
            for r in first..last {
                let (od, i) = (r / self.hp, r % self.hp);
                for ph in 0..self.s1 {
                    if !(0..self.s2).any(|pw| self.used[ph * self.s2 + pw]) {
                        continue;
                    }
                    let row = i * self.s1 + ph;
                    if row < g.hp && od * g.hp + row < padded_rows {
                        let idx = od * g.hp + row;
                        pad_rows(level, &mut tmp, src, s.input, &g, idx..idx + 1);
                    } else {
                        tmp.fill(0.0);
                    }
                    for pw in 0..self.s2 {
                        if self.used[ph * self.s2 + pw] {
                            let plane = (ph * self.s2 + pw) * self.plane_len;
                            chan[plane + (r - first) * self.wq..][..self.wq]
                                .copy_from_slice(&tmp[pw * self.wq..][..self.wq]);
                        }
                    }
                }
            }
        }
        ShiftedB {
            base: buf.as_ptr(),
            offs: &self.offs,
        }
    }

    /// Copies the valid columns of the chunk's product `c` (`m` rows of
    /// [`Shifted::cols`] columns) to output rows `rows` (column window
    /// `win`) of `y`'s channels `co0..co0 + m` of image `n`.
    ///
    /// # Safety
    /// No other thread may write those positions of `y` meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn store(
        &self,
        c: &[f32],
        m: usize,
        s: &ConvShape,
        y: super::par::SendPtr,
        n: usize,
        co0: usize,
        rows: Range<usize>,
        win: usize,
    ) {
        let cols = self.cols(&rows);
        let first = self.phase_row(rows.start);
        let ow0 = win * self.seg;
        let len = self.seg.min(self.w_out - ow0);
        let osp = s.output_spatial();
        assert!(c.len() >= m * cols);
        for co in 0..m {
            let plane = y.at((n * s.c_out + co0 + co) * osp + ow0);
            for v in rows.clone() {
                let src = &c[co * cols + (self.phase_row(v) - first) * self.wq..][..len];
                std::ptr::copy_nonoverlapping(src.as_ptr(), plane.add(v * self.w_out), len);
            }
        }
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
    unsafe fn pack<S: Packed>(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        let nr = S::NR;
        let pc = self.padded;
        let ks = pc.s.kernel_spatial();
        let npan = nc.div_ceil(nr);
        assert!(nc <= NC_RUNS && dst.len() >= npan * kc * nr && j0 + nc <= pc.ch.cols());
        assert!(k0 / ks >= pc.ci0 && (k0 + kc).div_ceil(ks) <= pc.ci0 + pc.cin);
        let mut runs = [Run::default(); MAX_RUNS];
        let count = pc.runs(j0, nc, nr, &mut runs);
        let d = dst.as_mut_ptr();
        for r in k0..k0 + kc {
            let (ci, t) = (r / ks, r % ks);
            let tap = pc.tap_offset(t);
            let row = d.add((r - k0) * nr);
            for run in &runs[..count] {
                let src = pc.plane(run.img, ci).add(run.base + tap);
                copy_run::<S>(
                    row.add((run.c / nr) * kc * nr + run.c % nr),
                    src,
                    run.len,
                    1,
                );
            }
            if !nc.is_multiple_of(nr) {
                store_zeros::<S>(row.add((npan - 1) * kc * nr + nc % nr), nr - nc % nr);
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
    unsafe fn pack<S: Packed>(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        let (l_n, nr) = (S::N, S::NR);
        let pc = self.padded;
        let ks = pc.s.kernel_spatial();
        assert!(kc <= KC && dst.len() >= nc.div_ceil(nr) * kc * nr && k0 + kc <= pc.ch.cols());
        assert!(j0 / ks >= pc.ci0 && (j0 + nc).div_ceil(ks) <= pc.ci0 + pc.cin);
        let mut runs = [Run::default(); MAX_RUNS];
        let count = pc.runs(k0, kc, usize::MAX, &mut runs);
        if kc >= DIRECT_MIN_RUN * count {
            // Long runs: transpose straight from the planes.
            transpose_panels::<S>(j0, nc, kc, dst, pc.image_len(), &runs[..count], |r| {
                pc.plane(0, r / ks).add(pc.tap_offset(r % ks))
            });
            return;
        }
        // One vector's worth of lowered rows over the block's positions, one
        // row after another.
        let mut rows = [0.0f32; MAX_LANES * KC];
        let rp = rows.as_mut_ptr();
        for jp in 0..nc.div_ceil(nr) {
            for q in 0..nr / l_n {
                let r0 = j0 + jp * nr + q * l_n;
                let live = (j0 + nc).saturating_sub(r0).min(l_n);
                for l in 0..l_n {
                    let out = rp.add(l * kc);
                    if l >= live {
                        store_zeros::<S>(out, kc);
                        continue;
                    }
                    let r = r0 + l;
                    let (ci, tap) = (r / ks, pc.tap_offset(r % ks));
                    for run in &runs[..count] {
                        copy_run::<S>(
                            out.add(run.c),
                            pc.plane(run.img, ci).add(run.base + tap),
                            run.len,
                            1,
                        );
                    }
                }
                transpose_out::<S>(rp, kc, dst.as_mut_ptr().add(jp * kc * nr + q * l_n));
            }
        }
    }
}

/// Shortest average run for which [`Im2colTB`] transposes straight from the
/// padded planes rather than through a row buffer (a run's last partial
/// block of lanes positions costs a whole transpose).
const DIRECT_MIN_RUN: usize = 24;

/// Packs columns `j0..j0 + nc` of a transposed B block of `kc` positions,
/// a vector's width of columns at a time with [`transpose_runs`]: column
/// `r` is read at `row(r)` (image 0, run base 0); columns past `nc` are zero.
#[inline(always)]
unsafe fn transpose_panels<S: Packed>(
    j0: usize,
    nc: usize,
    kc: usize,
    dst: &mut [f32],
    image_len: usize,
    runs: &[Run],
    row: impl Fn(usize) -> *const f32,
) {
    let (l_n, nr) = (S::N, S::NR);
    for jp in 0..nc.div_ceil(nr) {
        for q in 0..nr / l_n {
            let r0 = j0 + jp * nr + q * l_n;
            let live = (j0 + nc).saturating_sub(r0).min(l_n);
            // Dead columns point at a live one; they are never read.
            let rows: [*const f32; MAX_LANES] =
                std::array::from_fn(|l| row(if live == 0 { j0 } else { r0 + l.min(live - 1) }));
            let out = dst.as_mut_ptr().add(jp * kc * nr + q * l_n);
            transpose_runs::<S>(&rows, live, image_len, runs, out);
        }
    }
}

/// For each run, writes the transpose of `S::N` rows read at `rows[l] + img ·
/// image_len + base` (rows `l >= live` read as zeros): position `c + p` of
/// the run becomes the `S::N`-float line at `dst + (c + p) · NR`.
#[inline(always)]
unsafe fn transpose_runs<S: Packed>(
    rows: &[*const f32; MAX_LANES],
    live: usize,
    image_len: usize,
    runs: &[Run],
    dst: *mut f32,
) {
    for run in runs {
        let off = run.img * image_len + run.base;
        let mut p = 0;
        while p < run.len {
            let n = (run.len - p).min(S::N);
            let out = dst.add((run.c + p) * S::NR);
            S::transpose(
                |l| {
                    if l >= live {
                        S::zero()
                    } else {
                        load_upto(rows[l].add(off + p), n)
                    }
                },
                |j, line| {
                    if j < n {
                        line.store(out.add(j * S::NR))
                    }
                },
            );
            p += S::N;
        }
    }
}

/// Writes `S::N` rows of `kc` floats at `rows` transposed: position `p`
/// becomes the `S::N`-float line at `dst + p · NR`.
#[inline(always)]
unsafe fn transpose_out<S: Packed>(rows: *const f32, kc: usize, dst: *mut f32) {
    let mut p0 = 0;
    while p0 < kc {
        S::transpose(
            |l| S::load(rows.add(l * kc + p0)),
            |j, line| {
                if p0 + j < kc {
                    line.store(dst.add((p0 + j) * S::NR))
                }
            },
        );
        p0 += S::N;
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
    /// The CPU must support `S`.
    pub unsafe fn add_lowered<S: Packed>(&mut self, ch: Chunk, col: &[f32]) {
        S::enter(AddLowered {
            grad: self,
            ch,
            col,
        })
    }

    #[inline(always)]
    unsafe fn add_lowered_in<S: Packed>(&mut self, ch: Chunk, col: &[f32]) {
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
                    add_run::<S>(dst, src.add(run.c), run.len);
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

/// The arguments of [`PaddedGrad::add_lowered`].
struct AddLowered<'g, 'a, 'c> {
    grad: &'g mut PaddedGrad<'a>,
    ch: Chunk,
    col: &'c [f32],
}

impl WithPacked for AddLowered<'_, '_, '_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Packed>(self) {
        self.grad.add_lowered_in::<S>(self.ch, self.col)
    }
}

/// `dst[j] += src[j]` for `j < n`.
#[inline(always)]
unsafe fn add_run<S: Simd>(dst: *mut f32, src: *const f32, n: usize) {
    let mut i = 0;
    while i + S::N <= n {
        S::add(S::load(dst.add(i)), S::load(src.add(i))).store(dst.add(i));
        i += S::N;
    }
    if i < n {
        let v = S::add(
            S::load_part(dst.add(i), n - i),
            S::load_part(src.add(i), n - i),
        );
        v.store_part(dst.add(i), n - i);
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
    unsafe fn pack<S: Packed>(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        let nr = S::NR;
        assert!(dst.len() >= nc.div_ceil(nr) * kc * nr);
        let last =
            ((self.ch.n0 + self.ch.nimg - 1) * self.channels + self.c0 + k0 + kc) * self.plane;
        assert!(kc == 0 || last <= self.src.len());
        for r in k0..k0 + kc {
            let row = PanelRow {
                base: dst.as_mut_ptr().add((r - k0) * nr),
                stride: kc * nr,
            };
            for (i, p, c, len) in image_runs(self.ch, j0, nc) {
                let at = ((self.ch.n0 + i) * self.channels + self.c0 + r) * self.plane + p;
                row.copy::<S>(c, self.src.as_ptr().add(at), len, 1);
            }
            row.zeros::<S>(nc, nc.div_ceil(nr) * nr - nc);
        }
    }
}

/// `B` of one kernel tap's product in the input gradient by phase
/// (`lowered::subpixel`): channel rows `c0..` of `dy` (planes of `plane`
/// floats) at arbitrary positions, each column's moved by the tap's offset.
/// Columns at consecutive positions are copied as runs.
pub(crate) struct TapB<'a> {
    pub dy: &'a [f32],
    pub plane: usize,
    pub c0: usize,
    /// Per column: image and plane position in `dy` at offset zero.
    pub cols: &'a [isize],
    pub shift: isize,
}

impl TapB<'_> {
    /// Panics unless every element the products read (channels
    /// `c0..c0 + depth` at each column) lies in `dy`.
    pub fn check(&self, depth: usize) {
        let last = (self.c0 + depth - 1) * self.plane;
        for &y in self.cols {
            let at = y + self.shift;
            assert!(at >= 0 && at as usize + last < self.dy.len());
        }
    }
}

/// Most columns of one packed block (`Packed::NC` is at most 512).
const MAX_BLOCK_COLS: usize = 512;

impl PackB for TapB<'_> {
    #[inline(always)]
    unsafe fn pack<S: Packed>(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        let nr = S::NR;
        assert!(dst.len() >= nc.div_ceil(nr) * kc * nr && j0 + nc <= self.cols.len());
        assert!(nc <= MAX_BLOCK_COLS);
        // Runs of columns at consecutive positions: first column, offset, length.
        let mut runs = [(0usize, 0isize, 0usize); MAX_BLOCK_COLS];
        let mut count = 0;
        for (j, &y) in self.cols[j0..j0 + nc].iter().enumerate() {
            if count > 0 {
                let (c, y0, len) = &mut runs[count - 1];
                if *y0 + *len as isize == y && (*c + *len) % nr != 0 {
                    *len += 1;
                    continue;
                }
            }
            runs[count] = (j, y, 1);
            count += 1;
        }
        let runs = &runs[..count];
        let base = self
            .dy
            .as_ptr()
            .add((self.c0 + k0) * self.plane)
            .offset(self.shift);
        let tail = nc.div_ceil(nr) * nr - nc;
        for r in 0..kc {
            let row = PanelRow {
                base: dst.as_mut_ptr().add(r * nr),
                stride: kc * nr,
            };
            let src = base.add(r * self.plane);
            for &(c, y, len) in runs {
                let at = row.base.add((c / nr) * row.stride + c % nr);
                if len <= 2 {
                    for j in 0..len {
                        *at.add(j) = *src.offset(y + j as isize);
                    }
                } else {
                    copy_run::<S>(at, src.offset(y), len, 1);
                }
            }
            row.zeros::<S>(nc, tail);
        }
    }
}

/// The transposed lowered input of a band of the channels-last weight
/// gradient (`lowered::implicit_weights`) over the implicit forward's padded
/// planes: row `k` is real output position `k` of the band (virtual
/// `pv = (k / ow)·owv + k % ow`), column `j` of run `j / part_len` at that
/// run's offset `+ pv · lda + j % part_len`.
pub(crate) struct PlanesTB<'a> {
    pub input: &'a [f32],
    pub parts: &'a [(usize, usize)],
    pub part_len: usize,
    pub lda: usize,
    pub ow: usize,
    pub owv: usize,
}

impl PlanesTB<'_> {
    /// Panics unless every element of `positions` rows lies in the input.
    pub fn check(&self, positions: usize) {
        if positions == 0 {
            return;
        }
        let last = positions - 1;
        let pv = (last / self.ow) * self.owv + last % self.ow;
        for &(off, len) in self.parts {
            assert!(len == self.part_len && off + pv * self.lda + len <= self.input.len());
        }
    }
}

impl PackB for PlanesTB<'_> {
    #[inline(always)]
    unsafe fn pack<S: Packed>(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        let nr = S::NR;
        assert!(dst.len() >= nc.div_ceil(nr) * kc * nr);
        assert!((j0 + nc).div_ceil(self.part_len) <= self.parts.len());
        let inp = self.input.as_ptr();
        for jp in 0..nc.div_ceil(nr) {
            // The panel's columns as segments within one run each: panel
            // column, input offset, length.
            let (c0, c1) = (j0 + jp * nr, (j0 + nc).min(j0 + (jp + 1) * nr));
            let mut segs = [(0usize, 0usize, 0usize); MAX_PANEL_SEGMENTS];
            let mut count = 0;
            let mut j = c0;
            while j < c1 {
                let (part, o) = (j / self.part_len, j % self.part_len);
                let len = (self.part_len - o).min(c1 - j);
                segs[count] = (j - c0, self.parts[part].0 + o, len);
                count += 1;
                j += len;
            }
            let out = dst.as_mut_ptr().add(jp * kc * nr);
            let live = c1 - c0;
            // Virtual position `row_start + ow_at` of real position `k`,
            // stepped along without a division per row.
            let (mut row_start, mut ow_at) = ((k0 / self.ow) * self.owv, k0 % self.ow);
            // One run filling the panel (16 channels of a 3-wide kernel row)
            // is copied as `nr / N` whole vectors: through the general
            // segments it measured 1.4× slower at 16 channels.
            let whole = count == 1 && live == nr && nr % S::N == 0;
            for r in 0..kc {
                let row = out.add(r * nr);
                let at = (row_start + ow_at) * self.lda;
                if whole {
                    let src = inp.add(segs[0].1 + at);
                    let mut i = 0;
                    while i < nr {
                        S::load(src.add(i)).store(row.add(i));
                        i += S::N;
                    }
                } else {
                    for &(c, off, len) in &segs[..count] {
                        copy_run::<S>(row.add(c), inp.add(off + at), len, 1);
                    }
                    store_zeros::<S>(row.add(live), nr - live);
                }
                ow_at += 1;
                if ow_at == self.ow {
                    ow_at = 0;
                    row_start += self.owv;
                }
            }
        }
    }
}

/// Most segments of one panel (a panel of 48 columns over runs of one
/// channel each).
const MAX_PANEL_SEGMENTS: usize = 48;

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
    unsafe fn pack<S: Packed>(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        let nr = S::NR;
        assert!(kc <= KC && dst.len() >= nc.div_ceil(nr) * kc * nr && k0 + kc <= self.ch.cols());
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
        transpose_panels::<S>(j0, nc, kc, dst, image_len, &runs[..count], |r| {
            first.add((self.c0 + r) * self.plane)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`transpose_and_copies_ok`] compiled for an instruction set.
    struct Check;

    impl WithPacked for Check {
        type Output = bool;
        #[inline(always)]
        unsafe fn run<S: Packed>(self) -> bool {
            transpose_and_copies_ok::<S>()
        }
    }

    /// Transposes of a lanes × lanes block, and the strided copies and zero
    /// fills, against plain loops.
    #[inline(always)]
    fn transpose_and_copies_ok<S: Packed>() -> bool {
        let n = S::N;
        let src: Vec<f32> = (0..n * n).map(|v| v as f32).collect();
        let mut got = vec![0.0f32; n * n];
        // SAFETY: the caller checked the CPU; every access is in bounds.
        unsafe {
            S::transpose(
                |l| S::load(src.as_ptr().add(n * l)),
                |j, v| v.store(got.as_mut_ptr().add(n * j)),
            )
        };
        if !(0..n).all(|j| (0..n).all(|l| got[n * j + l] == src[n * l + j])) {
            return false;
        }
        let src: Vec<f32> = (0..100).map(|v| v as f32 + 0.5).collect();
        for step in 1..4 {
            for len in 0..=(99 / step + 1).min(40) {
                if len > 0 && (len - 1) * step >= src.len() {
                    continue;
                }
                let mut dst = vec![-1.0f32; 48];
                // SAFETY: as above (reads stop at src[(len-1)·step]).
                unsafe { copy_run::<S>(dst.as_mut_ptr(), src.as_ptr(), len, step) };
                let want: Vec<f32> = (0..len).map(|j| src[j * step]).collect();
                if dst[..len] != want[..] || dst[len..].iter().any(|&v| v != -1.0) {
                    return false;
                }
                // SAFETY: as above.
                unsafe { store_zeros::<S>(dst.as_mut_ptr(), len) };
                if dst[..len].iter().any(|&v| v != 0.0) || dst[len..].iter().any(|&v| v != -1.0) {
                    return false;
                }
            }
        }
        true
    }

    #[test]
    fn transpose_and_copies_are_exact_at_every_instruction_set() {
        use crate::cpu::simd::{Avx2, Avx512, Isa};
        if Isa::Avx512.supported() == Isa::Avx512 {
            // SAFETY: AVX-512F is available.
            assert!(unsafe { Avx512::enter(Check) });
        }
        if Isa::Avx2.supported() == Isa::Avx2 {
            // SAFETY: AVX2 and FMA are available.
            assert!(unsafe { Avx2::enter(Check) });
        }
    }
}
