//! Input rows a convolution never reads stay on the device.
//!
//! A kernel one row tall with a vertical stride `s > 1` and no vertical padding (ResNet's
//! 1×1/2 projections) reads input rows `0, s, 2s, …` only; the rest would cross the link
//! for nothing. Where the input is packed (NCHW or channels-last) and its height is
//! exactly `s` times the output's, the rows it reads lie evenly `s` rows apart across the
//! whole tensor, so one pitched copy (`hipMemcpy2DAsync`) per chunk moves just them, and
//! the problem becomes the same convolution over an input `s` times shorter with a
//! vertical stride of 1. For the input gradient, the rows computed go back the same way
//! and the rows between them are zeroed on the device (`hipMemset2DAsync`), which needs
//! `beta = 0` (otherwise the rows between would have to be scaled by `beta`).
//!
//! At 12 GB/s this halves the input bytes of ResNet-18's three projections (their
//! copies of the input outlast PyTorch's whole pass). Pure arithmetic on the problem;
//! the copies themselves are `transfer`'s.

use crate::cpu::ConvShape;
use crate::describe::{ConvProblem, Pass};
use crate::layout::Layout5;

/// How the rows read of the regular convolution's input lie on the device: `rows` of
/// `width` bytes per sample, `pitch` bytes apart (samples follow each other at the same
/// pitch), landing packed (`width` apart) on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowCopy {
    pub width: usize,
    pub pitch: usize,
    /// Rows of one sample.
    pub rows: usize,
}

impl RowCopy {
    /// One row copied in this many.
    pub fn step(&self) -> usize {
        self.pitch / self.width
    }

    /// Device bytes from one sample to the next.
    pub fn sample_bytes(&self) -> usize {
        self.rows * self.pitch
    }

    /// Device offset of sample `n`.
    pub fn offset(&self, n: usize) -> usize {
        n * self.sample_bytes()
    }
}

/// The problem over only the rows read, and how to copy them.
#[derive(Clone, Debug)]
pub struct SkippedRows {
    pub problem: ConvProblem,
    pub copy: RowCopy,
}

/// What the runtime offers for it.
#[derive(Clone, Copy, Debug)]
pub struct Runtime {
    pub pitched_copies: bool,
    pub pitched_memsets: bool,
}

