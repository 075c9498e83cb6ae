//! Zero-padded copies of input planes with each row split into `stride`
//! phases, shared by the direct depthwise loops and the im2col packing: on
//! such a copy every kernel tap of every output row reads one contiguous,
//! in-bounds run, so the hot loops carry no padding or stride logic.

use std::ops::Range;

use super::geometry::valid_range;
use super::simd::{dispatch_simd, load_upto, Isa, Simd};
use super::ConvShape;

/// Widest vector of any [`Simd`] implementation: padded rows leave room for
/// one of these past the last output.
pub(crate) const MAX_LANES: usize = 16;
/// Most kernel rows (`kd · kh`) [`Geom::tap_rows`] handles.
pub(crate) const MAX_ROWS: usize = 64;

/// A correlation on a zero-padded, phase-split copy of one plane: output
/// `(od, oh, ow)` and tap `(kd, kh, kw)` read padded position
/// `(od·s₀ + kd·d₀, oh·s₁ + kh·d₁, ow·s₂ + kw·d₂)`, and padded position `i`
/// holds source position `i − lo` (zero outside the source).
///
/// Padded row `(d, h)` starts at `(d·hp + h)·s₂·wq`; column `j·s₂ + r` of it is
/// at offset `r·wq + j` (phase `r`), so a tap's run over `ow` is contiguous.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    pub out: [usize; 3],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub dil: [usize; 3],
    pub lo: [isize; 3],
    /// Padded depth and height.
    pub dp: usize,
    pub hp: usize,
    /// Floats per phase of a padded row.
    pub wq: usize,
}

impl Geom {
    pub fn new(
        out: [usize; 3],
        kernel: [usize; 3],
        stride: [usize; 3],
        dil: [usize; 3],
        lo: [isize; 3],
    ) -> Geom {
        let span = |a: usize| (out[a] - 1) * stride[a] + (kernel[a] - 1) * dil[a] + 1;
        // Vector runs start at multiples of the lane count and may run past `out[2]`.
        let wq = out[2].next_multiple_of(MAX_LANES) + (kernel[2] - 1) * dil[2] / stride[2] + 1;
        Geom {
            out,
            kernel,
            stride,
            dil,
            lo,
            dp: span(0),
            hp: span(1),
            wq,
        }
    }

    /// Forward correlation of `x` (padding `pad`).
    pub fn forward(s: &ConvShape) -> Geom {
        Geom::new(
            s.output,
            s.kernel,
            s.stride,
            s.dilation,
            s.pad.map(|p| p as isize),
        )
    }

    /// Backward data at stride 1: `dy` correlated with the flipped kernel.
    pub fn transposed_unit_stride(s: &ConvShape) -> Geom {
        let lo = std::array::from_fn(|a| {
            ((s.kernel[a] - 1) * s.dilation[a]) as isize - s.pad[a] as isize
        });
        Geom::new(s.input, s.kernel, [1; 3], s.dilation, lo)
    }

    pub fn padded_len(&self) -> usize {
        self.dp * self.hp * self.row_len()
    }

    /// Floats per padded row (all phases).
    #[inline(always)]
    pub fn row_len(&self) -> usize {
        self.stride[2] * self.wq
    }

    /// Offset of padded row `(d, h)`.
    #[inline(always)]
    pub fn row(&self, d: usize, h: usize) -> usize {
        (d * self.hp + h) * self.stride[2] * self.wq
    }

    /// Offset within a padded row of the run tap `kw` reads for `ow = 0`.
    #[inline(always)]
    pub fn tap(&self, kw: usize) -> usize {
        let t = kw * self.dil[2];
        (t % self.stride[2]) * self.wq + t / self.stride[2]
    }

    /// Offsets of the padded rows kernel rows `(kd, kh)` read for output row
    /// `(od, oh)`, in kernel order.
    #[inline(always)]
    pub fn tap_rows(&self, od: usize, oh: usize, rows: &mut [usize; MAX_ROWS]) {
        let [kd_n, kh_n, _] = self.kernel;
        for kd in 0..kd_n {
            for kh in 0..kh_n {
                rows[kd * kh_n + kh] = self.row(
                    od * self.stride[0] + kd * self.dil[0],
                    oh * self.stride[1] + kh * self.dil[1],
                );
            }
        }
    }
}

