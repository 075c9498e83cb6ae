/*
 * doubles_probe.c -- owns the small probes that prove the test doubles behave
 * like the real stack where it matters to rdna1shim:
 *   segv      a host read of a device pointer is a segmentation fault
 *   stale     reads not ordered after a non-blocking stream see stale bytes;
 *             the null stream waits for blocking streams only; FIFO per stream
 *   validate  copy/free validation, hipMemcpyDefault inference, error state,
 *             call statistics, pinned host memory
 *   events    event records complete in stream order; waits, queries, elapsed
 *             time, cross-stream waits, destroy with a record still queued
 *   pcie      with FAKE_HIP_GBPS set: copies take bytes / bandwidth, the host
 *             is free meanwhile, each direction is one link; prints timings
 *   affinity  prints every thread's allowed CPUs after two streams ran a copy each
 *             (for FAKE_HIP_COPY_CPUS)
 *   fail      prints the result of a fixed call sequence, for FAKE_HIP_FAIL tests
 *   miopen    host-side MIOpen descriptor semantics of the fake library
 * Each prints "ok ..."/"FAIL ..." lines and exits 0 iff nothing failed.
 */
#define _GNU_SOURCE
#include "miopen_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <dirent.h>
#include <sys/syscall.h>
#include <unistd.h>

static int g_failed;

#define EXPECT(cond, name)                                                                      \
    do {                                                                                        \
        if (cond) {                                                                             \
            printf("ok %s\n", name);                                                            \
        } else {                                                                                \
            printf("FAIL %s (line %d)\n", name, __LINE__);                                      \
            g_failed++;                                                                         \
        }                                                                                       \
    } while (0)

static int all_bytes(const unsigned char* p, size_t n, unsigned char v)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != v)
            return 0;
    return 1;
}

static int probe_segv(void)
{
    void* d = NULL;
    if (hipMalloc(&d, 4096) != hipSuccess) {
        printf("FAIL hipMalloc\n");
        return 1;
    }
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    printf("reading device pointer %p on the host\n", d);
    fflush(stdout);
    volatile unsigned char c = *(volatile unsigned char*)d;
    printf("FAIL host read of a device pointer returned %d\n", c);
    return 1;
}

static int probe_stale(void)
{
    const size_t n = 1 << 16;
    void* d = NULL;
    unsigned char* h = malloc(n);
    unsigned char* h2 = malloc(n);
    unsigned char* r = malloc(n);
    hipStream_t s = NULL, b = NULL;
    EXPECT(hipMalloc(&d, n) == hipSuccess, "hipMalloc");
    EXPECT(hipMemset(d, 0, n) == hipSuccess, "hipMemset");
    EXPECT(hipStreamCreateWithFlags(&s, hipStreamNonBlocking) == hipSuccess,
           "hipStreamCreateWithFlags(NonBlocking)");
    memset(h, 0x5A, n);
    EXPECT(hipMemcpyAsync(d, h, n, hipMemcpyHostToDevice, s) == hipSuccess, "hipMemcpyAsync H2D");
    EXPECT(hipStreamQuery(s) == hipErrorNotReady, "stream busy right after enqueue");
    EXPECT(hipMemcpy(r, d, n, hipMemcpyDeviceToHost) == hipSuccess, "hipMemcpy D2H");
    EXPECT(all_bytes(r, n, 0), "null-stream read before sync sees stale device bytes");
    EXPECT(hipStreamSynchronize(s) == hipSuccess, "hipStreamSynchronize");
    EXPECT(hipMemcpy(r, d, n, hipMemcpyDeviceToHost) == hipSuccess, "hipMemcpy D2H after sync");
    EXPECT(all_bytes(r, n, 0x5A), "read after sync sees the new bytes");

    memset(r, 0, n);
    EXPECT(hipMemcpyAsync(r, d, n, hipMemcpyDeviceToHost, s) == hipSuccess,
           "hipMemcpyAsync D2H");
    EXPECT(all_bytes(r, n, 0), "host buffer unchanged before sync");
    EXPECT(hipStreamSynchronize(s) == hipSuccess, "hipStreamSynchronize D2H");
    EXPECT(all_bytes(r, n, 0x5A), "host buffer filled after sync");

    /* FIFO on one stream: the later copy wins */
    memset(h, 0x11, n);
    memset(h2, 0x22, n);
    EXPECT(hipMemcpyAsync(d, h, n, hipMemcpyHostToDevice, s) == hipSuccess, "enqueue first");
    EXPECT(hipMemcpyAsync(d, h2, n, hipMemcpyHostToDevice, s) == hipSuccess, "enqueue second");
    EXPECT(hipMemcpyAsync(r, d, n, hipMemcpyDeviceToHost, s) == hipSuccess, "enqueue readback");
    EXPECT(hipStreamSynchronize(s) == hipSuccess, "sync FIFO");
    EXPECT(all_bytes(r, n, 0x22), "stream operations run in FIFO order");

    /* the null stream waits for blocking streams */
    EXPECT(hipStreamCreate(&b) == hipSuccess, "hipStreamCreate (blocking)");
    memset(h, 0x33, n);
    EXPECT(hipMemcpyAsync(d, h, n, hipMemcpyHostToDevice, b) == hipSuccess, "enqueue on blocking");
    EXPECT(hipMemcpy(r, d, n, hipMemcpyDeviceToHost) == hipSuccess, "null-stream read");
    EXPECT(all_bytes(r, n, 0x33), "null stream waits for a blocking stream");

    /* hipDeviceSynchronize waits for every stream */
    memset(h, 0x44, n);
    EXPECT(hipMemsetAsync(d, 0x44, n, s) == hipSuccess, "hipMemsetAsync");
    EXPECT(hipDeviceSynchronize() == hipSuccess, "hipDeviceSynchronize");
    EXPECT(hipMemcpy(r, d, n, hipMemcpyDeviceToHost) == hipSuccess, "read after device sync");
    EXPECT(all_bytes(r, n, 0x44), "hipDeviceSynchronize waits for non-blocking streams");

    EXPECT(hipStreamDestroy(s) == hipSuccess && hipStreamDestroy(b) == hipSuccess,
           "hipStreamDestroy");
    EXPECT(hipFree(d) == hipSuccess, "hipFree");
    free(h);
    free(h2);
    free(r);
    return g_failed != 0;
}

