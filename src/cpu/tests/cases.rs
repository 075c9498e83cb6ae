//! Every path against the naive reference on a fixed list of shapes, plus
//! hand-computed examples that pin down the reference itself.

use super::{check_against_reference, compare, output_padded, reference, shape, Rng, Variant};
use crate::cpu::ConvShape;

/// A 1-D shape (`n`, channels, length, kernel, pad, stride, dilation).
#[allow(clippy::too_many_arguments)]
fn conv1d(
    n: usize,
    c_in: usize,
    c_out: usize,
    groups: usize,
    l: usize,
    k: usize,
    p: usize,
    s: usize,
    d: usize,
) -> ConvShape {
    shape(
        n,
        c_in,
        c_out,
        groups,
        [1, 1, l],
        [1, 1, k],
        [0, 0, p],
        [1, 1, s],
        [1, 1, d],
    )
}

/// A 2-D shape with per-dimension kernel, pad, stride and dilation.
#[allow(clippy::too_many_arguments)]
fn conv2d(
    n: usize,
    c_in: usize,
    c_out: usize,
    groups: usize,
    hw: [usize; 2],
    k: [usize; 2],
    p: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
) -> ConvShape {
    shape(
        n,
        c_in,
        c_out,
        groups,
        [1, hw[0], hw[1]],
        [1, k[0], k[1]],
        [0, p[0], p[1]],
        [1, s[0], s[1]],
        [1, d[0], d[1]],
    )
}

/// A systematic sweep: dims × kernel size × channel/group layout, with
/// stride, padding, dilation, batch, anisotropy and output padding rotating.
fn sweep() -> Vec<ConvShape> {
    // (c_in, c_out, groups): plain, grouped 2, grouped 4, depthwise, depthwise ×2.
    let layouts = [(3, 5, 1), (4, 6, 2), (8, 4, 4), (6, 6, 6), (3, 6, 3)];
    let mut out = Vec::new();
    let mut i = 0usize;
    for dims in 1..=3usize {
        let kernels: &[usize] = if dims == 3 { &[1, 3] } else { &[1, 3, 5, 7] };
        for &k in kernels {
            for &(c_in, c_out, groups) in &layouts {
                i += 1;
                let stride = [1, 2, 3][i % 3];
                let pad = [0, 1, 2][(i / 3) % 3];
                let dil = [1, 2][(i / 2) % 2];
                let n = [1, 3][i % 2];
                let active = |a: usize| a >= 3 - dims;
                let mut kernel = [1; 3];
                let mut pads = [0; 3];
                let mut strides = [1; 3];
                let mut dils = [1; 3];
                for a in (0..3).filter(|&a| active(a)) {
                    // Non-square kernels and anisotropic strides on some cases.
                    kernel[a] = if a == 2 && i % 2 == 1 && dims > 1 {
                        k.saturating_sub(2).max(1)
                    } else {
                        k
                    };
                    pads[a] = pad;
                    strides[a] = if a == 2 && i % 5 == 0 { 1 } else { stride };
                    dils[a] = dil;
                }
                let base = match dims {
                    1 => [1, 1, 23],
                    2 => [1, 11, 9],
                    _ => [5, 6, 7],
                };
                let input: [usize; 3] = std::array::from_fn(|a| {
                    let span = dils[a] * (kernel[a] - 1) + 1;
                    base[a].max(span.saturating_sub(2 * pads[a])).max(1)
                });
                let s = shape(n, c_in, c_out, groups, input, kernel, pads, strides, dils);
                let s = if i % 4 == 1 && stride > 1 {
                    output_padded(
                        s,
                        std::array::from_fn(|a| if active(a) { strides[a] - 1 } else { 0 }),
                    )
                } else {
                    s
                };
                out.push(s);
            }
        }
    }
    out
}

