//! The gated passes (`conv::forward_gated`, `conv::backward_data_gated`,
//! `conv::backward_weights_gated`): images of the input arrive one after
//! another while they run, and each image of the output is reported once, when
//! it is final (the weight gradient's output, whole at the end, never).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::{compare, pool, reference, shape2d, Rng};
use crate::cpu::conv::{backward_data_gated_with, backward_weights_gated_with, forward_gated_with};
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

/// The input gradient's input is `dy`, its output `dx`; the weight gradient's
/// inputs are `x` and `dy`, its output `dw`.
#[derive(Clone, Copy, Debug)]
enum Pass {
    Forward,
    BackwardData,
    BackwardWeights,
}

/// Runs `pass` of `s` gated, on `threads` at `isa` (under `tuning`), with the
/// inputs' images arriving one by one; checks each reported output image against
/// the reference, that each is reported once (the weight gradient's: none, and the
/// whole of it at the end) and that the last image was asked for. False where the
/// gated path does not take the shape, which it must then not have asked for.
fn check_gated(pass: Pass, s: &ConvShape, isa: Isa, threads: usize, seed: u64) -> bool {
    let t = Tuning {
        isa,
        ..Tuning::default()
    };
    check_gated_with(pass, s, &t, threads, seed)
}

fn check_gated_with(pass: Pass, s: &ConvShape, t: &Tuning, threads: usize, seed: u64) -> bool {
    let mut rng = Rng::new(seed);
    let w = rng.vec(s.weight_len());
    // The batched inputs, each arriving image by image, and the output.
    let (inputs, out_len) = match pass {
        Pass::Forward => (vec![rng.vec(s.input_len())], s.output_len()),
        Pass::BackwardData => (vec![rng.vec(s.output_len())], s.input_len()),
        Pass::BackwardWeights => (
            vec![rng.vec(s.input_len()), rng.vec(s.output_len())],
            s.weight_len(),
        ),
    };
    let (want, mag) = match pass {
        Pass::Forward => reference::forward(s, &inputs[0], &w),
        Pass::BackwardData => reference::backward_data(s, &inputs[0], &w),
        Pass::BackwardWeights => reference::backward_weights(s, &inputs[0], &inputs[1]),
    };
    let per_out = if let Pass::BackwardWeights = pass {
        out_len
    } else {
        out_len / s.n
    };
    let mut arriving: Vec<Vec<f32>> = inputs.iter().map(|v| vec![f32::NAN; v.len()]).collect();
    let mut out = vec![f32::NAN; out_len];
    let gate = Arrivals {
        arrived: AtomicUsize::new(0),
        y: (out.as_mut_ptr() as usize, per_out),
        done: Mutex::new(Vec::new()),
        asked: AtomicUsize::new(0),
    };
    let at: Vec<usize> = arriving
        .iter_mut()
        .map(|v| v.as_mut_ptr() as usize)
        .collect();
    let took = std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..s.n {
                std::thread::sleep(Duration::from_micros(300));
                for (src, &at) in inputs.iter().zip(&at) {
                    let per = src.len() / s.n;
                    // SAFETY: image `i` is read by no task before `arrived` passes
                    // it (what the test checks).
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut((at as *mut f32).add(i * per), per)
                    };
                    dst.copy_from_slice(&src[i * per..(i + 1) * per]);
                }
                gate.arrived.store(i + 1, Ordering::Release);
            }
        });
        let y = &mut out[..];
        let x = &arriving[0][..];
        pool(threads).install(|| match pass {
            Pass::Forward => forward_gated_with(s, x, &w, y, &gate, t),
            Pass::BackwardData => backward_data_gated_with(s, x, &w, y, &gate, t),
            Pass::BackwardWeights => backward_weights_gated_with(s, x, &arriving[1], y, &gate, t),
        })
    });
    let what = format!("{pass:?} {:?} {threads} threads {s:?}", t.isa);
    if !took {
        assert_eq!(
            gate.asked.load(Ordering::Relaxed),
            0,
            "{what}: asked, not taken"
        );
        assert!(out.iter().all(|v| v.is_nan()), "{what}: written, not taken");
        return false;
    }
    let mut done = gate.done.into_inner().unwrap();
    if let Pass::BackwardWeights = pass {
        assert!(done.is_empty(), "{what}: no image of dw is reported");
        compare(&what, &out, &want, &mag).unwrap();
    } else {
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

/// The weight gradient gated: `dw` matches the reference and no task read an
/// image of `x` or `dy` before it arrived, on each path that sweeps the images
/// in order — partial sums over bands of short rows (`implicit_weights`) and of
/// wide rows over blocked planes (`blocked_weights`), one band and several an
/// image, and the column ranges of the NCHW lowering (forced by the tuning),
/// chunks of several images and of part of one; paths that build the whole
/// batch first are not taken, and ask for nothing.
#[test]
fn gated_weight_gradients_read_images_as_they_arrive() {
    let short_rows = shape2d(5, 8, 16, 1, [9, 7], [3, 3], [1, 1], [1, 1], [1, 1]);
    let wide_rows = shape2d(4, 32, 8, 1, [6, 40], [3, 3], [1, 1], [1, 1], [1, 1]);
    let tall = shape2d(3, 32, 8, 1, [70, 36], [3, 3], [1, 1], [1, 1], [1, 1]);
    let strided_small = shape2d(5, 32, 8, 1, [11, 11], [3, 3], [1, 1], [2, 2], [1, 1]);
    let strided_large = shape2d(2, 32, 6, 1, [80, 90], [3, 3], [0, 1], [2, 2], [1, 1]);
    // Few columns: the NCHW lowering's partial sums, by runs of positions.
    let few_columns = shape2d(4, 1, 8, 1, [12, 12], [3, 3], [1, 1], [1, 1], [1, 1]);
    let mut ran = 0;
    for isa in [Isa::Avx512, Isa::Avx2]
        .into_iter()
        .filter(|i| i.supported() == *i)
    {
        let plain = Tuning {
            isa,
            ..Tuning::default()
        };
        let by_columns = Tuning {
            partial_weights_floats: 0,
            blocked_weights: false,
            ..plain
        };
        for threads in [1, 3] {
            for (k, s) in [&short_rows, &wide_rows, &tall].into_iter().enumerate() {
                assert!(
                    check_gated_with(Pass::BackwardWeights, s, &plain, threads, 11 + k as u64),
                    "{isa:?} {threads} {s:?}: not taken"
                );
            }
            for (k, s) in [&strided_small, &strided_large].into_iter().enumerate() {
                assert!(
                    check_gated_with(
                        Pass::BackwardWeights,
                        s,
                        &by_columns,
                        threads,
                        21 + k as u64
                    ),
                    "{isa:?} {threads} {s:?}: column ranges not taken"
                );
            }
            if threads > 1 {
                assert!(
                    !check_gated_with(Pass::BackwardWeights, &few_columns, &plain, threads, 5),
                    "{isa:?}: partial sums by runs of positions taken"
                );
            }
            ran += 1;
        }
    }
    assert!(
        ran > 0,
        "no instruction set with the packed GEMM on this CPU"
    );
}
