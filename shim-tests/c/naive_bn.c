/*
 * naive_bn.c -- owns the reference batch normalization used to judge
 * rdna1shim (semantics in naive_bn.h): every element is visited in logical
 * row-major order, assigned to its feature, and the textbook formulas are
 * applied in double precision. No cleverness on purpose: correctness by
 * inspection.
 */
#include "naive_bn.h"

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

static int check(const nc_tensor* t, const char* what, char* err, size_t errlen)
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

int nb_validate(int mode, const nc_tensor* x, const nc_tensor* y, const nc_tensor* dx,
                const nc_tensor* p, char* err, size_t errlen)
{
    if (mode != NB_SPATIAL && mode != NB_PER_ACTIVATION)
        return fail(err, errlen, "unknown batch-norm mode %d", mode);
    if (check(x, "x", err, errlen) || check(p, "scale/bias/mean/var", err, errlen))
        return -1;
    const nc_tensor* data[2] = {y, dx};
    const char* names[2] = {"y/dy", "dx"};
    for (int k = 0; k < 2; k++) {
        const nc_tensor* t = data[k];
        if (!t)
            continue;
        if (check(t, names[k], err, errlen))
            return -1;
        if (t->nd != x->nd || t->dtype != x->dtype)
            return fail(err, errlen, "%s differs from x in rank or type", names[k]);
        for (int i = 0; i < x->nd; i++)
            if (t->lens[i] != x->lens[i])
                return fail(err, errlen, "%s dim %d is %d, x has %d", names[k], i, t->lens[i],
                            x->lens[i]);
    }
    if (p->nd != x->nd)
        return fail(err, errlen, "parameter descriptor has %d dims, x has %d", p->nd, x->nd);
    for (int i = 0; i < x->nd; i++) {
        int want = i == 0 ? 1 : i == 1 ? x->lens[1] : mode == NB_SPATIAL ? 1 : x->lens[i];
        if (p->lens[i] != want)
            return fail(err, errlen, "parameter dim %d is %d, expected %d", i, p->lens[i], want);
    }
    return 0;
}

/* Element offsets of every logical element of t, in row-major order of lens. */
static size_t* offsets(const nc_tensor* t)
{
    size_t n = nc_num_elements(t);
    size_t* o = malloc((n ? n : 1) * sizeof *o);
    if (!o)
        return NULL;
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
    return o;
}

/* Who belongs to which feature. */
typedef struct {
    size_t count;    /* elements of x */
    size_t features; /* values in each parameter tensor */
    size_t m;        /* elements per feature */
    size_t* feat;    /* feature of each logical element */
    size_t* pofs;    /* element offset of each feature in the parameter tensors */
    double* mean;
    double* var;
} plan_t;

static void plan_free(plan_t* P)
{
    free(P->feat);
    free(P->pofs);
    free(P->mean);
    free(P->var);
    memset(P, 0, sizeof *P);
}

static int plan_init(plan_t* P, int mode, const nc_tensor* x, const nc_tensor* p, char* err,
                     size_t errlen)
{
    memset(P, 0, sizeof *P);
    size_t S = 1;
    for (int i = 2; i < x->nd; i++)
        S *= (size_t)x->lens[i];
    size_t C = (size_t)x->lens[1], N = (size_t)x->lens[0];
    P->count = nc_num_elements(x);
    P->features = mode == NB_SPATIAL ? C : C * S;
    P->m = mode == NB_SPATIAL ? N * S : N;
    P->feat = malloc(P->count * sizeof *P->feat);
    P->pofs = offsets(p); /* logical order of [1, C, 1...] or [1, C, spatial...] */
    P->mean = calloc(P->features, sizeof(double));
    P->var = calloc(P->features, sizeof(double));
    if (!P->feat || !P->pofs || !P->mean || !P->var) {
        plan_free(P);
        return fail(err, errlen, "out of host memory");
    }
    for (size_t i = 0; i < P->count; i++) {
        size_t c = (i / S) % C, s = i % S;
        P->feat[i] = mode == NB_SPATIAL ? c : c * S + s;
    }
    return 0;
}

