//! A single-threaded f32 GEMM in BLIS order, written once and compiled for
//! each x86-64 vector instruction set ([`Packed`]: AVX-512F and AVX2 + FMA),
//! used by the lowered passes (the `gemm` crate only uses AVX2 on stable Rust, and
//! cannot take the lowered input in packed form).
//!
//! `C[m×n] (+)= A[m×k] · B[k×n]` with `C` row-major (unit column stride).
//! `B` is packed block by block by a [`PackB`] provider into panels of `NR`
//! columns, so the lowered matrix of a convolution (im2col) is written
//! straight into packed form and never materialised whole; `A` (row- or
//! column-major) is packed per depth block into panels of `MR` interleaved
//! rows when `C` is wide enough to pay for the copy, and read in place
//! otherwise. The loops follow the usual cache blocking: a `kc × NR` panel of
//! `B` stays in L1 while the micro-kernel walks down every `MR`-row panel of
//! the packed `A` block (in L2), so each step of `k` streams only `MR` floats
//! of `A` from L2. The micro-kernel keeps an `MR × NR` tile of `C` in
//! registers: per step of `k` it loads `NR / lanes` vectors of `B` and
//! broadcasts `MR` values of `A` — 8 × 48 with AVX-512 (24 accumulators,
//! 3 + 1 operands: 28 of the 32 zmm registers), 6 × 16 with AVX2 (12 + 2 + 1
//! of the 16 ymm registers; a 4 × 24 tile needs all 16, and the compiler's
//! register allocation then spills and shuffles in the loop). Both packed
//! buffers start on a cache line.

use super::matmul::{Mat, MatMut};
use super::simd::Simd;

/// Largest depth of one packed block (the packers' limit).
pub(crate) const KC: usize = 256;
/// Most rows of a micro-tile of any instruction set.
pub(crate) const MAX_MR: usize = 8;
/// Most lanes of a vector of any instruction set.
pub(crate) const MAX_LANES: usize = 16;
/// Floats of slack that let both packed areas start on a 64-byte line.
const ALIGN_SLACK: usize = 16;

/// A vector instruction set with a packed-GEMM micro-kernel: its tile and
/// block sizes, the few operations the packers need beyond [`Simd`], and
/// the entry that runs code compiled for it.
pub(crate) trait Packed: Simd {
    /// Rows of `C` per micro-tile (broadcast operand `A`), at most 8.
    const MR: usize;
    /// Vectors per micro-tile row.
    const NV: usize;
    /// Columns of `C` per micro-tile (vector operand `B`): the width of one
    /// packed panel of `B`.
    const NR: usize = Self::NV * Self::N;
    /// Preferred depth of one packed block: a `KC_L1 × NR` panel of `B`
    /// stays in a 32–48 KiB L1 data cache next to the streamed `A` panel.
    const KC_L1: usize;
    /// Most depth of one step of the implicit forward's tiles
    /// (`lowered::implicit`): a step's slice of a weights panel (`depth ×
    /// NR`) is read by every tile of the task's positions, each loading and
    /// storing its `C` once a step. At AVX2 the slice may outgrow L1 (see
    /// the AVX2 value); at AVX-512 it stays there (`KC_L1`).
    const IMPLICIT_STEP: usize = Self::KC_L1;
    /// Columns of one packed `B` block (a multiple of `NR`, at most 512).
    const NC: usize;
    /// Rows of one packed `A` block (a multiple of `MR`).
    const MC: usize;
    /// Fewest columns of `C` for which `A` is packed: below it each element
    /// of `A` meets too few columns to pay for its copy, and the kernel
    /// reads `A` in place.
    const PACK_A_MIN_COLS: usize = 4 * Self::NR;
    /// Floats of the per-thread buffer [`gemm`] works best with.
    const B_BLOCK_LEN: usize = Self::KC_L1 * (Self::NC + Self::MC) + ALIGN_SLACK;
    /// Fewest floats [`gemm`] accepts as its buffer (depth blocks of one).
    const MIN_BUF_LEN: usize = Self::NR + Self::MR + ALIGN_SLACK;

    /// Runs `t` with the micro-kernel of `nv` (`1..=NV`) vectors per row,
    /// for a row-major `A` panel or not, and a packed or shifted `B`.
    ///
    /// # Safety
    /// As [`Tile::run`]; only inside code compiled for this instruction set.
    unsafe fn tile(t: &Tile, nv: usize, row_major: bool, shifted: bool);

    /// Transposes the `N × N` block whose row `l` is `load(l)`, handing
    /// column `j` of it to `store(j, ·)`.
    ///
    /// # Safety
    /// Only inside code compiled for this instruction set.
    unsafe fn transpose(load: impl FnMut(usize) -> Self, store: impl FnMut(usize, Self));

    /// Runs `op` compiled for this instruction set.
    ///
    /// # Safety
    /// The CPU must support it.
    unsafe fn enter<W: WithPacked>(op: W) -> W::Output;
}

/// Work to run compiled for one [`Packed`] instruction set ([`Packed::enter`]).
/// Implementations mark `run` `#[inline(always)]` so that it, and what it
/// inlines, is compiled with that instruction set's features.
pub(crate) trait WithPacked {
    type Output;
    /// # Safety
    /// Runs only through [`Packed::enter`] of `S`.
    unsafe fn run<S: Packed>(self) -> Self::Output;
}

