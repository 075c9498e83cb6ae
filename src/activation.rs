//! MIOpen's activation functions (`miopenActivationMode_t`), applied in place to f32 data.
//! Pure Rust; used by fused convolution plans.

/// An activation with its three parameters (MIOpen's activAlpha/Beta/Gamma).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Activation {
    pub mode: i32,
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
}

pub const PASTHRU: i32 = 0;
pub const LOGISTIC: i32 = 1;
pub const TANH: i32 = 2;
pub const RELU: i32 = 3;
pub const SOFTRELU: i32 = 4;
pub const ABS: i32 = 5;
pub const POWER: i32 = 6;
pub const CLIPPEDRELU: i32 = 7;
pub const LEAKYRELU: i32 = 8;
pub const ELU: i32 = 9;

/// Name of a mode for logs; `None` for a mode MIOpen does not define.
pub fn mode_name(mode: i32) -> Option<&'static str> {
    Some(match mode {
        PASTHRU => "passthru",
        LOGISTIC => "logistic",
        TANH => "tanh",
        RELU => "relu",
        SOFTRELU => "softrelu",
        ABS => "abs",
        POWER => "power",
        CLIPPEDRELU => "clippedrelu",
        LEAKYRELU => "leakyrelu",
        ELU => "elu",
        _ => return None,
    })
}

impl Activation {
    /// `f(x)` as MIOpen's documentation defines each mode.
    pub fn apply(&self, x: f32) -> f32 {
        let (a, b, g, x) = (self.alpha, self.beta, self.gamma, x as f64);
        let y = match self.mode {
            PASTHRU => x,
            LOGISTIC => 1.0 / (1.0 + (-x).exp()),
            TANH => b * (a * x).tanh(),
            RELU => x.max(0.0),
            SOFTRELU => x.exp().ln_1p(),
            ABS => x.abs(),
            POWER => (a + b * x).powf(g),
            CLIPPEDRELU => x.max(0.0).min(a),
            LEAKYRELU => {
                if x > 0.0 {
                    x
                } else {
                    a * x
                }
            }
            ELU => {
                if x > 0.0 {
                    x
                } else {
                    a * x.exp_m1()
                }
            }
            _ => f64::NAN,
        };
        y as f32
    }

    pub fn apply_all(&self, data: &mut [f32]) {
        use rayon::prelude::*;
        if self.mode == PASTHRU {
            return;
        }
        data.par_iter_mut().for_each(|v| *v = self.apply(*v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(mode: i32, alpha: f64, beta: f64, gamma: f64) -> Activation {
        Activation {
            mode,
            alpha,
            beta,
            gamma,
        }
    }

    #[test]
    fn modes_follow_miopen_definitions() {
        assert_eq!(act(RELU, 0.0, 0.0, 0.0).apply(-2.0), 0.0);
        assert_eq!(act(RELU, 0.0, 0.0, 0.0).apply(3.0), 3.0);
        assert_eq!(act(LEAKYRELU, 0.1, 0.0, 0.0).apply(-2.0), -0.2);
        assert_eq!(act(CLIPPEDRELU, 6.0, 0.0, 0.0).apply(9.0), 6.0);
        assert_eq!(act(ABS, 0.0, 0.0, 0.0).apply(-1.5), 1.5);
        assert_eq!(act(POWER, 1.0, 2.0, 2.0).apply(1.0), 9.0);
        assert!((act(TANH, 2.0, 3.0, 0.0).apply(0.5) - 3.0 * 1f32.tanh()).abs() < 1e-6);
        assert!((act(LOGISTIC, 0.0, 0.0, 0.0).apply(0.0) - 0.5).abs() < 1e-7);
        assert!((act(ELU, 1.0, 0.0, 0.0).apply(-1.0) - (-1f32).exp_m1()).abs() < 1e-7);
        assert!((act(SOFTRELU, 0.0, 0.0, 0.0).apply(0.0) - 2f32.ln()).abs() < 1e-7);
        assert!(act(42, 0.0, 0.0, 0.0).apply(1.0).is_nan());
        assert_eq!(mode_name(RELU), Some("relu"));
        assert_eq!(mode_name(42), None);
    }
}
