/*
 * hip_abi_check.c -- owns the check that the fake HIP keeps the real HIP ABI.
 * Built against HIP's real hip_runtime_api.h (Debian's libamdhip64-dev 5.x,
 * -D__HIP_PLATFORM_AMD__) and linked with the fake libamdhip64.so, it
 *   1. compares every layout, enum value, flag and prototype that hip_api.h
 *      declares with the real header (hip_abi_real.c vs hip_abi_ours.c);
 *   2. reads the fake's device through the real header's types: the
 *      hipDeviceProp_t it writes (every byte written, none past the end, each
 *      member at the real offset holding the RDNA1 card's value),
 *      hipDeviceGetAttribute against those members, device selection and
 *      errors, hipMemGetInfo and the version;
 *   3. drives streams, events, memsets and pitched (2-D) copies and memsets
 *      with the real header's flags.
 * Prints "ok ..." or "FAIL ..." per check, then "N passed, M failed"; exit
 * status 0 iff M == 0. FAKE_HIP_DELAY_US (the fake's stream latency) must be
 * at least 50000 so that work queued on a stream is observably pending.
 */
#include <hip/hip_runtime_api.h>

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hip_abi_list.h"

static int g_passed, g_failed;

static void check(int ok, const char* fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "ok" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (ok)
        g_passed++;
    else
        g_failed++;
}

#define HIP_OK(call) check((call) == hipSuccess, "%s", #call)

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

static void compare_declarations(void)
{
    size_t nr = 0, no = 0;
    const struct hip_abi_fact* r = hip_abi_facts_real(&nr);
    const struct hip_abi_fact* o = hip_abi_facts_ours(&no);
    check(nr == no && nr > 200, "both headers give %zu / %zu facts", nr, no);
    for (size_t i = 0; i < nr && i < no; i++)
        check(strcmp(r[i].what, o[i].what) == 0 && r[i].value == o[i].value,
              "%s: real header %lld, hip_api.h %lld", r[i].what, r[i].value, o[i].value);
}

