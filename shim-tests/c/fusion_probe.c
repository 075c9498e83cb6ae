/*
 * fusion_probe.c -- owns the fusion-plan checks: replays PyTorch's
 * miopen_convolution_relu call sequence (create plan, conv + bias +
 * activation operators, compile, operator arguments, execute, destroy) on a
 * non-blocking stream and compares the output with a host reference.
 *
 *   fusion_probe CASE...     CASE: relu, leaky, clipped, conv_only, bias_alpha2
 *
 * bias_alpha2 sets the bias operator's alpha to 2, which the shim does not run
 * on the CPU (it passes the plan to MIOpen); the reference then adds 2*bias as
 * the healthy fake MIOpen does. Prints "ok"/"FAIL" lines and "N passed, M failed".
 */
#include "miopen_api.h"
#include "naive_conv.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N 2
#define C 3
#define K 4
#define H 7
#define W 6

static int check(const char* name)
{
    int has_bias = strcmp(name, "conv_only") != 0;
    float bias_alpha = strcmp(name, "bias_alpha2") == 0 ? 2.0f : 1.0f;
    miopenActivationMode_t mode = miopenActivationRELU;
    double act_a = 0;
    if (strcmp(name, "leaky") == 0) {
        mode = miopenActivationLEAKYRELU;
        act_a = 0.1;
    } else if (strcmp(name, "clipped") == 0) {
        mode = miopenActivationCLIPPEDRELU;
        act_a = 0.5;
    } else if (strcmp(name, "conv_only") == 0) {
        mode = miopenActivationPASTHRU;
    }

    hipStream_t stream;
    miopenHandle_t h;
    if (hipStreamCreateWithFlags(&stream, hipStreamNonBlocking) != hipSuccess ||
        miopenCreate(&h) != miopenStatusSuccess || miopenSetStream(h, stream) != miopenStatusSuccess)
        return printf("FAIL fusion %s: setup\n", name), 1;

    nc_tensor tx = {.dtype = 1, .nd = 4, .lens = {N, C, H, W}};
    nc_tensor tw = {.dtype = 1, .nd = 4, .lens = {K, C, 3, 3}};
    nc_tensor ty = {.dtype = 1, .nd = 4, .lens = {N, K, H, W}};
    nc_packed_strides(&tx);
    nc_packed_strides(&tw);
    nc_packed_strides(&ty);
    size_t nx = nc_num_elements(&tx), nw = nc_num_elements(&tw), ny = nc_num_elements(&ty);
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *b = malloc(K * 4), *y = malloc(ny * 4),
          *ref = malloc(ny * 4);
    for (size_t i = 0; i < nx; i++)
        x[i] = (float)((i * 37 % 101) / 50.0 - 1.0);
    for (size_t i = 0; i < nw; i++)
        w[i] = (float)((i * 53 % 89) / 44.0 - 1.0);
    for (int i = 0; i < K; i++)
        b[i] = 0.25f * (float)(i - 2);

    /* host reference: conv, bias, activation */
    nc_conv conv = {.spatial = 2, .pad = {1, 1}, .stride = {1, 1}, .dil = {1, 1}, .groups = 1};
    char err[256];
    if (nc_conv_run(NC_FWD, &conv, &tx, x, &tw, w, &ty, ref, 1.0, 0.0, err, sizeof err))
        return printf("FAIL fusion %s: reference: %s\n", name, err), 1;
    for (size_t i = 0; i < ny; i++) {
        double v = ref[i] + (has_bias ? bias_alpha * b[(i / (H * W)) % K] : 0.0);
        if (mode == miopenActivationRELU)
            v = v > 0 ? v : 0;
        else if (mode == miopenActivationLEAKYRELU)
            v = v > 0 ? v : act_a * v;
        else if (mode == miopenActivationCLIPPEDRELU)
            v = fmin(act_a, fmax(0.0, v));
        ref[i] = (float)v;
    }

    void *dx, *dw, *db, *dy;
    hipMalloc(&dx, nx * 4);
    hipMalloc(&dw, nw * 4);
    hipMalloc(&db, K * 4);
    hipMalloc(&dy, ny * 4);
    hipMemcpyAsync(dx, x, nx * 4, hipMemcpyHostToDevice, stream);
    hipMemcpyAsync(dw, w, nw * 4, hipMemcpyHostToDevice, stream);
    hipMemcpyAsync(db, b, K * 4, hipMemcpyHostToDevice, stream);

    miopenTensorDescriptor_t xd, wd, yd, bd;
    int xl[4] = {N, C, H, W}, wl[4] = {K, C, 3, 3}, yl[4] = {N, K, H, W}, bl[4] = {1, K, 1, 1};
    int xs[4], ws[4], ys[4], bs[4] = {K, 1, 1, 1};
    for (int i = 0; i < 4; i++) {
        xs[i] = (int)tx.strides[i];
        ws[i] = (int)tw.strides[i];
        ys[i] = (int)ty.strides[i];
    }
    miopenCreateTensorDescriptor(&xd);
    miopenCreateTensorDescriptor(&wd);
    miopenCreateTensorDescriptor(&yd);
    miopenCreateTensorDescriptor(&bd);
    miopenSetTensorDescriptor(xd, miopenFloat, 4, xl, xs);
    miopenSetTensorDescriptor(wd, miopenFloat, 4, wl, ws);
    miopenSetTensorDescriptor(yd, miopenFloat, 4, yl, ys);
    miopenSetTensorDescriptor(bd, miopenFloat, 4, bl, bs);
    miopenConvolutionDescriptor_t cd;
    int pad[2] = {1, 1}, str[2] = {1, 1}, dil[2] = {1, 1};
    miopenCreateConvolutionDescriptor(&cd);
    miopenInitConvolutionNdDescriptor(cd, 2, pad, str, dil, miopenConvolution);
    miopenSetConvolutionGroupCount(cd, 1);

    /* PyTorch's raw_miopen_convolution_relu_out */
    miopenFusionPlanDescriptor_t plan;
    miopenFusionOpDescriptor_t convOp, biasOp = NULL, activOp = NULL;
    miopenOperatorArgs_t args;
    float one = 1.0f, zero = 0.0f;
    int st = miopenCreateFusionPlan(&plan, miopenVerticalFusion, xd);
    st |= miopenCreateOpConvForward(plan, &convOp, cd, wd);
    if (has_bias)
        st |= miopenCreateOpBiasForward(plan, &biasOp, bd);
    if (mode != miopenActivationPASTHRU)
        st |= miopenCreateOpActivationForward(plan, &activOp, mode);
    st |= miopenCompileFusionPlan(h, plan);
    st |= miopenCreateOperatorArgs(&args);
    st |= miopenSetOpArgsConvForward(args, convOp, &one, &zero, dw);
    if (has_bias)
        st |= miopenSetOpArgsBiasForward(args, biasOp, &bias_alpha, &zero, db);
    if (activOp)
        st |= miopenSetOpArgsActivForward(args, activOp, &one, &zero, act_a, 0.0, 0.0);
    st |= miopenExecuteFusionPlan(h, plan, xd, dx, yd, dy, args);
    if (st != miopenStatusSuccess)
        return printf("FAIL fusion %s: a fusion call returned an error\n", name), 1;
    hipMemcpyAsync(y, dy, ny * 4, hipMemcpyDeviceToHost, stream);
    hipStreamSynchronize(stream);
    miopenDestroyOperatorArgs(args);
    miopenDestroyFusionPlan(plan);

    double max_err = 0, scale = 1e-6;
    for (size_t i = 0; i < ny; i++) {
        max_err = fmax(max_err, fabs((double)y[i] - ref[i]));
        scale = fmax(scale, fabs((double)ref[i]));
    }
    int ok = max_err <= 1e-5 * scale * 10 && max_err == max_err;
    printf("%s fusion %s max_err=%.3g\n", ok ? "ok" : "FAIL", name, max_err);
    free(x), free(w), free(b), free(y), free(ref);
    hipFree(dx), hipFree(dw), hipFree(db), hipFree(dy);
    miopenDestroy(h);
    hipStreamDestroy(stream);
    return !ok;
}

int main(int argc, char** argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int failed = 0, passed = 0;
    for (int i = 1; i < argc; i++) {
        if (check(argv[i]))
            failed++;
        else
            passed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
