//! The weight gradient of stride-1 2-D kernels over wide rows, with the
//! lowered input read in place from channel-blocked planes: nothing of it
//! is packed.
//!
//! Each task takes one image and a band of its output rows, and copies the
//! input rows the band reads, zero-padded, into planes of `B` channels
//! ([`block`]: two vectors, 16 at AVX2 and 32 at AVX-512):
//! `plane[cb][row][col][i]` holds channel `cb·B + i`. For a
//! stride-1 kernel, lowered column `(tap, ci)` at output position `(r, ow)`
//! is then the input at plane position `(r + kh·dh, ow + kw·dw)`: the
//! `B` columns `(tap, cb·B..)` of one position are one vector run,
//! and along the positions of a band they are the plane itself, shifted by
//! the tap. So the product `dW'[co][(tap, ci)] += Σ_p dy[co][p] · B[p][(tap,
//! ci)]` runs on the packed GEMM's micro-kernel with `B` read in place,
//! row `p` at a per-position offset (phantom columns of the plane rows
//! skipped), and only `dy` packed. The NCHW lowering (`super::packed`)
//! instead transposes every lowered row into packed panels — taps times
//! the input, 9× for a 3×3 kernel, a tenth of its time on ResNet's
//! 64-channel layer at AVX2 — where this path transposes the input once.
//!
//! Workers sum into private partials (`super::sum_over_workers`), permuted
//! into `[co][ci][kh][kw]` at the end, so the path takes the gradients
//! small enough for partials; short rows (a few dozen columns) go to
//! `super::implicit_weights`, which is ahead there. The micro-tile is `B`
//! columns wide: the whole AVX2 tile, two of the three vectors of
//! AVX-512's.

use std::ops::Range;

use super::{partial_workers, sum_over_workers};
use crate::cpu::matmul::Mat;
use crate::cpu::packed_gemm::{pack_a, tile_shifted_b, Packed, WithPacked};
use crate::cpu::par::split_range;
use crate::cpu::scratch::{Slot, Tuning};
use crate::cpu::ConvShape;

/// Channels of one plane at instruction set `S`: the width of the
/// micro-tile's `B` panel, two vectors.
pub(super) fn block<S: Packed>() -> usize {
    2 * S::N
}
/// Preferred output positions of one task (the depth of its product).
const TASK_POSITIONS: usize = 1024;

/// The geometry of one call.
#[derive(Clone, Copy, Debug)]
struct Geo {
    c: usize,
    co: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    dil: [usize; 2],
    pad: [usize; 2],
    /// Columns of a plane row: the output row and the kernel's reach.
    pitch: usize,
    /// Channels of one plane ([`block`]).
    block: usize,
}

impl Geo {
    fn of<S: Packed>(s: &ConvShape) -> Geo {
        let (kh, kw) = (s.kernel[1], s.kernel[2]);
        let dil = [s.dilation[1], s.dilation[2]];
        Geo {
            c: s.c_in,
            co: s.c_out,
            h: s.input[1],
            w: s.input[2],
            oh: s.output[1],
            ow: s.output[2],
            kh,
            kw,
            dil,
            pad: [s.pad[1], s.pad[2]],
            pitch: s.output[2] + (kw - 1) * dil[1],
            block: block::<S>(),
        }
    }

    /// Plane rows a band of `rows` output rows reads.
    fn rows_in(&self, rows: usize) -> usize {
        rows + (self.kh - 1) * self.dil[0]
    }

    /// Floats of the planes of a band of `rows` output rows.
    fn planes_len(&self, rows: usize) -> usize {
        self.c * self.rows_in(rows) * self.pitch
    }

    /// Floats of the packed `dy` of one depth block.
    fn a_len<S: Packed>(&self) -> usize {
        self.co.div_ceil(S::MR) * S::MR * S::KC_L1
    }
}

/// How one call is cut: output rows per task and the workers summing into
/// partials.
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    pub band: usize,
    workers: usize,
}

/// The plan for `s` on `threads` workers, if the path applies: a 2-D
/// convolution of one group, stride 1, more than one tap, input channels a
/// multiple of the planes' [`block`], output
/// rows wider than `min_row`, a gradient within
/// [`Tuning::partial_weights_floats`] with a partial for every thread, and
/// a task's planes within a worker's share of the budget.
pub(super) fn plan<S: Packed>(
    s: &ConvShape,
    t: &Tuning,
    threads: usize,
    min_row: usize,
) -> Option<Plan> {
    if !t.blocked_weights
        || s.groups != 1
        || s.input[0] != 1
        || s.kernel[0] != 1
        || s.kernel_spatial() == 1
        || s.stride[1..] != [1, 1]
        || s.c_in % block::<S>() != 0
        || s.output[2] <= min_row
        || s.weight_len() > t.partial_weights_floats
    {
        return None;
    }
    let g = Geo::of::<S>(s);
    let workers = partial_workers(t, s.weight_len(), threads);
    if workers < threads {
        return None;
    }
    let total = t.scratch_bytes / 4;
    let budget = total.checked_sub((workers - 1) * s.weight_len())? / workers;
    let want = if workers > 1 { 4 * workers } else { 1 };
    let per_image = want.div_ceil(s.n).min(g.oh);
    let mut band = (TASK_POSITIONS / g.ow)
        .clamp(1, g.oh)
        .min(g.oh.div_ceil(per_image));
    while g.planes_len(band) + g.a_len::<S>() > budget {
        if band == 1 {
            return None;
        }
        band = band.div_ceil(2);
    }
    Some(Plan { band, workers })
}

