/*
 * harness.c -- owns the convolution and batch-norm integration harness: it
 * replays the exact MIOpen call sequences PyTorch
 * (aten/src/ATen/native/miopen/Conv_miopen.cpp, BatchNorm_miopen.cpp) and
 * other clients issue, on a non-blocking HIP stream, and compares every result
 * with naive_conv / naive_bn on host copies.
 *
 * Built twice: as the executable harness_direct (-DHARNESS_MAIN, linked
 * against libMIOpen.so and libamdhip64.so) and as libconvplugin.so exporting
 * harness_main(), which harness_dlopen loads with RTLD_LOCAL the way PyTorch
 * loads MIOpen.
 *
 * CLI: [--mode default|benchmark|deterministic|immediate|compile|all]
 *      [--case SUBSTRING] [--list] [--only fwd|bwd_data|bwd_weights|bias]
 * (--only also takes fwd_bias or bwd_bias; "bias" selects both; bn_train,
 * bn_infer, bn_bwd or train_step; "bn" selects those four.)
 * Prints "ok <case> <mode> <direction> max_err=..." or "FAIL <case> <mode>
 * <direction>: ..." per check, then exactly "N passed, M failed"; exit status
 * 0 iff M == 0.
 *
 * Per check: descriptors via miopenSetTensorDescriptor (dims + strides: NCHW,
 * channels-last, or padded strides), miopenInitConvolutionNdDescriptor +
 * miopenSetConvolutionGroupCount (+ miopenSetTransposeConvNdOutputPadding);
 * device buffers are first filled with 0x7F garbage (synchronously), then the
 * output is pre-filled with a sentinel (NaN for beta == 0) and the inputs are
 * uploaded with hipMemcpyAsync on the stream right before the convolution
 * call, so a shim that does not order its reads after the stream sees stale
 * bytes. Results come back with hipMemcpyAsync + hipStreamSynchronize; inputs
 * must be unchanged, bytes between strided elements must be unchanged, and
 * every element must match the reference within the tolerance.
 *
 * Batch norm (kind K_BN, default mode only): forward training (y, running
 * statistics, saved mean and inverse variance), inference, backward (dx,
 * dscale, dbias) with PyTorch's argument pattern or NULL statistics pointers,
 * spatial and per-activation, 4-D/5-D, NCHW/NHWC/padded, fp32/fp16/bf16 data
 * with fp32 (or same-type) parameters. K_STEP replays one training step:
 * convolution forward (Find + Forward), batch norm training, batch norm
 * backward, convolution backward-data and backward-weights, issued back to
 * back on the stream; each stage is checked against the reference applied to
 * the device's own inputs of that stage.
 */
#define _GNU_SOURCE
#include "miopen_api.h"
#include "naive_bn.h"
#include "naive_conv.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { K_CONV, K_DEPTHWISE, K_TRANS_PT, K_TRANS_MODE, K_BIAS, K_BN, K_STEP } kind_t;
typedef enum { L_NCHW, L_NHWC, L_PADDED } layout_t;

enum {
    DIR_FWD,
    DIR_BWD_DATA,
    DIR_BWD_WEIGHTS,
    DIR_FWD_BIAS,
    DIR_BWD_BIAS,
    DIR_BN_TRAIN,
    DIR_BN_INFER,
    DIR_BN_BWD,
    DIR_STEP,
    DIR_COUNT
};
static const char* const dir_names[DIR_COUNT] = {"fwd",      "bwd_data", "bwd_weights",
                                                 "fwd_bias", "bwd_bias", "bn_train",
                                                 "bn_infer", "bn_bwd",   "train_step"};

enum { M_DEFAULT, M_BENCHMARK, M_DETERMINISTIC, M_IMMEDIATE, M_COMPILE, M_COUNT };
static const char* const mode_names[M_COUNT] = {"default", "benchmark", "deterministic",
                                                "immediate", "compile"};

#define F16 0
#define F32 1
#define BF16 5

/* Geometry is given in regular-convolution terms: X [n, c, xs...] is the
 * convolution input, W [k, c/g, ker...] the weights, Y [n, k, ys...] the
 * output. For kind K_CONV/K_DEPTHWISE `in` is X's spatial size; for the
 * transposed kinds it is Y's (the transposed convolution's input) and X gets
 * (in-1)*s - 2p + d(k-1) + 1 + adj. str/dil/g of 0 mean 1. For K_BIAS, k is
 * the channel count and `in` the spatial size of y. For K_BN, c is the channel
 * count and `in` the spatial size of x; bnm the miopenBatchNormMode_t, bnf
 * BNF_* flags, factor/eps 0 mean PyTorch's defaults 0.1 / 1e-5. K_STEP is a
 * K_CONV geometry (stride/dilation 1) followed by a spatial batch norm. */
typedef struct {
    const char* name;
    kind_t kind;
    int dtype;
    layout_t layout;
    int sd; /* spatial dims of the descriptors (a "1d" case is 2-D with H = 1) */
    int n, c, k, g;
    int in[3], ker[3], pad[3], str[3], dil[3], adj[3];
    int ab; /* direct call with the alpha/beta below instead of PyTorch's (1, 0) */
    float alpha, beta;
    int bnm, bnf;
    float factor, eps;
} case_t;

/* Batch-norm flags: which statistics pointers are NULL, parameter type. */
enum {
    BNF_NO_RUNNING = 1, /* training: no running statistics; inference: no estimates */
    BNF_NO_SAVED = 2,   /* training: no saved statistics; backward: recompute them */
    BNF_HALF_PAIR = 4,  /* only the first pointer of each pair: as if both were NULL */
    BNF_PARAM_SAME = 8, /* parameters in the data type instead of fp32 */
};
#define SPATIAL miopenBNSpatial
#define PERACT miopenBNPerActivation

