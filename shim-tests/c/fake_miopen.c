/*
 * fake_miopen.c -- owns the fake MIOpen, built as libMIOpen.so (SONAME
 * libMIOpen.so, linked against the fake libamdhip64.so), that behaves like
 * MIOpen on an RDNA1 GPU whose convolution kernels crash.
 *
 * Host-side API (handles, tensor and convolution descriptors, output-dim and
 * attribute queries) behaves like the real library, including its quirks:
 * miopenGroupConv and miopenDepthwise are stored as miopenConvolution, the
 * group count defaults to 1, transposed output dims are
 * (i-1)s - 2p + d(k-1) + 1 + adj with out channels = w dim1 * groups.
 *
 * Every kernel-running convolution entry point (Forward, BackwardData,
 * BackwardWeights, the Find*, *Immediate and *CompileSolution calls,
 * ForwardBias, BackwardBias, and the batch-norm calls
 * miopenBatchNormalization{ForwardTraining,ForwardInference,Backward})
 * validates its arguments and then prints
 *   "fake MIOpen: <function>: Memory access fault by GPU node-1 (Agent handle: 0x..)
 *    on address 0x... Reason: Page not present or supervisor privilege.
 *    HSA_STATUS_ERROR_MEMORY_APERTURE_VIOLATION"
 * to stderr and calls abort(). With FAKE_MIOPEN_HEALTHY=1 it instead
 * synchronizes the handle's stream, copies the operands to the host with
 * hipMemcpy, computes the naive reference (naive_conv, naive_bn), copies the
 * result back, prints "fake MIOpen: <function> ran on the GPU" and returns
 * success. (Healthy batch norm also blends alpha/beta != 1/0, which MIOpen
 * itself rejects; the harness uses it to test the shim's blending.)
 * The non-running queries (workspace sizes, solution counts/lists) answer
 * with 1 MiB workspaces so that tests can tell whether a shim answered.
 *
 * Environment: FAKE_MIOPEN_HEALTHY=1 (see above); FAKE_MIOPEN_TRACE=1 prints
 * every call to stderr as "fake MIOpen: call <function>"; FAKE_MIOPEN_BUG=<bug>
 * (healthy mode only) deliberately computes wrongly the way a broken shim
 * would, so tests can prove that the harness notices:
 *   nosync         read operands without synchronizing the handle's stream
 *   beta_always    blend in the old output even when beta == 0
 *   flip_kernel    true convolution (flipped taps) instead of cross-correlation
 *   clobber_gaps   overwrite the bytes between strided output elements
 *   scribble_input write garbage into the first input operand
 *   ignore_alpha   treat alpha as 1
 *   bn_factor_flip batch norm: running statistics with factor 1 - f
 *   bn_saved_var   batch norm: save the variance, not 1 / sqrt(var + eps)
 * (nosync and clobber_gaps apply to batch norm too.)
 *
 * FAKE_MIOPEN_FAULTS=<rule>[;<rule>...] makes chosen convolution configurations
 * fail the ways a real GPU can, while every other convolution computes the
 * naive reference (as with FAKE_MIOPEN_HEALTHY=1). A rule is
 *   <condition>[,<condition>...]:<action>
 * a condition <key>=<value> with keys dir (fwd|bwd_data|bwd_weights), dtype
 * (fp32|fp16|bf16), mode (conv|trans), n, c (channels of x or dx), k
 * (channels of y or dy), g (group count), sd (spatial dims), ker (last kernel
 * dim), stride (last stride); the first rule whose conditions all hold decides:
 *   crash  the RDNA1 memory fault above (abort)
 *   wrong  compute, then zero the second half of the output's bytes
 *   hang   never return (the process must be killed)
 *   error  return miopenStatusUnknownError
 *   ok     compute the reference
 * Faults apply to the kernel-running convolution calls (Find, the classic
 * calls, Immediate) and CompileSolution (crash, hang and error only). A
 * malformed map prints why and exits with status 97.
 */
#define _GNU_SOURCE
#include "miopen_api.h"
#include "naive_bn.h"
#include "naive_conv.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define FAKE_WORKSPACE_BYTES ((size_t)1 << 20)
#define MAX_DIMS 8

#define HANDLE_MAGIC 0x48414e44u
#define TENSOR_MAGIC 0x54454e53u
#define CONV_MAGIC 0x434f4e56u

struct miopenHandle {
    unsigned magic;
    hipStream_t stream;
};

struct miopenTensorDescriptor {
    unsigned magic;
    int set;
    miopenDataType_t type;
    int nd;
    int lens[MAX_DIMS];
    int strides[MAX_DIMS];
};

struct miopenConvolutionDescriptor {
    unsigned magic;
    int spatial;
    miopenConvolutionMode_t mode;
    int pad[3], stride[3], dil[3], adj[3];
    int groups;
    int attr_fp16_alt; /* -1 default */
    int attr_deterministic;
    int attr_fp8_rounding;
    int find_mode;
};

static int env_flag(const char* name)
{
    const char* v = getenv(name);
    return v && strcmp(v, "1") == 0;
}

static int bug(const char* name)
{
    const char* v = getenv("FAKE_MIOPEN_BUG");
    return v && strcmp(v, name) == 0;
}

static void trace(const char* fn)
{
    if (env_flag("FAKE_MIOPEN_TRACE"))
        fprintf(stderr, "fake MIOpen: call %s\n", fn);
}

#define TRACE() trace(__func__)

static int handle_ok(miopenHandle_t h) { return h && h->magic == HANDLE_MAGIC; }
static int tensor_ok(miopenTensorDescriptor_t t)
{
    return t && t->magic == TENSOR_MAGIC && t->set;
}
static int conv_ok(miopenConvolutionDescriptor_t c) { return c && c->magic == CONV_MAGIC; }

/* ------------------------------------------------------------------ */
/* handle                                                               */
/* ------------------------------------------------------------------ */

const char* miopenGetErrorString(miopenStatus_t error)
{
    switch (error) {
    case miopenStatusSuccess: return "miopenStatusSuccess";
    case miopenStatusNotInitialized: return "miopenStatusNotInitialized";
    case miopenStatusInvalidValue: return "miopenStatusInvalidValue";
    case miopenStatusBadParm: return "miopenStatusBadParm";
    case miopenStatusAllocFailed: return "miopenStatusAllocFailed";
    case miopenStatusInternalError: return "miopenStatusInternalError";
    case miopenStatusNotImplemented: return "miopenStatusNotImplemented";
    case miopenStatusUnknownError: return "miopenStatusUnknownError";
    case miopenStatusUnsupportedOp: return "miopenStatusUnsupportedOp";
    case miopenStatusGpuOperationsSkipped: return "miopenStatusGpuOperationsSkipped";
    case miopenStatusVersionMismatch: return "miopenStatusVersionMismatch";
    default: return "Unknown Error";
    }
}

miopenStatus_t miopenCreateWithStream(miopenHandle_t* handle, miopenAcceleratorQueue_t stream)
{
    TRACE();
    if (!handle)
        return miopenStatusBadParm;
    struct miopenHandle* h = calloc(1, sizeof *h);
    if (!h)
        return miopenStatusAllocFailed;
    h->magic = HANDLE_MAGIC;
    h->stream = stream;
    *handle = h;
    return miopenStatusSuccess;
}

miopenStatus_t miopenCreate(miopenHandle_t* handle)
{
    TRACE();
    /* A release build of MIOpen uses the null stream until miopenSetStream. */
    return miopenCreateWithStream(handle, NULL);
}

miopenStatus_t miopenDestroy(miopenHandle_t handle)
{
    TRACE();
    if (!handle_ok(handle))
        return miopenStatusBadParm;
    handle->magic = 0;
    free(handle);
    return miopenStatusSuccess;
}

miopenStatus_t miopenSetStream(miopenHandle_t handle, miopenAcceleratorQueue_t streamID)
{
    TRACE();
    if (!handle_ok(handle))
        return miopenStatusBadParm;
    handle->stream = streamID;
    return miopenStatusSuccess;
}

miopenStatus_t miopenGetStream(miopenHandle_t handle, miopenAcceleratorQueue_t* streamID)
{
    TRACE();
    if (!handle_ok(handle) || !streamID)
        return miopenStatusBadParm;
    *streamID = handle->stream;
    return miopenStatusSuccess;
}

/* ------------------------------------------------------------------ */
/* tensor descriptors                                                   */
/* ------------------------------------------------------------------ */

static int type_valid(miopenDataType_t t)
{
    return t == miopenHalf || t == miopenFloat || t == miopenInt32 || t == miopenInt8 ||
           t == miopenBFloat16 || t == miopenDouble || t == miopenFloat8 ||
           t == miopenBFloat8 || t == miopenInt64;
}

miopenStatus_t miopenCreateTensorDescriptor(miopenTensorDescriptor_t* tensorDesc)
{
    TRACE();
    if (!tensorDesc)
        return miopenStatusBadParm;
    struct miopenTensorDescriptor* t = calloc(1, sizeof *t);
    if (!t)
        return miopenStatusAllocFailed;
    t->magic = TENSOR_MAGIC;
    *tensorDesc = t;
    return miopenStatusSuccess;
}

static miopenStatus_t set_tensor(miopenTensorDescriptor_t t, miopenDataType_t type, int nd,
                                 const long long* lens, const long long* strides)
{
    if (!t || t->magic != TENSOR_MAGIC || !type_valid(type) || nd < 1 || nd > MAX_DIMS)
        return miopenStatusBadParm;
    for (int i = 0; i < nd; i++) {
        if (lens[i] < 0 || lens[i] > 0x7fffffff)
            return miopenStatusBadParm;
        if (strides && (strides[i] < 0 || strides[i] > 0x7fffffff))
            return miopenStatusBadParm;
    }
    t->type = type;
    t->nd = nd;
    long long s = 1;
    for (int i = nd - 1; i >= 0; i--) {
        t->lens[i] = (int)lens[i];
        t->strides[i] = strides ? (int)strides[i] : (int)s;
        s *= lens[i] > 0 ? lens[i] : 1;
    }
    t->set = 1;
    return miopenStatusSuccess;
}

miopenStatus_t miopenSet4dTensorDescriptor(miopenTensorDescriptor_t tensorDesc,
                                           miopenDataType_t dataType, int n, int c, int h, int w)
{
    TRACE();
    long long lens[4] = {n, c, h, w};
    return set_tensor(tensorDesc, dataType, 4, lens, NULL);
}

miopenStatus_t miopenSet4dTensorDescriptorEx(miopenTensorDescriptor_t tensorDesc,
                                             miopenDataType_t dataType, int n, int c, int h, int w,
                                             int nStride, int cStride, int hStride, int wStride)
{
    TRACE();
    long long lens[4] = {n, c, h, w};
    long long strides[4] = {nStride, cStride, hStride, wStride};
    return set_tensor(tensorDesc, dataType, 4, lens, strides);
}

miopenStatus_t miopenSetTensorDescriptor(miopenTensorDescriptor_t tensorDesc,
                                         miopenDataType_t dataType, int nbDims, const int* dimsA,
                                         const int* stridesA)
{
    TRACE();
    if (!dimsA || nbDims < 1 || nbDims > MAX_DIMS)
        return miopenStatusBadParm;
    long long lens[MAX_DIMS], strides[MAX_DIMS];
    for (int i = 0; i < nbDims; i++) {
        lens[i] = dimsA[i];
        strides[i] = stridesA ? stridesA[i] : 0;
    }
    return set_tensor(tensorDesc, dataType, nbDims, lens, stridesA ? strides : NULL);
}