/// Supplies blocks of the `k × n` operand `B` in packed form.
pub(crate) trait PackB: Sync {
    /// Writes rows `k0..k0 + kc` and columns `j0..j0 + nc` of `B` into `dst`
    /// as `ceil(nc / S::NR)` consecutive panels of `kc × S::NR` floats
    /// (row-major within a panel), zero past column `nc` in the last panel.
    ///
    /// # Safety
    /// Only inside code compiled for `S` (a [`WithPacked::run`]); `kc <= KC`.
    unsafe fn pack<S: Packed>(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]);
}

/// `C = A · B`, or `C += A · B` when `accumulate`, for `A` of `m × k` (in
/// place with unit row or column stride, or packed beforehand: [`ASource`]),
/// `B` from `b` (`k × n`) and `C` of `m × n` with unit column stride, on
/// instruction set `S`. `buf` holds the packed blocks of `A` and `B`: up to
/// `S::B_BLOCK_LEN` floats are used, and at least `S::MIN_BUF_LEN` are
/// needed.
///
/// # Safety
/// The CPU must support `S`; `a` and `c` must address valid memory for the
/// given sizes (a packed `A`: at least `ceil(m / MR)` panels of depth `k`),
/// and no other thread may touch `c` meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm<S: Packed>(
    m: usize,
    n: usize,
    k: usize,
    a: ASource,
    b: &impl PackB,
    c: MatMut,
    accumulate: bool,
    buf: &mut [f32],
) {
    let a_ok = match a {
        ASource::Mat(a) => a.cs == 1 || a.rs == 1,
        ASource::Packed(p) => p.k == k,
    };
    assert!(c.cs == 1 && a_ok && buf.len() >= S::MIN_BUF_LEN);
    S::enter(Gemm {
        m,
        n,
        k,
        a,
        b,
        c,
        accumulate,
        buf,
    })
}

/// Where [`gemm`] finds `A`.
#[derive(Clone, Copy)]
pub(crate) enum ASource {
    /// In place, packed per block where `C` is wide enough.
    Mat(Mat),
    /// Packed whole beforehand.
    Packed(PackedA),
}

/// An `A` operand packed whole beforehand by [`pack_a_whole`], in the
/// order the GEMM reads it: depth blocks of `kc` (the GEMM's own `KC_L1`
/// blocking), each holding every `MR`-row panel of the block
/// (`A[ip·MR + i][k0 + p]` at `block + (ip·kcb + p)·MR + i`, `kcb` the
/// block's depth), zero past the last row. An `MC`-row block of `A` is then
/// one contiguous run, as the per-block packing leaves it. Products that
/// meet the same `A` in many column chunks (a convolution's weights) pack
/// it once per call instead of once per chunk.
#[derive(Clone, Copy)]
pub(crate) struct PackedA {
    ptr: *const f32,
    k: usize,
    kc: usize,
    /// Panels of the whole matrix.
    panels: usize,
}

// SAFETY: points into a buffer that outlives the products and that they
// only read.
unsafe impl Send for PackedA {}
unsafe impl Sync for PackedA {}

impl PackedA {
    /// Depth at which the block holding depth `k0` ends.
    fn block_end(&self, k0: usize) -> usize {
        self.k.min((k0 / self.kc + 1) * self.kc)
    }

    /// Panel `ip` of this product from depth `k0` on (to the block's end).
    unsafe fn panel(&self, ip: usize, k0: usize, mr: usize) -> *const f32 {
        let b0 = k0 / self.kc * self.kc;
        let kcb = self.kc.min(self.k - b0);
        self.ptr
            .add(b0 * self.panels * mr + (ip * kcb + k0 - b0) * mr)
    }
}

/// Depth of the blocks [`pack_a_whole`] writes for depth `k`: as even as
/// the GEMM's own blocking.
fn whole_kc<S: Packed>(k: usize) -> usize {
    k.div_ceil(k.div_ceil(S::KC_L1)).max(1)
}

/// Floats [`pack_a_whole`] writes for an `m × k` matrix.
pub(crate) fn packed_a_len<S: Packed>(m: usize, k: usize) -> usize {
    m.div_ceil(S::MR) * S::MR * k
}

/// Packs `a` (`m × k`, unit row or column stride) whole into `dst` (at
/// least [`packed_a_len`] floats) in the layout of [`PackedA`], split over
/// the current rayon pool by depth block and group of panels.
///
/// # Safety
/// The CPU must support `S`; `a` must address valid memory for `m × k`;
/// `dst` must outlive every use of the result.
pub(crate) unsafe fn pack_a_whole<S: Packed>(
    a: Mat,
    m: usize,
    k: usize,
    dst: &mut [f32],
) -> PackedA {
    use rayon::prelude::*;
    /// Panels per task: a few hundred KiB of packed `A` each.
    const PANELS: usize = 16;
    assert!((a.cs == 1 || a.rs == 1) && dst.len() >= packed_a_len::<S>(m, k));
    let (mr, panels, kc) = (S::MR, m.div_ceil(S::MR), whole_kc::<S>(k));
    let (src, rs, cs) = (crate::cpu::par::SendPtr(a.ptr as *mut f32), a.rs, a.cs);
    let out = crate::cpu::par::SendPtr(dst.as_mut_ptr());
    let groups = panels.div_ceil(PANELS);
    (0..k.div_ceil(kc) * groups).into_par_iter().for_each(|t| {
        let (b, grp) = (t / groups, t % groups);
        let (k0, i0) = (b * kc, grp * PANELS * mr);
        let kcb = kc.min(k - k0);
        // SAFETY: as this function's; each task writes its own panels of
        // its own block.
        unsafe {
            let a = Mat {
                ptr: src.at(0),
                rs,
                cs,
            };
            let mc = (m - i0).min(PANELS * mr);
            let len = mc.div_ceil(mr) * kcb * mr;
            let out = out.slice(k0 * panels * mr + i0 * kcb, len);
            S::enter(PackA {
                a,
                i0,
                mc,
                k0,
                kc: kcb,
                out,
            })
        }
    });
    PackedA {
        ptr: dst.as_ptr(),
        k,
        kc,
        panels,
    }
}

