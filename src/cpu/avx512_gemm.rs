//! A single-threaded f32 GEMM with an AVX-512 micro-kernel, used by the
//! lowered paths when the CPU has AVX-512F (the `gemm` crate only uses AVX2 on
//! stable Rust).
//!
//! `C[m×n] (+)= A[m×k] · B[k×n]` with `C` row-major (unit column stride).
//! `B` is packed block by block by a [`PackB`] provider into panels of [`NR`]
//! columns, so the lowered matrix of a convolution (im2col) is written
//! straight into packed form and never materialised whole; `A` (row- or
//! column-major) is packed per depth block into panels of [`MR`] interleaved
//! rows when `C` is wide enough to pay for the copy, and read in place
//! otherwise. The loops follow the usual cache blocking: a `kc × NR` panel of `B`
//! stays in L1 while the micro-kernel walks down every `MR`-row panel of the
//! packed `A` block (in L2), so each step of `k` streams only `MR` floats of
//! `A` from L2. The micro-kernel keeps an `MR × NR` tile of `C` in 24 zmm
//! registers: per step of `k` it loads three vectors of `B` and broadcasts
//! eight values of `A`. Both packed buffers start on a cache line.

use super::matmul::{Mat, MatMut};
#[cfg(any(test, doc))]
use super::simd::has_avx512;

/// Rows of `C` per micro-tile (broadcast operand `A`).
pub(crate) const MR: usize = 8;
/// Columns of `C` per micro-tile (vector operand `B`): three 16-lane vectors.
pub(crate) const NR: usize = 48;
/// Largest depth of one packed block (the packers' limit).
pub(crate) const KC: usize = 256;
/// Preferred depth of one packed block: a `KC_L1 × NR` panel of `B` (24 KiB)
/// stays in a 32–48 KiB L1 data cache next to the streamed `A` panel.
const KC_L1: usize = 128;
/// Columns of one packed `B` block (a multiple of `NR`).
const NC: usize = 480;
/// Rows of one packed `A` block (a multiple of `MR`).
const MC: usize = 512;
/// Fewest columns of `C` for which `A` is packed: below it each element of
/// `A` meets too few columns to pay for its copy, and the kernel reads `A`
/// in place.
const PACK_A_MIN_COLS: usize = 4 * NR;
/// Floats of slack that let both packed areas start on a 64-byte line.
const ALIGN_SLACK: usize = 16;
/// Floats of the per-thread buffer [`gemm`] works best with.
pub(crate) const B_BLOCK_LEN: usize = KC_L1 * (NC + MC) + ALIGN_SLACK;
/// Fewest floats [`gemm`] accepts as its buffer (depth blocks of one).
pub(crate) const MIN_BUF_LEN: usize = NR + MR + ALIGN_SLACK;

/// Supplies blocks of the `k × n` operand `B` in packed form.
pub(crate) trait PackB: Sync {
    /// Writes rows `k0..k0 + kc` and columns `j0..j0 + nc` of `B` into `dst`
    /// as `ceil(nc / NR)` consecutive panels of `kc × NR` floats (row-major
    /// within a panel), zero past column `nc` in the last panel.
    ///
    /// # Safety
    /// The CPU must support AVX-512F ([`has_avx512`]); `kc <= KC`.
    unsafe fn pack(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]);
}

/// `C = A · B`, or `C += A · B` when `accumulate`, for `A` of `m × k` with
/// unit row or column stride, `B` from `b` (`k × n`) and `C` of `m × n` with
/// unit column stride. `buf` holds the packed blocks of `A` and `B`: up to
/// [`B_BLOCK_LEN`] floats are used, and at least [`MIN_BUF_LEN`] are needed.
///
/// # Safety
/// [`has_avx512`] must hold; `a` and `c` must address valid memory for the
/// given sizes, and no other thread may touch `c` meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: &impl PackB,
    c: MatMut,
    accumulate: bool,
    buf: &mut [f32],
) {
    assert!(c.cs == 1 && (a.cs == 1 || a.rs == 1) && buf.len() >= MIN_BUF_LEN);
    #[cfg(target_arch = "x86_64")]
    x86::gemm(m, n, k, a, b, c, accumulate, buf);
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the packed GEMM needs x86-64 with AVX-512");
}

