//! The input gradient of a strided convolution by phase ("sub-pixel"), on
//! the packed GEMM: no lowered matrix, no `col2im`, no products with
//! padding.
//!
//! Along an axis of stride `S`, padding `P` and dilation `D`, input
//! position `i = S·q + r` (phase `r`) receives `dy[q + e]` through exactly
//! the kernel taps `k` with `D·k ≡ r + P (mod S)`, `e = (r + P − D·k) / S`,
//! wherever `0 ≤ q + e < O`. So the positions of one phase split into a few
//! runs of `q` over which the same taps stay inside `dy` (a [`Run`]); the
//! product of the runs of the three axes is a class, whose positions over
//! the batch are the columns of one product per tap:
//! `dx[ci][col] (+)= Σ_co Wᵀ_tap[ci][co] · dy[co][col + e_tap]`, with
//! `Wᵀ_tap` packed once per call and `dy` gathered straight into packed
//! panels ([`TapB`]). Every input position lies in exactly one class, so the
//! tasks (group × channel range × class × column chunk) write disjoint
//! parts of `dx`; a class no tap reaches is zeroed.
//!
//! DCGAN's 4×4/2 transposed layer (its forward pass is this gradient) over
//! 4×4 images spends 23 % of the lowered product on padding and a tenth of
//! its time in `col2im`; here each of its four phases is a 2×2 kernel.

use std::ops::Range;

use rayon::prelude::*;

use super::packed::b_block;
use super::Dims;
use crate::cpu::matmul::MatMut;
use crate::cpu::pack::TapB;
use crate::cpu::packed_gemm::{gemm, pack_a_taps, packed_taps_len, ASource, Packed, PackedA};
use crate::cpu::par::{split_range, SendPtr};
use crate::cpu::scratch::{Slot, Tuning};
use crate::cpu::ConvShape;

/// Preferred floats of a task's output matrix (`C`, kept in L2 across the
/// products of its taps).
const TASK_C_FLOATS: usize = 64 << 10;
/// Most columns of a task.
const MAX_COLS: usize = 1024;
/// Fewest columns a task is narrowed to for load balance.
const MIN_COLS: usize = 64;
/// Fewest input channels of a task's range where ranges are added to
/// occupy the threads.
const MIN_RANGE_CHANNELS: usize = 16;
/// Fewest output channels per group (the depth of each tap's product).
const MIN_DEPTH: usize = 16;

/// Positions `q0..q1` of one phase of an axis and the taps reaching `dy`
/// from all of them: kernel index and offset `e` into `dy`.
#[derive(Clone, Debug, PartialEq)]
struct Run {
    q0: usize,
    q1: usize,
    taps: Vec<(usize, isize)>,
}

