//! The gated forward pass (`conv::forward_gated`): images of the input arrive
//! one after another while it runs, and each image of the output is reported
//! once, when it is final.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::{compare, pool, reference, shape2d, Rng};
use crate::cpu::conv::forward_gated_with;
use crate::cpu::gate::Gate;
use crate::cpu::scratch::Tuning;
use crate::cpu::simd::Isa;

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

/// Every image of the output matches the reference when reported, each is reported
/// once, and no task read an image before it arrived (it would read NaN), on shapes
/// whose tasks are bands within images, runs across them, and several images each.
#[test]
fn gated_forward_reads_images_as_they_arrive_and_reports_each_output_once() {
    let isas = [Isa::Avx512, Isa::Avx2];
    let shapes = [
        shape2d(5, 8, 16, 1, [9, 7], [3, 3], [1, 1], [1, 1], [1, 1]),
        shape2d(7, 16, 24, 1, [4, 4], [3, 3], [1, 1], [1, 1], [1, 1]),
        shape2d(3, 4, 8, 1, [13, 11], [3, 3], [1, 1], [2, 2], [1, 1]),
    ];
    let mut ran = 0;
    for isa in isas.into_iter().filter(|i| i.supported() == *i) {
        let t = Tuning {
            isa,
            ..Tuning::default()
        };
        for (k, s) in shapes.iter().enumerate() {
            for threads in [1, 3] {
                let mut rng = Rng::new(7 + k as u64);
                let (x, w) = (rng.vec(s.input_len()), rng.vec(s.weight_len()));
                let (want, mag) = reference::forward(s, &x, &w);
                let per_in = s.input_len() / s.n;
                let per_out = s.output_len() / s.n;
                let mut xs = vec![f32::NAN; x.len()];
                let mut y = vec![f32::NAN; s.output_len()];
                let gate = Arrivals {
                    arrived: AtomicUsize::new(0),
                    y: (y.as_mut_ptr() as usize, per_out),
                    done: Mutex::new(Vec::new()),
                    asked: AtomicUsize::new(0),
                };
                let xs_at = xs.as_mut_ptr() as usize;
                let took = std::thread::scope(|scope| {
                    scope.spawn(|| {
                        for i in 0..s.n {
                            std::thread::sleep(Duration::from_micros(300));
                            // SAFETY: image `i` is read by no task before `arrived`
                            // passes it (what the test checks).
                            let dst = unsafe {
                                std::slice::from_raw_parts_mut(
                                    (xs_at as *mut f32).add(i * per_in),
                                    per_in,
                                )
                            };
                            dst.copy_from_slice(&x[i * per_in..(i + 1) * per_in]);
                            gate.arrived.store(i + 1, Ordering::Release);
                        }
                    });
                    let (xs, y) = (&xs[..], &mut y[..]);
                    pool(threads).install(|| forward_gated_with(s, xs, &w, y, &gate, &t))
                });
                assert!(took, "{isa:?} {s:?}: the gated path did not take the shape");
                let mut done = gate.done.into_inner().unwrap();
                done.sort_by_key(|d| d.0);
                let images: Vec<usize> = done.iter().map(|d| d.0).collect();
                assert_eq!(
                    images,
                    (0..s.n).collect::<Vec<_>>(),
                    "{isa:?} {s:?}: each image once"
                );
                for (i, out) in done {
                    let r = i * per_out..(i + 1) * per_out;
                    compare(
                        &format!("{isa:?} {threads} threads image {i} {s:?}"),
                        &out,
                        &want[r.clone()],
                        &mag[r],
                    )
                    .unwrap();
                }
                assert_eq!(
                    gate.asked.load(Ordering::Relaxed),
                    s.n,
                    "the last image was asked for"
                );
                ran += 1;
            }
        }
    }
    assert!(
        ran > 0,
        "no instruction set with the implicit GEMM on this CPU"
    );
}
