/*
 * naive_conv.c -- owns the reference convolution used to judge rdna1shim: the
 * most direct loops possible over (n, group, out-channel, out-position,
 * in-channel, kernel tap), in double precision, on operands gathered from
 * arbitrarily strided host images, with results rounded to nearest-even on the
 * way back. No cleverness on purpose: correctness by inspection.
 */
#include "naive_conv.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char* err, size_t errlen, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char* err, size_t errlen, const char* fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* ------------------------------------------------------------------ */
/* element types                                                        */
/* ------------------------------------------------------------------ */

size_t nc_dtype_size(int dtype)
{
    switch (dtype) {
    case 0: return 2; /* half */
    case 1: return 4; /* float */
    case 2: return 4; /* int32 */
    case 3: return 1; /* int8 */
    case 5: return 2; /* bfloat16 */
    case 6: return 8; /* double */
    case 7: return 1; /* fp8 */
    case 8: return 1; /* bf8 */
    case 9: return 8; /* int64 */
    default: return 0;
    }
}

int nc_dtype_supported(int dtype)
{
    return dtype == 0 || dtype == 1 || dtype == 5 || dtype == 6;
}

const char* nc_dtype_name(int dtype)
{
    switch (dtype) {
    case 0: return "f16";
    case 1: return "f32";
    case 5: return "bf16";
    case 6: return "f64";
    default: return "unsupported";
    }
}

double nc_half_to_double(uint16_t h)
{
    int sign = h >> 15;
    int e = (h >> 10) & 0x1f;
    int m = h & 0x3ff;
    double v;
    if (e == 0)
        v = ldexp((double)m, -24);
    else if (e == 31)
        v = m ? NAN : INFINITY;
    else
        v = ldexp((double)(m + 1024), e - 25);
    return sign ? -v : v;
}

double nc_bf16_to_double(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return (double)f;
}

/* Encodes v into a binary floating-point format with `mbits` stored mantissa
 * bits and `ebits` exponent bits (IEEE-style: subnormals, inf, NaN), rounding
 * the exact double value once, to nearest, ties to even. */
static uint32_t encode_small_float(double v, int mbits, int ebits)
{
    const int bias = (1 << (ebits - 1)) - 1;
    const uint32_t expmax = (1u << ebits) - 1;
    const uint32_t sign = signbit(v) ? (1u << (mbits + ebits)) : 0;
    if (isnan(v))
        return sign | (expmax << mbits) | (1u << (mbits - 1));
    double a = fabs(v);
    if (isinf(a))
        return sign | (expmax << mbits);
    if (a == 0.0)
        return sign;
    const int emin = 1 - bias;
    int e;
    frexp(a, &e);
    e -= 1; /* a in [2^e, 2^(e+1)) */
    if (e < emin)
        e = emin;
    /* Scaling by a power of two is exact; rint rounds half to even. */
    double m = rint(ldexp(a, mbits - e));
    if (m >= ldexp(1.0, mbits + 1)) {
        m = ldexp(1.0, mbits);
        e += 1;
    }
    if (m < ldexp(1.0, mbits)) /* subnormal (only possible at e == emin) */
        return sign | (uint32_t)m;
    if (e > bias)
        return sign | (expmax << mbits);
    return sign | ((uint32_t)(e + bias) << mbits) | ((uint32_t)m - (1u << mbits));
}

uint16_t nc_double_to_half(double v) { return (uint16_t)encode_small_float(v, 10, 5); }

uint16_t nc_double_to_bf16(double v) { return (uint16_t)encode_small_float(v, 7, 8); }

double nc_load(int dtype, const void* base, size_t off)
{
    switch (dtype) {
    case 0: {
        uint16_t h;
        memcpy(&h, (const char*)base + off * 2, 2);
        return nc_half_to_double(h);
    }
    case 1: {
        float f;
        memcpy(&f, (const char*)base + off * 4, 4);
        return f;
    }
    case 5: {
        uint16_t h;
        memcpy(&h, (const char*)base + off * 2, 2);
        return nc_bf16_to_double(h);
    }
    case 6: {
        double d;
        memcpy(&d, (const char*)base + off * 8, 8);
        return d;
    }
    default: return NAN;
    }
}

