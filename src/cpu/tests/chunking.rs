//! The bounded-memory paths: shrinking the scratch budget must force chunks
//! smaller than one image, keep every request within the per-worker share,
//! and leave results unchanged.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{check_against_reference, shape, Variant};
use crate::cpu::scratch::Tuning;

fn leak_probe() -> &'static AtomicUsize {
    Box::leak(Box::new(AtomicUsize::new(0)))
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
        let probe = leak_probe();
        let budget = 4 * threads * (k + m) * 20; // about 20 columns per worker
        let tuning = Tuning {
            scratch_bytes: budget,
            direct_depthwise: false,
            probe: Some(probe),
            ..Tuning::default()
        };
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
            "request of {peak} floats exceeds the {threads}-thread share of {budget} bytes"
        );
        assert!(
            peak < k * p,
            "peak {peak} floats: not chunked below one image ({})",
            k * p
        );
    }
}

#[test]
fn whole_image_chunks_span_several_images() {
    // Small images (5x4 = 20 positions): default chunks group whole images.
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
    let probe = leak_probe();
    let tuning = Tuning {
        probe: Some(probe),
        ..Tuning::default()
    };
    let v = Variant {
        name: "multi-image",
        tuning,
        threads: 1,
    };
    check_against_reference(&s, &v, 6).unwrap();
    // One task per pass: the lowered matrix covers all 7 images at once.
    assert_eq!(probe.load(Ordering::Relaxed), (4 * 9 + 5) * 7 * 20);
}

#[test]
fn weight_gradient_without_room_for_partials_uses_shared_products() {
    // dW has 16·16·9 = 2304 floats; a budget of 2 of them leaves no room for a
    // second partial sum, so one worker runs with gemm split over the pool.
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
    let probe = leak_probe();
    let tuning = Tuning {
        scratch_bytes: 4 * wlen * 2,
        probe: Some(probe),
        ..Tuning::default()
    };
    let v = Variant {
        name: "shared dW",
        tuning,
        threads: 3,
    };
    check_against_reference(&s, &v, 8).unwrap();
    assert!(probe.load(Ordering::Relaxed) <= 2 * wlen);
}