/* Batch mean and biased variance of every feature. */
static void batch_stats(plan_t* P, const nc_tensor* xd, const void* x, const size_t* xo)
{
    for (size_t f = 0; f < P->features; f++)
        P->mean[f] = P->var[f] = 0.0;
    for (size_t i = 0; i < P->count; i++)
        P->mean[P->feat[i]] += nc_load(xd->dtype, x, xo[i]);
    for (size_t f = 0; f < P->features; f++)
        P->mean[f] /= (double)P->m;
    for (size_t i = 0; i < P->count; i++) {
        double d = nc_load(xd->dtype, x, xo[i]) - P->mean[P->feat[i]];
        P->var[P->feat[i]] += d * d;
    }
    for (size_t f = 0; f < P->features; f++)
        P->var[f] /= (double)P->m;
}

/* y = alpha * (scale * (x - mean) * inv + bias) + beta * y, inv per feature. */
static void normalize(const plan_t* P, const nc_tensor* xd, const void* x, const size_t* xo,
                      const nc_tensor* yd, void* y, const size_t* yo, const nc_tensor* pd,
                      const void* scale, const void* bias, const double* inv, double alpha,
                      double beta)
{
    for (size_t i = 0; i < P->count; i++) {
        size_t f = P->feat[i];
        double sc = nc_load(pd->dtype, scale, P->pofs[f]);
        double b = nc_load(pd->dtype, bias, P->pofs[f]);
        double v = sc * (nc_load(xd->dtype, x, xo[i]) - P->mean[f]) * inv[f] + b;
        v *= alpha;
        if (beta != 0.0)
            v += beta * nc_load(yd->dtype, y, yo[i]);
        nc_store(yd->dtype, y, yo[i], v);
    }
}

int nb_forward_training(int mode, const nc_tensor* xd, const void* x, const nc_tensor* yd,
                        void* y, const nc_tensor* pd, const void* scale, const void* bias,
                        double factor, void* run_mean, void* run_var, double eps,
                        void* saved_mean, void* saved_inv, double alpha, double beta, char* err,
                        size_t errlen)
{
    if (nb_validate(mode, xd, yd, NULL, pd, err, errlen))
        return -1;
    if (!x || !y || !scale || !bias)
        return fail(err, errlen, "null buffer");
    plan_t P;
    if (plan_init(&P, mode, xd, pd, err, errlen))
        return -1;
    size_t* xo = offsets(xd);
    size_t* yo = offsets(yd);
    double* inv = malloc(P.features * sizeof *inv);
    if (!xo || !yo || !inv) {
        free(xo);
        free(yo);
        free(inv);
        plan_free(&P);
        return fail(err, errlen, "out of host memory");
    }
    batch_stats(&P, xd, x, xo);
    for (size_t f = 0; f < P.features; f++)
        inv[f] = 1.0 / sqrt(P.var[f] + eps);
    normalize(&P, xd, x, xo, yd, y, yo, pd, scale, bias, inv, alpha, beta);
    if (run_mean && run_var) {
        double unbias = P.m == 1 ? 1.0 : (double)P.m / (double)(P.m - 1);
        for (size_t f = 0; f < P.features; f++) {
            size_t o = P.pofs[f];
            double rm = nc_load(pd->dtype, run_mean, o), rv = nc_load(pd->dtype, run_var, o);
            nc_store(pd->dtype, run_mean, o, (1.0 - factor) * rm + factor * P.mean[f]);
            nc_store(pd->dtype, run_var, o, (1.0 - factor) * rv + factor * P.var[f] * unbias);
        }
    }
    if (saved_mean && saved_inv) {
        for (size_t f = 0; f < P.features; f++) {
            nc_store(pd->dtype, saved_mean, P.pofs[f], P.mean[f]);
            nc_store(pd->dtype, saved_inv, P.pofs[f], inv[f]);
        }
    }
    free(xo);
    free(yo);
    free(inv);
    plan_free(&P);
    return 0;
}