static void device_properties(void)
{
    /* The struct inside a larger buffer, twice, pre-filled with two patterns. */
    enum { GUARD = 256 };
    union {
        hipDeviceProp_t p;
        unsigned char raw[sizeof(hipDeviceProp_t) + GUARD];
    } a, b;
    memset(&a, 0xA5, sizeof a);
    memset(&b, 0x5A, sizeof b);
    HIP_OK(hipGetDeviceProperties(&a.p, 0));
    HIP_OK(hipGetDeviceProperties(&b.p, 0));
    check(memcmp(a.raw, b.raw, sizeof(hipDeviceProp_t)) == 0,
          "hipGetDeviceProperties writes all %zu bytes of hipDeviceProp_t",
          sizeof(hipDeviceProp_t));
    int guard_ok = 1;
    for (size_t i = sizeof(hipDeviceProp_t); i < sizeof a.raw; i++)
        guard_ok &= a.raw[i] == 0xA5 && b.raw[i] == 0x5A;
    check(guard_ok, "hipGetDeviceProperties writes nothing past sizeof(hipDeviceProp_t)");

    const hipDeviceProp_t* p = &a.p;
    check(strcmp(p->name, "AMD Radeon RX 5700 XT") == 0, "name \"%s\"", p->name);
    check(strcmp(p->gcnArchName, "gfx1010:xnack-") == 0, "gcnArchName \"%s\"", p->gcnArchName);
    check(p->gcnArch == 1010, "gcnArch %d", p->gcnArch);
    check(p->major == 10 && p->minor == 1, "compute capability %d.%d", p->major, p->minor);
    check(p->totalGlobalMem == (size_t)8 << 30, "totalGlobalMem %zu", p->totalGlobalMem);
    check(p->multiProcessorCount == 40, "multiProcessorCount %d", p->multiProcessorCount);
    check(p->warpSize == 32, "warpSize %d", p->warpSize);
    check(p->maxThreadsPerBlock == 1024, "maxThreadsPerBlock %d", p->maxThreadsPerBlock);
    check(p->maxThreadsDim[0] == 1024 && p->maxThreadsDim[2] == 1024, "maxThreadsDim");
    check(p->sharedMemPerBlock == 65536, "sharedMemPerBlock %zu", p->sharedMemPerBlock);
    check(p->l2CacheSize == 4 << 20, "l2CacheSize %d", p->l2CacheSize);
    check(p->memoryBusWidth == 256, "memoryBusWidth %d", p->memoryBusWidth);
    check(p->clockRate == 2100000, "clockRate %d kHz", p->clockRate);
    check(p->arch.hasDoubles == 1 && p->arch.hasWarpShuffle == 1 &&
              p->arch.hasDynamicParallelism == 0,
          "arch flags");
    check(p->integrated == 0 && p->isLargeBar == 0, "a discrete card");
    check(p->maxSharedMemoryPerMultiProcessor == 65536, "maxSharedMemoryPerMultiProcessor %zu",
          p->maxSharedMemoryPerMultiProcessor);
    check(p->textureAlignment == 256 && p->memPitch == 2147483647, "textureAlignment, memPitch");
    check(p->asicRevision == 2 && p->managedMemory == 1 &&
              p->pageableMemoryAccessUsesHostPageTables == 0,
          "the last members (asicRevision, managedMemory, ...)");

    struct {
        hipDeviceAttribute_t attr;
        long long expect;
        const char* name;
    } attrs[] = {
#define A(attr, value) {attr, (long long)(value), #attr}
        A(hipDeviceAttributeMultiprocessorCount, p->multiProcessorCount),
        A(hipDeviceAttributeWarpSize, p->warpSize),
        A(hipDeviceAttributeComputeCapabilityMajor, p->major),
        A(hipDeviceAttributeComputeCapabilityMinor, p->minor),
        A(hipDeviceAttributeMaxThreadsPerBlock, p->maxThreadsPerBlock),
        A(hipDeviceAttributeMaxBlockDimX, p->maxThreadsDim[0]),
        A(hipDeviceAttributeMaxBlockDimZ, p->maxThreadsDim[2]),
        A(hipDeviceAttributeMaxGridDimX, p->maxGridSize[0]),
        A(hipDeviceAttributeClockRate, p->clockRate),
        A(hipDeviceAttributeMemoryClockRate, p->memoryClockRate),
        A(hipDeviceAttributeMemoryBusWidth, p->memoryBusWidth),
        A(hipDeviceAttributeL2CacheSize, p->l2CacheSize),
        A(hipDeviceAttributeMaxSharedMemoryPerBlock, p->sharedMemPerBlock),
        A(hipDeviceAttributeMaxRegistersPerBlock, p->regsPerBlock),
        A(hipDeviceAttributeMaxThreadsPerMultiProcessor, p->maxThreadsPerMultiProcessor),
        A(hipDeviceAttributePciBusId, p->pciBusID),
        A(hipDeviceAttributeIntegrated, p->integrated),
        A(hipDeviceAttributeConcurrentKernels, p->concurrentKernels),
        A(hipDeviceAttributeCanMapHostMemory, p->canMapHostMemory),
        A(hipDeviceAttributeEccEnabled, p->ECCEnabled),
        A(hipDeviceAttributeClockInstructionRate, p->clockInstructionRate),
        A(hipDeviceAttributeMaxSharedMemoryPerMultiprocessor, p->maxSharedMemoryPerMultiProcessor),
        A(hipDeviceAttributeGcnArch, p->gcnArch),
        A(hipDeviceAttributeAsicRevision, p->asicRevision),
        A(hipDeviceAttributeIsLargeBar, p->isLargeBar),
        A(hipDeviceAttributeManagedMemory, p->managedMemory),
#undef A
    };
    for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++) {
        int v = -12345;
        hipError_t e = hipDeviceGetAttribute(&v, attrs[i].attr, 0);
        check(e == hipSuccess && v == attrs[i].expect, "hipDeviceGetAttribute(%s) = %d (%s)",
              attrs[i].name, v, hipGetErrorName(e));
    }
    int v = 0;
    check(hipDeviceGetAttribute(&v, hipDeviceAttributeLuid, 0) == hipErrorInvalidValue,
          "hipDeviceGetAttribute(a CUDA-only attribute) is hipErrorInvalidValue");
    check(hipDeviceGetAttribute(&v, hipDeviceAttributeWarpSize, 1) == hipErrorInvalidDevice,
          "hipDeviceGetAttribute on device 1 is hipErrorInvalidDevice");
    check(hipGetDeviceProperties(&b.p, 1) == hipErrorInvalidDevice,
          "hipGetDeviceProperties on device 1 is hipErrorInvalidDevice");
    check(hipGetDeviceProperties(NULL, 0) == hipErrorInvalidValue,
          "hipGetDeviceProperties(NULL) is hipErrorInvalidValue");
    (void)hipGetLastError();

    char name[64];
    HIP_OK(hipDeviceGetName(name, (int)sizeof name, 0));
    check(strcmp(name, p->name) == 0, "hipDeviceGetName gives the properties' name");
}

