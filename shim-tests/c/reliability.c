/*
 * reliability.c -- owns the reliability driver (binary reliability_driver):
 * small C programs, run under LD_PRELOAD=librdna1shim.so against the fake
 * MIOpen and fake HIP, that call the shim's exports with bad input, under
 * injected HIP faults, out of host memory, from several threads at once,
 * across fork(), and with a forced panic, and check what the caller sees:
 * the status, the device buffers (inputs never change; an output is either
 * untouched or completely right, never half-written), host out-parameters.
 *
 * Usage: reliability_driver MODE [options]
 *   badinput                 table of bad calls (each must fail with its status
 *                            and write nothing) and unusual good calls
 *   fault --op OP [--beta0] [--rows] [--plain]
 *                            one call of OP (fwd, bwd_data, bwd_weights,
 *                            fwd_bias, bwd_bias), with FAKE_HIP_FAIL set by the
 *                            caller, then a recovery call; prints the fake HIP's
 *                            call counters around the first call; --rows: a
 *                            1x1/2 kernel whose unread input rows are skipped
 *   oom                      calls whose host buffers cannot be allocated under
 *                            RLIMIT_AS, then a call after the limit is lifted
 *   threads --threads T --iters I
 *                            T threads, own handle and stream each, run every
 *                            op I times concurrently; results must equal a
 *                            single-threaded run byte for byte
 *   fork                     calls, fork(), calls in the child (fresh stream),
 *                            a child that never calls, calls in the parent
 *   panic --export NAME      calls NAME (RDNA1SHIM_TEST_PANIC set by the caller)
 *                            then another export
 *   soak --calls N           N calls cycling through every op and problem (each
 *                            checked every so often); prints the resident set
 *                            size after the first tenth and at the end
 *
 * Every check prints "ok <what>" or "FAIL <what>: why" on stdout and the run
 * ends with "N passed, M failed" (exit status 0 iff M == 0). Lines starting
 * with "@@" carry data for the Rust tests; on stderr, "@@case NAME" and
 * "@@end NAME" bracket each call so that the shim's log lines can be matched
 * to the call that caused them.
 */
#define _GNU_SOURCE
#include "miopen_api.h"
#include "naive_conv.h"

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define F16 0
#define F32 1
#define BF16 5

static int g_passed, g_failed;
static pthread_mutex_t g_print = PTHREAD_MUTEX_INITIALIZER;

static void check(int cond, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int cond, const char* fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&g_print);
    fputs(cond ? "ok " : "FAIL ", stdout);
    vprintf(fmt, ap);
    putchar('\n');
    fflush(stdout);
    if (cond)
        g_passed++;
    else
        g_failed++;
    pthread_mutex_unlock(&g_print);
    va_end(ap);
}

static int finish(void)
{
    printf("%d passed, %d failed\n", g_passed, g_failed);
    fflush(stdout);
    return g_failed ? 1 : 0;
}

static void die(const char* fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char* fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("reliability_driver: setup failed: ", stdout);
    vprintf(fmt, ap);
    putchar('\n');
    fflush(stdout);
    va_end(ap);
    exit(3);
}

