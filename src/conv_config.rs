//! The identity of one convolution configuration: what the record file lists, what the
//! routes file routes, and what the per-configuration summary counts.
//!
//! A configuration is the call as the client described it to MIOpen — direction, data
//! type, mode, the dims and strides of its three tensors (in the call's roles: `x` is x
//! or dx, `w` is w or dw, `y` is y or dy), pads, strides, dilations, group count and the
//! deterministic attribute — so that everything MIOpen picks a kernel by is in it, a
//! configuration read back from a file can be rebuilt with MIOpen's descriptor setters
//! (the probe does), and routes match calls exactly. Its JSON form is read strictly:
//! every identifying member must be present, well typed, and describe a convolution the
//! shim accepts.

use std::hash::{Hash, Hasher};

use crate::config::Op;
use crate::describe::{conv_problem, ConvDesc, ConvProblem, Direction, TensorDesc};
use crate::error::ShimResult;
use crate::ffi::miopen::{miopenConvolution, miopenTranspose};
use crate::json::{self, Value};
use crate::layout::{DType, Layout5};

/// Dims and element strides of one tensor descriptor, as set by the client.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tensor {
    pub dims: Vec<usize>,
    pub strides: Vec<usize>,
}

/// One convolution configuration (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvConfig {
    pub direction: Direction,
    pub dtype: DType,
    /// `miopenTranspose` mode (PyTorch sends its transposed convolutions as
    /// backward-data calls in `miopenConvolution` mode instead).
    pub transposed: bool,
    pub x: Tensor,
    pub w: Tensor,
    pub y: Tensor,
    pub pad: Vec<usize>,
    pub stride: Vec<usize>,
    pub dilation: Vec<usize>,
    pub groups: usize,
    /// `MIOPEN_CONVOLUTION_ATTRIB_DETERMINISTIC` of the descriptor.
    pub deterministic: bool,
}

impl Hash for ConvConfig {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (self.direction as u8).hash(h);
        (self.dtype as u8).hash(h);
        self.transposed.hash(h);
        self.x.hash(h);
        self.w.hash(h);
        self.y.hash(h);
        self.pad.hash(h);
        self.stride.hash(h);
        self.dilation.hash(h);
        self.groups.hash(h);
        self.deterministic.hash(h);
    }
}

/// The `sd + 2` dims and strides of a canonical 5-D layout whose caller used `sd`
/// spatial dims (the inverse of `TensorDesc::layout5`).
fn tensor_of(l: &Layout5, sd: usize) -> Tensor {
    let keep = |a: &[usize; 5]| {
        a[..2]
            .iter()
            .chain(&a[5 - sd..])
            .copied()
            .collect::<Vec<_>>()
    };
    Tensor {
        dims: keep(&l.dims),
        strides: keep(&l.strides),
    }
}

/// Name of a direction as the per-operation switches name it (`conv_fwd`, ...).
pub fn op_of(d: Direction) -> Op {
    match d {
        Direction::Forward => Op::ConvFwd,
        Direction::BackwardData => Op::ConvBwdData,
        Direction::BackwardWeights => Op::ConvBwdWeights,
    }
}

fn dtype_named(name: &str) -> Option<DType> {
    [DType::F32, DType::F16, DType::BF16]
        .into_iter()
        .find(|d| d.name() == name)
}

/// "nchw" (packed), "nhwc" (channels innermost) or "strided": how a tensor is laid out.
pub fn layout_name(t: &Tensor) -> &'static str {
    let nd = t.dims.len();
    let packed_in = |order: &[usize]| {
        let mut expect = 1;
        order.iter().all(|&i| {
            let ok = t.dims[i] == 1 || t.strides[i] == expect;
            expect *= t.dims[i];
            ok
        })
    };
    let nchw: Vec<usize> = (0..nd).rev().collect();
    let nhwc: Vec<usize> = [1].into_iter().chain((2..nd).rev()).chain([0]).collect();
    if packed_in(&nchw) {
        "nchw"
    } else if packed_in(&nhwc) {
        "nhwc"
    } else {
        "strided"
    }
}

