//! One-line reproductions of a convolution in MIOpenDriver's `conv` argument syntax, so
//! a user can file a failing configuration upstream (driver/conv_driver.hpp flags).

use crate::describe::{ConvProblem, Direction};
use crate::layout::DType;

/// MIOpenDriver's `-F` bit for a direction: 1 forward, 2 backward-data, 4 backward-weights.
pub fn direction_flag(d: Direction) -> u8 {
    match d {
        Direction::Forward => 1,
        Direction::BackwardData => 2,
        Direction::BackwardWeights => 4,
    }
}

/// The driver command for `p` without `-F` (which the caller adds for the directions seen).
pub fn driver_command(p: &ConvProblem) -> String {
    let s = &p.shape;
    let cmd = match p.dtype {
        DType::F32 => "conv",
        DType::F16 => "convfp16",
        DType::BF16 => "convbfp16",
    };
    // The driver describes the call as the client sees it: in transpose mode the call's
    // input is the regular convolution's output.
    let (c, input, k, input_layout) = if p.transposed {
        (s.c_out, s.output, s.c_in, &p.y)
    } else {
        (s.c_in, s.input, s.c_out, &p.x)
    };
    let mut a = vec![format!("MIOpenDriver {cmd} -n {} -c {c}", s.n)];
    let three_d = p.spatial_dims == 3;
    if three_d {
        a.push(format!("--spatial_dim 3 -! {}", input[0]));
    }
    a.push(format!("-H {} -W {} -k {k}", input[1], input[2]));
    if three_d {
        a.push(format!("-@ {}", s.kernel[0]));
    }
    a.push(format!("-y {} -x {}", s.kernel[1], s.kernel[2]));
    if three_d {
        a.push(format!(
            "-$ {} -# {} -^ {}",
            s.pad[0], s.stride[0], s.dilation[0]
        ));
    }
    a.push(format!(
        "-p {} -q {} -u {} -v {} -l {} -j {} -g {}",
        s.pad[1], s.pad[2], s.stride[1], s.stride[2], s.dilation[1], s.dilation[2], s.groups
    ));
    if p.transposed {
        a.push("-m trans".into());
        // Output padding: how much the transposed output exceeds the smallest one.
        let adj: Vec<usize> = (0..3)
            .map(|i| {
                s.input[i] + 2 * s.pad[i]
                    - ((s.output[i] - 1) * s.stride[i] + s.dilation[i] * (s.kernel[i] - 1) + 1)
            })
            .collect();
        if three_d {
            a.push(format!("-% {}", adj[0]));
        }
        a.push(format!("-Y {} -X {}", adj[1], adj[2]));
    } else {
        a.push("-m conv".into());
    }
    let channels_last =
        |l: &crate::layout::Layout5| l.strides[1] == 1 && l.dims[1] > 1 && !l.is_packed_canonical();
    if channels_last(input_layout) {
        let name = if three_d { "NDHWC" } else { "NHWC" };
        a.push(format!(
            "--in_layout {name} --out_layout {name} --fil_layout {name}"
        ));
    }
    a.push("-t 1".into());
    a.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::describe::{conv_problem, ConvDesc, TensorDesc};
    use crate::ffi::miopen::{miopenConvolution, miopenTranspose};

    #[test]
    fn forward_2d_fp16_command() {
        let c = ConvDesc {
            mode: miopenConvolution,
            pads: vec![1, 1],
            strides: vec![2, 2],
            dilations: vec![1, 1],
            groups: 1,
        };
        let p = conv_problem(
            Direction::Forward,
            &c,
            &TensorDesc::packed(DType::F16, &[8, 3, 224, 224]),
            &TensorDesc::packed(DType::F16, &[64, 3, 3, 3]),
            &TensorDesc::packed(DType::F16, &[8, 64, 112, 112]),
        )
        .unwrap();
        assert_eq!(
            driver_command(&p),
            "MIOpenDriver convfp16 -n 8 -c 3 -H 224 -W 224 -k 64 -y 3 -x 3 -p 1 -q 1 -u 2 -v 2 -l 1 -j 1 -g 1 -m conv -t 1"
        );
    }

    #[test]
    fn transposed_3d_names_input_side_and_output_padding() {
        // transposed: x [1, 4, 3, 3, 3] -> y [1, 2, 6, 6, 6], k 3, stride 2, pad 1, adj 1
        let c = ConvDesc {
            mode: miopenTranspose,
            pads: vec![1; 3],
            strides: vec![2; 3],
            dilations: vec![1; 3],
            groups: 1,
        };
        let p = conv_problem(
            Direction::Forward,
            &c,
            &TensorDesc::packed(DType::F32, &[1, 4, 3, 3, 3]),
            &TensorDesc::packed(DType::F32, &[4, 2, 3, 3, 3]),
            &TensorDesc::packed(DType::F32, &[1, 2, 6, 6, 6]),
        )
        .unwrap();
        let cmd = driver_command(&p);
        assert!(
            cmd.starts_with("MIOpenDriver conv -n 1 -c 4 --spatial_dim 3 -! 3 -H 3 -W 3 -k 2 -@ 3"),
            "{cmd}"
        );
        assert!(cmd.contains("-m trans -% 1 -Y 1 -X 1"), "{cmd}");
    }
}