miopenStatus_t miopenSetTensorDescriptorV2(miopenTensorDescriptor_t tensorDesc,
                                           miopenDataType_t dataType, int nbDims,
                                           const size_t* dimsA, const size_t* stridesA)
{
    TRACE();
    if (!dimsA || nbDims < 1 || nbDims > MAX_DIMS)
        return miopenStatusBadParm;
    long long lens[MAX_DIMS], strides[MAX_DIMS];
    for (int i = 0; i < nbDims; i++) {
        lens[i] = (long long)dimsA[i];
        strides[i] = stridesA ? (long long)stridesA[i] : 0;
    }
    return set_tensor(tensorDesc, dataType, nbDims, lens, stridesA ? strides : NULL);
}

miopenStatus_t miopenSetNdTensorDescriptorWithLayout(miopenTensorDescriptor_t tensorDesc,
                                                     miopenDataType_t dataType,
                                                     miopenTensorLayout_t tensorLayout,
                                                     const int* lens, int num_lens)
{
    TRACE();
    if (!lens)
        return miopenStatusBadParm;
    int channels_last;
    switch (tensorLayout) {
    case miopenTensorNCHW: channels_last = 0; if (num_lens != 4) return miopenStatusBadParm; break;
    case miopenTensorNHWC: channels_last = 1; if (num_lens != 4) return miopenStatusBadParm; break;
    case miopenTensorNCDHW: channels_last = 0; if (num_lens != 5) return miopenStatusBadParm; break;
    case miopenTensorNDHWC: channels_last = 1; if (num_lens != 5) return miopenStatusBadParm; break;
    default: return miopenStatusNotImplemented;
    }
    long long l[MAX_DIMS], s[MAX_DIMS];
    for (int i = 0; i < num_lens; i++)
        l[i] = lens[i];
    if (!channels_last)
        return set_tensor(tensorDesc, dataType, num_lens, l, NULL);
    long long acc = 1;
    s[1] = acc;
    acc *= l[1];
    for (int i = num_lens - 1; i >= 2; i--) {
        s[i] = acc;
        acc *= l[i];
    }
    s[0] = acc;
    return set_tensor(tensorDesc, dataType, num_lens, l, s);
}

miopenStatus_t miopenGet4dTensorDescriptor(miopenTensorDescriptor_t tensorDesc,
                                           miopenDataType_t* dataType, int* n, int* c, int* h,
                                           int* w, int* nStride, int* cStride, int* hStride,
                                           int* wStride)
{
    TRACE();
    if (!tensor_ok(tensorDesc) || tensorDesc->nd != 4 || !dataType || !n || !c || !h || !w ||
        !nStride || !cStride || !hStride || !wStride)
        return miopenStatusBadParm;
    *dataType = tensorDesc->type;
    *n = tensorDesc->lens[0];
    *c = tensorDesc->lens[1];
    *h = tensorDesc->lens[2];
    *w = tensorDesc->lens[3];
    *nStride = tensorDesc->strides[0];
    *cStride = tensorDesc->strides[1];
    *hStride = tensorDesc->strides[2];
    *wStride = tensorDesc->strides[3];
    return miopenStatusSuccess;
}

miopenStatus_t miopenGetTensorDescriptorSize(miopenTensorDescriptor_t tensorDesc, int* size)
{
    TRACE();
    if (!tensor_ok(tensorDesc) || !size)
        return miopenStatusBadParm;
    *size = tensorDesc->nd;
    return miopenStatusSuccess;
}

miopenStatus_t miopenGetTensorDescriptor(miopenTensorDescriptor_t tensorDesc,
                                         miopenDataType_t* dataType, int* dimsA, int* stridesA)
{
    TRACE();
    if (!tensor_ok(tensorDesc))
        return miopenStatusBadParm;
    if (dataType)
        *dataType = tensorDesc->type;
    for (int i = 0; i < tensorDesc->nd; i++) {
        if (dimsA)
            dimsA[i] = tensorDesc->lens[i];
        if (stridesA)
            stridesA[i] = tensorDesc->strides[i];
    }
    return miopenStatusSuccess;
}

static size_t type_size(miopenDataType_t t) { return nc_dtype_size((int)t); }

static size_t element_space(miopenTensorDescriptor_t t)
{
    size_t s = 1;
    for (int i = 0; i < t->nd; i++) {
        if (t->lens[i] == 0)
            return 0;
        s += (size_t)(t->lens[i] - 1) * (size_t)t->strides[i];
    }
    return s;
}

miopenStatus_t miopenGetTensorNumBytes(miopenTensorDescriptor_t tensorDesc, size_t* numBytes)
{
    TRACE();
    if (!tensor_ok(tensorDesc) || !numBytes)
        return miopenStatusBadParm;
    *numBytes = element_space(tensorDesc) * type_size(tensorDesc->type);
    return miopenStatusSuccess;
}

miopenStatus_t miopenDestroyTensorDescriptor(miopenTensorDescriptor_t tensorDesc)
{
    TRACE();
    if (!tensorDesc || tensorDesc->magic != TENSOR_MAGIC)
        return miopenStatusBadParm;
    tensorDesc->magic = 0;
    free(tensorDesc);
    return miopenStatusSuccess;
}

/* ------------------------------------------------------------------ */
/* convolution descriptors                                              */
/* ------------------------------------------------------------------ */

static void conv_defaults(struct miopenConvolutionDescriptor* c)
{
    c->magic = CONV_MAGIC;
    c->spatial = 2;
    c->mode = miopenConvolution;
    for (int i = 0; i < 3; i++) {
        c->pad[i] = 0;
        c->stride[i] = 1;
        c->dil[i] = 1;
        c->adj[i] = 0;
    }
    c->groups = 1;
    c->attr_fp16_alt = -1;
    c->attr_deterministic = 0;
    c->attr_fp8_rounding = 0;
    c->find_mode = miopenConvolutionFindModeDefault;
}

miopenStatus_t miopenCreateConvolutionDescriptor(miopenConvolutionDescriptor_t* convDesc)
{
    TRACE();
    if (!convDesc)
        return miopenStatusBadParm;
    struct miopenConvolutionDescriptor* c = calloc(1, sizeof *c);
    if (!c)
        return miopenStatusAllocFailed;
    conv_defaults(c);
    *convDesc = c;
    return miopenStatusSuccess;
}

/* Mirrors MIOpen's ConvolutionDescriptor constructor: validates, folds the
 * legacy group/depthwise modes into miopenConvolution, resets the rest. */
static miopenStatus_t conv_init(miopenConvolutionDescriptor_t cd, int spatial,
                                miopenConvolutionMode_t mode, const int* pad, const int* stride,
                                const int* dil)
{
    if (!conv_ok(cd) || !pad || !stride || !dil)
        return miopenStatusBadParm;
    if (spatial < 1 || spatial > 3)
        return miopenStatusBadParm;
    for (int i = 0; i < spatial; i++)
        if (pad[i] < 0 || stride[i] < 1 || dil[i] < 1)
            return miopenStatusBadParm;
    miopenConvolutionMode_t stored;
    switch (mode) {
    case miopenConvolution:
    case miopenGroupConv:
    case miopenDepthwise: stored = miopenConvolution; break;
    case miopenTranspose: stored = miopenTranspose; break;
    default: return miopenStatusBadParm;
    }
    conv_defaults(cd);
    cd->spatial = spatial;
    cd->mode = stored;
    for (int i = 0; i < spatial; i++) {
        cd->pad[i] = pad[i];
        cd->stride[i] = stride[i];
        cd->dil[i] = dil[i];
    }
    return miopenStatusSuccess;
}

miopenStatus_t miopenInitConvolutionDescriptor(miopenConvolutionDescriptor_t convDesc,
                                               miopenConvolutionMode_t c_mode, int pad_h,
                                               int pad_w, int stride_h, int stride_w,
                                               int dilation_h, int dilation_w)
{
    TRACE();
    int pad[2] = {pad_h, pad_w}, stride[2] = {stride_h, stride_w},
        dil[2] = {dilation_h, dilation_w};
    return conv_init(convDesc, 2, c_mode, pad, stride, dil);
}

miopenStatus_t miopenInitConvolutionNdDescriptor(miopenConvolutionDescriptor_t convDesc,
                                                 int spatialDim, const int* padA,
                                                 const int* strideA, const int* dilationA,
                                                 miopenConvolutionMode_t c_mode)
{
    TRACE();
    return conv_init(convDesc, spatialDim, c_mode, padA, strideA, dilationA);
}

miopenStatus_t miopenGetConvolutionSpatialDim(miopenConvolutionDescriptor_t convDesc,
                                              int* spatialDim)
{
    TRACE();
    if (!conv_ok(convDesc) || !spatialDim)
        return miopenStatusBadParm;
    *spatialDim = convDesc->spatial;
    return miopenStatusSuccess;
}

miopenStatus_t miopenGetConvolutionDescriptor(miopenConvolutionDescriptor_t convDesc,
                                              miopenConvolutionMode_t* c_mode, int* pad_h,
                                              int* pad_w, int* stride_h, int* stride_w,
                                              int* dilation_h, int* dilation_w)
{
    TRACE();
    if (!conv_ok(convDesc) || convDesc->spatial != 2 || !c_mode || !pad_h || !pad_w ||
        !stride_h || !stride_w || !dilation_h || !dilation_w)
        return miopenStatusBadParm;
    *c_mode = convDesc->mode;
    *pad_h = convDesc->pad[0];
    *pad_w = convDesc->pad[1];
    *stride_h = convDesc->stride[0];
    *stride_w = convDesc->stride[1];
    *dilation_h = convDesc->dil[0];
    *dilation_w = convDesc->dil[1];
    return miopenStatusSuccess;
}

miopenStatus_t miopenGetConvolutionNdDescriptor(miopenConvolutionDescriptor_t convDesc,
                                                int requestedSpatialDim, int* spatialDim,
                                                int* padA, int* strideA, int* dilationA,
                                                miopenConvolutionMode_t* c_mode)
{
    TRACE();
    if (!conv_ok(convDesc) || requestedSpatialDim < 0 ||
        requestedSpatialDim > convDesc->spatial)
        return miopenStatusBadParm;
    if (requestedSpatialDim > 0 && (!padA || !strideA || !dilationA))
        return miopenStatusBadParm;
    if (spatialDim)
        *spatialDim = convDesc->spatial;
    for (int i = 0; i < requestedSpatialDim; i++) {
        padA[i] = convDesc->pad[i];
        strideA[i] = convDesc->stride[i];
        dilationA[i] = convDesc->dil[i];
    }
    if (c_mode)
        *c_mode = convDesc->mode;
    return miopenStatusSuccess;
}

miopenStatus_t miopenGetConvolutionGroupCount(miopenConvolutionDescriptor_t convDesc,
                                              int* groupCount)
{
    TRACE();
    if (!conv_ok(convDesc) || !groupCount)
        return miopenStatusBadParm;
    *groupCount = convDesc->groups;
    return miopenStatusSuccess;
}

miopenStatus_t miopenSetConvolutionGroupCount(miopenConvolutionDescriptor_t convDesc,
                                              int groupCount)
{
    TRACE();
    if (!conv_ok(convDesc) || groupCount < 1)
        return miopenStatusBadParm;
    convDesc->groups = groupCount;
    return miopenStatusSuccess;
}