#define HIP_OR_DIE(call)                                                                        \
    do {                                                                                        \
        hipError_t e_ = (call);                                                                 \
        if (e_ != hipSuccess)                                                                   \
            die("%s: %s", #call, hipGetErrorName(e_));                                          \
    } while (0)

#define MIO_OR_DIE(call)                                                                        \
    do {                                                                                        \
        miopenStatus_t s_ = (call);                                                             \
        if (s_ != miopenStatusSuccess)                                                          \
            die("%s: %s", #call, miopenGetErrorString(s_));                                     \
    } while (0)

/* ------------------------------------------------------------------ */
/* tensors and problems                                                 */
/* ------------------------------------------------------------------ */

/* A tensor: reference description, MIOpen descriptor, device buffer and the
 * host image it was last filled with. */
typedef struct {
    nc_tensor t;
    miopenTensorDescriptor_t d;
    void* dev;
    unsigned char* init;
    size_t bytes;
} ten_t;

static miopenTensorDescriptor_t make_desc(int dtype, int nd, const int* lens, const int* strides)
{
    miopenTensorDescriptor_t d;
    MIO_OR_DIE(miopenCreateTensorDescriptor(&d));
    MIO_OR_DIE(miopenSetTensorDescriptor(d, (miopenDataType_t)dtype, nd, lens, strides));
    return d;
}

/* Deterministic small values (multiples of 1/8) so results are exact-ish. */
static double value_at(unsigned seed, size_t i)
{
    return (double)((int)((i * 7 + seed * 13) % 17) - 8) * 0.125;
}

static void ten_fill_host(ten_t* x, unsigned seed)
{
    size_t n = nc_element_space(&x->t);
    for (size_t i = 0; i < n; i++)
        nc_store(x->t.dtype, x->init, i, value_at(seed, i));
}

/* Uploads the host image synchronously (null-stream copy). */
static void ten_upload(ten_t* x) { HIP_OR_DIE(hipMemcpy(x->dev, x->init, x->bytes, hipMemcpyHostToDevice)); }

static void ten_make(ten_t* x, int dtype, int nd, const int* lens, int channels_last, unsigned seed)
{
    memset(x, 0, sizeof *x);
    x->t.dtype = dtype;
    x->t.nd = nd;
    for (int i = 0; i < nd; i++)
        x->t.lens[i] = lens[i];
    if (channels_last)
        nc_channels_last_strides(&x->t);
    else
        nc_packed_strides(&x->t);
    int strides[NC_MAX_DIMS];
    for (int i = 0; i < nd; i++)
        strides[i] = (int)x->t.strides[i];
    x->d = make_desc(dtype, nd, lens, strides);
    x->bytes = nc_num_bytes(&x->t);
    x->init = malloc(x->bytes);
    if (!x->init)
        die("malloc");
    HIP_OR_DIE(hipMalloc(&x->dev, x->bytes));
    ten_fill_host(x, seed);
    ten_upload(x);
}

/* Reads the device buffer (after the stream is synchronized by the caller). */
static unsigned char* ten_read(const ten_t* x)
{
    unsigned char* h = malloc(x->bytes);
    if (!h)
        die("malloc");
    HIP_OR_DIE(hipMemcpy(h, x->dev, x->bytes, hipMemcpyDeviceToHost));
    return h;
}

typedef struct {
    const char* name;
    int dtype, channels_last, sd; /* sd: spatial dims (2 or 3) */
    int n, c, k, g;
    int in[3], ker[3], pad[3], str[3], dil[3];
} spec_t;

/* One problem on one handle and stream: x, w, y of the regular convolution and
 * a bias b [1, k, 1, ...]. */
typedef struct {
    const spec_t* spec;
    miopenHandle_t h;
    hipStream_t s;
    miopenConvolutionDescriptor_t cd;
    nc_conv nc;
    ten_t x, w, y, b;
} prob_t;

static const spec_t SPEC_F32 = {"2d_f32", F32, 0, 2, 2, 3, 4, 1,
                                {8, 8}, {3, 3}, {1, 1}, {1, 1}, {1, 1}};
/* eight input channels: a weight gradient the shim's gated paths take */
static const spec_t SPEC_F32_C8 = {"2d_f32_c8", F32, 0, 2, 2, 8, 4, 1,
                                   {8, 8}, {3, 3}, {1, 1}, {1, 1}, {1, 1}};
static const spec_t SPEC_F16_NHWC = {"2d_f16_nhwc_g2_s2", F16, 1, 2, 2, 4, 4, 2,
                                     {7, 6}, {3, 3}, {1, 1}, {2, 2}, {1, 1}};
/* a 1x1/2 kernel over an even height: only every other input row crosses the link */
static const spec_t SPEC_F16_NHWC_ROWS = {"2d_f16_nhwc_k1_s2", F16, 1, 2, 2, 4, 3, 1,
                                          {6, 5}, {1, 1}, {0, 0}, {2, 2}, {1, 1}};
static const spec_t SPEC_BF16_3D = {"3d_bf16", BF16, 0, 3, 1, 2, 3, 1,
                                    {4, 5, 6}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}};

static void prob_make(prob_t* p, const spec_t* sp, hipStream_t stream, unsigned seed)
{
    memset(p, 0, sizeof *p);
    p->spec = sp;
    p->s = stream;
    MIO_OR_DIE(miopenCreateWithStream(&p->h, stream));
    MIO_OR_DIE(miopenCreateConvolutionDescriptor(&p->cd));
    MIO_OR_DIE(miopenInitConvolutionNdDescriptor(p->cd, sp->sd, sp->pad, sp->str, sp->dil,
                                                 miopenConvolution));
    MIO_OR_DIE(miopenSetConvolutionGroupCount(p->cd, sp->g));
    p->nc.spatial = sp->sd;
    p->nc.groups = sp->g;
    p->nc.transpose = 0;
    int xl[5] = {sp->n, sp->c}, wl[5] = {sp->k, sp->c / sp->g}, yl[5] = {sp->n, sp->k},
        bl[5] = {1, sp->k, 1, 1, 1};
    for (int i = 0; i < sp->sd; i++) {
        p->nc.pad[i] = sp->pad[i];
        p->nc.stride[i] = sp->str[i];
        p->nc.dil[i] = sp->dil[i];
        xl[2 + i] = sp->in[i];
        wl[2 + i] = sp->ker[i];
        yl[2 + i] = (sp->in[i] + 2 * sp->pad[i] - sp->dil[i] * (sp->ker[i] - 1) - 1) / sp->str[i] + 1;
    }
    int nd = sp->sd + 2;
    ten_make(&p->x, sp->dtype, nd, xl, sp->channels_last, seed + 1);
    ten_make(&p->w, sp->dtype, nd, wl, sp->channels_last, seed + 2);
    ten_make(&p->y, sp->dtype, nd, yl, sp->channels_last, seed + 3);
    ten_make(&p->b, sp->dtype, nd, bl, 0, seed + 4);
}

enum { OP_FWD, OP_BWD_DATA, OP_BWD_WEIGHTS, OP_FWD_BIAS, OP_BWD_BIAS, OP_COUNT };
static const char* const op_names[OP_COUNT] = {"fwd", "bwd_data", "bwd_weights", "fwd_bias",
                                               "bwd_bias"};

static int op_by_name(const char* s)
{
    for (int i = 0; i < OP_COUNT; i++)
        if (strcmp(op_names[i], s) == 0)
            return i;
    die("unknown op %s", s);
}

/* The tensor an op writes. */
static ten_t* op_output(prob_t* p, int op)
{
    switch (op) {
    case OP_FWD: return &p->y;
    case OP_BWD_DATA: return &p->x;
    case OP_BWD_WEIGHTS: return &p->w;
    case OP_FWD_BIAS: return &p->y;
    default: return &p->b;
    }
}

/* Calls the shim's export for `op` with the problem's own arguments. */
static miopenStatus_t op_call(prob_t* p, int op, float alpha, float beta)
{
    switch (op) {
    case OP_FWD:
        return miopenConvolutionForward(p->h, &alpha, p->x.d, p->x.dev, p->w.d, p->w.dev, p->cd,
                                        miopenConvolutionFwdAlgoGEMM, &beta, p->y.d, p->y.dev,
                                        NULL, 0);
    case OP_BWD_DATA:
        return miopenConvolutionBackwardData(p->h, &alpha, p->y.d, p->y.dev, p->w.d, p->w.dev,
                                             p->cd, miopenConvolutionBwdDataAlgoGEMM, &beta,
                                             p->x.d, p->x.dev, NULL, 0);
    case OP_BWD_WEIGHTS:
        return miopenConvolutionBackwardWeights(p->h, &alpha, p->y.d, p->y.dev, p->x.d, p->x.dev,
                                                p->cd, miopenConvolutionBwdWeightsAlgoGEMM,
                                                &beta, p->w.d, p->w.dev, NULL, 0);
    case OP_FWD_BIAS:
        return miopenConvolutionForwardBias(p->h, &alpha, p->b.d, p->b.dev, &beta, p->y.d,
                                            p->y.dev);
    default:
        return miopenConvolutionBackwardBias(p->h, &alpha, p->y.d, p->y.dev, &beta, p->b.d,
                                             p->b.dev);
    }
}

/* The expected output of `op` from the host images (the output's image is its
 * old contents), as a new host buffer. */
static unsigned char* op_expected(prob_t* p, int op, float alpha, float beta)
{
    ten_t* o = op_output(p, op);
    unsigned char* out = malloc(o->bytes);
    if (!out)
        die("malloc");
    memcpy(out, o->init, o->bytes);
    char err[256];
    int r;
    switch (op) {
    case OP_FWD:
        r = nc_conv_run(NC_FWD, &p->nc, &p->x.t, p->x.init, &p->w.t, p->w.init, &p->y.t, out,
                        alpha, beta, err, sizeof err);
        break;
    case OP_BWD_DATA:
        r = nc_conv_run(NC_BWD_DATA, &p->nc, &p->y.t, p->y.init, &p->w.t, p->w.init, &p->x.t, out,
                        alpha, beta, err, sizeof err);
        break;
    case OP_BWD_WEIGHTS:
        r = nc_conv_run(NC_BWD_WEIGHTS, &p->nc, &p->y.t, p->y.init, &p->x.t, p->x.init, &p->w.t,
                        out, alpha, beta, err, sizeof err);
        break;
    case OP_FWD_BIAS:
        r = nc_forward_bias(&p->b.t, p->b.init, &p->y.t, out, alpha, beta, err, sizeof err);
        break;
    default:
        r = nc_backward_bias(&p->y.t, p->y.init, &p->b.t, out, alpha, beta, err, sizeof err);
        break;
    }
    if (r)
        die("reference %s: %s", op_names[op], err);
    return out;
}

static size_t* element_offsets(const nc_tensor* t, size_t* count)
{
    size_t n = nc_num_elements(t);
    size_t* o = malloc((n ? n : 1) * sizeof *o);
    if (!o)
        die("malloc");
    int idx[NC_MAX_DIMS] = {0};
    for (size_t i = 0; i < n; i++) {
        long long off = 0;
        for (int k = 0; k < t->nd; k++)
            off += idx[k] * t->strides[k];
        o[i] = (size_t)off;
        for (int k = t->nd - 1; k >= 0; k--) {
            if (++idx[k] < t->lens[k])
                break;
            idx[k] = 0;
        }
    }
    *count = n;
    return o;
}

/* Does `got` match the reference `want` in every element (dtype tolerance)? */
static int matches(const nc_tensor* t, const unsigned char* got, const unsigned char* want)
{
    double tol = t->dtype == F32 ? 1e-4 : t->dtype == F16 ? 2e-2 : 6e-2;
    size_t n;
    size_t* off = element_offsets(t, &n);
    int ok = 1;
    for (size_t i = 0; i < n && ok; i++) {
        double g = nc_load(t->dtype, got, off[i]), w = nc_load(t->dtype, want, off[i]);
        if (!(fabs(g - w) <= tol * (1.0 + fabs(w))))
            ok = 0;
    }
    free(off);
    return ok;
}

/* "untouched" (bytes as before), "complete" (the expected result) or "partial". */
static const char* classify(const ten_t* o, const unsigned char* now, const unsigned char* want)
{
    if (memcmp(now, o->init, o->bytes) == 0)
        return "untouched";
    if (want && matches(&o->t, now, want))
        return "complete";
    return "partial";
}

static void marker(const char* what, const char* name)
{
    fprintf(stderr, "@@%s %s\n", what, name);
    fflush(stderr);
}

/* ------------------------------------------------------------------ */
/* badinput                                                             */
/* ------------------------------------------------------------------ */

/* The arguments of one call, starting valid and then spoilt by a case. */
typedef struct {
    miopenHandle_t h;
    const void *alpha, *beta;
    miopenTensorDescriptor_t xd, wd, yd, bd;
    miopenConvolutionDescriptor_t cd;
    void *x, *w, *y, *b;
    void* ws;
    size_t ws_size;
    /* out-parameters of the queries */
    size_t* size_out;
    int request;
    int* returned;
    miopenConvAlgoPerf_t* perf;
    size_t max_solutions;
    size_t* count;
    miopenConvSolution_t* solutions;
} args_t;

enum {
    E_FWD,
    E_BWD_DATA,
    E_BWD_WEIGHTS,
    E_FWD_IMM,
    E_FWD_BIAS,
    E_BWD_BIAS,
    E_FIND_FWD,
    E_WS_FWD,
    E_SOL_COUNT_FWD,
    E_SOL_FWD,
};

static miopenStatus_t call_export(int e, const args_t* a)
{
    switch (e) {
    case E_FWD:
        return miopenConvolutionForward(a->h, a->alpha, a->xd, a->x, a->wd, a->w, a->cd,
                                        miopenConvolutionFwdAlgoGEMM, a->beta, a->yd, a->y, a->ws,
                                        a->ws_size);
    case E_BWD_DATA:
        return miopenConvolutionBackwardData(a->h, a->alpha, a->yd, a->y, a->wd, a->w, a->cd,
                                             miopenConvolutionBwdDataAlgoGEMM, a->beta, a->xd,
                                             a->x, a->ws, a->ws_size);
    case E_BWD_WEIGHTS:
        return miopenConvolutionBackwardWeights(a->h, a->alpha, a->yd, a->y, a->xd, a->x, a->cd,
                                                miopenConvolutionBwdWeightsAlgoGEMM, a->beta,
                                                a->wd, a->w, a->ws, a->ws_size);
    case E_FWD_IMM:
        return miopenConvolutionForwardImmediate(a->h, a->wd, a->w, a->xd, a->x, a->cd, a->yd,
                                                 a->y, a->ws, a->ws_size, 0x52444E4131435055ull);
    case E_FWD_BIAS:
        return miopenConvolutionForwardBias(a->h, a->alpha, a->bd, a->b, a->beta, a->yd, a->y);
    case E_BWD_BIAS:
        return miopenConvolutionBackwardBias(a->h, a->alpha, a->yd, a->y, a->beta, a->bd, a->b);
    case E_FIND_FWD:
        return miopenFindConvolutionForwardAlgorithm(a->h, a->xd, a->x, a->wd, a->w, a->cd, a->yd,
                                                     a->y, a->request, a->returned, a->perf,
                                                     a->ws, a->ws_size, false);
    case E_WS_FWD:
        return miopenConvolutionForwardGetWorkSpaceSize(a->h, a->wd, a->xd, a->cd, a->yd,
                                                        a->size_out);
    case E_SOL_COUNT_FWD:
        return miopenConvolutionForwardGetSolutionCount(a->h, a->wd, a->xd, a->cd, a->yd,
                                                        a->count);
    default:
        return miopenConvolutionForwardGetSolution(a->h, a->wd, a->xd, a->cd, a->yd,
                                                   a->max_solutions, a->count, a->solutions);
    }
}

static const char* const export_names[] = {
    "miopenConvolutionForward",
    "miopenConvolutionBackwardData",
    "miopenConvolutionBackwardWeights",
    "miopenConvolutionForwardImmediate",
    "miopenConvolutionForwardBias",
    "miopenConvolutionBackwardBias",
    "miopenFindConvolutionForwardAlgorithm",
    "miopenConvolutionForwardGetWorkSpaceSize",
    "miopenConvolutionForwardGetSolutionCount",
    "miopenConvolutionForwardGetSolution",
};

/* A descriptor like `like` but with other lens/strides/dtype (NULL: packed). */
static miopenTensorDescriptor_t variant(int dtype, int nd, const int* lens, const int* strides)
{
    return make_desc(dtype, nd, lens, strides);
}

typedef struct {
    const char* name;
    int export;
    miopenStatus_t expect;
    void (*spoil)(args_t* a, prob_t* p);
} bad_case_t;

static float g_alpha = 1.0f, g_beta = 0.0f;
static size_t g_size_out;
static int g_returned;
static miopenConvAlgoPerf_t g_perf[2];
static size_t g_count;
static miopenConvSolution_t g_solutions[2];
static char g_host_junk[4096];

#define SPOIL(fn_name, ...)                                                                     \
    static void fn_name(args_t* a, prob_t* p)                                                   \
    {                                                                                           \
        (void)p;                                                                                \
        __VA_ARGS__;                                                                            \
    }

static const int M = 0x7fffffff;

/* null pointers */
SPOIL(null_handle, a->h = NULL)
SPOIL(null_xdesc, a->xd = NULL)
SPOIL(null_wdesc, a->wd = NULL)
SPOIL(null_ydesc, a->yd = NULL)
SPOIL(null_convdesc, a->cd = NULL)
SPOIL(null_x, a->x = NULL)
SPOIL(null_w, a->w = NULL)
SPOIL(null_y, a->y = NULL)
SPOIL(null_alpha, a->alpha = NULL)
SPOIL(null_beta, a->beta = NULL)
SPOIL(null_b, a->b = NULL)
SPOIL(null_bdesc, a->bd = NULL)
SPOIL(null_size_out, a->size_out = NULL)
SPOIL(null_returned, a->returned = NULL)
SPOIL(null_perf, a->perf = NULL)
SPOIL(request_zero, a->request = 0)
SPOIL(null_count, a->count = NULL)
SPOIL(max_solutions_zero, a->max_solutions = 0)
/* shapes that do not fit together */
SPOIL(y_spatial_wrong, {
    int l[4] = {2, 4, 7, 8};
    a->yd = variant(F32, 4, l, NULL);
})
SPOIL(w_channels_wrong, {
    int l[4] = {4, 2, 3, 3};
    a->wd = variant(F32, 4, l, NULL);
})
SPOIL(y_channels_wrong, {
    int l[4] = {2, 5, 8, 8};
    a->yd = variant(F32, 4, l, NULL);
})
SPOIL(batch_mismatch, {
    int l[4] = {3, 4, 8, 8};
    a->yd = variant(F32, 4, l, NULL);
})
SPOIL(dtype_mismatch, {
    int l[4] = {4, 3, 3, 3};
    a->wd = variant(F16, 4, l, NULL);
})
SPOIL(x_5d_for_2d_conv, {
    int l[5] = {2, 3, 1, 8, 8};
    a->xd = variant(F32, 5, l, NULL);
})
SPOIL(x_3d_for_2d_conv, {
    int l[3] = {2, 3, 8};
    a->xd = variant(F32, 3, l, NULL);
})
SPOIL(groups_not_dividing, {
    miopenConvolutionDescriptor_t c;
    int pad[2] = {1, 1}, one[2] = {1, 1};
    MIO_OR_DIE(miopenCreateConvolutionDescriptor(&c));
    MIO_OR_DIE(miopenInitConvolutionNdDescriptor(c, 2, pad, one, one, miopenConvolution));
    MIO_OR_DIE(miopenSetConvolutionGroupCount(c, 2));
    a->cd = c;
})
SPOIL(conv_3d_for_2d_tensors, {
    miopenConvolutionDescriptor_t c;
    int pad[3] = {0, 1, 1}, one[3] = {1, 1, 1};
    MIO_OR_DIE(miopenCreateConvolutionDescriptor(&c));
    MIO_OR_DIE(miopenInitConvolutionNdDescriptor(c, 3, pad, one, one, miopenConvolution));
    a->cd = c;
})
SPOIL(bias_channels_wrong, {
    int l[4] = {1, 5, 1, 1};
    a->bd = variant(F32, 4, l, NULL);
})
SPOIL(bias_not_broadcast, {
    int l[4] = {1, 4, 8, 1};
    a->bd = variant(F32, 4, l, NULL);
})
SPOIL(bias_dtype_mismatch, {
    int l[4] = {1, 4, 1, 1};
    a->bd = variant(BF16, 4, l, NULL);
})
/* zero and negative sizes */
SPOIL(x_batch_zero, {
    int l[4] = {0, 3, 8, 8};
    a->xd = variant(F32, 4, l, NULL);
})
SPOIL(y_width_zero, {
    int l[4] = {2, 4, 8, 0};
    a->yd = variant(F32, 4, l, NULL);
})
SPOIL(w_negative_dim_desc_rejected_then_used, {
    /* MIOpen refuses the negative size; a caller that ignores that passes an
     * unset descriptor */
    miopenTensorDescriptor_t d;
    int l[4] = {4, 3, -3, 3};
    MIO_OR_DIE(miopenCreateTensorDescriptor(&d));
    if (miopenSetTensorDescriptor(d, miopenFloat, 4, l, NULL) == miopenStatusSuccess)
        die("the fake MIOpen accepted a negative size");
    a->wd = d;
})
/* unsupported data types and layouts */
#define ALL_DTYPE(fn_name, dt)                                                                  \
    SPOIL(fn_name, {                                                                            \
        int xl[4] = {2, 3, 8, 8}, wl[4] = {4, 3, 3, 3}, yl[4] = {2, 4, 8, 8};                  \
        a->xd = variant(dt, 4, xl, NULL);                                                       \
        a->wd = variant(dt, 4, wl, NULL);                                                       \
        a->yd = variant(dt, 4, yl, NULL);                                                       \
    })
ALL_DTYPE(dtype_double, miopenDouble)
ALL_DTYPE(dtype_int8, miopenInt8)
ALL_DTYPE(dtype_int32, miopenInt32)
ALL_DTYPE(dtype_float8, miopenFloat8)
ALL_DTYPE(dtype_bfloat8, miopenBFloat8)
ALL_DTYPE(dtype_int64, miopenInt64)
SPOIL(y_overlapping_strides, {
    int l[4] = {2, 4, 8, 8}, s[4] = {256, 64, 8, 0};
    a->yd = variant(F32, 4, l, s);
})
SPOIL(y_channel_stride_zero, {
    int l[4] = {2, 4, 8, 8}, s[4] = {64, 0, 8, 1};
    a->yd = variant(F32, 4, l, s);
})
SPOIL(db_overlapping_strides, {
    int l[4] = {1, 4, 1, 1}, s[4] = {4, 0, 1, 1};
    a->bd = variant(F32, 4, l, s);
})
SPOIL(bias_6d, {
    int yl[6] = {2, 4, 8, 8, 1, 1}, bl[6] = {1, 4, 1, 1, 1, 1};
    a->yd = variant(F32, 6, yl, NULL);
    a->bd = variant(F32, 6, bl, NULL);
})
/* absurd sizes: byte counts that overflow or exceed any memory */
SPOIL(x_span_overflows_64_bits, {
    int l[4] = {M, M, M, M}, s[4] = {M, M, M, M};
    a->xd = variant(F32, 4, l, s);
})
SPOIL(x_elements_overflow_via_zero_strides, {
    int l[4] = {M, M, M, M}, s[4] = {0, 0, 0, 0};
    a->xd = variant(F32, 4, l, s);
})
SPOIL(y_span_beyond_128_tib, {
    int l[4] = {2, 4, M, M}, s[4] = {M, 1 << 20, M, 1};
    a->yd = variant(F32, 4, l, s);
})
SPOIL(x_f32_copy_beyond_128_tib, {
    int l[4] = {1 << 16, 3, 1 << 16, 1 << 16}, s[4] = {0, 1, 0, 0};
    a->xd = variant(F32, 4, l, s);
})
/* pointers that are not what the descriptors say */
SPOIL(x_is_host_memory, a->x = g_host_junk)
SPOIL(y_is_host_memory, a->y = g_host_junk)
SPOIL(y_buffer_too_small, {
    void* small;
    HIP_OR_DIE(hipMalloc(&small, 64));
    a->y = small;
})

static const bad_case_t g_bad[] = {
    {"null_handle", E_FWD, miopenStatusBadParm, null_handle},
    {"null_handle", E_BWD_BIAS, miopenStatusBadParm, null_handle},
    {"null_x_desc", E_FWD, miopenStatusBadParm, null_xdesc},
    {"null_w_desc", E_BWD_DATA, miopenStatusBadParm, null_wdesc},
    {"null_y_desc", E_BWD_WEIGHTS, miopenStatusBadParm, null_ydesc},
    {"null_conv_desc", E_FWD, miopenStatusBadParm, null_convdesc},
    {"null_conv_desc", E_WS_FWD, miopenStatusBadParm, null_convdesc},
    {"null_b_desc", E_FWD_BIAS, miopenStatusBadParm, null_bdesc},
    {"null_x", E_FWD, miopenStatusBadParm, null_x},
    {"null_w", E_BWD_DATA, miopenStatusBadParm, null_w},
    {"null_dy", E_BWD_WEIGHTS, miopenStatusBadParm, null_y},
    {"null_y", E_FWD_IMM, miopenStatusBadParm, null_y},
    {"null_b", E_FWD_BIAS, miopenStatusBadParm, null_b},
    {"null_db", E_BWD_BIAS, miopenStatusBadParm, null_b},
    {"null_alpha", E_FWD, miopenStatusBadParm, null_alpha},
    {"null_beta", E_BWD_WEIGHTS, miopenStatusBadParm, null_beta},
    {"null_alpha", E_FWD_BIAS, miopenStatusBadParm, null_alpha},
    {"null_workspace_size_out", E_WS_FWD, miopenStatusBadParm, null_size_out},
    {"null_returned_algo_count", E_FIND_FWD, miopenStatusBadParm, null_returned},
    {"null_perf_results", E_FIND_FWD, miopenStatusBadParm, null_perf},
    {"request_algo_count_zero", E_FIND_FWD, miopenStatusBadParm, request_zero},
    {"null_solution_count", E_SOL_COUNT_FWD, miopenStatusBadParm, null_count},
    {"null_solution_count_with_solutions", E_SOL_FWD, miopenStatusBadParm, null_count},
    {"max_solution_count_zero", E_SOL_FWD, miopenStatusBadParm, max_solutions_zero},
    {"y_spatial_mismatch", E_FWD, miopenStatusBadParm, y_spatial_wrong},
    {"y_spatial_mismatch", E_BWD_DATA, miopenStatusBadParm, y_spatial_wrong},
    {"y_spatial_mismatch", E_WS_FWD, miopenStatusBadParm, y_spatial_wrong},
    {"y_spatial_mismatch", E_FIND_FWD, miopenStatusBadParm, y_spatial_wrong},
    {"w_channels_mismatch", E_BWD_WEIGHTS, miopenStatusBadParm, w_channels_wrong},
    {"y_channels_mismatch", E_FWD, miopenStatusBadParm, y_channels_wrong},
    {"batch_mismatch", E_BWD_DATA, miopenStatusBadParm, batch_mismatch},
    {"dtype_mismatch", E_FWD, miopenStatusBadParm, dtype_mismatch},
    {"x_5d_for_2d_conv", E_FWD, miopenStatusBadParm, x_5d_for_2d_conv},
    {"x_3d_for_2d_conv", E_BWD_WEIGHTS, miopenStatusBadParm, x_3d_for_2d_conv},
    {"groups_not_dividing_channels", E_FWD, miopenStatusBadParm, groups_not_dividing},
    {"conv_3d_for_4d_tensors", E_FWD, miopenStatusBadParm, conv_3d_for_2d_tensors},
    {"bias_channels_mismatch", E_FWD_BIAS, miopenStatusBadParm, bias_channels_wrong},
    {"bias_not_broadcast", E_BWD_BIAS, miopenStatusBadParm, bias_not_broadcast},
    {"bias_dtype_mismatch", E_FWD_BIAS, miopenStatusBadParm, bias_dtype_mismatch},
    {"x_batch_zero", E_FWD, miopenStatusBadParm, x_batch_zero},
    {"y_width_zero", E_BWD_DATA, miopenStatusBadParm, y_width_zero},
    {"y_width_zero", E_BWD_BIAS, miopenStatusBadParm, y_width_zero},
    {"w_negative_dim", E_FWD, miopenStatusBadParm, w_negative_dim_desc_rejected_then_used},
    {"dtype_double", E_FWD, miopenStatusNotImplemented, dtype_double},
    {"dtype_int8", E_BWD_DATA, miopenStatusNotImplemented, dtype_int8},
    {"dtype_int32", E_BWD_WEIGHTS, miopenStatusNotImplemented, dtype_int32},
    {"dtype_float8", E_FWD, miopenStatusNotImplemented, dtype_float8},
    {"dtype_bfloat8", E_FIND_FWD, miopenStatusNotImplemented, dtype_bfloat8},
    {"dtype_int64", E_WS_FWD, miopenStatusNotImplemented, dtype_int64},
    {"y_overlapping_strides", E_FWD, miopenStatusBadParm, y_overlapping_strides},
    {"y_channel_stride_zero", E_FWD_BIAS, miopenStatusBadParm, y_channel_stride_zero},
    {"db_overlapping_strides", E_BWD_BIAS, miopenStatusBadParm, db_overlapping_strides},
    {"bias_6d_tensors", E_FWD_BIAS, miopenStatusNotImplemented, bias_6d},
    {"x_span_overflows_64_bits", E_FWD, miopenStatusBadParm, x_span_overflows_64_bits},
    {"x_elements_overflow_via_zero_strides", E_BWD_WEIGHTS, miopenStatusBadParm,
     x_elements_overflow_via_zero_strides},
    {"y_span_beyond_128_tib", E_FWD, miopenStatusBadParm, y_span_beyond_128_tib},
    {"x_f32_copy_beyond_128_tib", E_FWD, miopenStatusBadParm, x_f32_copy_beyond_128_tib},
    {"x_is_host_memory", E_FWD, miopenStatusInternalError, x_is_host_memory},
    {"y_is_host_memory", E_FWD, miopenStatusInternalError, y_is_host_memory},
    {"y_device_buffer_too_small", E_FWD, miopenStatusInternalError, y_buffer_too_small},
};
#define NUM_BAD ((int)(sizeof g_bad / sizeof g_bad[0]))

static void args_valid(args_t* a, prob_t* p)
{
    memset(a, 0, sizeof *a);
    a->h = p->h;
    a->alpha = &g_alpha;
    a->beta = &g_beta;
    a->xd = p->x.d;
    a->wd = p->w.d;
    a->yd = p->y.d;
    a->bd = p->b.d;
    a->cd = p->cd;
    a->x = p->x.dev;
    a->w = p->w.dev;
    a->y = p->y.dev;
    a->b = p->b.dev;
    a->size_out = &g_size_out;
    a->request = 2;
    a->returned = &g_returned;
    a->perf = g_perf;
    a->max_solutions = 2;
    a->count = &g_count;
    a->solutions = g_solutions;
}

/* Host out-parameters and the host junk buffer, set to a known pattern. */
static void poison_host_outputs(void)
{
    memset(&g_size_out, 0xA5, sizeof g_size_out);
    memset(&g_returned, 0xA5, sizeof g_returned);
    memset(g_perf, 0xA5, sizeof g_perf);
    memset(&g_count, 0xA5, sizeof g_count);
    memset(g_solutions, 0xA5, sizeof g_solutions);
    memset(g_host_junk, 0x5A, sizeof g_host_junk);
}

static int host_outputs_untouched(void)
{
    const unsigned char* views[] = {(void*)&g_size_out, (void*)&g_returned, (void*)g_perf,
                                    (void*)&g_count, (void*)g_solutions};
    size_t sizes[] = {sizeof g_size_out, sizeof g_returned, sizeof g_perf, sizeof g_count,
                      sizeof g_solutions};
    for (int v = 0; v < 5; v++)
        for (size_t i = 0; i < sizes[v]; i++)
            if (views[v][i] != 0xA5)
                return 0;
    for (size_t i = 0; i < sizeof g_host_junk; i++)
        if ((unsigned char)g_host_junk[i] != 0x5A)
            return 0;
    return 1;
}

static int device_untouched(prob_t* p)
{
    HIP_OR_DIE(hipStreamSynchronize(p->s));
    ten_t* all[4] = {&p->x, &p->w, &p->y, &p->b};
    int same = 1;
    for (int i = 0; i < 4; i++) {
        unsigned char* now = ten_read(all[i]);
        same &= memcmp(now, all[i]->init, all[i]->bytes) == 0;
        free(now);
    }
    return same;
}

/* Good calls at the edges: they must succeed with the right result. */
static void good_edge_cases(hipStream_t s)
{
    /* The padding covers the kernel's whole reach (input 1, kernel 3, pad 2,
     * stride 3: output 1). */
    static const spec_t pad_covers = {"pad_covers_kernel", F32, 0, 2, 1, 2, 3, 1,
                                      {1, 1}, {3, 3}, {2, 2}, {3, 3}, {1, 1}};
    prob_t p;
    prob_make(&p, &pad_covers, s, 40);
    for (int op = OP_FWD; op <= OP_BWD_WEIGHTS; op++) {
        char name[96];
        snprintf(name, sizeof name, "%s_%s", pad_covers.name, op_names[op]);
        unsigned char* want = op_expected(&p, op, 1.0f, 0.0f);
        marker("case", name);
        miopenStatus_t st = op_call(&p, op, 1.0f, 0.0f);
        marker("end", name);
        HIP_OR_DIE(hipStreamSynchronize(s));
        ten_t* o = op_output(&p, op);
        unsigned char* now = ten_read(o);
        check(st == miopenStatusSuccess && matches(&o->t, now, want), "good %s status=%d", name,
              (int)st);
        ten_upload(o);
        free(now);
        free(want);
    }

    /* Workspace: the CPU route needs none, so no workspace, or a "too small"
     * one at an address nobody may touch, must both work. */
    prob_make(&p, &SPEC_F32, s, 50);
    void* bogus_ws[2] = {NULL, (void*)(uintptr_t)0x10};
    size_t ws_sizes[2] = {0, 1};
    for (int i = 0; i < 2; i++) {
        args_t a;
        args_valid(&a, &p);
        a.ws = bogus_ws[i];
        a.ws_size = ws_sizes[i];
        char name[64];
        snprintf(name, sizeof name, "workspace_%zu_bytes_at_%p", ws_sizes[i], bogus_ws[i]);
        unsigned char* want = op_expected(&p, OP_FWD, 1.0f, 0.0f);
        marker("case", name);
        miopenStatus_t st = call_export(E_FWD, &a);
        marker("end", name);
        HIP_OR_DIE(hipStreamSynchronize(s));
        unsigned char* now = ten_read(&p.y);
        check(st == miopenStatusSuccess && matches(&p.y.t, now, want), "good %s status=%d",
              name, (int)st);
        ten_upload(&p.y);
        free(now);
        free(want);
    }
    /* ... and the workspace the shim asks for is 0. */
    args_t a;
    args_valid(&a, &p);
    g_size_out = 12345;
    marker("case", "workspace_query");
    miopenStatus_t st = call_export(E_WS_FWD, &a);
    marker("end", "workspace_query");
    check(st == miopenStatusSuccess && g_size_out == 0, "good workspace_query size=%zu",
          g_size_out);
}

static int mode_badinput(void)
{
    hipStream_t s;
    HIP_OR_DIE(hipStreamCreateWithFlags(&s, hipStreamNonBlocking));
    prob_t p;
    prob_make(&p, &SPEC_F32, s, 7);
    int tried = 0;
    for (int i = 0; i < NUM_BAD; i++) {
        const bad_case_t* c = &g_bad[i];
        args_t a;
        args_valid(&a, &p);
        c->spoil(&a, &p);
        poison_host_outputs();
        char name[160];
        snprintf(name, sizeof name, "%s/%s", c->name, export_names[c->export]);
        printf("@@bad %s expect=%d\n", name, (int)c->expect);
        marker("case", name);
        miopenStatus_t st = call_export(c->export, &a);
        marker("end", name);
        int dev_same = device_untouched(&p);
        int host_same = host_outputs_untouched();
        check(st == c->expect && dev_same && host_same,
              "bad %s: status %s (want %s), device %s, host out-params %s", name,
              miopenGetErrorString(st), miopenGetErrorString(c->expect),
              dev_same ? "untouched" : "WRITTEN", host_same ? "untouched" : "WRITTEN");
        tried++;
        /* a failed check must not spill into the next case */
        ten_upload(&p.x);
        ten_upload(&p.w);
        ten_upload(&p.y);
        ten_upload(&p.b);
        /* the next good call still works */
        unsigned char* want = op_expected(&p, OP_FWD, 1.0f, 0.0f);
        st = op_call(&p, OP_FWD, 1.0f, 0.0f);
        HIP_OR_DIE(hipStreamSynchronize(s));
        unsigned char* now = ten_read(&p.y);
        if (st != miopenStatusSuccess || !matches(&p.y.t, now, want))
            check(0, "good call after %s: status %d", name, (int)st);
        ten_upload(&p.y);
        free(now);
        free(want);
    }
    printf("@@bad_inputs_tried n=%d\n", tried);
    good_edge_cases(s);
    return finish();
}

/* ------------------------------------------------------------------ */
/* fault                                                                */
/* ------------------------------------------------------------------ */

static void print_counts(const char* when)
{
    printf("@@counts %s hipMemcpyAsync=%d hipStreamSynchronize=%d hipHostMalloc=%d "
           "hipEventCreateWithFlags=%d hipEventRecord=%d hipEventSynchronize=%d "
           "hipMemcpy2DAsync=%d hipMemset2DAsync=%d\n",
           when, fakehip_stats("hipMemcpyAsync"), fakehip_stats("hipStreamSynchronize"),
           fakehip_stats("hipHostMalloc"), fakehip_stats("hipEventCreateWithFlags"),
           fakehip_stats("hipEventRecord"), fakehip_stats("hipEventSynchronize"),
           fakehip_stats("hipMemcpy2DAsync"), fakehip_stats("hipMemset2DAsync"));
    fflush(stdout);
}

/* One letter per sample (the outermost dim) of the output: U untouched, C complete,
 * P partial. A pipelined call that fails writes whole samples or nothing. */
static void classify_samples(const ten_t* o, const unsigned char* now, const unsigned char* want,
                             char* letters)
{
    size_t n;
    size_t* off = element_offsets(&o->t, &n);
    int samples = o->t.lens[0];
    size_t per = n / (size_t)samples, es = nc_num_bytes(&o->t) / nc_element_space(&o->t);
    double tol = o->t.dtype == F32 ? 1e-4 : o->t.dtype == F16 ? 2e-2 : 6e-2;
    for (int s = 0; s < samples; s++) {
        int same = 1, right = want != NULL;
        for (size_t i = s * per; i < (s + 1) * per; i++) {
            if (memcmp(now + off[i] * es, o->init + off[i] * es, es) != 0)
                same = 0;
            if (want) {
                double g = nc_load(o->t.dtype, now, off[i]), w = nc_load(o->t.dtype, want, off[i]);
                if (!(fabs(g - w) <= tol * (1.0 + fabs(w))))
                    right = 0;
            }
        }
        letters[s] = same ? 'U' : right ? 'C' : 'P';
    }
    letters[samples] = 0;
    free(off);
}

/* Runs `op` once and reports status and what the output holds. */
static void run_and_classify(prob_t* p, int op, float alpha, float beta, const char* label)
{
    unsigned char* want = op_expected(p, op, alpha, beta);
    marker("case", label);
    miopenStatus_t st = op_call(p, op, alpha, beta);
    marker("end", label);
    if (strcmp(label, "first") == 0)
        print_counts("after");
    HIP_OR_DIE(hipStreamSynchronize(p->s));
    ten_t* o = op_output(p, op);
    unsigned char* now = ten_read(o);
    const char* what = classify(o, now, want);
    char samples[64];
    classify_samples(o, now, want, samples);
    printf("@@%s status=%d output=%s samples=%s\n", label, (int)st, what, samples);
    /* inputs never change */
    ten_t* all[4] = {&p->x, &p->w, &p->y, &p->b};
    for (int i = 0; i < 4; i++) {
        if (all[i] == o)
            continue;
        unsigned char* in = ten_read(all[i]);
        check(memcmp(in, all[i]->init, all[i]->bytes) == 0, "%s: input %d unchanged", label, i);
        free(in);
    }
    /* Only a call cut into chunks may have written some samples before failing, and
     * never part of one; except that an input gradient over skipped rows zeroes the
     * rows between while it computes, so a failure after that leaves them written
     * (the error says that the samples may have been written). */
    int chunked = getenv("RDNA1SHIM_CHUNKS") != NULL;
    int gaps_after = p->spec == &SPEC_F16_NHWC_ROWS && op == OP_BWD_DATA;
    check(strcmp(what, "partial") != 0 ||
              (st != miopenStatusSuccess && (gaps_after || (chunked && !strchr(samples, 'P')))),
          "%s: output is %s, samples %s (status %d)", label, what, samples, (int)st);
    ten_upload(o);
    free(now);
    free(want);
}

static int mode_fault(int op, int beta0, int rows, int plain)
{
    hipStream_t s;
    HIP_OR_DIE(hipStreamCreateWithFlags(&s, hipStreamNonBlocking));
    prob_t p;
    /* fp16 channels-last: every staging path (conversion, gaps) is used; with --rows,
     * pitched copies of the rows read; with --plain, fp32 NCHW, alpha 1 and beta 0 (a
     * forward pass or weight gradient the shim may run as one gated engine call; the
     * weight gradient over eight input channels) */
    const spec_t* plain_spec = op == OP_BWD_WEIGHTS ? &SPEC_F32_C8 : &SPEC_F32;
    prob_make(&p, plain ? plain_spec : rows ? &SPEC_F16_NHWC_ROWS : &SPEC_F16_NHWC, s, 11);
    float alpha = plain ? 1.0f : 1.5f, beta = beta0 || plain ? 0.0f : 0.5f;
    print_counts("before");
    run_and_classify(&p, op, alpha, beta, "first");
    run_and_classify(&p, op, alpha, beta, "recovery");
    return finish();
}

/* ------------------------------------------------------------------ */
/* oom                                                                  */
/* ------------------------------------------------------------------ */

static size_t address_space_bytes(void)
{
    FILE* f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    if (!f || fscanf(f, "%lu", &pages) != 1)
        die("cannot read /proc/self/statm");
    fclose(f);
    return pages * (size_t)sysconf(_SC_PAGESIZE);
}

static int mode_oom(void)
{
    hipStream_t s;
    HIP_OR_DIE(hipStreamCreateWithFlags(&s, hipStreamNonBlocking));
    prob_t p;
    prob_make(&p, &SPEC_F32, s, 21);
    /* warm up: runtime, thread pool, staging cache */
    run_and_classify(&p, OP_FWD, 1.0f, 0.0f, "warmup");
    ten_upload(&p.y);

    miopenConvolutionDescriptor_t c1;
    int zero[2] = {0, 0}, one[2] = {1, 1};
    MIO_OR_DIE(miopenCreateConvolutionDescriptor(&c1));
    MIO_OR_DIE(miopenInitConvolutionNdDescriptor(c1, 2, zero, one, one, miopenConvolution));

    /* A: x's four elements lie 1.5 GiB apart, so its staging buffer cannot be had. */
    int xl[4] = {1, 1, 2, 2}, xs[4] = {1, 1, 1 << 28, 1 << 27};
    int wl[4] = {1, 1, 1, 1}, yl[4] = {1, 1, 2, 2};
    miopenTensorDescriptor_t xa = make_desc(F32, 4, xl, xs), wa = make_desc(F32, 4, wl, NULL),
                             ya = make_desc(F32, 4, yl, NULL);
    size_t xa_bytes = ((size_t)(1 << 28) + (1 << 27) + 1) * 4;
    void *xa_dev, *wa_dev, *ya_dev;
    HIP_OR_DIE(hipMalloc(&xa_dev, xa_bytes));
    HIP_OR_DIE(hipMalloc(&wa_dev, 4));
    HIP_OR_DIE(hipMalloc(&ya_dev, 16));
    float one_f = 1.0f, sentinel[4] = {7, 7, 7, 7};
    HIP_OR_DIE(hipMemcpy(wa_dev, &one_f, 4, hipMemcpyHostToDevice));
    HIP_OR_DIE(hipMemcpy(ya_dev, sentinel, 16, hipMemcpyHostToDevice));

    /* B: backward-weights whose x and dy repeat one element 2^28 times (zero
     * strides): tiny staging, but 1 GiB f32 working copies. */
    int bl[4] = {1, 1, 1, 1 << 28}, zs[4] = {0, 0, 0, 0};
    miopenTensorDescriptor_t xb = make_desc(F32, 4, bl, zs), dyb = make_desc(F32, 4, bl, zs),
                             dwb = make_desc(F32, 4, wl, NULL);
    void *xb_dev, *dyb_dev, *dwb_dev;
    HIP_OR_DIE(hipMalloc(&xb_dev, 4));
    HIP_OR_DIE(hipMalloc(&dyb_dev, 4));
    HIP_OR_DIE(hipMalloc(&dwb_dev, 4));
    HIP_OR_DIE(hipMemcpy(xb_dev, &one_f, 4, hipMemcpyHostToDevice));
    HIP_OR_DIE(hipMemcpy(dyb_dev, &one_f, 4, hipMemcpyHostToDevice));
    HIP_OR_DIE(hipMemcpy(dwb_dev, sentinel, 4, hipMemcpyHostToDevice));

    struct rlimit old, lim;
    if (getrlimit(RLIMIT_AS, &old))
        die("getrlimit");
    lim = old;
    lim.rlim_cur = address_space_bytes() + (512u << 20);
    if (setrlimit(RLIMIT_AS, &lim))
        die("setrlimit");
    printf("@@rlimit_as bytes=%zu\n", (size_t)lim.rlim_cur);

    float alpha = 1.0f, beta = 0.0f;
    marker("case", "oom_staging");
    miopenStatus_t sa = miopenConvolutionForward(p.h, &alpha, xa, xa_dev, wa, wa_dev, c1,
                                                 miopenConvolutionFwdAlgoGEMM, &beta, ya, ya_dev,
                                                 NULL, 0);
    marker("end", "oom_staging");
    marker("case", "oom_working_copy");
    miopenStatus_t sb = miopenConvolutionBackwardWeights(p.h, &alpha, dyb, dyb_dev, xb, xb_dev, c1,
                                                         miopenConvolutionBwdWeightsAlgoGEMM,
                                                         &beta, dwb, dwb_dev, NULL, 0);
    marker("end", "oom_working_copy");
    if (setrlimit(RLIMIT_AS, &old))
        die("restoring RLIMIT_AS");
    printf("@@oom_staging status=%d\n@@oom_working_copy status=%d\n", (int)sa, (int)sb);

    HIP_OR_DIE(hipStreamSynchronize(s));
    float back[4];
    HIP_OR_DIE(hipMemcpy(back, ya_dev, 16, hipMemcpyDeviceToHost));
    check(sa == miopenStatusAllocFailed && memcmp(back, sentinel, 16) == 0,
          "oom_staging: status %s, y untouched", miopenGetErrorString(sa));
    HIP_OR_DIE(hipMemcpy(back, dwb_dev, 4, hipMemcpyDeviceToHost));
    check(sb == miopenStatusAllocFailed && memcmp(back, sentinel, 4) == 0,
          "oom_working_copy: status %s, dw untouched", miopenGetErrorString(sb));
    run_and_classify(&p, OP_FWD, 1.0f, 0.0f, "recovery");
    return finish();
}

/* ------------------------------------------------------------------ */
/* threads                                                              */
/* ------------------------------------------------------------------ */

/* large enough that the engine splits its work over the whole pool */
static const spec_t SPEC_F32_POOL = {"2d_f32_pool", F32, 1, 2, 4, 16, 32, 1,
                                     {24, 24}, {3, 3}, {1, 1}, {1, 1}, {1, 1}};
#define NUM_SPECS 4
static const spec_t* const g_specs[NUM_SPECS] = {&SPEC_F32, &SPEC_F16_NHWC, &SPEC_BF16_3D,
                                                 &SPEC_F32_POOL};
static const float g_ab[OP_COUNT][2] = {
    {1.0f, 0.0f}, {1.0f, 0.0f}, {0.5f, 0.25f}, {1.0f, 0.0f}, {1.0f, 0.5f}};

typedef struct {
    unsigned char* out[NUM_SPECS][OP_COUNT]; /* first iteration's results */
    size_t bytes[NUM_SPECS][OP_COUNT];
    long calls;
    int mismatches;
    int errors;
} results_t;

typedef struct {
    int iters;
    pthread_barrier_t* start;
    results_t r;
} worker_t;

/* Runs every op of every problem `iters` times on a fresh handle and stream;
 * keeps the first results and counts differences in later iterations. */
static void run_all(results_t* r, int iters, pthread_barrier_t* start)
{
    hipStream_t s;
    HIP_OR_DIE(hipStreamCreateWithFlags(&s, hipStreamNonBlocking));
    prob_t p[NUM_SPECS];
    for (int i = 0; i < NUM_SPECS; i++)
        prob_make(&p[i], g_specs[i], s, 100 + 10 * (unsigned)i);
    if (start)
        pthread_barrier_wait(start);
    for (int it = 0; it < iters; it++) {
        for (int i = 0; i < NUM_SPECS; i++) {
            for (int op = 0; op < OP_COUNT; op++) {
                ten_t* o = op_output(&p[i], op);
                /* restore every operand on the stream, as a framework would write them */
                ten_t* all[4] = {&p[i].x, &p[i].w, &p[i].y, &p[i].b};
                for (int k = 0; k < 4; k++)
                    HIP_OR_DIE(hipMemcpyAsync(all[k]->dev, all[k]->init, all[k]->bytes,
                                              hipMemcpyHostToDevice, s));
                size_t ws = 1;
                miopenConvAlgoPerf_t perf;
                int got = 0;
                if (op == OP_FWD) {
                    r->calls += 2;
                    if (miopenConvolutionForwardGetWorkSpaceSize(p[i].h, p[i].w.d, p[i].x.d,
                                                                 p[i].cd, p[i].y.d,
                                                                 &ws) != miopenStatusSuccess ||
                        ws != 0 ||
                        miopenFindConvolutionForwardAlgorithm(
                            p[i].h, p[i].x.d, p[i].x.dev, p[i].w.d, p[i].w.dev, p[i].cd, p[i].y.d,
                            p[i].y.dev, 1, &got, &perf, NULL, 0, false) != miopenStatusSuccess ||
                        got != 1)
                        r->errors++;
                }
                miopenStatus_t st = op_call(&p[i], op, g_ab[op][0], g_ab[op][1]);
                r->calls++;
                unsigned char* back = malloc(o->bytes);
                if (!back)
                    die("malloc");
                HIP_OR_DIE(hipMemcpyAsync(back, o->dev, o->bytes, hipMemcpyDeviceToHost, s));
                HIP_OR_DIE(hipStreamSynchronize(s));
                if (st != miopenStatusSuccess) {
                    r->errors++;
                    free(back);
                } else if (it == 0) {
                    r->out[i][op] = back;
                    r->bytes[i][op] = o->bytes;
                } else {
                    if (memcmp(back, r->out[i][op], o->bytes) != 0)
                        r->mismatches++;
                    free(back);
                }
            }
        }
    }
    /* the single-threaded results must also be right, not only repeatable */
    if (!start) {
        for (int i = 0; i < NUM_SPECS; i++)
            for (int op = 0; op < OP_COUNT; op++) {
                unsigned char* want = op_expected(&p[i], op, g_ab[op][0], g_ab[op][1]);
                ten_t* o = op_output(&p[i], op);
                check(r->out[i][op] && matches(&o->t, r->out[i][op], want),
                      "single-threaded %s %s matches the reference", g_specs[i]->name,
                      op_names[op]);
                free(want);
            }
    }
}

static void* worker_main(void* arg)
{
    worker_t* w = arg;
    run_all(&w->r, w->iters, w->start);
    return NULL;
}

static int mode_threads(int nthreads, int iters)
{
    if (nthreads < 1 || nthreads > 64 || iters < 1)
        die("bad --threads/--iters");
    worker_t* w = calloc((size_t)nthreads, sizeof *w);
    pthread_t* tid = calloc((size_t)nthreads, sizeof *tid);
    pthread_barrier_t start;
    if (!w || !tid || pthread_barrier_init(&start, NULL, (unsigned)nthreads))
        die("threads setup");
    /* Every thread's first call races the shim's initialisation. */
    for (int t = 0; t < nthreads; t++) {
        w[t].iters = iters;
        w[t].start = &start;
        if (pthread_create(&tid[t], NULL, worker_main, &w[t]))
            die("pthread_create");
    }
    long calls = 0;
    for (int t = 0; t < nthreads; t++) {
        pthread_join(tid[t], NULL);
        calls += w[t].r.calls;
    }
    printf("@@concurrent_calls n=%ld\n", calls);
    results_t single = {0};
    run_all(&single, 1, NULL);
    for (int t = 0; t < nthreads; t++) {
        int differ = 0;
        for (int i = 0; i < NUM_SPECS; i++)
            for (int op = 0; op < OP_COUNT; op++) {
                const results_t* r = &w[t].r;
                if (!r->out[i][op] || !single.out[i][op] ||
                    r->bytes[i][op] != single.bytes[i][op] ||
                    memcmp(r->out[i][op], single.out[i][op], r->bytes[i][op]) != 0)
                    differ++;
            }
        check(w[t].r.errors == 0 && w[t].r.mismatches == 0 && differ == 0,
              "thread %d: %ld calls, %d errors, %d results differing between iterations, %d "
              "differing from the single-threaded run",
              t, w[t].r.calls, w[t].r.errors, w[t].r.mismatches, differ);
    }
    return finish();
}

/* ------------------------------------------------------------------ */
/* fork                                                                 */
/* ------------------------------------------------------------------ */

/* Runs every op of the two problems on `s` and checks each against the reference. */
static int all_ops_right(hipStream_t s, const char* who)
{
    int bad = 0;
    for (int i = 0; i < 2; i++) {
        prob_t p;
        prob_make(&p, g_specs[i], s, 60 + (unsigned)i);
        for (int op = 0; op < OP_COUNT; op++) {
            unsigned char* want = op_expected(&p, op, g_ab[op][0], g_ab[op][1]);
            miopenStatus_t st = op_call(&p, op, g_ab[op][0], g_ab[op][1]);
            HIP_OR_DIE(hipStreamSynchronize(s));
            ten_t* o = op_output(&p, op);
            unsigned char* now = ten_read(o);
            if (st != miopenStatusSuccess || !matches(&o->t, now, want)) {
                printf("%s: %s %s status %d\n", who, g_specs[i]->name, op_names[op], (int)st);
                bad++;
            }
            ten_upload(o);
            free(now);
            free(want);
        }
    }
    return bad;
}

/* Waits up to `secs` for `pid`; returns its wait status, or -1 after killing it. */
static int wait_with_timeout(pid_t pid, int secs)
{
    for (int i = 0; i < secs * 100; i++) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static int mode_fork(void)
{
    hipStream_t s;
    HIP_OR_DIE(hipStreamCreateWithFlags(&s, hipStreamNonBlocking));
    check(all_ops_right(s, "parent before fork") == 0, "parent: every op before fork");
    fflush(NULL);

    pid_t worker = fork();
    if (worker < 0)
        die("fork");
    if (worker == 0) {
        alarm(20);
        /* real HIP does not support a parent's stream in a child; use a fresh one */
        hipStream_t cs;
        HIP_OR_DIE(hipStreamCreateWithFlags(&cs, hipStreamNonBlocking));
        int bad = all_ops_right(cs, "child");
        fflush(NULL);
        exit(bad ? 1 : 0);
    }
    pid_t idle = fork();
    if (idle < 0)
        die("fork");
    if (idle == 0) {
        alarm(20);
        exit(0); /* like most DataLoader workers: never calls MIOpen */
    }
    int ws = wait_with_timeout(worker, 30), is = wait_with_timeout(idle, 30);
    check(ws != -1 && WIFEXITED(ws) && WEXITSTATUS(ws) == 0,
          "child calling the shim after fork finished (wait status %d)", ws);
    check(is != -1 && WIFEXITED(is) && WEXITSTATUS(is) == 0,
          "child not calling the shim exited (wait status %d)", is);
    check(all_ops_right(s, "parent after fork") == 0, "parent: every op after fork");
    return finish();
}

/* ------------------------------------------------------------------ */
/* panic                                                                */
/* ------------------------------------------------------------------ */

static int export_by_name(const char* name)
{
    for (int i = 0; i < (int)(sizeof export_names / sizeof export_names[0]); i++)
        if (strcmp(export_names[i], name) == 0)
            return i;
    die("unknown export %s", name);
}

static int mode_panic(const char* name)
{
    int e = export_by_name(name);
    hipStream_t s;
    HIP_OR_DIE(hipStreamCreateWithFlags(&s, hipStreamNonBlocking));
    prob_t p;
    prob_make(&p, &SPEC_F32, s, 31);
    args_t a;
    args_valid(&a, &p);
    poison_host_outputs();
    marker("case", name);
    miopenStatus_t st = call_export(e, &a); /* the process's first call of the shim */
    marker("end", name);
    printf("@@panic status=%d\n", (int)st);
    int dev_same = device_untouched(&p);
    check(st == miopenStatusInternalError && dev_same && host_outputs_untouched(),
          "%s: status %s, nothing written", name, miopenGetErrorString(st));
    /* the process goes on: another export works */
    int other = e == E_BWD_DATA ? OP_FWD : OP_BWD_DATA;
    unsigned char* want = op_expected(&p, other, 1.0f, 0.0f);
    st = op_call(&p, other, 1.0f, 0.0f);
    HIP_OR_DIE(hipStreamSynchronize(s));
    ten_t* o = op_output(&p, other);
    unsigned char* now = ten_read(o);
    check(st == miopenStatusSuccess && matches(&o->t, now, want), "%s after the panic works",
          op_names[other]);
    free(now);
    free(want);
    return finish();
}

/* ------------------------------------------------------------------ */
/* soak                                                                 */
/* ------------------------------------------------------------------ */

static long rss_kb(void)
{
    FILE* f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

static int mode_soak(long calls)
{
    hipStream_t s;
    HIP_OR_DIE(hipStreamCreateWithFlags(&s, hipStreamNonBlocking));
    prob_t p[NUM_SPECS];
    for (int i = 0; i < NUM_SPECS; i++)
        prob_make(&p[i], g_specs[i], s, 41 + (unsigned)i);
    unsigned char* want[NUM_SPECS][OP_COUNT];
    for (int i = 0; i < NUM_SPECS; i++)
        for (int op = 0; op < OP_COUNT; op++)
            want[i][op] = op_expected(&p[i], op, g_ab[op][0], g_ab[op][1]);
    long warm = -1, bad = 0;
    for (long c = 0; c < calls; c++) {
        int i = (int)(c % NUM_SPECS), op = (int)((c / NUM_SPECS) % OP_COUNT);
        miopenStatus_t st = op_call(&p[i], op, g_ab[op][0], g_ab[op][1]);
        if (st != miopenStatusSuccess)
            bad++;
        if (c % 997 == 0) {
            HIP_OR_DIE(hipStreamSynchronize(s));
            ten_t* o = op_output(&p[i], op);
            unsigned char* now = ten_read(o);
            if (!matches(&o->t, now, want[i][op]))
                bad++;
            free(now);
        }
        /* ops write each other's inputs (and blend with their old output): restore */
        HIP_OR_DIE(hipStreamSynchronize(s));
        ten_upload(op_output(&p[i], op));
        if (c + 1 == calls / 10)
            warm = rss_kb();
    }
    HIP_OR_DIE(hipStreamSynchronize(s));
    long end = rss_kb();
    printf("@@soak calls=%ld rss_warm_kb=%ld rss_end_kb=%ld\n", calls, warm, end);
    check(bad == 0, "soak: %ld of %ld calls failed or were wrong", bad, calls);
    for (int i = 0; i < NUM_SPECS; i++)
        for (int op = 0; op < OP_COUNT; op++)
            free(want[i][op]);
    return finish();
}

/* ------------------------------------------------------------------ */

static const char* opt(int argc, char** argv, const char* name, const char* dflt)
{
    for (int i = 2; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return dflt;
}

static int flag(int argc, char** argv, const char* name)
{
    for (int i = 2; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return 1;
    return 0;
}

int main(int argc, char** argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s badinput|fault|oom|threads|fork|panic|soak [options]\n", argv[0]);
        return 2;
    }
    const char* mode = argv[1];
    if (strcmp(mode, "badinput") == 0)
        return mode_badinput();
    if (strcmp(mode, "fault") == 0)
        return mode_fault(op_by_name(opt(argc, argv, "--op", "fwd")), flag(argc, argv, "--beta0"),
                          flag(argc, argv, "--rows"), flag(argc, argv, "--plain"));
    if (strcmp(mode, "oom") == 0)
        return mode_oom();
    if (strcmp(mode, "threads") == 0)
        return mode_threads(atoi(opt(argc, argv, "--threads", "4")),
                            atoi(opt(argc, argv, "--iters", "3")));
    if (strcmp(mode, "fork") == 0)
        return mode_fork();
    if (strcmp(mode, "panic") == 0)
        return mode_panic(opt(argc, argv, "--export", "miopenConvolutionForward"));
    if (strcmp(mode, "soak") == 0)
        return mode_soak(atol(opt(argc, argv, "--calls", "10000")));
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