/// Floats [`pack_a_taps`] writes for `taps` matrices of `m × k`: each
/// [`packed_a_len`] long and one cache line apart, so that the sweep's
/// writes to the same place of every matrix do not fall into one cache set
/// (matrices of 512 KiB, DCGAN's, took 2.8 ns a float that way).
pub(crate) fn packed_taps_len<S: Packed>(m: usize, k: usize, taps: usize) -> usize {
    taps * (packed_a_len::<S>(m, k) + TAP_GAP)
}

/// Floats between two matrices of [`pack_a_taps`].
const TAP_GAP: usize = 16;

/// Packs `taps` matrices whole, each in the layout of [`PackedA`]:
/// matrix `t` (`m × k`) has `A_t[i][p] = src[i·rs + p·cs + t]`, and is
/// written to `dst[t·(len + TAP_GAP)..]`, `len` = [`packed_a_len`]`(m, k)`
/// ([`packed_taps_len`] floats in all). One sweep
/// reads `src` in its own order (the taps of an element are adjacent, as
/// in a convolution's weights `[co][ci][taps]`), split over the current
/// rayon pool by depth block and group of panels.
///
/// # Safety
/// `src` must address valid memory for every element named above; `dst`
/// must outlive every use of the results.
pub(crate) unsafe fn pack_a_taps<S: Packed>(
    src: *const f32,
    (m, k): (usize, usize),
    (rs, cs): (usize, usize),
    taps: usize,
    dst: &mut [f32],
) -> Vec<PackedA> {
    use rayon::prelude::*;
    /// Panels per task.
    const PANELS: usize = 16;
    let (mr, panels, kc) = (S::MR, m.div_ceil(S::MR), whole_kc::<S>(k));
    let len = packed_a_len::<S>(m, k) + TAP_GAP;
    assert!(dst.len() >= packed_taps_len::<S>(m, k, taps));
    let (from, out) = (
        crate::cpu::par::SendPtr(src as *mut f32),
        crate::cpu::par::SendPtr(dst.as_mut_ptr()),
    );
    let groups = panels.div_ceil(PANELS);
    (0..k.div_ceil(kc) * groups)
        .into_par_iter()
        .for_each(|task| {
            let (b, grp) = (task / groups, task % groups);
            let k0 = b * kc;
            let kcb = kc.min(k - k0);
            for ip in grp * PANELS..panels.min((grp + 1) * PANELS) {
                // SAFETY: as this function's; each task writes its own panels
                // of its own block of every matrix.
                unsafe {
                    let at = k0 * panels * mr + ip * kcb * mr;
                    for p in 0..kcb {
                        for i in 0..mr {
                            let row = ip * mr + i;
                            let o = at + p * mr + i;
                            if row < m {
                                let s = from.at(row * rs + (k0 + p) * cs);
                                for t in 0..taps {
                                    *out.at(t * len + o) = *s.add(t);
                                }
                            } else {
                                for t in 0..taps {
                                    *out.at(t * len + o) = 0.0;
                                }
                            }
                        }
                    }
                }
            }
        });
    (0..taps)
        .map(|t| PackedA {
            ptr: dst.as_ptr().add(t * len),
            k,
            kc,
            panels,
        })
        .collect()
}

/// The arguments of one task of [`pack_a_whole`].
struct PackA<'a> {
    a: Mat,
    i0: usize,
    mc: usize,
    k0: usize,
    kc: usize,
    out: &'a mut [f32],
}

impl WithPacked for PackA<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Packed>(self) {
        pack_a::<S>(self.a, self.i0, self.mc, self.k0, self.kc, self.out)
    }
}

/// The arguments of [`gemm`], run by [`gemm_in`].
struct Gemm<'a, B> {
    m: usize,
    n: usize,
    k: usize,
    a: ASource,
    b: &'a B,
    c: MatMut,
    accumulate: bool,
    buf: &'a mut [f32],
}

impl<B: PackB> WithPacked for Gemm<'_, B> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Packed>(self) {
        gemm_in::<S>(
            self.m,
            self.n,
            self.k,
            self.a,
            self.b,
            self.c,
            self.accumulate,
            self.buf,
        )
    }
}

/// A `B` operand read in place rather than packed: row `p` of `B`, from
/// column `j` on, is at `base + offs[p] + j` — the lowered input of a
/// stride-1 convolution on zero-padded planes, whose rows are the planes
/// shifted by each kernel tap. Reads may run up to `NR` floats past column
/// `n`, so the buffer must have that much slack.
#[derive(Clone, Copy)]
pub(crate) struct ShiftedB<'a> {
    pub base: *const f32,
    pub offs: &'a [usize],
}

/// `C = A · B` for `A` of `m × k` (row- or column-major, packed per block),
/// `B` a [`ShiftedB`] of `k × n` and `C` of `m × n` with unit column stride.
/// `buf` holds the packed blocks of `A`: at least `S::MR · min(k, S::KC_L1)`
/// floats, up to `S::MC · S::KC_L1`.
///
/// # Safety
/// The CPU must support `S`; `a`, `c` and every `B` element (with the
/// slack above) must address valid memory for the given sizes, and no other
/// thread may touch `c` meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_shifted<S: Packed>(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: ShiftedB,
    c: MatMut,
    buf: &mut [f32],
) {
    assert!(c.cs == 1 && (a.cs == 1 || a.rs == 1) && b.offs.len() >= k);
    assert!(buf.len() >= S::MR * k.min(S::KC_L1) + ALIGN_SLACK);
    S::enter(GemmShifted {
        m,
        n,
        k,
        a,
        b,
        c,
        buf,
    })
}