miopenStatus_t miopenSetTransposeConvOutputPadding(miopenConvolutionDescriptor_t convDesc,
                                                   int adj_h, int adj_w)
{
    TRACE();
    if (!conv_ok(convDesc) || convDesc->spatial != 2)
        return miopenStatusBadParm;
    convDesc->adj[0] = adj_h;
    convDesc->adj[1] = adj_w;
    return miopenStatusSuccess;
}

miopenStatus_t miopenSetTransposeConvNdOutputPadding(miopenConvolutionDescriptor_t convDesc,
                                                     int spatialDim, const int* adjA)
{
    TRACE();
    if (!conv_ok(convDesc) || !adjA || spatialDim != convDesc->spatial)
        return miopenStatusBadParm;
    for (int i = 0; i < spatialDim; i++)
        convDesc->adj[i] = adjA[i];
    return miopenStatusSuccess;
}

/* MIOpen's GetForwardOutputTensor (default padding mode). */
static miopenStatus_t forward_output(miopenConvolutionDescriptor_t cd,
                                     miopenTensorDescriptor_t x, miopenTensorDescriptor_t w,
                                     int* nd, int out[MAX_DIMS])
{
    if (!conv_ok(cd) || !tensor_ok(x) || !tensor_ok(w))
        return miopenStatusBadParm;
    const int sp = cd->spatial;
    if (x->nd != sp + 2 || w->nd != sp + 2 || x->type != w->type)
        return miopenStatusBadParm;
    const long long in_c = x->lens[1], wei_k = w->lens[0], wei_c = w->lens[1];
    const int g = cd->groups;
    long long out_c;
    if (cd->mode == miopenTranspose) {
        if (in_c != wei_k || (g > 1 && wei_k % g != 0))
            return miopenStatusBadParm;
        for (int i = 0; i < sp; i++)
            if (cd->adj[i] >= cd->stride[i])
                return miopenStatusBadParm;
        out_c = wei_c * g;
    } else {
        if (wei_c < 1 || (g == 1 && in_c != wei_c) ||
            (g > 1 && (in_c % wei_c != 0 || wei_k % (in_c / wei_c) != 0)))
            return miopenStatusBadParm;
        out_c = wei_k;
    }
    out[0] = x->lens[0];
    out[1] = (int)out_c;
    for (int i = 0; i < sp; i++) {
        long long in = x->lens[2 + i], k = w->lens[2 + i];
        long long s = cd->stride[i], p = cd->pad[i], d = cd->dil[i];
        long long o;
        if (cd->mode == miopenTranspose)
            o = s * (in - 1) + 1 + d * (k - 1) - 2 * p + cd->adj[i];
        else
            o = (in - (1 + d * (k - 1)) + 2 * p) / s + 1;
        out[2 + i] = (int)(o < 1 ? 1 : o);
    }
    *nd = sp + 2;
    return miopenStatusSuccess;
}

miopenStatus_t miopenGetConvolutionForwardOutputDim(miopenConvolutionDescriptor_t convDesc,
                                                    const miopenTensorDescriptor_t inputTensorDesc,
                                                    const miopenTensorDescriptor_t filterDesc,
                                                    int* n, int* c, int* h, int* w)
{
    TRACE();
    if (!conv_ok(convDesc) || convDesc->spatial != 2 || !n || !c || !h || !w)
        return miopenStatusBadParm;
    int nd, out[MAX_DIMS];
    miopenStatus_t st = forward_output(convDesc, inputTensorDesc, filterDesc, &nd, out);
    if (st != miopenStatusSuccess)
        return st;
    *n = out[0];
    *c = out[1];
    *h = out[2];
    *w = out[3];
    return miopenStatusSuccess;
}

miopenStatus_t miopenGetConvolutionNdForwardOutputDim(
    miopenConvolutionDescriptor_t convDesc, const miopenTensorDescriptor_t inputTensorDesc,
    const miopenTensorDescriptor_t filterDesc, int* nDim, int* outputTensorDimA)
{
    TRACE();
    if (!nDim || !outputTensorDimA)
        return miopenStatusBadParm;
    int nd, out[MAX_DIMS];
    miopenStatus_t st = forward_output(convDesc, inputTensorDesc, filterDesc, &nd, out);
    if (st != miopenStatusSuccess)
        return st;
    *nDim = nd;
    for (int i = 0; i < nd; i++)
        outputTensorDimA[i] = out[i];
    return miopenStatusSuccess;
}

miopenStatus_t miopenSetConvolutionAttribute(miopenConvolutionDescriptor_t convDesc,
                                             const miopenConvolutionAttrib_t attr, int value)
{
    TRACE();
    if (!conv_ok(convDesc))
        return miopenStatusBadParm;
    switch (attr) {
    case MIOPEN_CONVOLUTION_ATTRIB_FP16_ALT_IMPL:
        if (value < -1 || value > 1)
            return miopenStatusBadParm;
        convDesc->attr_fp16_alt = value;
        return miopenStatusSuccess;
    case MIOPEN_CONVOLUTION_ATTRIB_DETERMINISTIC:
        if (value < 0 || value > 1)
            return miopenStatusBadParm;
        convDesc->attr_deterministic = value;
        return miopenStatusSuccess;
    case MIOPEN_CONVOLUTION_ATTRIB_FP8_ROUNDING_MODE:
        if (value < 0 || value > 1)
            return miopenStatusBadParm;
        convDesc->attr_fp8_rounding = value;
        return miopenStatusSuccess;
    default: return miopenStatusBadParm;
    }
}

miopenStatus_t miopenGetConvolutionAttribute(miopenConvolutionDescriptor_t convDesc,
                                             const miopenConvolutionAttrib_t attr, int* value)
{
    TRACE();
    if (!conv_ok(convDesc) || !value)
        return miopenStatusBadParm;
    switch (attr) {
    case MIOPEN_CONVOLUTION_ATTRIB_FP16_ALT_IMPL: *value = convDesc->attr_fp16_alt; break;
    case MIOPEN_CONVOLUTION_ATTRIB_DETERMINISTIC: *value = convDesc->attr_deterministic; break;
    case MIOPEN_CONVOLUTION_ATTRIB_FP8_ROUNDING_MODE: *value = convDesc->attr_fp8_rounding; break;
    default: return miopenStatusBadParm;
    }
    return miopenStatusSuccess;
}

miopenStatus_t miopenSetConvolutionFindMode(miopenConvolutionDescriptor_t convDesc,
                                            miopenConvolutionFindMode_t findMode)
{
    TRACE();
    if (!conv_ok(convDesc) || (int)findMode < 1 || (int)findMode > 7)
        return miopenStatusBadParm;
    convDesc->find_mode = findMode;
    return miopenStatusSuccess;
}

miopenStatus_t miopenGetConvolutionFindMode(const miopenConvolutionDescriptor_t convDesc,
                                            miopenConvolutionFindMode_t* findMode)
{
    TRACE();
    if (!conv_ok(convDesc) || !findMode)
        return miopenStatusBadParm;
    *findMode = (miopenConvolutionFindMode_t)convDesc->find_mode;
    return miopenStatusSuccess;
}

miopenStatus_t miopenDestroyConvolutionDescriptor(miopenConvolutionDescriptor_t convDesc)
{
    TRACE();
    if (!conv_ok(convDesc))
        return miopenStatusBadParm;
    convDesc->magic = 0;
    free(convDesc);
    return miopenStatusSuccess;
}

/* ------------------------------------------------------------------ */
/* convolution execution                                                */
/* ------------------------------------------------------------------ */

static void to_nc(miopenTensorDescriptor_t t, nc_tensor* o)
{
    memset(o, 0, sizeof *o);
    o->dtype = (int)t->type;
    o->nd = t->nd > NC_MAX_DIMS ? NC_MAX_DIMS + 1 : t->nd;
    for (int i = 0; i < t->nd && i < NC_MAX_DIMS; i++) {
        o->lens[i] = t->lens[i];
        o->strides[i] = t->strides[i];
    }
}

static void conv_to_nc(miopenConvolutionDescriptor_t cd, nc_conv* o)
{
    memset(o, 0, sizeof *o);
    o->spatial = cd->spatial;
    for (int i = 0; i < 3; i++) {
        o->pad[i] = cd->pad[i];
        o->stride[i] = cd->stride[i];
        o->dil[i] = cd->dil[i];
    }
    o->groups = cd->groups;
    o->transpose = cd->mode == miopenTranspose;
}

static miopenStatus_t validate_problem(const char* fn, int dir, miopenHandle_t h,
                                       miopenConvolutionDescriptor_t cd,
                                       miopenTensorDescriptor_t a, miopenTensorDescriptor_t b,
                                       miopenTensorDescriptor_t out)
{
    if (!handle_ok(h) || !conv_ok(cd) || !tensor_ok(a) || !tensor_ok(b) || !tensor_ok(out))
        return miopenStatusBadParm;
    nc_tensor ta, tb, to;
    nc_conv c;
    to_nc(a, &ta);
    to_nc(b, &tb);
    to_nc(out, &to);
    conv_to_nc(cd, &c);
    char err[256];
    if (nc_conv_validate(dir, &c, &ta, &tb, &to, err, sizeof err)) {
        fprintf(stderr, "fake MIOpen: %s: bad problem: %s\n", fn, err);
        return miopenStatusBadParm;
    }
    return miopenStatusSuccess;
}

static void gpu_fault(const char* fn, const void* handle, const void* address)
{
    fprintf(stderr,
            "fake MIOpen: %s: Memory access fault by GPU node-1 (Agent handle: %p) on address "
            "%p. Reason: Page not present or supervisor privilege. "
            "HSA_STATUS_ERROR_MEMORY_APERTURE_VIOLATION\n",
            fn, handle, address);
    fflush(stderr);
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    abort();
}

/* ---- selective faults (FAKE_MIOPEN_FAULTS) ---- */

enum { FAULT_UNSET, FAULT_OK, FAULT_CRASH, FAULT_WRONG, FAULT_HANG, FAULT_ERROR };

static void fault_map_error(const char* why, const char* rule)
{
    fprintf(stderr, "fake MIOpen: FAKE_MIOPEN_FAULTS: %s in rule \"%s\"\n", why, rule);
    fflush(stderr);
    _exit(97);
}

static const char* dtype_word(miopenDataType_t t)
{
    return t == miopenFloat ? "fp32" : t == miopenHalf ? "fp16" : t == miopenBFloat16 ? "bf16" : "?";
}

/* Whether one key=value condition holds for the call. */
static int condition_holds(const char* rule, const char* key, const char* val, int dir,
                           miopenConvolutionDescriptor_t cd, miopenTensorDescriptor_t x,
                           miopenTensorDescriptor_t w, miopenTensorDescriptor_t y)
{
    static const char* const dirs[] = {"fwd", "bwd_data", "bwd_weights"};
    if (strcmp(key, "dir") == 0)
        return strcmp(val, dirs[dir]) == 0;
    if (strcmp(key, "dtype") == 0)
        return strcmp(val, dtype_word(x->type)) == 0;
    if (strcmp(key, "mode") == 0)
        return strcmp(val, cd->mode == miopenTranspose ? "trans" : "conv") == 0;
    char* end;
    long v = strtol(val, &end, 10);
    if (!*val || *end)
        fault_map_error("a number is expected after this key", rule);
    const int sp = cd->spatial;
    if (strcmp(key, "n") == 0)
        return x->lens[0] == v;
    if (strcmp(key, "c") == 0)
        return x->lens[1] == v;
    if (strcmp(key, "k") == 0)
        return y->lens[1] == v;
    if (strcmp(key, "g") == 0)
        return cd->groups == v;
    if (strcmp(key, "sd") == 0)
        return sp == v;
    if (strcmp(key, "ker") == 0)
        return w->nd == sp + 2 && w->lens[sp + 1] == v;
    if (strcmp(key, "stride") == 0)
        return cd->stride[sp - 1] == v;
    fault_map_error("unknown key", rule);
    return 0;
}