static int probe_validate(void)
{
    unsigned char hbuf[4096];
    memset(hbuf, 1, sizeof hbuf);
    void *d = NULL, *d2 = NULL;
    EXPECT(hipMalloc(&d, 1000) == hipSuccess && d, "hipMalloc 1000");
    EXPECT(hipMalloc(&d2, 3000) == hipSuccess && d2, "hipMalloc 3000");
    EXPECT(((uintptr_t)d % 256) == 0 && ((uintptr_t)d2 % 256) == 0, "256-byte alignment");
    void* z = (void*)1;
    EXPECT(hipMalloc(&z, 0) == hipSuccess && z == NULL, "hipMalloc(0) gives NULL");
    EXPECT(hipMemcpy(d, hbuf, 1000, hipMemcpyHostToDevice) == hipSuccess, "H2D in bounds");
    EXPECT(hipMemcpy(d, hbuf, 1001, hipMemcpyHostToDevice) == hipErrorInvalidValue,
           "H2D overrunning the allocation");
    EXPECT(hipMemcpy(hbuf, d, 1000, hipMemcpyHostToDevice) == hipErrorInvalidValue,
           "H2D with a host destination");
    EXPECT(hipMemcpy(hbuf, hbuf + 2048, 100, hipMemcpyDeviceToHost) == hipErrorInvalidValue,
           "D2H with a host source");
    EXPECT(hipMemcpy(d2, d, 100, hipMemcpyDeviceToHost) == hipErrorInvalidValue,
           "D2H whose host side lies in device memory");
    EXPECT(hipMemcpy(hbuf, (char*)d2 + 8192, 16, hipMemcpyDeviceToHost) == hipErrorInvalidValue,
           "D2H from outside every allocation");
    EXPECT(hipMemcpy(hbuf, d, 0, hipMemcpyDeviceToHost) == hipSuccess, "zero-byte copy");
    EXPECT(hipMemcpy(NULL, d, 16, hipMemcpyDeviceToHost) == hipErrorInvalidValue, "NULL host");
    size_t h2d0 = fakehip_bytes_copied(hipMemcpyHostToDevice);
    size_t d2d0 = fakehip_bytes_copied(hipMemcpyDeviceToDevice);
    EXPECT(hipMemcpy(d2, hbuf, 64, hipMemcpyDefault) == hipSuccess, "Default as H2D");
    EXPECT(hipMemcpy(d, d2, 64, hipMemcpyDefault) == hipSuccess, "Default as D2D");
    unsigned char out[64] = {0};
    EXPECT(hipMemcpy(out, d, 64, hipMemcpyDefault) == hipSuccess && all_bytes(out, 64, 1),
           "Default as D2H returns the data");
    EXPECT(fakehip_bytes_copied(hipMemcpyHostToDevice) == h2d0 + 64 &&
               fakehip_bytes_copied(hipMemcpyDeviceToDevice) == d2d0 + 64,
           "bytes copied are counted by resolved direction");
    EXPECT(hipMemset(d, 0, 1001) == hipErrorInvalidValue, "hipMemset overrun");
    (void)hipGetLastError();
    EXPECT(hipMemcpyAsync(d, hbuf, 16, hipMemcpyHostToDevice, (hipStream_t)hbuf) ==
               hipErrorInvalidHandle,
           "unknown stream");
    EXPECT(hipPeekAtLastError() == hipErrorInvalidHandle, "hipPeekAtLastError keeps the error");
    EXPECT(hipGetLastError() == hipErrorInvalidHandle && hipGetLastError() == hipSuccess,
           "hipGetLastError returns and clears");
    EXPECT(hipFree((char*)d + 256) == hipErrorInvalidValue, "hipFree of an interior pointer");
    EXPECT(hipFree(d) == hipSuccess, "hipFree");
    EXPECT(hipMemcpy(hbuf, d, 16, hipMemcpyDeviceToHost) == hipErrorInvalidValue,
           "copy from freed memory");
    EXPECT(hipFree(d) == hipErrorInvalidValue, "double hipFree");
    EXPECT(hipFree(NULL) == hipSuccess, "hipFree(NULL)");
    void* p = NULL;
    EXPECT(hipHostMalloc(&p, 4096, hipHostMallocDefault) == hipSuccess && p, "hipHostMalloc");
    memset(p, 7, 4096); /* pinned host memory is host accessible */
    EXPECT(hipMemcpy(d2, p, 4096, hipMemcpyHostToDevice) == hipErrorInvalidValue,
           "H2D overrun from pinned memory");
    EXPECT(hipMemcpy(d2, p, 3000, hipMemcpyHostToDevice) == hipSuccess, "H2D from pinned memory");
    EXPECT(hipHostFree(p) == hipSuccess, "hipHostFree");
    EXPECT(hipHostFree(hbuf) == hipErrorInvalidValue, "hipHostFree of non-pinned memory");
    EXPECT(hipMallocHost(&p, 128) == hipSuccess && hipFreeHost(p) == hipSuccess,
           "hipMallocHost/hipFreeHost");
    EXPECT(hipHostRegister(hbuf, sizeof hbuf, 0) == hipSuccess &&
               hipHostUnregister(hbuf) == hipSuccess,
           "hipHostRegister/hipHostUnregister");
    int dev = -1, count = 0;
    EXPECT(hipGetDevice(&dev) == hipSuccess && dev == 0, "hipGetDevice");
    EXPECT(hipGetDeviceCount(&count) == hipSuccess && count == 1, "hipGetDeviceCount");
    EXPECT(hipSetDevice(0) == hipSuccess && hipSetDevice(1) == hipErrorInvalidDevice,
           "hipSetDevice");
    EXPECT(strcmp(hipGetErrorName(hipErrorInvalidValue), "hipErrorInvalidValue") == 0 &&
               strcmp(hipGetErrorString(hipErrorOutOfMemory), "out of memory") == 0,
           "error names and strings");
    EXPECT(fakehip_stats("hipMalloc") == 3 && fakehip_stats("hipFree") == 4 &&
               fakehip_stats("notAHipFunction") == -1,
           "fakehip_stats counts calls");
    EXPECT(hipFree(d2) == hipSuccess, "hipFree second");
    return g_failed != 0;
}