/// The arguments of [`gemm_shifted`].
struct GemmShifted<'a> {
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: ShiftedB<'a>,
    c: MatMut,
    buf: &'a mut [f32],
}

impl WithPacked for GemmShifted<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Packed>(self) {
        let GemmShifted {
            m,
            n,
            k,
            a,
            b,
            c,
            buf,
        } = self;
        if m == 0 || n == 0 {
            return;
        }
        let (mr, nr) = (S::MR, S::NR);
        let skip = buf.as_ptr().align_offset(64).min(ALIGN_SLACK);
        let abuf = &mut buf[skip..];
        let kc0 = k.div_ceil(k.div_ceil(S::KC_L1));
        let mc_max = S::MC
            .min(m.div_ceil(mr) * mr)
            .min(abuf.len() / kc0 / mr * mr)
            .max(mr);
        // Columns outermost so a block of C stays in cache across depth
        // blocks; each B panel (spread over the planes) stays in L1 while
        // the kernel walks down the packed A block.
        let mut j0 = 0;
        while j0 < n {
            let nc = S::NC.min(n - j0);
            let mut k0 = 0;
            while k0 < k {
                let kc = kc0.min(k - k0);
                let mut i0 = 0;
                while i0 < m {
                    let mc = mc_max.min(m - i0);
                    let mpan = mc.div_ceil(mr);
                    pack_a::<S>(a, i0, mc, k0, kc, abuf);
                    for jp in 0..nc.div_ceil(nr) {
                        let col = j0 + jp * nr;
                        let cols = nr.min(n - col);
                        for ip in 0..mpan {
                            let row = i0 + ip * mr;
                            tile_shifted_b::<S>(
                                kc,
                                abuf.as_ptr().add(ip * kc * mr),
                                b.base.add(col),
                                b.offs.as_ptr().add(k0),
                                c.ptr.add(row * c.rs + col),
                                c.rs,
                                k0 > 0,
                                mr.min(m - row),
                                cols,
                            );
                        }
                    }
                    i0 += mc;
                }
                k0 += kc;
            }
            j0 += nc;
        }
    }
}

/// Block sizes `(kc, nc, mc)` for a product of `m × n` over depth `k` within
/// `avail` floats of packed buffers: `kc` near `KC_L1` (even blocks),
/// `nc` and `mc` as large as fit, at least one panel each.
fn blocks<S: Packed>(m: usize, n: usize, k: usize, avail: usize) -> (usize, usize, usize) {
    let kc_cap = S::KC_L1.min(avail / (S::NR + S::MR)).max(1);
    let kc = k.div_ceil(k.div_ceil(kc_cap));
    let mut nc = S::NC.min(n.div_ceil(S::NR) * S::NR);
    let mut mc = S::MC.min(m.div_ceil(S::MR) * S::MR);
    let fit = avail / kc;
    if nc + mc > fit {
        // Keep the B block whole where possible; shrink the A block first.
        mc = (fit.saturating_sub(nc) / S::MR * S::MR).max(S::MR);
        if nc + mc > fit {
            nc = (fit.saturating_sub(mc) / S::NR * S::NR).max(S::NR);
        }
    }
    (kc, nc, mc)
}

/// The body of [`gemm`], compiled for `S`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_in<S: Packed>(
    m: usize,
    n: usize,
    k: usize,
    a: ASource,
    b: &impl PackB,
    c: MatMut,
    accumulate: bool,
    buf: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::slice::from_raw_parts_mut(c.ptr.add(i * c.rs), n).fill(0.0);
            }
        }
        return;
    }
    let (mr, nr) = (S::MR, S::NR);
    let skip = buf.as_ptr().align_offset(64).min(ALIGN_SLACK);
    let buf = &mut buf[skip..];
    let (kc0, nc_max, mc_max) = blocks::<S>(m, n, k, buf.len());
    let (bbuf, abuf) = buf.split_at_mut(nc_max * kc0);
    let (a, pre) = match a {
        ASource::Mat(a) => (a, None),
        ASource::Packed(p) => (
            Mat {
                ptr: p.ptr,
                rs: 0,
                cs: 0,
            },
            Some(p),
        ),
    };
    let pack = pre.is_some() || n >= S::PACK_A_MIN_COLS;
    let row_major = a.cs == 1;
    let mut edge = [0.0f32; KC * MAX_MR];
    // Columns outermost so a block of C stays in cache across depth blocks.
    let mut j0 = 0;
    while j0 < n {
        let nc = nc_max.min(n - j0);
        let npan = nc.div_ceil(nr);
        let mut k0 = 0;
        while k0 < k {
            // Depth blocks of a packed-beforehand A bound the GEMM's.
            let kc = kc0.min(pre.map_or(k, |p| p.block_end(k0)) - k0);
            b.pack::<S>(k0, kc, j0, nc, &mut bbuf[..npan * kc * nr]);
            let load = accumulate || k0 > 0;
            let mut i0 = 0;
            while i0 < m {
                let mc = mc_max.min(m - i0);
                let mpan = mc.div_ceil(mr);
                if pack && pre.is_none() {
                    pack_a::<S>(a, i0, mc, k0, kc, abuf);
                }
                // Packed A: each B panel stays in L1 while the kernel walks
                // down the A block. A in place: each A panel stays in L1
                // while the kernel walks across the (few) B panels, so A is
                // read from memory once.
                for idx in 0..npan * mpan {
                    let (jp, ip) = if pack {
                        (idx / mpan, idx % mpan)
                    } else {
                        (idx % npan, idx / npan)
                    };
                    let bp = bbuf.as_ptr().add(jp * kc * nr);
                    let col = j0 + jp * nr;
                    let cols = nr.min(n - col);
                    let row = i0 + ip * mr;
                    let rows = mr.min(m - row);
                    // A panel: packed whole beforehand or per block
                    // (column-major, MR apart), in place,
                    // or a partial one copied into `edge`.
                    let (ap, lda, rm) = if let Some(p) = pre {
                        (p.panel(i0 / mr + ip, k0, mr), mr, false)
                    } else if pack {
                        (abuf.as_ptr().add(ip * kc * mr), mr, false)
                    } else if rows == mr {
                        let at = a.ptr.add(row * a.rs + k0 * a.cs);
                        (at, if row_major { a.rs } else { a.cs }, row_major)
                    } else {
                        if jp == 0 {
                            pack_a::<S>(a, row, rows, k0, kc, &mut edge);
                        }
                        (edge.as_ptr(), mr, false)
                    };
                    let t = Tile {
                        kc,
                        a: ap,
                        lda,
                        b: bp,
                        offs: std::ptr::null(),
                        a_rows: std::ptr::null(),
                        c: c.ptr.add(row * c.rs + col),
                        ldc: c.rs,
                        load,
                        rows,
                        cols,
                    };
                    S::tile(&t, cols.div_ceil(S::N), rm, false);
                }
                i0 += mc;
            }
            k0 += kc;
        }
        j0 += nc;
    }
}