/* The fault FAKE_MIOPEN_FAULTS assigns to a convolution call whose descriptors
 * are (a, b, out) in MIOpen's argument order for direction dir. */
static int fault_for(int dir, miopenConvolutionDescriptor_t cd, miopenTensorDescriptor_t a,
                     miopenTensorDescriptor_t b, miopenTensorDescriptor_t out)
{
    const char* map = getenv("FAKE_MIOPEN_FAULTS");
    if (!map)
        return FAULT_UNSET;
    /* the call's x|dx, w|dw and y|dy */
    miopenTensorDescriptor_t x = dir == NC_FWD ? a : dir == NC_BWD_DATA ? out : b;
    miopenTensorDescriptor_t w = dir == NC_BWD_WEIGHTS ? out : b;
    miopenTensorDescriptor_t y = dir == NC_FWD ? out : a;
    char buf[2048];
    if (strlen(map) >= sizeof buf)
        fault_map_error("the map is too long", map);
    strcpy(buf, map);
    char* save_rule;
    for (char* rule = strtok_r(buf, ";", &save_rule); rule; rule = strtok_r(NULL, ";", &save_rule)) {
        char whole[512];
        snprintf(whole, sizeof whole, "%s", rule);
        char* colon = strrchr(rule, ':');
        if (!colon)
            fault_map_error("no ':<action>'", whole);
        *colon = 0;
        const char* action = colon + 1;
        int act = strcmp(action, "crash") == 0   ? FAULT_CRASH
                  : strcmp(action, "wrong") == 0 ? FAULT_WRONG
                  : strcmp(action, "hang") == 0  ? FAULT_HANG
                  : strcmp(action, "error") == 0 ? FAULT_ERROR
                  : strcmp(action, "ok") == 0    ? FAULT_OK
                                                 : -1;
        if (act < 0)
            fault_map_error("unknown action (crash, wrong, hang, error or ok)", whole);
        int all = 1;
        char* save_cond;
        for (char* cond = strtok_r(rule, ",", &save_cond); cond;
             cond = strtok_r(NULL, ",", &save_cond)) {
            char* eq = strchr(cond, '=');
            if (!eq)
                fault_map_error("a condition is not key=value", whole);
            *eq = 0;
            if (!condition_holds(whole, cond, eq + 1, dir, cd, x, w, y))
                all = 0; /* keep checking the rest for syntax */
        }
        if (all)
            return act;
    }
    return FAULT_OK;
}

static void hang_forever(const char* fn)
{
    fprintf(stderr, "fake MIOpen: %s: the kernel never finishes (FAKE_MIOPEN_FAULTS)\n", fn);
    fflush(stderr);
    for (;;)
        pause();
}

/* Acts on a fault before a kernel runs; returns a status to return instead of
 * running, or miopenStatusSuccess to go on. */
static miopenStatus_t before_kernel(const char* fn, int fault, miopenHandle_t h, const void* addr)
{
    if (fault == FAULT_CRASH || (fault == FAULT_UNSET && !env_flag("FAKE_MIOPEN_HEALTHY")))
        gpu_fault(fn, h, addr);
    if (fault == FAULT_HANG)
        hang_forever(fn);
    if (fault == FAULT_ERROR) {
        fprintf(stderr, "fake MIOpen: %s: kernel failed (FAKE_MIOPEN_FAULTS)\n", fn);
        return miopenStatusUnknownError;
    }
    return miopenStatusSuccess;
}

static double scalar(const void* p, miopenDataType_t t, double dflt)
{
    if (!p)
        return dflt;
    if (t == miopenDouble)
        return *(const double*)p;
    return *(const float*)p;
}

static void* fetch(const char* fn, miopenTensorDescriptor_t t, const void* dev, size_t* bytes)
{
    *bytes = element_space(t) * type_size(t->type);
    void* host = malloc(*bytes ? *bytes : 1);
    if (!host)
        return NULL;
    hipError_t e = hipMemcpy(host, dev, *bytes, hipMemcpyDeviceToHost);
    if (e != hipSuccess) {
        fprintf(stderr, "fake MIOpen: %s: hipMemcpy from device failed: %s\n", fn,
                hipGetErrorName(e));
        free(host);
        return NULL;
    }
    return host;
}

/* Reverses every spatial dim of a host tensor image (FAKE_MIOPEN_BUG=flip_kernel). */
static void flip_spatial(const nc_tensor* t, void* p)
{
    size_t n = nc_num_elements(t);
    double* v = malloc((n ? n : 1) * sizeof *v);
    if (!v)
        return;
    int idx[NC_MAX_DIMS];
    for (int pass = 0; pass < 2; pass++) {
        memset(idx, 0, sizeof idx);
        for (size_t e = 0; e < n; e++) {
            long long off = 0;
            for (int k = 0; k < t->nd; k++) {
                int i = (pass == 1 && k >= 2) ? t->lens[k] - 1 - idx[k] : idx[k];
                off += i * t->strides[k];
            }
            if (pass == 0)
                v[e] = nc_load(t->dtype, p, (size_t)off);
            else
                nc_store(t->dtype, p, (size_t)off, v[e]);
            for (int k = t->nd - 1; k >= 0; k--) {
                if (++idx[k] < t->lens[k])
                    break;
                idx[k] = 0;
            }
        }
    }
    free(v);
}

/* The whole convolution path shared by every running entry point. */
static miopenStatus_t run_conv(const char* fn, int dir, miopenHandle_t h,
                               miopenConvolutionDescriptor_t cd, miopenTensorDescriptor_t ad,
                               const void* a, miopenTensorDescriptor_t bd, const void* b,
                               miopenTensorDescriptor_t od, void* out, const void* alpha,
                               const void* beta, int needs_scalars)
{
    miopenStatus_t st = validate_problem(fn, dir, h, cd, ad, bd, od);
    if (st != miopenStatusSuccess)
        return st;
    if (!a || !b || !out || (needs_scalars && (!alpha || !beta)))
        return miopenStatusBadParm;
    const int fault = fault_for(dir, cd, ad, bd, od);
    if ((st = before_kernel(fn, fault, h, out)) != miopenStatusSuccess)
        return st;

    hipError_t he = bug("nosync") ? hipSuccess : hipStreamSynchronize(h->stream);
    if (he != hipSuccess) {
        fprintf(stderr, "fake MIOpen: %s: hipStreamSynchronize failed: %s\n", fn,
                hipGetErrorName(he));
        return miopenStatusUnknownError;
    }
    size_t na, nb, no;
    void* ha = fetch(fn, ad, a, &na);
    void* hb = fetch(fn, bd, b, &nb);
    void* ho = fetch(fn, od, out, &no);
    st = miopenStatusSuccess;
    if (!ha || !hb || !ho) {
        st = miopenStatusUnknownError;
    } else {
        nc_tensor ta, tb, to;
        nc_conv c;
        to_nc(ad, &ta);
        to_nc(bd, &tb);
        to_nc(od, &to);
        conv_to_nc(cd, &c);
        char err[256];
        double al = scalar(alpha, od->type, 1.0), be = scalar(beta, od->type, 0.0);
        if (bug("ignore_alpha"))
            al = 1.0;
        if (bug("beta_always") && be == 0.0)
            be = 1e-30; /* any read of the old output */
        if (bug("flip_kernel") && dir != NC_BWD_WEIGHTS)
            flip_spatial(&tb, hb);
        if (bug("clobber_gaps"))
            memset(ho, 0, no);
        if (bug("scribble_input")) {
            memset(ha, 0x3C, na);
            hipMemcpy((void*)a, ha, na, hipMemcpyHostToDevice);
        }
        int bad = nc_conv_run(dir, &c, &ta, ha, &tb, hb, &to, ho, al, be, err, sizeof err);
        if (!bad && fault == FAULT_WRONG) {
            memset((char*)ho + no / 2, 0, no - no / 2);
            fprintf(stderr, "fake MIOpen: %s: wrong result (FAKE_MIOPEN_FAULTS)\n", fn);
        }
        if (bad) {
            fprintf(stderr, "fake MIOpen: %s: %s\n", fn, err);
            st = miopenStatusBadParm;
        } else if ((he = hipMemcpy(out, ho, no, hipMemcpyHostToDevice)) != hipSuccess) {
            fprintf(stderr, "fake MIOpen: %s: hipMemcpy to device failed: %s\n", fn,
                    hipGetErrorName(he));
            st = miopenStatusUnknownError;
        }
    }
    free(ha);
    free(hb);
    free(ho);
    if (st == miopenStatusSuccess)
        fprintf(stderr, "fake MIOpen: %s ran on the GPU\n", fn);
    return st;
}

static miopenStatus_t find_common(const char* fn, int dir, miopenHandle_t h,
                                  miopenConvolutionDescriptor_t cd, miopenTensorDescriptor_t ad,
                                  const void* a, miopenTensorDescriptor_t bd, const void* b,
                                  miopenTensorDescriptor_t od, void* out, int requestAlgoCount,
                                  int* returnedAlgoCount, miopenConvAlgoPerf_t* perfResults)
{
    if (requestAlgoCount < 1 || !returnedAlgoCount || !perfResults)
        return miopenStatusBadParm;
    /* Like MIOpen, Find runs the candidate kernels on the real buffers. */
    miopenStatus_t st = run_conv(fn, dir, h, cd, ad, a, bd, b, od, out, NULL, NULL, 0);
    if (st != miopenStatusSuccess)
        return st;
    memset(&perfResults[0], 0, sizeof perfResults[0]);
    perfResults[0].fwd_algo = miopenConvolutionFwdAlgoGEMM;
    perfResults[0].time = 1.0f;
    perfResults[0].memory = 0;
    *returnedAlgoCount = 1;
    return miopenStatusSuccess;
}

static miopenStatus_t workspace_query(const char* fn, int dir, miopenHandle_t h,
                                      miopenConvolutionDescriptor_t cd,
                                      miopenTensorDescriptor_t a, miopenTensorDescriptor_t b,
                                      miopenTensorDescriptor_t out, size_t* ws)
{
    if (!ws)
        return miopenStatusBadParm;
    miopenStatus_t st = validate_problem(fn, dir, h, cd, a, b, out);
    if (st != miopenStatusSuccess)
        return st;
    *ws = FAKE_WORKSPACE_BYTES;
    return miopenStatusSuccess;
}

static uint64_t solution_id_for(int dir) { return 1001u + (uint64_t)dir; }

static miopenStatus_t solution_count(const char* fn, int dir, miopenHandle_t h,
                                     miopenConvolutionDescriptor_t cd,
                                     miopenTensorDescriptor_t a, miopenTensorDescriptor_t b,
                                     miopenTensorDescriptor_t out, size_t* count)
{
    if (!count)
        return miopenStatusBadParm;
    miopenStatus_t st = validate_problem(fn, dir, h, cd, a, b, out);
    if (st != miopenStatusSuccess)
        return st;
    *count = 1;
    return miopenStatusSuccess;
}