/// The phases of an axis with input `i`, output `o`, kernel `k`, stride
/// `s`, padding `p` and dilation `d`: for each residue `r` (below `i`),
/// its runs, covering `0..ceil((i − r) / s)`.
fn axis_phases(
    i: usize,
    o: usize,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
) -> Vec<(usize, Vec<Run>)> {
    let mut phases = Vec::new();
    for r in 0..s.min(i) {
        let q_len = (i - r).div_ceil(s) as isize;
        // Taps of this phase: index, offset, and the positions they reach.
        let taps: Vec<(usize, isize, isize, isize)> = (0..k)
            .filter_map(|kk| {
                let num = (r + p) as isize - (d * kk) as isize;
                (num.rem_euclid(s as isize) == 0).then(|| {
                    let e = num.div_euclid(s as isize);
                    (
                        kk,
                        e,
                        (-e).clamp(0, q_len),
                        (o as isize - e).clamp(0, q_len),
                    )
                })
            })
            .collect();
        let mut cuts = vec![0, q_len];
        for &(_, _, lo, hi) in &taps {
            cuts.extend([lo, hi]);
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut runs: Vec<Run> = Vec::new();
        for w in cuts.windows(2) {
            let at = w[0];
            let live: Vec<(usize, isize)> = taps
                .iter()
                .filter(|&&(_, _, lo, hi)| lo <= at && at < hi)
                .map(|&(kk, e, _, _)| (kk, e))
                .collect();
            match runs.last_mut() {
                Some(last) if last.taps == live => last.q1 = w[1] as usize,
                _ => runs.push(Run {
                    q0: at as usize,
                    q1: w[1] as usize,
                    taps: live,
                }),
            }
        }
        phases.push((r, runs));
    }
    phases
}

/// A box of input positions reached by the same taps: per axis its phase,
/// first `q` and length; the taps as kernel index and offset into a `dy`
/// plane.
#[derive(Debug)]
struct Class {
    r: [usize; 3],
    q0: [usize; 3],
    len: [usize; 3],
    taps: Vec<(usize, isize)>,
}

impl Class {
    fn positions(&self) -> usize {
        self.len.iter().product()
    }
}

/// Every class of `s`; their boxes cover each input position once.
fn classes(s: &ConvShape) -> Vec<Class> {
    let axes: Vec<Vec<(usize, Vec<Run>)>> = (0..3)
        .map(|a| {
            axis_phases(
                s.input[a],
                s.output[a],
                s.kernel[a],
                s.stride[a],
                s.pad[a],
                s.dilation[a],
            )
        })
        .collect();
    let (oh, ow) = (s.output[1], s.output[2]);
    let (kh, kw) = (s.kernel[1], s.kernel[2]);
    let mut out = Vec::new();
    for (rd, runs_d) in &axes[0] {
        for (rh, runs_h) in &axes[1] {
            for (rw, runs_w) in &axes[2] {
                for ud in runs_d {
                    for uh in runs_h {
                        for uw in runs_w {
                            let mut taps = Vec::new();
                            for &(td, ed) in &ud.taps {
                                for &(th, eh) in &uh.taps {
                                    for &(tw, ew) in &uw.taps {
                                        let tap = (td * kh + th) * kw + tw;
                                        let shift = (ed * oh as isize + eh) * ow as isize + ew;
                                        taps.push((tap, shift));
                                    }
                                }
                            }
                            out.push(Class {
                                r: [*rd, *rh, *rw],
                                q0: [ud.q0, uh.q0, uw.q0],
                                len: [ud.q1 - ud.q0, uh.q1 - uh.q0, uw.q1 - uw.q0],
                                taps,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// Channel ranges per group (rows of `A` per range) and most columns of a
/// task.
#[derive(Debug, PartialEq)]
struct Plan {
    ranges: usize,
    cols: usize,
}

/// The plan for classes of `class_cols` columns each (over the batch), on
/// `threads` workers of `budget` scratch floats: columns for a task's `C`
/// of [`TASK_C_FLOATS`], halved (down to [`MIN_COLS`] or two panels) until
/// the tasks number three per thread, then channel ranges added (each of at
/// least [`MIN_RANGE_CHANNELS`]) while they still fall short. DCGAN at 16
/// threads took 8 ranges of 32 channels when the columns were not narrowed
/// first, at a quarter of the lowered product's speed.
fn plan<S: Packed>(
    s: &ConvShape,
    d: &Dims,
    class_cols: &[usize],
    budget: usize,
    threads: usize,
) -> Option<Plan> {
    let bblock = b_block::<S>(budget);
    let widest = class_cols.iter().copied().max().unwrap_or(0);
    let tasks = |ranges: usize, cols: usize| {
        s.groups * ranges * class_cols.iter().map(|c| c.div_ceil(cols)).sum::<usize>()
    };
    let fewest = MIN_COLS.max(2 * S::NR);
    let mut ranges = 1;
    loop {
        let rows = d.cin_g.div_ceil(ranges);
        let fit = budget.saturating_sub(bblock) / rows;
        let want = (TASK_C_FLOATS / rows).clamp(S::NR, MAX_COLS);
        let mut cols = (want.min(fit) / S::NR * S::NR).min(widest.div_ceil(S::NR) * S::NR);
        while cols / 2 >= fewest && tasks(ranges, cols) < 3 * threads {
            cols = cols / 2 / S::NR * S::NR;
        }
        let narrower = d.cin_g / (2 * ranges) >= MIN_RANGE_CHANNELS;
        if cols > 0 && (tasks(ranges, cols) >= 3 * threads || !narrower) {
            return Some(Plan { ranges, cols });
        }
        if !narrower {
            return None;
        }
        ranges *= 2;
    }
}

/// Where the path applies: up to `Tuning::subpixel_max_isa`, a strided
/// kernel of more than one tap on the packed back end, at least
/// `Tuning::subpixel_min_channels` input channels and [`MIN_DEPTH`] output
/// channels per group, the packed weights within
/// [`Tuning::packed_weights_floats`].
pub(super) fn applies<S: Packed>(s: &ConvShape, t: &Tuning) -> bool {
    let d = Dims::of(s);
    t.subpixel_data
        && t.isa.supported() <= t.subpixel_max_isa
        && s.stride.iter().any(|&x| x > 1)
        && d.ks > 1
        && d.cin_g >= t.subpixel_min_channels
        && d.m >= MIN_DEPTH.min(t.subpixel_min_channels)
        && weights_len::<S>(s, &d) <= t.packed_weights_floats()
}

/// Floats of every group's packed `Wᵀ` per tap, in one channel range.
fn weights_len<S: Packed>(s: &ConvShape, d: &Dims) -> usize {
    s.groups * packed_taps_len::<S>(d.cin_g, d.m, d.ks)
}

/// `dx` of `s`, or `false` (nothing written) where the path does not apply
/// or its plan does not fit the scratch budget.
pub(super) fn backward_data<S: Packed>(
    s: &ConvShape,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    t: &Tuning,
) -> bool {
    if !applies::<S>(s, t) {
        return false;
    }
    let d = Dims::of(s);
    let threads = rayon::current_num_threads();
    let classes = classes(s);
    let wlen_max = weights_len::<S>(s, &d);
    let budget = t
        .floats_per_worker(threads)
        .saturating_sub(wlen_max.div_ceil(threads));
    let class_cols: Vec<usize> = classes.iter().map(|c| s.n * c.positions()).collect();
    let Some(plan) = plan::<S>(s, &d, &class_cols, budget, threads) else {
        return false;
    };
    let bblock = b_block::<S>(budget);
    let ranges = plan.ranges;
    let range = |c: usize| split_range(d.cin_g, ranges, c);
    // Packed Wᵀ of each (group, range), one matrix per tap, back to back.
    let part_len = |c: usize| packed_taps_len::<S>(range(c).len(), d.m, d.ks);
    let starts: Vec<usize> = (0..ranges)
        .scan(0, |acc, c| {
            let at = *acc;
            *acc += part_len(c);
            Some(at)
        })
        .collect();
    let group_len: usize = (0..ranges).map(part_len).sum();
    if s.groups * group_len > t.packed_weights_floats() {
        // Ranges rounded up to whole panels of rows went past the cap.
        return false;
    }
    let mut tasks = Vec::new();
    for g in 0..s.groups {
        for c in 0..ranges {
            for (ci, &cols) in class_cols.iter().enumerate() {
                let chunks = cols.div_ceil(plan.cols);
                for k in 0..chunks {
                    tasks.push((g, c, ci, split_range(cols, chunks, k)));
                }
            }
        }
    }
    // The most taps first: the longest tasks start early.
    tasks.sort_by_key(|&(_, _, ci, ref cols)| {
        std::cmp::Reverse(classes[ci].taps.len() * cols.len())
    });
    let dxp = SendPtr(dx.as_mut_ptr());
    t.scratch(Slot::Weights, s.groups * group_len, |pw| {
        let mut packed: Vec<PackedA> = Vec::with_capacity(s.groups * ranges * d.ks);
        for g in 0..s.groups {
            for c in 0..ranges {
                let ci = range(c);
                let at = g * group_len + starts[c];
                // SAFETY: the instruction set is available (checked by the
                // caller); rows ci of group g, every co and tap lie in w.
                packed.extend(unsafe {
                    pack_a_taps::<S>(
                        w[(g * d.m * d.cin_g + ci.start) * d.ks..].as_ptr(),
                        (ci.len(), d.m),
                        (d.ks, d.k),
                        d.ks,
                        &mut pw[at..at + part_len(c)],
                    )
                });
            }
        }
        let task_len = d.cin_g.div_ceil(ranges) * plan.cols + bblock;
        tasks.into_par_iter().for_each(|(g, c, ci, cols)| {
            let a = &packed[(g * ranges + c) * d.ks..][..d.ks];
            t.scratch(Slot::Task, task_len, |buf| {
                let job = Job {
                    s,
                    d: &d,
                    class: &classes[ci],
                    g,
                    ci: range(c),
                    cols,
                };
                // SAFETY: the kernel is available; this task alone writes
                // its class's positions of channels `ci` of group `g`.
                unsafe { job.run::<S>(dy, a, dxp, buf, bblock) }
            })
        });
    });
    true
}

/// One task: columns `cols` of a class, for channels `ci` of group `g`.
struct Job<'a> {
    s: &'a ConvShape,
    d: &'a Dims,
    class: &'a Class,
    g: usize,
    ci: Range<usize>,
    cols: Range<usize>,
}

impl Job<'_> {
    /// Offsets of the job's columns: into `dy` at a zero tap offset
    /// (image and plane position) and into `dx` (image and position).
    fn offsets(&self) -> (Vec<isize>, Vec<usize>) {
        let (s, cl) = (self.s, self.class);
        let per_image = cl.positions();
        let (lh, lw) = (cl.len[1], cl.len[2]);
        let (op, ip) = (s.output_spatial(), s.input_spatial());
        let (oh, ow) = (s.output[1], s.output[2]);
        let (ih, iw) = (s.input[1], s.input[2]);
        let mut ys = Vec::with_capacity(self.cols.len());
        let mut xs = Vec::with_capacity(self.cols.len());
        for j in self.cols.clone() {
            let (n, b) = (j / per_image, j % per_image);
            let q = [
                cl.q0[0] + b / (lh * lw),
                cl.q0[1] + b / lw % lh,
                cl.q0[2] + b % lw,
            ];
            ys.push((n * s.c_out * op + (q[0] * oh + q[1]) * ow + q[2]) as isize);
            let x = [0, 1, 2].map(|a| s.stride[a] * q[a] + cl.r[a]);
            xs.push(n * s.c_in * ip + (x[0] * ih + x[1]) * iw + x[2]);
        }
        (ys, xs)
    }

    /// Runs the job's products into `buf` and stores them into `dx`.
    ///
    /// # Safety
    /// The CPU must support `S`; `a` holds the packed `Wᵀ` of every tap of
    /// the job's group and range; no other task writes the job's part of
    /// `dx`.
    unsafe fn run<S: Packed>(
        &self,
        dy: &[f32],
        a: &[PackedA],
        dx: SendPtr,
        buf: &mut [f32],
        bblock: usize,
    ) {
        let (s, d) = (self.s, self.d);
        let (ys, xs) = self.offsets();
        let (n, m) = (ys.len(), self.ci.len());
        let ip = s.input_spatial();
        let c0 = self.g * d.cin_g + self.ci.start;
        let (cbuf, bbuf) = buf.split_at_mut(m * n);
        let bbuf = &mut bbuf[..bblock];
        if self.class.taps.is_empty() {
            cbuf.fill(0.0);
        }
        for (i, &(tap, shift)) in self.class.taps.iter().enumerate() {
            let b = TapB {
                dy,
                plane: s.output_spatial(),
                c0: self.g * d.m,
                cols: &ys,
                shift,
            };
            b.check(d.m);
            let c = MatMut {
                ptr: cbuf.as_mut_ptr(),
                rs: n,
                cs: 1,
            };
            gemm::<S>(m, n, d.m, ASource::Packed(a[tap]), &b, c, i > 0, bbuf);
        }
        for (r, row) in cbuf.chunks_exact(n).enumerate() {
            let base = dx.at((c0 + r) * ip);
            for (&x, &v) in xs.iter().zip(row) {
                *base.add(x) = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::{Avx2, Avx512, Isa};
    use crate::cpu::tests::{check_against_reference, shape, shape2d, Variant};

    /// A 2-D layer over square images: batch, channels in and out, size,
    /// kernel, stride and padding.
    fn square(
        n: usize,
        ci: usize,
        co: usize,
        hw: usize,
        k: usize,
        st: usize,
        p: usize,
    ) -> ConvShape {
        shape2d(n, ci, co, 1, [hw, hw], [k, k], [p, p], [st, st], [1, 1])
    }

    /// DCGAN's first transposed layer, narrowed: 256 input channels, 4×4/2
    /// over 3×3 outputs.
    fn wide() -> ConvShape {
        square(3, 256, 16, 6, 4, 2, 1)
    }

    #[test]
    fn by_phase_only_where_it_applies() {
        let t = Tuning {
            isa: Isa::Avx2,
            ..Tuning::default()
        };
        assert!(applies::<Avx2>(&wide(), &t));
        let wider = Tuning {
            isa: Isa::Avx512,
            ..t
        };
        if Isa::Avx512.supported() == Isa::Avx512 {
            assert!(!applies::<Avx512>(&wide(), &wider));
            let on = Tuning {
                subpixel_max_isa: Isa::Avx512,
                ..wider
            };
            assert!(applies::<Avx512>(&wide(), &on));
        }
        let narrow = square(2, 128, 16, 6, 4, 2, 1);
        let unstrided = square(2, 256, 16, 6, 3, 1, 1);
        let one_tap = square(2, 256, 16, 6, 1, 2, 0);
        let shallow = square(2, 256, 8, 6, 4, 2, 1);
        for s in [narrow, unstrided, one_tap, shallow] {
            assert!(!applies::<Avx2>(&s, &t), "{s:?}");
        }
        let off = Tuning {
            subpixel_data: false,
            ..t
        };
        assert!(!applies::<Avx2>(&wide(), &off));
        // Packed weights over their cap.
        let tight = Tuning {
            scratch_bytes: 1 << 20,
            ..t
        };
        assert!(!applies::<Avx2>(&wide(), &tight));
    }

    /// DCGAN's layer keeps all 256 channels a task and narrows its columns
    /// to occupy 16 threads; a 3×3/2 layer over 14×14 at batch 8 has too
    /// few columns for that on AVX-512's wider panels (21 tasks of 96
    /// columns, 42 at two ranges) and takes four channel ranges.
    #[test]
    fn plans_narrow_columns_before_channels() {
        let plan_of = |s: &ConvShape, threads: usize, avx512: bool| {
            let cols: Vec<usize> = classes(s).iter().map(|c| s.n * c.positions()).collect();
            let (d, budget) = (Dims::of(s), 1 << 22);
            if avx512 {
                plan::<Avx512>(s, &d, &cols, budget, threads)
            } else {
                plan::<Avx2>(s, &d, &cols, budget, threads)
            }
        };
        let want = |ranges, cols| Some(Plan { ranges, cols });
        let dcgan = square(64, 256, 512, 8, 4, 2, 1);
        assert_eq!(plan_of(&dcgan, 2, false), want(1, 256));
        assert_eq!(plan_of(&dcgan, 16, false), want(1, 64));
        let down = square(8, 256, 512, 14, 3, 2, 1);
        assert_eq!(plan_of(&down, 16, true), want(4, 192));
        // A batch of one at 16 threads: channel ranges too, over columns
        // as wide as the widest class (9 positions).
        let one = square(1, 256, 512, 8, 4, 2, 1);
        let p = plan_of(&one, 16, false).unwrap();
        assert!(p.ranges > 1 && p.cols == 16, "{p:?}");
    }

    /// The default tuning's wide layer, and under the variants that take
    /// every strided gradient by phase: 3-D with groups and a depth stride,
    /// dilation with uneven strides, and a kernel shorter than its stride
    /// (phases no tap reaches, zeroed).
    #[test]
    fn by_phase_matches_reference() {
        for v in Variant::all() {
            check_against_reference(&wide(), &v, 23).unwrap();
        }
        let shapes = [
            shape(
                2,
                6,
                4,
                2,
                [5, 7, 6],
                [2, 3, 3],
                [1, 1, 0],
                [2, 2, 3],
                [1; 3],
            ),
            shape2d(2, 5, 3, 1, [11, 13], [3, 2], [2, 1], [3, 2], [2, 1]),
            shape2d(1, 4, 5, 1, [9, 10], [2, 2], [0, 1], [3, 3], [1, 1]),
        ];
        for s in shapes {
            for isa in [Isa::Avx512, Isa::Avx2] {
                let v = Variant {
                    name: "by phase",
                    tuning: Tuning {
                        subpixel_min_channels: 1,
                        subpixel_max_isa: Isa::Avx512,
                        isa,
                        ..Tuning::default()
                    },
                    threads: 2,
                };
                if isa.supported() != Isa::Portable {
                    assert!(applies::<Avx2>(&s, &v.tuning), "{s:?}");
                }
                check_against_reference(&s, &v, 29).unwrap();
            }
        }
    }

    /// Every input position of an axis lies in one run of one phase, and a
    /// run's taps are exactly those whose `dy` index lies inside the output
    /// from each of its positions (checked against the definition).
    #[test]
    fn runs_cover_each_position_with_exactly_its_taps() {
        for (i, k, s, p, d) in [
            (8, 4, 2, 1, 1),
            (56, 3, 2, 1, 1),
            (7, 3, 3, 2, 1),
            (9, 1, 2, 0, 1),
            (13, 3, 2, 2, 2),
            (5, 2, 3, 0, 1),
            (4, 5, 2, 3, 1),
        ] {
            let o = (i + 2 * p - d * (k - 1) - 1) / s + 1;
            let mut seen = vec![0; i];
            for (r, runs) in axis_phases(i, o, k, s, p, d) {
                for run in runs {
                    for q in run.q0..run.q1 {
                        let x = s * q + r;
                        seen[x] += 1;
                        let want: Vec<(usize, isize)> = (0..k)
                            .filter_map(|kk| {
                                let num = x as isize + p as isize - (d * kk) as isize;
                                let oo = num / s as isize;
                                (num >= 0 && num % s as isize == 0 && (oo as usize) < o)
                                    .then(|| (kk, oo - q as isize))
                            })
                            .collect();
                        assert_eq!(run.taps, want, "i {i} k {k} s {s} p {p} d {d} x {x}");
                    }
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "{seen:?}");
        }
    }
}