static void device_selection(void)
{
    int n = -1, dev = -1, version = 0;
    HIP_OK(hipGetDeviceCount(&n));
    check(n == 1, "hipGetDeviceCount %d", n);
    HIP_OK(hipSetDevice(0));
    HIP_OK(hipGetDevice(&dev));
    check(dev == 0, "hipGetDevice %d", dev);
    check(hipSetDevice(1) == hipErrorInvalidDevice, "hipSetDevice(1) is hipErrorInvalidDevice");
    check(hipGetLastError() == hipErrorInvalidDevice && hipGetLastError() == hipSuccess,
          "hipGetLastError reports hipErrorInvalidDevice once");
    check(strcmp(hipGetErrorName(hipErrorInvalidDevice), "hipErrorInvalidDevice") == 0,
          "hipGetErrorName(hipErrorInvalidDevice)");
    HIP_OK(hipRuntimeGetVersion(&version));
    check(version / 10000000 == HIP_VERSION_MAJOR && version / 100000 % 100 == HIP_VERSION_MINOR,
          "runtime version %d is the header's %d.%d", version, HIP_VERSION_MAJOR,
          HIP_VERSION_MINOR);
    HIP_OK(hipInit(0));
}

static void memory_info(void)
{
    size_t free0 = 0, total = 0, free1 = 0, total1 = 0;
    void* d = NULL;
    HIP_OK(hipMemGetInfo(&free0, &total));
    check(total == (size_t)8 << 30 && free0 <= total, "hipMemGetInfo total %zu free %zu", total,
          free0);
    HIP_OK(hipMalloc(&d, 3u << 20));
    HIP_OK(hipMemGetInfo(&free1, &total1));
    check(free1 + (3u << 20) <= free0 && total1 == total, "an allocation of 3 MiB lowers free memory");
    HIP_OK(hipFree(d));
}

static void streams_and_events(void)
{
    const char* delay_env = getenv("FAKE_HIP_DELAY_US");
    double delay_ms = delay_env ? atof(delay_env) / 1e3 : 2.0;
    check(delay_ms >= 50, "FAKE_HIP_DELAY_US is at least 50000 (%.0f ms)", delay_ms);
    enum { N = 1 << 16 };
    unsigned char* host = malloc(N);
    void* d = NULL;
    hipStream_t s = NULL, s2 = NULL;
    hipEvent_t start = NULL, stop = NULL, untimed = NULL;
    HIP_OK(hipStreamCreateWithFlags(&s, hipStreamNonBlocking));
    HIP_OK(hipStreamCreate(&s2));
    HIP_OK(hipMalloc(&d, N));
    HIP_OK(hipEventCreate(&start));
    HIP_OK(hipEventCreateWithFlags(&stop, hipEventBlockingSync));
    HIP_OK(hipEventCreateWithFlags(&untimed, hipEventDisableTiming));

    HIP_OK(hipEventRecord(start, s));
    double queued = now_ms();
    HIP_OK(hipMemsetAsync(d, 0x3c, N, s));
    HIP_OK(hipEventRecord(stop, s));
    hipError_t q = hipEventQuery(stop);
    hipError_t sq = hipStreamQuery(s);
    if (now_ms() - queued < delay_ms * 0.8) {
        check(q == hipErrorNotReady, "hipEventQuery of a pending record is hipErrorNotReady (%s)",
              hipGetErrorName(q));
        check(sq == hipErrorNotReady, "hipStreamQuery of a busy stream is hipErrorNotReady");
    }
    HIP_OK(hipStreamWaitEvent(s2, stop, 0));
    HIP_OK(hipEventRecord(untimed, s2));
    HIP_OK(hipEventSynchronize(stop));
    HIP_OK(hipEventQuery(stop));
    float ms = -1;
    HIP_OK(hipEventElapsedTime(&ms, start, stop));
    check(ms >= delay_ms * 0.9, "hipEventElapsedTime %.1f ms spans the memset (>= %.0f ms)", ms,
          delay_ms);
    HIP_OK(hipEventSynchronize(untimed));
    check(hipEventElapsedTime(&ms, start, untimed) == hipErrorInvalidHandle,
          "hipEventElapsedTime with a hipEventDisableTiming event is hipErrorInvalidHandle");
    (void)hipGetLastError();
    HIP_OK(hipMemcpy(host, d, N, hipMemcpyDeviceToHost));
    int all = 1;
    for (int i = 0; i < N; i++)
        all &= host[i] == 0x3c;
    check(all, "hipMemsetAsync's bytes reach the host");

    HIP_OK(hipMemset(d, 0x11, N / 2));
    HIP_OK(hipDeviceSynchronize());
    HIP_OK(hipMemcpy(host, d, N, hipMemcpyDefault));
    all = 1;
    for (int i = 0; i < N; i++)
        all &= host[i] == (i < N / 2 ? 0x11 : 0x3c);
    check(all, "hipMemset of half the buffer, read back with hipMemcpyDefault");
    HIP_OK(hipStreamQuery(s));

    HIP_OK(hipEventDestroy(start));
    HIP_OK(hipEventDestroy(stop));
    HIP_OK(hipEventDestroy(untimed));
    HIP_OK(hipFree(d));
    HIP_OK(hipStreamDestroy(s));
    HIP_OK(hipStreamDestroy(s2));
    free(host);
}

