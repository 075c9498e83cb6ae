//! The bounded-memory paths: shrinking the scratch budget must force chunks
//! smaller than one image, keep every request within the per-worker share,
//! and leave results unchanged, on every GEMM back end.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{check_against_reference, shape, Variant};
use crate::cpu::im2col::Chunk;
use crate::cpu::scratch::Tuning;
use crate::cpu::simd::Isa;

fn leak_probe() -> &'static AtomicUsize {
    Box::leak(Box::new(AtomicUsize::new(0)))
}

/// Tunings with a probe for each GEMM back end (each instruction set; one
/// the CPU lacks runs the next narrower one).
fn backends(base: Tuning) -> [(Tuning, &'static AtomicUsize); 3] {
    Isa::ALL.map(|isa| {
        let probe = leak_probe();
        (
            Tuning {
                isa,
                direct_depthwise: false,
                probe: Some(probe),
                ..base
            },
            probe,
        )
    })
}

#[test]
fn tiny_budget_chunks_below_one_image_and_stays_in_budget() {
    // Lowered matrix of one image: K = 4·9 = 36 rows × 15·13 = 195 columns.
    let s = shape(
        3,
        8,
        6,
        2,
        [1, 15, 13],
        [1, 3, 3],
        [0, 1, 1],
        [1, 1, 1],
        [1, 1, 1],
    );
    let (k, m, p) = (4 * 9, 3, 15 * 13);
    for threads in [1, 2, 3] {
        let budget = 4 * threads * (k + m) * 20; // about 20 columns per worker
        for (tuning, probe) in backends(Tuning {
            scratch_bytes: budget,
            ..Tuning::default()
        }) {
            let v = Variant {
                name: "tiny budget",
                tuning,
                threads,
            };
            check_against_reference(&s, &v, 5).unwrap();
            let peak = probe.load(Ordering::Relaxed);
            assert!(peak > 0, "no scratch used");
            assert!(
                peak * 4 <= budget / threads,
                "{}: request of {peak} floats exceeds the {threads}-thread share of {budget} bytes",
                tuning.isa
            );
            assert!(
                peak < k * p,
                "peak {peak} floats: not chunked below one image ({})",
                k * p
            );
        }
    }
}

#[test]
fn chunk_cover_splits_and_groups_images() {
    // Runs inside images: 100 positions in runs of at most 40 would be
    // three runs of 34; aligning up to 48 would exceed 40, so they are
    // aligned down to 32, and the rest is a run of 4 ...
    let runs = Chunk::cover(1..3, 100, 40, 16);
    let spans: Vec<(usize, usize, usize)> = runs.iter().map(|c| (c.n0, c.p0, c.np)).collect();
    assert_eq!(
        spans,
        [
            (1, 0, 32),
            (1, 32, 32),
            (1, 64, 32),
            (1, 96, 4),
            (2, 0, 32),
            (2, 32, 32),
            (2, 64, 32),
            (2, 96, 4)
        ]
    );
    // Runs no longer than the alignment stay as they are.
    let spans: Vec<usize> = Chunk::cover(0..1, 30, 12, 16)
        .iter()
        .map(|c| c.np)
        .collect();
    assert_eq!(spans, [10, 10, 10]);
    assert!(runs.iter().all(|c| c.nimg == 1));
    // ... while runs of at most 70 are aligned: 64 + 36.
    let spans: Vec<(usize, usize)> = Chunk::cover(0..1, 100, 70, 16)
        .iter()
        .map(|c| (c.p0, c.np))
        .collect();
    assert_eq!(spans, [(0, 64), (64, 36)]);
    // Whole images, three per chunk, the last one short.
    let groups = Chunk::cover(0..7, 20, 65, 16);
    let sizes: Vec<(usize, usize)> = groups.iter().map(|c| (c.n0, c.nimg)).collect();
    assert_eq!(sizes, [(0, 3), (3, 3), (6, 1)]);
    assert!(groups.iter().all(|c| c.p0 == 0 && c.np == 20));
}

#[test]
fn whole_image_chunks_span_several_images() {
    // Small images (5x4 = 20 positions): chunks group whole images, which
    // the forward pass stages in an M × columns matrix (M = 5).
    let s = shape(
        7,
        4,
        5,
        1,
        [1, 5, 4],
        [1, 3, 3],
        [0, 1, 1],
        [1, 1, 1],
        [1, 1, 1],
    );
    // (The input gradient stays lowered, so every pass stages this shape.)
    for (tuning, probe) in backends(Tuning {
        data_as_forward: false,
        ..Tuning::default()
    }) {
        let v = Variant {
            name: "multi-image",
            tuning,
            threads: 1,
        };
        check_against_reference(&s, &v, 6).unwrap();
        let peak = probe.load(Ordering::Relaxed);
        if tuning.isa.supported() != Isa::Portable {
            assert!(
                peak >= 5 * 7 * 20,
                "peak {peak}: no chunk staged all 7 images"
            );
        } else {
            // One task per pass: the lowered matrix covers all 7 images at once.
            assert_eq!(peak, (4 * 9 + 5) * 7 * 20);
        }
    }
}

#[test]
fn weight_gradient_without_room_for_partials_stays_in_budget() {
    // dW has 16·16·9 = 2304 floats; a budget of 2 of them leaves no room for
    // a second partial sum per worker.
    let s = shape(
        3,
        16,
        16,
        1,
        [1, 9, 8],
        [1, 3, 3],
        [0, 1, 1],
        [1, 1, 1],
        [1, 1, 1],
    );
    let wlen = 16 * 16 * 9;
    for (tuning, probe) in backends(Tuning {
        scratch_bytes: 4 * wlen * 2,
        ..Tuning::default()
    }) {
        let v = Variant {
            name: "no room for partials",
            tuning,
            threads: 3,
        };
        check_against_reference(&s, &v, 8).unwrap();
        assert!(probe.load(Ordering::Relaxed) <= 2 * wlen);
    }
}

#[test]
fn forward_with_rows_of_w_split_across_tasks_matches_reference() {
    // On four threads the forward pass splits the rows of W across tasks
    // (see `forward_plan`), each writing its own rows of y, staged for the
    // chunk's two images.
    let s = super::wide_weights_few_positions();
    for (tuning, _) in backends(Tuning::default()) {
        let v = Variant {
            name: "rows split",
            tuning,
            threads: 4,
        };
        check_against_reference(&s, &v, 9).unwrap();
    }
}