void nc_store(int dtype, void* base, size_t off, double v)
{
    switch (dtype) {
    case 0: {
        uint16_t h = nc_double_to_half(v);
        memcpy((char*)base + off * 2, &h, 2);
        break;
    }
    case 1: {
        float f = (float)v;
        memcpy((char*)base + off * 4, &f, 4);
        break;
    }
    case 5: {
        uint16_t h = nc_double_to_bf16(v);
        memcpy((char*)base + off * 2, &h, 2);
        break;
    }
    case 6: memcpy((char*)base + off * 8, &v, 8); break;
    default: break;
    }
}

double nc_round_to(int dtype, double v)
{
    unsigned char buf[8];
    nc_store(dtype, buf, 0, v);
    return nc_load(dtype, buf, 0);
}

/* ------------------------------------------------------------------ */
/* tensor geometry                                                      */
/* ------------------------------------------------------------------ */

size_t nc_num_elements(const nc_tensor* t)
{
    size_t n = 1;
    for (int i = 0; i < t->nd; i++)
        n *= (size_t)t->lens[i];
    return n;
}

size_t nc_element_space(const nc_tensor* t)
{
    size_t s = 1;
    for (int i = 0; i < t->nd; i++) {
        if (t->lens[i] == 0)
            return 0;
        s += (size_t)(t->lens[i] - 1) * (size_t)t->strides[i];
    }
    return s;
}

size_t nc_num_bytes(const nc_tensor* t) { return nc_element_space(t) * nc_dtype_size(t->dtype); }

void nc_packed_strides(nc_tensor* t)
{
    long long s = 1;
    for (int i = t->nd - 1; i >= 0; i--) {
        t->strides[i] = s;
        s *= t->lens[i];
    }
}

void nc_channels_last_strides(nc_tensor* t)
{
    long long s = 1;
    t->strides[1] = s;
    s *= t->lens[1];
    for (int i = t->nd - 1; i >= 2; i--) {
        t->strides[i] = s;
        s *= t->lens[i];
    }
    t->strides[0] = s;
}

static int check_tensor(const nc_tensor* t, const char* what, char* err, size_t errlen)
{
    if (t->nd < 3 || t->nd > NC_MAX_DIMS)
        return fail(err, errlen, "%s: %d dims (need 3..5)", what, t->nd);
    if (!nc_dtype_supported(t->dtype))
        return fail(err, errlen, "%s: unsupported data type %d", what, t->dtype);
    for (int i = 0; i < t->nd; i++) {
        if (t->lens[i] < 1)
            return fail(err, errlen, "%s: length %d of dim %d", what, t->lens[i], i);
        if (t->strides[i] < 0)
            return fail(err, errlen, "%s: negative stride of dim %d", what, i);
    }
    return 0;
}

/* Reads every logical element, in row-major order of lens, into a dense array. */
static double* gather(const nc_tensor* t, const void* p)
{
    size_t count = nc_num_elements(t);
    double* d = malloc((count ? count : 1) * sizeof(double));
    if (!d)
        return NULL;
    int idx[NC_MAX_DIMS] = {0};
    long long off = 0;
    for (size_t i = 0; i < count; i++) {
        d[i] = nc_load(t->dtype, p, (size_t)off);
        for (int k = t->nd - 1; k >= 0; k--) {
            idx[k]++;
            off += t->strides[k];
            if (idx[k] < t->lens[k])
                break;
            off -= t->strides[k] * t->lens[k];
            idx[k] = 0;
        }
    }
    return d;
}

/* Writes out = alpha * r + beta * out for every logical element (dense r). */
static void scatter(const nc_tensor* t, void* p, const double* r, double alpha, double beta)
{
    size_t count = nc_num_elements(t);
    int idx[NC_MAX_DIMS] = {0};
    long long off = 0;
    for (size_t i = 0; i < count; i++) {
        double v = alpha * r[i];
        if (beta != 0.0)
            v += beta * nc_load(t->dtype, p, (size_t)off);
        nc_store(t->dtype, p, (size_t)off, v);
        for (int k = t->nd - 1; k >= 0; k--) {
            idx[k]++;
            off += t->strides[k];
            if (idx[k] < t->lens[k])
                break;
            off -= t->strides[k] * t->lens[k];
            idx[k] = 0;
        }
    }
}