static int probe_fail(void)
{
    void* d = NULL;
    unsigned char h[3][16];
    hipStream_t s = NULL;
    printf("hipMalloc#1=%d\n", hipMalloc(&d, 16));
    printf("hipStreamCreateWithFlags#1=%d\n", hipStreamCreateWithFlags(&s, hipStreamNonBlocking));
    for (int i = 0; i < 3; i++) {
        memset(h[i], i + 1, sizeof h[i]);
        printf("hipMemcpyAsync#%d=%d\n", i + 1,
               hipMemcpyAsync(d, h[i], sizeof h[i], hipMemcpyHostToDevice, s));
    }
    printf("last_error=%d\n", hipGetLastError());
    printf("hipStreamSynchronize#1=%d\n", hipStreamSynchronize(s));
    printf("hipStreamSynchronize#2=%d\n", hipStreamSynchronize(s));
    void* p = NULL;
    printf("hipHostMalloc#1=%d\n", hipHostMalloc(&p, 64, 0));
    printf("hipHostMalloc#2=%d\n", hipHostMalloc(&p, 64, 0));
    unsigned char r[16] = {0};
    hipDeviceSynchronize();
    printf("hipMemcpy#1=%d\n", hipMemcpy(r, d, sizeof r, hipMemcpyDeviceToHost));
    printf("device_value=%d\n", r[0]);
    return 0;
}

