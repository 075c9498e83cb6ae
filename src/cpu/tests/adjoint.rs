//! Adjoint identities on random shapes: for random x, w, dy,
//! `<forward(x, w), dy> == <x, backward_data(dy, w)> == <w, backward_weights(x, dy)>`.

use super::{output_padded, Rng, Variant};
use crate::cpu::scratch::Tuning;
use crate::cpu::ConvShape;

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&p, &q)| p as f64 * q as f64).sum()
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

/// A random valid shape with 1 to 3 spatial dims, small sizes.
fn random_shape(rng: &mut Rng) -> ConvShape {
    loop {
        let dims = rng.range(1, 3);
        let groups = rng.pick(&[1, 1, 2, 3, 4]);
        let depthwise = rng.range(0, 3) == 0;
        let (cin_g, cout_g) = if depthwise {
            (1, rng.range(1, 3))
        } else {
            (rng.range(1, 4), rng.range(1, 4))
        };
        let mut s = ConvShape {
            n: rng.range(1, 3),
            c_in: cin_g * groups,
            c_out: cout_g * groups,
            groups,
            input: [1; 3],
            kernel: [1; 3],
            output: [1; 3],
            pad: [0; 3],
            stride: [1; 3],
            dilation: [1; 3],
        };
        let max_len = [0, 24, 9, 5][dims];
        for a in 3 - dims..3 {
            s.input[a] = rng.range(1, max_len);
            s.kernel[a] = rng.range(1, if dims == 3 { 3 } else { 5 });
            s.pad[a] = rng.range(0, 2);
            s.stride[a] = rng.range(1, 3);
            s.dilation[a] = rng.range(1, 2);
        }
        let Some(out) = ConvShape::forward_output(s.input, s.kernel, s.pad, s.stride, s.dilation)
        else {
            continue;
        };
        s.output = out;
        if s.validate().is_err() {
            continue;
        }
        if rng.range(0, 3) == 0 {
            let extra = std::array::from_fn(|a| rng.range(0, s.stride[a] - 1));
            s = output_padded(s, extra);
        }
        return s;
    }
}

#[test]
fn adjoint_identities_hold_on_random_shapes() {
    let mut rng = Rng::new(42);
    let variants = Variant::all();
    let cases = 400;
    for case in 0..cases {
        let s = random_shape(&mut rng);
        let mut v = variants[case % variants.len()];
        if case % 7 == 3 {
            // Chunk far below one image now and then.
            v.tuning = Tuning {
                scratch_bytes: 2 << 10,
                chunk_bytes: 256,
                ..v.tuning
            };
        }
        let (x, w, dy) = (
            rng.vec(s.input_len()),
            rng.vec(s.weight_len()),
            rng.vec(s.output_len()),
        );
        let y = v.forward(&s, &x, &w);
        let dx = v.backward_data(&s, &dy, &w);
        let dw = v.backward_weights(&s, &x, &dy);
        let (a, b, c) = (dot(&y, &dy), dot(&x, &dx), dot(&w, &dw));
        // Sum of |terms| over the whole triple sum.
        let scale = dot(&v.forward(&s, &abs(&x), &abs(&w)), &abs(&dy));
        let tol = 1e-5 * scale + 1e-12;
        assert!(
            (a - b).abs() <= tol && (a - c).abs() <= tol,
            "case {case} [{}] {s:?}: <y,dy> {a} <x,dx> {b} <w,dw> {c} (scale {scale})",
            v.name
        );
    }
}
