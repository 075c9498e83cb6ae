//! `ConvShape`: the geometry of one convolution, in the engine's canonical 3-D form.

/// Geometry of a (grouped, strided, padded, dilated) cross-correlation.
///
/// Spatial arrays are ordered `[d, h, w]`; a 2-D problem has `d = 1`, `kd = 1`,
/// `pad[0] = 0`, `stride[0] = dilation[0] = 1`, and a 1-D problem also `h = 1`.
/// `out` is stored explicitly (not derived) because backward-data of a transposed
/// convolution may ask for an input larger than the forward formula implies
/// (output padding): positions no kernel tap reaches get zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvShape {
    pub n: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub groups: usize,
    pub input: [usize; 3],
    pub kernel: [usize; 3],
    pub output: [usize; 3],
    pub pad: [usize; 3],
    pub stride: [usize; 3],
    pub dilation: [usize; 3],
}

impl ConvShape {
    /// Output spatial size given by the forward formula
    /// `(i + 2p - d(k-1) - 1) / s + 1`, or `None` when it would be < 1.
    pub fn forward_output(
        input: [usize; 3],
        kernel: [usize; 3],
        pad: [usize; 3],
        stride: [usize; 3],
        dilation: [usize; 3],
    ) -> Option<[usize; 3]> {
        let mut out = [0; 3];
        for i in 0..3 {
            let span = dilation[i].checked_mul(kernel[i].checked_sub(1)?)? + 1;
            let padded = input[i].checked_add(2 * pad[i])?;
            if padded < span || stride[i] == 0 {
                return None;
            }
            out[i] = (padded - span) / stride[i] + 1;
        }
        Some(out)
    }

    pub fn c_in_per_group(&self) -> usize {
        self.c_in / self.groups
    }
    pub fn c_out_per_group(&self) -> usize {
        self.c_out / self.groups
    }
    pub fn input_spatial(&self) -> usize {
        self.input.iter().product()
    }
    pub fn output_spatial(&self) -> usize {
        self.output.iter().product()
    }
    pub fn kernel_spatial(&self) -> usize {
        self.kernel.iter().product()
    }
    pub fn input_len(&self) -> usize {
        self.n * self.c_in * self.input_spatial()
    }
    pub fn weight_len(&self) -> usize {
        self.c_out * self.c_in_per_group() * self.kernel_spatial()
    }
    pub fn output_len(&self) -> usize {
        self.n * self.c_out * self.output_spatial()
    }
    /// Multiply-adds of one pass (the same for all three passes), times two.
    pub fn flops(&self) -> f64 {
        2.0 * self.n as f64
            * self.c_out as f64
            * self.output_spatial() as f64
            * self.c_in_per_group() as f64
            * self.kernel_spatial() as f64
    }

    /// Checks internal consistency: positive sizes, channels divisible by groups,
    /// and every output position's receptive field inside the padded input.
    pub fn validate(&self) -> Result<(), String> {
        if self.n == 0 || self.c_in == 0 || self.c_out == 0 || self.groups == 0 {
            return Err(format!("zero-sized dimension in {self:?}"));
        }
        if !self.c_in.is_multiple_of(self.groups) || !self.c_out.is_multiple_of(self.groups) {
            return Err(format!(
                "channels ({} in, {} out) not divisible by groups {}",
                self.c_in, self.c_out, self.groups
            ));
        }
        for i in 0..3 {
            if self.input[i] == 0 || self.kernel[i] == 0 || self.output[i] == 0 {
                return Err(format!("zero spatial size in {self:?}"));
            }
            if self.stride[i] == 0 || self.dilation[i] == 0 {
                return Err(format!("zero stride or dilation in {self:?}"));
            }
            let last_tap =
                (self.output[i] - 1) * self.stride[i] + (self.kernel[i] - 1) * self.dilation[i];
            if last_tap >= self.input[i] + 2 * self.pad[i] {
                return Err(format!(
                    "output size {} too large for input {} (kernel {}, pad {}, stride {}, dilation {}) in spatial dim {i}",
                    self.output[i], self.input[i], self.kernel[i], self.pad[i], self.stride[i], self.dilation[i]
                ));
            }
        }
        Ok(())
    }
}
