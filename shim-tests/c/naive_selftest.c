/*
 * naive_selftest.c -- owns the self-test of the reference (naive_conv.c), so
 * that the yardstick the shim is measured with is itself measured:
 * exhaustive fp16/bf16 conversion and round-to-nearest-even checks,
 * hand-computed convolutions, an independently written forward convolution,
 * the adjoint identities <fwd(x,w),dy> = <x,bwd_data(dy,w)> = <w,bwd_w(dy,x)>
 * over random geometries, MIOpen transpose-mode mapping, layout (stride)
 * independence, alpha/beta semantics, bias operations and shape validation.
 * Prints "naive_selftest: N checks passed" and exits 0, or reports failures.
 */
#include "naive_conv.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_checks, g_failures;

#define CHECK(cond, ...)                                                                        \
    do {                                                                                        \
        g_checks++;                                                                             \
        if (!(cond)) {                                                                          \
            g_failures++;                                                                       \
            if (g_failures <= 20) {                                                             \
                fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                            \
                fprintf(stderr, __VA_ARGS__);                                                   \
                fprintf(stderr, "\n");                                                          \
            }                                                                                   \
        }                                                                                       \
    } while (0)

static unsigned long long g_rng = 0x9E3779B97F4A7C15ULL;
static double urand(void)
{
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (double)((g_rng * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}
static int irand(int lo, int hi) { return lo + (int)((urand() + 1.0) / 2.0 * (hi - lo + 1)) % (hi - lo + 1); }

/* ---------------- conversions ---------------- */

static void test_format(const char* name, double (*dec)(uint16_t), uint16_t (*enc)(double),
                        uint16_t max_finite, uint16_t inf)
{
    int bad = 0;
    for (unsigned h = 0; h < 65536; h++) {
        double d = dec((uint16_t)h);
        uint16_t back = enc(d);
        if (isnan(d)) {
            if (!isnan(dec(back)))
                bad++;
        } else if (back != h) {
            bad++;
        }
    }
    CHECK(bad == 0, "%s: %d bit patterns do not round-trip", name, bad);
    bad = 0;
    for (unsigned h = 0; h < max_finite; h++) {
        double a = dec((uint16_t)h), b = dec((uint16_t)(h + 1));
        double mid = a + (b - a) / 2; /* exact in double */
        uint16_t even = (h % 2 == 0) ? (uint16_t)h : (uint16_t)(h + 1);
        if (enc(mid) != even || enc(-mid) != (uint16_t)(even | 0x8000))
            bad++;
        if (enc(nextafter(mid, a)) != h || enc(nextafter(mid, b)) != h + 1)
            bad++;
    }
    CHECK(bad == 0, "%s: %d midpoints round wrongly", name, bad);
    double top = dec(max_finite), ulp = top - dec((uint16_t)(max_finite - 1));
    CHECK(enc(top + ulp / 2) == inf, "%s: overflow midpoint must round to inf", name);
    CHECK(enc(nextafter(top + ulp / 2, 0)) == max_finite, "%s: below overflow midpoint", name);
    CHECK(enc(INFINITY) == inf && enc(-INFINITY) == (inf | 0x8000), "%s: infinities", name);
    CHECK(isnan(dec(enc(NAN))), "%s: NaN", name);
}

/* ---------------- helpers ---------------- */

static nc_tensor mk(int dtype, int nd, const int* lens)
{
    nc_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = dtype;
    t.nd = nd;
    for (int i = 0; i < nd; i++)
        t.lens[i] = lens[i];
    nc_packed_strides(&t);
    return t;
}

static double* alloc_rand(const nc_tensor* t)
{
    size_t n = nc_element_space(t);
    double* p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = urand();
    return p;
}

static double dot(const double* a, const double* b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* Independent forward: for every (output, input) position pair decide whether
 * some tap connects them, instead of deriving the input index from the tap. */
static void alt_forward(const nc_conv* c, const nc_tensor* xt, const double* x,
                        const nc_tensor* wt, const double* w, const nc_tensor* yt, double* y)
{
    int sp = c->spatial, N = xt->lens[0], C = xt->lens[1], K = yt->lens[1], G = c->groups;
    int xs[3] = {1, 1, 1}, ks[3] = {1, 1, 1}, ys[3] = {1, 1, 1}, p[3] = {0}, s[3] = {1, 1, 1},
        d[3] = {1, 1, 1};
    for (int i = 0; i < sp; i++) {
        xs[i] = xt->lens[2 + i];
        ks[i] = wt->lens[2 + i];
        ys[i] = yt->lens[2 + i];
        p[i] = c->pad[i];
        s[i] = c->stride[i];
        d[i] = c->dil[i];
    }
    size_t xsp = (size_t)xs[0] * xs[1] * xs[2], ysp = (size_t)ys[0] * ys[1] * ys[2],
           ksp = (size_t)ks[0] * ks[1] * ks[2];
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++)
            for (size_t o = 0; o < ysp; o++) {
                int oi[3] = {(int)(o / ((size_t)ys[1] * ys[2])), (int)(o / ys[2] % ys[1]),
                             (int)(o % ys[2])};
                double acc = 0;
                int grp = k / (K / G);
                for (int c2 = 0; c2 < C; c2++) {
                    if (c2 / (C / G) != grp)
                        continue;
                    for (size_t i = 0; i < xsp; i++) {
                        int ii[3] = {(int)(i / ((size_t)xs[1] * xs[2])), (int)(i / xs[2] % xs[1]),
                                     (int)(i % xs[2])};
                        for (size_t t = 0; t < ksp; t++) {
                            int ti[3] = {(int)(t / ((size_t)ks[1] * ks[2])),
                                         (int)(t / ks[2] % ks[1]), (int)(t % ks[2])};
                            int hit = 1;
                            for (int q = 0; q < 3; q++)
                                hit &= (ii[q] + p[q] == oi[q] * s[q] + ti[q] * d[q]);
                            if (hit)
                                acc += x[(size_t)n * C * xsp + (size_t)c2 * xsp + i] *
                                       w[(size_t)k * (C / G) * ksp + (size_t)(c2 % (C / G)) * ksp + t];
                        }
                    }
                }
                y[(size_t)n * K * ysp + (size_t)k * ysp + o] = acc;
            }
}

typedef struct {
    nc_conv c;
    nc_tensor x, w, y;
} problem;

static problem random_problem(int dtype)
{
    problem pr;
    memset(&pr, 0, sizeof pr);
    int sp = irand(1, 3), g = irand(1, 3), cg = irand(1, 3), kg = irand(1, 3), n = irand(1, 2);
    pr.c.spatial = sp;
    pr.c.groups = g;
    int xl[5] = {n, cg * g}, wl[5] = {kg * g, cg}, yl[5] = {n, kg * g};
    for (int i = 0; i < sp; i++) {
        int k = irand(1, 3), s = irand(1, 3), d = irand(1, 2), p = irand(0, 2);
        int span = d * (k - 1) + 1;
        int lo = span - 2 * p < 1 ? 1 : span - 2 * p;
        int in = lo + irand(0, sp == 3 ? 3 : 6);
        pr.c.pad[i] = p;
        pr.c.stride[i] = s;
        pr.c.dil[i] = d;
        xl[2 + i] = in;
        wl[2 + i] = k;
        yl[2 + i] = (in + 2 * p - span) / s + 1;
    }
    pr.x = mk(dtype, sp + 2, xl);
    pr.w = mk(dtype, sp + 2, wl);
    pr.y = mk(dtype, sp + 2, yl);
    return pr;
}

static void test_hand(void)
{
    /* 1-D: x = [1 2 3 4], w = [1 0 -1], pad 1 -> y = [-2 -2 -2 3] */
    int xl[3] = {1, 1, 4}, wl[3] = {1, 1, 3}, yl[3] = {1, 1, 4};
    nc_tensor xt = mk(6, 3, xl), wt = mk(6, 3, wl), yt = mk(6, 3, yl);
    double x[4] = {1, 2, 3, 4}, w[3] = {1, 0, -1}, y[4];
    nc_conv c = {.spatial = 1, .pad = {1}, .stride = {1}, .dil = {1}, .groups = 1};
    char err[200];
    CHECK(nc_conv_run(NC_FWD, &c, &xt, x, &wt, w, &yt, y, 1, 0, err, sizeof err) == 0, "%s", err);
    CHECK(y[0] == -2 && y[1] == -2 && y[2] == -2 && y[3] == 3, "1d fwd got %g %g %g %g", y[0],
          y[1], y[2], y[3]);
    /* stride 2, dilation 2, pad 2: x = 1..7, w = [1 10 100]:
     * y[o] = x[2o-2] + 10 x[2o] + 100 x[2o+2] (out-of-range = 0), o = 0..3 */
    int xl2[3] = {1, 1, 7}, yl2[3] = {1, 1, 4};
    nc_tensor xt2 = mk(6, 3, xl2), yt2 = mk(6, 3, yl2);
    double x2[7] = {1, 2, 3, 4, 5, 6, 7}, w2[3] = {1, 10, 100}, y2[4];
    nc_conv c2 = {.spatial = 1, .pad = {2}, .stride = {2}, .dil = {2}, .groups = 1};
    CHECK(nc_conv_run(NC_FWD, &c2, &xt2, x2, &wt, w2, &yt2, y2, 1, 0, err, sizeof err) == 0, "%s",
          err);
    CHECK(y2[0] == 310 && y2[1] == 531 && y2[2] == 753 && y2[3] == 75, "strided fwd %g %g %g %g",
          y2[0], y2[1], y2[2], y2[3]);
    /* backward data of the first problem: dx[i] = dy[i+1] - dy[i-1] */
    double dy[4] = {1, 2, 3, 4}, dx[4];
    CHECK(nc_conv_run(NC_BWD_DATA, &c, &yt, dy, &wt, w, &xt, dx, 1, 0, err, sizeof err) == 0, "%s",
          err);
    CHECK(dx[0] == 2 && dx[1] == 2 && dx[2] == 2 && dx[3] == -3, "1d bwd_data %g %g %g %g", dx[0],
          dx[1], dx[2], dx[3]);
    /* backward weights: dw[t] = sum_o dy[o] x[o - 1 + t] */
    double dw[3];
    CHECK(nc_conv_run(NC_BWD_WEIGHTS, &c, &yt, dy, &xt, x, &wt, dw, 1, 0, err, sizeof err) == 0,
          "%s", err);
    CHECK(dw[0] == 20 && dw[1] == 30 && dw[2] == 20, "1d bwd_weights %g %g %g", dw[0], dw[1],
          dw[2]);
    /* transposed output padding: a dx larger than needed keeps zeros where no tap reaches */
    int dxl[3] = {1, 1, 8}, dyl[3] = {1, 1, 4}, w1l[3] = {1, 1, 1};
    nc_tensor dxt = mk(6, 3, dxl), dyt = mk(6, 3, dyl), w1t = mk(6, 3, w1l);
    double one = 1, dyv[4] = {1, 2, 3, 4}, dxv[8];
    nc_conv c3 = {.spatial = 1, .pad = {0}, .stride = {2}, .dil = {1}, .groups = 1};
    CHECK(nc_conv_run(NC_BWD_DATA, &c3, &dyt, dyv, &w1t, &one, &dxt, dxv, 1, 0, err, sizeof err) ==
              0,
          "%s", err);
    CHECK(dxv[0] == 1 && dxv[1] == 0 && dxv[2] == 2 && dxv[6] == 4 && dxv[7] == 0,
          "output padding positions");
}

static void test_random(void)
{
    char err[200];
    for (int trial = 0; trial < 300; trial++) {
        problem pr = random_problem(6);
        double *x = alloc_rand(&pr.x), *w = alloc_rand(&pr.w), *dy = alloc_rand(&pr.y);
        size_t nx = nc_element_space(&pr.x), nw = nc_element_space(&pr.w),
               ny = nc_element_space(&pr.y);
        double* y = calloc(ny, sizeof *y);
        double* y2 = calloc(ny, sizeof *y2);
        double* dx = calloc(nx, sizeof *dx);
        double* dw = calloc(nw, sizeof *dw);
        int ok = nc_conv_run(NC_FWD, &pr.c, &pr.x, x, &pr.w, w, &pr.y, y, 1, 0, err, sizeof err) == 0 &&
                 nc_conv_run(NC_BWD_DATA, &pr.c, &pr.y, dy, &pr.w, w, &pr.x, dx, 1, 0, err, sizeof err) == 0 &&
                 nc_conv_run(NC_BWD_WEIGHTS, &pr.c, &pr.y, dy, &pr.x, x, &pr.w, dw, 1, 0, err, sizeof err) == 0;
        CHECK(ok, "trial %d: %s", trial, err);
        /* the independent forward is O(out * in * taps): only on small problems */
        double cost = (double)ny * (double)nx * (double)nc_element_space(&pr.w) / pr.x.lens[0];
        if (cost < 4e6) {
            alt_forward(&pr.c, &pr.x, x, &pr.w, w, &pr.y, y2);
            double maxd = 0;
            for (size_t i = 0; i < ny; i++)
                maxd = fmax(maxd, fabs(y[i] - y2[i]));
            CHECK(maxd < 1e-12, "trial %d: forward differs from independent forward by %g",
                  trial, maxd);
        }
        double a = dot(y, dy, ny), b = dot(x, dx, nx), c = dot(w, dw, nw);
        double scale = 1 + fabs(a);
        CHECK(fabs(a - b) < 1e-9 * scale && fabs(a - c) < 1e-9 * scale,
              "trial %d: adjoint identities %g %g %g", trial, a, b, c);

        /* transpose mode equals the regular direction with swapped roles */
        nc_conv t = pr.c;
        t.transpose = 1;
        double* tx = calloc(nx, sizeof *tx);
        double* ty = calloc(ny, sizeof *ty);
        double* tw = calloc(nw, sizeof *tw);
        ok = nc_conv_run(NC_FWD, &t, &pr.y, dy, &pr.w, w, &pr.x, tx, 1, 0, err, sizeof err) == 0 &&
             nc_conv_run(NC_BWD_DATA, &t, &pr.x, x, &pr.w, w, &pr.y, ty, 1, 0, err, sizeof err) == 0 &&
             nc_conv_run(NC_BWD_WEIGHTS, &t, &pr.x, x, &pr.y, dy, &pr.w, tw, 1, 0, err, sizeof err) == 0;
        CHECK(ok, "trial %d transpose: %s", trial, err);
        CHECK(memcmp(tx, dx, nx * sizeof *tx) == 0, "transpose fwd != regular bwd_data");
        CHECK(memcmp(ty, y, ny * sizeof *ty) == 0, "transpose bwd_data != regular fwd");
        CHECK(memcmp(tw, dw, nw * sizeof *tw) == 0, "transpose bwd_weights != regular bwd_w");
        free(tx);
        free(ty);
        free(tw);
        free(x);
        free(w);
        free(dy);
        free(y);
        free(y2);
        free(dx);
        free(dw);
    }
}

/* The same logical tensors laid out channels-last / with padded strides must
 * give the same logical results, and untouched gaps must stay untouched. */
static void test_layouts(void)
{
    char err[200];
    for (int trial = 0; trial < 40; trial++) {
        problem pr = random_problem(1);
        nc_tensor xs = pr.x, ws = pr.w, ys = pr.y;
        nc_channels_last_strides(&xs);
        nc_channels_last_strides(&ws);
        /* padded strides for y */
        ys.strides[ys.nd - 1] = 2;
        for (int i = ys.nd - 2; i >= 0; i--)
            ys.strides[i] = ys.strides[i + 1] * ys.lens[i + 1] + 3;
        size_t n = nc_num_elements(&pr.x), nw = nc_num_elements(&pr.w), ny = nc_num_elements(&pr.y);
        float* x = malloc(n * 4);
        float* w = malloc(nw * 4);
        float* y = malloc(ny * 4);
        float* x2 = malloc(nc_element_space(&xs) * 4);
        float* w2 = malloc(nc_element_space(&ws) * 4);
        size_t ys_space = nc_element_space(&ys);
        float* y2 = malloc(ys_space * 4);
        for (size_t i = 0; i < ys_space; i++)
            y2[i] = 12345.0f;
        /* scatter logical values through both layouts */
        int idx[5];
        for (size_t e = 0; e < n; e++) {
            size_t r = e, off = 0;
            for (int k = xs.nd - 1; k >= 0; k--) {
                idx[k] = (int)(r % (size_t)xs.lens[k]);
                r /= (size_t)xs.lens[k];
            }
            for (int k = 0; k < xs.nd; k++)
                off += (size_t)idx[k] * (size_t)xs.strides[k];
            x[e] = (float)urand();
            x2[off] = x[e];
        }
        for (size_t e = 0; e < nw; e++) {
            size_t r = e, off = 0;
            for (int k = ws.nd - 1; k >= 0; k--) {
                idx[k] = (int)(r % (size_t)ws.lens[k]);
                r /= (size_t)ws.lens[k];
            }
            for (int k = 0; k < ws.nd; k++)
                off += (size_t)idx[k] * (size_t)ws.strides[k];
            w[e] = (float)urand();
            w2[off] = w[e];
        }
        int ok = nc_conv_run(NC_FWD, &pr.c, &pr.x, x, &pr.w, w, &pr.y, y, 1, 0, err, sizeof err) == 0 &&
                 nc_conv_run(NC_FWD, &pr.c, &xs, x2, &ws, w2, &ys, y2, 1, 0, err, sizeof err) == 0;
        CHECK(ok, "layout trial %d: %s", trial, err);
        int bad = 0;
        char* touched = calloc(ys_space, 1);
        for (size_t e = 0; e < ny; e++) {
            size_t r = e, off = 0;
            for (int k = ys.nd - 1; k >= 0; k--) {
                idx[k] = (int)(r % (size_t)ys.lens[k]);
                r /= (size_t)ys.lens[k];
            }
            for (int k = 0; k < ys.nd; k++)
                off += (size_t)idx[k] * (size_t)ys.strides[k];
            touched[off] = 1;
            bad += y2[off] != y[e];
        }
        for (size_t i = 0; i < ys_space; i++)
            bad += !touched[i] && y2[i] != 12345.0f;
        CHECK(bad == 0, "layout trial %d: %d mismatches", trial, bad);
        free(touched);
        free(x);
        free(w);
        free(y);
        free(x2);
        free(w2);
        free(y2);
    }
}

static void test_alpha_beta_and_types(void)
{
    char err[200];
    int xl[4] = {1, 1, 3, 3}, wl[4] = {1, 1, 2, 2}, yl[4] = {1, 1, 2, 2};
    nc_conv c = {.spatial = 2, .stride = {1, 1}, .dil = {1, 1}, .groups = 1};
    nc_tensor xt = mk(1, 4, xl), wt = mk(1, 4, wl), yt = mk(1, 4, yl);
    float x[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, w[4] = {1, 1, 1, 1};
    float y[4] = {NAN, NAN, NAN, NAN};
    CHECK(nc_conv_run(NC_FWD, &c, &xt, x, &wt, w, &yt, y, 2.0, 0.0, err, sizeof err) == 0, "%s",
          err);
    CHECK(y[0] == 24 && y[1] == 32 && y[2] == 48 && y[3] == 56, "alpha=2 beta=0 (NaN old ignored)");
    float y2[4] = {1, 1, 1, 1};
    nc_conv_run(NC_FWD, &c, &xt, x, &wt, w, &yt, y2, 0.5, -2.0, err, sizeof err);
    CHECK(y2[0] == 4 && y2[3] == 12, "alpha=0.5 beta=-2: %g %g", y2[0], y2[3]);
    /* half: the stored result is the correctly rounded double result */
    nc_tensor xh = mk(0, 4, xl), wh = mk(0, 4, wl), yh = mk(0, 4, yl);
    uint16_t hx[9], hw[4], hy[4];
    double dx[9], dwv[4];
    for (int i = 0; i < 9; i++) {
        dx[i] = nc_round_to(0, urand() * 100);
        hx[i] = nc_double_to_half(dx[i]);
    }
    for (int i = 0; i < 4; i++) {
        dwv[i] = nc_round_to(0, urand());
        hw[i] = nc_double_to_half(dwv[i]);
    }
    nc_conv_run(NC_FWD, &c, &xh, hx, &wh, hw, &yh, hy, 1, 0, err, sizeof err);
    double exact = dx[0] * dwv[0] + dx[1] * dwv[1] + dx[3] * dwv[2] + dx[4] * dwv[3];
    CHECK(hy[0] == nc_double_to_half(exact), "half result rounding");
    /* bf16 */
    nc_tensor xb = mk(5, 4, xl), wb = mk(5, 4, wl), yb = mk(5, 4, yl);
    uint16_t bx[9], bw[4], by[4];
    for (int i = 0; i < 9; i++)
        bx[i] = nc_double_to_bf16(dx[i]);
    for (int i = 0; i < 4; i++)
        bw[i] = nc_double_to_bf16(dwv[i]);
    nc_conv_run(NC_FWD, &c, &xb, bx, &wb, bw, &yb, by, 1, 0, err, sizeof err);
    double exb = nc_bf16_to_double(bx[0]) * nc_bf16_to_double(bw[0]) +
                 nc_bf16_to_double(bx[1]) * nc_bf16_to_double(bw[1]) +
                 nc_bf16_to_double(bx[3]) * nc_bf16_to_double(bw[2]) +
                 nc_bf16_to_double(bx[4]) * nc_bf16_to_double(bw[3]);
    CHECK(by[0] == nc_double_to_bf16(exb), "bf16 result rounding");
}

static void test_bias(void)
{
    char err[200];
    int yl[4] = {2, 3, 1, 2}, bl[4] = {1, 3, 1, 1};
    nc_tensor yt = mk(1, 4, yl), bt = mk(1, 4, bl);
    float y[12], b[3] = {10, 20, 30};
    for (int i = 0; i < 12; i++)
        y[i] = (float)i;
    CHECK(nc_forward_bias(&bt, b, &yt, y, 1.0, 0.0, err, sizeof err) == 0, "%s", err);
    CHECK(y[0] == 10 && y[2] == 22 && y[5] == 35 && y[11] == 41, "forward bias");
    for (int i = 0; i < 12; i++)
        y[i] = (float)i;
    nc_forward_bias(&bt, b, &yt, y, 0.5, 0.25, err, sizeof err);
    CHECK(y[4] == 0.5f * 4 + 0.5f * 30 + 0.25f * 4, "forward bias alpha/beta: %g", y[4]);
    float db[3] = {NAN, NAN, NAN};
    for (int i = 0; i < 12; i++)
        y[i] = (float)i;
    CHECK(nc_backward_bias(&yt, y, &bt, db, 1.0, 0.0, err, sizeof err) == 0, "%s", err);
    /* channel 0: y[0], y[1], y[6], y[7] */
    CHECK(db[0] == 14 && db[1] == 22 && db[2] == 30, "backward bias %g %g %g", db[0], db[1],
          db[2]);
    float db2[3] = {1, 1, 1};
    nc_backward_bias(&yt, y, &bt, db2, 2.0, 3.0, err, sizeof err);
    CHECK(db2[0] == 31, "backward bias alpha/beta %g", db2[0]);
}

static void test_validation(void)
{
    char err[200];
    int xl[4] = {1, 4, 5, 5}, wl[4] = {6, 2, 3, 3}, yl[4] = {1, 6, 3, 3};
    nc_tensor x = mk(1, 4, xl), w = mk(1, 4, wl), y = mk(1, 4, yl);
    nc_conv c = {.spatial = 2, .stride = {1, 1}, .dil = {1, 1}, .groups = 2};
    CHECK(nc_conv_validate(NC_FWD, &c, &x, &w, &y, err, sizeof err) == 0, "valid grouped: %s",
          err);
    c.groups = 1;
    CHECK(nc_conv_validate(NC_FWD, &c, &x, &w, &y, err, sizeof err) != 0, "channel mismatch");
    c.groups = 4;
    CHECK(nc_conv_validate(NC_FWD, &c, &x, &w, &y, err, sizeof err) != 0, "groups mismatch");
    c.groups = 2;
    y.lens[3] = 4;
    CHECK(nc_conv_validate(NC_FWD, &c, &x, &w, &y, err, sizeof err) != 0, "output size");
    y.lens[3] = 3;
    w.dtype = 0;
    CHECK(nc_conv_validate(NC_FWD, &c, &x, &w, &y, err, sizeof err) != 0, "dtype mismatch");
    w.dtype = 1;
    c.spatial = 3;
    CHECK(nc_conv_validate(NC_FWD, &c, &x, &w, &y, err, sizeof err) != 0, "spatial mismatch");
}

int main(void)
{
    test_format("fp16", nc_half_to_double, nc_double_to_half, 0x7bff, 0x7c00);
    test_format("bf16", nc_bf16_to_double, nc_double_to_bf16, 0x7f7f, 0x7f80);
    test_hand();
    test_random();
    test_layouts();
    test_alpha_beta_and_types();
    test_bias();
    test_validation();
    if (g_failures) {
        printf("naive_selftest: %d of %d checks FAILED\n", g_failures, g_checks);
        return 1;
    }
    printf("naive_selftest: %d checks passed\n", g_checks);
    return 0;
}