/* lens as 5 numbers: N, C, D, H, W with missing leading spatial dims = 1. */
static void canon_lens(const nc_tensor* t, int l5[5])
{
    int sp = t->nd - 2;
    l5[0] = t->lens[0];
    l5[1] = t->lens[1];
    for (int i = 0; i < 3; i++)
        l5[2 + i] = 1;
    for (int i = 0; i < sp; i++)
        l5[2 + (3 - sp) + i] = t->lens[2 + i];
}

static void canon_params(const nc_conv* cv, int pad[3], int str[3], int dil[3])
{
    int sp = cv->spatial;
    for (int i = 0; i < 3; i++) {
        pad[i] = 0;
        str[i] = 1;
        dil[i] = 1;
    }
    for (int i = 0; i < sp; i++) {
        pad[3 - sp + i] = cv->pad[i];
        str[3 - sp + i] = cv->stride[i];
        dil[3 - sp + i] = cv->dil[i];
    }
}

/* Maps (dir, a, b, out) to the regular-convolution roles X (input), W
 * (weights), Y (output) -- as operand indices 0 = a, 1 = b, 2 = out -- and the
 * regular direction actually computed. */
static int regular_roles(int dir, int transpose, int* xi, int* wi, int* yi, int* rdir)
{
    if (!transpose) {
        switch (dir) {
        case NC_FWD: *xi = 0; *wi = 1; *yi = 2; *rdir = NC_FWD; return 0;
        case NC_BWD_DATA: *yi = 0; *wi = 1; *xi = 2; *rdir = NC_BWD_DATA; return 0;
        case NC_BWD_WEIGHTS: *yi = 0; *xi = 1; *wi = 2; *rdir = NC_BWD_WEIGHTS; return 0;
        default: return -1;
        }
    }
    switch (dir) {
    case NC_FWD: *yi = 0; *wi = 1; *xi = 2; *rdir = NC_BWD_DATA; return 0;
    case NC_BWD_DATA: *xi = 0; *wi = 1; *yi = 2; *rdir = NC_FWD; return 0;
    case NC_BWD_WEIGHTS: *xi = 0; *yi = 1; *wi = 2; *rdir = NC_BWD_WEIGHTS; return 0;
    default: return -1;
    }
}

static int validate_regular(const nc_conv* cv, const nc_tensor* X, const nc_tensor* W,
                            const nc_tensor* Y, char* err, size_t errlen)
{
    if (check_tensor(X, "x", err, errlen) || check_tensor(W, "w", err, errlen) ||
        check_tensor(Y, "y", err, errlen))
        return -1;
    if (X->dtype != W->dtype || X->dtype != Y->dtype)
        return fail(err, errlen, "data types differ (x %d, w %d, y %d)", X->dtype, W->dtype,
                    Y->dtype);
    if (X->nd != W->nd || X->nd != Y->nd)
        return fail(err, errlen, "dims differ (x %d, w %d, y %d)", X->nd, W->nd, Y->nd);
    if (cv->spatial != X->nd - 2)
        return fail(err, errlen, "convolution has %d spatial dims, tensors have %d",
                    cv->spatial, X->nd - 2);
    int g = cv->groups;
    if (g < 1)
        return fail(err, errlen, "group count %d", g);
    int N = X->lens[0], C = X->lens[1], K = Y->lens[1];
    if (Y->lens[0] != N)
        return fail(err, errlen, "batch differs (x %d, y %d)", N, Y->lens[0]);
    if (C % g || K % g)
        return fail(err, errlen, "channels (in %d, out %d) not divisible by groups %d", C, K, g);
    if (W->lens[0] != K || W->lens[1] * g != C)
        return fail(err, errlen, "weights [%d, %d, ...] do not fit in=%d out=%d groups=%d",
                    W->lens[0], W->lens[1], C, K, g);
    for (int i = 0; i < cv->spatial; i++) {
        int p = cv->pad[i], s = cv->stride[i], d = cv->dil[i];
        if (p < 0 || s < 1 || d < 1)
            return fail(err, errlen, "bad pad/stride/dilation %d/%d/%d in spatial dim %d", p, s,
                        d, i);
        long long span = (long long)d * (W->lens[2 + i] - 1) + 1;
        long long padded = (long long)X->lens[2 + i] + 2LL * p;
        if (padded < span)
            return fail(err, errlen, "kernel span %lld exceeds padded input %lld in dim %d", span,
                        padded, i);
        long long o = (padded - span) / s + 1;
        if (o != Y->lens[2 + i])
            return fail(err, errlen,
                        "spatial dim %d: input %d gives output %lld, descriptor says %d", i,
                        X->lens[2 + i], o, Y->lens[2 + i]);
    }
    return 0;
}