/// Shapes aimed at particular paths and corner cases.
fn specials() -> Vec<ConvShape> {
    vec![
        // Pointwise (input read in place), single and several images per chunk.
        conv2d(1, 6, 4, 1, [9, 7], [1, 1], [0, 0], [1, 1], [1, 1]),
        conv2d(3, 6, 4, 2, [9, 7], [1, 1], [0, 0], [1, 1], [1, 1]),
        conv1d(3, 5, 7, 1, 13, 1, 0, 1, 1),
        // Strided 1x1 (ResNet downsample) and padded 1x1.
        conv2d(2, 6, 8, 1, [9, 9], [1, 1], [0, 0], [2, 2], [1, 1]),
        conv2d(2, 3, 4, 1, [5, 6], [1, 1], [1, 2], [1, 1], [1, 1]),
        // Stem-like 7x7/2 pad 3, deeper K, longer 1-D.
        conv2d(2, 3, 8, 1, [15, 15], [7, 7], [3, 3], [2, 2], [1, 1]),
        conv2d(2, 16, 24, 1, [12, 10], [3, 3], [1, 1], [1, 1], [1, 1]),
        conv1d(2, 4, 4, 1, 100, 5, 2, 1, 1),
        // Mixed per-dimension geometry.
        conv2d(2, 4, 6, 2, [10, 13], [3, 5], [0, 2], [2, 1], [2, 1]),
        shape(
            1,
            2,
            3,
            1,
            [4, 7, 6],
            [2, 3, 1],
            [1, 0, 2],
            [3, 1, 2],
            [1, 2, 1],
        ),
        // Depthwise: every specialised row width, strides 1/2/3, dilation, big pads.
        conv2d(2, 5, 5, 5, [9, 11], [2, 2], [0, 1], [1, 1], [1, 1]),
        conv2d(2, 5, 5, 5, [9, 11], [4, 4], [1, 2], [1, 1], [1, 1]),
        conv2d(1, 4, 4, 4, [13, 12], [6, 6], [2, 3], [1, 1], [1, 2]),
        conv2d(2, 4, 8, 4, [13, 12], [5, 5], [2, 2], [2, 2], [2, 1]),
        conv2d(2, 4, 4, 4, [13, 12], [7, 7], [3, 3], [2, 2], [1, 1]),
        conv2d(1, 3, 3, 3, [10, 10], [3, 3], [3, 4], [1, 1], [1, 1]),
        conv2d(2, 3, 3, 3, [14, 14], [3, 3], [1, 1], [3, 3], [1, 1]),
        conv2d(2, 3, 6, 3, [14, 14], [1, 1], [0, 0], [2, 2], [1, 1]),
        output_padded(
            conv2d(2, 3, 3, 3, [9, 9], [3, 3], [1, 1], [2, 2], [1, 1]),
            [0, 1, 1],
        ),
        // One input channel, many outputs (MNIST first layer form).
        conv2d(3, 1, 8, 1, [10, 10], [3, 3], [0, 0], [1, 1], [1, 1]),
        // Output padding larger than the stride: trailing positions no tap reaches.
        output_padded(conv1d(2, 3, 4, 1, 9, 2, 0, 3, 1), [0, 0, 4]),
        output_padded(
            conv2d(1, 4, 4, 2, [7, 7], [3, 3], [1, 1], [2, 2], [1, 1]),
            [0, 3, 2],
        ),
    ]
}

