/*
 * train_seq.c -- owns a small PyTorch-style training run for the routing tests:
 * a four-layer convolutional network trained for a few SGD steps on one fixed
 * batch, every convolution issued through MIOpen's API the way PyTorch issues
 * it, on a non-blocking HIP stream.
 *
 *   L0: 3 -> 8 channels, 3x3, pad 1            (8x8)
 *   L1: 8 -> 8, 3x3, pad 1, stride 2, groups 2  (8x8 -> 4x4)
 *   L2: 8 -> 8 depthwise 3x3, pad 1 (miopenDepthwise mode, as PyTorch sends it)
 *   L3: 8 -> 4, 1x1
 *
 * Each step: forward through the four layers; loss = sum(y3 * g) for a fixed g,
 * so dy3 = g; backward-weights of every layer and backward-data of L3..L1 (the
 * input needs no gradient, as in PyTorch); w -= 0.01 * dw on the host. N = 2,
 * fp32, NCHW. Layers use PyTorch's benchmark path (workspace query, Find,
 * classic call) or its immediate path (GetSolutionCount, GetSolution,
 * CompileSolution, GetSolutionWorkspaceSize, Immediate).
 *
 * Built as train_direct (-DTRAIN_MAIN, linked against libMIOpen.so and
 * libamdhip64.so) and as libtrainplugin.so exporting train_main(), which
 * harness_dlopen --plugin libtrainplugin.so --entry train_main loads with
 * RTLD_LOCAL the way PyTorch loads MIOpen.
 *
 * CLI: [--out FILE] [--steps N] [--api find|immediate|mixed]
 * (mixed, the default: L0 and L2 by Find, L1 and L3 immediate). FILE gets the
 * loss of every step and the final weights, one number a line ("%.9g").
 * Prints "train: step S loss L" per step and "train: done"; exit status 0 iff
 * every MIOpen and HIP call succeeded.
 */
#define _GNU_SOURCE
#include "miopen_api.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NL 4
#define N 2

typedef struct {
    int c, k, g, h, stride, ker, pad, out_h;
    miopenConvolutionMode_t mode;
    int immediate;
    miopenTensorDescriptor_t xd, wd, yd;
    miopenConvolutionDescriptor_t cd;
    float *w_host, *dw_host;
    void *w, *dw, *y, *dy; /* device: weights, weight gradient, output, output gradient */
    size_t x_n, w_n, y_n;
} layer_t;

static miopenHandle_t g_handle;
static hipStream_t g_stream;

#define CHECK_MIO(call)                                                                    \
    do {                                                                                   \
        miopenStatus_t st_ = (call);                                                       \
        if (st_ != miopenStatusSuccess) {                                                  \
            fprintf(stderr, "train: %s failed: %s (line %d)\n", #call,                     \
                    miopenGetErrorString(st_), __LINE__);                                  \
            return -1;                                                                     \
        }                                                                                  \
    } while (0)