/// Packs rows `i0..i0 + mc` and columns `k0..k0 + kc` of `a` into
/// `ceil(mc / MR)` panels of `kc × MR` floats (`dst[p·MR + i]` =
/// `A[i0 + i][k0 + p]`), zero past row `mc` in the last panel.
///
/// # Safety
/// `a` must address valid memory for those rows and columns; only inside
/// code compiled for `S`.
#[inline(always)]
pub(crate) unsafe fn pack_a<S: Packed>(
    a: Mat,
    i0: usize,
    mc: usize,
    k0: usize,
    kc: usize,
    dst: &mut [f32],
) {
    let mr = S::MR;
    let mpan = mc.div_ceil(mr);
    assert!(dst.len() >= mpan * kc * mr);
    let full = if a.rs == 1 { mc / mr } else { 0 };
    if full > 0 {
        // Column-major: at each depth the rows of all panels are one
        // contiguous run. Take a few depths at a time across every panel:
        // the source is read row after row (a few streams, whole cache
        // lines), and each panel receives `DEPTHS · MR` contiguous floats
        // per visit.
        const DEPTHS: usize = 8;
        for p0 in (0..kc).step_by(DEPTHS) {
            let p1 = kc.min(p0 + DEPTHS);
            for ip in 0..full {
                let src = a.ptr.add(i0 + ip * mr + k0 * a.cs);
                let out = dst.as_mut_ptr().add(ip * kc * mr);
                for p in p0..p1 {
                    std::ptr::copy_nonoverlapping(src.add(p * a.cs), out.add(p * mr), mr);
                }
            }
        }
    }
    for ip in full..mpan {
        let rows = mr.min(mc - ip * mr);
        let panel = &mut dst[ip * kc * mr..][..kc * mr];
        let src = a.ptr.add((i0 + ip * mr) * a.rs + k0 * a.cs);
        let mut p0 = 0;
        if a.cs == 1 && rows == mr {
            // Row-major: blocks of 8 depths transposed in registers.
            while p0 + 8 <= kc {
                x86::transpose_rows::<S>(src, a.rs, p0, panel.as_mut_ptr().add(p0 * mr));
                p0 += 8;
            }
        }
        for i in 0..mr {
            for p in p0..kc {
                panel[p * mr + i] = if i < rows {
                    *src.add(i * a.rs + p * a.cs)
                } else {
                    0.0
                };
            }
        }
    }
}

/// Where the rows of a row-major `A` read in place start, from its base.
#[derive(Clone, Copy)]
pub(crate) enum ARows<'a> {
    /// Row `i` at `i · lda`.
    Stride(usize),
    /// Row `i` at `at[i]`, for all `MR` rows.
    At(&'a [usize; MAX_MR]),
}

/// One micro-tile of a product whose `A` is read in place, row-major
/// (`A[i][p]` at `a + row(i) + p`, [`ARows`]), against a packed `B` panel
/// (`B[p][j]` at `b + p·NR + j`): `C (+)= A · B` over depth `kc`, storing
/// `rows × cols` of it (`C[i][j]` at `c + i·ldc + j`). All `MR` rows of `A`
/// are read whatever `rows` is.
///
/// # Safety
/// Only inside code compiled for `S` (a [`WithPacked::run`]); `MR` rows of
/// `A`, the panel and `rows × cols` of `C` must be valid for the sizes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile_a_rows<S: Packed>(
    kc: usize,
    a: *const f32,
    a_rows: ARows,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    load: bool,
    rows: usize,
    cols: usize,
) {
    let (lda, at) = match a_rows {
        ARows::Stride(lda) => (lda, std::ptr::null()),
        ARows::At(at) => (0, at.as_ptr()),
    };
    let t = Tile {
        kc,
        a,
        lda,
        b,
        offs: std::ptr::null(),
        a_rows: at,
        c,
        ldc,
        load,
        rows,
        cols,
    };
    // A row-major tile "shifted" takes its rows from the list (its own
    // code: the strided one keeps the compiler's addressing of its rows).
    S::tile(&t, cols.div_ceil(S::N), true, !at.is_null());
}

