//! The gated passes (`conv::forward_gated`, `conv::backward_data_gated`):
//! images of the input arrive one after another while they run, and each image
//! of the output is reported once, when it is final.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::{compare, pool, reference, shape2d, Rng};
use crate::cpu::conv::{backward_data_gated_with, forward_gated_with};
use crate::cpu::gate::Gate;
use crate::cpu::scratch::Tuning;
use crate::cpu::simd::Isa;
use crate::cpu::ConvShape;

/// Images arrive one by one from another thread (NaN until then); the output
/// of each image is copied out when the gate hears it is done.
struct Arrivals {
    arrived: AtomicUsize,
    /// The output's address and one image's length, read when an image is done.
    y: (usize, usize),
    done: Mutex<Vec<(usize, Vec<f32>)>>,
    asked: AtomicUsize,
}

impl Gate for Arrivals {
    fn input_ready(&self, image: usize) -> bool {
        self.asked.fetch_max(image + 1, Ordering::Relaxed);
        while self.arrived.load(Ordering::Acquire) <= image {
            std::thread::yield_now();
        }
        true
    }

    fn output_done(&self, image: usize) {
        let (base, len) = self.y;
        // SAFETY: image `image` of the output is final and no task writes it again;
        // other images are written meanwhile, not this one.
        let out = unsafe { std::slice::from_raw_parts((base as *const f32).add(image * len), len) };
        self.done.lock().unwrap().push((image, out.to_vec()));
    }
}

/// The input gradient's input is `dy`, its output `dx`.
#[derive(Clone, Copy, Debug)]
enum Pass {
    Forward,
    BackwardData,
}

/// Runs `pass` of `s` gated, on `threads` at `isa`, with the input's images arriving
/// one by one; checks each reported output image against the reference, that each is
/// reported once and that the last image was asked for. False where the gated path
/// does not take the shape.
fn check_gated(pass: Pass, s: &ConvShape, isa: Isa, threads: usize, seed: u64) -> bool {
    let t = Tuning {
        isa,
        ..Tuning::default()
    };
    let mut rng = Rng::new(seed);
    let w = rng.vec(s.weight_len());
    let (in_len, out_len) = match pass {
        Pass::Forward => (s.input_len(), s.output_len()),
        Pass::BackwardData => (s.output_len(), s.input_len()),
    };
    let input = rng.vec(in_len);
    let (want, mag) = match pass {
        Pass::Forward => reference::forward(s, &input, &w),
        Pass::BackwardData => reference::backward_data(s, &input, &w),
    };
    let (per_in, per_out) = (in_len / s.n, out_len / s.n);
    let mut arriving = vec![f32::NAN; in_len];
    let mut out = vec![f32::NAN; out_len];
    let gate = Arrivals {
        arrived: AtomicUsize::new(0),
        y: (out.as_mut_ptr() as usize, per_out),
        done: Mutex::new(Vec::new()),
        asked: AtomicUsize::new(0),
    };
    let at = arriving.as_mut_ptr() as usize;
    let took = std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..s.n {
                std::thread::sleep(Duration::from_micros(300));
                // SAFETY: image `i` is read by no task before `arrived` passes it
                // (what the test checks).
                let dst = unsafe {
                    std::slice::from_raw_parts_mut((at as *mut f32).add(i * per_in), per_in)
                };
                dst.copy_from_slice(&input[i * per_in..(i + 1) * per_in]);
                gate.arrived.store(i + 1, Ordering::Release);
            }
        });
        let (x, y) = (&arriving[..], &mut out[..]);
        pool(threads).install(|| match pass {
            Pass::Forward => forward_gated_with(s, x, &w, y, &gate, &t),
            Pass::BackwardData => backward_data_gated_with(s, x, &w, y, &gate, &t),
        })
    });
    if !took {
        return false;
    }
    let what = format!("{pass:?} {isa:?} {threads} threads {s:?}");
    let mut done = gate.done.into_inner().unwrap();
    done.sort_by_key(|d| d.0);
    let images: Vec<usize> = done.iter().map(|d| d.0).collect();
    assert_eq!(
        images,
        (0..s.n).collect::<Vec<_>>(),
        "{what}: each image once"
    );
    for (i, got) in done {
        let r = i * per_out..(i + 1) * per_out;
        compare(
            &format!("{what} image {i}"),
            &got,
            &want[r.clone()],
            &mag[r],
        )
        .unwrap();
    }
    assert_eq!(
        gate.asked.load(Ordering::Relaxed),
        s.n,
        "{what}: the last image was asked for"
    );
    true
}

/// Every image of the output matches the reference when reported, each is reported
/// once, and no task read an image before it arrived (it would read NaN), on shapes
/// whose tasks are bands within images, runs across them, and several images each;
/// and the input gradient at stride 1 (the implicit GEMM over the flipped kernel).
#[test]
fn gated_passes_read_images_as_they_arrive_and_report_each_output_once() {
    let forward = [
        shape2d(5, 8, 16, 1, [9, 7], [3, 3], [1, 1], [1, 1], [1, 1]),
        shape2d(7, 16, 24, 1, [4, 4], [3, 3], [1, 1], [1, 1], [1, 1]),
        shape2d(3, 4, 8, 1, [13, 11], [3, 3], [1, 1], [2, 2], [1, 1]),
    ];
    // 64 input channels over 48×48: the input gradient runs as a forward pass.
    let data = shape2d(3, 64, 8, 1, [48, 48], [3, 3], [1, 1], [1, 1], [1, 1]);
    let mut ran = 0;
    for isa in [Isa::Avx512, Isa::Avx2]
        .into_iter()
        .filter(|i| i.supported() == *i)
    {
        for threads in [1, 3] {
            for (k, s) in forward.iter().enumerate() {
                assert!(
                    check_gated(Pass::Forward, s, isa, threads, 7 + k as u64),
                    "{isa:?} {s:?}: not taken"
                );
            }
            assert!(
                check_gated(Pass::BackwardData, &data, isa, threads, 3),
                "{isa:?}: the input gradient not taken"
            );
            ran += 1;
        }
    }
    assert!(
        ran > 0,
        "no instruction set with the implicit GEMM on this CPU"
    );
}