#[test]
fn sweep_and_specials_match_reference_under_every_variant() {
    let shapes: Vec<ConvShape> = sweep().into_iter().chain(specials()).collect();
    assert!(shapes.len() > 70);
    let mut failures = Vec::new();
    for (i, s) in shapes.iter().enumerate() {
        for v in Variant::all() {
            if let Err(e) = check_against_reference(s, &v, 1000 + i as u64) {
                failures.push(e);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn hand_computed_examples() {
    // conv1d, pad 1: y = [0·1 + 1·0 + 2·(-1), …] = [-2, -2, -2, 3].
    let s = conv1d(1, 1, 1, 1, 4, 3, 1, 1, 1);
    let (x, w, dy) = ([1.0, 2.0, 3.0, 4.0], [1.0, 0.0, -1.0], [1.0; 4]);
    let y_want = [-2.0, -2.0, -2.0, 3.0];
    let dx_want = [1.0, 0.0, 0.0, -1.0];
    let dw_want = [6.0, 10.0, 9.0];
    // A transposed conv (length 2 → 7, kernel 2, stride 3, output padding 2)
    // leaves the gaps between and after the taps at zero.
    let t = output_padded(conv1d(1, 1, 1, 1, 5, 2, 0, 3, 1), [0, 0, 2]);
    let (xt, wt) = ([1.0, 2.0], [1.0, 10.0]);
    let yt_want = [1.0, 10.0, 0.0, 2.0, 20.0, 0.0, 0.0];
    // 2-D, stride 2, dilation 2, pad 1, on a 5x5 ramp with an all-ones 2x2 kernel:
    // y[i][j] = sum of x[r][c] = 5r + c over in-bounds r ∈ {2i − 1, 2i + 1},
    // c ∈ {2j − 1, 2j + 1}: rows/cols {1}, {1, 3}, {3}.
    let s2 = conv2d(1, 1, 1, 1, [5, 5], [2, 2], [1, 1], [2, 2], [2, 2]);
    let x2: Vec<f32> = (0..25).map(|v| v as f32).collect();
    let y2_want = [6.0, 14.0, 8.0, 22.0, 48.0, 26.0, 16.0, 34.0, 18.0];
    let f32s = |r: Vec<f64>| r.into_iter().map(|v| v as f32).collect::<Vec<_>>();
    exact(
        "reference forward",
        &f32s(reference::forward(&s, &x, &w).0),
        &y_want,
    );
    exact(
        "reference backward_data",
        &f32s(reference::backward_data(&s, &dy, &w).0),
        &dx_want,
    );
    exact(
        "reference backward_weights",
        &f32s(reference::backward_weights(&s, &x, &dy).0),
        &dw_want,
    );
    exact(
        "reference transposed",
        &f32s(reference::backward_data(&t, &xt, &wt).0),
        &yt_want,
    );
    exact(
        "reference 2-D",
        &f32s(reference::forward(&s2, &x2, &[1.0; 4]).0),
        &y2_want,
    );
    for v in Variant::all() {
        exact(v.name, &v.forward(&s, &x, &w), &y_want);
        exact(v.name, &v.backward_data(&s, &dy, &w), &dx_want);
        exact(v.name, &v.backward_weights(&s, &x, &dy), &dw_want);
        exact(v.name, &v.backward_data(&t, &xt, &wt), &yt_want);
        exact(v.name, &v.forward(&s2, &x2, &[1.0; 4]), &y2_want);
    }
}

/// Small-integer examples are exact in f32.
fn exact(what: &str, got: &[f32], want: &[f32]) {
    let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
    compare(what, got, &want, &vec![0.0; want.len()]).unwrap();
}

#[test]
fn comparison_rejects_small_errors() {
    let s = conv2d(2, 4, 6, 2, [7, 6], [3, 3], [1, 1], [1, 1], [1, 1]);
    let mut rng = Rng::new(7);
    let (x, w) = (rng.vec(s.input_len()), rng.vec(s.weight_len()));
    let (want, mag) = reference::forward(&s, &x, &w);
    let mut got = Variant::default_pool().forward(&s, &x, &w);
    compare("unperturbed", &got, &want, &mag).unwrap();
    // An error of 1e-3 of the term magnitude in one element must be caught.
    got[17] += (1e-3 * mag[17]) as f32;
    assert!(compare("perturbed", &got, &want, &mag).is_err());
    got[17] = f32::NAN;
    assert!(compare("nan", &got, &want, &mag).is_err());
}

#[test]
#[should_panic(expected = "buffer `y` has 10 elements")]
fn wrong_output_length_panics() {
    let s = conv1d(1, 1, 1, 1, 4, 3, 1, 1, 1);
    crate::cpu::conv::forward(&s, &[0.0; 4], &[0.0; 3], &mut [0.0; 10]);
}

#[test]
#[should_panic(expected = "invalid shape")]
fn invalid_shape_panics() {
    let mut s = conv1d(1, 2, 2, 1, 4, 3, 1, 1, 1);
    s.groups = 3;
    crate::cpu::conv::backward_weights(&s, &[0.0; 8], &[0.0; 8], &mut [0.0; 12]);
}
