//! Seeded fuzzing of descriptor decoding and shape checking (`read_tensor`, `read_conv`,
//! `conv_problem`, `check_size`) and of the host compute on whatever they accept.
//!
//! Descriptors are served by fake MIOpen getters over plain structs, so any `int` MIOpen
//! could return (negative, zero, huge, unknown data types and modes, failing getters,
//! more dimensions than the shim's buffers hold) reaches the decoder. Cases start as
//! valid problems and are then mutated, so the deep checks are reached too. Properties:
//! nothing panics; a getter is never asked for more entries than the shim provides;
//! every rejection is BadParm, NotImplemented or the getter's own status; an unmutated
//! valid problem is accepted with the generated geometry; an accepted problem is
//! self-consistent, and the small ones compute without touching bytes outside the
//! written tensor. The case counts are in the test names and printed.

use std::cell::Cell;
use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::*;
use crate::execute::try_compute_on_host;

const FUZZ_CASES: usize = 50_000;
const CHECK_SIZE_CASES: usize = 100_000;
const SEED: u64 = 0x5244_4E41_3146_555A;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// An `int` a buggy or hostile caller might put in a descriptor.
    fn nasty_int(&mut self) -> c_int {
        const NASTY: [c_int; 10] = [0, -1, 1, 2, -2, c_int::MAX, c_int::MIN, 1 << 16, 1 << 30, 3];
        if self.chance(70) {
            NASTY[self.below(NASTY.len() as u64) as usize]
        } else {
            self.next() as c_int
        }
    }
}

/// What a tensor descriptor getter reports.
#[derive(Clone, Debug)]
struct FakeTensor {
    size_status: c_int,
    get_status: c_int,
    n: c_int,
    dtype: c_int,
    dims: Vec<c_int>,
    strides: Vec<c_int>,
}

/// What the convolution descriptor getters report.
#[derive(Clone, Debug)]
struct FakeConv {
    sd_status: c_int,
    nd_status: c_int,
    group_status: c_int,
    sd: c_int,
    mode: c_int,
    pads: [c_int; 3],
    strides: [c_int; 3],
    dilations: [c_int; 3],
    groups: c_int,
}

thread_local! {
    /// Set when the shim asked a getter for more entries than it could have room for.
    static VIOLATION: Cell<bool> = const { Cell::new(false) };
    /// Entries the shim last said it had room for (from GetTensorDescriptorSize).
    static TENSOR_ROOM: Cell<c_int> = const { Cell::new(-1) };
}

unsafe extern "C" fn get_stream(_: miopenHandle_t, _: *mut miopenAcceleratorQueue_t) -> c_int {
    VIOLATION.with(|v| v.set(true)); // decoding never needs the stream
    miopenStatusBadParm
}

unsafe extern "C" fn tensor_size(d: miopenTensorDescriptor_t, n: *mut c_int) -> c_int {
    let t = &*(d as *const FakeTensor);
    if t.size_status != miopenStatusSuccess {
        return t.size_status;
    }
    *n = t.n;
    TENSOR_ROOM.with(|r| r.set(t.n));
    miopenStatusSuccess
}

unsafe extern "C" fn tensor_get(
    d: miopenTensorDescriptor_t,
    dt: *mut miopenDataType_t,
    dims: *mut c_int,
    strides: *mut c_int,
) -> c_int {
    let t = &*(d as *const FakeTensor);
    if t.get_status != miopenStatusSuccess {
        return t.get_status;
    }
    // MIOpen writes as many entries as the descriptor has; the shim must only ask after
    // checking that they fit its buffers.
    if t.n < 1 || t.n as usize > MAX_DIMS || TENSOR_ROOM.with(|r| r.get()) != t.n {
        VIOLATION.with(|v| v.set(true));
        return miopenStatusBadParm;
    }
    *dt = t.dtype;
    for i in 0..t.n as usize {
        *dims.add(i) = t.dims[i];
        *strides.add(i) = t.strides[i];
    }
    miopenStatusSuccess
}

unsafe extern "C" fn conv_sd(d: miopenConvolutionDescriptor_t, sd: *mut c_int) -> c_int {
    let c = &*(d as *const FakeConv);
    if c.sd_status != miopenStatusSuccess {
        return c.sd_status;
    }
    *sd = c.sd;
    miopenStatusSuccess
}