/* clang-format off */
static const case_t g_cases[] = {
    /* ---- 1-D (as PyTorch sends it: 4-D with H = 1) ---- */
    {.name = "1d_k3_p1_f32", .kind = K_CONV, .dtype = F32, .sd = 2, .n = 2, .c = 3, .k = 4,
     .in = {1, 9}, .ker = {1, 3}, .pad = {0, 1}},
    {.name = "1d_k5_s2_p2_d2_f16", .kind = K_CONV, .dtype = F16, .sd = 2, .n = 2, .c = 4, .k = 3,
     .in = {1, 16}, .ker = {1, 5}, .pad = {0, 2}, .str = {1, 2}, .dil = {1, 2}},
    /* ---- 2-D ---- */
    {.name = "2d_cnn_3x3_p1_f32", .kind = K_CONV, .dtype = F32, .sd = 2, .n = 2, .c = 3, .k = 8,
     .in = {8, 8}, .ker = {3, 3}, .pad = {1, 1}},
    {.name = "2d_cnn_3x3_p1_f16", .kind = K_CONV, .dtype = F16, .sd = 2, .n = 2, .c = 3, .k = 8,
     .in = {8, 8}, .ker = {3, 3}, .pad = {1, 1}},
    {.name = "2d_cnn_3x3_p1_bf16", .kind = K_CONV, .dtype = BF16, .sd = 2, .n = 2, .c = 3, .k = 8,
     .in = {8, 8}, .ker = {3, 3}, .pad = {1, 1}},
    {.name = "2d_cnn_3x3_s2_p1_f32", .kind = K_CONV, .dtype = F32, .sd = 2, .n = 2, .c = 4, .k = 6,
     .in = {9, 8}, .ker = {3, 3}, .pad = {1, 1}, .str = {2, 2}},
    {.name = "2d_k1_p0_f32", .kind = K_CONV, .dtype = F32, .sd = 2, .n = 2, .c = 8, .k = 4,
     .in = {5, 5}, .ker = {1, 1}},
    /* 64 input channels over 48x48: the input gradient is computed as a forward pass
     * over the flipped kernel (and, pipelined, gated like one) */
    {.name = "2d_wide_3x3_p1_f32", .kind = K_CONV, .dtype = F32, .sd = 2, .n = 2, .c = 64, .k = 4,
     .in = {48, 48}, .ker = {3, 3}, .pad = {1, 1}},
    /* kernels one row tall with a vertical stride: only the rows read cross the link */
    {.name = "2d_k1_s2_f32", .kind = K_CONV, .dtype = F32, .sd = 2, .n = 3, .c = 4, .k = 5,
     .in = {8, 6}, .ker = {1, 1}, .str = {2, 2}},
    {.name = "2d_k1x3_s3x1_p0x1_bf16", .kind = K_CONV, .dtype = BF16, .sd = 2, .n = 2, .c = 3,
     .k = 4, .in = {9, 7}, .ker = {1, 3}, .pad = {0, 1}, .str = {3, 1}},
    {.name = "2d_k1_s2_odd_height_f32", .kind = K_CONV, .dtype = F32, .sd = 2, .n = 2, .c = 3,
     .k = 2, .in = {7, 6}, .ker = {1, 1}, .str = {2, 2}},
    {.name = "3d_k1_s2_f32", .kind = K_CONV, .dtype = F32, .sd = 3, .n = 2, .c = 3, .k = 2,
     .in = {4, 6, 5}, .ker = {1, 1, 1}, .str = {2, 2, 2}},
    {.name = "2d_k3_s2_p0_f16", .kind = K_CONV, .dtype = F16, .sd = 2, .n = 1, .c = 3, .k = 5,
     .in = {9, 7}, .ker = {3, 3}, .str = {2, 2}},
    {.name = "2d_k3_s2_p2_d2_f32", .kind = K_CONV, .dtype = F32, .sd = 2, .n = 2, .c = 3, .k = 4,
     .in = {11, 10}, .ker = {3, 3}, .pad = {2, 2}, .str = {2, 2}, .dil = {2, 2}},
    {.name = "2d_rect_k2x3_s2x1_p1x0_d1x2_f32", .kind = K_CONV, .dtype = F32, .sd = 2, .n = 2,
     .c = 2, .k = 3, .in = {7, 9}, .ker = {2, 3}, .pad = {1, 0}, .str = {2, 1}, .dil = {1, 2}},
    {.name = "2d_groups2_p1_f32", .kind = K_CONV, .dtype = F32, .sd = 2, .n = 2, .c = 4, .k = 6,
     .g = 2, .in = {6, 6}, .ker = {3, 3}, .pad = {1, 1}},
    {.name = "2d_groups2_s2_f16", .kind = K_CONV, .dtype = F16, .sd = 2, .n = 2, .c = 6, .k = 4,
     .g = 2, .in = {7, 7}, .ker = {3, 3}, .pad = {1, 1}, .str = {2, 2}},
    {.name = "2d_groups2_p0_bf16", .kind = K_CONV, .dtype = BF16, .sd = 2, .n = 1, .c = 4, .k = 4,
     .g = 2, .in = {5, 6}, .ker = {3, 3}},
    /* ---- depthwise (groups = C, mode miopenDepthwise as PyTorch sends it) ---- */
    {.name = "2d_depthwise_p1_f32", .kind = K_DEPTHWISE, .dtype = F32, .sd = 2, .n = 2, .c = 4,
     .k = 4, .g = 4, .in = {6, 7}, .ker = {3, 3}, .pad = {1, 1}},
    {.name = "2d_depthwise_mult2_s2_bf16", .kind = K_DEPTHWISE, .dtype = BF16, .sd = 2, .n = 2,
     .c = 3, .k = 6, .g = 3, .in = {8, 8}, .ker = {3, 3}, .pad = {1, 1}, .str = {2, 2}},
    {.name = "2d_depthwise_p2_d2_f16", .kind = K_DEPTHWISE, .dtype = F16, .sd = 2, .n = 1, .c = 5,
     .k = 5, .g = 5, .in = {9, 9}, .ker = {3, 3}, .pad = {2, 2}, .dil = {2, 2}},
    /* ---- memory layouts ---- */
    {.name = "2d_nhwc_f32", .kind = K_CONV, .dtype = F32, .layout = L_NHWC, .sd = 2, .n = 2,
     .c = 4, .k = 6, .in = {6, 5}, .ker = {3, 3}, .pad = {1, 1}},
    {.name = "2d_nhwc_groups2_s2_f16", .kind = K_CONV, .dtype = F16, .layout = L_NHWC, .sd = 2,
     .n = 2, .c = 4, .k = 4, .g = 2, .in = {7, 6}, .ker = {3, 3}, .pad = {1, 1}, .str = {2, 2}},
    {.name = "2d_nhwc_k1_s2_f16", .kind = K_CONV, .dtype = F16, .layout = L_NHWC, .sd = 2,
     .n = 2, .c = 4, .k = 3, .in = {6, 5}, .ker = {1, 1}, .str = {2, 2}},
    {.name = "2d_nhwc_depthwise_f32", .kind = K_DEPTHWISE, .dtype = F32, .layout = L_NHWC,
     .sd = 2, .n = 2, .c = 6, .k = 6, .g = 6, .in = {5, 5}, .ker = {3, 3}, .pad = {1, 1}},
    {.name = "2d_padded_strides_f32", .kind = K_CONV, .dtype = F32, .layout = L_PADDED, .sd = 2,
     .n = 2, .c = 3, .k = 4, .in = {6, 7}, .ker = {3, 3}, .pad = {1, 1}},
    {.name = "2d_padded_strides_s2_f16", .kind = K_CONV, .dtype = F16, .layout = L_PADDED,
     .sd = 2, .n = 1, .c = 2, .k = 3, .in = {7, 7}, .ker = {3, 3}, .pad = {1, 1}, .str = {2, 2}},
    /* ---- 3-D ---- */
    {.name = "3d_k3_p1_f32", .kind = K_CONV, .dtype = F32, .sd = 3, .n = 1, .c = 2, .k = 3,
     .in = {4, 5, 6}, .ker = {3, 3, 3}, .pad = {1, 1, 1}},
    {.name = "3d_groups2_s2_f16", .kind = K_CONV, .dtype = F16, .sd = 3, .n = 2, .c = 4, .k = 4,
     .g = 2, .in = {5, 5, 5}, .ker = {3, 3, 3}, .pad = {1, 1, 1}, .str = {2, 2, 2}},
    {.name = "3d_p2_d2_bf16", .kind = K_CONV, .dtype = BF16, .sd = 3, .n = 1, .c = 2, .k = 2,
     .in = {6, 6, 6}, .ker = {3, 3, 3}, .pad = {2, 2, 2}, .dil = {2, 2, 2}},
    {.name = "3d_ndhwc_f32", .kind = K_CONV, .dtype = F32, .layout = L_NHWC, .sd = 3, .n = 1,
     .c = 3, .k = 4, .in = {4, 4, 5}, .ker = {3, 3, 3}, .pad = {1, 1, 1}},
    {.name = "3d_k1x3x3_f32", .kind = K_CONV, .dtype = F32, .sd = 3, .n = 1, .c = 3, .k = 2,
     .in = {3, 6, 6}, .ker = {1, 3, 3}, .pad = {0, 1, 1}},
    /* ---- transposed convolution as PyTorch sends it (mode miopenConvolution):
     *      its forward is BackwardData into a larger dx (output padding) ---- */
    {.name = "2d_transpose_pt_s2_p1_adj1_f32", .kind = K_TRANS_PT, .dtype = F32, .sd = 2, .n = 2,
     .c = 3, .k = 4, .in = {5, 4}, .ker = {3, 3}, .pad = {1, 1}, .str = {2, 2}, .adj = {1, 1}},
    {.name = "2d_transpose_pt_groups2_s2_adj1_f16", .kind = K_TRANS_PT, .dtype = F16, .sd = 2,
     .n = 1, .c = 6, .k = 4, .g = 2, .in = {4, 5}, .ker = {3, 3}, .str = {2, 2}, .adj = {1, 0}},
    {.name = "1d_transpose_pt_s3_adj2_f32", .kind = K_TRANS_PT, .dtype = F32, .sd = 2, .n = 2,
     .c = 2, .k = 3, .in = {1, 6}, .ker = {1, 4}, .pad = {0, 1}, .str = {1, 3}, .adj = {0, 2}},
    {.name = "3d_transpose_pt_s2_adj1_f32", .kind = K_TRANS_PT, .dtype = F32, .sd = 3, .n = 1,
     .c = 3, .k = 2, .in = {3, 3, 4}, .ker = {3, 3, 3}, .pad = {1, 1, 1}, .str = {2, 2, 2},
     .adj = {1, 0, 1}},
    {.name = "2d_transpose_pt_nhwc_d2_bf16", .kind = K_TRANS_PT, .dtype = BF16, .layout = L_NHWC,
     .sd = 2, .n = 2, .c = 4, .k = 4, .in = {4, 4}, .ker = {3, 3}, .pad = {1, 1}, .str = {2, 2},
     .dil = {2, 2}, .adj = {1, 1}},
    {.name = "2d_transpose_pt_k1_s2_adj1_f32", .kind = K_TRANS_PT, .dtype = F32, .sd = 2,
     .n = 2, .c = 3, .k = 4, .in = {4, 4}, .ker = {1, 1}, .str = {2, 2}, .adj = {1, 1}},
    /* ---- transposed convolution in MIOpen's miopenTranspose mode ---- */
    {.name = "2d_transpose_mode_s2_p1_adj1_f32", .kind = K_TRANS_MODE, .dtype = F32, .sd = 2,
     .n = 2, .c = 3, .k = 4, .in = {5, 4}, .ker = {3, 3}, .pad = {1, 1}, .str = {2, 2},
     .adj = {1, 1}},
    {.name = "2d_transpose_mode_groups2_f16", .kind = K_TRANS_MODE, .dtype = F16, .sd = 2,
     .n = 1, .c = 4, .k = 4, .g = 2, .in = {4, 5}, .ker = {3, 3}, .pad = {1, 1}, .str = {2, 2},
     .adj = {1, 0}},
    {.name = "1d_transpose_mode_s2_f32", .kind = K_TRANS_MODE, .dtype = F32, .sd = 2, .n = 2,
     .c = 3, .k = 2, .in = {1, 7}, .ker = {1, 3}, .pad = {0, 1}, .str = {1, 2}, .adj = {0, 1}},
    {.name = "3d_transpose_mode_f32", .kind = K_TRANS_MODE, .dtype = F32, .sd = 3, .n = 1,
     .c = 2, .k = 2, .in = {3, 3, 3}, .ker = {3, 3, 3}, .pad = {1, 1, 1}, .str = {2, 2, 2},
     .adj = {0, 1, 1}},
    {.name = "2d_transpose_mode_nhwc_bf16", .kind = K_TRANS_MODE, .dtype = BF16,
     .layout = L_NHWC, .sd = 2, .n = 1, .c = 4, .k = 3, .in = {4, 4}, .ker = {2, 2},
     .str = {2, 2}, .adj = {1, 1}},
    /* ---- alpha/beta != (1, 0), direct calls ---- */
    {.name = "2d_alpha_beta_f32", .kind = K_CONV, .dtype = F32, .sd = 2, .n = 2, .c = 3, .k = 4,
     .in = {6, 6}, .ker = {3, 3}, .pad = {1, 1}, .ab = 1, .alpha = 0.5f, .beta = 0.75f},
    {.name = "2d_alpha_beta_groups2_f16", .kind = K_CONV, .dtype = F16, .sd = 2, .n = 2, .c = 4,
     .k = 4, .g = 2, .in = {5, 5}, .ker = {3, 3}, .pad = {1, 1}, .ab = 1, .alpha = 2.0f,
     .beta = -1.0f},
    {.name = "2d_alpha2_beta0_bf16", .kind = K_CONV, .dtype = BF16, .sd = 2, .n = 2, .c = 3,
     .k = 4, .in = {6, 5}, .ker = {3, 3}, .pad = {1, 1}, .ab = 1, .alpha = 2.0f, .beta = 0.0f},
    {.name = "2d_alpha_beta_nhwc_f32", .kind = K_CONV, .dtype = F32, .layout = L_NHWC, .sd = 2,
     .n = 2, .c = 4, .k = 4, .in = {5, 6}, .ker = {3, 3}, .pad = {1, 1}, .str = {2, 2}, .ab = 1,
     .alpha = -1.5f, .beta = 0.25f},
    {.name = "2d_transpose_mode_alpha_beta_f32", .kind = K_TRANS_MODE, .dtype = F32, .sd = 2,
     .n = 1, .c = 3, .k = 2, .in = {4, 4}, .ker = {3, 3}, .pad = {1, 1}, .str = {2, 2},
     .adj = {1, 1}, .ab = 1, .alpha = 0.5f, .beta = 1.0f},
    {.name = "2d_k1_s2_alpha_beta_f32", .kind = K_CONV, .dtype = F32, .sd = 2, .n = 2, .c = 3,
     .k = 4, .in = {6, 4}, .ker = {1, 1}, .str = {2, 2}, .ab = 1, .alpha = 0.5f, .beta = 0.75f},
    {.name = "3d_alpha_beta_f32", .kind = K_CONV, .dtype = F32, .sd = 3, .n = 1, .c = 2, .k = 2,
     .in = {4, 4, 4}, .ker = {3, 3, 3}, .pad = {1, 1, 1}, .ab = 1, .alpha = 1.0f, .beta = 1.0f},
    /* ---- bias (miopenConvolutionForwardBias / BackwardBias) ---- */
    {.name = "2d_bias_f32", .kind = K_BIAS, .dtype = F32, .sd = 2, .n = 2, .k = 5, .in = {4, 3}},
    {.name = "2d_bias_alpha_beta_f32", .kind = K_BIAS, .dtype = F32, .sd = 2, .n = 2, .k = 3,
     .in = {3, 5}, .ab = 1, .alpha = 0.5f, .beta = 0.25f},
    {.name = "2d_bias_f16", .kind = K_BIAS, .dtype = F16, .sd = 2, .n = 3, .k = 4, .in = {5, 5}},
    {.name = "3d_bias_f32", .kind = K_BIAS, .dtype = F32, .sd = 3, .n = 1, .k = 3, .in = {2, 3, 4}},
    {.name = "1d_bias_alpha_beta_f16", .kind = K_BIAS, .dtype = F16, .sd = 2, .n = 2, .k = 4,
     .in = {1, 7}, .ab = 1, .alpha = 2.0f, .beta = -0.5f},
    /* ---- batch norm (names avoid "2d_": that filter selects convolutions) ---- */
    {.name = "bn_spatial_4d_nchw_f32", .kind = K_BN, .dtype = F32, .sd = 2, .n = 2, .c = 3,
     .in = {5, 4}, .bnm = SPATIAL},
    {.name = "bn_spatial_4d_nchw_f16", .kind = K_BN, .dtype = F16, .sd = 2, .n = 2, .c = 4,
     .in = {3, 5}, .bnm = SPATIAL},
    {.name = "bn_spatial_4d_nchw_bf16", .kind = K_BN, .dtype = BF16, .sd = 2, .n = 3, .c = 2,
     .in = {4, 4}, .bnm = SPATIAL},
    {.name = "bn_spatial_4d_nhwc_f32", .kind = K_BN, .dtype = F32, .layout = L_NHWC, .sd = 2,
     .n = 2, .c = 5, .in = {3, 3}, .bnm = SPATIAL},
    {.name = "bn_spatial_4d_nhwc_f16", .kind = K_BN, .dtype = F16, .layout = L_NHWC, .sd = 2,
     .n = 2, .c = 3, .in = {4, 3}, .bnm = SPATIAL},
    {.name = "bn_spatial_4d_padded_f32", .kind = K_BN, .dtype = F32, .layout = L_PADDED,
     .sd = 2, .n = 2, .c = 3, .in = {3, 4}, .bnm = SPATIAL},
    {.name = "bn_spatial_5d_ncdhw_f32", .kind = K_BN, .dtype = F32, .sd = 3, .n = 2, .c = 2,
     .in = {3, 2, 4}, .bnm = SPATIAL},
    {.name = "bn_spatial_5d_ndhwc_bf16", .kind = K_BN, .dtype = BF16, .layout = L_NHWC,
     .sd = 3, .n = 1, .c = 3, .in = {2, 3, 3}, .bnm = SPATIAL},
    {.name = "bn_spatial_4d_nc_l1_f32", .kind = K_BN, .dtype = F32, .sd = 2, .n = 3, .c = 4,
     .in = {7, 1}, .bnm = SPATIAL}, /* PyTorch's BatchNorm1d on (N, C, L) */
    {.name = "bn_peract_4d_nc11_f32", .kind = K_BN, .dtype = F32, .sd = 2, .n = 5, .c = 6,
     .in = {1, 1}, .bnm = PERACT}, /* PyTorch's BatchNorm1d on (N, C) */
    {.name = "bn_peract_4d_nchw_f32", .kind = K_BN, .dtype = F32, .sd = 2, .n = 4, .c = 2,
     .in = {3, 3}, .bnm = PERACT},
    {.name = "bn_peract_4d_nchw_f16", .kind = K_BN, .dtype = F16, .sd = 2, .n = 3, .c = 2,
     .in = {2, 3}, .bnm = PERACT},
    {.name = "bn_peract_5d_ncdhw_f32", .kind = K_BN, .dtype = F32, .sd = 3, .n = 3, .c = 2,
     .in = {2, 2, 2}, .bnm = PERACT},
    {.name = "bn_peract_4d_nhwc_bf16", .kind = K_BN, .dtype = BF16, .layout = L_NHWC, .sd = 2,
     .n = 4, .c = 3, .in = {2, 2}, .bnm = PERACT},
    {.name = "bn_spatial_4d_no_running_f32", .kind = K_BN, .dtype = F32, .sd = 2, .n = 2,
     .c = 3, .in = {3, 3}, .bnm = SPATIAL, .bnf = BNF_NO_RUNNING},
    {.name = "bn_spatial_4d_no_saved_f16", .kind = K_BN, .dtype = F16, .sd = 2, .n = 2, .c = 3,
     .in = {3, 3}, .bnm = SPATIAL, .bnf = BNF_NO_SAVED},
    {.name = "bn_spatial_4d_half_pairs_f32", .kind = K_BN, .dtype = F32, .sd = 2, .n = 2,
     .c = 3, .in = {2, 3}, .bnm = SPATIAL, .bnf = BNF_HALF_PAIR},
    {.name = "bn_peract_4d_no_stats_f32", .kind = K_BN, .dtype = F32, .sd = 2, .n = 3, .c = 2,
     .in = {2, 2}, .bnm = PERACT, .bnf = BNF_NO_RUNNING | BNF_NO_SAVED},
    {.name = "bn_spatial_4d_params_f16", .kind = K_BN, .dtype = F16, .sd = 2, .n = 2, .c = 3,
     .in = {3, 4}, .bnm = SPATIAL, .bnf = BNF_PARAM_SAME},
    {.name = "bn_spatial_4d_single_f32", .kind = K_BN, .dtype = F32, .sd = 2, .n = 1, .c = 3,
     .in = {1, 1}, .bnm = SPATIAL}, /* one element per channel: m / (m - 1) is skipped */
    {.name = "bn_spatial_4d_factor1_eps_f32", .kind = K_BN, .dtype = F32, .sd = 2, .n = 2,
     .c = 2, .in = {3, 3}, .bnm = SPATIAL, .factor = 1.0f, .eps = 0.5f},
    {.name = "bn_spatial_4d_alpha_beta_f32", .kind = K_BN, .dtype = F32, .sd = 2, .n = 2,
     .c = 3, .in = {3, 2}, .bnm = SPATIAL, .ab = 1, .alpha = 0.5f, .beta = 0.25f},
    {.name = "bn_peract_4d_alpha_beta_f16", .kind = K_BN, .dtype = F16, .layout = L_NHWC,
     .sd = 2, .n = 3, .c = 2, .in = {2, 2}, .bnm = PERACT, .ab = 1, .alpha = 2.0f,
     .beta = -1.0f},
    {.name = "bn_spatial_5d_alpha_beta_padded_bf16", .kind = K_BN, .dtype = BF16,
     .layout = L_PADDED, .sd = 3, .n = 2, .c = 2, .in = {2, 2, 3}, .bnm = SPATIAL, .ab = 1,
     .alpha = 1.0f, .beta = 1.0f},
    /* ---- one training step: conv -> batch norm -> backward through both ---- */
    {.name = "bn_step_conv_bn_f32", .kind = K_STEP, .dtype = F32, .sd = 2, .n = 2, .c = 3,
     .k = 4, .in = {6, 6}, .ker = {3, 3}, .pad = {1, 1}},
    {.name = "bn_step_conv_bn_nhwc_f16", .kind = K_STEP, .dtype = F16, .layout = L_NHWC,
     .sd = 2, .n = 2, .c = 3, .k = 4, .in = {5, 5}, .ker = {3, 3}, .pad = {1, 1}},
    {.name = "bn_step_conv_bn_3d_bf16", .kind = K_STEP, .dtype = BF16, .sd = 3, .n = 1, .c = 2,
     .k = 3, .in = {3, 4, 4}, .ker = {3, 3, 3}, .pad = {1, 1, 1}},
};
/* clang-format on */
#define NUM_CASES ((int)(sizeof g_cases / sizeof g_cases[0]))

