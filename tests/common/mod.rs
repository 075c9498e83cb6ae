//! Helpers shared by the golden-vector tests: the generators' deterministic inputs, JSON
//! readers, tensor layouts and dtype round trips, and the tolerance comparison.
#![allow(dead_code)]

use half::{bf16, f16};
use rdna1shim::describe::TensorDesc;
use rdna1shim::layout::{DType, Layout5};
use serde_json::Value;

/// The generators' `values`: `scale * fill + offset`, rounded to f32 (scripts/gen_golden*.py).
pub fn values(n: usize, seed: u64, scale: f64, offset: f64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let v = ((i * 7919 + seed * 104729) % 2003) as f64 / 1001.5 - 1.0;
            (scale * v + offset) as f32
        })
        .collect()
}

pub fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Strides of `dims` ([n, c, spatial...]) packed in NCHW or channels-last order.
pub fn strides(dims: &[usize], channels_last: bool) -> Vec<usize> {
    let r = dims.len();
    let order: Vec<usize> = if channels_last {
        let mut o = vec![0];
        o.extend(2..r);
        o.push(1);
        o
    } else {
        (0..r).collect()
    };
    let mut s = vec![0; r];
    let mut acc = 1;
    for &i in order.iter().rev() {
        s[i] = acc;
        acc *= dims[i];
    }
    s
}

pub fn desc(dtype: DType, dims: &[usize], channels_last: bool) -> TensorDesc {
    TensorDesc {
        dtype,
        dims: dims.to_vec(),
        strides: strides(dims, channels_last),
    }
}

/// Element offset of the value at packed canonical index `i` of `l` (a naive walk, kept
/// apart from the shim's own converters so that the tests check them).
fn offset(l: &Layout5, i: usize) -> usize {
    let mut rem = i;
    let mut off = 0;
    for a in (0..5).rev() {
        off += (rem % l.dims[a]) * l.strides[a];
        rem /= l.dims[a];
    }
    off
}

/// Bytes of a tensor in `l` holding `vals` (packed canonical order) stored as `dt`.
pub fn bytes(vals: &[f32], dt: DType, l: &Layout5) -> Vec<u8> {
    assert_eq!(vals.len(), l.numel());
    let es = dt.size();
    let mut b = vec![0u8; l.span() * es];
    for (i, v) in vals.iter().enumerate() {
        let at = offset(l, i) * es;
        let e = &mut b[at..at + es];
        match dt {
            DType::F32 => e.copy_from_slice(&v.to_ne_bytes()),
            DType::F16 => e.copy_from_slice(&f16::from_f32(*v).to_bits().to_ne_bytes()),
            DType::BF16 => e.copy_from_slice(&bf16::from_f32(*v).to_bits().to_ne_bytes()),
        }
    }
    b
}

/// The values of the tensor `l` of type `dt` in `b`, in packed canonical order.
pub fn decode(b: &[u8], dt: DType, l: &Layout5) -> Vec<f32> {
    let es = dt.size();
    (0..l.numel())
        .map(|i| {
            let at = offset(l, i) * es;
            let e = &b[at..at + es];
            match dt {
                DType::F32 => f32::from_ne_bytes(e.try_into().unwrap()),
                DType::F16 => f16::from_bits(u16::from_ne_bytes(e.try_into().unwrap())).to_f32(),
                DType::BF16 => bf16::from_bits(u16::from_ne_bytes(e.try_into().unwrap())).to_f32(),
            }
        })
        .collect()
}

/// `vals` after a trip through device memory of type `dt` (the rounding a caller sees).
pub fn stored(vals: &[f32], dt: DType, l: &Layout5) -> Vec<f32> {
    decode(&bytes(vals, dt, l), dt, l)
}

pub fn tolerance(dt: DType) -> f32 {
    match dt {
        DType::F32 => 2e-5,
        DType::F16 => 4e-3,
        DType::BF16 => 2e-2,
    }
}

pub fn compare(what: &str, got: &[f32], want: &[f32], dt: DType) -> Result<(), String> {
    compare_within(what, got, want, tolerance(dt))
}

/// `got` within `tol` times the largest magnitude of `want` (NaN is never within).
pub fn compare_within(what: &str, got: &[f32], want: &[f32], tol: f32) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let (mut i, mut err) = (0, 0f32);
    for (j, (g, w)) in got.iter().zip(want).enumerate() {
        let e = (g - w).abs();
        if e.is_nan() || e > err {
            (i, err) = (j, if e.is_nan() { f32::INFINITY } else { e });
        }
    }
    if err > tol * scale {
        return Err(format!(
            "{what}: max error {err} at {i} (got {}, want {}), scale {scale}",
            got[i], want[i]
        ));
    }
    Ok(())
}