int nb_forward_inference(int mode, const nc_tensor* xd, const void* x, const nc_tensor* yd,
                         void* y, const nc_tensor* pd, const void* scale, const void* bias,
                         const void* est_mean, const void* est_var, double eps, double alpha,
                         double beta, char* err, size_t errlen)
{
    if (nb_validate(mode, xd, yd, NULL, pd, err, errlen))
        return -1;
    if (!x || !y || !scale || !bias)
        return fail(err, errlen, "null buffer");
    plan_t P;
    if (plan_init(&P, mode, xd, pd, err, errlen))
        return -1;
    size_t* xo = offsets(xd);
    size_t* yo = offsets(yd);
    double* inv = malloc(P.features * sizeof *inv);
    if (!xo || !yo || !inv) {
        free(xo);
        free(yo);
        free(inv);
        plan_free(&P);
        return fail(err, errlen, "out of host memory");
    }
    if (est_mean && est_var) {
        for (size_t f = 0; f < P.features; f++) {
            P.mean[f] = nc_load(pd->dtype, est_mean, P.pofs[f]);
            P.var[f] = nc_load(pd->dtype, est_var, P.pofs[f]);
        }
    } else {
        batch_stats(&P, xd, x, xo);
    }
    for (size_t f = 0; f < P.features; f++)
        inv[f] = 1.0 / sqrt(P.var[f] + eps);
    normalize(&P, xd, x, xo, yd, y, yo, pd, scale, bias, inv, alpha, beta);
    free(xo);
    free(yo);
    free(inv);
    plan_free(&P);
    return 0;
}

int nb_backward(int mode, const nc_tensor* xd, const void* x, const nc_tensor* dyd, const void* dy,
                const nc_tensor* dxd, void* dx, const nc_tensor* pd, const void* scale,
                void* dscale, void* dbias, double eps, const void* saved_mean,
                const void* saved_inv, double alpha_data, double beta_data, double alpha_param,
                double beta_param, char* err, size_t errlen)
{
    if (nb_validate(mode, xd, dyd, dxd, pd, err, errlen))
        return -1;
    if (!x || !dy || !dx || !scale || !dscale || !dbias)
        return fail(err, errlen, "null buffer");
    plan_t P;
    if (plan_init(&P, mode, xd, pd, err, errlen))
        return -1;
    size_t* xo = offsets(xd);
    size_t* dyo = offsets(dyd);
    size_t* dxo = offsets(dxd);
    double* inv = malloc(P.features * sizeof *inv);
    double* sum_dy = calloc(P.features, sizeof(double));
    double* sum_dyx = calloc(P.features, sizeof(double));
    int rc = 0;
    if (!xo || !dyo || !dxo || !inv || !sum_dy || !sum_dyx) {
        rc = fail(err, errlen, "out of host memory");
        goto out;
    }
    if (saved_mean && saved_inv) {
        for (size_t f = 0; f < P.features; f++) {
            P.mean[f] = nc_load(pd->dtype, saved_mean, P.pofs[f]);
            inv[f] = nc_load(pd->dtype, saved_inv, P.pofs[f]);
        }
    } else {
        batch_stats(&P, xd, x, xo);
        for (size_t f = 0; f < P.features; f++)
            inv[f] = 1.0 / sqrt(P.var[f] + eps);
    }
    for (size_t i = 0; i < P.count; i++) {
        size_t f = P.feat[i];
        double g = nc_load(dyd->dtype, dy, dyo[i]);
        double xhat = (nc_load(xd->dtype, x, xo[i]) - P.mean[f]) * inv[f];
        sum_dy[f] += g;
        sum_dyx[f] += g * xhat;
    }
    double m = (double)P.m;
    for (size_t i = 0; i < P.count; i++) {
        size_t f = P.feat[i];
        double g = nc_load(dyd->dtype, dy, dyo[i]);
        double xhat = (nc_load(xd->dtype, x, xo[i]) - P.mean[f]) * inv[f];
        double sc = nc_load(pd->dtype, scale, P.pofs[f]);
        double v = sc * inv[f] / m * (m * g - sum_dy[f] - xhat * sum_dyx[f]);
        v *= alpha_data;
        if (beta_data != 0.0)
            v += beta_data * nc_load(dxd->dtype, dx, dxo[i]);
        nc_store(dxd->dtype, dx, dxo[i], v);
    }
    for (size_t f = 0; f < P.features; f++) {
        size_t o = P.pofs[f];
        double ds = alpha_param * sum_dyx[f], db = alpha_param * sum_dy[f];
        if (beta_param != 0.0) {
            ds += beta_param * nc_load(pd->dtype, dscale, o);
            db += beta_param * nc_load(pd->dtype, dbias, o);
        }
        nc_store(pd->dtype, dscale, o, ds);
        nc_store(pd->dtype, dbias, o, db);
    }
out:
    free(xo);
    free(dyo);
    free(dxo);
    free(inv);
    free(sum_dy);
    free(sum_dyx);
    plan_free(&P);
    return rc;
}