static miopenHandle_t g_handle;
static hipStream_t g_stream;

/* ------------------------------------------------------------------ */
/* helpers                                                              */
/* ------------------------------------------------------------------ */

typedef struct {
    const char* role;
    nc_tensor t;
    size_t bytes;
    unsigned char* host; /* image uploaded to the device */
    unsigned char* back; /* image read back after the call */
    void* dev;
    miopenTensorDescriptor_t md;
    int is_output;
} tens_t;

typedef struct {
    char msg[512];
} why_t;

static int failf(why_t* w, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static int failf(why_t* w, const char* fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->msg, sizeof w->msg, fmt, ap);
    va_end(ap);
    return -1;
}

/* "name(args...)" -> length of "name" */
static int call_name_len(const char* call)
{
    const char* paren = strchr(call, '(');
    return paren ? (int)(paren - call) : (int)strlen(call);
}

#define HIPCHK(call)                                                                            \
    do {                                                                                        \
        hipError_t e_ = (call);                                                                 \
        if (e_ != hipSuccess)                                                                   \
            return failf(why, "%.*s failed: %s", call_name_len(#call), #call,                   \
                         hipGetErrorName(e_));                                                  \
    } while (0)

#define MIOCHK(call)                                                                            \
    do {                                                                                        \
        miopenStatus_t s_ = (call);                                                             \
        if (s_ != miopenStatusSuccess)                                                          \
            return failf(why, "%.*s returned %s", call_name_len(#call), #call,                  \
                         miopenGetErrorString(s_));                                             \
    } while (0)

static uint64_t rng_next(uint64_t* s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static double rng_uniform(uint64_t* s) /* [-1, 1) */
{
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0;
}

static uint64_t seed_for(const char* a, int mode, int dir)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char* p = a; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    h = (h ^ (uint64_t)(mode + 1)) * 1099511628211ULL;
    h = (h ^ (uint64_t)(dir + 17)) * 1099511628211ULL;
    return h ? h : 1;
}

static int val1(int v) { return v ? v : 1; }

static size_t* logical_offsets(const nc_tensor* t, size_t* count)
{
    size_t n = nc_num_elements(t);
    size_t* o = malloc((n ? n : 1) * sizeof *o);
    int idx[NC_MAX_DIMS] = {0};
    long long off = 0;
    for (size_t i = 0; i < n; i++) {
        o[i] = (size_t)off;
        for (int k = t->nd - 1; k >= 0; k--) {
            idx[k]++;
            off += t->strides[k];
            if (idx[k] < t->lens[k])
                break;
            off -= t->strides[k] * t->lens[k];
            idx[k] = 0;
        }
    }
    *count = n;
    return o;
}

static void padded_strides(nc_tensor* t)
{
    t->strides[t->nd - 1] = 1;
    for (int i = t->nd - 2; i >= 0; i--)
        t->strides[i] = t->strides[i + 1] * (t->lens[i + 1] + (i + 1 == t->nd - 1 ? 3 : 1));
    t->strides[0] += 5;
}

static void tens_init(tens_t* T, const char* role, int dtype, int nd, const int* lens,
                      layout_t layout, int is_weight)
{
    memset(T, 0, sizeof *T);
    T->role = role;
    T->t.dtype = dtype;
    T->t.nd = nd;
    for (int i = 0; i < nd; i++)
        T->t.lens[i] = lens[i];
    if (layout == L_NHWC)
        nc_channels_last_strides(&T->t);
    else if (layout == L_PADDED && !is_weight)
        padded_strides(&T->t);
    else
        nc_packed_strides(&T->t);
    T->bytes = nc_num_bytes(&T->t);
    T->host = malloc(T->bytes);
    T->back = malloc(T->bytes);
}

/* Fills the image: 0xA5 between elements; elements random in [-1, 1) rounded
 * to the type, or the all-ones sentinel (NaN for every float type). */
static void tens_fill(tens_t* T, uint64_t* rng, int sentinel)
{
    memset(T->host, 0xA5, T->bytes);
    size_t n;
    size_t* offs = logical_offsets(&T->t, &n);
    size_t es = nc_dtype_size(T->t.dtype);
    for (size_t i = 0; i < n; i++) {
        if (sentinel)
            memset(T->host + offs[i] * es, 0xFF, es);
        else
            nc_store(T->t.dtype, T->host, offs[i], rng_uniform(rng));
    }
    free(offs);
}

static int tens_device(tens_t* T, why_t* why)
{
    int dims[NC_MAX_DIMS], strides[NC_MAX_DIMS];
    for (int i = 0; i < T->t.nd; i++) {
        dims[i] = T->t.lens[i];
        strides[i] = (int)T->t.strides[i];
    }
    MIOCHK(miopenCreateTensorDescriptor(&T->md));
    MIOCHK(miopenSetTensorDescriptor(T->md, (miopenDataType_t)T->t.dtype, T->t.nd, dims,
                                     strides));
    size_t nb = 0;
    MIOCHK(miopenGetTensorNumBytes(T->md, &nb));
    if (nb != T->bytes)
        return failf(why, "miopenGetTensorNumBytes(%s) = %zu, expected %zu", T->role, nb,
                     T->bytes);
    HIPCHK(hipMalloc(&T->dev, T->bytes));
    /* garbage that any stale read turns into wrong results */
    HIPCHK(hipMemset(T->dev, 0x7F, T->bytes));
    return 0;
}

static void tens_free(tens_t* T)
{
    if (T->dev)
        hipFree(T->dev);
    if (T->md)
        miopenDestroyTensorDescriptor(T->md);
    free(T->host);
    free(T->back);
    memset(T, 0, sizeof *T);
}

static int upload(tens_t** ts, int nt, why_t* why)
{
    /* outputs first, inputs last: everything arrives after the call is issued */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < nt; i++)
            if ((pass == 0) == (ts[i]->is_output != 0))
                HIPCHK(hipMemcpyAsync(ts[i]->dev, ts[i]->host, ts[i]->bytes,
                                      hipMemcpyHostToDevice, g_stream));
    return 0;
}

static int download(tens_t** ts, int nt, why_t* why)
{
    for (int i = 0; i < nt; i++)
        HIPCHK(hipMemcpyAsync(ts[i]->back, ts[i]->dev, ts[i]->bytes, hipMemcpyDeviceToHost,
                              g_stream));
    HIPCHK(hipStreamSynchronize(g_stream));
    return 0;
}

static double rel_tol(int dtype, double L)
{
    switch (dtype) {
    case F16: return ldexp(1.0, -10) * (1.0 + 0.5 * sqrt(L));
    case BF16: return ldexp(1.0, -7) * (1.0 + 0.5 * sqrt(L));
    case F32: return 1e-4;
    default: return 1e-10;
    }
}

/* Compares the read-back output with the reference image `ref`. */
static int verify_output(const tens_t* O, const unsigned char* ref, double L, double* max_err,
                         double* tol_out, why_t* why)
{
    size_t n;
    size_t* offs = logical_offsets(&O->t, &n);
    size_t es = nc_dtype_size(O->t.dtype);
    unsigned char* mask = calloc(O->bytes ? O->bytes : 1, 1);
    double max_ref = 0.0;
    for (size_t i = 0; i < n; i++) {
        memset(mask + offs[i] * es, 1, es);
        double r = fabs(nc_load(O->t.dtype, ref, offs[i]));
        if (r > max_ref)
            max_ref = r;
    }
    double tol = fmax(max_ref, 1e-3) * rel_tol(O->t.dtype, L);
    *tol_out = tol;
    int rc = 0;
    for (size_t b = 0; b < O->bytes && rc == 0; b++)
        if (!mask[b] && O->back[b] != O->host[b])
            rc = failf(why, "%s: byte %zu between strided elements was overwritten", O->role, b);
    double worst = 0.0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        double want = nc_load(O->t.dtype, ref, offs[i]);
        double got = nc_load(O->t.dtype, O->back, offs[i]);
        double err = fabs(got - want);
        if (!(err <= tol)) {
            rc = failf(why,
                       "%s element %zu (offset %zu): got %.9g want %.9g (err %.3g > tol %.3g, "
                       "max|ref| %.3g)",
                       O->role, i, offs[i], got, want, err, tol, max_ref);
            worst = isnan(err) ? INFINITY : err;
        } else if (err > worst) {
            worst = err;
        }
    }
    *max_err = worst;
    free(mask);
    free(offs);
    return rc;
}