int nc_conv_validate(int dir, const nc_conv* cv, const nc_tensor* a, const nc_tensor* b,
                     const nc_tensor* out, char* err, size_t errlen)
{
    const nc_tensor* t[3] = {a, b, out};
    int xi = 0, wi = 1, yi = 2, rdir = NC_FWD;
    if (cv->spatial < 1 || cv->spatial > 3)
        return fail(err, errlen, "spatial dims %d", cv->spatial);
    if (regular_roles(dir, cv->transpose, &xi, &wi, &yi, &rdir))
        return fail(err, errlen, "bad direction %d", dir);
    return validate_regular(cv, t[xi], t[wi], t[yi], err, errlen);
}

/* The whole reference: accumulates the regular direction `rdir` into the
 * dense array of its output role. */
static void compute(int rdir, const nc_conv* cv, const int xl[5], const int wl[5],
                    const int yl[5], double* X, double* W, double* Y)
{
    int pad[3], str[3], dil[3];
    canon_params(cv, pad, str, dil);
    const int N = xl[0], C = xl[1], K = yl[1], G = cv->groups;
    const int Cg = C / G, Kg = K / G;
    for (int n = 0; n < N; n++)
        for (int g = 0; g < G; g++)
            for (int kg = 0; kg < Kg; kg++) {
                const int k = g * Kg + kg;
                for (int od = 0; od < yl[2]; od++)
                    for (int oh = 0; oh < yl[3]; oh++)
                        for (int ow = 0; ow < yl[4]; ow++) {
                            size_t yi = ((((size_t)n * K + k) * yl[2] + od) * yl[3] + oh) * yl[4] + ow;
                            for (int cg = 0; cg < Cg; cg++) {
                                const int c = g * Cg + cg;
                                for (int td = 0; td < wl[2]; td++) {
                                    int id = od * str[0] - pad[0] + td * dil[0];
                                    if (id < 0 || id >= xl[2])
                                        continue;
                                    for (int th = 0; th < wl[3]; th++) {
                                        int ih = oh * str[1] - pad[1] + th * dil[1];
                                        if (ih < 0 || ih >= xl[3])
                                            continue;
                                        for (int tw = 0; tw < wl[4]; tw++) {
                                            int iw = ow * str[2] - pad[2] + tw * dil[2];
                                            if (iw < 0 || iw >= xl[4])
                                                continue;
                                            size_t xi = ((((size_t)n * C + c) * xl[2] + id) * xl[3] + ih) * xl[4] + iw;
                                            size_t wi = ((((size_t)k * Cg + cg) * wl[2] + td) * wl[3] + th) * wl[4] + tw;
                                            switch (rdir) {
                                            case NC_FWD: Y[yi] += X[xi] * W[wi]; break;
                                            case NC_BWD_DATA: X[xi] += Y[yi] * W[wi]; break;
                                            default: W[wi] += Y[yi] * X[xi]; break;
                                            }
                                        }
                                    }
                                }
                            }
                        }
            }
}

int nc_conv_run(int dir, const nc_conv* cv, const nc_tensor* a, const void* ap, const nc_tensor* b,
                const void* bp, const nc_tensor* out, void* outp, double alpha, double beta,
                char* err, size_t errlen)
{
    if (nc_conv_validate(dir, cv, a, b, out, err, errlen))
        return -1;
    if (!ap || !bp || !outp)
        return fail(err, errlen, "null buffer");
    const nc_tensor* t[3] = {a, b, out};
    const void* p[3] = {ap, bp, outp};
    int xi = 0, wi = 1, yi = 2, rdir = NC_FWD;
    regular_roles(dir, cv->transpose, &xi, &wi, &yi, &rdir);
    const nc_tensor *X = t[xi], *W = t[wi], *Y = t[yi];
    const void *xp = p[xi], *wp = p[wi], *yp = p[yi];

    int xl[5], wl[5], yl[5];
    canon_lens(X, xl);
    canon_lens(W, wl);
    canon_lens(Y, yl);
    size_t nx = nc_num_elements(X), nw = nc_num_elements(W), ny = nc_num_elements(Y);
    double* dx = (rdir == NC_BWD_DATA) ? calloc(nx ? nx : 1, sizeof(double)) : gather(X, xp);
    double* dw = (rdir == NC_BWD_WEIGHTS) ? calloc(nw ? nw : 1, sizeof(double)) : gather(W, wp);
    double* dy = (rdir == NC_FWD) ? calloc(ny ? ny : 1, sizeof(double)) : gather(Y, yp);
    int rc = 0;
    if (!dx || !dw || !dy) {
        rc = fail(err, errlen, "out of host memory");
    } else {
        compute(rdir, cv, xl, wl, yl, dx, dw, dy);
        const double* r = rdir == NC_FWD ? dy : rdir == NC_BWD_DATA ? dx : dw;
        scatter(out, outp, r, alpha, beta);
    }
    free(dx);
    free(dw);
    free(dy);
    return rc;
}