unsafe extern "C" fn conv_nd(
    d: miopenConvolutionDescriptor_t,
    requested: c_int,
    got: *mut c_int,
    pads: *mut c_int,
    strides: *mut c_int,
    dil: *mut c_int,
    mode: *mut miopenConvolutionMode_t,
) -> c_int {
    let c = &*(d as *const FakeConv);
    if c.nd_status != miopenStatusSuccess {
        return c.nd_status;
    }
    // MIOpen writes `requested` entries; the shim's arrays hold 3.
    if !(1..=3).contains(&requested) || requested > c.sd {
        VIOLATION.with(|v| v.set(true));
        return miopenStatusBadParm;
    }
    *got = c.sd;
    for i in 0..requested as usize {
        *pads.add(i) = c.pads[i];
        *strides.add(i) = c.strides[i];
        *dil.add(i) = c.dilations[i];
    }
    *mode = c.mode;
    miopenStatusSuccess
}

unsafe extern "C" fn conv_groups(d: miopenConvolutionDescriptor_t, g: *mut c_int) -> c_int {
    let c = &*(d as *const FakeConv);
    if c.group_status != miopenStatusSuccess {
        return c.group_status;
    }
    *g = c.groups;
    miopenStatusSuccess
}

fn fake_getters() -> Getters {
    Getters {
        miopenGetStream: get_stream,
        miopenGetTensorDescriptorSize: tensor_size,
        miopenGetTensorDescriptor: tensor_get,
        miopenGetConvolutionSpatialDim: conv_sd,
        miopenGetConvolutionNdDescriptor: conv_nd,
        miopenGetConvolutionGroupCount: conv_groups,
        miopenGetConvolutionAttribute: None,
    }
}

/// A valid problem: the convolution, the call's (x, w, y) tensors and its geometry.
#[derive(Debug)]
struct Valid {
    direction: Direction,
    conv: FakeConv,
    tensors: [FakeTensor; 3],
    shape: ConvShape,
}