static int verify_inputs(tens_t** ts, int nt, why_t* why)
{
    for (int i = 0; i < nt; i++)
        if (!ts[i]->is_output && memcmp(ts[i]->host, ts[i]->back, ts[i]->bytes) != 0)
            return failf(why, "input %s was modified on the device", ts[i]->role);
    return 0;
}

/* ------------------------------------------------------------------ */
/* MIOpen call sequences                                                */
/* ------------------------------------------------------------------ */

enum { CALL_FWD, CALL_BWD_DATA, CALL_BWD_WEIGHTS };

typedef struct {
    int call;
    tens_t *a, *b, *out; /* MIOpen argument order: (x|dy, w|x, y|dx|dw) */
} plan_t;

static int get_workspace(const plan_t* p, miopenConvolutionDescriptor_t cd, size_t* ws,
                         why_t* why)
{
    switch (p->call) {
    case CALL_FWD:
        MIOCHK(miopenConvolutionForwardGetWorkSpaceSize(g_handle, p->b->md, p->a->md, cd,
                                                        p->out->md, ws));
        break;
    case CALL_BWD_DATA:
        MIOCHK(miopenConvolutionBackwardDataGetWorkSpaceSize(g_handle, p->a->md, p->b->md, cd,
                                                             p->out->md, ws));
        break;
    default:
        MIOCHK(miopenConvolutionBackwardWeightsGetWorkSpaceSize(g_handle, p->a->md, p->b->md, cd,
                                                                p->out->md, ws));
        break;
    }
    return 0;
}

/* PyTorch's findAlgorithm: workspace query, workspace, Find(requestAlgoCount = 1). */
static int find_algo(const plan_t* p, miopenConvolutionDescriptor_t cd, int exhaustive,
                     miopenConvAlgoPerf_t* perf, size_t* ws_reported, why_t* why)
{
    size_t ws_size = 0;
    void* ws = NULL;
    if (get_workspace(p, cd, &ws_size, why))
        return -1;
    *ws_reported = ws_size;
    if (ws_size)
        HIPCHK(hipMalloc(&ws, ws_size));
    int count = 0;
    miopenStatus_t st;
    memset(perf, 0, sizeof *perf);
    switch (p->call) {
    case CALL_FWD:
        st = miopenFindConvolutionForwardAlgorithm(g_handle, p->a->md, p->a->dev, p->b->md,
                                                   p->b->dev, cd, p->out->md, p->out->dev, 1,
                                                   &count, perf, ws, ws_size, exhaustive);
        break;
    case CALL_BWD_DATA:
        st = miopenFindConvolutionBackwardDataAlgorithm(g_handle, p->a->md, p->a->dev, p->b->md,
                                                        p->b->dev, cd, p->out->md, p->out->dev,
                                                        1, &count, perf, ws, ws_size, exhaustive);
        break;
    default:
        st = miopenFindConvolutionBackwardWeightsAlgorithm(
            g_handle, p->a->md, p->a->dev, p->b->md, p->b->dev, cd, p->out->md, p->out->dev, 1,
            &count, perf, ws, ws_size, exhaustive);
        break;
    }
    if (ws)
        HIPCHK(hipFree(ws));
    if (st != miopenStatusSuccess)
        return failf(why, "miopenFind*Algorithm returned %s", miopenGetErrorString(st));
    if (count < 1)
        return failf(why, "miopenFind*Algorithm returned %d results", count);
    return 0;
}

static int run_plain(const plan_t* p, miopenConvolutionDescriptor_t cd, int algo,
                     const void* alpha, const void* beta, void* ws, size_t ws_size, why_t* why)
{
    switch (p->call) {
    case CALL_FWD:
        MIOCHK(miopenConvolutionForward(g_handle, alpha, p->a->md, p->a->dev, p->b->md, p->b->dev,
                                        cd, (miopenConvFwdAlgorithm_t)algo, beta, p->out->md,
                                        p->out->dev, ws, ws_size));
        break;
    case CALL_BWD_DATA:
        MIOCHK(miopenConvolutionBackwardData(g_handle, alpha, p->a->md, p->a->dev, p->b->md,
                                             p->b->dev, cd, (miopenConvBwdDataAlgorithm_t)algo,
                                             beta, p->out->md, p->out->dev, ws, ws_size));
        break;
    default:
        MIOCHK(miopenConvolutionBackwardWeights(
            g_handle, alpha, p->a->md, p->a->dev, p->b->md, p->b->dev, cd,
            (miopenConvBwdWeightsAlgorithm_t)algo, beta, p->out->md, p->out->dev, ws, ws_size));
        break;
    }
    return 0;
}

static int get_solution(const plan_t* p, miopenConvolutionDescriptor_t cd,
                        miopenConvSolution_t* sol, why_t* why)
{
    enum { MAX_SOLUTIONS = 10 }; /* AT_MIOPEN_MAX_SOLUTIONS */
    size_t max_count = 0, count = 0;
    miopenConvSolution_t sols[MAX_SOLUTIONS];
    memset(sols, 0, sizeof sols);
    switch (p->call) {
    case CALL_FWD:
        MIOCHK(miopenConvolutionForwardGetSolutionCount(g_handle, p->b->md, p->a->md, cd,
                                                        p->out->md, &max_count));
        break;
    case CALL_BWD_DATA:
        MIOCHK(miopenConvolutionBackwardDataGetSolutionCount(g_handle, p->a->md, p->b->md, cd,
                                                             p->out->md, &max_count));
        break;
    default:
        MIOCHK(miopenConvolutionBackwardWeightsGetSolutionCount(g_handle, p->a->md, p->b->md, cd,
                                                                p->out->md, &max_count));
        break;
    }
    if (max_count > MAX_SOLUTIONS)
        return failf(why, "GetSolutionCount = %zu > %d", max_count, MAX_SOLUTIONS);
    if (max_count < 1)
        return failf(why, "GetSolutionCount = 0");
    switch (p->call) {
    case CALL_FWD:
        MIOCHK(miopenConvolutionForwardGetSolution(g_handle, p->b->md, p->a->md, cd, p->out->md,
                                                   max_count, &count, sols));
        break;
    case CALL_BWD_DATA:
        MIOCHK(miopenConvolutionBackwardDataGetSolution(g_handle, p->a->md, p->b->md, cd,
                                                        p->out->md, max_count, &count, sols));
        break;
    default:
        MIOCHK(miopenConvolutionBackwardWeightsGetSolution(g_handle, p->a->md, p->b->md, cd,
                                                           p->out->md, max_count, &count, sols));
        break;
    }
    if (count < 1 || count > max_count)
        return failf(why, "GetSolution returned %zu solutions (max %zu)", count, max_count);
    *sol = sols[0];
    return 0;
}