/// One micro-tile of a product whose `A` is a panel packed by [`pack_a`]
/// (`MR` apart) and whose `B` is read in place, row `p` at `b + offs[p]`
/// (`cols` floats of it, up to `NR`): `C (+)= A · B` over depth `kc`,
/// storing `rows × cols` of it (`C[i][j]` at `c + i·ldc + j`).
///
/// # Safety
/// The panel, every row of `B` (`NR` floats from each `b + offs[p]`) and
/// `C` must hold the sizes given; only inside code compiled for `S`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile_shifted_b<S: Packed>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    offs: *const usize,
    c: *mut f32,
    ldc: usize,
    load: bool,
    rows: usize,
    cols: usize,
) {
    let t = Tile {
        kc,
        a,
        lda: S::MR,
        b,
        offs,
        a_rows: std::ptr::null(),
        c,
        ldc,
        load,
        rows,
        cols,
    };
    S::tile(&t, cols.div_ceil(S::N), false, true);
}

/// One `MR × N·NV` micro-tile: `C (+)= A-panel · B-panel` over depth `kc`
/// (`B[p][j]` at `b + p·NR + j`, or at `b + offs[p] + j` when shifted),
/// storing `rows × cols` of it. The A panel is row-major (`A[i][p]` at
/// `a + i·lda + p`) or column-major (`a + p·lda + i`; a packed panel has
/// `lda = MR`); a row-major panel's rows are at `a + a_rows[i]` instead
/// when `SHIFTED` (`B` is then packed).
pub(crate) struct Tile {
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    offs: *const usize,
    a_rows: *const usize,
    c: *mut f32,
    ldc: usize,
    load: bool,
    rows: usize,
    cols: usize,
}

impl Tile {
    /// # Safety
    /// The panels and `C` must hold the sizes given; only inside code
    /// compiled for `S`.
    #[inline(always)]
    pub(crate) unsafe fn run<
        S: Packed,
        const MR: usize,
        const NV: usize,
        const ROW_MAJOR: bool,
        const SHIFTED: bool,
    >(
        &self,
    ) {
        let mut acc = [[S::zero(); NV]; MR];
        let mut b = self.b;
        let rows: [*const f32; MR] = if ROW_MAJOR && SHIFTED {
            std::array::from_fn(|i| self.a.add(*self.a_rows.add(i)))
        } else {
            std::array::from_fn(|i| self.a.add(i * self.lda))
        };
        let mut a = self.a;
        for p in 0..self.kc {
            let bp = if SHIFTED && !ROW_MAJOR {
                self.b.add(*self.offs.add(p))
            } else {
                b
            };
            let mut bv = [S::zero(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = S::load(bp.add(S::N * v));
            }
            for (i, acc_row) in acc.iter_mut().enumerate() {
                let ai = if ROW_MAJOR {
                    S::splat(*rows[i].add(p))
                } else {
                    S::splat(*a.add(i))
                };
                for v in 0..NV {
                    acc_row[v] = S::mul_add(ai, bv[v], acc_row[v]);
                }
            }
            if !ROW_MAJOR {
                a = a.add(self.lda);
            }
            b = b.add(S::NR);
        }
        // Constant trip counts keep `acc` in registers.
        let (c, ldc, load) = (self.c, self.ldc, self.load);
        if self.rows == MR && self.cols == S::N * NV {
            for (i, acc_row) in acc.iter().enumerate() {
                for (v, x) in acc_row.iter().enumerate() {
                    let p = c.add(i * ldc + S::N * v);
                    let r = if load { S::add(*x, S::load(p)) } else { *x };
                    r.store(p);
                }
            }
        } else {
            // A partial tile goes through a buffer: stores of the whole tile
            // (constant indices, so `acc` stays in registers in the loop
            // above), then plain copies of the part that exists (no masked
            // stores, which are slow on some AVX2 CPUs).
            let mut tmp = [0.0f32; MAX_MR * MAX_LANES * 3];
            for (i, acc_row) in acc.iter().enumerate() {
                for (v, x) in acc_row.iter().enumerate() {
                    x.store(tmp.as_mut_ptr().add(i * S::N * NV + S::N * v));
                }
            }
            for i in 0..self.rows {
                let src = &tmp[i * S::N * NV..][..self.cols];
                let dst = std::slice::from_raw_parts_mut(c.add(i * ldc), self.cols);
                if load {
                    for (d, v) in dst.iter_mut().zip(src) {
                        *d += *v;
                    }
                } else {
                    dst.copy_from_slice(src);
                }
            }
        }
    }
}

/// `S::tile` for an instruction set whose tiles have `$mr` rows and up to
/// three vectors per row. A tile of at most [`EDGE_MR`] rows (the last of
/// a product whose rows are not a multiple of `$mr`: ResNet's 64 channels
/// are ten 6-row tiles and 4 rows at AVX2) runs the kernel of `EDGE_MR`
/// rows, which does that many rows' work instead of `$mr`'s.
macro_rules! tiles {
    ($s:ty, $mr:literal, $t:expr, $nv:expr, $rm:expr, $sh:expr) => {
        if $t.rows <= EDGE_MR {
            tiles!(@rows $s, EDGE_MR, $t, $nv, $rm, $sh)
        } else {
            tiles!(@rows $s, $mr, $t, $nv, $rm, $sh)
        }
    };
    (@rows $s:ty, $mr:expr, $t:expr, $nv:expr, $rm:expr, $sh:expr) => {
        match ($nv, $rm, $sh) {
            (3, true, false) => $t.run::<$s, { $mr }, 3, true, false>(),
            (2, true, false) => $t.run::<$s, { $mr }, 2, true, false>(),
            (_, true, false) => $t.run::<$s, { $mr }, 1, true, false>(),
            (3, true, true) => $t.run::<$s, { $mr }, 3, true, true>(),
            (2, true, true) => $t.run::<$s, { $mr }, 2, true, true>(),
            (_, true, true) => $t.run::<$s, { $mr }, 1, true, true>(),
            (3, false, false) => $t.run::<$s, { $mr }, 3, false, false>(),
            (2, false, false) => $t.run::<$s, { $mr }, 2, false, false>(),
            (_, false, false) => $t.run::<$s, { $mr }, 1, false, false>(),
            (3, false, true) => $t.run::<$s, { $mr }, 3, false, true>(),
            (2, false, true) => $t.run::<$s, { $mr }, 2, false, true>(),
            (_, false, true) => $t.run::<$s, { $mr }, 1, false, true>(),
        }
    };
}

/// Rows of the edge kernel [`tiles!`] runs for the last, partial tile of
/// a product: 4 rows keep 8 (AVX2) or 12 (AVX-512) accumulators in flight,
/// enough to cover the FMA latency, so each of its rows costs what a row
/// of a full tile does.
const EDGE_MR: usize = 4;

pub(crate) use x86::transpose8;

mod x86 {
    use std::arch::x86_64::*;

