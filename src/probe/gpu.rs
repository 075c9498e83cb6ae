//! The GPU side of a probe: the given libMIOpen and HIP runtime opened with `dlopen`,
//! one configuration's descriptors and device buffers, and the call sequences PyTorch
//! runs a convolution with. Every MIOpen call is announced on stderr before it is made,
//! so the last line of a child that dies names the call that killed it.

use std::ffi::{c_void, CStr, CString};
use std::io::Write;
use std::os::raw::{c_char, c_int};

use crate::conv_config::{ConvConfig, Tensor};
use crate::describe::Direction;
use crate::ffi::miopen::*;
use crate::layout::DType;

type H = miopenHandle_t;
type T = miopenTensorDescriptor_t;
type C = miopenConvolutionDescriptor_t;
type S = miopenStatus_t;
type V = *const c_void;
type M = *mut c_void;
type Stream = *mut c_void;

/// An open library; symbols are looked up in it and its dependencies.
pub struct Lib {
    handle: *mut c_void,
    path: String,
}

fn dlerror() -> String {
    // SAFETY: dlerror returns NULL or a C string owned by libc.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-null C string from dlerror.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

impl Lib {
    pub fn open(path: &str, flags: c_int) -> Result<Lib, String> {
        let c = CString::new(path).map_err(|_| format!("bad path {path:?}"))?;
        // SAFETY: dlopen with a valid C string.
        let handle = unsafe { libc::dlopen(c.as_ptr(), flags) };
        if handle.is_null() {
            return Err(format!("cannot load {path}: {}", dlerror()));
        }
        Ok(Lib {
            handle,
            path: path.to_string(),
        })
    }

    /// The address of `name` as a function pointer of type `F`.
    ///
    /// # Safety
    /// `F` must be the C signature of `name`.
    pub unsafe fn get<F: Copy>(&self, name: &str) -> Result<F, String> {
        let c = CString::new(name).map_err(|_| format!("bad symbol {name:?}"))?;
        let p = libc::dlsym(self.handle, c.as_ptr());
        if p.is_null() {
            return Err(format!("{} has no {name}", self.path));
        }
        Ok(std::mem::transmute_copy::<*mut c_void, F>(&p))
    }
}

/// The HIP functions a probe needs.
pub struct Hip {
    malloc: unsafe extern "C" fn(*mut M, usize) -> c_int,
    free: unsafe extern "C" fn(M) -> c_int,
    memcpy: unsafe extern "C" fn(M, V, usize, c_int) -> c_int,
    stream_create: unsafe extern "C" fn(*mut Stream) -> c_int,
    stream_sync: unsafe extern "C" fn(Stream) -> c_int,
    error_string: Option<unsafe extern "C" fn(c_int) -> *const c_char>,
}

const H2D: c_int = 1;
const D2H: c_int = 2;

impl Hip {
    pub fn resolve(lib: &Lib) -> Result<Hip, String> {
        // SAFETY: the signatures are HIP's (hip_runtime_api.h).
        unsafe {
            Ok(Hip {
                malloc: lib.get("hipMalloc")?,
                free: lib.get("hipFree")?,
                memcpy: lib.get("hipMemcpy")?,
                stream_create: lib.get("hipStreamCreate")?,
                stream_sync: lib.get("hipStreamSynchronize")?,
                error_string: lib.get("hipGetErrorString").ok(),
            })
        }
    }

    fn check(&self, what: &str, e: c_int) -> Result<(), String> {
        if e == 0 {
            return Ok(());
        }
        let text = self
            .error_string
            // SAFETY: hipGetErrorString returns a static C string or NULL.
            .map(|f| unsafe { f(e) })
            .filter(|p| !p.is_null())
            // SAFETY: non-null static C string.
            .map(|p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
            .unwrap_or_default();
        Err(format!("{what} failed: hipError_t {e} {text}"))
    }

    /// Device memory holding `bytes`.
    pub fn upload(&self, bytes: &[u8]) -> Result<M, String> {
        let mut p: M = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; then a host-to-device copy of a live slice.
        unsafe {
            self.check("hipMalloc", (self.malloc)(&mut p, bytes.len().max(1)))?;
            self.check(
                "hipMemcpy",
                (self.memcpy)(p, bytes.as_ptr() as V, bytes.len(), H2D),
            )?;
        }
        Ok(p)
    }

    pub fn write(&self, dev: M, bytes: &[u8]) -> Result<(), String> {
        // SAFETY: host-to-device copy of a live slice into an allocation of that size.
        self.check("hipMemcpy", unsafe {
            (self.memcpy)(dev, bytes.as_ptr() as V, bytes.len(), H2D)
        })
    }

    pub fn read(&self, dev: M, len: usize) -> Result<Vec<u8>, String> {
        let mut v = vec![0u8; len];
        // SAFETY: device-to-host copy into a live buffer of `len` bytes.
        self.check("hipMemcpy", unsafe {
            (self.memcpy)(v.as_mut_ptr() as M, dev, len, D2H)
        })?;
        Ok(v)
    }

    pub fn alloc(&self, len: usize) -> Result<M, String> {
        if len == 0 {
            return Ok(std::ptr::null_mut());
        }
        let mut p: M = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        self.check("hipMalloc", unsafe { (self.malloc)(&mut p, len) })?;
        Ok(p)
    }

    pub fn release(&self, p: M) {
        if !p.is_null() {
            // SAFETY: p came from hipMalloc.
            unsafe { (self.free)(p) };
        }
    }

    pub fn stream(&self) -> Result<Stream, String> {
        let mut s: Stream = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        self.check("hipStreamCreate", unsafe { (self.stream_create)(&mut s) })?;
        Ok(s)
    }

    pub fn sync(&self, s: Stream) -> Result<(), String> {
        // SAFETY: a stream from hipStreamCreate.
        self.check("hipStreamSynchronize", unsafe { (self.stream_sync)(s) })
    }
}

/// Writes "rdna1shim-probe: <what>" to stderr at once (the child may die next).
pub fn say(what: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "rdna1shim-probe: {what}");
    let _ = e.flush();
}

fn dtype_code(d: DType) -> miopenDataType_t {
    match d {
        DType::F32 => miopenFloat,
        DType::F16 => miopenHalf,
        DType::BF16 => miopenBFloat16,
    }
}

type Query = unsafe extern "C" fn(H, T, T, C, T, *mut usize) -> S;
type Find = unsafe extern "C" fn(
    H,
    T,
    V,
    T,
    V,
    C,
    T,
    M,
    c_int,
    *mut c_int,
    *mut miopenConvAlgoPerf_t,
    M,
    usize,
    bool,
) -> S;
type Classic = unsafe extern "C" fn(H, V, T, V, T, V, C, c_int, V, T, M, M, usize) -> S;
type SolutionList =
    unsafe extern "C" fn(H, T, T, C, T, usize, *mut usize, *mut miopenConvSolution_t) -> S;
type SolutionWs = unsafe extern "C" fn(H, T, T, C, T, u64, *mut usize) -> S;
type Compile = unsafe extern "C" fn(H, T, T, C, T, u64) -> S;
type Immediate = unsafe extern "C" fn(H, T, V, T, V, C, T, M, M, usize, u64) -> S;

/// One tensor: its descriptor and device buffer.
#[derive(Clone, Copy)]
struct Operand {
    desc: T,
    dev: M,
}

/// One configuration set up on the GPU: handle, descriptors, device buffers.
pub struct Problem<'a> {
    lib: &'a Lib,
    hip: &'a Hip,
    handle: H,
    stream: Stream,
    conv: C,
    /// The call's x|dx, w|dw, y|dy.
    x: Operand,
    w: Operand,
    y: Operand,
    direction: Direction,
    /// Bytes of the output tensor's span.
    out_len: usize,
}

