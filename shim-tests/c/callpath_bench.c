/*
 * callpath_bench.c -- owns the driver of the call-path benchmark: convolutions
 * called through MIOpen's public API, exactly as PyTorch calls them (HIP device
 * tensors, descriptors, the handle on a non-blocking stream, the classic
 * convolution entry points), timed from the call to the stream being idle.
 * Run with LD_PRELOAD=librdna1shim.so so the shim intercepts the calls; the
 * doubles (fake HIP, fake MIOpen) stand in for ROCm, FAKE_HIP_GBPS models PCIe.
 *
 * It reads requests from stdin, one a line, and answers each with one line:
 *   layer ID LAYOUT DTYPE SD N CIN COUT G  D H W  KD KH KW  PD PH PW  SD SH SW  DD DH DW
 *       allocates device tensors x, w, y (LAYOUT nchw|nhwc, DTYPE fp32|fp16|bf16,
 *       SD the spatial dims the caller would use: 1 and 2 give 4-D tensors as
 *       PyTorch's MIOpen backend does), fills them with random values.
 *       Answers "ok ID".
 *   time ID PASS MIN_MS
 *       PASS forward|backward_data|backward_weights: calls it until MIN_MS have
 *       passed (at least 3 times, after one warm-up) and answers a JSON object
 *       with the best call's milliseconds and the shim's profile of that call.
 *   seq MIN_MS ID:PASS ID:PASS ...
 *       the same for one pass over the whole list (a training step's convolutions):
 *       best total milliseconds and the profiles summed over that pass.
 *   free ID
 * The profile comes from rdna1shim_last_call_profile when the shim is preloaded
 * (phases in milliseconds, see src/profile.rs); without the shim it is absent.
 */
#define _GNU_SOURCE
#include "miopen_api.h"

#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_LAYERS 256
#define PROFILE_LEN 8
static const char* const PROFILE_NAMES[PROFILE_LEN] = {
    "total_ms", "wait_in_ms", "convert_ms", "engine_ms",
    "store_ms", "wait_out_ms", "chunks", "enqueue_ms"};

struct layer {
    int used;
    miopenDataType_t dtype;
    miopenTensorDescriptor_t xd, wd, yd;
    miopenConvolutionDescriptor_t cd;
    void *x, *w, *y;
};

static struct layer g_layers[MAX_LAYERS];
static miopenHandle_t g_handle;
static hipStream_t g_stream;
static int (*g_profile)(double*, int);

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

static void die(const char* what)
{
    fprintf(stderr, "callpath_bench: %s\n", what);
    exit(1);
}

static uint16_t f32_to_f16(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    uint32_t sign = (b >> 16) & 0x8000u;
    int exp = (int)((b >> 23) & 0xff) - 127 + 15;
    uint32_t man = (b >> 13) & 0x3ffu;
    if (exp <= 0)
        return (uint16_t)sign; /* the values used here are never that small but zero */
    if (exp >= 31)
        return (uint16_t)(sign | 0x7c00u);
    return (uint16_t)(sign | ((uint32_t)exp << 10) | man);
}

static size_t dsize(miopenDataType_t t) { return t == miopenFloat ? 4 : 2; }

/* Uploads n random values in [-1, 1) of type t to device pointer d. */
static void fill(void* d, size_t n, miopenDataType_t t, unsigned* seed)
{
    size_t bytes = n * dsize(t);
    unsigned char* h = malloc(bytes ? bytes : 1);
    if (!h)
        die("out of host memory");
    for (size_t i = 0; i < n; i++) {
        *seed = *seed * 1103515245u + 12345u;
        float v = (float)((*seed >> 8) & 0xffff) / 32768.0f - 1.0f;
        if (t == miopenFloat) {
            memcpy(h + 4 * i, &v, 4);
        } else {
            uint32_t b;
            memcpy(&b, &v, 4);
            uint16_t u = t == miopenHalf ? f32_to_f16(v) : (uint16_t)(b >> 16);
            memcpy(h + 2 * i, &u, 2);
        }
    }
    if (hipMemcpy(d, h, bytes, hipMemcpyHostToDevice) != hipSuccess)
        die("hipMemcpy of the inputs failed");
    free(h);
}

/* Dims and strides of a [n, c, spatial...] tensor in NCHW or channels-last order. */
static int tensor(miopenTensorDescriptor_t* d, miopenDataType_t t, int nhwc, int nsp,
                  const int* nc, const int* sp, size_t* numel)
{
    int dims[5], strides[5];
    int nd = 2 + nsp;
    dims[0] = nc[0];
    dims[1] = nc[1];
    for (int i = 0; i < nsp; i++)
        dims[2 + i] = sp[i];
    if (!nhwc) {
        strides[nd - 1] = 1;
        for (int i = nd - 2; i >= 0; i--)
            strides[i] = strides[i + 1] * dims[i + 1];
    } else {
        /* memory order n, spatial..., c */
        strides[1] = 1;
        int s = dims[1];
        for (int i = nd - 1; i >= 2; i--) {
            strides[i] = s;
            s *= dims[i];
        }
        strides[0] = s;
    }
    *numel = 1;
    for (int i = 0; i < nd; i++)
        *numel *= (size_t)dims[i];
    if (miopenCreateTensorDescriptor(d) != miopenStatusSuccess ||
        miopenSetTensorDescriptor(*d, t, nd, dims, strides) != miopenStatusSuccess)
        return -1;
    return 0;
}