/// `dst[..n] = src[..n]` in whole vectors plus one partial one.
///
/// # Safety
/// `src..src + n` readable, `dst..dst + n` writable.
#[inline(always)]
pub(crate) unsafe fn copy_vec<S: Simd>(dst: *mut f32, src: *const f32, n: usize) {
    let mut i = 0;
    while i + S::N <= n {
        S::load(src.add(i)).store(dst.add(i));
        i += S::N;
    }
    if i < n {
        S::load_part(src.add(i), n - i).store_part(dst.add(i), n - i);
    }
}

/// `dst[..n] = 0` in whole vectors plus one partial one.
///
/// # Safety
/// `dst..dst + n` writable.
#[inline(always)]
pub(crate) unsafe fn zero_vec<S: Simd>(dst: *mut f32, n: usize) {
    let mut i = 0;
    while i + S::N <= n {
        S::zero().store(dst.add(i));
        i += S::N;
    }
    if i < n {
        S::zero().store_part(dst.add(i), n - i);
    }
}

/// Fills `dst` with padded rows `rows` (flattened `d·hp + h` indices) of
/// the padded, phase-split copy of the plane `src` of size `dims`: row `r`
/// lands at `(r − rows.start) · g.row_len()`.
#[inline(always)]
fn pad_rows_impl<S: Simd>(
    dst: &mut [f32],
    src: &[f32],
    dims: [usize; 3],
    g: &Geom,
    rows: Range<usize>,
) {
    let [d_n, h_n, w_n] = dims;
    let row_len = g.row_len();
    assert!(rows.end <= g.dp * g.hp && dst.len() >= rows.len() * row_len);
    assert!(src.len() >= d_n * h_n * w_n);
    let phases = g.stride[2];
    // Phase `r` of a padded row: part[j] = src_row[j·phases + r − lo] for j
    // in a..b, zero elsewhere; the same for every row.
    const MAX_PHASES: usize = 8;
    let span = |r: usize| {
        let off = r as isize - g.lo[2];
        let (a, b) = valid_range(g.wq, phases, off, w_n);
        (a, b, ((a * phases) as isize + off).max(0) as usize)
    };
    let mut spans = [(0, 0, 0); MAX_PHASES];
    for (r, sp) in spans.iter_mut().enumerate().take(phases.min(MAX_PHASES)) {
        *sp = span(r);
    }
    let (mut d, mut h) = (rows.start / g.hp, rows.start % g.hp);
    for k in 0..rows.len() {
        let row = &mut dst[k * row_len..][..row_len];
        let (sd, sh) = (d as isize - g.lo[0], h as isize - g.lo[1]);
        h += 1;
        if h == g.hp {
            (d, h) = (d + 1, 0);
        }
        if sd < 0 || sh < 0 || sd >= d_n as isize || sh >= h_n as isize {
            // SAFETY: `row` is writable.
            unsafe { zero_vec::<S>(row.as_mut_ptr(), row.len()) };
            continue;
        }
        let src_row = &src[(sd as usize * h_n + sh as usize) * w_n..][..w_n];
        for (r, part) in row.chunks_exact_mut(g.wq).enumerate() {
            let (a, b, start) = if r < MAX_PHASES { spans[r] } else { span(r) };
            // SAFETY: all ranges lie inside `part` and `src_row`.
            unsafe {
                zero_vec::<S>(part.as_mut_ptr(), a);
                zero_vec::<S>(part.as_mut_ptr().add(b), g.wq - b);
                if b > a {
                    if phases == 1 {
                        copy_vec::<S>(part.as_mut_ptr().add(a), src_row.as_ptr().add(start), b - a);
                    } else if phases == 2 {
                        // Every other source column, a vector at a time.
                        let (out, from) = (part.as_mut_ptr().add(a), src_row.as_ptr().add(start));
                        let avail = w_n - start;
                        let mut j = 0;
                        while j < b - a {
                            let v = S::load_even(from.add(2 * j), avail - 2 * j);
                            if b - a - j >= S::N {
                                v.store(out.add(j));
                            } else {
                                v.store_part(out.add(j), b - a - j);
                            }
                            j += S::N;
                        }
                    } else {
                        for (j, o) in part[a..b].iter_mut().enumerate() {
                            *o = *src_row.get_unchecked(start + j * phases);
                        }
                    }
                }
            }
        }
    }
}