static int compile_solution(const plan_t* p, miopenConvolutionDescriptor_t cd, uint64_t id,
                            size_t* ws, why_t* why)
{
    switch (p->call) {
    case CALL_FWD:
        MIOCHK(miopenConvolutionForwardCompileSolution(g_handle, p->b->md, p->a->md, cd,
                                                       p->out->md, id));
        MIOCHK(miopenConvolutionForwardGetSolutionWorkspaceSize(g_handle, p->b->md, p->a->md, cd,
                                                                p->out->md, id, ws));
        break;
    case CALL_BWD_DATA:
        MIOCHK(miopenConvolutionBackwardDataCompileSolution(g_handle, p->a->md, p->b->md, cd,
                                                            p->out->md, id));
        MIOCHK(miopenConvolutionBackwardDataGetSolutionWorkspaceSize(
            g_handle, p->a->md, p->b->md, cd, p->out->md, id, ws));
        break;
    default:
        MIOCHK(miopenConvolutionBackwardWeightsCompileSolution(g_handle, p->a->md, p->b->md, cd,
                                                               p->out->md, id));
        MIOCHK(miopenConvolutionBackwardWeightsGetSolutionWorkspaceSize(
            g_handle, p->a->md, p->b->md, cd, p->out->md, id, ws));
        break;
    }
    return 0;
}

static int run_immediate(const plan_t* p, miopenConvolutionDescriptor_t cd, void* ws,
                         size_t ws_size, uint64_t id, why_t* why)
{
    switch (p->call) {
    case CALL_FWD:
        MIOCHK(miopenConvolutionForwardImmediate(g_handle, p->b->md, p->b->dev, p->a->md,
                                                 p->a->dev, cd, p->out->md, p->out->dev, ws,
                                                 ws_size, id));
        break;
    case CALL_BWD_DATA:
        MIOCHK(miopenConvolutionBackwardDataImmediate(g_handle, p->a->md, p->a->dev, p->b->md,
                                                      p->b->dev, cd, p->out->md, p->out->dev, ws,
                                                      ws_size, id));
        break;
    default:
        MIOCHK(miopenConvolutionBackwardWeightsImmediate(g_handle, p->a->md, p->a->dev, p->b->md,
                                                         p->b->dev, cd, p->out->md, p->out->dev,
                                                         ws, ws_size, id));
        break;
    }
    return 0;
}

/* Issues the mode's whole call sequence; the uploads happen right before the
 * convolution itself. Returns the workspace size the library reported. */
static int issue(const case_t* cs, int mode, const plan_t* p, miopenConvolutionDescriptor_t cd,
                 tens_t** all, int nt, size_t* ws_reported, void** ws_out, why_t* why)
{
    float alpha = cs->ab ? cs->alpha : 1.0f, beta = cs->ab ? cs->beta : 0.0f;
    void* ws = NULL;
    size_t ws_size = 0;
    if (mode == M_IMMEDIATE || mode == M_COMPILE) {
        miopenConvSolution_t sol = {0};
        if (get_solution(p, cd, &sol, why))
            return -1;
        ws_size = sol.workspace_size;
        if (mode == M_COMPILE && compile_solution(p, cd, sol.solution_id, &ws_size, why))
            return -1;
        *ws_reported = ws_size;
        if (ws_size)
            HIPCHK(hipMalloc(&ws, ws_size));
        *ws_out = ws;
        if (upload(all, nt, why))
            return -1;
        return run_immediate(p, cd, ws, ws_size, sol.solution_id, why);
    }
    int algo = 0;
    if (cs->ab) {
        /* direct call: no Find (it would clobber the output that beta reads) */
        if (get_workspace(p, cd, &ws_size, why))
            return -1;
        *ws_reported = ws_size;
    } else {
        miopenConvAlgoPerf_t perf;
        if (find_algo(p, cd, mode == M_BENCHMARK, &perf, ws_reported, why))
            return -1;
        algo = (int)perf.fwd_algo; /* same storage for all three union members */
        ws_size = perf.memory;
    }
    if (ws_size)
        HIPCHK(hipMalloc(&ws, ws_size));
    *ws_out = ws;
    if (upload(all, nt, why))
        return -1;
    return run_plain(p, cd, algo, &alpha, &beta, ws, ws_size, why);
}

/* ------------------------------------------------------------------ */
/* one check                                                            */
/* ------------------------------------------------------------------ */

static int applicable(const case_t* cs, int mode, int dir)
{
    if (cs->kind == K_BN)
        return (dir == DIR_BN_TRAIN || dir == DIR_BN_INFER || dir == DIR_BN_BWD) &&
               mode == M_DEFAULT;
    if (cs->kind == K_STEP)
        return dir == DIR_STEP && mode == M_DEFAULT;
    if (cs->kind == K_BIAS)
        return (dir == DIR_FWD_BIAS || dir == DIR_BWD_BIAS) && mode != M_IMMEDIATE &&
               mode != M_COMPILE;
    if (dir > DIR_BWD_WEIGHTS)
        return 0;
    if (cs->ab && (mode == M_IMMEDIATE || mode == M_COMPILE))
        return 0; /* the Immediate API has no alpha/beta */
    return 1;
}

static int conv_check(const case_t* cs, int mode, int dir, double* max_err, double* tol,
                      size_t* ws_reported, why_t* why)
{
    const int sd = cs->sd, nd = sd + 2, g = val1(cs->g);
    int pad[3], str[3], dil[3], adj[3], xs[3], ys[3];
    for (int i = 0; i < sd; i++) {
        pad[i] = cs->pad[i];
        str[i] = val1(cs->str[i]);
        dil[i] = val1(cs->dil[i]);
        adj[i] = cs->adj[i];
        int span = dil[i] * (cs->ker[i] - 1);
        if (cs->kind == K_TRANS_PT || cs->kind == K_TRANS_MODE) {
            ys[i] = cs->in[i];
            xs[i] = (cs->in[i] - 1) * str[i] - 2 * pad[i] + span + 1 + adj[i];
        } else {
            xs[i] = cs->in[i];
            ys[i] = (cs->in[i] + 2 * pad[i] - span - 1) / str[i] + 1;
        }
    }
    int xl[5] = {cs->n, cs->c}, wl[5] = {cs->k, cs->c / g}, yl[5] = {cs->n, cs->k};
    for (int i = 0; i < sd; i++) {
        xl[2 + i] = xs[i];
        wl[2 + i] = cs->ker[i];
        yl[2 + i] = ys[i];
    }

    tens_t X, W, Y;
    tens_init(&X, "x", cs->dtype, nd, xl, cs->layout, 0);
    tens_init(&W, "w", cs->dtype, nd, wl, cs->layout, 1);
    tens_init(&Y, "y", cs->dtype, nd, yl, cs->layout, 0);
    tens_t* all[3] = {&X, &W, &Y};

    /* Who is who, per kind and direction (see the case table). */
    plan_t p;
    switch (cs->kind) {
    case K_TRANS_PT: /* PyTorch's transposed conv: fwd = BackwardData, grad-input = Forward */
        if (dir == DIR_FWD)
            p = (plan_t){CALL_BWD_DATA, &Y, &W, &X};
        else if (dir == DIR_BWD_DATA)
            p = (plan_t){CALL_FWD, &X, &W, &Y};
        else
            p = (plan_t){CALL_BWD_WEIGHTS, &Y, &X, &W};
        break;
    case K_TRANS_MODE: /* miopenTranspose: x_t = Y, y_t = X */
        if (dir == DIR_FWD)
            p = (plan_t){CALL_FWD, &Y, &W, &X};
        else if (dir == DIR_BWD_DATA)
            p = (plan_t){CALL_BWD_DATA, &X, &W, &Y};
        else
            p = (plan_t){CALL_BWD_WEIGHTS, &X, &Y, &W};
        break;
    default:
        if (dir == DIR_FWD)
            p = (plan_t){CALL_FWD, &X, &W, &Y};
        else if (dir == DIR_BWD_DATA)
            p = (plan_t){CALL_BWD_DATA, &Y, &W, &X};
        else
            p = (plan_t){CALL_BWD_WEIGHTS, &Y, &X, &W};
        break;
    }
    p.out->is_output = 1;
    if (cs->kind == K_TRANS_MODE) { /* name the roles as the caller sees them */
        X.role = (dir == DIR_FWD) ? "y" : "dy";
        Y.role = (dir == DIR_BWD_DATA) ? "dx" : "x";
    } else {
        if (p.out == &X)
            X.role = "dx";
        if (p.out != &Y)
            Y.role = "dy";
    }
    if (p.out == &W)
        W.role = "dw";

    float alpha = cs->ab ? cs->alpha : 1.0f, beta = cs->ab ? cs->beta : 0.0f;
    uint64_t rng = seed_for(cs->name, mode, dir);
    for (int i = 0; i < 3; i++)
        tens_fill(all[i], &rng, all[i]->is_output && beta == 0.0f);

    miopenConvolutionDescriptor_t cd = NULL;
    void* ws = NULL;
    int rc = 0;
    miopenConvolutionMode_t cmode = cs->kind == K_DEPTHWISE    ? miopenDepthwise
                                    : cs->kind == K_TRANS_MODE ? miopenTranspose
                                                               : miopenConvolution;
    for (int i = 0; i < 3 && rc == 0; i++)
        rc = tens_device(all[i], why);
    if (rc == 0) {
        rc = -1;
        do {
            if (miopenCreateConvolutionDescriptor(&cd) != miopenStatusSuccess ||
                miopenInitConvolutionNdDescriptor(cd, sd, pad, str, dil, cmode) !=
                    miopenStatusSuccess ||
                miopenSetConvolutionGroupCount(cd, g) != miopenStatusSuccess) {
                failf(why, "convolution descriptor setup failed");
                break;
            }
            if (cmode == miopenTranspose &&
                miopenSetTransposeConvNdOutputPadding(cd, sd, adj) != miopenStatusSuccess) {
                failf(why, "miopenSetTransposeConvNdOutputPadding failed");
                break;
            }
            if (miopenSetConvolutionAttribute(cd, MIOPEN_CONVOLUTION_ATTRIB_DETERMINISTIC,
                                              mode == M_DETERMINISTIC) != miopenStatusSuccess) {
                failf(why, "miopenSetConvolutionAttribute(DETERMINISTIC) failed");
                break;
            }
            if (mode == M_BENCHMARK &&
                miopenSetConvolutionFindMode(cd, miopenConvolutionFindModeNormal) !=
                    miopenStatusSuccess) {
                failf(why, "miopenSetConvolutionFindMode failed");
                break;
            }
            /* The library's own output-size rule must agree with our geometry. */
            int ond = 0, odims[NC_MAX_DIMS];
            const tens_t* fin = cmode == miopenTranspose ? &Y : &X;
            const tens_t* fout = cmode == miopenTranspose ? &X : &Y;
            if (miopenGetConvolutionNdForwardOutputDim(cd, fin->md, W.md, &ond, odims) !=
                    miopenStatusSuccess ||
                ond != nd) {
                failf(why, "miopenGetConvolutionNdForwardOutputDim failed");
                break;
            }
            int same = 1;
            for (int i = 0; i < nd; i++)
                same &= odims[i] == fout->t.lens[i];
            if (!same) {
                failf(why, "miopenGetConvolutionNdForwardOutputDim disagrees with the case");
                break;
            }
            if (issue(cs, mode, &p, cd, all, 3, ws_reported, &ws, why))
                break;
            if (download(all, 3, why))
                break;
            rc = 0;
        } while (0);
    }
    if (rc == 0)
        rc = verify_inputs(all, 3, why);
    if (rc == 0) {
        /* reference, always in regular-convolution roles */
        nc_conv c = {.spatial = sd, .groups = g, .transpose = 0};
        for (int i = 0; i < sd; i++) {
            c.pad[i] = pad[i];
            c.stride[i] = str[i];
            c.dil[i] = dil[i];
        }
        tens_t* O = p.out;
        unsigned char* ref = malloc(O->bytes);
        memcpy(ref, O->host, O->bytes);
        char err[256];
        int e;
        double L, taps = 1;
        for (int i = 0; i < sd; i++)
            taps *= cs->ker[i];
        if (O == &Y) {
            e = nc_conv_run(NC_FWD, &c, &X.t, X.host, &W.t, W.host, &Y.t, ref, alpha, beta, err,
                            sizeof err);
            L = (double)(cs->c / g) * taps;
        } else if (O == &X) {
            e = nc_conv_run(NC_BWD_DATA, &c, &Y.t, Y.host, &W.t, W.host, &X.t, ref, alpha, beta,
                            err, sizeof err);
            L = (double)(cs->k / g) * taps;
        } else {
            e = nc_conv_run(NC_BWD_WEIGHTS, &c, &Y.t, Y.host, &X.t, X.host, &W.t, ref, alpha,
                            beta, err, sizeof err);
            L = (double)nc_num_elements(&Y.t) / cs->k;
        }
        if (beta != 0.0f)
            L += 1;
        if (e)
            rc = failf(why, "reference failed: %s", err);
        else
            rc = verify_output(O, ref, L, max_err, tol, why);
        free(ref);
    }
    if (ws)
        hipFree(ws);
    if (cd)
        miopenDestroyConvolutionDescriptor(cd);
    for (int i = 0; i < 3; i++)
        tens_free(all[i]);
    return rc;
}