/* Pitched copies and memsets move rows of `width` bytes `pitch` apart, on a stream or
 * the null stream, and refuse rows wider than their pitch. */
static void pitched_copies(void)
{
    enum { W = 24, ROWS = 5, DP = 64, SP = 40 };
    unsigned char src[ROWS * SP], back[ROWS * DP], rows[ROWS * W];
    for (int i = 0; i < (int)sizeof src; i++)
        src[i] = (unsigned char)(i * 7 + 3);
    void* d = NULL;
    hipStream_t s = NULL;
    HIP_OK(hipStreamCreateWithFlags(&s, hipStreamNonBlocking));
    HIP_OK(hipMalloc(&d, sizeof back));
    HIP_OK(hipMemset(d, 0x5a, sizeof back));
    HIP_OK(hipMemcpy2DAsync(d, DP, src, SP, W, ROWS, hipMemcpyHostToDevice, s));
    HIP_OK(hipMemset2DAsync((char*)d + W, DP, 0, 8, ROWS, s));
    HIP_OK(hipStreamSynchronize(s));
    HIP_OK(hipMemcpy(back, d, sizeof back, hipMemcpyDeviceToHost));
    int ok = 1;
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < DP; c++) {
            int want = c < W ? src[r * SP + c] : c < W + 8 ? 0 : 0x5a;
            ok &= back[r * DP + c] == want;
        }
    check(ok, "hipMemcpy2DAsync places each row at its pitch, hipMemset2DAsync fills its columns");
    HIP_OK(hipMemcpy2D(rows, W, d, DP, W, ROWS, hipMemcpyDeviceToHost));
    ok = 1;
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < W; c++)
            ok &= rows[r * W + c] == src[r * SP + c];
    check(ok, "hipMemcpy2D gathers pitched device rows into packed host rows");
    HIP_OK(hipMemset2D(d, DP, 0x11, DP, ROWS));
    HIP_OK(hipMemcpy(back, d, sizeof back, hipMemcpyDeviceToHost));
    ok = 1;
    for (int i = 0; i < (int)sizeof back; i++)
        ok &= back[i] == 0x11;
    check(ok, "hipMemset2D over the full pitch fills every byte");
    check(hipMemcpy2D(rows, W, d, 8, W, ROWS, hipMemcpyDeviceToHost) != hipSuccess,
          "hipMemcpy2D with rows wider than their pitch is refused");
    check(hipMemset2DAsync(d, DP, 0, W, ROWS + 1, s) != hipSuccess,
          "hipMemset2DAsync past the allocation is refused");
    (void)hipGetLastError();
    HIP_OK(hipFree(d));

    /* A pitched copy of more than 8 MiB (the fake splits those from 1 MiB over threads by rows). */
    enum { BW = 4000, BP = 4096, BR = 3000 };
    unsigned char* big = malloc((size_t)BP * BR);
    unsigned char* got = malloc((size_t)BP * BR);
    for (size_t i = 0; i < (size_t)BP * BR; i++)
        big[i] = (unsigned char)(i * 13 + i / 4093);
    HIP_OK(hipMalloc(&d, (size_t)BP * BR));
    HIP_OK(hipMemset(d, 0x77, (size_t)BP * BR));
    HIP_OK(hipMemcpy2DAsync(d, BP, big, BP, BW, BR, hipMemcpyHostToDevice, s));
    HIP_OK(hipStreamSynchronize(s));
    HIP_OK(hipMemcpy(got, d, (size_t)BP * BR, hipMemcpyDeviceToHost));
    ok = 1;
    for (size_t r = 0; r < BR; r++)
        for (size_t c = 0; c < BP; c++)
            ok &= got[r * BP + c] == (c < BW ? big[r * BP + c] : 0x77);
    check(ok, "a pitched copy of %d rows of %d bytes lands row by row", BR, BW);
    HIP_OK(hipFree(d));
    free(big);
    free(got);
    HIP_OK(hipStreamDestroy(s));
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    compare_declarations();
    device_properties();
    device_selection();
    memory_info();
    streams_and_events();
    pitched_copies();
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