fn check(what: &str, s: S) -> Result<(), String> {
    if s == miopenStatusSuccess {
        Ok(())
    } else {
        Err(format!("{what} returned {}", status_name(s)))
    }
}

/// Calls a MIOpen function after announcing it, and checks its status.
macro_rules! mio {
    ($name:expr, $f:expr) => {{
        let name: &str = &$name;
        say(&format!("calling {name}"));
        // SAFETY: a MIOpen entry point called with descriptors and buffers it owns.
        #[allow(unused_unsafe)]
        let status = unsafe { $f };
        check(name, status)
    }};
}

/// The `sd + 2` values of a tensor as C ints (validated to fit when read).
fn ints(v: &[usize]) -> Vec<c_int> {
    v.iter().map(|&x| x as c_int).collect()
}

impl<'a> Problem<'a> {
    /// Creates the handle, descriptors and device buffers of `c`; `host` holds the
    /// call's x, w, y images (span bytes in the configuration's dtype and strides).
    pub fn new(
        lib: &'a Lib,
        hip: &'a Hip,
        c: &ConvConfig,
        host: [&[u8]; 3],
    ) -> Result<Self, String> {
        // SAFETY (whole block): MIOpen's descriptor API with out-pointers to locals.
        unsafe {
            let create_handle: unsafe extern "C" fn(*mut H, Stream) -> S =
                lib.get("miopenCreateWithStream")?;
            let create_tensor: unsafe extern "C" fn(*mut T) -> S =
                lib.get("miopenCreateTensorDescriptor")?;
            let set_tensor: unsafe extern "C" fn(
                T,
                miopenDataType_t,
                c_int,
                *const c_int,
                *const c_int,
            ) -> S = lib.get("miopenSetTensorDescriptor")?;
            let create_conv: unsafe extern "C" fn(*mut C) -> S =
                lib.get("miopenCreateConvolutionDescriptor")?;
            let init_conv: unsafe extern "C" fn(
                C,
                c_int,
                *const c_int,
                *const c_int,
                *const c_int,
                miopenConvolutionMode_t,
            ) -> S = lib.get("miopenInitConvolutionNdDescriptor")?;
            let set_groups: unsafe extern "C" fn(C, c_int) -> S =
                lib.get("miopenSetConvolutionGroupCount")?;

            let stream = hip.stream()?;
            let mut handle: H = std::ptr::null_mut();
            mio!("miopenCreateWithStream", create_handle(&mut handle, stream))?;
            let tensor = |t: &Tensor, bytes: &[u8]| -> Result<Operand, String> {
                let mut d: T = std::ptr::null_mut();
                mio!("miopenCreateTensorDescriptor", create_tensor(&mut d))?;
                let (dims, strides) = (ints(&t.dims), ints(&t.strides));
                mio!(
                    "miopenSetTensorDescriptor",
                    set_tensor(
                        d,
                        dtype_code(c.dtype),
                        dims.len() as c_int,
                        dims.as_ptr(),
                        strides.as_ptr()
                    )
                )?;
                Ok(Operand {
                    desc: d,
                    dev: hip.upload(bytes)?,
                })
            };
            let x = tensor(&c.x, host[0])?;
            let w = tensor(&c.w, host[1])?;
            let y = tensor(&c.y, host[2])?;
            let sd = c.spatial_dims();
            let mut conv: C = std::ptr::null_mut();
            mio!("miopenCreateConvolutionDescriptor", create_conv(&mut conv))?;
            let mode = if c.transposed {
                miopenTranspose
            } else {
                miopenConvolution
            };
            let (pad, stride, dil) = (ints(&c.pad), ints(&c.stride), ints(&c.dilation));
            mio!(
                "miopenInitConvolutionNdDescriptor",
                init_conv(
                    conv,
                    sd as c_int,
                    pad.as_ptr(),
                    stride.as_ptr(),
                    dil.as_ptr(),
                    mode
                )
            )?;
            mio!(
                "miopenSetConvolutionGroupCount",
                set_groups(conv, c.groups as c_int)
            )?;
            if c.transposed {
                let adj: Vec<c_int> = c.output_padding().iter().map(|&a| a as c_int).collect();
                if adj.iter().any(|&a| a > 0) {
                    let set_adj: unsafe extern "C" fn(C, c_int, *const c_int) -> S =
                        lib.get("miopenSetTransposeConvNdOutputPadding")?;
                    mio!(
                        "miopenSetTransposeConvNdOutputPadding",
                        set_adj(conv, sd as c_int, adj.as_ptr())
                    )?;
                }
            }
            if c.deterministic {
                let set_attr: unsafe extern "C" fn(C, miopenConvolutionAttrib_t, c_int) -> S =
                    lib.get("miopenSetConvolutionAttribute")?;
                mio!(
                    "miopenSetConvolutionAttribute(DETERMINISTIC)",
                    set_attr(conv, MIOPEN_CONVOLUTION_ATTRIB_DETERMINISTIC, 1)
                )?;
            }
            let out_len = host[match c.direction {
                Direction::Forward => 2,
                Direction::BackwardData => 0,
                Direction::BackwardWeights => 1,
            }]
            .len();
            Ok(Problem {
                lib,
                hip,
                handle,
                stream,
                conv,
                x,
                w,
                y,
                direction: c.direction,
                out_len,
            })
        }
    }