static int bias_check(const case_t* cs, int mode, int dir, double* max_err, double* tol,
                      why_t* why)
{
    const int nd = cs->sd + 2;
    int yl[5] = {cs->n, cs->k}, bl[5] = {1, cs->k};
    for (int i = 0; i < cs->sd; i++) {
        yl[2 + i] = cs->in[i];
        bl[2 + i] = 1;
    }
    tens_t Y, B;
    tens_init(&Y, dir == DIR_FWD_BIAS ? "y" : "dy", cs->dtype, nd, yl, cs->layout, 0);
    tens_init(&B, dir == DIR_FWD_BIAS ? "b" : "db", cs->dtype, nd, bl, L_NCHW, 0);
    tens_t* all[2] = {&Y, &B};
    tens_t* O = dir == DIR_FWD_BIAS ? &Y : &B;
    O->is_output = 1;
    float alpha = cs->ab ? cs->alpha : 1.0f, beta = cs->ab ? cs->beta : 0.0f;
    uint64_t rng = seed_for(cs->name, mode, dir);
    /* ForwardBias always reads y; BackwardBias reads db only when beta != 0 */
    tens_fill(&Y, &rng, 0);
    tens_fill(&B, &rng, dir == DIR_BWD_BIAS && beta == 0.0f);
    int rc = 0;
    for (int i = 0; i < 2 && rc == 0; i++)
        rc = tens_device(all[i], why);
    if (rc == 0)
        rc = upload(all, 2, why);
    if (rc == 0) {
        miopenStatus_t st =
            dir == DIR_FWD_BIAS
                ? miopenConvolutionForwardBias(g_handle, &alpha, B.md, B.dev, &beta, Y.md, Y.dev)
                : miopenConvolutionBackwardBias(g_handle, &alpha, Y.md, Y.dev, &beta, B.md,
                                                B.dev);
        if (st != miopenStatusSuccess)
            rc = failf(why, "%s returned %s",
                       dir == DIR_FWD_BIAS ? "miopenConvolutionForwardBias"
                                           : "miopenConvolutionBackwardBias",
                       miopenGetErrorString(st));
    }
    if (rc == 0)
        rc = download(all, 2, why);
    if (rc == 0)
        rc = verify_inputs(all, 2, why);
    if (rc == 0) {
        unsigned char* ref = malloc(O->bytes);
        memcpy(ref, O->host, O->bytes);
        char err[256];
        int e;
        double L;
        if (dir == DIR_FWD_BIAS) {
            e = nc_forward_bias(&B.t, B.host, &Y.t, ref, alpha, beta, err, sizeof err);
            L = 3;
        } else {
            e = nc_backward_bias(&Y.t, Y.host, &B.t, ref, alpha, beta, err, sizeof err);
            L = (double)nc_num_elements(&Y.t) / cs->k + (beta != 0.0f);
        }
        rc = e ? failf(why, "reference failed: %s", err)
               : verify_output(O, ref, L, max_err, tol, why);
        free(ref);
    }
    for (int i = 0; i < 2; i++)
        tens_free(all[i]);
    return rc;
}

/* ------------------------------------------------------------------ */
/* batch norm                                                           */
/* ------------------------------------------------------------------ */

static double bn_factor(const case_t* cs) { return cs->factor != 0.0f ? cs->factor : 0.1; }
static double bn_eps(const case_t* cs) { return cs->eps != 0.0f ? cs->eps : 1e-5; }

/* Every element v becomes a * v + b + step * (channel % 4): positive variances,
 * means away from zero. */
static void tens_affine(tens_t* T, double a, double b, double step)
{
    size_t n;
    size_t* offs = logical_offsets(&T->t, &n);
    size_t S = 1;
    for (int i = 2; i < T->t.nd; i++)
        S *= (size_t)T->t.lens[i];
    for (size_t i = 0; i < n; i++) {
        double v = nc_load(T->t.dtype, T->host, offs[i]);
        double c = (double)((i / S) % (size_t)T->t.lens[1] % 4);
        nc_store(T->t.dtype, T->host, offs[i], a * v + b + step * c);
    }
    free(offs);
}

/* Reference images: a copy of what was uploaded for each output, for the
 * reference to write into; NULL for the others. */
static void refs_init(tens_t** all, int nt, unsigned char** ref)
{
    for (int i = 0; i < nt; i++) {
        ref[i] = NULL;
        if (all[i]->is_output) {
            ref[i] = malloc(all[i]->bytes ? all[i]->bytes : 1);
            memcpy(ref[i], all[i]->host, all[i]->bytes);
        }
    }
}

/* Checks every output against its reference image with tolerance parameter
 * L[i]; keeps the largest error and tolerance; frees the images. */
static int refs_check(tens_t** all, int nt, unsigned char** ref, const double* L,
                      double* max_err, double* tol, why_t* why)
{
    int rc = 0;
    for (int i = 0; i < nt; i++) {
        if (ref[i] && rc == 0) {
            double e = 0, t = 0;
            rc = verify_output(all[i], ref[i], L[i], &e, &t, why);
            *max_err = fmax(*max_err, e);
            *tol = fmax(*tol, t);
        }
        free(ref[i]);
        ref[i] = NULL;
    }
    return rc;
}

static void refs_free(unsigned char** ref, int nt)
{
    for (int i = 0; i < nt; i++) {
        free(ref[i]);
        ref[i] = NULL;
    }
}

/* Tensors of one batch-norm check, in this order. */
enum { BN_X, BN_Y, BN_DX, BN_SCALE, BN_BIAS, BN_MEAN, BN_VAR, BN_SMEAN, BN_SINV, BN_DS, BN_DB,
       BN_NT };

