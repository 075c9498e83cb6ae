//! Batch normalization on packed f32 buffers: batch statistics, normalization, the
//! running-average update, and the backward pass, in MIOpen's two modes. Pure Rust, no
//! FFI; parallel over channels on whatever rayon pool is current.
//!
//! Data `x`, `y`, `dy`, `dx` are packed `[n, c, spatial]` (every spatial dim folded into
//! one). A *feature* is what one mean and variance describe:
//! - [`BnMode::Spatial`]: one per channel, over the `n * spatial` elements of the
//!   channel; parameter buffers (scale, bias, means, variances) hold `c` values.
//! - [`BnMode::PerActivation`]: one per (channel, position), over the `n` elements of the
//!   batch; parameter buffers hold `c * spatial` values in `[c, spatial]` order.
//!
//! Statistics are accumulated in f64 in two passes (mean, then the sum of squared
//! deviations), so a large mean never cancels the variance away; element-wise results
//! are computed in f64 and rounded once to f32.
//!
//! Formulas (m = elements per feature), as MIOpen's kernels and CPU reference define them:
//! - `mean = Σx / m`, `var = Σ(x - mean)² / m` (biased), `inv_std = 1 / sqrt(var + eps)`
//! - `y = scale * (x - mean) * inv_std + bias`
//! - running: `mean_r = (1 - f) mean_r + f mean`, `var_r = (1 - f) var_r + f var m/(m-1)`
//!   (`var` itself when `m == 1`)
//! - backward with `x̂ = (x - mean) inv_std`: `dbias = Σdy`, `dscale = Σ dy x̂`,
//!   `dx = scale inv_std / m * (m dy - dbias - x̂ dscale)`

use rayon::prelude::*;

/// MIOpen's `miopenBatchNormMode_t`, as the engine sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnMode {
    /// `miopenBNPerActivation`: statistics per (channel, position) over the batch.
    PerActivation,
    /// `miopenBNSpatial`: statistics per channel over the batch and every position.
    Spatial,
}

/// The geometry of one batch-norm problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnShape {
    pub n: usize,
    pub c: usize,
    /// Product of the spatial dims (1 for `[n, c]` data).
    pub spatial: usize,
    pub mode: BnMode,
}

impl BnShape {
    /// Elements of `x` (and `y`, `dy`, `dx`).
    pub fn numel(&self) -> usize {
        self.n * self.c * self.spatial
    }

    /// Values in each parameter buffer (scale, bias, means, variances).
    pub fn features(&self) -> usize {
        self.c * self.width()
    }

    /// Elements each feature's statistics are taken over.
    pub fn count(&self) -> usize {
        match self.mode {
            BnMode::Spatial => self.n * self.spatial,
            BnMode::PerActivation => self.n,
        }
    }

    /// Features per channel.
    fn width(&self) -> usize {
        match self.mode {
            BnMode::Spatial => 1,
            BnMode::PerActivation => self.spatial,
        }
    }

    /// Every size is at least 1.
    pub fn validate(&self) -> Result<(), String> {
        if self.n == 0 || self.c == 0 || self.spatial == 0 {
            return Err(format!("empty batch-norm problem {self:?}"));
        }
        Ok(())
    }

    /// Floating-point operations of a forward training pass, for rates in logs.
    pub fn flops(&self) -> f64 {
        8.0 * self.numel() as f64
    }

    /// Feature of element `k` of a plane of channel `ch`.
    #[inline]
    fn feature(&self, ch: usize, k: usize) -> usize {
        match self.mode {
            BnMode::Spatial => ch,
            BnMode::PerActivation => ch * self.spatial + k,
        }
    }

    fn check(&self, what: &str, len: usize, want: usize) {
        assert_eq!(
            len, want,
            "batch norm: {what} has {len} values, expected {want}"
        );
    }
}

/// Per-feature batch statistics: mean and biased variance.
#[derive(Clone, Debug, PartialEq)]
pub struct Moments {
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
}