fn strides_for(rng: &mut Rng, dims: &[c_int]) -> Vec<c_int> {
    let nd = dims.len();
    let mut order: Vec<usize> = (0..nd).rev().collect(); // innermost first
    match rng.below(4) {
        0 | 1 => {}                                                             // packed
        2 => order = [1].into_iter().chain((2..nd).rev()).chain([0]).collect(), // channels-last
        _ => {
            // random permutation
            for i in (1..nd).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
    }
    let padded = rng.chance(25);
    let mut s = vec![0; nd];
    let mut acc: c_int = 1;
    for &i in &order {
        s[i] = acc;
        acc *= dims[i] + if padded { rng.range(0, 2) as c_int } else { 0 };
    }
    s
}

fn valid_problem(rng: &mut Rng) -> Valid {
    let sd = rng.range(1, 3) as usize;
    let groups = rng.range(1, 3) as usize;
    let c_in = groups * rng.range(1, 3) as usize;
    let c_out = groups * rng.range(1, 3) as usize;
    let n = rng.range(1, 3) as usize;
    let (mut input, mut kernel, mut output) = ([1usize; 3], [1usize; 3], [1usize; 3]);
    let (mut pad, mut stride, mut dil) = ([0usize; 3], [1usize; 3], [1usize; 3]);
    for i in 3 - sd..3 {
        kernel[i] = rng.range(1, 3) as usize;
        pad[i] = rng.range(0, 2) as usize;
        stride[i] = rng.range(1, 3) as usize;
        dil[i] = rng.range(1, 2) as usize;
        let span = dil[i] * (kernel[i] - 1) + 1;
        input[i] = (span.saturating_sub(2 * pad[i])).max(1) + rng.range(0, 5) as usize;
        output[i] = ConvShape::forward_output(input, kernel, pad, stride, dil).unwrap()[i];
        // a transposed convolution's output padding: any input from the smallest that
        // yields this output to less than max(stride, dilation) above that
        if rng.chance(20) {
            let reach = (output[i] - 1) * stride[i] + span;
            let lo = reach as i64 - 2 * pad[i] as i64;
            let hi = lo + stride[i].max(dil[i]) as i64 - 1;
            input[i] = rng.range(lo.max(1), hi) as usize;
        }
    }
    let shape = ConvShape {
        n,
        c_in,
        c_out,
        groups,
        input,
        kernel,
        output,
        pad,
        stride,
        dilation: dil,
    };
    let transposed = rng.chance(25);
    let legacy_mode = !transposed && rng.chance(20);
    let mode = if transposed {
        miopenTranspose
    } else if legacy_mode {
        if rng.chance(50) {
            miopenGroupConv
        } else {
            miopenDepthwise
        }
    } else {
        miopenConvolution
    };
    let sp = |a: [usize; 3]| a[3 - sd..].iter().map(|&v| v as c_int).collect::<Vec<_>>();
    let dims = |a: usize, b: usize, s: [usize; 3]| {
        [a as c_int, b as c_int]
            .into_iter()
            .chain(sp(s))
            .collect::<Vec<_>>()
    };
    // Regular-convolution tensors; transposed mode swaps the call's x and y and stores
    // the weights as [in, out/groups, k...] of the call, which is [c_out, c_in/g] here.
    let xr = dims(n, c_in, input);
    let yr = dims(n, c_out, output);
    let w = dims(c_out, c_in / groups, kernel);
    let (call_x, call_y) = if transposed { (yr, xr) } else { (xr, yr) };
    let dtype = [miopenFloat, miopenHalf, miopenBFloat16][rng.below(3) as usize];
    let mk = |rng: &mut Rng, d: Vec<c_int>| FakeTensor {
        size_status: miopenStatusSuccess,
        get_status: miopenStatusSuccess,
        n: d.len() as c_int,
        dtype,
        strides: strides_for(rng, &d),
        dims: d,
    };
    let tensors = [mk(rng, call_x), mk(rng, w), mk(rng, call_y)];
    let mut pads = [0; 3];
    let mut strides = [1; 3];
    let mut dilations = [1; 3];
    pads[..sd].copy_from_slice(&sp(pad));
    strides[..sd].copy_from_slice(&sp(stride));
    dilations[..sd].copy_from_slice(&sp(dil));
    let conv = FakeConv {
        sd_status: miopenStatusSuccess,
        nd_status: miopenStatusSuccess,
        group_status: miopenStatusSuccess,
        sd: sd as c_int,
        mode,
        pads,
        strides,
        dilations,
        // The legacy modes ignore the group count (it follows from the channels).
        groups: if legacy_mode { 1 } else { groups as c_int },
    };
    let direction = [
        Direction::Forward,
        Direction::BackwardData,
        Direction::BackwardWeights,
    ][rng.below(3) as usize];
    Valid {
        direction,
        conv,
        tensors,
        shape,
    }
}

/// Applies one to three random mutations; returns a label of what was mutated.
fn mutate(rng: &mut Rng, v: &mut Valid) -> String {
    let mut what = Vec::new();
    for _ in 0..rng.range(1, 3) {
        let t = rng.below(3) as usize;
        let tensor = &mut v.tensors[t];
        let k = rng.below(14);
        match k {
            0 => tensor.size_status = [1, 3, 7][rng.below(3) as usize],
            1 => tensor.get_status = [1, 3, 7][rng.below(3) as usize],
            2 => tensor.n = rng.nasty_int().clamp(-3, 12),
            3 => tensor.dtype = rng.range(-1, 12) as c_int,
            4 | 5 => {
                let i = rng.below(tensor.dims.len() as u64) as usize;
                tensor.dims[i] = rng.nasty_int();
            }
            6 | 7 => {
                let i = rng.below(tensor.strides.len() as u64) as usize;
                tensor.strides[i] = rng.nasty_int();
            }
            8 => v.conv.sd = rng.nasty_int().clamp(-2, 6),
            9 => v.conv.mode = rng.range(-1, 6) as c_int,
            10 => {
                let i = rng.below(3) as usize;
                match rng.below(3) {
                    0 => v.conv.pads[i] = rng.nasty_int(),
                    1 => v.conv.strides[i] = rng.nasty_int(),
                    _ => v.conv.dilations[i] = rng.nasty_int(),
                }
            }
            11 => v.conv.groups = rng.nasty_int(),
            12 => {
                v.conv.sd_status = 3;
                v.conv.nd_status = [0, 7][rng.below(2) as usize];
            }
            _ => {
                // a plausible-looking but wrong size somewhere
                let i = rng.below(tensor.dims.len() as u64) as usize;
                tensor.dims[i] = tensor.dims[i].wrapping_add(rng.range(-1, 2) as c_int);
            }
        }
        what.push(format!("t{t}:{k}"));
    }
    // keep the dims/strides vectors as long as the claimed count (the getter writes n)
    for t in &mut v.tensors {
        if t.n >= 1 && t.n as usize <= MAX_DIMS {
            t.dims.resize(t.n as usize, 1);
            t.strides.resize(t.n as usize, 1);
        }
    }
    what.join(",")
}

/// Decodes like `route_conv` does.
fn decode(g: &Getters, v: &Valid) -> ShimResult<ConvProblem> {
    let desc = |t: &FakeTensor| t as *const FakeTensor as miopenTensorDescriptor_t;
    let c = read_conv(
        g,
        &v.conv as *const FakeConv as miopenConvolutionDescriptor_t,
    )?;
    let x = read_tensor(g, desc(&v.tensors[0]), "x")?;
    let w = read_tensor(g, desc(&v.tensors[1]), "w")?;
    let y = read_tensor(g, desc(&v.tensors[2]), "y")?;
    conv_problem(v.direction, &c, &x, &w, &y)
}

fn written(p: &ConvProblem) -> &Layout5 {
    match p.pass {
        Pass::Forward => &p.y,
        Pass::BackwardData => &p.x,
        Pass::BackwardWeights => &p.w,
    }
}

/// Runs the host compute of an accepted small problem on random bytes and checks that
/// only the written tensor's elements changed.
fn compute_small(rng: &mut Rng, p: &ConvProblem) {
    let size = p.dtype.size();
    let (la, lb) = match p.pass {
        Pass::Forward => (&p.x, &p.w),
        Pass::BackwardData => (&p.y, &p.w),
        Pass::BackwardWeights => (&p.x, &p.y),
    };
    let lo = written(p);
    // small random values in every dtype: random f32 bit patterns rounded through f32
    let mut bytes = |l: &Layout5| -> Vec<u8> {
        let vals: Vec<f32> = (0..l.span())
            .map(|_| rng.range(-8, 8) as f32 * 0.25)
            .collect();
        let dense = Layout5 {
            dims: [1, 1, 1, 1, l.span()],
            strides: [0, 0, 0, 0, 1],
        };
        let mut b = vec![0u8; l.span() * size];
        crate::convert::store(&vals, crate::convert::Blend::PLAIN, p.dtype, &dense, &mut b);
        b
    };
    let a = bytes(la);
    let b = bytes(lb);
    let before = bytes(lo);
    let mut out = before.clone();
    let beta = [0.0, 0.5][rng.below(2) as usize];
    try_compute_on_host(p, &a, &b, &mut out, 1.0, beta, &|_| {}).unwrap();
    let mut addressed = vec![false; lo.span()];
    let d = lo.dims;
    for i0 in 0..d[0] {
        for i1 in 0..d[1] {
            for i2 in 0..d[2] {
                for i3 in 0..d[3] {
                    for i4 in 0..d[4] {
                        let s = lo.strides;
                        addressed[i0 * s[0] + i1 * s[1] + i2 * s[2] + i3 * s[3] + i4 * s[4]] = true;
                    }
                }
            }
        }
    }
    for (e, hit) in addressed.iter().enumerate() {
        if !hit {
            assert_eq!(
                out[e * size..(e + 1) * size],
                before[e * size..(e + 1) * size],
                "bytes between output elements changed: {}",
                describe(p)
            );
        }
    }
}

#[test]
fn fuzz_descriptor_decoding_50000_cases() {
    let g = fake_getters();
    let mut rng = Rng(SEED);
    let (mut accepted, mut bad_parm, mut not_impl, mut getter, mut computed) = (0, 0, 0, 0, 0);
    for case in 0..FUZZ_CASES {
        let mut v = valid_problem(&mut rng);
        let expect_shape = v.shape;
        let mutated = rng.chance(75);
        let label = if mutated {
            mutate(&mut rng, &mut v)
        } else {
            String::new()
        };
        VIOLATION.with(|f| f.set(false));
        let r = catch_unwind(AssertUnwindSafe(|| decode(&g, &v))).unwrap_or_else(|_| {
            panic!("case {case} (seed {SEED:#x}, mutations {label}) panicked: {v:?}",)
        });
        assert!(
            !VIOLATION.with(|f| f.get()),
            "case {case}: a getter was asked for more entries than the shim has room for ({label})"
        );
        match r {
            Ok(p) => {
                accepted += 1;
                if !mutated {
                    assert_eq!(p.shape, expect_shape, "case {case}: geometry changed");
                }
                assert!(p.shape.validate().is_ok(), "case {case}: {p:?}");
                assert!(written(&p).is_non_overlapping(), "case {case}: {p:?}");
                for l in [&p.x, &p.w, &p.y] {
                    assert!(l.span() * p.dtype.size() <= MAX_TENSOR_BYTES);
                }
                assert_eq!(p.x.dims[..2], [p.shape.n, p.shape.c_in]);
                assert_eq!(p.y.dims[..2], [p.shape.n, p.shape.c_out]);
                assert_eq!(p.x.dims[2..], p.shape.input);
                assert_eq!(p.y.dims[2..], p.shape.output);
                assert_eq!(p.w.dims[2..], p.shape.kernel);
                let small = [&p.x, &p.w, &p.y]
                    .iter()
                    .all(|l| l.span() <= 4096 && l.numel() <= 4096)
                    && p.shape.flops() <= 1e7;
                if small && computed < 3000 {
                    computed += 1;
                    compute_small(&mut rng, &p);
                }
            }
            Err(e) => {
                assert!(
                    mutated,
                    "case {case}: a valid problem was rejected: {e} ({v:?})"
                );
                assert!(!e.message.is_empty());
                match e.status {
                    s if s == miopenStatusBadParm => bad_parm += 1,
                    s if s == miopenStatusNotImplemented => not_impl += 1,
                    s if s == miopenStatusNotInitialized || s == miopenStatusUnknownError => {
                        assert!(
                            e.message.contains("failed: MIOpen returned"),
                            "case {case}: {e}"
                        );
                        getter += 1;
                    }
                    s => panic!("case {case}: unexpected status {}: {e}", status_name(s)),
                }
            }
        }
    }
    println!(
        "{FUZZ_CASES} fuzz cases: {accepted} accepted ({computed} computed), {bad_parm} BadParm, \
         {not_impl} NotImplemented, {getter} getter failures passed through"
    );
    // the generator must reach every outcome, or it tests less than it claims
    assert!(accepted > FUZZ_CASES / 5 && bad_parm > FUZZ_CASES / 5);
    assert!(not_impl > 100 && getter > 100 && computed > 1000);
}

#[test]
fn fuzz_check_size_100000_cases_against_u128_arithmetic() {
    let mut rng = Rng(SEED ^ 0xC0FFEE);
    let (mut ok, mut rejected) = (0, 0);
    for case in 0..CHECK_SIZE_CASES {
        let nd = rng.range(1, 8) as usize;
        let pick = |rng: &mut Rng| -> usize {
            match rng.below(6) {
                0 => 0,
                1 => rng.below(4) as usize,
                2 => rng.below(1 << 12) as usize,
                3 => c_int::MAX as usize - rng.below(3) as usize,
                4 => 1usize << rng.range(10, 63),
                _ => rng.next() as usize,
            }
        };
        let dims: Vec<usize> = (0..nd).map(|_| pick(&mut rng).max(1)).collect();
        let dims = if rng.chance(5) {
            dims.iter().map(|&d| d * rng.below(2) as usize).collect()
        } else {
            dims
        };
        let strides: Vec<usize> = (0..nd).map(|_| pick(&mut rng)).collect();
        let dtype = [DType::F32, DType::F16, DType::BF16][rng.below(3) as usize];
        let t = TensorDesc {
            dtype,
            dims: dims.clone(),
            strides: strides.clone(),
        };
        let r = catch_unwind(|| check_size("t", &t))
            .unwrap_or_else(|_| panic!("case {case} panicked: {t:?}"));
        let max = MAX_TENSOR_BYTES as u128;
        let numel = dims
            .iter()
            .try_fold(1u128, |a, &d| a.checked_mul(d as u128));
        let span = dims
            .iter()
            .zip(&strides)
            .map(|(&d, &s)| (d as u128).saturating_sub(1) * s as u128)
            .sum::<u128>()
            + 1;
        let expect = !dims.contains(&0)
            && numel.is_some_and(|n| n * 4 <= max)
            && span * dtype.size() as u128 <= max;
        assert_eq!(r.is_ok(), expect, "case {case}: {t:?}");
        if let Err(e) = r {
            assert_eq!(e.status, miopenStatusBadParm);
            rejected += 1;
        } else {
            ok += 1;
        }
    }
    println!("{CHECK_SIZE_CASES} check_size cases: {ok} accepted, {rejected} rejected");
    assert!(ok > 1000 && rejected > 1000);
}