static int bn_check(const case_t* cs, int dir, double* max_err, double* tol, why_t* why)
{
    const int nd = cs->sd + 2, mode = cs->bnm, f = cs->bnf;
    const int train = dir == DIR_BN_TRAIN, infer = dir == DIR_BN_INFER, bwd = dir == DIR_BN_BWD;
    int xl[5] = {cs->n, cs->c}, pl[5] = {1, cs->c};
    for (int i = 0; i < cs->sd; i++) {
        xl[2 + i] = cs->in[i];
        pl[2 + i] = mode == SPATIAL ? 1 : cs->in[i];
    }
    const int pdt = (f & BNF_PARAM_SAME) ? cs->dtype : F32;
    const double factor = bn_factor(cs), eps = bn_eps(cs);
    float alpha = cs->ab ? cs->alpha : 1.0f, beta = cs->ab ? cs->beta : 0.0f;

    /* Which statistics pointers are passed; MIOpen uses a pair only when both are.
     * mean/var: running (training), estimated (inference), saved (backward input);
     * smean/sinv: saved (training output). */
    int pass_mean = 1, pass_smean = 1;
    if ((train || infer) && (f & BNF_NO_RUNNING))
        pass_mean = 0;
    if (bwd && (f & BNF_NO_SAVED))
        pass_mean = 0;
    if (train && (f & BNF_NO_SAVED))
        pass_smean = 0;
    const int half = (f & BNF_HALF_PAIR) != 0;
    const int pass_var = pass_mean && !half, pass_sinv = pass_smean && !half;
    const int pair = pass_mean && pass_var, saved_pair = pass_smean && pass_sinv;

    tens_t T[BN_NT];
    memset(T, 0, sizeof T);
    tens_init(&T[BN_X], "x", cs->dtype, nd, xl, cs->layout, 0);
    tens_init(&T[BN_Y], bwd ? "dy" : "y", cs->dtype, nd, xl, cs->layout, 0);
    tens_init(&T[BN_SCALE], "scale", pdt, nd, pl, L_NCHW, 0);
    tens_init(&T[BN_MEAN], train ? "running_mean" : infer ? "estimated_mean" : "saved_mean", pdt,
              nd, pl, L_NCHW, 0);
    tens_init(&T[BN_VAR], train ? "running_var" : infer ? "estimated_var" : "saved_inv_var",
              pdt, nd, pl, L_NCHW, 0);
    if (bwd) {
        tens_init(&T[BN_DX], "dx", cs->dtype, nd, xl, cs->layout, 0);
        tens_init(&T[BN_DS], "dscale", pdt, nd, pl, L_NCHW, 0);
        tens_init(&T[BN_DB], "dbias", pdt, nd, pl, L_NCHW, 0);
        T[BN_DX].is_output = T[BN_DS].is_output = T[BN_DB].is_output = 1;
    } else {
        tens_init(&T[BN_BIAS], "bias", pdt, nd, pl, L_NCHW, 0);
        T[BN_Y].is_output = 1;
    }
    if (train) {
        tens_init(&T[BN_SMEAN], "saved_mean", pdt, nd, pl, L_NCHW, 0);
        tens_init(&T[BN_SINV], "saved_inv_var", pdt, nd, pl, L_NCHW, 0);
        /* a lone pointer of a pair is never written: checked as an input */
        T[BN_MEAN].is_output = T[BN_VAR].is_output = pair;
        T[BN_SMEAN].is_output = T[BN_SINV].is_output = saved_pair;
    }

    tens_t* all[BN_NT];
    double L[BN_NT];
    int nt = 0, idx[BN_NT];
    for (int i = 0; i < BN_NT; i++)
        if (T[i].host) {
            idx[i] = nt;
            all[nt++] = &T[i];
        }
    /* Outputs start as NaN unless blended (beta) or updated (running statistics). */
    uint64_t rng = seed_for(cs->name, M_DEFAULT, dir);
    for (int i = 0; i < BN_NT; i++) {
        if (!T[i].host)
            continue;
        int blended = beta != 0.0f && (i == BN_Y || i == BN_DX || i == BN_DS || i == BN_DB);
        int updated = train && (i == BN_MEAN || i == BN_VAR);
        tens_fill(&T[i], &rng, T[i].is_output && !blended && !updated);
    }
    tens_affine(&T[BN_X], 1.5, 0.0, 0.75);
    tens_affine(&T[BN_SCALE], 0.5, 1.0, 0.0);
    if (!bwd)
        tens_affine(&T[BN_VAR], 0.4, 1.0, 0.0); /* running or estimated variance > 0 */
    int rc = 0;
    char err[256];
    if (bwd) {
        /* saved statistics as the forward pass leaves them */
        tens_t Yt, Bt;
        tens_init(&Yt, "y", cs->dtype, nd, xl, cs->layout, 0);
        tens_init(&Bt, "bias", pdt, nd, pl, L_NCHW, 0);
        memset(Bt.host, 0, Bt.bytes);
        if (nb_forward_training(mode, &T[BN_X].t, T[BN_X].host, &Yt.t, Yt.host, &T[BN_SCALE].t,
                                T[BN_SCALE].host, Bt.host, 0.0, NULL, NULL, eps,
                                T[BN_MEAN].host, T[BN_VAR].host, 1.0, 0.0, err, sizeof err))
            rc = failf(why, "reference (saved statistics) failed: %s", err);
        tens_free(&Yt);
        tens_free(&Bt);
    }
    for (int i = 0; i < nt && rc == 0; i++)
        rc = tens_device(all[i], why);
    if (rc == 0)
        rc = upload(all, nt, why);
    if (rc == 0) {
        void* m = pass_mean ? T[BN_MEAN].dev : NULL;
        void* v = pass_var ? T[BN_VAR].dev : NULL;
        miopenBatchNormMode_t bm = (miopenBatchNormMode_t)mode;
        miopenStatus_t st;
        const char* fn;
        if (train) {
            fn = "miopenBatchNormalizationForwardTraining";
            st = miopenBatchNormalizationForwardTraining(
                g_handle, bm, &alpha, &beta, T[BN_X].md, T[BN_X].dev, T[BN_Y].md, T[BN_Y].dev,
                T[BN_SCALE].md, T[BN_SCALE].dev, T[BN_BIAS].dev, factor, m, v, eps,
                pass_smean ? T[BN_SMEAN].dev : NULL, pass_sinv ? T[BN_SINV].dev : NULL);
        } else if (infer) {
            fn = "miopenBatchNormalizationForwardInference";
            st = miopenBatchNormalizationForwardInference(
                g_handle, bm, &alpha, &beta, T[BN_X].md, T[BN_X].dev, T[BN_Y].md, T[BN_Y].dev,
                T[BN_SCALE].md, T[BN_SCALE].dev, T[BN_BIAS].dev, m, v, eps);
        } else {
            fn = "miopenBatchNormalizationBackward";
            st = miopenBatchNormalizationBackward(
                g_handle, bm, &alpha, &beta, &alpha, &beta, T[BN_X].md, T[BN_X].dev, T[BN_Y].md,
                T[BN_Y].dev, T[BN_DX].md, T[BN_DX].dev, T[BN_SCALE].md, T[BN_SCALE].dev,
                T[BN_DS].dev, T[BN_DB].dev, eps, m, v);
        }
        if (st != miopenStatusSuccess)
            rc = failf(why, "%s returned %s", fn, miopenGetErrorString(st));
    }
    if (rc == 0)
        rc = download(all, nt, why);
    if (rc == 0)
        rc = verify_inputs(all, nt, why);
    if (rc == 0) {
        unsigned char* ref[BN_NT];
        refs_init(all, nt, ref);
#define REF(t) (T[t].host ? ref[idx[t]] : NULL)
        tens_t *X = &T[BN_X], *Y = &T[BN_Y], *P = &T[BN_SCALE];
        int e;
        if (train)
            e = nb_forward_training(mode, &X->t, X->host, &Y->t, REF(BN_Y), &P->t, P->host,
                                    T[BN_BIAS].host, factor, REF(BN_MEAN), REF(BN_VAR), eps,
                                    REF(BN_SMEAN), REF(BN_SINV), alpha, beta, err, sizeof err);
        else if (infer)
            e = nb_forward_inference(mode, &X->t, X->host, &Y->t, REF(BN_Y), &P->t, P->host,
                                     T[BN_BIAS].host, pass_mean ? T[BN_MEAN].host : NULL,
                                     pass_var ? T[BN_VAR].host : NULL, eps, alpha, beta, err,
                                     sizeof err);
        else
            e = nb_backward(mode, &X->t, X->host, &Y->t, Y->host, &T[BN_DX].t, REF(BN_DX), &P->t,
                            P->host, REF(BN_DS), REF(BN_DB), eps,
                            pass_mean ? T[BN_MEAN].host : NULL, pass_var ? T[BN_VAR].host : NULL,
                            alpha, beta, alpha, beta, err, sizeof err);
#undef REF
        if (e) {
            refs_free(ref, nt);
            rc = failf(why, "reference failed: %s", err);
        } else {
            /* y: one rounding (plus beta's term); sums over m elements otherwise */
            double m = (double)nc_num_elements(&X->t) / (double)nc_num_elements(&P->t);
            for (int i = 0; i < nt; i++)
                L[i] = (all[i] == Y ? 1 : m) + (beta != 0.0f);
            rc = refs_check(all, nt, ref, L, max_err, tol, why);
        }
    }
    for (int i = 0; i < nt; i++)
        tens_free(all[i]);
    return rc;
}

/* One training step as PyTorch runs it: conv forward (Find + Forward), batch
 * norm training, batch norm backward, conv backward-data and backward-weights
 * (Find + call each), issued back to back on the stream. Each stage is then
 * checked against the reference applied to the device's own inputs of that
 * stage. */
enum { ST_X, ST_W, ST_YC, ST_Z, ST_DZ, ST_DYC, ST_DX, ST_DW, ST_SCALE, ST_BIAS, ST_RM, ST_RV,
       ST_SM, ST_SI, ST_DS, ST_DB, ST_NT };

static int step_conv(const plan_t* p, miopenConvolutionDescriptor_t cd, why_t* why)
{
    miopenConvAlgoPerf_t perf;
    size_t ws_reported = 0;
    if (find_algo(p, cd, 0, &perf, &ws_reported, why))
        return -1;
    void* ws = NULL;
    if (perf.memory)
        HIPCHK(hipMalloc(&ws, perf.memory));
    float one = 1.0f, zero = 0.0f;
    int rc = run_plain(p, cd, (int)perf.fwd_algo, &one, &zero, ws, perf.memory, why);
    if (ws)
        hipFree(ws);
    return rc;
}

/* The batch-norm stages of the step: training on the convolution's output,
 * then backward with the saved statistics, as PyTorch calls them. */
static int step_bn(tens_t* T, double factor, double eps, why_t* why)
{
    float one = 1.0f, zero = 0.0f;
    MIOCHK(miopenBatchNormalizationForwardTraining(
        g_handle, miopenBNSpatial, &one, &zero, T[ST_YC].md, T[ST_YC].dev, T[ST_Z].md,
        T[ST_Z].dev, T[ST_SCALE].md, T[ST_SCALE].dev, T[ST_BIAS].dev, factor, T[ST_RM].dev,
        T[ST_RV].dev, eps, T[ST_SM].dev, T[ST_SI].dev));
    MIOCHK(miopenBatchNormalizationBackward(
        g_handle, miopenBNSpatial, &one, &zero, &one, &zero, T[ST_YC].md, T[ST_YC].dev,
        T[ST_DZ].md, T[ST_DZ].dev, T[ST_DYC].md, T[ST_DYC].dev, T[ST_SCALE].md, T[ST_SCALE].dev,
        T[ST_DS].dev, T[ST_DB].dev, eps, T[ST_SM].dev, T[ST_SI].dev));
    return 0;
}