impl ConvConfig {
    /// The configuration of a decoded call.
    pub fn of(p: &ConvProblem, deterministic: bool) -> Self {
        let sd = p.spatial_dims;
        let s = &p.shape;
        let spatial = |a: [usize; 3]| a[3 - sd..].to_vec();
        // The regular form swaps the call's x and y in transpose mode.
        let (x, y) = if p.transposed {
            (&p.y, &p.x)
        } else {
            (&p.x, &p.y)
        };
        ConvConfig {
            direction: p.direction,
            dtype: p.dtype,
            transposed: p.transposed,
            x: tensor_of(x, sd),
            w: tensor_of(&p.w, sd),
            y: tensor_of(y, sd),
            pad: spatial(s.pad),
            stride: spatial(s.stride),
            dilation: spatial(s.dilation),
            groups: s.groups,
            deterministic,
        }
    }

    pub fn op(&self) -> Op {
        op_of(self.direction)
    }

    pub fn spatial_dims(&self) -> usize {
        self.pad.len()
    }

    /// The descriptors that state this configuration: convolution, x, w, y.
    pub fn descriptors(&self) -> (ConvDesc, TensorDesc, TensorDesc, TensorDesc) {
        let t = |t: &Tensor| TensorDesc {
            dtype: self.dtype,
            dims: t.dims.clone(),
            strides: t.strides.clone(),
        };
        let c = ConvDesc {
            mode: if self.transposed {
                miopenTranspose
            } else {
                miopenConvolution
            },
            pads: self.pad.clone(),
            strides: self.stride.clone(),
            dilations: self.dilation.clone(),
            groups: self.groups,
        };
        (c, t(&self.x), t(&self.w), t(&self.y))
    }

    /// Transpose mode's output padding: how much each spatial dim of `y` exceeds the
    /// smallest output the input, kernel, stride, pad and dilation give (MIOpen has no
    /// getter for it; a client sets it with `miopenSetTransposeConvNdOutputPadding`).
    /// Zeros in convolution mode.
    pub fn output_padding(&self) -> Vec<usize> {
        (0..self.spatial_dims())
            .map(|i| {
                if !self.transposed {
                    return 0;
                }
                let (x, y, k) = (
                    self.x.dims[2 + i] as i64,
                    self.y.dims[2 + i] as i64,
                    self.w.dims[2 + i] as i64,
                );
                let min = (x - 1) * self.stride[i] as i64 - 2 * self.pad[i] as i64
                    + self.dilation[i] as i64 * (k - 1)
                    + 1;
                (y - min).max(0) as usize
            })
            .collect()
    }

    /// The problem the shim decodes from such a call.
    pub fn problem(&self) -> ShimResult<ConvProblem> {
        let (c, x, w, y) = self.descriptors();
        conv_problem(self.direction, &c, &x, &w, &y)
    }

    /// Adds the identifying members to a JSON object, in canonical order.
    pub fn key_members(&self, o: json::Object) -> json::Object {
        let tensor = |t: &Tensor| {
            json::Object::new()
                .raw("dims", &json::uints(&t.dims))
                .raw("strides", &json::uints(&t.strides))
                .finish()
        };
        o.str("op", self.op().name())
            .str("dtype", self.dtype.name())
            .str(
                "mode",
                if self.transposed {
                    "transpose"
                } else {
                    "convolution"
                },
            )
            .raw("x", &tensor(&self.x))
            .raw("w", &tensor(&self.w))
            .raw("y", &tensor(&self.y))
            .raw("pad", &json::uints(&self.pad))
            .raw("stride", &json::uints(&self.stride))
            .raw("dilation", &json::uints(&self.dilation))
            .uint("groups", self.groups as u64)
            .bool("deterministic", self.deterministic)
    }

