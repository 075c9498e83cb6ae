//! Slabs of an image for the lowered input gradient when its natural tasks
//! (images × groups × channel ranges) are fewer than the threads.
//!
//! A 3-D layer of three input channels at batch 2 has two such tasks, so on
//! 16 threads 14 stay idle. Cutting each image's output positions into slabs
//! along the outermost axis that has more than one output (depth for 3-D,
//! rows for 2-D, positions for 1-D) gives more tasks, but the input-gradient
//! slices a slab adds into overlap the neighbouring slabs' where the kernel
//! reaches across them. Slabs are therefore coloured: slab `i` has colour
//! `i mod colours`, with `colours` the fewest for which slabs of one colour
//! touch disjoint input slices. One colour's slabs run at once, the colours
//! one after another, so `col2im` still needs no synchronisation.
//!
//! Pure arithmetic, no FFI.

use std::cmp::Reverse;
use std::ops::Range;

use crate::cpu::ConvShape;

/// Fewest output positions of a slab: a narrower product wastes its packing.
pub(super) const MIN_SLAB_POSITIONS: usize = 192;

/// Share of the undivided plan's time the slabs must stay below to be used,
/// as a fraction (3/4): the colours wait for each other and `col2im`
/// replaces the padded planes.
const MIN_GAIN: (usize, usize) = (3, 4);

/// How the output positions of one image are cut into slabs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Slabs {
    /// Output positions of one slice of the outer axis (positions per image
    /// divided by the axis's output extent).
    pub inner: usize,
    /// Output extent of the outer axis.
    pub outer: usize,
    /// Slices per slab (the last slab may have fewer).
    pub thick: usize,
    /// Colours: slabs `i` and `i + colours` touch disjoint input slices.
    pub colours: usize,
}

impl Slabs {
    /// The slabs for `s` when the undivided plan's tasks are `imgs` whole
    /// images by one of `units` (groups × channel ranges), on `threads`
    /// threads; `None` where the undivided plan occupies the threads, or
    /// slabs would not be [`MIN_GAIN`] faster by the count of rounds of
    /// equal tasks.
    pub fn plan(s: &ConvShape, imgs: usize, units: usize, threads: usize) -> Option<Slabs> {
        let imgs = imgs.max(1);
        let tasks = s.n.div_ceil(imgs) * units;
        if tasks >= threads || threads < 2 {
            return None;
        }
        let axis = (0..3).find(|&a| s.output[a] > 1)?;
        let outer = s.output[axis];
        let inner = s.output_spatial() / outer;
        let undivided = tasks.div_ceil(threads) * imgs * outer;
        let min_thick = MIN_SLAB_POSITIONS.div_ceil(inner).max(1);
        // Slabs per image worth trying: each gives its thickness; past eight
        // per thread, more slabs only add rounds.
        let most = (outer / min_thick).min(8 * threads);
        let best = (2..=most)
            .map(|count| outer.div_ceil(count))
            .filter(|&thick| thick >= min_thick)
            .map(|thick| {
                let colours = colours(s, axis, thick);
                let rounds = colour_sizes(outer.div_ceil(thick), colours)
                    .map(|slabs| (s.n * units * slabs).div_ceil(threads))
                    .sum::<usize>();
                (rounds * thick, Reverse(thick), colours)
            })
            // Fastest; among equals, the thickest.
            .min_by_key(|&(time, thick, _)| (time, thick))?;
        let (time, Reverse(thick), colours) = best;
        let (num, den) = MIN_GAIN;
        (thick < outer && den * time < num * undivided).then_some(Slabs {
            inner,
            outer,
            thick,
            colours,
        })
    }

    /// Slabs per image.
    pub fn count(&self) -> usize {
        self.outer.div_ceil(self.thick)
    }

    /// Output positions (within its image) of slab `i`.
    pub fn positions(&self, i: usize) -> Range<usize> {
        let start = i * self.thick;
        let end = (start + self.thick).min(self.outer);
        start * self.inner..end * self.inner
    }

    /// The slabs of colour `c`.
    pub fn of_colour(&self, c: usize) -> impl Iterator<Item = usize> {
        (c..self.count()).step_by(self.colours)
    }
}

/// Slabs of each of `colours` colours among `count` slabs (slab `i` has
/// colour `i mod colours`).
fn colour_sizes(count: usize, colours: usize) -> impl Iterator<Item = usize> {
    (0..colours).map(move |c| count.saturating_sub(c).div_ceil(colours))
}

