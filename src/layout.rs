//! Strided tensors in host memory: the data types and the 5-D canonical view of a
//! descriptor (dims, element strides, byte span, density). Converting such tensors to and
//! from the engine's packed f32 is `convert`'s. Pure Rust, no FFI.

/// Element type of the data (computation is always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "fp32",
            DType::F16 => "fp16",
            DType::BF16 => "bf16",
        }
    }
}

/// A tensor as five dims `[n, c, d, h, w]` (or `[k, c, kd, kh, kw]`) with element strides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout5 {
    pub dims: [usize; 5],
    pub strides: [usize; 5],
}

impl Layout5 {
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// Elements from the first to one past the last addressed element.
    pub fn span(&self) -> usize {
        1 + self
            .dims
            .iter()
            .zip(&self.strides)
            .map(|(d, s)| (d - 1) * s)
            .sum::<usize>()
    }

    /// Packed row-major `[n, c, d, h, w]`: the engine's own order.
    pub fn is_packed_canonical(&self) -> bool {
        let mut expect = 1;
        for i in (0..5).rev() {
            if self.dims[i] != 1 && self.strides[i] != expect {
                return false;
            }
            expect *= self.dims[i];
        }
        true
    }

    /// Packed channels-last `[n, d, h, w, c]` (NHWC / NDHWC): channels adjacent, then the
    /// spatial dims, then the batch. Dims of size 1 place no demand on their stride.
    pub fn is_packed_channels_last(&self) -> bool {
        let mut expect = 1;
        for i in [1, 4, 3, 2, 0] {
            if self.dims[i] != 1 && self.strides[i] != expect {
                return false;
            }
            expect *= self.dims[i];
        }
        true
    }

    /// The same elements seen as one packed row (for tensors whose memory order is
    /// already the order they are computed in).
    pub fn flat(&self) -> Layout5 {
        Layout5 {
            dims: [1, 1, 1, 1, self.numel()],
            strides: [1; 5],
        }
    }

    /// Every element has its own address and there are no gaps: writing all elements
    /// overwrites the whole span, so it need not be read first.
    pub fn is_dense(&self) -> bool {
        let mut order: Vec<usize> = (0..5).filter(|&i| self.dims[i] != 1).collect();
        order.sort_by_key(|&i| self.strides[i]);
        let mut expect = 1;
        for i in order {
            if self.strides[i] != expect {
                return false;
            }
            expect *= self.dims[i];
        }
        true
    }

    /// No two elements share an address (required of anything written).
    pub fn is_non_overlapping(&self) -> bool {
        let mut order: Vec<usize> = (0..5).filter(|&i| self.dims[i] != 1).collect();
        order.sort_by_key(|&i| self.strides[i]);
        let mut reach = 1; // elements covered by the inner dims so far
        for i in order {
            if self.strides[i] < reach {
                return false;
            }
            reach = self.strides[i] * (self.dims[i] - 1) + reach;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nhwc(n: usize, c: usize, h: usize, w: usize) -> Layout5 {
        Layout5 {
            dims: [n, c, 1, h, w],
            strides: [h * w * c, 1, h * w * c, w * c, c],
        }
    }

    #[test]
    fn dense_and_overlap_classification() {
        let packed = Layout5 {
            dims: [2, 3, 1, 4, 5],
            strides: [60, 20, 20, 5, 1],
        };
        assert!(packed.is_packed_canonical() && packed.is_dense() && packed.is_non_overlapping());
        let cl = nhwc(2, 3, 4, 5);
        assert!(!cl.is_packed_canonical() && cl.is_dense() && cl.is_non_overlapping());
        assert!(cl.is_packed_channels_last() && !packed.is_packed_channels_last());
        assert_eq!(cl.flat().numel(), cl.numel());
        assert!(cl.flat().is_packed_canonical());
        let padded = Layout5 {
            dims: [2, 3, 1, 4, 5],
            strides: [80, 24, 24, 6, 1],
        };
        assert!(!padded.is_dense() && padded.is_non_overlapping());
        assert_eq!(padded.span(), 80 + 48 + 18 + 4 + 1);
        let bcast = Layout5 {
            dims: [2, 3, 1, 4, 5],
            strides: [0, 20, 20, 5, 1],
        };
        assert!(!bcast.is_non_overlapping());
    }
}