/// Gradients of the parameters, per feature.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGrads {
    pub dscale: Vec<f64>,
    pub dbias: Vec<f64>,
}

/// Adds `term(i)` for every element index `i` of channel `ch` to the channel's features
/// in `acc` (length `s.width()`).
#[inline]
fn accumulate(s: &BnShape, ch: usize, acc: &mut [f64], term: impl Fn(usize) -> f64) {
    let sp = s.spatial;
    for b in 0..s.n {
        let base = (b * s.c + ch) * sp;
        match s.mode {
            BnMode::Spatial => {
                let mut t = 0.0;
                for i in base..base + sp {
                    t += term(i);
                }
                acc[0] += t;
            }
            BnMode::PerActivation => {
                for (k, a) in acc.iter_mut().enumerate() {
                    *a += term(base + k);
                }
            }
        }
    }
}

/// Runs `per_channel(ch)` for every channel in parallel and concatenates the results
/// (each `s.width()` values) in feature order.
fn by_channel(s: &BnShape, per_channel: impl Fn(usize) -> Vec<f64> + Sync) -> Vec<f64> {
    let parts: Vec<Vec<f64>> = (0..s.c).into_par_iter().map(&per_channel).collect();
    parts.concat()
}

/// Planes per rayon task when writing element-wise results.
fn min_planes(spatial: usize) -> usize {
    (16384 / spatial.max(1)).max(1)
}

/// `1 / sqrt(var + eps)`.
#[inline]
pub fn inv_std(var: f64, eps: f64) -> f64 {
    1.0 / (var + eps).sqrt()
}

/// Mean and biased variance of every feature of `x`.
pub fn moments(s: &BnShape, x: &[f32]) -> Moments {
    s.check("x", x.len(), s.numel());
    let m = s.count() as f64;
    let w = s.width();
    let pairs = by_channel(s, |ch| {
        let mut sum = vec![0f64; w];
        accumulate(s, ch, &mut sum, |i| x[i] as f64);
        let mean: Vec<f64> = sum.iter().map(|v| v / m).collect();
        let mut sq = vec![0f64; w];
        match s.mode {
            BnMode::Spatial => accumulate(s, ch, &mut sq, |i| {
                let d = x[i] as f64 - mean[0];
                d * d
            }),
            BnMode::PerActivation => accumulate(s, ch, &mut sq, |i| {
                let d = x[i] as f64 - mean[i % s.spatial];
                d * d
            }),
        }
        mean.into_iter()
            .chain(sq.into_iter().map(|v| v / m))
            .collect()
    });
    let mut mean = Vec::with_capacity(s.features());
    let mut var = Vec::with_capacity(s.features());
    for part in pairs.chunks(2 * w) {
        mean.extend_from_slice(&part[..w]);
        var.extend_from_slice(&part[w..]);
    }
    Moments { mean, var }
}

/// `y = scale * (x - mean) * inv_std + bias`, per feature.
pub fn normalize(
    s: &BnShape,
    x: &[f32],
    mean: &[f64],
    inv_std: &[f64],
    scale: &[f32],
    bias: &[f32],
    y: &mut [f32],
) {
    let f = s.features();
    s.check("x", x.len(), s.numel());
    s.check("y", y.len(), s.numel());
    for (what, len) in [
        ("mean", mean.len()),
        ("inv_std", inv_std.len()),
        ("scale", scale.len()),
        ("bias", bias.len()),
    ] {
        s.check(what, len, f);
    }
    let sp = s.spatial;
    y.par_chunks_mut(sp)
        .with_min_len(min_planes(sp))
        .enumerate()
        .for_each(|(plane, yp)| {
            let ch = plane % s.c;
            let xp = &x[plane * sp..(plane + 1) * sp];
            for (k, (yv, xv)) in yp.iter_mut().zip(xp).enumerate() {
                let j = s.feature(ch, k);
                let xhat = (*xv as f64 - mean[j]) * inv_std[j];
                *yv = (scale[j] as f64 * xhat + bias[j] as f64) as f32;
            }
        });
}