#define CHECK_HIP(call)                                                                    \
    do {                                                                                   \
        hipError_t e_ = (call);                                                            \
        if (e_ != hipSuccess) {                                                            \
            fprintf(stderr, "train: %s failed: %d (line %d)\n", #call, (int)e_, __LINE__); \
            return -1;                                                                     \
        }                                                                                  \
    } while (0)

static uint64_t g_rng = 0x5452414953455131ull;
static float rnd(void) /* [-1, 1) */
{
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (float)((g_rng * 0x2545F4914F6CDD1Dull) >> 40) / (float)(1 << 23) - 1.0f;
}

static int tensor(miopenTensorDescriptor_t* d, int n, int c, int h, int w)
{
    int dims[4] = {n, c, h, w}, strides[4] = {c * h * w, h * w, w, 1};
    CHECK_MIO(miopenCreateTensorDescriptor(d));
    CHECK_MIO(miopenSetTensorDescriptor(*d, miopenFloat, 4, dims, strides));
    return 0;
}

static int upload(void* dev, const float* host, size_t n)
{
    CHECK_HIP(hipMemcpyAsync(dev, host, n * sizeof(float), hipMemcpyHostToDevice, g_stream));
    return 0;
}

static int download(float* host, const void* dev, size_t n)
{
    CHECK_HIP(hipMemcpyAsync(host, dev, n * sizeof(float), hipMemcpyDeviceToHost, g_stream));
    CHECK_HIP(hipStreamSynchronize(g_stream));
    return 0;
}

static int setup(layer_t* L, int c, int k, int g, int h, int stride, int ker, int pad,
                 miopenConvolutionMode_t mode, int immediate)
{
    memset(L, 0, sizeof *L);
    L->c = c, L->k = k, L->g = g, L->h = h, L->stride = stride, L->ker = ker, L->pad = pad;
    L->mode = mode, L->immediate = immediate;
    L->out_h = (h + 2 * pad - ker) / stride + 1;
    L->x_n = (size_t)N * c * h * h;
    L->w_n = (size_t)k * (c / g) * ker * ker;
    L->y_n = (size_t)N * k * L->out_h * L->out_h;
    if (tensor(&L->xd, N, c, h, h) || tensor(&L->wd, k, c / g, ker, ker) ||
        tensor(&L->yd, N, k, L->out_h, L->out_h))
        return -1;
    int pads[2] = {pad, pad}, strides[2] = {stride, stride}, dil[2] = {1, 1};
    CHECK_MIO(miopenCreateConvolutionDescriptor(&L->cd));
    CHECK_MIO(miopenInitConvolutionNdDescriptor(L->cd, 2, pads, strides, dil, mode));
    CHECK_MIO(miopenSetConvolutionGroupCount(L->cd, g));
    L->w_host = malloc(L->w_n * sizeof(float));
    L->dw_host = malloc(L->w_n * sizeof(float));
    float scale = 1.0f / (float)((c / g) * ker * ker);
    for (size_t i = 0; i < L->w_n; i++)
        L->w_host[i] = rnd() * scale * 2.0f;
    CHECK_HIP(hipMalloc(&L->w, L->w_n * sizeof(float)));
    CHECK_HIP(hipMalloc(&L->dw, L->w_n * sizeof(float)));
    CHECK_HIP(hipMalloc(&L->y, L->y_n * sizeof(float)));
    CHECK_HIP(hipMalloc(&L->dy, L->y_n * sizeof(float)));
    return upload(L->w, L->w_host, L->w_n);
}

enum { FWD, BWD_DATA, BWD_WEIGHTS };

/* One convolution of a layer: (a, b) the inputs and out the output, in MIOpen's
 * argument order for the direction: fwd (x, w, y), bwd_data (dy, w, dx),
 * bwd_weights (dy, x, dw). */
static int conv(layer_t* L, int dir, const void* a, const void* b, void* out)
{
    miopenTensorDescriptor_t ad = dir == FWD ? L->xd : L->yd;
    miopenTensorDescriptor_t bd = dir == BWD_WEIGHTS ? L->xd : L->wd;
    miopenTensorDescriptor_t od = dir == FWD ? L->yd : dir == BWD_DATA ? L->xd : L->wd;
    size_t ws_size = 0;
    void* ws = NULL;
    if (L->immediate) {
        size_t count = 0, got = 0;
        miopenConvSolution_t sol[4];
        uint64_t id;
        if (dir == FWD) {
            CHECK_MIO(miopenConvolutionForwardGetSolutionCount(g_handle, bd, ad, L->cd, od, &count));
            CHECK_MIO(miopenConvolutionForwardGetSolution(g_handle, bd, ad, L->cd, od, 4, &got, sol));
            id = sol[0].solution_id;
            CHECK_MIO(miopenConvolutionForwardCompileSolution(g_handle, bd, ad, L->cd, od, id));
            CHECK_MIO(miopenConvolutionForwardGetSolutionWorkspaceSize(g_handle, bd, ad, L->cd, od,
                                                                       id, &ws_size));
        } else if (dir == BWD_DATA) {
            CHECK_MIO(miopenConvolutionBackwardDataGetSolutionCount(g_handle, ad, bd, L->cd, od,
                                                                    &count));
            CHECK_MIO(miopenConvolutionBackwardDataGetSolution(g_handle, ad, bd, L->cd, od, 4, &got,
                                                               sol));
            id = sol[0].solution_id;
            CHECK_MIO(miopenConvolutionBackwardDataCompileSolution(g_handle, ad, bd, L->cd, od, id));
            CHECK_MIO(miopenConvolutionBackwardDataGetSolutionWorkspaceSize(g_handle, ad, bd, L->cd,
                                                                            od, id, &ws_size));
        } else {
            CHECK_MIO(miopenConvolutionBackwardWeightsGetSolutionCount(g_handle, ad, bd, L->cd, od,
                                                                       &count));
            CHECK_MIO(miopenConvolutionBackwardWeightsGetSolution(g_handle, ad, bd, L->cd, od, 4,
                                                                  &got, sol));
            id = sol[0].solution_id;
            CHECK_MIO(
                miopenConvolutionBackwardWeightsCompileSolution(g_handle, ad, bd, L->cd, od, id));
            CHECK_MIO(miopenConvolutionBackwardWeightsGetSolutionWorkspaceSize(
                g_handle, ad, bd, L->cd, od, id, &ws_size));
        }
        if (count < 1 || got < 1) {
            fprintf(stderr, "train: no solution\n");
            return -1;
        }
        if (ws_size)
            CHECK_HIP(hipMalloc(&ws, ws_size));
        miopenStatus_t st;
        if (dir == FWD)
            st = miopenConvolutionForwardImmediate(g_handle, bd, b, ad, a, L->cd, od, out, ws,
                                                   ws_size, id);
        else if (dir == BWD_DATA)
            st = miopenConvolutionBackwardDataImmediate(g_handle, ad, a, bd, b, L->cd, od, out, ws,
                                                        ws_size, id);
        else
            st = miopenConvolutionBackwardWeightsImmediate(g_handle, ad, a, bd, b, L->cd, od, out,
                                                           ws, ws_size, id);
        if (ws)
            hipFree(ws);
        CHECK_MIO(st);
        return 0;
    }
    miopenConvAlgoPerf_t perf;
    int returned = 0;
    if (dir == FWD)
        CHECK_MIO(miopenConvolutionForwardGetWorkSpaceSize(g_handle, bd, ad, L->cd, od, &ws_size));
    else if (dir == BWD_DATA)
        CHECK_MIO(
            miopenConvolutionBackwardDataGetWorkSpaceSize(g_handle, ad, bd, L->cd, od, &ws_size));
    else
        CHECK_MIO(miopenConvolutionBackwardWeightsGetWorkSpaceSize(g_handle, ad, bd, L->cd, od,
                                                                   &ws_size));
    if (ws_size)
        CHECK_HIP(hipMalloc(&ws, ws_size));
    float alpha = 1.0f, beta = 0.0f;
    miopenStatus_t st;
    if (dir == FWD) {
        st = miopenFindConvolutionForwardAlgorithm(g_handle, ad, a, bd, b, L->cd, od, out, 1,
                                                   &returned, &perf, ws, ws_size, false);
        if (st == miopenStatusSuccess)
            st = miopenConvolutionForward(g_handle, &alpha, ad, a, bd, b, L->cd,
                                          (miopenConvFwdAlgorithm_t)perf.fwd_algo, &beta, od, out,
                                          ws, ws_size);
    } else if (dir == BWD_DATA) {
        st = miopenFindConvolutionBackwardDataAlgorithm(g_handle, ad, a, bd, b, L->cd, od, out, 1,
                                                        &returned, &perf, ws, ws_size, false);
        if (st == miopenStatusSuccess)
            st = miopenConvolutionBackwardData(g_handle, &alpha, ad, a, bd, b, L->cd,
                                               (miopenConvBwdDataAlgorithm_t)perf.bwd_data_algo,
                                               &beta, od, out, ws, ws_size);
    } else {
        st = miopenFindConvolutionBackwardWeightsAlgorithm(g_handle, ad, a, bd, b, L->cd, od, out,
                                                           1, &returned, &perf, ws, ws_size, false);
        if (st == miopenStatusSuccess)
            st = miopenConvolutionBackwardWeights(
                g_handle, &alpha, ad, a, bd, b, L->cd,
                (miopenConvBwdWeightsAlgorithm_t)perf.bwd_weights_algo, &beta, od, out, ws,
                ws_size);
    }
    if (ws)
        hipFree(ws);
    CHECK_MIO(st);
    return 0;
}

int train_main(int argc, char** argv)
{
    const char* out_path = NULL;
    const char* api = "mixed";
    int steps = 3;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            out_path = argv[++i];
        else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--api") == 0 && i + 1 < argc)
            api = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--out FILE] [--steps N] [--api find|immediate|mixed]\n",
                    argv[0]);
            return 2;
        }
    }
    int imm_even = strcmp(api, "immediate") == 0;
    int imm_odd = strcmp(api, "find") != 0;
    CHECK_HIP(hipStreamCreateWithFlags(&g_stream, hipStreamNonBlocking));
    CHECK_MIO(miopenCreateWithStream(&g_handle, g_stream));
    layer_t L[NL];
    if (setup(&L[0], 3, 8, 1, 8, 1, 3, 1, miopenConvolution, imm_even) ||
        setup(&L[1], 8, 8, 2, 8, 2, 3, 1, miopenConvolution, imm_odd) ||
        setup(&L[2], 8, 8, 8, 4, 1, 3, 1, miopenDepthwise, imm_even) ||
        setup(&L[3], 8, 4, 1, 4, 1, 1, 0, miopenConvolution, imm_odd))
        return 1;
    size_t x_n = L[0].x_n, g_n = L[NL - 1].y_n;
    float* x_host = malloc(x_n * sizeof(float));
    float* g_host = malloc(g_n * sizeof(float));
    float* y_host = malloc(g_n * sizeof(float));
    for (size_t i = 0; i < x_n; i++)
        x_host[i] = rnd();
    for (size_t i = 0; i < g_n; i++)
        g_host[i] = rnd();
    void* x;
    CHECK_HIP(hipMalloc(&x, x_n * sizeof(float)));
    if (upload(x, x_host, x_n) || upload(L[NL - 1].dy, g_host, g_n))
        return 1;
    FILE* out = out_path ? fopen(out_path, "w") : NULL;
    if (out_path && !out) {
        perror(out_path);
        return 1;
    }
    for (int s = 0; s < steps; s++) {
        const void* in = x;
        for (int l = 0; l < NL; l++) {
            if (conv(&L[l], FWD, in, L[l].w, L[l].y))
                return 1;
            in = L[l].y;
        }
        if (download(y_host, L[NL - 1].y, g_n))
            return 1;
        double loss = 0;
        for (size_t i = 0; i < g_n; i++)
            loss += (double)y_host[i] * g_host[i];
        printf("train: step %d loss %.9g\n", s, loss);
        if (out)
            fprintf(out, "%.9g\n", loss);
        for (int l = NL - 1; l >= 0; l--) {
            const void* xin = l ? L[l - 1].y : x;
            if (conv(&L[l], BWD_WEIGHTS, L[l].dy, xin, L[l].dw))
                return 1;
            if (l > 0 && conv(&L[l], BWD_DATA, L[l].dy, L[l].w, L[l - 1].dy))
                return 1;
            if (download(L[l].dw_host, L[l].dw, L[l].w_n))
                return 1;
            for (size_t i = 0; i < L[l].w_n; i++)
                L[l].w_host[i] -= 0.01f * L[l].dw_host[i];
            if (upload(L[l].w, L[l].w_host, L[l].w_n))
                return 1;
        }
    }
    CHECK_HIP(hipStreamSynchronize(g_stream));
    if (out) {
        for (int l = 0; l < NL; l++)
            for (size_t i = 0; i < L[l].w_n; i++)
                fprintf(out, "%.9g\n", L[l].w_host[i]);
        fclose(out);
    }
    printf("train: done\n");
    fflush(stdout);
    return 0;
}

#ifdef TRAIN_MAIN
int main(int argc, char** argv) { return train_main(argc, argv); }
#endif
