//! Thin wrapper over `gemm::gemm` for strided f32 matrices.

/// A read-only strided matrix: element `(i, j)` at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

/// A writable strided matrix: element `(i, j)` at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(crate) struct MatMut {
    pub ptr: *mut f32,
    pub rs: usize,
    pub cs: usize,
}

/// `dst = a · b` (or `dst += a · b` when `accumulate`), with `a` of `m × k`,
/// `b` of `k × n` and `dst` of `m × n`. `threads > 1` lets `gemm` split the
/// product over the current rayon pool; otherwise it runs on this thread.
///
/// # Safety
/// Every element the strides address must be valid, `dst` must not overlap
/// `a` or `b`, and no other thread may touch `dst` meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    accumulate: bool,
    a: Mat,
    b: Mat,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    *dst.ptr.add(i * dst.rs + j * dst.cs) = 0.0;
                }
            }
        }
        return;
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst.ptr,
        dst.cs as isize,
        dst.rs as isize,
        accumulate,
        a.ptr,
        a.cs as isize,
        a.rs as isize,
        b.ptr,
        b.cs as isize,
        b.rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}