static int probe_miopen(void)
{
    miopenConvolutionDescriptor_t cd;
    miopenConvolutionMode_t mode;
    int pad[3] = {1, 1, 1}, str[3] = {1, 1, 1}, dil[3] = {1, 1, 1}, sp = 0, g = 0;
    EXPECT(miopenCreateConvolutionDescriptor(&cd) == miopenStatusSuccess, "create conv desc");
    EXPECT(miopenGetConvolutionGroupCount(cd, &g) == miopenStatusSuccess && g == 1,
           "default group count 1");
    EXPECT(miopenInitConvolutionNdDescriptor(cd, 2, pad, str, dil, miopenDepthwise) ==
               miopenStatusSuccess,
           "init depthwise");
    int p2[3], s2[3], d2[3];
    EXPECT(miopenGetConvolutionNdDescriptor(cd, 2, &sp, p2, s2, d2, &mode) ==
                   miopenStatusSuccess &&
               mode == miopenConvolution && sp == 2 && p2[0] == 1 && s2[1] == 1,
           "depthwise is stored as miopenConvolution");
    EXPECT(miopenInitConvolutionNdDescriptor(cd, 2, pad, str, dil, miopenGroupConv) ==
                   miopenStatusSuccess &&
               miopenGetConvolutionNdDescriptor(cd, 2, &sp, p2, s2, d2, &mode) ==
                   miopenStatusSuccess &&
               mode == miopenConvolution,
           "group conv is stored as miopenConvolution");
    EXPECT(miopenInitConvolutionNdDescriptor(cd, 3, pad, str, dil, miopenTranspose) ==
                   miopenStatusSuccess &&
               miopenGetConvolutionNdDescriptor(cd, 3, &sp, p2, s2, d2, &mode) ==
                   miopenStatusSuccess &&
               mode == miopenTranspose && sp == 3,
           "transpose mode is kept");
    EXPECT(miopenGetConvolutionNdDescriptor(cd, 4, &sp, p2, s2, d2, &mode) == miopenStatusBadParm,
           "requested spatial dim too large");
    int badp[2] = {-1, 0}, bads[2] = {1, 0}, badd[2] = {0, 1}, ok2[2] = {1, 1}, zero2[2] = {0, 0};
    EXPECT(miopenInitConvolutionNdDescriptor(cd, 2, badp, ok2, ok2, miopenConvolution) ==
               miopenStatusBadParm,
           "negative pad rejected");
    EXPECT(miopenInitConvolutionNdDescriptor(cd, 2, zero2, bads, ok2, miopenConvolution) ==
               miopenStatusBadParm,
           "zero stride rejected");
    EXPECT(miopenInitConvolutionNdDescriptor(cd, 2, zero2, ok2, badd, miopenConvolution) ==
               miopenStatusBadParm,
           "zero dilation rejected");
    EXPECT(miopenInitConvolutionNdDescriptor(cd, 4, pad, str, dil, miopenConvolution) ==
               miopenStatusBadParm,
           "4 spatial dims rejected");
    EXPECT(miopenInitConvolutionNdDescriptor(NULL, 2, pad, str, dil, miopenConvolution) ==
               miopenStatusBadParm,
           "NULL descriptor rejected");
    EXPECT(miopenSetConvolutionGroupCount(cd, 3) == miopenStatusSuccess &&
               miopenGetConvolutionGroupCount(cd, &g) == miopenStatusSuccess && g == 3,
           "group count round trip");

    /* attributes */
    int v = 7;
    EXPECT(miopenGetConvolutionAttribute(cd, MIOPEN_CONVOLUTION_ATTRIB_DETERMINISTIC, &v) ==
                   miopenStatusSuccess &&
               v == 0,
           "deterministic defaults to 0");
    EXPECT(miopenSetConvolutionAttribute(cd, MIOPEN_CONVOLUTION_ATTRIB_DETERMINISTIC, 1) ==
                   miopenStatusSuccess &&
               miopenGetConvolutionAttribute(cd, MIOPEN_CONVOLUTION_ATTRIB_DETERMINISTIC, &v) ==
                   miopenStatusSuccess &&
               v == 1,
           "deterministic round trip");
    EXPECT(miopenSetConvolutionAttribute(cd, MIOPEN_CONVOLUTION_ATTRIB_DETERMINISTIC, 2) ==
               miopenStatusBadParm,
           "deterministic value 2 rejected");
    EXPECT(miopenGetConvolutionAttribute(cd, MIOPEN_CONVOLUTION_ATTRIB_FP16_ALT_IMPL, &v) ==
                   miopenStatusSuccess &&
               v == -1,
           "fp16 alt impl defaults to -1");

    /* tensors */
    miopenTensorDescriptor_t x, w, y;
    miopenCreateTensorDescriptor(&x);
    miopenCreateTensorDescriptor(&w);
    miopenCreateTensorDescriptor(&y);
    miopenDataType_t dt;
    int n, c, h, wd, ns, cs, hs, ws;
    EXPECT(miopenSet4dTensorDescriptor(x, miopenFloat, 2, 3, 8, 8) == miopenStatusSuccess &&
               miopenGet4dTensorDescriptor(x, &dt, &n, &c, &h, &wd, &ns, &cs, &hs, &ws) ==
                   miopenStatusSuccess &&
               dt == miopenFloat && n == 2 && c == 3 && ns == 192 && cs == 64 && hs == 8 &&
               ws == 1,
           "Set4d gives packed strides");
    int lens[4] = {2, 3, 4, 5};
    EXPECT(miopenSetNdTensorDescriptorWithLayout(x, miopenHalf, miopenTensorNHWC, lens, 4) ==
                   miopenStatusSuccess &&
               miopenGet4dTensorDescriptor(x, &dt, &n, &c, &h, &wd, &ns, &cs, &hs, &ws) ==
                   miopenStatusSuccess &&
               c == 3 && h == 4 && cs == 1 && ws == 3 && hs == 15 && ns == 60,
           "NHWC layout strides");
    int lens5[5] = {1, 2, 3, 4, 5}, dims[5], strides[5], nd = 0;
    EXPECT(miopenSetNdTensorDescriptorWithLayout(x, miopenFloat, miopenTensorNDHWC, lens5, 5) ==
                   miopenStatusSuccess &&
               miopenGetTensorDescriptorSize(x, &nd) == miopenStatusSuccess && nd == 5 &&
               miopenGetTensorDescriptor(x, &dt, dims, strides) == miopenStatusSuccess &&
               strides[1] == 1 && strides[4] == 2 && strides[3] == 10 && strides[2] == 40 &&
               strides[0] == 120,
           "NDHWC layout strides");
    int pdims[4] = {2, 3, 4, 5}, pstr[4] = {100, 30, 7, 1};
    size_t bytes = 0;
    EXPECT(miopenSetTensorDescriptor(x, miopenHalf, 4, pdims, pstr) == miopenStatusSuccess &&
               miopenGetTensorNumBytes(x, &bytes) == miopenStatusSuccess &&
               bytes == 2 * (1 + 100 + 60 + 21 + 4),
           "NumBytes of a padded-stride tensor");
    EXPECT(miopenSetTensorDescriptor(x, miopenFloat, 4, pdims, NULL) == miopenStatusSuccess &&
               miopenGetTensorDescriptor(x, &dt, dims, strides) == miopenStatusSuccess &&
               strides[0] == 60 && strides[3] == 1,
           "NULL strides mean packed");

    /* output dims */
    int xd[4] = {2, 3, 8, 8}, wdims[4] = {4, 3, 3, 3}, out[5], ond = 0;
    miopenSetTensorDescriptor(x, miopenFloat, 4, xd, NULL);
    miopenSetTensorDescriptor(w, miopenFloat, 4, wdims, NULL);
    int one[2] = {1, 1}, two[2] = {2, 2};
    miopenInitConvolutionNdDescriptor(cd, 2, one, one, one, miopenConvolution);
    EXPECT(miopenGetConvolutionNdForwardOutputDim(cd, x, w, &ond, out) == miopenStatusSuccess &&
               ond == 4 && out[0] == 2 && out[1] == 4 && out[2] == 8 && out[3] == 8,
           "forward output dims (pad 1)");
    miopenInitConvolutionNdDescriptor(cd, 2, one, two, two, miopenConvolution);
    EXPECT(miopenGetConvolutionForwardOutputDim(cd, x, w, &n, &c, &h, &wd) ==
                   miopenStatusSuccess &&
               h == 3 && wd == 3,
           "forward output dims (stride 2, dilation 2)");
    int xt[4] = {2, 4, 5, 4}, wt[4] = {4, 3, 3, 3}, adj[2] = {1, 1};
    miopenSetTensorDescriptor(x, miopenFloat, 4, xt, NULL);
    miopenSetTensorDescriptor(w, miopenFloat, 4, wt, NULL);
    miopenInitConvolutionNdDescriptor(cd, 2, one, two, one, miopenTranspose);
    EXPECT(miopenSetTransposeConvNdOutputPadding(cd, 2, adj) == miopenStatusSuccess &&
               miopenGetConvolutionNdForwardOutputDim(cd, x, w, &ond, out) ==
                   miopenStatusSuccess &&
               out[1] == 3 && out[2] == 10 && out[3] == 8,
           "transposed output dims with output padding");
    miopenSetConvolutionGroupCount(cd, 2);
    EXPECT(miopenGetConvolutionNdForwardOutputDim(cd, x, w, &ond, out) == miopenStatusSuccess &&
               out[1] == 6,
           "transposed out channels = w dim1 * groups");
    int adj2[2] = {2, 0};
    miopenSetTransposeConvNdOutputPadding(cd, 2, adj2);
    EXPECT(miopenGetConvolutionNdForwardOutputDim(cd, x, w, &ond, out) == miopenStatusBadParm,
           "output padding >= stride rejected");
    EXPECT(miopenSetTransposeConvNdOutputPadding(cd, 3, adj2) == miopenStatusBadParm,
           "output padding dims must match");

    /* handle, stream, workspace queries */
    miopenHandle_t hd;
    hipStream_t s = NULL, got = (hipStream_t)1;
    hipStreamCreateWithFlags(&s, hipStreamNonBlocking);
    EXPECT(miopenCreate(&hd) == miopenStatusSuccess &&
               miopenGetStream(hd, &got) == miopenStatusSuccess && got == NULL,
           "new handle uses the null stream");
    EXPECT(miopenSetStream(hd, s) == miopenStatusSuccess &&
               miopenGetStream(hd, &got) == miopenStatusSuccess && got == s,
           "miopenSetStream round trip");
    int yd[4] = {2, 4, 8, 8};
    miopenSetTensorDescriptor(x, miopenFloat, 4, xd, NULL);
    miopenSetTensorDescriptor(w, miopenFloat, 4, wdims, NULL);
    miopenSetTensorDescriptor(y, miopenFloat, 4, yd, NULL);
    miopenInitConvolutionNdDescriptor(cd, 2, one, one, one, miopenConvolution);
    size_t wsz = 0, cnt = 0;
    EXPECT(miopenConvolutionForwardGetWorkSpaceSize(hd, w, x, cd, y, &wsz) ==
                   miopenStatusSuccess &&
               wsz == (1u << 20),
           "forward workspace 1 MiB");
    EXPECT(miopenConvolutionBackwardWeightsGetWorkSpaceSize(hd, y, x, cd, w, &wsz) ==
                   miopenStatusSuccess &&
               wsz == (1u << 20),
           "backward-weights workspace 1 MiB");
    miopenConvSolution_t sol;
    EXPECT(miopenConvolutionBackwardDataGetSolutionCount(hd, y, w, cd, x, &cnt) ==
                   miopenStatusSuccess &&
               cnt == 1 &&
               miopenConvolutionBackwardDataGetSolution(hd, y, w, cd, x, 1, &cnt, &sol) ==
                   miopenStatusSuccess &&
               sol.workspace_size == (1u << 20) && sol.algorithm == miopenConvolutionAlgoGEMM,
           "backward-data solution list");
    EXPECT(miopenConvolutionForwardGetWorkSpaceSize(hd, w, y, cd, x, &wsz) == miopenStatusBadParm,
           "inconsistent problem rejected");
    int bl[4] = {1, 4, 1, 1};
    miopenTensorDescriptor_t bd;
    miopenCreateTensorDescriptor(&bd);
    miopenSetTensorDescriptor(bd, miopenBFloat16, 4, bl, NULL);
    miopenSetTensorDescriptor(y, miopenBFloat16, 4, yd, NULL);
    float one_f = 1, zero_f = 0;
    EXPECT(miopenConvolutionForwardBias(hd, &one_f, bd, (void*)8, &zero_f, y, (void*)8) ==
               miopenStatusNotImplemented,
           "bf16 bias is not implemented (as in MIOpen)");
    EXPECT(sizeof(miopenConvAlgoPerf_t) == 16 && sizeof(miopenConvSolution_t) == 32,
           "struct layouts");
    miopenDestroyTensorDescriptor(bd);
    miopenDestroyTensorDescriptor(x);
    miopenDestroyTensorDescriptor(w);
    miopenDestroyTensorDescriptor(y);
    miopenDestroyConvolutionDescriptor(cd);
    miopenDestroy(hd);
    hipStreamDestroy(s);
    return g_failed != 0;
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

static int probe_events(void)
{
    const size_t n = 1 << 16;
    void* d = NULL;
    unsigned char* h = malloc(n);
    unsigned char* r = malloc(n);
    hipStream_t s = NULL, s2 = NULL;
    hipEvent_t e1 = NULL, e2 = NULL, et = NULL;
    float ms = -1;
    EXPECT(hipMalloc(&d, n) == hipSuccess, "hipMalloc");
    EXPECT(hipStreamCreateWithFlags(&s, hipStreamNonBlocking) == hipSuccess &&
               hipStreamCreateWithFlags(&s2, hipStreamNonBlocking) == hipSuccess,
           "two non-blocking streams");
    EXPECT(hipEventCreate(&e1) == hipSuccess && hipEventCreate(&e2) == hipSuccess,
           "hipEventCreate");
    EXPECT(hipEventCreateWithFlags(&et, hipEventDisableTiming) == hipSuccess,
           "hipEventCreateWithFlags(DisableTiming)");
    EXPECT(hipEventCreateWithFlags(&et, 0x100) == hipErrorInvalidValue, "unknown flags refused");
    EXPECT(hipEventQuery(e1) == hipSuccess, "a never-recorded event is complete");
    EXPECT(hipEventElapsedTime(&ms, e1, e2) == hipErrorInvalidHandle,
           "elapsed time of unrecorded events is refused");

    memset(h, 0x5A, n);
    memset(r, 0, n);
    EXPECT(hipEventRecord(e1, s) == hipSuccess, "record before the copies");
    EXPECT(hipMemcpyAsync(d, h, n, hipMemcpyHostToDevice, s) == hipSuccess, "enqueue H2D");
    EXPECT(hipMemcpyAsync(r, d, n, hipMemcpyDeviceToHost, s) == hipSuccess, "enqueue D2H");
    EXPECT(hipEventRecord(e2, s) == hipSuccess, "record after the copies");
    EXPECT(hipEventQuery(e2) == hipErrorNotReady, "record behind queued copies is not ready");
    EXPECT(hipEventSynchronize(e2) == hipSuccess, "hipEventSynchronize");
    EXPECT(all_bytes(r, n, 0x5A), "after the event the copies before it are done");
    EXPECT(hipEventQuery(e2) == hipSuccess, "completed record queries as done");
    EXPECT(hipEventElapsedTime(&ms, e1, e2) == hipSuccess && ms >= 1.0f,
           "elapsed time spans the two delayed copies");
    EXPECT(hipEventRecord(et, s) == hipSuccess && hipEventSynchronize(et) == hipSuccess &&
               hipEventElapsedTime(&ms, e1, et) == hipErrorInvalidHandle,
           "no elapsed time with a timing-disabled event");

    /* s2 waits for a record on s: its read sees what s wrote */
    memset(h, 0x77, n);
    memset(r, 0, n);
    EXPECT(hipMemcpyAsync(d, h, n, hipMemcpyHostToDevice, s) == hipSuccess, "H2D on s");
    EXPECT(hipEventRecord(e1, s) == hipSuccess, "record on s");
    EXPECT(hipStreamWaitEvent(s2, e1, 0) == hipSuccess, "s2 waits for it");
    EXPECT(hipMemcpyAsync(r, d, n, hipMemcpyDeviceToHost, s2) == hipSuccess, "D2H on s2");
    EXPECT(hipStreamSynchronize(s2) == hipSuccess, "sync s2");
    EXPECT(all_bytes(r, n, 0x77), "a stream waiting for an event sees the work before it");
    EXPECT(hipStreamWaitEvent(s2, e1, 1) == hipErrorInvalidValue, "wait flags must be 0");

    /* the null stream: recording waits for blocking streams only */
    EXPECT(hipEventRecord(e2, NULL) == hipSuccess && hipEventQuery(e2) == hipSuccess,
           "a record on the null stream completes at once");

    /* destroying an event whose record is still queued is allowed */
    EXPECT(hipMemcpyAsync(d, h, n, hipMemcpyHostToDevice, s) == hipSuccess, "H2D again");
    EXPECT(hipEventRecord(e1, s) == hipSuccess, "record behind it");
    EXPECT(hipEventDestroy(e1) == hipSuccess, "destroy with the record queued");
    EXPECT(hipEventQuery(e1) == hipErrorInvalidHandle, "a destroyed event is unknown");
    EXPECT(hipStreamSynchronize(s) == hipSuccess, "the queued record still completes");
    EXPECT(hipEventRecord((hipEvent_t)h, s) == hipErrorInvalidHandle, "unknown events refused");
    EXPECT(hipEventDestroy(e2) == hipSuccess && hipEventDestroy(et) == hipSuccess,
           "hipEventDestroy");
    EXPECT(hipStreamDestroy(s) == hipSuccess && hipStreamDestroy(s2) == hipSuccess,
           "hipStreamDestroy");
    EXPECT(hipFree(d) == hipSuccess, "hipFree");
    free(h);
    free(r);
    return g_failed != 0;
}

/* Prints the wall time of copies under FAKE_HIP_GBPS (the test checks the figures). */
static int probe_pcie(void)
{
    const size_t n = 64u << 20;
    void* d = NULL;
    unsigned char* h = NULL;
    unsigned char* r = NULL;
    hipStream_t s = NULL, s2 = NULL;
    EXPECT(hipMalloc(&d, 2 * n) == hipSuccess, "hipMalloc");
    EXPECT(hipHostMalloc((void**)&h, n, 0) == hipSuccess &&
               hipHostMalloc((void**)&r, n, 0) == hipSuccess,
           "hipHostMalloc");
    memset(h, 0x21, n);
    EXPECT(hipStreamCreateWithFlags(&s, hipStreamNonBlocking) == hipSuccess &&
               hipStreamCreateWithFlags(&s2, hipStreamNonBlocking) == hipSuccess,
           "streams");
    /* warm the pages so the copies measure the model, not first-touch faults */
    EXPECT(hipMemcpy(d, h, n, hipMemcpyHostToDevice) == hipSuccess &&
               hipMemcpy((char*)d + n, h, n, hipMemcpyHostToDevice) == hipSuccess &&
               hipMemcpy(r, d, n, hipMemcpyDeviceToHost) == hipSuccess,
           "warm-up");

    double t0 = now_ms();
    EXPECT(hipMemcpyAsync(d, h, n, hipMemcpyHostToDevice, s) == hipSuccess, "H2D enqueue");
    double enqueue = now_ms() - t0;
    EXPECT(hipStreamSynchronize(s) == hipSuccess, "sync");
    double one = now_ms() - t0;

    /* two streams, same direction: one link, so twice as long */
    t0 = now_ms();
    EXPECT(hipMemcpyAsync(d, h, n, hipMemcpyHostToDevice, s) == hipSuccess &&
               hipMemcpyAsync((char*)d + n, h, n, hipMemcpyHostToDevice, s2) == hipSuccess,
           "two H2D on two streams");
    EXPECT(hipStreamSynchronize(s) == hipSuccess && hipStreamSynchronize(s2) == hipSuccess,
           "sync both");
    double same_dir = now_ms() - t0;

    /* two streams, opposite directions: full duplex, so about as long as one */
    t0 = now_ms();
    EXPECT(hipMemcpyAsync(d, h, n, hipMemcpyHostToDevice, s) == hipSuccess &&
               hipMemcpyAsync(r, (char*)d + n, n, hipMemcpyDeviceToHost, s2) == hipSuccess,
           "H2D and D2H on two streams");
    EXPECT(hipStreamSynchronize(s) == hipSuccess && hipStreamSynchronize(s2) == hipSuccess,
           "sync both");
    double duplex = now_ms() - t0;

    /* the null stream blocks the caller for the copy's time */
    t0 = now_ms();
    EXPECT(hipMemcpy(r, d, n, hipMemcpyDeviceToHost) == hipSuccess, "hipMemcpy D2H");
    double sync_copy = now_ms() - t0;

    printf("pcie bytes=%zu enqueue_ms=%.3f one_ms=%.3f same_dir_ms=%.3f duplex_ms=%.3f "
           "sync_copy_ms=%.3f\n",
           n, enqueue, one, same_dir, duplex, sync_copy);
    EXPECT(hipStreamDestroy(s) == hipSuccess && hipStreamDestroy(s2) == hipSuccess, "destroy");
    EXPECT(hipHostFree(h) == hipSuccess && hipHostFree(r) == hipSuccess && hipFree(d) == hipSuccess,
           "free");
    return g_failed != 0;
}

static int probe_affinity(void)
{
    hipStream_t s[2];
    void* d = NULL;
    unsigned char h[64] = {0};
    EXPECT(hipMalloc(&d, sizeof h) == hipSuccess, "hipMalloc");
    for (int i = 0; i < 2; i++) {
        EXPECT(hipStreamCreateWithFlags(&s[i], hipStreamNonBlocking) == hipSuccess, "stream");
        EXPECT(hipMemcpyAsync(d, h, sizeof h, hipMemcpyHostToDevice, s[i]) == hipSuccess, "copy");
        EXPECT(hipStreamSynchronize(s[i]) == hipSuccess, "sync");
    }
    DIR* dir = opendir("/proc/self/task");
    struct dirent* e;
    while (dir && (e = readdir(dir))) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], line[256];
        snprintf(path, sizeof path, "/proc/self/task/%s/status", e->d_name);
        FILE* f = fopen(path, "r");
        while (f && fgets(line, sizeof line, f))
            if (strncmp(line, "Cpus_allowed_list:", 18) == 0)
                printf("thread %s cpus %s", e->d_name, line + 18 + strspn(line + 18, " \t"));
        if (f)
            fclose(f);
    }
    if (dir)
        closedir(dir);
    printf("main %ld\n", (long)syscall(SYS_gettid));
    for (int i = 0; i < 2; i++)
        EXPECT(hipStreamDestroy(s[i]) == hipSuccess, "destroy");
    EXPECT(hipFree(d) == hipSuccess, "free");
    return g_failed != 0;
}

int main(int argc, char** argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char* what = argc > 1 ? argv[1] : "";
    int rc;
    if (strcmp(what, "segv") == 0)
        rc = probe_segv();
    else if (strcmp(what, "stale") == 0)
        rc = probe_stale();
    else if (strcmp(what, "validate") == 0)
        rc = probe_validate();
    else if (strcmp(what, "events") == 0)
        rc = probe_events();
    else if (strcmp(what, "pcie") == 0)
        rc = probe_pcie();
    else if (strcmp(what, "affinity") == 0)
        rc = probe_affinity();
    else if (strcmp(what, "fail") == 0)
        rc = probe_fail();
    else if (strcmp(what, "miopen") == 0)
        rc = probe_miopen();
    else {
        fprintf(stderr, "usage: doubles_probe segv|stale|validate|events|pcie|affinity|fail|miopen\n");
        return 2;
    }
    if (strcmp(what, "fail") != 0)
        printf("%s: %s\n", what, rc ? "FAILED" : "all ok");
    return rc;
}