static int cmd_layer(char* args)
{
    int id, sd, v[22];
    char layout[16], dtype[16];
    if (sscanf(args,
               "%d %15s %15s %d %d %d %d %d  %d %d %d  %d %d %d  %d %d %d  %d %d %d  %d %d %d",
               &id, layout, dtype, &sd, &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7],
               &v[8], &v[9], &v[10], &v[11], &v[12], &v[13], &v[14], &v[15], &v[16], &v[17],
               &v[18]) != 23 ||
        id < 0 || id >= MAX_LAYERS || sd < 1 || sd > 3)
        return -1;
    struct layer* L = &g_layers[id];
    if (L->used)
        return -1;
    int n = v[0], cin = v[1], cout = v[2], groups = v[3];
    int *in = &v[4], *k = &v[7], *pad = &v[10], *str = &v[13], *dil = &v[16];
    int out[3];
    for (int i = 0; i < 3; i++)
        out[i] = (in[i] + 2 * pad[i] - dil[i] * (k[i] - 1) - 1) / str[i] + 1;
    L->dtype = strcmp(dtype, "fp16") == 0   ? miopenHalf
               : strcmp(dtype, "bf16") == 0 ? miopenBFloat16
                                            : miopenFloat;
    int nhwc = strcmp(layout, "nhwc") == 0;
    /* 1-D and 2-D convolutions are 2-D to MIOpen (PyTorch views 1-D as 2-D). */
    int nsp = sd == 3 ? 3 : 2, first = 3 - nsp;
    int xnc[2] = {n, cin}, wnc[2] = {cout, cin / groups}, ync[2] = {n, cout};
    size_t xn, wn, yn;
    if (tensor(&L->xd, L->dtype, nhwc, nsp, xnc, in + first, &xn) ||
        tensor(&L->wd, L->dtype, nhwc, nsp, wnc, k + first, &wn) ||
        tensor(&L->yd, L->dtype, nhwc, nsp, ync, out + first, &yn))
        return -1;
    if (miopenCreateConvolutionDescriptor(&L->cd) != miopenStatusSuccess ||
        miopenInitConvolutionNdDescriptor(L->cd, nsp, pad + first, str + first, dil + first,
                                          miopenConvolution) != miopenStatusSuccess ||
        miopenSetConvolutionGroupCount(L->cd, groups) != miopenStatusSuccess)
        return -1;
    size_t es = dsize(L->dtype);
    if (hipMalloc(&L->x, xn * es) != hipSuccess || hipMalloc(&L->w, wn * es) != hipSuccess ||
        hipMalloc(&L->y, yn * es) != hipSuccess)
        return -1;
    unsigned seed = 1234u + (unsigned)id;
    fill(L->x, xn, L->dtype, &seed);
    fill(L->w, wn, L->dtype, &seed);
    fill(L->y, yn, L->dtype, &seed);
    L->used = 1;
    printf("ok %d\n", id);
    return 0;
}

static int pass_of(const char* p)
{
    if (strcmp(p, "forward") == 0)
        return 0;
    if (strcmp(p, "backward_data") == 0)
        return 1;
    if (strcmp(p, "backward_weights") == 0)
        return 2;
    return -1;
}

/* One call of pass `p` on layer `L`, through to an idle stream; its milliseconds. */
static double call(struct layer* L, int p, double* profile)
{
    const float alpha = 1.0f, beta = 0.0f;
    double t0 = now_ms();
    miopenStatus_t s;
    if (p == 0)
        s = miopenConvolutionForward(g_handle, &alpha, L->xd, L->x, L->wd, L->w, L->cd,
                                     miopenConvolutionFwdAlgoGEMM, &beta, L->yd, L->y, NULL, 0);
    else if (p == 1)
        s = miopenConvolutionBackwardData(g_handle, &alpha, L->yd, L->y, L->wd, L->w, L->cd,
                                          miopenConvolutionBwdDataAlgoGEMM, &beta, L->xd, L->x,
                                          NULL, 0);
    else
        s = miopenConvolutionBackwardWeights(g_handle, &alpha, L->yd, L->y, L->xd, L->x, L->cd,
                                             miopenConvolutionBwdWeightsAlgoGEMM, &beta, L->wd,
                                             L->w, NULL, 0);
    if (s != miopenStatusSuccess)
        die("a convolution call failed");
    if (hipStreamSynchronize(g_stream) != hipSuccess)
        die("hipStreamSynchronize failed");
    double t = now_ms() - t0;
    for (int i = 0; i < PROFILE_LEN; i++)
        profile[i] = 0;
    if (g_profile)
        g_profile(profile, PROFILE_LEN);
    return t;
}