int nc_forward_bias(const nc_tensor* bd, const void* b, const nc_tensor* yd, void* y, double alpha,
                    double beta, char* err, size_t errlen)
{
    if (check_tensor(yd, "y", err, errlen) || check_tensor(bd, "b", err, errlen))
        return -1;
    if (bd->dtype != yd->dtype || bd->nd != yd->nd)
        return fail(err, errlen, "bias and y descriptors differ in type or rank");
    for (int i = 0; i < yd->nd; i++)
        if (bd->lens[i] != 1 && bd->lens[i] != yd->lens[i])
            return fail(err, errlen, "bias dim %d length %d does not broadcast to %d", i,
                        bd->lens[i], yd->lens[i]);
    if (!b || !y)
        return fail(err, errlen, "null buffer");
    size_t count = nc_num_elements(yd);
    int idx[NC_MAX_DIMS] = {0};
    for (size_t e = 0; e < count; e++) {
        long long yo = 0, bo = 0;
        for (int k = 0; k < yd->nd; k++) {
            yo += idx[k] * yd->strides[k];
            bo += (bd->lens[k] == 1 ? 0 : idx[k]) * bd->strides[k];
        }
        double yv = nc_load(yd->dtype, y, (size_t)yo);
        double bv = nc_load(bd->dtype, b, (size_t)bo);
        nc_store(yd->dtype, y, (size_t)yo, alpha * yv + alpha * bv + beta * yv);
        for (int k = yd->nd - 1; k >= 0; k--) {
            if (++idx[k] < yd->lens[k])
                break;
            idx[k] = 0;
        }
    }
    return 0;
}

int nc_backward_bias(const nc_tensor* dyd, const void* dy, const nc_tensor* dbd, void* db,
                     double alpha, double beta, char* err, size_t errlen)
{
    if (check_tensor(dyd, "dy", err, errlen) || check_tensor(dbd, "db", err, errlen))
        return -1;
    if (dbd->dtype != dyd->dtype || dbd->nd != dyd->nd)
        return fail(err, errlen, "db and dy descriptors differ in type or rank");
    for (int i = 0; i < dbd->nd; i++) {
        int want = (i == 1) ? dyd->lens[1] : 1;
        if (dbd->lens[i] != want)
            return fail(err, errlen, "db dim %d has length %d, expected %d", i, dbd->lens[i],
                        want);
    }
    if (!dy || !db)
        return fail(err, errlen, "null buffer");
    const int C = dyd->lens[1];
    double* sum = calloc((size_t)C, sizeof(double));
    if (!sum)
        return fail(err, errlen, "out of host memory");
    size_t count = nc_num_elements(dyd);
    int idx[NC_MAX_DIMS] = {0};
    for (size_t e = 0; e < count; e++) {
        long long off = 0;
        for (int k = 0; k < dyd->nd; k++)
            off += idx[k] * dyd->strides[k];
        sum[idx[1]] += nc_load(dyd->dtype, dy, (size_t)off);
        for (int k = dyd->nd - 1; k >= 0; k--) {
            if (++idx[k] < dyd->lens[k])
                break;
            idx[k] = 0;
        }
    }
    for (int c = 0; c < C; c++) {
        size_t off = (size_t)(c * dbd->strides[1]);
        double v = alpha * sum[c];
        if (beta != 0.0)
            v += beta * nc_load(dbd->dtype, db, off);
        nc_store(dbd->dtype, db, off, v);
    }
    free(sum);
    return 0;
}
