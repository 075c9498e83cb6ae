//! Naive direct convolutions in f64, written straight from the definition.
//! Each returns the result and, per element, the sum of |terms| (the scale
//! against which f32 rounding error is judged).

use crate::cpu::ConvShape;

fn idx5(dims: [usize; 5], i: [usize; 5]) -> usize {
    (((i[0] * dims[1] + i[1]) * dims[2] + i[2]) * dims[3] + i[3]) * dims[4] + i[4]
}

fn x_dims(s: &ConvShape) -> [usize; 5] {
    [s.n, s.c_in, s.input[0], s.input[1], s.input[2]]
}
fn y_dims(s: &ConvShape) -> [usize; 5] {
    [s.n, s.c_out, s.output[0], s.output[1], s.output[2]]
}
fn w_dims(s: &ConvShape) -> [usize; 5] {
    [
        s.c_out,
        s.c_in / s.groups,
        s.kernel[0],
        s.kernel[1],
        s.kernel[2],
    ]
}

/// Input coordinate read by output coordinate `o` through tap `k` in dim `a`.
fn input_coord(s: &ConvShape, a: usize, o: usize, k: usize) -> Option<usize> {
    let i = (o * s.stride[a] + k * s.dilation[a]) as isize - s.pad[a] as isize;
    (i >= 0 && (i as usize) < s.input[a]).then_some(i as usize)
}

/// `y[n, co, o] = Σ w[co, ci, k] · x[n, g·cin_g + ci, o·s + k·d − p]`.
pub fn forward(s: &ConvShape, x: &[f32], w: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (xd, yd, wd) = (x_dims(s), y_dims(s), w_dims(s));
    let mut y = vec![0.0; s.output_len()];
    let mut mag = vec![0.0; s.output_len()];
    let cin_g = s.c_in / s.groups;
    let cout_g = s.c_out / s.groups;
    for n in 0..s.n {
        for co in 0..s.c_out {
            let g = co / cout_g;
            for od in 0..s.output[0] {
                for oh in 0..s.output[1] {
                    for ow in 0..s.output[2] {
                        let (mut acc, mut abs) = (0.0f64, 0.0f64);
                        for ci in 0..cin_g {
                            for kd in 0..s.kernel[0] {
                                for kh in 0..s.kernel[1] {
                                    for kw in 0..s.kernel[2] {
                                        let (Some(id), Some(ih), Some(iw)) = (
                                            input_coord(s, 0, od, kd),
                                            input_coord(s, 1, oh, kh),
                                            input_coord(s, 2, ow, kw),
                                        ) else {
                                            continue;
                                        };
                                        let xv =
                                            x[idx5(xd, [n, g * cin_g + ci, id, ih, iw])] as f64;
                                        let wv = w[idx5(wd, [co, ci, kd, kh, kw])] as f64;
                                        acc += xv * wv;
                                        abs += (xv * wv).abs();
                                    }
                                }
                            }
                        }
                        let at = idx5(yd, [n, co, od, oh, ow]);
                        y[at] = acc;
                        mag[at] = abs;
                    }
                }
            }
        }
    }
    (y, mag)
}

/// Output coordinate that reads input coordinate `i` through tap `k`, if any.
fn output_coord(s: &ConvShape, a: usize, i: usize, k: usize) -> Option<usize> {
    let t = (i + s.pad[a]) as isize - (k * s.dilation[a]) as isize;
    if t < 0 || t % s.stride[a] as isize != 0 {
        return None;
    }
    let o = (t / s.stride[a] as isize) as usize;
    (o < s.output[a]).then_some(o)
}

/// `dx[n, ci, i] = Σ w[co, ci', k] · dy[n, co, o]` over every `(co, k, o)`
/// whose forward tap reads `i` (gathered per input position).
pub fn backward_data(s: &ConvShape, dy: &[f32], w: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (xd, yd, wd) = (x_dims(s), y_dims(s), w_dims(s));
    let mut dx = vec![0.0; s.input_len()];
    let mut mag = vec![0.0; s.input_len()];
    let cin_g = s.c_in / s.groups;
    let cout_g = s.c_out / s.groups;
    for n in 0..s.n {
        for ci in 0..s.c_in {
            let g = ci / cin_g;
            for id in 0..s.input[0] {
                for ih in 0..s.input[1] {
                    for iw in 0..s.input[2] {
                        let (mut acc, mut abs) = (0.0f64, 0.0f64);
                        for co in g * cout_g..(g + 1) * cout_g {
                            for kd in 0..s.kernel[0] {
                                for kh in 0..s.kernel[1] {
                                    for kw in 0..s.kernel[2] {
                                        let (Some(od), Some(oh), Some(ow)) = (
                                            output_coord(s, 0, id, kd),
                                            output_coord(s, 1, ih, kh),
                                            output_coord(s, 2, iw, kw),
                                        ) else {
                                            continue;
                                        };
                                        let gv = dy[idx5(yd, [n, co, od, oh, ow])] as f64;
                                        let wv =
                                            w[idx5(wd, [co, ci - g * cin_g, kd, kh, kw])] as f64;
                                        acc += gv * wv;
                                        abs += (gv * wv).abs();
                                    }
                                }
                            }
                        }
                        let at = idx5(xd, [n, ci, id, ih, iw]);
                        dx[at] = acc;
                        mag[at] = abs;
                    }
                }
            }
        }
    }
    (dx, mag)
}

/// `dw[co, ci, k] = Σ_{n, o} dy[n, co, o] · x[n, g·cin_g + ci, o·s + k·d − p]`.
pub fn backward_weights(s: &ConvShape, x: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (xd, yd, wd) = (x_dims(s), y_dims(s), w_dims(s));
    let mut dw = vec![0.0; s.weight_len()];
    let mut mag = vec![0.0; s.weight_len()];
    let cin_g = s.c_in / s.groups;
    let cout_g = s.c_out / s.groups;
    for co in 0..s.c_out {
        let g = co / cout_g;
        for ci in 0..cin_g {
            for kd in 0..s.kernel[0] {
                for kh in 0..s.kernel[1] {
                    for kw in 0..s.kernel[2] {
                        let (mut acc, mut abs) = (0.0f64, 0.0f64);
                        for n in 0..s.n {
                            for od in 0..s.output[0] {
                                for oh in 0..s.output[1] {
                                    for ow in 0..s.output[2] {
                                        let (Some(id), Some(ih), Some(iw)) = (
                                            input_coord(s, 0, od, kd),
                                            input_coord(s, 1, oh, kh),
                                            input_coord(s, 2, ow, kw),
                                        ) else {
                                            continue;
                                        };
                                        let xv =
                                            x[idx5(xd, [n, g * cin_g + ci, id, ih, iw])] as f64;
                                        let gv = dy[idx5(yd, [n, co, od, oh, ow])] as f64;
                                        acc += xv * gv;
                                        abs += (xv * gv).abs();
                                    }
                                }
                            }
                        }
                        let at = idx5(wd, [co, ci, kd, kh, kw]);
                        dw[at] = acc;
                        mag[at] = abs;
                    }
                }
            }
        }
    }
    (dw, mag)
}
