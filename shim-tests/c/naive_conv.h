/*
 * naive_conv.h -- owns the obviously-right reference convolution shared by the
 * fake MIOpen (healthy mode) and the integration harness: strided tensors of
 * 3..5 dims, groups, stride/pad/dilation, fp32/fp16/bf16/fp64 storage with
 * double-precision arithmetic and round-to-nearest-even stores, the three
 * directions in MIOpen's miopenConvolution and miopenTranspose semantics, and
 * the two bias operations.
 *
 * Buffers are host memory laid out exactly like the device buffers: element
 * (i0, i1, ...) lives at element offset sum(i_k * strides[k]).
 */
#ifndef SHIM_TESTS_NAIVE_CONV_H
#define SHIM_TESTS_NAIVE_CONV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Never exported from the shared objects that embed this code. */
#define NC_API __attribute__((visibility("hidden")))

#define NC_MAX_DIMS 5

/* dtype uses miopenDataType_t values: 0 half, 1 float, 5 bfloat16, 6 double. */
typedef struct nc_tensor {
    int dtype;
    int nd; /* 3..5: N, C, spatial... */
    int lens[NC_MAX_DIMS];
    long long strides[NC_MAX_DIMS]; /* in elements */
} nc_tensor;

typedef struct nc_conv {
    int spatial; /* 1..3, must equal nd - 2 of every tensor */
    int pad[3], stride[3], dil[3]; /* indexed like the tensors' spatial dims */
    int groups;
    int transpose; /* 0: miopenConvolution semantics, 1: miopenTranspose semantics */
} nc_conv;

/* Directions, with the operands in MIOpen's argument order:
 *   NC_FWD:         a = x,  b = w, out = y
 *   NC_BWD_DATA:    a = dy, b = w, out = dx
 *   NC_BWD_WEIGHTS: a = dy, b = x, out = dw
 * In transpose mode (as MIOpen): forward(x, w, y) == regular backward-data
 * (dy := x, dx := y); backward-data(dy, w, dx) == regular forward (x := dy,
 * y := dx); backward-weights(dy, x, dw) == regular backward-weights with the
 * roles of dy and x exchanged. */
enum { NC_FWD = 0, NC_BWD_DATA = 1, NC_BWD_WEIGHTS = 2 };

NC_API size_t nc_dtype_size(int dtype);
NC_API int nc_dtype_supported(int dtype);
NC_API const char* nc_dtype_name(int dtype);
/* Number of elements spanned by the tensor: sum((len-1)*stride) + 1. */
NC_API size_t nc_element_space(const nc_tensor* t);
NC_API size_t nc_num_bytes(const nc_tensor* t);
NC_API size_t nc_num_elements(const nc_tensor* t);
/* Fills packed (row-major) strides. */
NC_API void nc_packed_strides(nc_tensor* t);
/* Fills channels-last strides (C fastest, then the spatial dims, then N). */
NC_API void nc_channels_last_strides(nc_tensor* t);

NC_API double nc_load(int dtype, const void* base, size_t elem_offset);
NC_API void nc_store(int dtype, void* base, size_t elem_offset, double v);
NC_API double nc_round_to(int dtype, double v); /* value after a store/load round trip */

NC_API double nc_half_to_double(uint16_t h);
NC_API uint16_t nc_double_to_half(double v);
NC_API double nc_bf16_to_double(uint16_t h);
NC_API uint16_t nc_double_to_bf16(double v);

/* Checks that the three descriptors form a valid problem for `dir`; returns 0
 * or -1 with a message in err. */
NC_API int nc_conv_validate(int dir, const nc_conv* conv, const nc_tensor* a, const nc_tensor* b,
                            const nc_tensor* out, char* err, size_t errlen);
/* out = alpha * op(a, b) + beta * out; out is read only when beta != 0.
 * Output positions that no kernel tap reaches receive alpha * 0 + beta * out. */
NC_API int nc_conv_run(int dir, const nc_conv* conv, const nc_tensor* a, const void* ap,
                       const nc_tensor* b, const void* bp, const nc_tensor* out, void* outp,
                       double alpha, double beta, char* err, size_t errlen);

/* MIOpen's ForwardBias: y = alpha*y + alpha*b + beta*y, b broadcast along every
 * dim where its length is 1 (normally b is [1, C, 1, ...]). */
NC_API int nc_forward_bias(const nc_tensor* bd, const void* b, const nc_tensor* yd, void* y,
                           double alpha, double beta, char* err, size_t errlen);
/* MIOpen's BackwardBias: db[c] = alpha * sum_{n, spatial} dy[n, c, ...] + beta * db[c];
 * db is [1, C, 1, ...]. */
NC_API int nc_backward_bias(const nc_tensor* dyd, const void* dy, const nc_tensor* dbd, void* db,
                            double alpha, double beta, char* err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