    fn output(&self) -> Operand {
        match self.direction {
            Direction::Forward => self.y,
            Direction::BackwardData => self.x,
            Direction::BackwardWeights => self.w,
        }
    }

    /// Fills the output with NaN bytes, so an element a kernel never writes shows.
    pub fn poison_output(&self) -> Result<(), String> {
        self.hip.write(self.output().dev, &vec![0xFF; self.out_len])
    }

    /// The output's bytes after the stream has finished.
    pub fn read_output(&self) -> Result<Vec<u8>, String> {
        self.hip.sync(self.stream)?;
        self.hip.read(self.output().dev, self.out_len)
    }

    fn prefix(&self) -> &'static str {
        match self.direction {
            Direction::Forward => "miopenConvolutionForward",
            Direction::BackwardData => "miopenConvolutionBackwardData",
            Direction::BackwardWeights => "miopenConvolutionBackwardWeights",
        }
    }

    /// The operands in the order of the queries and Immediate calls, and of Find and
    /// the classic calls: forward (w, x, y) and (x, w, y); backward-data (dy, w, dx);
    /// backward-weights (dy, x, dw).
    fn orders(&self) -> ([Operand; 3], [Operand; 3]) {
        let (x, w, y) = (self.x, self.w, self.y);
        match self.direction {
            Direction::Forward => ([w, x, y], [x, w, y]),
            Direction::BackwardData => ([y, w, x], [y, w, x]),
            Direction::BackwardWeights => ([y, x, w], [y, x, w]),
        }
    }

    /// PyTorch's benchmark path: workspace query, Find, then the classic call with the
    /// algorithm and workspace Find reported (alpha 1, beta 0).
    pub fn run_find(&self) -> Result<(), String> {
        let p = self.prefix();
        let ([qa, qb, qo], [a, b, o]) = self.orders();
        let find_name = p.replace("miopenConvolution", "miopenFindConvolution") + "Algorithm";
        // SAFETY: MIOpen's signatures for these names.
        let (ws_query, find, classic): (Query, Find, Classic) = unsafe {
            (
                self.lib.get(&format!("{p}GetWorkSpaceSize"))?,
                self.lib.get(&find_name)?,
                self.lib.get(p)?,
            )
        };
        let mut ws_size = 0usize;
        mio!(
            format!("{p}GetWorkSpaceSize"),
            ws_query(
                self.handle,
                qa.desc,
                qb.desc,
                self.conv,
                qo.desc,
                &mut ws_size
            )
        )?;
        let ws = self.hip.alloc(ws_size)?;
        let mut perf = miopenConvAlgoPerf_t {
            algo: 0,
            time: 0.0,
            memory: 0,
        };
        let mut returned: c_int = 0;
        let r = mio!(
            find_name,
            find(
                self.handle,
                a.desc,
                a.dev,
                b.desc,
                b.dev,
                self.conv,
                o.desc,
                o.dev,
                1,
                &mut returned,
                &mut perf,
                ws,
                ws_size,
                false
            )
        );
        self.hip.release(ws);
        r?;
        if returned < 1 {
            return Err(format!("{find_name} returned no algorithm"));
        }
        let ws = self.hip.alloc(perf.memory)?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        let r = mio!(
            format!("{p} (algorithm {}, workspace {})", perf.algo, perf.memory),
            classic(
                self.handle,
                &alpha as *const f32 as V,
                a.desc,
                a.dev,
                b.desc,
                b.dev,
                self.conv,
                perf.algo,
                &beta as *const f32 as V,
                o.desc,
                o.dev,
                ws,
                perf.memory
            )
        );
        let done = self.hip.sync(self.stream);
        self.hip.release(ws);
        r.and(done)
    }

    /// PyTorch's immediate path: solution count, solutions (the first is used),
    /// optionally its compilation, its workspace, then the Immediate call.
    pub fn run_immediate(&self, compile: bool) -> Result<(), String> {
        let p = self.prefix();
        let ([a, b, o], _) = self.orders();
        // SAFETY: MIOpen's signatures for these names.
        let (count_fn, list_fn, ws_fn, imm_fn): (Query, SolutionList, SolutionWs, Immediate) = unsafe {
            (
                self.lib.get(&format!("{p}GetSolutionCount"))?,
                self.lib.get(&format!("{p}GetSolution"))?,
                self.lib.get(&format!("{p}GetSolutionWorkspaceSize"))?,
                self.lib.get(&format!("{p}Immediate"))?,
            )
        };
        let mut count = 0usize;
        mio!(
            format!("{p}GetSolutionCount"),
            count_fn(self.handle, a.desc, b.desc, self.conv, o.desc, &mut count)
        )?;
        if count < 1 {
            return Err(format!("{p}GetSolutionCount reported no solution"));
        }
        let max = count.min(64);
        let mut sols = vec![
            miopenConvSolution_t {
                time: 0.0,
                workspace_size: 0,
                solution_id: 0,
                algorithm: 0
            };
            max
        ];
        let mut got = 0usize;
        mio!(
            format!("{p}GetSolution"),
            list_fn(
                self.handle,
                a.desc,
                b.desc,
                self.conv,
                o.desc,
                max,
                &mut got,
                sols.as_mut_ptr()
            )
        )?;
        if got < 1 || got > max {
            return Err(format!("{p}GetSolution returned {got} solutions"));
        }
        let id = sols[0].solution_id;
        if compile {
            // SAFETY: MIOpen's signature for this name.
            let compile_fn: Compile = unsafe { self.lib.get(&format!("{p}CompileSolution"))? };
            mio!(
                format!("{p}CompileSolution (solution {id})"),
                compile_fn(self.handle, a.desc, b.desc, self.conv, o.desc, id)
            )?;
        }
        let mut ws_size = 0usize;
        mio!(
            format!("{p}GetSolutionWorkspaceSize (solution {id})"),
            ws_fn(
                self.handle,
                a.desc,
                b.desc,
                self.conv,
                o.desc,
                id,
                &mut ws_size
            )
        )?;
        let ws = self.hip.alloc(ws_size)?;
        let r = mio!(
            format!("{p}Immediate (solution {id})"),
            imm_fn(
                self.handle,
                a.desc,
                a.dev,
                b.desc,
                b.dev,
                self.conv,
                o.desc,
                o.dev,
                ws,
                ws_size,
                id
            )
        );
        let done = self.hip.sync(self.stream);
        self.hip.release(ws);
        r.and(done)
    }
}