static miopenStatus_t solution_list(const char* fn, int dir, miopenHandle_t h,
                                    miopenConvolutionDescriptor_t cd, miopenTensorDescriptor_t a,
                                    miopenTensorDescriptor_t b, miopenTensorDescriptor_t out,
                                    size_t max, size_t* count, miopenConvSolution_t* sols)
{
    if (!count || !sols || max == 0)
        return miopenStatusBadParm;
    miopenStatus_t st = validate_problem(fn, dir, h, cd, a, b, out);
    if (st != miopenStatusSuccess)
        return st;
    memset(&sols[0], 0, sizeof sols[0]);
    sols[0].time = 1.0f;
    sols[0].workspace_size = FAKE_WORKSPACE_BYTES;
    sols[0].solution_id = solution_id_for(dir);
    sols[0].algorithm = miopenConvolutionAlgoGEMM;
    *count = 1;
    return miopenStatusSuccess;
}

static miopenStatus_t compile_solution(const char* fn, int dir, miopenHandle_t h,
                                       miopenConvolutionDescriptor_t cd,
                                       miopenTensorDescriptor_t a, miopenTensorDescriptor_t b,
                                       miopenTensorDescriptor_t out)
{
    miopenStatus_t st = validate_problem(fn, dir, h, cd, a, b, out);
    if (st != miopenStatusSuccess)
        return st;
    /* some address; compilation touches no tensor */
    if ((st = before_kernel(fn, fault_for(dir, cd, a, b, out), h, cd)) != miopenStatusSuccess)
        return st;
    fprintf(stderr, "fake MIOpen: %s ran on the GPU\n", fn);
    return miopenStatusSuccess;
}

/* ---- forward ---- */

miopenStatus_t miopenConvolutionForwardGetWorkSpaceSize(
    miopenHandle_t handle, const miopenTensorDescriptor_t wDesc,
    const miopenTensorDescriptor_t xDesc, const miopenConvolutionDescriptor_t convDesc,
    const miopenTensorDescriptor_t yDesc, size_t* workSpaceSize)
{
    TRACE();
    return workspace_query(__func__, NC_FWD, handle, convDesc, xDesc, wDesc, yDesc,
                           workSpaceSize);
}

miopenStatus_t miopenFindConvolutionForwardAlgorithm(
    miopenHandle_t handle, const miopenTensorDescriptor_t xDesc, const void* x,
    const miopenTensorDescriptor_t wDesc, const void* w,
    const miopenConvolutionDescriptor_t convDesc, const miopenTensorDescriptor_t yDesc, void* y,
    const int requestAlgoCount, int* returnedAlgoCount, miopenConvAlgoPerf_t* perfResults,
    void* workSpace, size_t workSpaceSize, bool exhaustiveSearch)
{
    TRACE();
    (void)workSpace;
    (void)workSpaceSize;
    (void)exhaustiveSearch;
    return find_common(__func__, NC_FWD, handle, convDesc, xDesc, x, wDesc, w, yDesc, y,
                       requestAlgoCount, returnedAlgoCount, perfResults);
}

miopenStatus_t miopenConvolutionForward(miopenHandle_t handle, const void* alpha,
                                        const miopenTensorDescriptor_t xDesc, const void* x,
                                        const miopenTensorDescriptor_t wDesc, const void* w,
                                        const miopenConvolutionDescriptor_t convDesc,
                                        miopenConvFwdAlgorithm_t algo, const void* beta,
                                        const miopenTensorDescriptor_t yDesc, void* y,
                                        void* workSpace, size_t workSpaceSize)
{
    TRACE();
    (void)algo;
    (void)workSpace;
    (void)workSpaceSize;
    return run_conv(__func__, NC_FWD, handle, convDesc, xDesc, x, wDesc, w, yDesc, y, alpha,
                    beta, 1);
}

miopenStatus_t miopenConvolutionForwardGetSolutionCount(
    miopenHandle_t handle, const miopenTensorDescriptor_t wDesc,
    const miopenTensorDescriptor_t xDesc, const miopenConvolutionDescriptor_t convDesc,
    const miopenTensorDescriptor_t yDesc, size_t* solutionCount)
{
    TRACE();
    return solution_count(__func__, NC_FWD, handle, convDesc, xDesc, wDesc, yDesc,
                          solutionCount);
}

miopenStatus_t miopenConvolutionForwardGetSolution(
    miopenHandle_t handle, const miopenTensorDescriptor_t wDesc,
    const miopenTensorDescriptor_t xDesc, const miopenConvolutionDescriptor_t convDesc,
    const miopenTensorDescriptor_t yDesc, const size_t maxSolutionCount, size_t* solutionCount,
    miopenConvSolution_t* solutions)
{
    TRACE();
    return solution_list(__func__, NC_FWD, handle, convDesc, xDesc, wDesc, yDesc,
                         maxSolutionCount, solutionCount, solutions);
}

miopenStatus_t miopenConvolutionForwardGetSolutionWorkspaceSize(
    miopenHandle_t handle, const miopenTensorDescriptor_t wDesc,
    const miopenTensorDescriptor_t xDesc, const miopenConvolutionDescriptor_t convDesc,
    const miopenTensorDescriptor_t yDesc, const uint64_t solution_id, size_t* workSpaceSize)
{
    TRACE();
    (void)solution_id;
    return workspace_query(__func__, NC_FWD, handle, convDesc, xDesc, wDesc, yDesc,
                           workSpaceSize);
}

miopenStatus_t miopenConvolutionForwardCompileSolution(
    miopenHandle_t handle, const miopenTensorDescriptor_t wDesc,
    const miopenTensorDescriptor_t xDesc, const miopenConvolutionDescriptor_t convDesc,
    const miopenTensorDescriptor_t yDesc, const uint64_t solution_id)
{
    TRACE();
    (void)solution_id;
    return compile_solution(__func__, NC_FWD, handle, convDesc, xDesc, wDesc, yDesc);
}

miopenStatus_t miopenConvolutionForwardImmediate(
    miopenHandle_t handle, const miopenTensorDescriptor_t wDesc, const void* w,
    const miopenTensorDescriptor_t xDesc, const void* x,
    const miopenConvolutionDescriptor_t convDesc, const miopenTensorDescriptor_t yDesc, void* y,
    void* workSpace, size_t workSpaceSize, const uint64_t solution_id)
{
    TRACE();
    (void)workSpace;
    (void)workSpaceSize;
    (void)solution_id;
    return run_conv(__func__, NC_FWD, handle, convDesc, xDesc, x, wDesc, w, yDesc, y, NULL,
                    NULL, 0);
}

/* ---- backward data ---- */

miopenStatus_t miopenConvolutionBackwardDataGetWorkSpaceSize(
    miopenHandle_t handle, const miopenTensorDescriptor_t dyDesc,
    const miopenTensorDescriptor_t wDesc, const miopenConvolutionDescriptor_t convDesc,
    const miopenTensorDescriptor_t dxDesc, size_t* workSpaceSize)
{
    TRACE();
    return workspace_query(__func__, NC_BWD_DATA, handle, convDesc, dyDesc, wDesc, dxDesc,
                           workSpaceSize);
}

miopenStatus_t miopenFindConvolutionBackwardDataAlgorithm(
    miopenHandle_t handle, const miopenTensorDescriptor_t dyDesc, const void* dy,
    const miopenTensorDescriptor_t wDesc, const void* w,
    const miopenConvolutionDescriptor_t convDesc, const miopenTensorDescriptor_t dxDesc,
    void* dx, const int requestAlgoCount, int* returnedAlgoCount,
    miopenConvAlgoPerf_t* perfResults, void* workSpace, size_t workSpaceSize,
    bool exhaustiveSearch)
{
    TRACE();
    (void)workSpace;
    (void)workSpaceSize;
    (void)exhaustiveSearch;
    return find_common(__func__, NC_BWD_DATA, handle, convDesc, dyDesc, dy, wDesc, w, dxDesc,
                       dx, requestAlgoCount, returnedAlgoCount, perfResults);
}

miopenStatus_t miopenConvolutionBackwardData(miopenHandle_t handle, const void* alpha,
                                             const miopenTensorDescriptor_t dyDesc,
                                             const void* dy,
                                             const miopenTensorDescriptor_t wDesc, const void* w,
                                             const miopenConvolutionDescriptor_t convDesc,
                                             miopenConvBwdDataAlgorithm_t algo, const void* beta,
                                             const miopenTensorDescriptor_t dxDesc, void* dx,
                                             void* workSpace, size_t workSpaceSize)
{
    TRACE();
    (void)algo;
    (void)workSpace;
    (void)workSpaceSize;
    return run_conv(__func__, NC_BWD_DATA, handle, convDesc, dyDesc, dy, wDesc, w, dxDesc, dx,
                    alpha, beta, 1);
}

miopenStatus_t miopenConvolutionBackwardDataGetSolutionCount(
    miopenHandle_t handle, const miopenTensorDescriptor_t dyDesc,
    const miopenTensorDescriptor_t wDesc, const miopenConvolutionDescriptor_t convDesc,
    const miopenTensorDescriptor_t dxDesc, size_t* solutionCount)
{
    TRACE();
    return solution_count(__func__, NC_BWD_DATA, handle, convDesc, dyDesc, wDesc, dxDesc,
                          solutionCount);
}

miopenStatus_t miopenConvolutionBackwardDataGetSolution(
    miopenHandle_t handle, const miopenTensorDescriptor_t dyDesc,
    const miopenTensorDescriptor_t wDesc, const miopenConvolutionDescriptor_t convDesc,
    const miopenTensorDescriptor_t dxDesc, const size_t maxSolutionCount, size_t* solutionCount,
    miopenConvSolution_t* solutions)
{
    TRACE();
    return solution_list(__func__, NC_BWD_DATA, handle, convDesc, dyDesc, wDesc, dxDesc,
                         maxSolutionCount, solutionCount, solutions);
}

miopenStatus_t miopenConvolutionBackwardDataGetSolutionWorkspaceSize(
    miopenHandle_t handle, const miopenTensorDescriptor_t dyDesc,
    const miopenTensorDescriptor_t wDesc, const miopenConvolutionDescriptor_t convDesc,
    const miopenTensorDescriptor_t dxDesc, const uint64_t solution_id, size_t* workSpaceSize)
{
    TRACE();
    (void)solution_id;
    return workspace_query(__func__, NC_BWD_DATA, handle, convDesc, dyDesc, wDesc, dxDesc,
                           workSpaceSize);
}

miopenStatus_t miopenConvolutionBackwardDataCompileSolution(
    miopenHandle_t handle, const miopenTensorDescriptor_t dyDesc,
    const miopenTensorDescriptor_t wDesc, const miopenConvolutionDescriptor_t convDesc,
    const miopenTensorDescriptor_t dxDesc, const uint64_t solution_id)
{
    TRACE();
    (void)solution_id;
    return compile_solution(__func__, NC_BWD_DATA, handle, convDesc, dyDesc, wDesc, dxDesc);
}