dispatch_simd!(pub(crate) fn pad_rows(dst: &mut [f32], src: &[f32], dims: [usize; 3], g: &Geom, rows: Range<usize>) => pad_rows_impl);

/// The whole padded copy of a plane (see [`pad_rows`]).
pub(crate) fn pad_plane(level: Isa, dst: &mut [f32], src: &[f32], dims: [usize; 3], g: &Geom) {
    pad_rows(level, dst, src, dims, g, 0..g.dp * g.hp);
}

/// The inverse of [`pad_plane`]: writes the source-plane positions of the
/// padded plane `src` into `dst` (of size `dims`), zero for positions outside
/// the padded region. Needs `g.lo >= 0` (a forward geometry).
#[inline(always)]
fn unpad_plane_impl<S: Simd>(dst: &mut [f32], src: &[f32], dims: [usize; 3], g: &Geom) {
    let [d_n, h_n, w_n] = dims;
    assert!(
        g.lo.iter().all(|&l| l >= 0) && dst.len() >= d_n * h_n * w_n && src.len() >= g.padded_len()
    );
    let lo = g.lo.map(|l| l as usize);
    let phases = g.stride[2];
    for d in 0..d_n {
        for h in 0..h_n {
            let out = &mut dst[(d * h_n + h) * w_n..][..w_n];
            let (pd, ph) = (d + lo[0], h + lo[1]);
            if pd >= g.dp || ph >= g.hp {
                // SAFETY: `out` is writable.
                unsafe { zero_vec::<S>(out.as_mut_ptr(), w_n) };
                continue;
            }
            let row = &src[g.row(pd, ph)..][..g.row_len()];
            if phases == 1 {
                let n = w_n.min(g.wq.saturating_sub(lo[2]));
                // SAFETY: both ranges lie inside `out` and `row`.
                unsafe {
                    copy_vec::<S>(out.as_mut_ptr(), row.as_ptr().add(lo[2]), n);
                    zero_vec::<S>(out.as_mut_ptr().add(n), w_n - n);
                }
            } else if phases == 2 {
                // out[2i] from the phase of column lo, out[2i + 1] from the other.
                let (ja, jb) = (lo[2] / 2, (lo[2] + 1) / 2);
                let ra = row[(lo[2] % 2) * g.wq..].as_ptr();
                let rb = row[(1 - lo[2] % 2) * g.wq..].as_ptr();
                let na = w_n.div_ceil(2).min(g.wq.saturating_sub(ja));
                let nb = (w_n / 2).min(g.wq.saturating_sub(jb));
                let mut i = 0;
                while 2 * i < w_n {
                    let take = |count: usize| count.saturating_sub(i).min(S::N);
                    // SAFETY: lanes read lie in the phase rows (`na`, `nb`
                    // bound them); `out[2i..]` holds the lanes written.
                    // Whole vectors where the phase row has them: a masked
                    // load costs more, on AMD CPUs especially.
                    unsafe {
                        let va = load_upto::<S>(ra.add(ja + i), take(na));
                        let vb = load_upto::<S>(rb.add(jb + i), take(nb));
                        S::store_interleaved(va, vb, out.as_mut_ptr().add(2 * i), w_n - 2 * i);
                    }
                    i += S::N;
                }
            } else {
                for (w, o) in out.iter_mut().enumerate() {
                    let col = w + lo[2];
                    let (r, j) = (col % phases, col / phases);
                    *o = if j < g.wq { row[r * g.wq + j] } else { 0.0 };
                }
            }
        }
    }
}

dispatch_simd!(pub(crate) fn unpad_plane(dst: &mut [f32], src: &[f32], dims: [usize; 3], g: &Geom) => unpad_plane_impl);