/// Fewest colours for slabs of `thick` output slices along `axis`: slab `i`
/// reads input slices `i·t·s − p ..= (i·t + t − 1)·s − p + (k − 1)·d`, which
/// end before slab `i + c` begins once `c·t·s > (t − 1)·s + (k − 1)·d`.
fn colours(s: &ConvShape, axis: usize, thick: usize) -> usize {
    let (st, reach) = (s.stride[axis], (s.kernel[axis] - 1) * s.dilation[axis]);
    ((thick - 1) * st + reach) / (thick * st) + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::tests::{shape, shape2d};

    fn conv3d(n: usize, c_in: usize, depth: usize, hw: usize, k: usize) -> ConvShape {
        let (input, pad) = ([depth, hw, hw], [k / 2; 3]);
        shape(n, c_in, 64, 1, input, [k; 3], pad, [1; 3], [1; 3])
    }

    /// Input slices along `axis` that output slices `o` add into.
    fn touched(s: &ConvShape, axis: usize, o: Range<usize>) -> Vec<usize> {
        let mut v = Vec::new();
        for o in o {
            for k in 0..s.kernel[axis] {
                let i = (o * s.stride[axis] + k * s.dilation[axis]) as isize - s.pad[axis] as isize;
                if (0..s.input[axis] as isize).contains(&i) {
                    v.push(i as usize);
                }
            }
        }
        v
    }

    #[test]
    fn few_images_of_few_channels_are_cut_along_depth() {
        // ResNet-style 3-D stem: 2 images, one channel range: 2 tasks on 16 threads.
        let s = conv3d(2, 3, 16, 56, 3);
        let sl = Slabs::plan(&s, 1, 1, 16).expect("slabs");
        assert_eq!((sl.inner, sl.outer), (56 * 56, 16));
        assert_eq!((sl.thick, sl.colours), (1, 3));
        assert_eq!(sl.count(), 16);
        assert_eq!(sl.positions(15), 15 * 3136..16 * 3136);
        assert_eq!(sl.of_colour(1).collect::<Vec<_>>(), vec![1, 4, 7, 10, 13]);
    }

    #[test]
    fn occupied_threads_or_one_thread_keep_the_undivided_plan() {
        let s = conv3d(2, 3, 16, 56, 3);
        assert_eq!(Slabs::plan(&s, 1, 8, 16), None);
        assert_eq!(Slabs::plan(&s, 1, 1, 2), None);
        assert_eq!(Slabs::plan(&s, 1, 1, 1), None);
        // One output position: nothing to cut.
        let mut p = conv3d(1, 3, 1, 1, 1);
        p.pad = [0; 3];
        assert_eq!(Slabs::plan(&p, 1, 1, 8), None);
    }

    #[test]
    fn slabs_of_one_colour_touch_disjoint_slices() {
        for (k, st, d, pad) in [
            (3, 1, 1, 1),
            (7, 2, 1, 3),
            (3, 1, 3, 3),
            (5, 3, 2, 0),
            (1, 2, 1, 0),
        ] {
            let out = 40;
            let input = (out - 1) * st + (k - 1) * d + 1 - 2 * pad;
            let s = shape2d(1, 1, 1, 1, [input, 9], [k, 1], [pad, 0], [st, 1], [d, 1]);
            assert_eq!(s.output[1], out);
            for thick in 1..6 {
                let c = colours(&s, 1, thick);
                let sl = Slabs {
                    inner: 9,
                    outer: out,
                    thick,
                    colours: c,
                };
                let of = |i: usize| {
                    let p = sl.positions(i);
                    touched(&s, 1, p.start / 9..p.end / 9)
                };
                for i in 0..sl.count() {
                    // Same colour: disjoint.
                    if i + c < sl.count() {
                        let (a, b) = (of(i), of(i + c));
                        assert!(
                            a.iter().all(|x| !b.contains(x)),
                            "k{k} s{st} d{d} t{thick}: {i}"
                        );
                    }
                    // One colour fewer would not do (where slabs overlap at all).
                    if c > 1 && i + c - 1 < sl.count() {
                        let (a, b) = (of(i), of(i + c - 1));
                        assert!(
                            a.iter().any(|x| b.contains(x)),
                            "k{k} s{st} d{d} t{thick}: {i} minimal"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn slabbed_input_gradients_match_the_reference() {
        use crate::cpu::scratch::Tuning;
        use crate::cpu::simd::Isa;
        use crate::cpu::tests::{at, check_against_reference, Variant};
        let one = [1; 3];
        let shapes = [
            // 3-D, three colours of one depth slice each.
            shape(1, 3, 8, 1, [6, 16, 16], [3; 3], [1; 3], one, one),
            // A strided stem: 7 rows reach across slabs of 2-3 output rows.
            shape2d(2, 3, 16, 1, [80, 80], [7, 7], [3, 3], [2, 2], [1, 1]),
            // Groups and dilation.
            shape2d(1, 2, 8, 2, [30, 30], [3, 3], [2, 2], [1, 1], [2, 2]),
            // 1-D: slabs of positions.
            shape2d(1, 3, 8, 1, [1, 2000], [1, 5], [0, 2], [1, 1], [1, 1]),
            // 1x1: slabs that do not overlap (one colour).
            shape2d(1, 4, 8, 1, [20, 20], [1, 1], [0, 0], [1, 1], [1, 1]),
        ];
        for isa in [Isa::Avx512, Isa::Avx2] {
            let v = Variant {
                name: "slabs, 4 threads",
                tuning: Tuning {
                    subpixel_data: false,
                    data_as_forward: false,
                    ..at(isa)
                },
                threads: 4,
            };
            for (i, s) in shapes.iter().enumerate() {
                // One image and one channel range per group per task.
                assert!(Slabs::plan(s, 1, s.groups, 4).is_some(), "{s:?}");
                check_against_reference(s, &v, 70 + i as u64).unwrap();
            }
        }
    }

    #[test]
    fn colour_sizes_count_the_slabs_of_each_colour() {
        for count in 0..40 {
            for colours in 1..7 {
                let sl = Slabs {
                    inner: 1,
                    outer: count,
                    thick: 1,
                    colours,
                };
                let want: Vec<usize> = (0..colours).map(|c| sl.of_colour(c).count()).collect();
                assert_eq!(colour_sizes(count, colours).collect::<Vec<_>>(), want);
            }
        }
    }

    #[test]
    fn short_rows_take_thicker_slabs() {
        // conv1d-like: one axis of 4000 positions, batch 1, 3 channels.
        let s = shape2d(1, 3, 8, 1, [1, 4000], [1, 5], [0, 2], [1, 1], [1, 1]);
        let sl = Slabs::plan(&s, 1, 1, 8).expect("slabs");
        assert_eq!(sl.inner, 1);
        assert!(sl.thick >= MIN_SLAB_POSITIONS, "{sl:?}");
        assert!(sl.count() >= 8, "{sl:?}");
    }
}