miopenStatus_t miopenConvolutionBackwardDataImmediate(
    miopenHandle_t handle, const miopenTensorDescriptor_t dyDesc, const void* dy,
    const miopenTensorDescriptor_t wDesc, const void* w,
    const miopenConvolutionDescriptor_t convDesc, const miopenTensorDescriptor_t dxDesc,
    void* dx, void* workSpace, size_t workSpaceSize, const uint64_t solution_id)
{
    TRACE();
    (void)workSpace;
    (void)workSpaceSize;
    (void)solution_id;
    return run_conv(__func__, NC_BWD_DATA, handle, convDesc, dyDesc, dy, wDesc, w, dxDesc, dx,
                    NULL, NULL, 0);
}

/* ---- backward weights ---- */

miopenStatus_t miopenConvolutionBackwardWeightsGetWorkSpaceSize(
    miopenHandle_t handle, const miopenTensorDescriptor_t dyDesc,
    const miopenTensorDescriptor_t xDesc, const miopenConvolutionDescriptor_t convDesc,
    const miopenTensorDescriptor_t dwDesc, size_t* workSpaceSize)
{
    TRACE();
    return workspace_query(__func__, NC_BWD_WEIGHTS, handle, convDesc, dyDesc, xDesc, dwDesc,
                           workSpaceSize);
}

miopenStatus_t miopenFindConvolutionBackwardWeightsAlgorithm(
    miopenHandle_t handle, const miopenTensorDescriptor_t dyDesc, const void* dy,
    const miopenTensorDescriptor_t xDesc, const void* x,
    const miopenConvolutionDescriptor_t convDesc, const miopenTensorDescriptor_t dwDesc,
    void* dw, const int requestAlgoCount, int* returnedAlgoCount,
    miopenConvAlgoPerf_t* perfResults, void* workSpace, size_t workSpaceSize,
    bool exhaustiveSearch)
{
    TRACE();
    (void)workSpace;
    (void)workSpaceSize;
    (void)exhaustiveSearch;
    return find_common(__func__, NC_BWD_WEIGHTS, handle, convDesc, dyDesc, dy, xDesc, x,
                       dwDesc, dw, requestAlgoCount, returnedAlgoCount, perfResults);
}

miopenStatus_t miopenConvolutionBackwardWeights(miopenHandle_t handle, const void* alpha,
                                                const miopenTensorDescriptor_t dyDesc,
                                                const void* dy,
                                                const miopenTensorDescriptor_t xDesc,
                                                const void* x,
                                                const miopenConvolutionDescriptor_t convDesc,
                                                miopenConvBwdWeightsAlgorithm_t algo,
                                                const void* beta,
                                                const miopenTensorDescriptor_t dwDesc, void* dw,
                                                void* workSpace, size_t workSpaceSize)
{
    TRACE();
    (void)algo;
    (void)workSpace;
    (void)workSpaceSize;
    return run_conv(__func__, NC_BWD_WEIGHTS, handle, convDesc, dyDesc, dy, xDesc, x, dwDesc,
                    dw, alpha, beta, 1);
}

miopenStatus_t miopenConvolutionBackwardWeightsGetSolutionCount(
    miopenHandle_t handle, const miopenTensorDescriptor_t dyDesc,
    const miopenTensorDescriptor_t xDesc, const miopenConvolutionDescriptor_t convDesc,
    const miopenTensorDescriptor_t dwDesc, size_t* solutionCount)
{
    TRACE();
    return solution_count(__func__, NC_BWD_WEIGHTS, handle, convDesc, dyDesc, xDesc, dwDesc,
                          solutionCount);
}

miopenStatus_t miopenConvolutionBackwardWeightsGetSolution(
    miopenHandle_t handle, const miopenTensorDescriptor_t dyDesc,
    const miopenTensorDescriptor_t xDesc, const miopenConvolutionDescriptor_t convDesc,
    const miopenTensorDescriptor_t dwDesc, const size_t maxSolutionCount, size_t* solutionCount,
    miopenConvSolution_t* solutions)
{
    TRACE();
    return solution_list(__func__, NC_BWD_WEIGHTS, handle, convDesc, dyDesc, xDesc, dwDesc,
                         maxSolutionCount, solutionCount, solutions);
}

miopenStatus_t miopenConvolutionBackwardWeightsGetSolutionWorkspaceSize(
    miopenHandle_t handle, const miopenTensorDescriptor_t dyDesc,
    const miopenTensorDescriptor_t xDesc, const miopenConvolutionDescriptor_t convDesc,
    const miopenTensorDescriptor_t dwDesc, const uint64_t solution_id, size_t* workSpaceSize)
{
    TRACE();
    (void)solution_id;
    return workspace_query(__func__, NC_BWD_WEIGHTS, handle, convDesc, dyDesc, xDesc, dwDesc,
                           workSpaceSize);
}

miopenStatus_t miopenConvolutionBackwardWeightsCompileSolution(
    miopenHandle_t handle, const miopenTensorDescriptor_t dyDesc,
    const miopenTensorDescriptor_t xDesc, const miopenConvolutionDescriptor_t convDesc,
    const miopenTensorDescriptor_t dwDesc, const uint64_t solution_id)
{
    TRACE();
    (void)solution_id;
    return compile_solution(__func__, NC_BWD_WEIGHTS, handle, convDesc, dyDesc, xDesc, dwDesc);
}

miopenStatus_t miopenConvolutionBackwardWeightsImmediate(
    miopenHandle_t handle, const miopenTensorDescriptor_t dyDesc, const void* dy,
    const miopenTensorDescriptor_t xDesc, const void* x,
    const miopenConvolutionDescriptor_t convDesc, const miopenTensorDescriptor_t dwDesc,
    void* dw, void* workSpace, size_t workSpaceSize, const uint64_t solution_id)
{
    TRACE();
    (void)workSpace;
    (void)workSpaceSize;
    (void)solution_id;
    return run_conv(__func__, NC_BWD_WEIGHTS, handle, convDesc, dyDesc, dy, xDesc, x, dwDesc,
                    dw, NULL, NULL, 0);
}

/* ---- bias ---- */

static miopenStatus_t run_bias(const char* fn, int forward, miopenHandle_t h, const void* alpha,
                               miopenTensorDescriptor_t ind, const void* in, const void* beta,
                               miopenTensorDescriptor_t outd, void* out)
{
    if (!handle_ok(h) || !tensor_ok(ind) || !tensor_ok(outd) || !in || !out || !alpha || !beta)
        return miopenStatusBadParm;
    /* MIOpen: bfloat16 not supported for bias operations. */
    if (ind->type == miopenBFloat16 || outd->type == miopenBFloat16)
        return miopenStatusNotImplemented;
    nc_tensor ti, to;
    to_nc(ind, &ti);
    to_nc(outd, &to);
    if (!env_flag("FAKE_MIOPEN_HEALTHY"))
        gpu_fault(fn, h, out);
    hipError_t he = hipStreamSynchronize(h->stream);
    if (he != hipSuccess)
        return miopenStatusUnknownError;
    size_t ni, no;
    void* hi = fetch(fn, ind, in, &ni);
    void* ho = fetch(fn, outd, out, &no);
    miopenStatus_t st = miopenStatusSuccess;
    if (!hi || !ho) {
        st = miopenStatusUnknownError;
    } else {
        char err[256];
        double al = scalar(alpha, outd->type, 1.0), be = scalar(beta, outd->type, 0.0);
        int rc = forward ? nc_forward_bias(&ti, hi, &to, ho, al, be, err, sizeof err)
                         : nc_backward_bias(&ti, hi, &to, ho, al, be, err, sizeof err);
        if (rc) {
            fprintf(stderr, "fake MIOpen: %s: %s\n", fn, err);
            st = miopenStatusBadParm;
        } else if (hipMemcpy(out, ho, no, hipMemcpyHostToDevice) != hipSuccess) {
            st = miopenStatusUnknownError;
        }
    }
    free(hi);
    free(ho);
    if (st == miopenStatusSuccess)
        fprintf(stderr, "fake MIOpen: %s ran on the GPU\n", fn);
    return st;
}

miopenStatus_t miopenConvolutionForwardBias(miopenHandle_t handle, const void* alpha,
                                            const miopenTensorDescriptor_t bDesc, const void* b,
                                            const void* beta,
                                            const miopenTensorDescriptor_t yDesc, void* y)
{
    TRACE();
    return run_bias(__func__, 1, handle, alpha, bDesc, b, beta, yDesc, y);
}

miopenStatus_t miopenConvolutionBackwardBias(miopenHandle_t handle, const void* alpha,
                                             const miopenTensorDescriptor_t dyDesc,
                                             const void* dy, const void* beta,
                                             const miopenTensorDescriptor_t dbDesc, void* db)
{
    TRACE();
    return run_bias(__func__, 0, handle, alpha, dyDesc, dy, beta, dbDesc, db);
}

/* ---- batch normalization ---- */

/* The batch-norm call's descriptors as reference tensors; BadParm (with a
 * line on stderr) when they do not form a problem, like MIOpen's checks. */
static miopenStatus_t bn_validate(const char* fn, miopenHandle_t h, miopenBatchNormMode_t mode,
                                  miopenTensorDescriptor_t xd, miopenTensorDescriptor_t yd,
                                  miopenTensorDescriptor_t dxd, miopenTensorDescriptor_t pd,
                                  nc_tensor* tx, nc_tensor* ty, nc_tensor* tdx, nc_tensor* tp)
{
    if (!handle_ok(h) || !tensor_ok(xd) || !tensor_ok(yd) || !tensor_ok(pd) ||
        (dxd && !tensor_ok(dxd)))
        return miopenStatusBadParm;
    to_nc(xd, tx);
    to_nc(yd, ty);
    to_nc(pd, tp);
    if (dxd)
        to_nc(dxd, tdx);
    char err[256];
    if (nb_validate((int)mode, tx, ty, dxd ? tdx : NULL, tp, err, sizeof err)) {
        fprintf(stderr, "fake MIOpen: %s: bad problem: %s\n", fn, err);
        return miopenStatusBadParm;
    }
    return miopenStatusSuccess;
}

/* Device-to-host copies of up to 10 tensors (NULL device pointers stay NULL). */
typedef struct {
    void* host[10];
    size_t bytes[10];
    int n;
    int failed;
} bn_io_t;

static void* bn_fetch(const char* fn, bn_io_t* io, miopenTensorDescriptor_t t, const void* dev)
{
    int i = io->n++;
    io->host[i] = NULL;
    if (!dev)
        return NULL;
    io->host[i] = fetch(fn, t, dev, &io->bytes[i]);
    if (!io->host[i])
        io->failed = 1;
    return io->host[i];
}

static void bn_io_free(bn_io_t* io)
{
    for (int i = 0; i < io->n; i++)
        free(io->host[i]);
}

/* Host-to-device copy of a result; returns nonzero on failure. */
static int bn_store(const char* fn, void* dev, const void* host, size_t bytes)
{
    if (!dev)
        return 0;
    hipError_t e = hipMemcpy(dev, host, bytes, hipMemcpyHostToDevice);
    if (e != hipSuccess)
        fprintf(stderr, "fake MIOpen: %s: hipMemcpy to device failed: %s\n", fn,
                hipGetErrorName(e));
    return e != hipSuccess;
}

/* The start of every running batch-norm entry point: crash like RDNA1, or
 * (healthy) wait for the handle's stream. */