/// Forward training: normalizes `x` with its own batch statistics into `y` and returns
/// them (the caller derives the saved and running values).
pub fn forward_training(
    s: &BnShape,
    x: &[f32],
    scale: &[f32],
    bias: &[f32],
    eps: f64,
    y: &mut [f32],
) -> Moments {
    let m = moments(s, x);
    let inv: Vec<f64> = m.var.iter().map(|v| inv_std(*v, eps)).collect();
    normalize(s, x, &m.mean, &inv, scale, bias, y);
    m
}

/// Forward inference: normalizes `x` with given (running) means and variances.
#[allow(clippy::too_many_arguments)]
pub fn forward_inference(
    s: &BnShape,
    x: &[f32],
    scale: &[f32],
    bias: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
    y: &mut [f32],
) {
    s.check("estimated mean", mean.len(), s.features());
    s.check("estimated variance", var.len(), s.features());
    let mean: Vec<f64> = mean.iter().map(|v| *v as f64).collect();
    let inv: Vec<f64> = var.iter().map(|v| inv_std(*v as f64, eps)).collect();
    normalize(s, x, &mean, &inv, scale, bias, y);
}

/// The exponential-average update of running statistics, with the unbiased variance
/// (`var * m / (m - 1)`, or `var` when a feature has a single element).
pub fn update_running(
    s: &BnShape,
    m: &Moments,
    factor: f64,
    running_mean: &mut [f32],
    running_var: &mut [f32],
) {
    s.check("running mean", running_mean.len(), s.features());
    s.check("running variance", running_var.len(), s.features());
    let cnt = s.count() as f64;
    let unbias = if s.count() == 1 {
        1.0
    } else {
        cnt / (cnt - 1.0)
    };
    for j in 0..s.features() {
        running_mean[j] = ((1.0 - factor) * running_mean[j] as f64 + factor * m.mean[j]) as f32;
        running_var[j] =
            ((1.0 - factor) * running_var[j] as f64 + factor * m.var[j] * unbias) as f32;
    }
}

