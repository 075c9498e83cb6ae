//! Strided tensors in host memory: the 5-D canonical view of a descriptor, its byte
//! span, and gathering to / scattering from the engine's packed f32 buffers with
//! fp16/bf16 conversion. Pure Rust, no FFI.

use half::{bf16, f16};
use rayon::prelude::*;

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

#[inline]
fn load(dtype: DType, bytes: &[u8], idx: usize) -> f32 {
    match dtype {
        DType::F32 => f32::from_ne_bytes(bytes[idx * 4..idx * 4 + 4].try_into().unwrap()),
        DType::F16 => f16::from_bits(u16::from_ne_bytes(
            bytes[idx * 2..idx * 2 + 2].try_into().unwrap(),
        ))
        .to_f32(),
        DType::BF16 => bf16::from_bits(u16::from_ne_bytes(
            bytes[idx * 2..idx * 2 + 2].try_into().unwrap(),
        ))
        .to_f32(),
    }
}

#[inline]
fn store(dtype: DType, bytes: &mut [u8], idx: usize, v: f32) {
    match dtype {
        DType::F32 => bytes[idx * 4..idx * 4 + 4].copy_from_slice(&v.to_ne_bytes()),
        DType::F16 => {
            bytes[idx * 2..idx * 2 + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_ne_bytes())
        }
        DType::BF16 => {
            bytes[idx * 2..idx * 2 + 2].copy_from_slice(&bf16::from_f32(v).to_bits().to_ne_bytes())
        }
    }
}

/// Reads the tensor `l` of type `dtype` out of its byte span `bytes` into a packed
/// canonical f32 buffer.
pub fn gather(bytes: &[u8], dtype: DType, l: &Layout5) -> Vec<f32> {
    let mut out = vec![0f32; l.numel()];
    gather_into(bytes, dtype, l, &mut out);
    out
}

/// [`gather`] into a caller-provided buffer of `l.numel()` values (so that the caller
/// decides how the memory is obtained).
pub fn gather_into(bytes: &[u8], dtype: DType, l: &Layout5, out: &mut [f32]) {
    assert!(
        bytes.len() >= l.span() * dtype.size(),
        "gather: span {} > buffer",
        l.span()
    );
    assert_eq!(out.len(), l.numel(), "gather: value count");
    if dtype == DType::F32 && l.is_packed_canonical() {
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = f32::from_ne_bytes(c.try_into().unwrap());
        }
        return;
    }
    let [_, c, d, h, w] = l.dims;
    let [sn, sc, sd, sh, sw] = l.strides;
    out.par_chunks_mut(d * h * w)
        .enumerate()
        .for_each(|(nc, plane)| {
            let base = (nc / c) * sn + (nc % c) * sc;
            let mut k = 0;
            for z in 0..d {
                for y in 0..h {
                    let row = base + z * sd + y * sh;
                    for x in 0..w {
                        plane[k] = load(dtype, bytes, row + x * sw);
                        k += 1;
                    }
                }
            }
        });
}

/// Writes the packed canonical f32 buffer `vals` into the tensor `l` inside `bytes`,
/// rounding to `dtype` (round to nearest even). Bytes outside the tensor's elements
/// are left as they are.
pub fn scatter(vals: &[f32], dtype: DType, l: &Layout5, bytes: &mut [u8]) {
    assert_eq!(vals.len(), l.numel(), "scatter: value count");
    assert!(
        bytes.len() >= l.span() * dtype.size(),
        "scatter: span {} > buffer",
        l.span()
    );
    let [_, c, d, h, w] = l.dims;
    let [sn, sc, sd, sh, sw] = l.strides;
    if dtype == DType::F32 && l.is_packed_canonical() {
        for (b, v) in bytes.chunks_exact_mut(4).zip(vals) {
            b.copy_from_slice(&v.to_ne_bytes());
        }
        return;
    }
    // Sequential: planes may interleave in memory (channels-last), so they cannot be
    // handed out as disjoint slices.
    for (nc, plane) in vals.chunks(d * h * w).enumerate() {
        let base = (nc / c) * sn + (nc % c) * sc;
        let mut k = 0;
        for z in 0..d {
            for y in 0..h {
                let row = base + z * sd + y * sh;
                for x in 0..w {
                    store(dtype, bytes, row + x * sw, plane[k]);
                    k += 1;
                }
            }
        }
    }
}

/// `out = alpha * out + beta * old`, the blending MIOpen applies to results.
pub fn blend(out: &mut [f32], alpha: f32, beta: f32, old: Option<&[f32]>) {
    match old {
        Some(old) if beta != 0.0 => out
            .par_iter_mut()
            .zip(old)
            .for_each(|(o, p)| *o = alpha * *o + beta * p),
        _ if alpha != 1.0 => out.par_iter_mut().for_each(|o| *o *= alpha),
        _ => {}
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

    #[test]
    fn gather_scatter_round_trip_in_every_dtype_and_layout() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for l in [
                nhwc(2, 3, 4, 5),
                Layout5 {
                    dims: [2, 3, 1, 4, 5],
                    strides: [80, 24, 24, 6, 1],
                },
            ] {
                let vals: Vec<f32> = (0..l.numel()).map(|i| i as f32 * 0.5 - 7.0).collect();
                let mut bytes = vec![0xAAu8; l.span() * dtype.size()];
                scatter(&vals, dtype, &l, &mut bytes);
                assert_eq!(gather(&bytes, dtype, &l), vals, "{dtype:?} {l:?}");
                // gaps are untouched
                if !l.is_dense() {
                    assert_eq!(bytes[5 * dtype.size()], 0xAA);
                }
            }
        }
    }

    #[test]
    fn channels_last_gather_reorders_to_nchw() {
        let l = nhwc(1, 2, 1, 2); // memory order: (w0,c0) (w0,c1) (w1,c0) (w1,c1)
        let mem: Vec<u8> = [1.0f32, 10.0, 2.0, 20.0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        assert_eq!(gather(&mem, DType::F32, &l), vec![1.0, 2.0, 10.0, 20.0]);
    }

    #[test]
    fn half_types_round_to_nearest_even() {
        let l = Layout5 {
            dims: [1, 1, 1, 1, 1],
            strides: [1; 5],
        };
        let mut b = [0u8; 2];
        scatter(&[1.0 + 1.0 / 2048.0], DType::F16, &l, &mut b); // halfway between 1 and 1+2^-10
        assert_eq!(gather(&b, DType::F16, &l), vec![1.0]);
        scatter(&[3.0e38], DType::BF16, &l, &mut b);
        assert!(gather(&b, DType::BF16, &l)[0] > 2.9e38);
    }

    #[test]
    fn blend_applies_alpha_and_beta() {
        let mut out = vec![2.0, 4.0];
        blend(&mut out, 0.5, 2.0, Some(&[1.0, 1.0]));
        assert_eq!(out, vec![3.0, 4.0]);
        let mut out = vec![2.0];
        blend(&mut out, 3.0, 0.0, None);
        assert_eq!(out, vec![6.0]);
    }
}
