/*
 * sample_conv.c -- owns a third-party MIOpen client written the way MIOpen's
 * samples and tutorials are: it queries the device, creates a handle on a
 * stream, sets the tensor and convolution descriptors, asks Find for the best
 * forward algorithm, runs the forward convolution (timed with HIP events),
 * copies the result back and prints a checksum. It is built against HIP's real
 * header (<hip/hip_runtime_api.h>, -D__HIP_PLATFORM_AMD__) and the test
 * suite's MIOpen declarations (miopen.h is not packaged), and knows nothing of
 * rdna1shim.
 *
 * On the test doubles the fake MIOpen's kernels crash like RDNA1's, so the
 * program dies in Find or Forward unless the shim is preloaded. Finally it
 * compares y with the naive reference convolution of naive_conv.c and prints
 * "PASSED" (exit 0) or "FAILED" (exit 1).
 *
 * Usage: sample_conv [N C H W K R S pad stride dilation]   (default 4 16 28 28 32 3 3 1 1 1)
 */
#include <hip/hip_runtime_api.h>

#include "miopen_api.h"
#include "naive_conv.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK_HIP(call)                                                                         \
    do {                                                                                        \
        hipError_t e_ = (call);                                                                 \
        if (e_ != hipSuccess) {                                                                 \
            fprintf(stderr, "HIP error %s at %s:%d: %s\n", hipGetErrorName(e_), __FILE__,       \
                    __LINE__, #call);                                                           \
            exit(2);                                                                            \
        }                                                                                       \
    } while (0)

#define CHECK_MIOPEN(call)                                                                      \
    do {                                                                                        \
        miopenStatus_t s_ = (call);                                                             \
        if (s_ != miopenStatusSuccess) {                                                        \
            fprintf(stderr, "MIOpen error %s at %s:%d: %s\n", miopenGetErrorString(s_),         \
                    __FILE__, __LINE__, #call);                                                 \
            exit(2);                                                                            \
        }                                                                                       \
    } while (0)

static float* random_host(size_t n, unsigned seed)
{
    float* p = malloc(n * sizeof *p);
    if (!p) {
        fprintf(stderr, "out of host memory\n");
        exit(2);
    }
    unsigned s = seed;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        p[i] = (float)((s >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
    return p;
}

int main(int argc, char** argv)
{
    int n = 4, c = 16, h = 28, w = 28, k = 32, r = 3, s = 3, pad = 1, stride = 1, dil = 1;
    if (argc == 11) {
        int* v[] = {&n, &c, &h, &w, &k, &r, &s, &pad, &stride, &dil};
        for (int i = 0; i < 10; i++)
            *v[i] = atoi(argv[i + 1]);
    } else if (argc != 1) {
        fprintf(stderr, "usage: %s [N C H W K R S pad stride dilation]\n", argv[0]);
        return 2;
    }

    setvbuf(stdout, NULL, _IOLBF, 0); /* what was printed survives a crash into a pipe */

    /* 1. The device. */
    int count = 0;
    CHECK_HIP(hipGetDeviceCount(&count));
    if (count < 1) {
        fprintf(stderr, "no HIP device\n");
        return 2;
    }
    int dev = 0;
    CHECK_HIP(hipSetDevice(dev));
    hipDeviceProp_t props;
    CHECK_HIP(hipGetDeviceProperties(&props, dev));
    int wave = 0;
    CHECK_HIP(hipDeviceGetAttribute(&wave, hipDeviceAttributeWarpSize, dev));
    printf("Device %d: %s (%s), %d compute units, wave%d, %.1f GiB\n", dev, props.name,
           props.gcnArchName, props.multiProcessorCount, wave,
           (double)props.totalGlobalMem / (1 << 30));

    /* 2. A handle on our own stream. */
    hipStream_t stream;
    CHECK_HIP(hipStreamCreate(&stream));
    miopenHandle_t handle;
    CHECK_MIOPEN(miopenCreateWithStream(&handle, stream));

    /* 3. Descriptors. */
    miopenTensorDescriptor_t x_desc, w_desc, y_desc;
    miopenConvolutionDescriptor_t conv_desc;
    CHECK_MIOPEN(miopenCreateTensorDescriptor(&x_desc));
    CHECK_MIOPEN(miopenCreateTensorDescriptor(&w_desc));
    CHECK_MIOPEN(miopenCreateTensorDescriptor(&y_desc));
    CHECK_MIOPEN(miopenCreateConvolutionDescriptor(&conv_desc));
    CHECK_MIOPEN(miopenSet4dTensorDescriptor(x_desc, miopenFloat, n, c, h, w));
    CHECK_MIOPEN(miopenSet4dTensorDescriptor(w_desc, miopenFloat, k, c, r, s));
    CHECK_MIOPEN(miopenInitConvolutionDescriptor(conv_desc, miopenConvolution, pad, pad, stride,
                                                 stride, dil, dil));
    int on, oc, oh, ow;
    CHECK_MIOPEN(miopenGetConvolutionForwardOutputDim(conv_desc, x_desc, w_desc, &on, &oc, &oh,
                                                      &ow));
    CHECK_MIOPEN(miopenSet4dTensorDescriptor(y_desc, miopenFloat, on, oc, oh, ow));
    printf("Convolution: x %dx%dx%dx%d, w %dx%dx%dx%d, pad %d stride %d dilation %d -> y "
           "%dx%dx%dx%d\n",
           n, c, h, w, k, c, r, s, pad, stride, dil, on, oc, oh, ow);

    /* 4. Buffers. */
    size_t x_n = (size_t)n * c * h * w, w_n = (size_t)k * c * r * s,
           y_n = (size_t)on * oc * oh * ow;
    float* x_host = random_host(x_n, 1);
    float* w_host = random_host(w_n, 2);
    float* y_host = calloc(y_n, sizeof(float));
    float *x_dev, *w_dev, *y_dev;
    CHECK_HIP(hipMalloc((void**)&x_dev, x_n * sizeof(float)));
    CHECK_HIP(hipMalloc((void**)&w_dev, w_n * sizeof(float)));
    CHECK_HIP(hipMalloc((void**)&y_dev, y_n * sizeof(float)));
    CHECK_HIP(hipMemcpy(x_dev, x_host, x_n * sizeof(float), hipMemcpyHostToDevice));
    CHECK_HIP(hipMemcpy(w_dev, w_host, w_n * sizeof(float), hipMemcpyHostToDevice));
    CHECK_HIP(hipMemset(y_dev, 0, y_n * sizeof(float)));

    /* 5. Find the fastest algorithm. */
    size_t ws_size = 0;
    CHECK_MIOPEN(miopenConvolutionForwardGetWorkSpaceSize(handle, w_desc, x_desc, conv_desc, y_desc,
                                                          &ws_size));
    void* ws = NULL;
    if (ws_size)
        CHECK_HIP(hipMalloc(&ws, ws_size));
    miopenConvAlgoPerf_t perf;
    int returned = 0;
    CHECK_MIOPEN(miopenFindConvolutionForwardAlgorithm(handle, x_desc, x_dev, w_desc, w_dev,
                                                       conv_desc, y_desc, y_dev, 1, &returned,
                                                       &perf, ws, ws_size, false));
    printf("Find: %d result(s), algorithm %d, %.3f ms, workspace %zu bytes\n", returned,
           (int)perf.fwd_algo, perf.time, perf.memory);

    /* 6. Forward, timed with events. */
    hipEvent_t start, stop;
    CHECK_HIP(hipEventCreate(&start));
    CHECK_HIP(hipEventCreate(&stop));
    float alpha = 1.0f, beta = 0.0f;
    CHECK_HIP(hipEventRecord(start, stream));
    CHECK_MIOPEN(miopenConvolutionForward(handle, &alpha, x_desc, x_dev, w_desc, w_dev, conv_desc,
                                          perf.fwd_algo, &beta, y_desc, y_dev, ws, ws_size));
    CHECK_HIP(hipEventRecord(stop, stream));
    CHECK_HIP(hipEventSynchronize(stop));
    float ms = 0;
    CHECK_HIP(hipEventElapsedTime(&ms, start, stop));

    /* 7. Copy back and print. */
    CHECK_HIP(hipDeviceSynchronize());
    CHECK_HIP(hipMemcpy(y_host, y_dev, y_n * sizeof(float), hipMemcpyDeviceToHost));
    double checksum = 0;
    for (size_t i = 0; i < y_n; i++)
        checksum += y_host[i];
    printf("Forward: %.3f ms\n", ms);
    printf("Checksum (sum of y): %.6f\n", checksum);

    /* 8. Verify against the naive reference. */
    nc_tensor xt = {.dtype = miopenFloat, .nd = 4, .lens = {n, c, h, w}};
    nc_tensor wt = {.dtype = miopenFloat, .nd = 4, .lens = {k, c, r, s}};
    nc_tensor yt = {.dtype = miopenFloat, .nd = 4, .lens = {on, oc, oh, ow}};
    nc_packed_strides(&xt);
    nc_packed_strides(&wt);
    nc_packed_strides(&yt);
    nc_conv cv = {.spatial = 2,
                  .pad = {pad, pad},
                  .stride = {stride, stride},
                  .dil = {dil, dil},
                  .groups = 1,
                  .transpose = 0};
    float* ref = calloc(y_n, sizeof(float));
    char err[256];
    if (nc_conv_run(NC_FWD, &cv, &xt, x_host, &wt, w_host, &yt, ref, 1.0, 0.0, err, sizeof err)) {
        fprintf(stderr, "reference: %s\n", err);
        return 2;
    }
    double max_err = 0, max_ref = 0;
    for (size_t i = 0; i < y_n; i++) {
        double d = fabs((double)y_host[i] - (double)ref[i]);
        if (!(d <= max_err)) /* NaN counts */
            max_err = d;
        if (fabs(ref[i]) > max_ref)
            max_ref = fabs(ref[i]);
    }
    int ok = max_err <= 1e-4 * (max_ref > 1 ? max_ref : 1);
    printf("Max |y - reference| = %.3g (max |reference| %.3g): %s\n", max_err, max_ref,
           ok ? "PASSED" : "FAILED");

    /* 9. Clean up. */
    CHECK_HIP(hipEventDestroy(start));
    CHECK_HIP(hipEventDestroy(stop));
    if (ws)
        CHECK_HIP(hipFree(ws));
    CHECK_HIP(hipFree(x_dev));
    CHECK_HIP(hipFree(w_dev));
    CHECK_HIP(hipFree(y_dev));
    CHECK_MIOPEN(miopenDestroyTensorDescriptor(x_desc));
    CHECK_MIOPEN(miopenDestroyTensorDescriptor(w_desc));
    CHECK_MIOPEN(miopenDestroyTensorDescriptor(y_desc));
    CHECK_MIOPEN(miopenDestroyConvolutionDescriptor(conv_desc));
    CHECK_MIOPEN(miopenDestroy(handle));
    CHECK_HIP(hipStreamDestroy(stream));
    free(x_host);
    free(w_host);
    free(y_host);
    free(ref);
    return ok ? 0 : 1;
}