/// Backward pass given the statistics the forward pass normalized with: writes `dx`
/// and returns the parameter gradients.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    s: &BnShape,
    x: &[f32],
    dy: &[f32],
    scale: &[f32],
    mean: &[f64],
    inv_std: &[f64],
    dx: &mut [f32],
) -> ParamGrads {
    let f = s.features();
    let w = s.width();
    s.check("x", x.len(), s.numel());
    s.check("dy", dy.len(), s.numel());
    s.check("dx", dx.len(), s.numel());
    s.check("scale", scale.len(), f);
    s.check("mean", mean.len(), f);
    s.check("inv_std", inv_std.len(), f);
    let sums = by_channel(s, |ch| {
        let mut db = vec![0f64; w];
        let mut ds = vec![0f64; w];
        accumulate(s, ch, &mut db, |i| dy[i] as f64);
        match s.mode {
            BnMode::Spatial => accumulate(s, ch, &mut ds, |i| {
                dy[i] as f64 * (x[i] as f64 - mean[ch]) * inv_std[ch]
            }),
            BnMode::PerActivation => accumulate(s, ch, &mut ds, |i| {
                let j = ch * s.spatial + i % s.spatial;
                dy[i] as f64 * (x[i] as f64 - mean[j]) * inv_std[j]
            }),
        }
        db.into_iter().chain(ds).collect()
    });
    let mut g = ParamGrads {
        dscale: Vec::with_capacity(f),
        dbias: Vec::with_capacity(f),
    };
    for part in sums.chunks(2 * w) {
        g.dbias.extend_from_slice(&part[..w]);
        g.dscale.extend_from_slice(&part[w..]);
    }
    let m = s.count() as f64;
    let sp = s.spatial;
    dx.par_chunks_mut(sp)
        .with_min_len(min_planes(sp))
        .enumerate()
        .for_each(|(plane, dxp)| {
            let ch = plane % s.c;
            let base = plane * sp;
            for (k, d) in dxp.iter_mut().enumerate() {
                let j = s.feature(ch, k);
                let xhat = (x[base + k] as f64 - mean[j]) * inv_std[j];
                let t = m * dy[base + k] as f64 - g.dbias[j] - xhat * g.dscale[j];
                *d = (scale[j] as f64 * inv_std[j] / m * t) as f32;
            }
        });
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) with an offset, so means are not zero.
    fn data(len: usize, seed: u64, offset: f32) -> Vec<f32> {
        let mut st = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                st ^= st << 13;
                st ^= st >> 7;
                st ^= st << 17;
                ((st >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 + offset
            })
            .collect()
    }

    /// The plainest possible reference: per feature, collect its elements, then apply
    /// the textbook formulas in f64.
    struct Reference {
        s: BnShape,
    }

    impl Reference {
        fn members(&self, j: usize) -> Vec<usize> {
            let s = &self.s;
            let mut v = Vec::new();
            for b in 0..s.n {
                for ch in 0..s.c {
                    for k in 0..s.spatial {
                        let feat = match s.mode {
                            BnMode::Spatial => ch,
                            BnMode::PerActivation => ch * s.spatial + k,
                        };
                        if feat == j {
                            v.push((b * s.c + ch) * s.spatial + k);
                        }
                    }
                }
            }
            v
        }

        fn stats(&self, x: &[f32], j: usize) -> (f64, f64) {
            let idx = self.members(j);
            let m = idx.len() as f64;
            let mean = idx.iter().map(|&i| x[i] as f64).sum::<f64>() / m;
            let var = idx
                .iter()
                .map(|&i| (x[i] as f64 - mean).powi(2))
                .sum::<f64>()
                / m;
            (mean, var)
        }

        /// Forward in f64 with batch statistics.
        fn forward(&self, x: &[f64], scale: &[f64], bias: &[f64], eps: f64) -> Vec<f64> {
            let mut y = vec![0.0; x.len()];
            for j in 0..self.s.features() {
                let idx = self.members(j);
                let m = idx.len() as f64;
                let mean = idx.iter().map(|&i| x[i]).sum::<f64>() / m;
                let var = idx.iter().map(|&i| (x[i] - mean).powi(2)).sum::<f64>() / m;
                for &i in &idx {
                    y[i] = scale[j] * (x[i] - mean) / (var + eps).sqrt() + bias[j];
                }
            }
            y
        }
    }

    fn shapes() -> Vec<BnShape> {
        let mut v = Vec::new();
        for mode in [BnMode::Spatial, BnMode::PerActivation] {
            for (n, c, spatial) in [(2, 3, 20), (1, 4, 7), (5, 2, 1), (3, 1, 6), (1, 1, 1)] {
                v.push(BnShape {
                    n,
                    c,
                    spatial,
                    mode,
                });
            }
        }
        v
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    #[test]
    fn shape_counts() {
        let s = BnShape {
            n: 2,
            c: 3,
            spatial: 5,
            mode: BnMode::Spatial,
        };
        assert_eq!((s.numel(), s.features(), s.count()), (30, 3, 10));
        let p = BnShape {
            mode: BnMode::PerActivation,
            ..s
        };
        assert_eq!((p.features(), p.count()), (15, 2));
        assert!(BnShape { n: 0, ..s }.validate().is_err());
    }

    #[test]
    fn moments_match_reference() {
        for s in shapes() {
            let x = data(s.numel(), 1, 3.0);
            let m = moments(&s, &x);
            let r = Reference { s };
            for j in 0..s.features() {
                let (mean, var) = r.stats(&x, j);
                assert!(close(m.mean[j], mean, 1e-12), "{s:?} mean {j}");
                assert!(close(m.var[j], var, 1e-12), "{s:?} var {j}");
            }
        }
    }

    #[test]
    fn training_forward_matches_reference() {
        for s in shapes() {
            let x = data(s.numel(), 2, -0.5);
            let scale = data(s.features(), 3, 1.0);
            let bias = data(s.features(), 4, 0.0);
            let mut y = vec![f32::NAN; s.numel()];
            let eps = 1e-5;
            forward_training(&s, &x, &scale, &bias, eps, &mut y);
            let f64s = |v: &[f32]| v.iter().map(|a| *a as f64).collect::<Vec<_>>();
            let want = Reference { s }.forward(&f64s(&x), &f64s(&scale), &f64s(&bias), eps);
            for (i, (g, w)) in y.iter().zip(&want).enumerate() {
                assert!(close(*g as f64, *w, 1e-6), "{s:?} y[{i}] {g} vs {w}");
            }
        }
    }

    #[test]
    fn large_mean_does_not_cancel_the_variance() {
        let s = BnShape {
            n: 4,
            c: 2,
            spatial: 1000,
            mode: BnMode::Spatial,
        };
        let x: Vec<f32> = data(s.numel(), 5, 0.0)
            .iter()
            .map(|v| 1000.0 + v * 0.01)
            .collect();
        let m = moments(&s, &x);
        let r = Reference { s };
        for j in 0..2 {
            let (_, var) = r.stats(&x, j);
            assert!(close(m.var[j], var, 1e-9), "{} vs {var}", m.var[j]);
        }
        let mut y = vec![0f32; s.numel()];
        forward_training(&s, &x, &[1.0, 1.0], &[0.0, 0.0], 0.0, &mut y);
        let m2 = moments(&s, &y);
        for j in 0..2 {
            assert!(m2.mean[j].abs() < 1e-5 && (m2.var[j] - 1.0).abs() < 1e-4);
        }
    }

    #[test]
    fn constant_input_gives_bias_and_single_elements_keep_variance() {
        let s = BnShape {
            n: 1,
            c: 2,
            spatial: 1,
            mode: BnMode::Spatial,
        };
        let mut y = [0f32; 2];
        let m = forward_training(&s, &[5.0, -2.0], &[3.0, 3.0], &[0.25, -1.0], 1e-5, &mut y);
        assert_eq!(y, [0.25, -1.0]);
        assert_eq!(m.var, vec![0.0, 0.0]);
        // m == 1: the running variance takes the (zero) biased variance, not a NaN.
        let (mut rm, mut rv) = ([1.0f32, 1.0], [2.0f32, 2.0]);
        update_running(&s, &m, 0.5, &mut rm, &mut rv);
        assert_eq!(rm, [3.0, -0.5]);
        assert_eq!(rv, [1.0, 1.0]);
    }

    #[test]
    fn running_update_uses_the_unbiased_variance() {
        for s in shapes() {
            let x = data(s.numel(), 6, 1.0);
            let m = moments(&s, &x);
            let rm0 = data(s.features(), 7, 0.0);
            let rv0: Vec<f32> = data(s.features(), 8, 2.0);
            let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
            let f = 0.1;
            update_running(&s, &m, f, &mut rm, &mut rv);
            let r = Reference { s };
            for j in 0..s.features() {
                let (mean, var) = r.stats(&x, j);
                let cnt = s.count() as f64;
                let unb = if s.count() > 1 {
                    var * cnt / (cnt - 1.0)
                } else {
                    var
                };
                assert!(close(rm[j] as f64, 0.9 * rm0[j] as f64 + 0.1 * mean, 1e-6));
                assert!(close(rv[j] as f64, 0.9 * rv0[j] as f64 + 0.1 * unb, 1e-6));
            }
        }
    }

    #[test]
    fn inference_uses_the_given_statistics() {
        let s = BnShape {
            n: 2,
            c: 2,
            spatial: 3,
            mode: BnMode::PerActivation,
        };
        let x = data(s.numel(), 9, 0.0);
        let mean = data(6, 10, 0.0);
        let var: Vec<f32> = data(6, 11, 1.5);
        let (scale, bias) = (data(6, 12, 0.0), data(6, 13, 0.0));
        let mut y = vec![0f32; s.numel()];
        forward_inference(&s, &x, &scale, &bias, &mean, &var, 1e-3, &mut y);
        for b in 0..2 {
            for j in 0..6 {
                let i = b * 6 + j;
                let want = scale[j] as f64 * (x[i] as f64 - mean[j] as f64)
                    / (var[j] as f64 + 1e-3).sqrt()
                    + bias[j] as f64;
                assert!(close(y[i] as f64, want, 1e-6));
            }
        }
    }

    /// The backward pass is the true gradient of `L = Σ dy * y(x, scale, bias)`:
    /// central differences of the f64 reference forward.
    #[test]
    fn backward_is_the_gradient_of_the_forward() {
        for s in shapes() {
            if s.count() == 1 {
                continue; // y == bias: the gradient w.r.t. x is 0, checked below
            }
            let eps = 1e-3;
            let x = data(s.numel(), 14, 0.5);
            let dy = data(s.numel(), 15, 0.0);
            let scale = data(s.features(), 16, 1.0);
            let bias = data(s.features(), 17, 0.0);
            let m = moments(&s, &x);
            let inv: Vec<f64> = m.var.iter().map(|v| inv_std(*v, eps)).collect();
            let mut dx = vec![f32::NAN; s.numel()];
            let g = backward(&s, &x, &dy, &scale, &m.mean, &inv, &mut dx);

            let f64s = |v: &[f32]| v.iter().map(|a| *a as f64).collect::<Vec<_>>();
            let (xd, sd, bd, dyd) = (f64s(&x), f64s(&scale), f64s(&bias), f64s(&dy));
            let r = Reference { s };
            let loss = |x: &[f64], sc: &[f64], b: &[f64]| -> f64 {
                r.forward(x, sc, b, eps)
                    .iter()
                    .zip(&dyd)
                    .map(|(y, d)| y * d)
                    .sum()
            };
            let h = 1e-6;
            let fd = |v: &[f64], i: usize, f: &dyn Fn(&[f64]) -> f64| {
                let (mut p, mut q) = (v.to_vec(), v.to_vec());
                p[i] += h;
                q[i] -= h;
                (f(&p) - f(&q)) / (2.0 * h)
            };
            for i in 0..s.numel() {
                let want = fd(&xd, i, &|v| loss(v, &sd, &bd));
                assert!(
                    close(dx[i] as f64, want, 1e-4),
                    "{s:?} dx[{i}] {} vs {want}",
                    dx[i]
                );
            }
            for j in 0..s.features() {
                let ws = fd(&sd, j, &|v| loss(&xd, v, &bd));
                let wb = fd(&bd, j, &|v| loss(&xd, &sd, v));
                assert!(close(g.dscale[j], ws, 1e-6), "{s:?} dscale[{j}]");
                assert!(close(g.dbias[j], wb, 1e-6), "{s:?} dbias[{j}]");
            }
        }
        let s = BnShape {
            n: 1,
            c: 2,
            spatial: 1,
            mode: BnMode::PerActivation,
        };
        let mut dx = [f32::NAN; 2];
        let g = backward(
            &s,
            &[1.0, 2.0],
            &[3.0, 4.0],
            &[1.0, 1.0],
            &[1.0, 2.0],
            &[316.0, 316.0],
            &mut dx,
        );
        assert_eq!(dx, [0.0, 0.0]);
        assert_eq!(g.dbias, vec![3.0, 4.0]);
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let s = BnShape {
            n: 3,
            c: 5,
            spatial: 4099,
            mode: BnMode::Spatial,
        };
        let x = data(s.numel(), 18, 0.2);
        let dy = data(s.numel(), 19, 0.0);
        let (scale, bias) = (data(5, 20, 1.0), data(5, 21, 0.0));
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut y = vec![0f32; s.numel()];
                let m = forward_training(&s, &x, &scale, &bias, 1e-5, &mut y);
                let inv: Vec<f64> = m.var.iter().map(|v| inv_std(*v, 1e-5)).collect();
                let mut dx = vec![0f32; s.numel()];
                let g = backward(&s, &x, &dy, &scale, &m.mean, &inv, &mut dx);
                (y, dx, g)
            })
        };
        assert_eq!(run(1), run(3));
    }
}