/// `dw` of `s` by `plan` (made for the current pool).
pub(super) fn backward_weights<S: Packed>(
    s: &ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    t: &Tuning,
    plan: Plan,
) {
    let g = Geo::of::<S>(s);
    let Plan { band, workers } = plan;
    let bands = g.oh.div_ceil(band);
    let tasks: Vec<(usize, Range<usize>)> = (0..s.n)
        .flat_map(|n| (0..bands).map(move |b| (n, b * band..((b + 1) * band).min(g.oh))))
        .collect();
    // Plane offset of each output position of a band (the same for every
    // band: its planes start at its first row).
    let offs: Vec<usize> = (0..band * g.ow)
        .map(|p| (p / g.ow * g.pitch + p % g.ow) * g.block)
        .collect();
    let (planes_len, a_len) = (g.planes_len(band), g.a_len::<S>());
    let (image, out_image) = (g.c * g.h * g.w, g.co * g.oh * g.ow);
    sum_over_workers(t, dw, workers, |wi, acc| {
        let mine = split_range(tasks.len(), workers, wi);
        t.scratch(Slot::Task, planes_len + a_len, |buf| {
            let (planes, abuf) = buf.split_at_mut(planes_len);
            for (n, rows) in tasks[mine].iter().cloned() {
                let task = Task {
                    g: &g,
                    x: &x[n * image..][..image],
                    dy: &dy[n * out_image..][..out_image],
                    planes: &mut *planes,
                    abuf: &mut *abuf,
                    offs: &offs,
                    acc: &mut *acc,
                    rows,
                };
                // SAFETY: the instruction set is available (checked by the
                // caller).
                unsafe { S::enter(task) }
            }
        });
    });
    super::implicit_weights::from_tap_major(t, dw, g.c, g.kh * g.kw);
}

/// One task: an image's band of output rows, summed into `acc`
/// (`[co][(tap, ci)]`).
struct Task<'a> {
    g: &'a Geo,
    /// The image's input planes and output gradient.
    x: &'a [f32],
    dy: &'a [f32],
    planes: &'a mut [f32],
    abuf: &'a mut [f32],
    offs: &'a [usize],
    acc: &'a mut [f32],
    rows: Range<usize>,
}

impl WithPacked for Task<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Packed>(self) {
        let g = self.g;
        let rows_in = g.rows_in(self.rows.len());
        let (plane, bw) = (rows_in * g.pitch * g.block, g.block);
        fill_planes::<S>(g, self.x, self.rows.start, rows_in, self.planes);
        let positions = self.rows.len() * g.ow;
        let (mr, k) = (S::MR, g.kh * g.kw * g.c);
        let a = Mat {
            ptr: self.dy[self.rows.start * g.ow..].as_ptr(),
            rs: g.oh * g.ow,
            cs: 1,
        };
        let mpan = g.co.div_ceil(mr);
        let blocks = positions.div_ceil(S::KC_L1);
        let base = self.planes.as_ptr();
        let acc = self.acc.as_mut_ptr();
        for blk in 0..blocks {
            let (k0, k1) = (positions * blk / blocks, positions * (blk + 1) / blocks);
            let kc = k1 - k0;
            pack_a::<S>(a, 0, g.co, k0, kc, self.abuf);
            let offs = self.offs[k0..k1].as_ptr();
            for tap in 0..g.kh * g.kw {
                let shift = ((tap / g.kw) * g.dil[0] * g.pitch + (tap % g.kw) * g.dil[1]) * bw;
                for cb in 0..g.c / bw {
                    // Each panel of B (a run of its plane) stays in L1 while
                    // the kernel walks down the packed dy.
                    let b = base.add(cb * plane + shift);
                    let col = tap * g.c + cb * bw;
                    for ip in 0..mpan {
                        tile_shifted_b::<S>(
                            kc,
                            self.abuf.as_ptr().add(ip * kc * mr),
                            b,
                            offs,
                            acc.add(ip * mr * k + col),
                            k,
                            true,
                            mr.min(g.co - ip * mr),
                            bw,
                        );
                    }
                }
            }
        }
    }
}