    use super::{Packed, Tile, WithPacked, EDGE_MR};
    use crate::cpu::simd::{Avx2, Avx512, Simd};

    impl Packed for Avx512 {
        const MR: usize = 8;
        const NV: usize = 3;
        const KC_L1: usize = 128;
        const NC: usize = 480;
        const MC: usize = 512;

        #[inline(always)]
        unsafe fn tile(t: &Tile, nv: usize, row_major: bool, shifted: bool) {
            tiles!(Avx512, 8, t, nv, row_major, shifted)
        }

        #[inline(always)]
        unsafe fn transpose(
            mut load: impl FnMut(usize) -> Self,
            mut store: impl FnMut(usize, Self),
        ) {
            let mut rows = [_mm512_setzero_ps(); 16];
            for (l, r) in rows.iter_mut().enumerate() {
                *r = load(l).0;
            }
            for (j, v) in transpose16(rows).into_iter().enumerate() {
                store(j, Avx512(v));
            }
        }

        #[inline(always)]
        unsafe fn enter<W: WithPacked>(op: W) -> W::Output {
            enter_avx512(op)
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn enter_avx512<W: WithPacked>(op: W) -> W::Output {
        op.run::<Avx512>()
    }

    impl Packed for Avx2 {
        const MR: usize = 6;
        const NV: usize = 2;
        const KC_L1: usize = 256;
        /// 288 KiB of a 16-column panel, the whole product of ResNet's 3×3
        /// layers up to 512 channels: the L1-sized steps reloaded each tile's
        /// `C` nine times a panel on the 256-channel layer (a 2304-deep
        /// product). On Zen 3 at two threads (`conv_bench`, alternated, two
        /// runs) the forward passes of ResNet's 128-, 256- and 512-channel
        /// layers took 4–5, 5–6 and 1–3.5 % less time, DeepLab's dilated
        /// layer 2–5.5 %, DCGAN's transposed layer 5–6 % and the 1-D layer
        /// 5 % (its input gradient 6 %), the others within 2 %. At AVX-512
        /// (an 8 × 48 tile, three vectors of `B` a depth) steps of 1536 were
        /// even at 16 threads on the Xeon and 13–45 % slower at two, so it
        /// keeps `KC_L1` there.
        const IMPLICIT_STEP: usize = 4608;
        const NC: usize = 480;
        const MC: usize = 252;

        #[inline(always)]
        unsafe fn tile(t: &Tile, nv: usize, row_major: bool, shifted: bool) {
            tiles!(Avx2, 6, t, nv, row_major, shifted)
        }

        #[inline(always)]
        unsafe fn transpose(
            mut load: impl FnMut(usize) -> Self,
            mut store: impl FnMut(usize, Self),
        ) {
            let mut rows = [_mm256_setzero_ps(); 8];
            for (l, r) in rows.iter_mut().enumerate() {
                *r = load(l).0;
            }
            for (j, v) in transpose8(rows).into_iter().enumerate() {
                store(j, Avx2(v));
            }
        }

        #[inline(always)]
        unsafe fn enter<W: WithPacked>(op: W) -> W::Output {
            enter_avx2(op)
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn enter_avx2<W: WithPacked>(op: W) -> W::Output {
        op.run::<Avx2>()
    }

    /// Writes depths `p0..p0 + 8` of `S::MR` rows (`lda` apart) starting at
    /// `src` as `MR`-float lines at `dst` (line `q` at `dst + q·MR`).
    #[inline(always)]
    pub(super) unsafe fn transpose_rows<S: Packed>(
        src: *const f32,
        lda: usize,
        p0: usize,
        dst: *mut f32,
    ) {
        let mr = S::MR;
        let mut r = [_mm256_setzero_ps(); 8];
        for (i, v) in r.iter_mut().enumerate().take(mr) {
            *v = _mm256_loadu_ps(src.add(i * lda + p0));
        }
        let t = transpose8(r);
        for (q, v) in t.iter().enumerate() {
            let out = dst.add(q * mr);
            match mr {
                8 => _mm256_storeu_ps(out, *v),
                4 => _mm_storeu_ps(out, _mm256_castps256_ps128(*v)),
                // Lines are written in order, so a whole vector's extra
                // lanes land where the next line goes; the last line must
                // not pass the block.
                _ if q < 7 => _mm256_storeu_ps(out, *v),
                _ => Avx2(*v).store_part(out, mr),
            }
        }
    }

    /// Transpose of the 8 × 8 matrix whose rows are `r`.
    #[inline(always)]
    pub(crate) unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    /// Transposes a 16×16 block: `out[j][l] = rows[l][j]`. (Loops rather
    /// than `array::from_fn`, whose closures would not be compiled for
    /// AVX-512.)
    #[inline(always)]
    unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // Within 128-bit lanes: pairs of rows, then quadruples.
        let mut t = [_mm512_setzero_ps(); 16];
        for (i, v) in t.iter_mut().enumerate() {
            let (a, b) = (r[i & !1], r[i | 1]);
            *v = if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            };
        }
        // u[4q + j] holds column 4·lane + j of rows 4q..4q+4 in each 128-bit lane.
        let mut u = [_mm512_setzero_ps(); 16];
        for (i, v) in u.iter_mut().enumerate() {
            let (q, j) = (i / 4, i % 4);
            let (a, b) = (t[4 * q + (j / 2)], t[4 * q + 2 + (j / 2)]);
            *v = if j % 2 == 0 {
                _mm512_shuffle_ps::<0x44>(a, b)
            } else {
                _mm512_shuffle_ps::<0xEE>(a, b)
            };
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::Isa;

    /// A dense row-major `k × n` matrix as a [`PackB`] provider.
    struct Dense<'a> {
        b: &'a [f32],
        n: usize,
    }

    impl PackB for Dense<'_> {
        unsafe fn pack<S: Packed>(
            &self,
            k0: usize,
            kc: usize,
            j0: usize,
            nc: usize,
            dst: &mut [f32],
        ) {
            let nr = S::NR;
            for jp in 0..nc.div_ceil(nr) {
                for p in 0..kc {
                    for j in 0..nr {
                        let col = jp * nr + j;
                        dst[(jp * kc + p) * nr + j] = if col < nc {
                            self.b[(k0 + p) * self.n + j0 + col]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 20) as f32 / 4096.0
                    - 0.5
            })
            .collect()
    }

    /// Every blocking regime (packed per block, packed whole beforehand and
    /// in-place `A`, partial panels,
    /// several depth blocks, tiny buffers) against a plain triple loop.
    fn matches_a_naive_product<S: Packed>() -> usize {
        let mut checked = 0;
        for &(m, n, k) in &[
            (1, 1, 1),
            (8, 48, 128),
            (9, 49, 129),
            (7, 47, 300),
            (17, 191, 64),
            (17, 192, 64),
            (33, 500, 257),
            (64, 200, 5),
            (6, 97, 260),
            (100, 40, 70),
        ] {
            for (row_major, prepacked) in
                [(true, false), (false, false), (true, true), (false, true)]
            {
                for accumulate in [false, true] {
                    for buf_len in [S::MIN_BUF_LEN, 4000, S::B_BLOCK_LEN] {
                        let a = values(m * k, 1);
                        let b = values(k * n, 2);
                        let c0 = values(m * n, 3);
                        let am = if row_major {
                            Mat {
                                ptr: a.as_ptr(),
                                rs: k,
                                cs: 1,
                            }
                        } else {
                            Mat {
                                ptr: a.as_ptr(),
                                rs: 1,
                                cs: m,
                            }
                        };
                        let at = |i: usize, p: usize| {
                            if row_major {
                                a[i * k + p]
                            } else {
                                a[p * m + i]
                            }
                        };
                        let mut c = c0.clone();
                        let mut buf = vec![0.0f32; buf_len];
                        let cm = MatMut {
                            ptr: c.as_mut_ptr(),
                            rs: n,
                            cs: 1,
                        };
                        // SAFETY: the caller checked the CPU; the matrices
                        // match the sizes.
                        let bd = Dense { b: &b, n };
                        let mut pa = vec![f32::NAN; packed_a_len::<S>(m, k)];
                        unsafe {
                            if prepacked {
                                let pre = pack_a_whole::<S>(am, m, k, &mut pa);
                                gemm::<S>(
                                    m,
                                    n,
                                    k,
                                    ASource::Packed(pre),
                                    &bd,
                                    cm,
                                    accumulate,
                                    &mut buf,
                                )
                            } else {
                                gemm::<S>(m, n, k, ASource::Mat(am), &bd, cm, accumulate, &mut buf)
                            }
                        };
                        for i in 0..m {
                            for j in 0..n {
                                let mut want = if accumulate {
                                    c0[i * n + j] as f64
                                } else {
                                    0.0
                                };
                                for p in 0..k {
                                    want += at(i, p) as f64 * b[p * n + j] as f64;
                                }
                                let got = c[i * n + j] as f64;
                                assert!(
                                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()) * (k as f64).sqrt(),
                                    "m={m} n={n} k={k} row_major={row_major} prepacked={prepacked} acc={accumulate} buf={buf_len}: C[{i}][{j}] = {got}, want {want}"
                                );
                            }
                        }
                        checked += 1;
                    }
                }
            }
        }
        checked
    }

    #[test]
    fn every_instruction_set_matches_a_naive_product() {
        use crate::cpu::simd::{Avx2, Avx512};
        if Isa::Avx512.supported() == Isa::Avx512 {
            assert_eq!(matches_a_naive_product::<Avx512>(), 10 * 24);
        }
        if Isa::Avx2.supported() == Isa::Avx2 {
            assert_eq!(matches_a_naive_product::<Avx2>(), 10 * 24);
        } else {
            eprintln!("skipped: no AVX2 on this CPU");
        }
    }
}