/// Block sizes `(kc, nc, mc)` for a product of `m × n` over depth `k` within
/// `avail` floats of packed buffers: `kc` near [`KC_L1`] (even blocks),
/// `nc` and `mc` as large as fit, at least one panel each.
fn blocks(m: usize, n: usize, k: usize, avail: usize) -> (usize, usize, usize) {
    let kc_cap = KC_L1.min(avail / (NR + MR)).max(1);
    let kc = k.div_ceil(k.div_ceil(kc_cap));
    let mut nc = NC.min(n.div_ceil(NR) * NR);
    let mut mc = MC.min(m.div_ceil(MR) * MR);
    let fit = avail / kc;
    if nc + mc > fit {
        // Keep the B block whole where possible; shrink the A block first.
        mc = (fit.saturating_sub(nc) / MR * MR).max(MR);
        if nc + mc > fit {
            nc = (fit.saturating_sub(mc) / NR * NR).max(NR);
        }
    }
    (kc, nc, mc)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm(
        m: usize,
        n: usize,
        k: usize,
        a: Mat,
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
        let skip = buf.as_ptr().align_offset(64).min(ALIGN_SLACK);
        let buf = &mut buf[skip..];
        let (kc0, nc_max, mc_max) = blocks(m, n, k, buf.len());
        let (bbuf, abuf) = buf.split_at_mut(nc_max * kc0);
        let pack = n >= PACK_A_MIN_COLS;
        let row_major = a.cs == 1;
        let mut edge = [0.0f32; KC * MR];
        // Columns outermost so a block of C stays in cache across depth blocks.
        let mut j0 = 0;
        while j0 < n {
            let nc = nc_max.min(n - j0);
            let npan = nc.div_ceil(NR);
            let mut k0 = 0;
            while k0 < k {
                let kc = kc0.min(k - k0);
                b.pack(k0, kc, j0, nc, &mut bbuf[..npan * kc * NR]);
                let load = accumulate || k0 > 0;
                let mut i0 = 0;
                while i0 < m {
                    let mc = mc_max.min(m - i0);
                    let mpan = mc.div_ceil(MR);
                    if pack {
                        pack_a(a, i0, mc, k0, kc, abuf);
                    }
                    // Packed A: each B panel stays in L1 while the kernel
                    // walks down the A block. A in place: each A panel
                    // stays in L1 while the kernel walks across the (few)
                    // B panels, so A is read from memory once.
                    for idx in 0..npan * mpan {
                        let (jp, ip) = if pack {
                            (idx / mpan, idx % mpan)
                        } else {
                            (idx % npan, idx / npan)
                        };
                        let bp = bbuf.as_ptr().add(jp * kc * NR);
                        let col = j0 + jp * NR;
                        let cols = NR.min(n - col);
                        let row = i0 + ip * MR;
                        let rows = MR.min(m - row);
                        // A panel: packed (column-major, MR apart), in
                        // place, or a partial one copied into `edge`.
                        let (ap, lda, rm) = if pack {
                            (abuf.as_ptr().add(ip * kc * MR), MR, false)
                        } else if rows == MR {
                            let at = a.ptr.add(row * a.rs + k0 * a.cs);
                            (at, if row_major { a.rs } else { a.cs }, row_major)
                        } else {
                            if jp == 0 {
                                pack_a(a, row, rows, k0, kc, &mut edge);
                            }
                            (edge.as_ptr(), MR, false)
                        };
                        let t = Tile {
                            kc,
                            a: ap,
                            lda,
                            b: bp,
                            c: c.ptr.add(row * c.rs + col),
                            ldc: c.rs,
                            load,
                            rows,
                            cols,
                        };
                        match (cols.div_ceil(16), rm) {
                            (3, true) => t.run::<3, true>(),
                            (2, true) => t.run::<2, true>(),
                            (_, true) => t.run::<1, true>(),
                            (3, false) => t.run::<3, false>(),
                            (2, false) => t.run::<2, false>(),
                            (_, false) => t.run::<1, false>(),
                        }
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
    #[inline(always)]
    unsafe fn pack_a(a: Mat, i0: usize, mc: usize, k0: usize, kc: usize, dst: &mut [f32]) {
        let mpan = mc.div_ceil(MR);
        assert!(dst.len() >= mpan * kc * MR);
        let full = if a.rs == 1 { mc / MR } else { 0 };
        if full > 0 {
            // Column-major: at each depth the rows of adjacent panels are
            // adjacent, so read a few panels' worth in one sweep (few enough
            // that the panels, `kc · MR` floats apart, share no cache set).
            const GROUP: usize = 4;
            for g0 in (0..full).step_by(GROUP) {
                let g1 = full.min(g0 + GROUP);
                for p in 0..kc {
                    let src = a.ptr.add(i0 + (k0 + p) * a.cs);
                    let out = dst.as_mut_ptr().add(p * MR);
                    for ip in g0..g1 {
                        let v = _mm256_loadu_ps(src.add(ip * MR));
                        _mm256_storeu_ps(out.add(ip * kc * MR), v);
                    }
                }
            }
        }
        for ip in full..mpan {
            let rows = MR.min(mc - ip * MR);
            let panel = &mut dst[ip * kc * MR..][..kc * MR];
            let src = a.ptr.add((i0 + ip * MR) * a.rs + k0 * a.cs);
            let mut p0 = 0;
            if a.cs == 1 && rows == MR {
                // Row-major: 8 × 8 blocks transposed in registers.
                while p0 + 8 <= kc {
                    let r: [__m256; 8] =
                        std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * a.rs + p0)));
                    let t = transpose8(r);
                    for (q, v) in t.iter().enumerate() {
                        _mm256_storeu_ps(panel.as_mut_ptr().add((p0 + q) * MR), *v);
                    }
                    p0 += 8;
                }
            }
            for i in 0..MR {
                for p in p0..kc {
                    panel[p * MR + i] = if i < rows {
                        *src.add(i * a.rs + p * a.cs)
                    } else {
                        0.0
                    };
                }
            }
        }
    }

    /// Transpose of the 8 × 8 matrix whose rows are `r`.
    #[inline(always)]
    unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
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

    /// One `MR × 16·NV` micro-tile: `C (+)= A-panel · B-panel` over depth `kc`
    /// (`B[p][j]` at `b + p·NR + j`), storing `rows × cols` of it. The A
    /// panel is row-major (`A[i][p]` at `a + i·lda + p`) or column-major
    /// (`a + p·lda + i`; a packed panel has `lda = MR`).
    struct Tile {
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        load: bool,
        rows: usize,
        cols: usize,
    }

    impl Tile {
        #[inline(always)]
        unsafe fn run<const NV: usize, const ROW_MAJOR: bool>(&self) {
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            let mut b = self.b;
            let rows: [*const f32; MR] = std::array::from_fn(|i| self.a.add(i * self.lda));
            let mut a = self.a;
            for p in 0..self.kc {
                let mut bv = [_mm512_setzero_ps(); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = _mm512_load_ps(b.add(16 * v));
                }
                for (i, acc_row) in acc.iter_mut().enumerate() {
                    let ai = if ROW_MAJOR {
                        _mm512_set1_ps(*rows[i].add(p))
                    } else {
                        _mm512_set1_ps(*a.add(i))
                    };
                    for v in 0..NV {
                        acc_row[v] = _mm512_fmadd_ps(ai, bv[v], acc_row[v]);
                    }
                }
                if !ROW_MAJOR {
                    a = a.add(self.lda);
                }
                b = b.add(NR);
            }
            // Constant trip counts keep `acc` in registers.
            let (c, ldc, load) = (self.c, self.ldc, self.load);
            if self.rows == MR && self.cols == 16 * NV {
                for (i, acc_row) in acc.iter().enumerate() {
                    for (v, x) in acc_row.iter().enumerate() {
                        let p = c.add(i * ldc + 16 * v);
                        let r = if load {
                            _mm512_add_ps(*x, _mm512_loadu_ps(p))
                        } else {
                            *x
                        };
                        _mm512_storeu_ps(p, r);
                    }
                }
            } else {
                for (i, acc_row) in acc.iter().enumerate() {
                    if i < self.rows {
                        for (v, x) in acc_row.iter().enumerate() {
                            let rem = self.cols.saturating_sub(16 * v).min(16);
                            let mask = ((1u32 << rem) - 1) as __mmask16;
                            let p = c.add(i * ldc + 16 * v);
                            let r = if load {
                                _mm512_add_ps(*x, _mm512_maskz_loadu_ps(mask, p))
                            } else {
                                *x
                            };
                            _mm512_mask_storeu_ps(p, mask, r);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dense row-major `k × n` matrix as a [`PackB`] provider.
    struct Dense<'a> {
        b: &'a [f32],
        n: usize,
    }

    impl PackB for Dense<'_> {
        unsafe fn pack(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
            for jp in 0..nc.div_ceil(NR) {
                for p in 0..kc {
                    for j in 0..NR {
                        let col = jp * NR + j;
                        dst[(jp * kc + p) * NR + j] = if col < nc {
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

    /// Every blocking regime (packed and in-place `A`, partial panels,
    /// several depth blocks, tiny buffers) against a plain triple loop.
    #[test]
    fn matches_a_naive_product() {
        if !has_avx512() {
            eprintln!("skipped: no AVX-512F on this CPU");
            return;
        }
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
        ] {
            for row_major in [true, false] {
                for accumulate in [false, true] {
                    for buf_len in [MIN_BUF_LEN, 4000, B_BLOCK_LEN] {
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
                        // SAFETY: AVX-512F is available; the matrices match the sizes.
                        unsafe { gemm(m, n, k, am, &Dense { b: &b, n }, cm, accumulate, &mut buf) };
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
                                    "m={m} n={n} k={k} row_major={row_major} acc={accumulate} buf={buf_len}: C[{i}][{j}] = {got}, want {want}"
                                );
                            }
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 8 * 12);
    }
}