/// Copies input rows `r0 - pad..` (`rows_in` of them, zero outside the
/// image) of `x` (one image, NCHW) into the planes of `B = g.block`
/// channels: `planes[cb][q][col][i]` = `x[cb·B + i][r0 + q − pad_h][col −
/// pad_w]`.
/// Full runs of `S::N` columns go through the vector transpose.
#[inline(always)]
unsafe fn fill_planes<S: Packed>(
    g: &Geo,
    x: &[f32],
    r0: usize,
    rows_in: usize,
    planes: &mut [f32],
) {
    let (n, hw) = (S::N, g.h * g.w);
    let bw = g.block;
    let row_len = g.pitch * bw;
    let plane = rows_in * row_len;
    assert!(planes.len() >= g.c / bw * plane && x.len() >= g.c * hw);
    // Input columns `iw0..iw1` land at plane columns `iw + pad_w`.
    let iw1 = g.w.min(g.pitch.saturating_sub(g.pad[1]));
    let full = iw1 / n * n;
    let (left, right) = (g.pad[1].min(g.pitch), (g.pad[1] + iw1).min(g.pitch));
    for cb in 0..g.c / bw {
        for q in 0..rows_in {
            let dst = &mut planes[cb * plane + q * row_len..][..row_len];
            let ih = (r0 + q) as isize - g.pad[0] as isize;
            if ih < 0 || ih >= g.h as isize {
                dst.fill(0.0);
                continue;
            }
            dst[..left * bw].fill(0.0);
            dst[right * bw..].fill(0.0);
            let src = x.as_ptr().add(cb * bw * hw + ih as usize * g.w);
            let out = dst.as_mut_ptr().add(left * bw);
            for half in (0..bw).step_by(n) {
                let from = src.add(half * hw);
                for iw in (0..full).step_by(n) {
                    S::transpose(
                        |l| S::load(from.add(l * hw + iw)),
                        |j, v| v.store(out.add((iw + j) * bw + half)),
                    );
                }
            }
            for iw in full..iw1 {
                for i in 0..bw {
                    *out.add(iw * bw + i) = *src.add(i * hw + iw);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::{Avx2, Avx512, Isa};
    use crate::cpu::tests::{check_against_reference, shape, shape2d, Variant};

    /// Shapes the path takes: a 3×3 kernel with padding over wide rows
    /// (several depth blocks a band); no padding with rows that are no
    /// multiple of the vector width; a 2×4 kernel dilated along both axes
    /// with uneven padding; output channels that are no multiple of the
    /// tile's rows, rows cut into several bands; 48 channels (three AVX2
    /// planes, none at AVX-512).
    fn shapes() -> Vec<ConvShape> {
        vec![
            shape2d(2, 64, 8, 1, [13, 40], [3, 3], [1, 1], [1, 1], [1, 1]),
            shape2d(3, 32, 6, 1, [7, 37], [3, 3], [0, 0], [1, 1], [1, 1]),
            shape2d(2, 32, 5, 1, [9, 41], [2, 4], [1, 2], [1, 1], [2, 3]),
            shape2d(1, 32, 11, 1, [70, 35], [3, 3], [1, 1], [1, 1], [1, 1]),
            shape2d(2, 48, 7, 1, [5, 38], [3, 3], [1, 1], [1, 1], [1, 1]),
        ]
    }

    #[test]
    fn blocked_weight_gradient_matches_reference() {
        let t = Tuning::default();
        for s in shapes() {
            for threads in [1, 3] {
                assert!(plan::<Avx2>(&s, &t, threads, 32).is_some(), "{s:?}");
                let wide = plan::<Avx512>(&s, &t, threads, 32);
                assert_eq!(wide.is_some(), s.c_in % 32 == 0, "{s:?}");
            }
            for v in Variant::all() {
                check_against_reference(&s, &v, 41).unwrap();
            }
        }
        // Several bands an image.
        let tall = shapes()[3];
        let band = plan::<Avx2>(&tall, &t, 3, 32).unwrap().band;
        assert!(band < tall.output[1], "{band}");
    }

    #[test]
    fn blocked_weight_gradient_only_where_it_applies() {
        let t = Tuning {
            isa: Isa::Avx2,
            ..Tuning::default()
        };
        let base = shapes()[0];
        assert!(plan::<Avx2>(&base, &t, 2, 32).is_some());
        let ragged = shape2d(2, 24, 8, 1, [13, 40], [3, 3], [1, 1], [1, 1], [1, 1]);
        let narrow = shape2d(2, 32, 8, 1, [13, 30], [3, 3], [1, 1], [1, 1], [1, 1]);
        let strided = shape2d(2, 32, 8, 1, [13, 80], [3, 3], [1, 1], [2, 2], [1, 1]);
        let grouped = shape2d(2, 32, 8, 2, [13, 40], [3, 3], [1, 1], [1, 1], [1, 1]);
        let deep = shape(2, 16, 4, 1, [3, 9, 40], [3, 3, 3], [1; 3], [1; 3], [1; 3]);
        let pointwise = shape2d(2, 32, 8, 1, [13, 40], [1, 1], [0, 0], [1, 1], [1, 1]);
        let large = shape2d(1, 128, 128, 1, [9, 40], [3, 3], [1, 1], [1, 1], [1, 1]);
        for s in [ragged, narrow, strided, grouped, deep, pointwise, large] {
            assert!(plan::<Avx2>(&s, &t, 2, 32).is_none(), "{s:?}");
        }
        let off = Tuning {
            blocked_weights: false,
            ..t
        };
        assert!(plan::<Avx2>(&base, &off, 2, 32).is_none());
    }
}