static void answer(const char* what, double best, int runs, const double* prof)
{
    printf("{\"%s\": true, \"best_ms\": %.6f, \"runs\": %d", what, best, runs);
    if (g_profile) {
        printf(", \"profile\": {");
        for (int i = 0; i < PROFILE_LEN; i++)
            printf("%s\"%s\": %.6f", i ? ", " : "", PROFILE_NAMES[i], prof[i]);
        printf("}");
    }
    printf("}\n");
}

struct item {
    struct layer* L;
    int pass;
};

/* Times one pass over `items` repeatedly; answers with the best pass. */
static int run_timed(const char* what, struct item* items, int count, double min_ms)
{
    double prof[PROFILE_LEN], sum[PROFILE_LEN], best_prof[PROFILE_LEN] = {0};
    for (int i = 0; i < count; i++)
        call(items[i].L, items[i].pass, prof); /* warm-up */
    double best = INFINITY, spent = 0;
    int runs = 0;
    while (runs < 3 || spent < min_ms) {
        double total = 0;
        memset(sum, 0, sizeof sum);
        for (int i = 0; i < count; i++) {
            total += call(items[i].L, items[i].pass, prof);
            for (int j = 0; j < PROFILE_LEN; j++)
                sum[j] += prof[j];
        }
        spent += total;
        runs++;
        if (total < best) {
            best = total;
            memcpy(best_prof, sum, sizeof sum);
        }
    }
    answer(what, best, runs, best_prof);
    return 0;
}

static int parse_item(char* tok, struct item* it)
{
    char* colon = strchr(tok, ':');
    if (!colon)
        return -1;
    *colon = 0;
    int id = atoi(tok);
    if (id < 0 || id >= MAX_LAYERS || !g_layers[id].used)
        return -1;
    it->L = &g_layers[id];
    it->pass = pass_of(colon + 1);
    return it->pass < 0 ? -1 : 0;
}

static int cmd_time(char* args)
{
    char tok[64], pass[32];
    double min_ms;
    if (sscanf(args, "%63s %31s %lf", tok, pass, &min_ms) != 3)
        return -1;
    char item_text[100];
    snprintf(item_text, sizeof item_text, "%s:%s", tok, pass);
    struct item it;
    if (parse_item(item_text, &it))
        return -1;
    return run_timed("time", &it, 1, min_ms);
}

static int cmd_seq(char* args)
{
    static struct item items[4 * MAX_LAYERS];
    char* save = NULL;
    char* tok = strtok_r(args, " \t\n", &save);
    if (!tok)
        return -1;
    double min_ms = atof(tok);
    int count = 0;
    while ((tok = strtok_r(NULL, " \t\n", &save)) && count < 4 * MAX_LAYERS)
        if (parse_item(tok, &items[count++]))
            return -1;
    return count ? run_timed("seq", items, count, min_ms) : -1;
}

static int cmd_free(char* args)
{
    int id = atoi(args);
    if (id < 0 || id >= MAX_LAYERS || !g_layers[id].used)
        return -1;
    struct layer* L = &g_layers[id];
    hipFree(L->x);
    hipFree(L->w);
    hipFree(L->y);
    miopenDestroyTensorDescriptor(L->xd);
    miopenDestroyTensorDescriptor(L->wd);
    miopenDestroyTensorDescriptor(L->yd);
    miopenDestroyConvolutionDescriptor(L->cd);
    memset(L, 0, sizeof *L);
    printf("ok %d\n", id);
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (hipStreamCreateWithFlags(&g_stream, hipStreamNonBlocking) != hipSuccess ||
        miopenCreate(&g_handle) != miopenStatusSuccess ||
        miopenSetStream(g_handle, g_stream) != miopenStatusSuccess)
        die("cannot create the stream and the MIOpen handle");
    *(void**)&g_profile = dlsym(RTLD_DEFAULT, "rdna1shim_last_call_profile");
    printf("ready shim=%s\n", g_profile ? "yes" : "no");
    char line[8192];
    while (fgets(line, sizeof line, stdin)) {
        char* args = line;
        while (*args && *args != ' ' && *args != '\n')
            args++;
        if (*args)
            *args++ = 0;
        int rc;
        if (strcmp(line, "layer") == 0)
            rc = cmd_layer(args);
        else if (strcmp(line, "time") == 0)
            rc = cmd_time(args);
        else if (strcmp(line, "seq") == 0)
            rc = cmd_seq(args);
        else if (strcmp(line, "free") == 0)
            rc = cmd_free(args);
        else if (line[0] == 0 || line[0] == '\n')
            continue;
        else
            rc = -1;
        if (rc)
            printf("error %s\n", line);
    }
    miopenDestroy(g_handle);
    hipStreamDestroy(g_stream);
    return 0;
}