    /// A short stable name: 8 hex digits of a hash of the identifying members.
    pub fn id(&self) -> String {
        let key = self.key_members(json::Object::new()).finish();
        // FNV-1a, 32 bits: stable across builds and platforms.
        let h = key.bytes().fold(0x811c_9dc5u32, |h, b| {
            (h ^ b as u32).wrapping_mul(0x0100_0193)
        });
        format!("{h:08x}")
    }

    /// Reads the identifying members of a record or routes line. Every one must be
    /// present and valid, and they must form a convolution the shim accepts;
    /// descriptive members (`transposed`, `spatial_dims`), when present, must agree.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        if !matches!(v, Value::Object(_)) {
            return Err(format!("expected a JSON object, found {}", v.kind()));
        }
        let member = |k: &str| v.get(k).ok_or_else(|| format!("no \"{k}\" member"));
        let string = |k: &str| {
            member(k)?
                .as_str()
                .ok_or_else(|| format!("\"{k}\" must be a string"))
        };
        let op = string("op")?;
        let direction = [
            Direction::Forward,
            Direction::BackwardData,
            Direction::BackwardWeights,
        ]
        .into_iter()
        .find(|d| op_of(*d).name() == op)
        .ok_or_else(|| {
            format!("\"op\" is {op:?}; expected conv_fwd, conv_bwd_data or conv_bwd_weights")
        })?;
        let dt = string("dtype")?;
        let dtype = dtype_named(dt)
            .ok_or_else(|| format!("\"dtype\" is {dt:?}; expected fp32, fp16 or bf16"))?;
        let transposed = match string("mode")? {
            "convolution" => false,
            "transpose" => true,
            m => {
                return Err(format!(
                    "\"mode\" is {m:?}; expected convolution or transpose"
                ))
            }
        };
        const MAX: u64 = i32::MAX as u64;
        let int = |k: &str, x: &Value, min: u64| -> Result<usize, String> {
            match x.as_u64() {
                Some(n) if (min..=MAX).contains(&n) => Ok(n as usize),
                _ => Err(format!(
                    "\"{k}\" must hold integers from {min} to {MAX}, found {}",
                    match x {
                        Value::Number(t) => t.clone(),
                        other => other.kind().to_string(),
                    }
                )),
            }
        };
        let ints = |k: &str, x: &Value, min: u64| -> Result<Vec<usize>, String> {
            let a = x
                .as_array()
                .ok_or_else(|| format!("\"{k}\" must be an array of integers"))?;
            a.iter().map(|e| int(k, e, min)).collect()
        };
        let pad = ints("pad", member("pad")?, 0)?;
        let stride = ints("stride", member("stride")?, 1)?;
        let dilation = ints("dilation", member("dilation")?, 1)?;
        let sd = pad.len();
        if !(1..=3).contains(&sd) || stride.len() != sd || dilation.len() != sd {
            return Err(format!(
                "\"pad\", \"stride\" and \"dilation\" must have 1 to 3 entries each, the same number (found {}, {}, {})",
                sd,
                stride.len(),
                dilation.len()
            ));
        }
        let tensor = |k: &str| -> Result<Tensor, String> {
            let t = member(k)?;
            if !matches!(t, Value::Object(_)) {
                return Err(format!("\"{k}\" must be an object with dims and strides"));
            }
            let field = |f: &str| {
                t.get(f)
                    .ok_or_else(|| format!("\"{k}\" has no \"{f}\" member"))
            };
            let dims = ints(&format!("{k}.dims"), field("dims")?, 1)?;
            let strides = ints(&format!("{k}.strides"), field("strides")?, 0)?;
            if dims.len() != sd + 2 || strides.len() != sd + 2 {
                return Err(format!(
                    "\"{k}\" must have {} dims and strides for {sd} spatial dims (found {} and {})",
                    sd + 2,
                    dims.len(),
                    strides.len()
                ));
            }
            Ok(Tensor { dims, strides })
        };
        let deterministic = member("deterministic")?
            .as_bool()
            .ok_or("\"deterministic\" must be true or false")?;
        let c = ConvConfig {
            direction,
            dtype,
            transposed,
            x: tensor("x")?,
            w: tensor("w")?,
            y: tensor("y")?,
            pad,
            stride,
            dilation,
            groups: int("groups", member("groups")?, 1)?,
            deterministic,
        };
        if let Some(t) = v.get("transposed") {
            if t.as_bool() != Some(transposed) {
                return Err("\"transposed\" disagrees with \"mode\"".into());
            }
        }
        if let Some(n) = v.get("spatial_dims") {
            if n.as_u64() != Some(sd as u64) {
                return Err("\"spatial_dims\" disagrees with the length of \"pad\"".into());
            }
        }
        c.problem()
            .map_err(|e| format!("not a convolution the shim accepts: {}", e.message))?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::describe::Pass;

    fn packed(dims: &[usize]) -> TensorDesc {
        TensorDesc::packed(DType::F16, dims)
    }

    fn channels_last(dims: &[usize]) -> TensorDesc {
        let nd = dims.len();
        let mut strides = vec![0; nd];
        let mut s = 1;
        for i in [1].into_iter().chain((2..nd).rev()).chain([0]) {
            strides[i] = s;
            s *= dims[i];
        }
        TensorDesc {
            dtype: DType::F16,
            dims: dims.to_vec(),
            strides,
        }
    }

    /// Problems of every kind the key must carry: 1-D/2-D/3-D, transposed, grouped,
    /// channels-last, all three directions.
    fn problems() -> Vec<ConvProblem> {
        let conv = |mode, sd: usize, pad, stride, groups| ConvDesc {
            mode,
            pads: vec![pad; sd],
            strides: vec![stride; sd],
            dilations: vec![1; sd],
            groups,
        };
        let mut out = Vec::new();
        for d in [
            Direction::Forward,
            Direction::BackwardData,
            Direction::BackwardWeights,
        ] {
            out.push(
                conv_problem(
                    d,
                    &conv(miopenConvolution, 2, 1, 2, 2),
                    &channels_last(&[2, 4, 9, 8]),
                    &channels_last(&[6, 2, 3, 3]),
                    &channels_last(&[2, 6, 5, 4]),
                )
                .unwrap(),
            );
            out.push(
                conv_problem(
                    d,
                    &conv(miopenTranspose, 3, 1, 2, 1),
                    &packed(&[1, 4, 3, 3, 3]),
                    &packed(&[4, 2, 3, 3, 3]),
                    &packed(&[1, 2, 6, 6, 6]),
                )
                .unwrap(),
            );
            out.push(
                conv_problem(
                    d,
                    &conv(miopenConvolution, 1, 0, 1, 1),
                    &packed(&[3, 2, 7]),
                    &packed(&[5, 2, 3]),
                    &packed(&[3, 5, 5]),
                )
                .unwrap(),
            );
        }
        out
    }

    #[test]
    fn a_problem_survives_config_json_and_descriptors() {
        let mut ids = std::collections::HashSet::new();
        for p in problems() {
            let c = ConvConfig::of(&p, true);
            assert_eq!(c.problem().unwrap(), p, "{c:?}");
            let text = c.key_members(json::Object::new()).finish();
            let back = ConvConfig::from_json(&json::parse(&text).unwrap()).unwrap();
            assert_eq!(back, c, "{text}");
            assert_eq!(back.id(), c.id());
            assert!(ids.insert(c.id()), "two configurations share id {}", c.id());
        }
    }

    #[test]
    fn transpose_mode_keeps_the_calls_own_tensors() {
        let p = problems()
            .into_iter()
            .find(|p| p.transposed && p.direction == Direction::Forward)
            .unwrap();
        assert_eq!(p.pass, Pass::BackwardData);
        let c = ConvConfig::of(&p, false);
        assert_eq!(
            c.x.dims,
            vec![1, 4, 3, 3, 3],
            "the call's x, not the regular one"
        );
        assert_eq!(c.y.dims, vec![1, 2, 6, 6, 6]);
        assert_eq!(c.op(), Op::ConvFwd);
        // y 6 = (3 - 1) * 2 - 2 + 3 + 1: one more than the smallest output, as
        // MIOpenDriver's -% 1 -Y 1 -X 1 for this problem (repro.rs).
        assert_eq!(c.output_padding(), vec![1, 1, 1]);
        assert_eq!(
            ConvConfig::of(&problems()[0], false).output_padding(),
            vec![0, 0]
        );
    }

    #[test]
    fn layout_names() {
        let c = ConvConfig::of(&problems()[0], false);
        assert_eq!(layout_name(&c.x), "nhwc");
        let c = ConvConfig::of(&problems()[1], false);
        assert_eq!(layout_name(&c.x), "nchw");
        let odd = Tensor {
            dims: vec![2, 3, 4, 4],
            strides: vec![100, 16, 4, 1],
        };
        assert_eq!(layout_name(&odd), "strided");
    }

    #[test]
    fn every_identifying_member_is_required_and_checked() {
        let c = ConvConfig::of(&problems()[0], false);
        let good = c.key_members(json::Object::new()).finish();
        let v = json::parse(&good).unwrap();
        let Value::Object(members) = &v else {
            unreachable!()
        };
        for (i, (k, _)) in members.iter().enumerate() {
            let mut m = members.clone();
            m.remove(i);
            let e = ConvConfig::from_json(&Value::Object(m)).unwrap_err();
            assert!(e.contains(&format!("\"{k}\"")), "{k}: {e}");
        }
        for (from, to, why) in [
            ("\"op\":\"conv_fwd\"", "\"op\":\"conv\"", "\"op\""),
            ("\"dtype\":\"fp16\"", "\"dtype\":\"fp64\"", "\"dtype\""),
            ("\"mode\":\"convolution\"", "\"mode\":1", "\"mode\""),
            ("\"groups\":2", "\"groups\":0", "\"groups\""),
            ("\"groups\":2", "\"groups\":2.0", "\"groups\""),
            ("\"groups\":2", "\"groups\":3", "not a convolution"),
            ("\"stride\":[2,2]", "\"stride\":[2]", "the same number"),
            ("\"stride\":[2,2]", "\"stride\":[0,2]", "\"stride\""),
            ("\"pad\":[1,1]", "\"pad\":[1,-1]", "\"pad\""),
            ("\"pad\":[1,1]", "\"pad\":[1,2147483648]", "\"pad\""),
            (
                "\"dims\":[2,4,9,8]",
                "\"dims\":[2,4,9]",
                "\"x\" must have 4",
            ),
            ("\"dims\":[2,4,9,8]", "\"dims\":[2,4,9,0]", "x.dims"),
            (
                "\"deterministic\":false",
                "\"deterministic\":0",
                "\"deterministic\"",
            ),
            (
                "\"dims\":[2,4,9,8]",
                "\"dims\":[2,4,90,8]",
                "not a convolution",
            ),
        ] {
            assert!(good.contains(from), "{from} not in {good}");
            let bad = good.replacen(from, to, 1);
            let e = ConvConfig::from_json(&json::parse(&bad).unwrap()).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let with = |extra: &str| good.replacen('{', &format!("{{{extra},"), 1);
        let ok = |t: &str| ConvConfig::from_json(&json::parse(t).unwrap());
        assert_eq!(ok(&with("\"transposed\":false,\"spatial_dims\":2")), Ok(c));
        assert!(ok(&with("\"transposed\":true")).is_err());
        assert!(ok(&with("\"spatial_dims\":3")).is_err());
        assert!(ConvConfig::from_json(&json::parse("[1]").unwrap()).is_err());
    }
}