/// The reduced problem of `p`, where it applies: a kernel one row tall, vertical stride
/// `s > 1`, no vertical padding, input height `s ×` the output's, a packed input (NCHW or
/// channels-last), and for the input gradient `beta = 0` and device memsets.
pub fn plan(p: &ConvProblem, beta: f32, rt: Runtime) -> Option<SkippedRows> {
    let s = &p.shape;
    let step = s.stride[1];
    let writes_x = p.pass == Pass::BackwardData;
    if !rt.pitched_copies
        || (writes_x && (beta != 0.0 || !rt.pitched_memsets))
        || step < 2
        || s.kernel[1] != 1
        || s.pad[1] != 0
        || s.input[1] != step * s.output[1]
    {
        return None;
    }
    let l = p.x;
    let [n, c, d, h, w] = l.dims;
    let dt = p.dtype.size();
    let h2 = h / step;
    // Packed NCHW: a row is W elements; channels-last: W·C.
    let (row, rows, host) = if l.is_packed_canonical() {
        (
            w,
            c * d * h2,
            Layout5 {
                dims: [n, c, d, h2, w],
                strides: [c * d * h2 * w, d * h2 * w, h2 * w, w, 1],
            },
        )
    } else if l.is_packed_channels_last() {
        (
            w * c,
            d * h2,
            Layout5 {
                dims: [n, c, d, h2, w],
                strides: [d * h2 * w * c, 1, h2 * w * c, w * c, c],
            },
        )
    } else {
        return None;
    };
    let mut shape: ConvShape = *s;
    shape.input[1] = h2;
    shape.stride[1] = 1;
    shape.dilation[1] = 1;
    let mut problem = p.clone();
    problem.shape = shape;
    problem.x = host;
    Some(SkippedRows {
        problem,
        copy: RowCopy {
            width: row * dt,
            pitch: step * row * dt,
            rows,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::describe::Direction;
    use crate::layout::DType;

    const BOTH: Runtime = Runtime {
        pitched_copies: true,
        pitched_memsets: true,
    };

    fn packed(dims: [usize; 5], channels_last: bool) -> Layout5 {
        let [_, c, d, h, w] = dims;
        let strides = if channels_last {
            [d * h * w * c, 1, h * w * c, w * c, c]
        } else {
            [c * d * h * w, d * h * w, h * w, w, 1]
        };
        Layout5 { dims, strides }
    }

    /// ResNet's 1×1/2 projection 64 → 128 at 56×56, batch 8.
    fn projection(pass: Pass, channels_last: bool, kernel_h: usize, pad_h: usize) -> ConvProblem {
        let shape = ConvShape {
            n: 8,
            c_in: 64,
            c_out: 128,
            groups: 1,
            input: [1, 56, 56],
            kernel: [1, kernel_h, 1],
            output: [1, (56 + 2 * pad_h - kernel_h) / 2 + 1, 28],
            pad: [0, pad_h, 0],
            stride: [1, 2, 2],
            dilation: [1, 1, 1],
        };
        ConvProblem {
            direction: Direction::Forward,
            transposed: false,
            pass,
            dtype: DType::F16,
            shape,
            x: packed([8, 64, 1, 56, 56], channels_last),
            w: packed([128, 64, 1, kernel_h, 1], false),
            y: packed([8, 128, 1, shape.output[1], 28], channels_last),
            spatial_dims: 2,
        }
    }

    #[test]
    fn a_projection_reads_every_other_row() {
        let p = projection(Pass::Forward, false, 1, 0);
        let r = plan(&p, 0.0, BOTH).expect("applies");
        assert_eq!(
            r.copy,
            RowCopy {
                width: 56 * 2,
                pitch: 2 * 56 * 2,
                rows: 64 * 28,
            }
        );
        assert_eq!(r.copy.step(), 2);
        assert_eq!(r.copy.sample_bytes(), 64 * 56 * 56 * 2);
        let s = r.problem.shape;
        assert_eq!(
            (s.input, s.stride, s.output),
            ([1, 28, 56], [1, 1, 2], [1, 28, 28])
        );
        assert_eq!(
            ConvShape::forward_output(s.input, s.kernel, s.pad, s.stride, s.dilation),
            Some(s.output)
        );
        assert!(r.problem.x.is_packed_canonical());
        assert_eq!(r.problem.x.dims, [8, 64, 1, 28, 56]);
        assert_eq!((r.problem.w, r.problem.y), (p.w, p.y));
    }

    #[test]
    fn channels_last_rows_hold_every_channel() {
        let p = projection(Pass::BackwardWeights, true, 1, 0);
        let r = plan(&p, 1.0, BOTH).expect("applies");
        assert_eq!(
            (r.copy.width, r.copy.pitch, r.copy.rows),
            (56 * 64 * 2, 2 * 56 * 64 * 2, 28)
        );
        assert!(r.problem.x.is_packed_channels_last());
        assert_eq!(r.problem.x.dims, [8, 64, 1, 28, 56]);
    }

    #[test]
    fn it_applies_only_where_rows_go_unread_evenly() {
        let fwd = projection(Pass::Forward, false, 1, 0);
        assert!(plan(&projection(Pass::Forward, false, 3, 1), 0.0, BOTH).is_none());
        assert!(plan(&projection(Pass::Forward, false, 1, 1), 0.0, BOTH).is_none());
        let mut odd = fwd.clone();
        odd.shape.input[1] = 55;
        odd.x.dims[3] = 55;
        assert!(
            plan(&odd, 0.0, BOTH).is_none(),
            "an odd height leaves uneven rows"
        );
        let mut strided = fwd.clone();
        strided.x.strides[0] += 64;
        assert!(plan(&strided, 0.0, BOTH).is_none(), "gaps between samples");
        let none = Runtime {
            pitched_copies: false,
            pitched_memsets: true,
        };
        assert!(plan(&fwd, 0.0, none).is_none());
        // The input gradient writes the rows between: only with beta 0 and memsets.
        let data = projection(Pass::BackwardData, false, 1, 0);
        assert!(plan(&data, 0.0, BOTH).is_some());
        assert!(plan(&data, 1.0, BOTH).is_none());
        let no_memset = Runtime {
            pitched_copies: true,
            pitched_memsets: false,
        };
        assert!(plan(&data, 0.0, no_memset).is_none());
        assert!(plan(&fwd, 0.5, no_memset).is_some(), "beta scales y, not x");
    }
}