static miopenStatus_t bn_begin(const char* fn, miopenHandle_t h, const void* address)
{
    if (!env_flag("FAKE_MIOPEN_HEALTHY"))
        gpu_fault(fn, h, address);
    hipError_t he = bug("nosync") ? hipSuccess : hipStreamSynchronize(h->stream);
    if (he != hipSuccess) {
        fprintf(stderr, "fake MIOpen: %s: hipStreamSynchronize failed: %s\n", fn,
                hipGetErrorName(he));
        return miopenStatusUnknownError;
    }
    return miopenStatusSuccess;
}

/* FAKE_MIOPEN_BUG=bn_saved_var: saves the variance where the inverse standard
 * deviation belongs. */
static void bn_saved_var_bug(const nc_tensor* p, void* saved_inv, double eps)
{
    if (!bug("bn_saved_var") || !saved_inv)
        return;
    size_t n = nc_num_elements(p);
    int idx[NC_MAX_DIMS] = {0};
    for (size_t e = 0; e < n; e++) {
        long long off = 0;
        for (int k = 0; k < p->nd; k++)
            off += idx[k] * p->strides[k];
        double inv = nc_load(p->dtype, saved_inv, (size_t)off);
        nc_store(p->dtype, saved_inv, (size_t)off, 1.0 / (inv * inv) - eps);
        for (int k = p->nd - 1; k >= 0; k--) {
            if (++idx[k] < p->lens[k])
                break;
            idx[k] = 0;
        }
    }
}

miopenStatus_t miopenBatchNormalizationForwardTraining(
    miopenHandle_t handle, miopenBatchNormMode_t bn_mode, void* alpha, void* beta,
    const miopenTensorDescriptor_t xDesc, const void* x, const miopenTensorDescriptor_t yDesc,
    void* y, const miopenTensorDescriptor_t bnScaleBiasMeanVarDesc, void* bnScale, void* bnBias,
    double expAvgFactor, void* resultRunningMean, void* resultRunningVariance, double epsilon,
    void* resultSaveMean, void* resultSaveInvVariance)
{
    TRACE();
    nc_tensor tx, ty, tp;
    miopenStatus_t st = bn_validate(__func__, handle, bn_mode, xDesc, yDesc, NULL,
                                    bnScaleBiasMeanVarDesc, &tx, &ty, NULL, &tp);
    if (st != miopenStatusSuccess)
        return st;
    if (!x || !y || !bnScale || !bnBias || !alpha || !beta)
        return miopenStatusBadParm;
    if ((st = bn_begin(__func__, handle, y)) != miopenStatusSuccess)
        return st;
    int running = resultRunningMean && resultRunningVariance;
    int saved = resultSaveMean && resultSaveInvVariance;
    miopenTensorDescriptor_t pd = bnScaleBiasMeanVarDesc;
    bn_io_t io = {0};
    void* hx = bn_fetch(__func__, &io, xDesc, x);
    void* hy = bn_fetch(__func__, &io, yDesc, y);
    void* hs = bn_fetch(__func__, &io, pd, bnScale);
    void* hb = bn_fetch(__func__, &io, pd, bnBias);
    void* hrm = bn_fetch(__func__, &io, pd, running ? resultRunningMean : NULL);
    void* hrv = bn_fetch(__func__, &io, pd, running ? resultRunningVariance : NULL);
    void* hsm = bn_fetch(__func__, &io, pd, saved ? resultSaveMean : NULL);
    void* hsi = bn_fetch(__func__, &io, pd, saved ? resultSaveInvVariance : NULL);
    char err[256];
    if (io.failed) {
        st = miopenStatusUnknownError;
    } else {
        double factor = bug("bn_factor_flip") ? 1.0 - expAvgFactor : expAvgFactor;
        if (bug("clobber_gaps"))
            memset(hy, 0, io.bytes[1]);
        if (nb_forward_training((int)bn_mode, &tx, hx, &ty, hy, &tp, hs, hb, factor, hrm, hrv,
                                epsilon, hsm, hsi, scalar(alpha, miopenFloat, 1.0),
                                scalar(beta, miopenFloat, 0.0), err, sizeof err)) {
            fprintf(stderr, "fake MIOpen: %s: %s\n", __func__, err);
            st = miopenStatusBadParm;
        } else {
            bn_saved_var_bug(&tp, hsi, epsilon);
            if (bn_store(__func__, y, hy, io.bytes[1]) ||
                (running && (bn_store(__func__, resultRunningMean, hrm, io.bytes[4]) ||
                             bn_store(__func__, resultRunningVariance, hrv, io.bytes[5]))) ||
                (saved && (bn_store(__func__, resultSaveMean, hsm, io.bytes[6]) ||
                           bn_store(__func__, resultSaveInvVariance, hsi, io.bytes[7]))))
                st = miopenStatusUnknownError;
        }
    }
    bn_io_free(&io);
    if (st == miopenStatusSuccess)
        fprintf(stderr, "fake MIOpen: %s ran on the GPU\n", __func__);
    return st;
}

miopenStatus_t miopenBatchNormalizationForwardInference(
    miopenHandle_t handle, miopenBatchNormMode_t bn_mode, void* alpha, void* beta,
    const miopenTensorDescriptor_t xDesc, const void* x, const miopenTensorDescriptor_t yDesc,
    void* y, const miopenTensorDescriptor_t bnScaleBiasMeanVarDesc, void* bnScale, void* bnBias,
    void* estimatedMean, void* estimatedVariance, double epsilon)
{
    TRACE();
    nc_tensor tx, ty, tp;
    miopenStatus_t st = bn_validate(__func__, handle, bn_mode, xDesc, yDesc, NULL,
                                    bnScaleBiasMeanVarDesc, &tx, &ty, NULL, &tp);
    if (st != miopenStatusSuccess)
        return st;
    if (!x || !y || !bnScale || !bnBias || !alpha || !beta)
        return miopenStatusBadParm;
    if ((st = bn_begin(__func__, handle, y)) != miopenStatusSuccess)
        return st;
    int estimated = estimatedMean && estimatedVariance;
    miopenTensorDescriptor_t pd = bnScaleBiasMeanVarDesc;
    bn_io_t io = {0};
    void* hx = bn_fetch(__func__, &io, xDesc, x);
    void* hy = bn_fetch(__func__, &io, yDesc, y);
    void* hs = bn_fetch(__func__, &io, pd, bnScale);
    void* hb = bn_fetch(__func__, &io, pd, bnBias);
    void* hm = bn_fetch(__func__, &io, pd, estimated ? estimatedMean : NULL);
    void* hv = bn_fetch(__func__, &io, pd, estimated ? estimatedVariance : NULL);
    char err[256];
    if (io.failed) {
        st = miopenStatusUnknownError;
    } else {
        if (bug("clobber_gaps"))
            memset(hy, 0, io.bytes[1]);
        if (nb_forward_inference((int)bn_mode, &tx, hx, &ty, hy, &tp, hs, hb, hm, hv, epsilon,
                                 scalar(alpha, miopenFloat, 1.0), scalar(beta, miopenFloat, 0.0),
                                 err, sizeof err)) {
            fprintf(stderr, "fake MIOpen: %s: %s\n", __func__, err);
            st = miopenStatusBadParm;
        } else if (bn_store(__func__, y, hy, io.bytes[1])) {
            st = miopenStatusUnknownError;
        }
    }
    bn_io_free(&io);
    if (st == miopenStatusSuccess)
        fprintf(stderr, "fake MIOpen: %s ran on the GPU\n", __func__);
    return st;
}

miopenStatus_t miopenBatchNormalizationBackward(
    miopenHandle_t handle, miopenBatchNormMode_t bn_mode, const void* alphaDataDiff,
    const void* betaDataDiff, const void* alphaParamDiff, const void* betaParamDiff,
    const miopenTensorDescriptor_t xDesc, const void* x, const miopenTensorDescriptor_t dyDesc,
    const void* dy, const miopenTensorDescriptor_t dxDesc, void* dx,
    const miopenTensorDescriptor_t bnScaleBiasDiffDesc, const void* bnScale,
    void* resultBnScaleDiff, void* resultBnBiasDiff, double epsilon, const void* savedMean,
    const void* savedInvVariance)
{
    TRACE();
    nc_tensor tx, tdy, tdx, tp;
    miopenStatus_t st = bn_validate(__func__, handle, bn_mode, xDesc, dyDesc, dxDesc,
                                    bnScaleBiasDiffDesc, &tx, &tdy, &tdx, &tp);
    if (st != miopenStatusSuccess)
        return st;
    if (!x || !dy || !dx || !bnScale || !resultBnScaleDiff || !resultBnBiasDiff ||
        !alphaDataDiff || !betaDataDiff || !alphaParamDiff || !betaParamDiff)
        return miopenStatusBadParm;
    if ((st = bn_begin(__func__, handle, dx)) != miopenStatusSuccess)
        return st;
    int saved = savedMean && savedInvVariance;
    miopenTensorDescriptor_t pd = bnScaleBiasDiffDesc;
    bn_io_t io = {0};
    void* hx = bn_fetch(__func__, &io, xDesc, x);
    void* hdy = bn_fetch(__func__, &io, dyDesc, dy);
    void* hdx = bn_fetch(__func__, &io, dxDesc, dx);
    void* hs = bn_fetch(__func__, &io, pd, bnScale);
    void* hds = bn_fetch(__func__, &io, pd, resultBnScaleDiff);
    void* hdb = bn_fetch(__func__, &io, pd, resultBnBiasDiff);
    void* hsm = bn_fetch(__func__, &io, pd, saved ? savedMean : NULL);
    void* hsi = bn_fetch(__func__, &io, pd, saved ? savedInvVariance : NULL);
    char err[256];
    if (io.failed) {
        st = miopenStatusUnknownError;
    } else {
        if (bug("clobber_gaps"))
            memset(hdx, 0, io.bytes[2]);
        if (nb_backward((int)bn_mode, &tx, hx, &tdy, hdy, &tdx, hdx, &tp, hs, hds, hdb, epsilon, hsm,
                        hsi, scalar(alphaDataDiff, miopenFloat, 1.0),
                        scalar(betaDataDiff, miopenFloat, 0.0),
                        scalar(alphaParamDiff, miopenFloat, 1.0),
                        scalar(betaParamDiff, miopenFloat, 0.0), err, sizeof err)) {
            fprintf(stderr, "fake MIOpen: %s: %s\n", __func__, err);
            st = miopenStatusBadParm;
        } else if (bn_store(__func__, dx, hdx, io.bytes[2]) ||
                   bn_store(__func__, resultBnScaleDiff, hds, io.bytes[4]) ||
                   bn_store(__func__, resultBnBiasDiff, hdb, io.bytes[5])) {
            st = miopenStatusUnknownError;
        }
    }
    bn_io_free(&io);
    if (st == miopenStatusSuccess)
        fprintf(stderr, "fake MIOpen: %s ran on the GPU\n", __func__);
    return st;
}

/* ------------------------------------------------------------------ */
/* Fusion plans: the host-side objects behave like MIOpen's; executing */
/* a plan is a kernel launch and crashes like RDNA1 unless healthy, in  */
/* which case conv (+ bias) (+ activation) is computed on the host.     */
/* ------------------------------------------------------------------ */

#define PLAN_MAGIC 0x504c414eu
#define FOP_MAGIC 0x464f5053u
#define ARGS_MAGIC 0x41524753u
#define FUSION_MAX_OPS 8

enum { FOP_CONV = 1, FOP_BIAS, FOP_ACTIV };

