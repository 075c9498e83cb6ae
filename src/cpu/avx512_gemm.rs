//! A single-threaded f32 GEMM with an AVX-512 micro-kernel, used by the
//! lowered paths when the CPU has AVX-512F (the `gemm` crate only uses AVX2 on
//! stable Rust).
//!
//! `C[m×n] (+)= A[m×k] · B[k×n]` with `C` row-major (unit column stride).
//! `A` is read in place (row-major or column-major); `B` is packed block by
//! block by a [`PackB`] provider into panels of [`NR`] columns, so the lowered
//! matrix of a convolution (im2col) is written straight into packed form and
//! never materialised whole. The micro-kernel keeps an `MR × NR` tile of `C`
//! in 24 zmm registers: per step of `k` it loads three vectors of `B` and
//! broadcasts eight values of `A`.

use super::matmul::{Mat, MatMut};

/// Rows of `C` per micro-tile (broadcast operand `A`).
pub(crate) const MR: usize = 8;
/// Columns of `C` per micro-tile (vector operand `B`): three 16-lane vectors.
pub(crate) const NR: usize = 48;
/// Depth of one packed block.
pub(crate) const KC: usize = 256;
/// Columns of one packed `B` block (a multiple of `NR`).
const NC: usize = 480;
/// Floats of the per-thread buffer for one packed `B` block.
pub(crate) const B_BLOCK_LEN: usize = KC * NC;

/// Whether this CPU can run the kernel (checked once).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static DETECTED: OnceLock<bool> = OnceLock::new();
        *DETECTED.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Supplies blocks of the `k × n` operand `B` in packed form.
pub(crate) trait PackB: Sync {
    /// Writes rows `k0..k0 + kc` and columns `j0..j0 + nc` of `B` into `dst`
    /// as `ceil(nc / NR)` consecutive panels of `kc × NR` floats (row-major
    /// within a panel), zero past column `nc` in the last panel.
    ///
    /// # Safety
    /// The CPU must support AVX-512F ([`available`]); `kc <= KC`.
    unsafe fn pack(&self, k0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]);
}

/// `C = A · B`, or `C += A · B` when `accumulate`, for `A` of `m × k` with
/// unit row or column stride, `B` from `b` (`k × n`) and `C` of `m × n` with
/// unit column stride. `bbuf` holds the packed blocks of `B`: up to
/// [`B_BLOCK_LEN`] floats are used, and at least [`NR`] are needed.
///
/// # Safety
/// [`available`] must hold; `a` and `c` must address valid memory for the
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
    bbuf: &mut [f32],
) {
    assert!(c.cs == 1 && (a.cs == 1 || a.rs == 1) && bbuf.len() >= NR);
    #[cfg(target_arch = "x86_64")]
    x86::gemm(m, n, k, a, b, c, accumulate, bbuf);
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the packed GEMM needs x86-64 with AVX-512");
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
        bbuf: &mut [f32],
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
        // Block sizes shrink to fit `bbuf` (tests run with tiny budgets).
        let kblocks = k.div_ceil(KC.min(bbuf.len() / NR));
        let kc0 = k.div_ceil(kblocks);
        let nc_max = (NC.min(bbuf.len() / (kc0 * NR)) / NR).max(1) * NR;
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
                    let rows = MR.min(m - i0);
                    let panel = a.ptr.add(i0 * a.rs + k0 * a.cs);
                    // A full panel is read in place; a partial one is copied
                    // (column-major, zero rows) into `edge`.
                    let (ap, lda, rm) = if rows == MR {
                        (panel, if row_major { a.rs } else { a.cs }, row_major)
                    } else {
                        for p in 0..kc {
                            for i in 0..MR {
                                edge[p * MR + i] = if i < rows {
                                    *panel.add(i * a.rs + p * a.cs)
                                } else {
                                    0.0
                                };
                            }
                        }
                        (edge.as_ptr(), MR, false)
                    };
                    for jp in 0..npan {
                        let bp = bbuf.as_ptr().add(jp * kc * NR);
                        let col = j0 + jp * NR;
                        let cols = NR.min(n - col);
                        let cp = c.ptr.add(i0 * c.rs + col);
                        let t = Tile {
                            kc,
                            a: ap,
                            lda,
                            b: bp,
                            c: cp,
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
                    i0 += MR;
                }
                k0 += kc;
            }
            j0 += nc;
        }
    }

    /// One `MR × 16·NV` micro-tile: `C (+)= A-panel · B-panel` over depth `kc`,
    /// storing `rows × cols` of it. The A panel is row-major (`A[i][p]` at
    /// `a + i·lda + p`) or column-major (`a + p·lda + i`).
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
                    *x = _mm512_loadu_ps(b.add(16 * v));
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