static int step_check(const case_t* cs, double* max_err, double* tol, why_t* why)
{
    const int sd = cs->sd, nd = sd + 2, K = cs->k;
    int pad[3], one3[3] = {1, 1, 1};
    int xl[5] = {cs->n, cs->c}, wl[5] = {K, cs->c}, yl[5] = {cs->n, K}, pl[5] = {1, K};
    double taps = 1, out_pos = 1;
    for (int i = 0; i < sd; i++) {
        pad[i] = cs->pad[i];
        xl[2 + i] = cs->in[i];
        wl[2 + i] = cs->ker[i];
        yl[2 + i] = cs->in[i] + 2 * pad[i] - cs->ker[i] + 1;
        pl[2 + i] = 1;
        taps *= cs->ker[i];
        out_pos *= yl[2 + i];
    }
    const double factor = bn_factor(cs), eps = bn_eps(cs);
    static const char* const names[ST_NT] = {
        "x",     "w",    "conv_y",       "bn_y",        "bn_dy",         "conv_dy",
        "dx",    "dw",   "scale",        "bias",        "running_mean",  "running_var",
        "saved_mean",    "saved_inv_var", "dscale",     "dbias"};
    tens_t T[ST_NT];
    tens_t* all[ST_NT];
    for (int i = 0; i < ST_NT; i++) {
        const int* lens = i == ST_X || i == ST_DX ? xl : i == ST_W || i == ST_DW ? wl
                          : i >= ST_SCALE                                       ? pl
                                                                                : yl;
        int is_param = i >= ST_SCALE;
        tens_init(&T[i], names[i], is_param ? F32 : cs->dtype, nd, lens,
                  is_param ? L_NCHW : cs->layout, i == ST_W || i == ST_DW);
        T[i].is_output = !(i == ST_X || i == ST_W || i == ST_DZ || i == ST_SCALE || i == ST_BIAS);
        all[i] = &T[i];
    }
    uint64_t rng = seed_for(cs->name, M_DEFAULT, DIR_STEP);
    for (int i = 0; i < ST_NT; i++)
        tens_fill(&T[i], &rng, T[i].is_output && i != ST_RM && i != ST_RV);
    tens_affine(&T[ST_SCALE], 0.5, 1.0, 0.0);
    tens_affine(&T[ST_RV], 0.4, 1.0, 0.0);
    miopenConvolutionDescriptor_t cd = NULL;
    int rc = 0;
    for (int i = 0; i < ST_NT && rc == 0; i++)
        rc = tens_device(&T[i], why);
    if (rc == 0 && (miopenCreateConvolutionDescriptor(&cd) != miopenStatusSuccess ||
                    miopenInitConvolutionNdDescriptor(cd, sd, pad, one3, one3,
                                                      miopenConvolution) != miopenStatusSuccess))
        rc = failf(why, "convolution descriptor setup failed");
    if (rc == 0)
        rc = upload(all, ST_NT, why);
    if (rc == 0) {
        plan_t p = {CALL_FWD, &T[ST_X], &T[ST_W], &T[ST_YC]};
        rc = step_conv(&p, cd, why);
    }
    if (rc == 0)
        rc = step_bn(T, factor, eps, why);
    if (rc == 0) {
        plan_t p = {CALL_BWD_DATA, &T[ST_DYC], &T[ST_W], &T[ST_DX]};
        rc = step_conv(&p, cd, why);
    }
    if (rc == 0) {
        plan_t p = {CALL_BWD_WEIGHTS, &T[ST_DYC], &T[ST_X], &T[ST_DW]};
        rc = step_conv(&p, cd, why);
    }
    if (rc == 0)
        rc = download(all, ST_NT, why);
    if (rc == 0)
        rc = verify_inputs(all, ST_NT, why);
    if (rc == 0) {
        unsigned char* ref[ST_NT];
        double L[ST_NT];
        refs_init(all, ST_NT, ref);
        nc_conv c = {.spatial = sd, .groups = 1, .transpose = 0};
        for (int i = 0; i < sd; i++) {
            c.pad[i] = pad[i];
            c.stride[i] = c.dil[i] = 1;
        }
        const double m = cs->n * out_pos;
        for (int i = 0; i < ST_NT; i++)
            L[i] = m;
        L[ST_YC] = cs->c * taps;
        L[ST_Z] = 1;
        L[ST_DX] = K * taps;
        char err[256];
        int e = nc_conv_run(NC_FWD, &c, &T[ST_X].t, T[ST_X].host, &T[ST_W].t, T[ST_W].host,
                            &T[ST_YC].t, ref[ST_YC], 1.0, 0.0, err, sizeof err);
        /* the later stages read what the device holds */
        if (!e)
            e = nb_forward_training(NB_SPATIAL, &T[ST_YC].t, T[ST_YC].back, &T[ST_Z].t, ref[ST_Z],
                                    &T[ST_SCALE].t, T[ST_SCALE].host, T[ST_BIAS].host, factor,
                                    ref[ST_RM], ref[ST_RV], eps, ref[ST_SM], ref[ST_SI], 1.0, 0.0,
                                    err, sizeof err);
        if (!e)
            e = nb_backward(NB_SPATIAL, &T[ST_YC].t, T[ST_YC].back, &T[ST_DZ].t, T[ST_DZ].host,
                            &T[ST_DYC].t, ref[ST_DYC], &T[ST_SCALE].t, T[ST_SCALE].host,
                            ref[ST_DS], ref[ST_DB], eps, T[ST_SM].back, T[ST_SI].back, 1.0, 0.0,
                            1.0, 0.0, err, sizeof err);
        if (!e)
            e = nc_conv_run(NC_BWD_DATA, &c, &T[ST_DYC].t, T[ST_DYC].back, &T[ST_W].t,
                            T[ST_W].host, &T[ST_DX].t, ref[ST_DX], 1.0, 0.0, err, sizeof err);
        if (!e)
            e = nc_conv_run(NC_BWD_WEIGHTS, &c, &T[ST_DYC].t, T[ST_DYC].back, &T[ST_X].t,
                            T[ST_X].host, &T[ST_DW].t, ref[ST_DW], 1.0, 0.0, err, sizeof err);
        if (e) {
            refs_free(ref, ST_NT);
            rc = failf(why, "reference failed: %s", err);
        } else {
            rc = refs_check(all, ST_NT, ref, L, max_err, tol, why);
        }
    }
    if (cd)
        miopenDestroyConvolutionDescriptor(cd);
    for (int i = 0; i < ST_NT; i++)
        tens_free(&T[i]);
    return rc;
}

/* ------------------------------------------------------------------ */
/* driver                                                               */
/* ------------------------------------------------------------------ */

static void usage(FILE* f)
{
    fprintf(f, "usage: harness [--mode default|benchmark|deterministic|immediate|compile|all]\n"
               "               [--case SUBSTRING] [--list]\n"
               "               [--only fwd|bwd_data|bwd_weights|bias|fwd_bias|bwd_bias|\n"
               "                       bn|bn_train|bn_infer|bn_bwd|train_step]\n");
}

static int dir_selected(const char* only, int dir)
{
    if (!only)
        return 1;
    if (strcmp(only, "bias") == 0)
        return dir == DIR_FWD_BIAS || dir == DIR_BWD_BIAS;
    if (strcmp(only, "bn") == 0)
        return dir >= DIR_BN_TRAIN && dir <= DIR_STEP;
    return strcmp(only, dir_names[dir]) == 0;
}

__attribute__((visibility("default"))) int harness_main(int argc, char** argv);

int harness_main(int argc, char** argv)
{
    const char* mode_arg = "all";
    const char* case_filter = NULL;
    const char* only = NULL;
    int list = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--mode") == 0 && i + 1 < argc) {
            mode_arg = argv[++i];
        } else if (strcmp(argv[i], "--case") == 0 && i + 1 < argc) {
            case_filter = argv[++i];
        } else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            only = argv[++i];
        } else if (strcmp(argv[i], "--list") == 0) {
            list = 1;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "harness: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    int modes[M_COUNT], nmodes = 0;
    if (strcmp(mode_arg, "all") == 0) {
        for (int m = 0; m < M_COUNT; m++)
            modes[nmodes++] = m;
    } else {
        for (int m = 0; m < M_COUNT; m++)
            if (strcmp(mode_arg, mode_names[m]) == 0)
                modes[nmodes++] = m;
    }
    if (nmodes == 0) {
        fprintf(stderr, "harness: unknown mode '%s'\n", mode_arg);
        usage(stderr);
        return 2;
    }
    int only_ok = !only || strcmp(only, "bias") == 0 || strcmp(only, "bn") == 0;
    for (int d = 0; d < DIR_COUNT && !only_ok; d++)
        only_ok = strcmp(only, dir_names[d]) == 0;
    if (!only_ok) {
        fprintf(stderr, "harness: unknown --only '%s'\n", only);
        usage(stderr);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    if (list) {
        for (int c = 0; c < NUM_CASES; c++) {
            const case_t* cs = &g_cases[c];
            if (case_filter && !strstr(cs->name, case_filter))
                continue;
            printf("%s", cs->name);
            for (int d = 0; d < DIR_COUNT; d++) {
                int any = 0;
                for (int m = 0; m < nmodes; m++)
                    any |= applicable(cs, modes[m], d);
                if (any && dir_selected(only, d))
                    printf(" %s", dir_names[d]);
            }
            printf("\n");
        }
        return 0;
    }

    hipError_t he = hipStreamCreateWithFlags(&g_stream, hipStreamNonBlocking);
    if (he != hipSuccess) {
        fprintf(stderr, "harness: hipStreamCreateWithFlags failed: %s\n", hipGetErrorName(he));
        printf("0 passed, 1 failed\n");
        return 1;
    }
    if (miopenCreate(&g_handle) != miopenStatusSuccess ||
        miopenSetStream(g_handle, g_stream) != miopenStatusSuccess) {
        fprintf(stderr, "harness: miopenCreate/miopenSetStream failed\n");
        printf("0 passed, 1 failed\n");
        return 1;
    }

    int passed = 0, failed = 0;
    for (int mi = 0; mi < nmodes; mi++) {
        int mode = modes[mi];
        for (int c = 0; c < NUM_CASES; c++) {
            const case_t* cs = &g_cases[c];
            if (case_filter && !strstr(cs->name, case_filter))
                continue;
            for (int d = 0; d < DIR_COUNT; d++) {
                if (!applicable(cs, mode, d) || !dir_selected(only, d))
                    continue;
                why_t why = {{0}};
                double max_err = 0, tol = 0;
                size_t ws = 0;
                int rc = cs->kind == K_BIAS ? bias_check(cs, mode, d, &max_err, &tol, &why)
                         : cs->kind == K_BN   ? bn_check(cs, d, &max_err, &tol, &why)
                         : cs->kind == K_STEP ? step_check(cs, &max_err, &tol, &why)
                                              : conv_check(cs, mode, d, &max_err, &tol, &ws, &why);
                if (rc == 0) {
                    passed++;
                    if (cs->kind == K_BIAS || cs->kind == K_BN || cs->kind == K_STEP)
                        printf("ok %s %s %s max_err=%.3g tol=%.3g\n", cs->name, mode_names[mode],
                               dir_names[d], max_err, tol);
                    else
                        printf("ok %s %s %s max_err=%.3g tol=%.3g workspace=%zu\n", cs->name,
                               mode_names[mode], dir_names[d], max_err, tol, ws);
                } else {
                    failed++;
                    printf("FAIL %s %s %s: %s\n", cs->name, mode_names[mode], dir_names[d],
                           why.msg);
                }
            }
        }
    }
    if (passed + failed == 0)
        fprintf(stderr, "harness: no check matched the filters\n");

    miopenDestroy(g_handle);
    hipStreamDestroy(g_stream);
    printf("%d passed, %d failed\n", passed, failed);
    fflush(stdout);
    return failed == 0 ? 0 : 1;
}

#ifdef HARNESS_MAIN
int main(int argc, char** argv) { return harness_main(argc, argv); }
#endif