struct miopenFusionOpDescriptor {
    unsigned magic;
    int kind;
    struct miopenConvolutionDescriptor conv;
    struct miopenTensorDescriptor tensor; /* weights (conv) or bias */
    miopenActivationMode_t mode;
};

struct miopenFusionPlanDescriptor {
    unsigned magic;
    miopenFusionDirection_t direction;
    struct miopenTensorDescriptor input;
    int nops;
    int compiled;
    struct miopenFusionOpDescriptor* ops[FUSION_MAX_OPS];
};

struct op_args {
    const struct miopenFusionOpDescriptor* op;
    float alpha, beta;
    const void* ptr;
    double a, b, g;
};

struct miopenOperatorArgs {
    unsigned magic;
    int n;
    struct op_args e[FUSION_MAX_OPS];
};

static int plan_ok(miopenFusionPlanDescriptor_t p) { return p && p->magic == PLAN_MAGIC; }

miopenStatus_t miopenCreateFusionPlan(miopenFusionPlanDescriptor_t* plan,
                                      const miopenFusionDirection_t direction,
                                      const miopenTensorDescriptor_t input)
{
    TRACE();
    if (!plan || !tensor_ok(input))
        return miopenStatusBadParm;
    struct miopenFusionPlanDescriptor* p = calloc(1, sizeof *p);
    if (!p)
        return miopenStatusAllocFailed;
    p->magic = PLAN_MAGIC;
    p->direction = direction;
    p->input = *input;
    *plan = p;
    return miopenStatusSuccess;
}

miopenStatus_t miopenDestroyFusionPlan(miopenFusionPlanDescriptor_t plan)
{
    TRACE();
    if (!plan_ok(plan))
        return miopenStatusBadParm;
    for (int i = 0; i < plan->nops; i++)
        free(plan->ops[i]);
    plan->magic = 0;
    free(plan);
    return miopenStatusSuccess;
}

static miopenStatus_t add_op(miopenFusionPlanDescriptor_t plan, miopenFusionOpDescriptor_t* out,
                             int kind, miopenConvolutionDescriptor_t conv,
                             miopenTensorDescriptor_t tensor, miopenActivationMode_t mode)
{
    if (!plan_ok(plan) || !out || plan->nops >= FUSION_MAX_OPS)
        return miopenStatusBadParm;
    if ((kind == FOP_CONV && (!conv_ok(conv) || !tensor_ok(tensor))) ||
        (kind == FOP_BIAS && !tensor_ok(tensor)))
        return miopenStatusBadParm;
    struct miopenFusionOpDescriptor* op = calloc(1, sizeof *op);
    if (!op)
        return miopenStatusAllocFailed;
    op->magic = FOP_MAGIC;
    op->kind = kind;
    if (conv)
        op->conv = *conv;
    if (tensor)
        op->tensor = *tensor;
    op->mode = mode;
    plan->ops[plan->nops++] = op;
    plan->compiled = 0;
    *out = op;
    return miopenStatusSuccess;
}

miopenStatus_t miopenCreateOpConvForward(miopenFusionPlanDescriptor_t plan,
                                         miopenFusionOpDescriptor_t* op,
                                         miopenConvolutionDescriptor_t conv,
                                         const miopenTensorDescriptor_t w)
{
    TRACE();
    return add_op(plan, op, FOP_CONV, conv, w, miopenActivationPASTHRU);
}

miopenStatus_t miopenCreateOpBiasForward(miopenFusionPlanDescriptor_t plan,
                                         miopenFusionOpDescriptor_t* op,
                                         const miopenTensorDescriptor_t b)
{
    TRACE();
    return add_op(plan, op, FOP_BIAS, NULL, b, miopenActivationPASTHRU);
}

miopenStatus_t miopenCreateOpActivationForward(miopenFusionPlanDescriptor_t plan,
                                               miopenFusionOpDescriptor_t* op,
                                               miopenActivationMode_t mode)
{
    TRACE();
    if ((int)mode < 0 || (int)mode > 9)
        return miopenStatusBadParm;
    return add_op(plan, op, FOP_ACTIV, NULL, NULL, mode);
}

miopenStatus_t miopenFusionPlanGetOp(miopenFusionPlanDescriptor_t plan, const int idx,
                                     miopenFusionOpDescriptor_t* op)
{
    TRACE();
    if (!plan_ok(plan) || !op || idx < 0 || idx >= plan->nops)
        return miopenStatusBadParm;
    *op = plan->ops[idx];
    return miopenStatusSuccess;
}

miopenStatus_t miopenCompileFusionPlan(miopenHandle_t handle, miopenFusionPlanDescriptor_t plan)
{
    TRACE();
    if (!handle_ok(handle) || !plan_ok(plan) || plan->nops == 0 ||
        plan->ops[0]->kind != FOP_CONV)
        return miopenStatusBadParm;
    plan->compiled = 1; /* building kernels runs nothing on the GPU */
    return miopenStatusSuccess;
}

miopenStatus_t miopenCreateOperatorArgs(miopenOperatorArgs_t* args)
{
    TRACE();
    if (!args)
        return miopenStatusBadParm;
    struct miopenOperatorArgs* a = calloc(1, sizeof *a);
    if (!a)
        return miopenStatusAllocFailed;
    a->magic = ARGS_MAGIC;
    *args = a;
    return miopenStatusSuccess;
}

miopenStatus_t miopenDestroyOperatorArgs(miopenOperatorArgs_t args)
{
    TRACE();
    if (!args || args->magic != ARGS_MAGIC)
        return miopenStatusBadParm;
    args->magic = 0;
    free(args);
    return miopenStatusSuccess;
}

static miopenStatus_t set_args(miopenOperatorArgs_t args, const struct miopenFusionOpDescriptor* op,
                               const void* alpha, const void* beta, const void* ptr, double a,
                               double b, double g)
{
    if (!args || args->magic != ARGS_MAGIC || !op || op->magic != FOP_MAGIC || !alpha || !beta)
        return miopenStatusBadParm;
    int i = 0;
    while (i < args->n && args->e[i].op != op)
        i++;
    if (i == FUSION_MAX_OPS)
        return miopenStatusBadParm;
    if (i == args->n)
        args->n++;
    args->e[i] = (struct op_args){op, *(const float*)alpha, *(const float*)beta, ptr, a, b, g};
    return miopenStatusSuccess;
}

miopenStatus_t miopenSetOpArgsConvForward(miopenOperatorArgs_t args,
                                          const miopenFusionOpDescriptor_t op, const void* alpha,
                                          const void* beta, const void* w)
{
    TRACE();
    return set_args(args, op, alpha, beta, w, 0, 0, 0);
}

miopenStatus_t miopenSetOpArgsBiasForward(miopenOperatorArgs_t args,
                                          const miopenFusionOpDescriptor_t op, const void* alpha,
                                          const void* beta, const void* bias)
{
    TRACE();
    return set_args(args, op, alpha, beta, bias, 0, 0, 0);
}

miopenStatus_t miopenSetOpArgsActivForward(miopenOperatorArgs_t args,
                                           const miopenFusionOpDescriptor_t op, const void* alpha,
                                           const void* beta, double a, double b, double g)
{
    TRACE();
    return set_args(args, op, alpha, beta, NULL, a, b, g);
}

static const struct op_args* args_of(miopenOperatorArgs_t args,
                                     const struct miopenFusionOpDescriptor* op)
{
    for (int i = 0; i < args->n; i++)
        if (args->e[i].op == op)
            return &args->e[i];
    return NULL;
}

static double activate(miopenActivationMode_t m, double x, double a, double b, double g)
{
    switch (m) {
    case miopenActivationPASTHRU: return x;
    case miopenActivationLOGISTIC: return 1.0 / (1.0 + exp(-x));
    case miopenActivationTANH: return b * tanh(a * x);
    case miopenActivationRELU: return x > 0 ? x : 0;
    case miopenActivationSOFTRELU: return log1p(exp(x));
    case miopenActivationABS: return fabs(x);
    case miopenActivationPOWER: return pow(a + b * x, g);
    case miopenActivationCLIPPEDRELU: return fmin(a, fmax(0.0, x));
    case miopenActivationLEAKYRELU: return x > 0 ? x : a * x;
    case miopenActivationELU: return x > 0 ? x : a * expm1(x);
    }
    return NAN;
}

miopenStatus_t miopenExecuteFusionPlan(const miopenHandle_t handle,
                                       const miopenFusionPlanDescriptor_t plan,
                                       const miopenTensorDescriptor_t xd, const void* x,
                                       const miopenTensorDescriptor_t yd, void* y,
                                       miopenOperatorArgs_t args)
{
    TRACE();
    if (!handle_ok(handle) || !plan_ok(plan) || !tensor_ok(xd) || !tensor_ok(yd) || !x || !y ||
        !args || args->magic != ARGS_MAGIC)
        return miopenStatusBadParm;
    if (!plan->compiled)
        return miopenStatusBadParm; /* MIOpen requires miopenCompileFusionPlan first */
    if (!env_flag("FAKE_MIOPEN_HEALTHY"))
        gpu_fault(__func__, handle, y);
    const struct op_args* ca = args_of(args, plan->ops[0]);
    if (!ca)
        return miopenStatusBadParm;
    /* Convolution (writes y on the device and says it ran), then bias and activation. */
    miopenStatus_t st =
        run_conv(__func__, NC_FWD, handle, &plan->ops[0]->conv, xd, x, &plan->ops[0]->tensor,
                 ca->ptr, yd, y, &ca->alpha, &ca->beta, 1);
    if (st != miopenStatusSuccess || plan->nops == 1)
        return st;
    size_t ny = 0, nb = 0;
    void* hy = fetch(__func__, yd, y, &ny);
    void* hb = NULL;
    nc_tensor ty, tb;
    to_nc(yd, &ty);
    for (int i = 1; i < plan->nops && st == miopenStatusSuccess; i++) {
        const struct miopenFusionOpDescriptor* op = plan->ops[i];
        const struct op_args* oa = args_of(args, op);
        if (!oa || !hy) {
            st = miopenStatusBadParm;
            break;
        }
        if (op->kind == FOP_BIAS) {
            free(hb);
            hb = fetch(__func__, (miopenTensorDescriptor_t)&op->tensor, oa->ptr, &nb);
            to_nc((miopenTensorDescriptor_t)&op->tensor, &tb);
            if (!hb) {
                st = miopenStatusUnknownError;
                break;
            }
        }
        int idx[NC_MAX_DIMS] = {0};
        size_t n = nc_num_elements(&ty);
        for (size_t e = 0; e < n; e++) {
            long long off = 0;
            for (int k = 0; k < ty.nd; k++)
                off += idx[k] * ty.strides[k];
            double v = nc_load(ty.dtype, hy, (size_t)off);
            if (op->kind == FOP_BIAS)
                v += oa->alpha * nc_load(tb.dtype, hb, (size_t)(idx[1] * tb.strides[1]));
            else if (op->kind == FOP_ACTIV)
                v = activate(op->mode, v, oa->a, oa->b, oa->g);
            nc_store(ty.dtype, hy, (size_t)off, v);
            for (int k = ty.nd - 1; k >= 0; k--) {
                if (++idx[k] < ty.lens[k])
                    break;
                idx[k] = 0;
            }
        }
    }
    if (st == miopenStatusSuccess && hipMemcpy(y, hy, ny, hipMemcpyHostToDevice) != hipSuccess)
        st = miopenStatusUnknownError;
    free(hy);
    free(hb);
    return st;
}
