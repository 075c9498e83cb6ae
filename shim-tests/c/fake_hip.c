/*
 * fake_hip.c -- owns the fake HIP runtime, built as libamdhip64.so (SONAME
 * libamdhip64.so), that stands in for ROCm when testing rdna1shim without an
 * AMD GPU.
 *
 * Device memory: one large PROT_NONE reservation (16 GiB, falling back to 4
 * and 1 GiB) hands out 256-byte aligned "device pointers" (first fit); the
 * bytes live in a separate read/write shadow mapping at the same offset. Any
 * host dereference of a device pointer therefore faults, as on a real dGPU.
 *
 * Streams: every stream created by hipStreamCreate* has a worker thread that
 * runs its queued copies/memsets in FIFO order; each operation becomes due
 * FAKE_HIP_DELAY_US microseconds (default 2000) after it was enqueued, so a
 * reader that does not synchronize sees stale bytes. Host buffers are read and
 * written when the operation executes (callers must keep them alive until the
 * stream is synchronized, as with real HIP). The null stream (0) runs
 * operations synchronously after waiting for the blocking streams; it does not
 * wait for streams created with hipStreamNonBlocking. hipMemcpy/hipMemset are
 * null-stream operations. hipFree/hipHostFree/hipDeviceSynchronize wait for
 * every stream.
 *
 * Events: hipEventRecord queues a marker on the stream that completes when
 * every operation queued before it on that stream has run (at once on the
 * null stream, after the blocking streams); hipEventSynchronize/Query wait for
 * or test the last record, hipEventElapsedTime gives the milliseconds between
 * two completed records, and hipStreamWaitEvent makes a stream's later
 * operations wait for the event's last record. Markers carry no delay.
 *
 * Pitched copies and memsets (hipMemcpy2D*, hipMemset2D*) move `height` rows of
 * `width` bytes, each side's rows `pitch` bytes apart; each side's extent is validated
 * as one range, and the link model counts width x height bytes.
 *
 * Copies of 1 MiB and more (FAKE_HIP_COPY_SPLIT_KIB; pitched ones by whole rows) are split
 * over four threads (a DMA engine outruns one core's memcpy), so that the fake keeps up with
 * the link it models: on a 16-core machine whose cores the engine keeps busy, one core's
 * memcpy of a 6.4 MB piece ran at about 6.5 GB/s, half of a 12 GB/s link.
 *
 * PCIe model: with FAKE_HIP_GBPS set, every host<->device copy also takes
 * bytes / bandwidth of wall time on the executing worker (or caller, for the
 * null stream), like a DMA engine: the host threads are free meanwhile. Each
 * direction is one link shared by all streams (full duplex), so two copies
 * in one direction never overlap; device-to-device and host-to-host copies
 * are not limited.
 *
 * Device: one card, device 0, described as an RDNA1 RX 5700 XT (gfx1010:xnack-, 40 CUs,
 * 8 GiB, wave32) by hipGetDeviceProperties (HIP 5.x's hipDeviceProp_t layout),
 * hipDeviceGetAttribute, hipDeviceGetName and hipMemGetInfo; the runtime reports
 * version 5.2 (HIP_VERSION 50221153), the version of that layout. Any other
 * device id gives hipErrorInvalidDevice.
 *
 * Validation: the device side of a copy (dst of H2D, src of D2H, both of D2D,
 * dst of memsets) must lie inside one live allocation, and the host side must
 * not touch the device reservation; otherwise hipErrorInvalidValue. Unknown
 * streams give hipErrorInvalidHandle. hipMemcpyDefault infers the direction
 * from whether each pointer lies in the device reservation.
 *
 * Environment:
 *   FAKE_HIP_DELAY_US  per-operation latency of stream operations (default 2000).
 *   FAKE_HIP_GBPS      bandwidth of the modelled PCIe link in GB/s (10^9 bytes/s)
 *                      per direction; unset or 0: copies are plain memcpy.
 *   FAKE_HIP_COPY_SPLIT_KIB  size in KiB from which a copy is split over four threads
 *                      (default 1024; below it one core's memcpy, which falls behind a
 *                      12 GB/s link on cores the engine keeps busy, copies the whole of it).
 *   FAKE_HIP_COPY_CPUS CPUs the stream workers run on, e.g. "2-15" or "4,5": a real
 *                      GPU's copy engines take no CPU time, so a benchmark can keep
 *                      the fake's memcpy off the cores it measures.
 *   FAKE_HIP_FAIL      comma-separated fault injections "function:N" (the Nth call
 *                      of that function, 1-based, counted per function from
 *                      process start) or "function:*" (every call), e.g.
 *                      "hipMemcpyAsync:3,hipStreamSynchronize:1,hipHostMalloc:*".
 *                      An injected call does nothing and returns hipErrorOutOfMemory
 *                      for allocations (hipMalloc, hipHostMalloc, hipMallocHost) and
 *                      hipErrorUnknown otherwise; it also becomes the last error.
 *                      Unknown function names abort the process.
 *
 * Test-only exports: fakehip_stats(name) (call count per function) and
 * fakehip_bytes_copied(kind) (bytes moved by executed copies of that kind).
 * Thread safe: one global mutex guards allocator, streams and queues.
 */
#define _GNU_SOURCE
#include "hip_api.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>

/* ------------------------------------------------------------------ */
/* call accounting and fault injection                                   */
/* ------------------------------------------------------------------ */

#define FAKE_HIP_FUNCS(X)                                                                       \
    X(hipInit) X(hipMalloc) X(hipFree) X(hipMemcpy) X(hipMemcpyAsync) X(hipMemset)              \
    X(hipMemsetAsync) X(hipStreamCreate) X(hipStreamCreateWithFlags) X(hipStreamDestroy)        \
    X(hipStreamSynchronize) X(hipStreamQuery) X(hipDeviceSynchronize) X(hipHostMalloc)          \
    X(hipHostFree) X(hipMallocHost) X(hipFreeHost) X(hipHostRegister) X(hipHostUnregister)      \
    X(hipGetErrorString) X(hipGetErrorName) X(hipGetLastError) X(hipPeekAtLastError)            \
    X(hipGetDevice) X(hipSetDevice) X(hipGetDeviceCount) X(hipDeviceGetName)                    \
    X(hipRuntimeGetVersion) X(hipDriverGetVersion) X(hipEventCreate)                         \
    X(hipEventCreateWithFlags) X(hipEventRecord) X(hipEventSynchronize) X(hipEventQuery)        \
    X(hipEventDestroy) X(hipEventElapsedTime) X(hipStreamWaitEvent) X(hipGetDeviceProperties)   \
    X(hipDeviceGetAttribute) X(hipMemGetInfo) X(hipMemcpy2D) X(hipMemcpy2DAsync) X(hipMemset2D) \
    X(hipMemset2DAsync)

#define FN_ENUM(n) F_##n,
enum { FAKE_HIP_FUNCS(FN_ENUM) F_COUNT };
#define FN_NAME(n) #n,
static const char* const g_fn_names[F_COUNT] = {FAKE_HIP_FUNCS(FN_NAME)};

#define MAX_FAULTS 64
struct fault {
    int fn;
    long nth; /* 0 = every call */
};

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_done = PTHREAD_COND_INITIALIZER; /* broadcast on every completion */

static long g_calls[F_COUNT];
static struct fault g_faults[MAX_FAULTS];
static int g_nfaults;
static long g_delay_us = 2000;
static double g_gbps; /* 0: copies are not rate limited */
static cpu_set_t g_copy_cpus; /* where stream workers run; empty: anywhere */
static size_t g_copy_split_min = 1u << 20; /* FAKE_HIP_COPY_SPLIT_KIB */
static size_t g_bytes_copied[5];

static __thread hipError_t t_last_error = hipSuccess;

/* device reservation and its shadow */
static char* g_dev_base;
static char* g_shadow;
static size_t g_dev_size;

static void parse_faults(const char* spec)
{
    char* copy = strdup(spec);
    char* save = NULL;
    for (char* tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        if (!*tok)
            continue;
        char* colon = strchr(tok, ':');
        if (!colon) {
            fprintf(stderr, "fake HIP: FAKE_HIP_FAIL entry '%s' lacks ':N' or ':*'\n", tok);
            abort();
        }
        *colon = 0;
        int fn = -1;
        for (int i = 0; i < F_COUNT; i++)
            if (strcmp(g_fn_names[i], tok) == 0)
                fn = i;
        if (fn < 0) {
            fprintf(stderr, "fake HIP: FAKE_HIP_FAIL names unknown function '%s'\n", tok);
            abort();
        }
        long nth = 0;
        if (strcmp(colon + 1, "*") != 0) {
            char* end = NULL;
            nth = strtol(colon + 1, &end, 10);
            if (!end || *end || nth < 1) {
                fprintf(stderr, "fake HIP: FAKE_HIP_FAIL count '%s' is not N>=1 or '*'\n",
                        colon + 1);
                abort();
            }
        }
        if (g_nfaults < MAX_FAULTS)
            g_faults[g_nfaults++] = (struct fault){fn, nth};
    }
    free(copy);
}

static void init_once(void)
{
    const char* d = getenv("FAKE_HIP_DELAY_US");
    if (d && *d)
        g_delay_us = strtol(d, NULL, 10);
    if (g_delay_us < 0)
        g_delay_us = 0;
    const char* g = getenv("FAKE_HIP_GBPS");
    if (g && *g) {
        char* end = NULL;
        g_gbps = strtod(g, &end);
        if (!end || *end || !(g_gbps >= 0)) {
            fprintf(stderr, "fake HIP: FAKE_HIP_GBPS '%s' is not a bandwidth in GB/s\n", g);
            abort();
        }
    }
    const char* split = getenv("FAKE_HIP_COPY_SPLIT_KIB");
    if (split && *split) {
        char* end = NULL;
        long kib = strtol(split, &end, 10);
        if (!end || *end || kib < 1) {
            fprintf(stderr, "fake HIP: FAKE_HIP_COPY_SPLIT_KIB '%s' is not a size in KiB\n", split);
            abort();
        }
        g_copy_split_min = (size_t)kib << 10;
    }
    CPU_ZERO(&g_copy_cpus);
    const char* cpus = getenv("FAKE_HIP_COPY_CPUS");
    if (cpus && *cpus) {
        char* copy = strdup(cpus);
        char* save = NULL;
        for (char* tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            char* end = NULL;
            long lo = strtol(tok, &end, 10), hi = lo;
            if (end && *end == '-')
                hi = strtol(end + 1, &end, 10);
            if (!end || *end || lo < 0 || hi < lo || hi >= CPU_SETSIZE) {
                fprintf(stderr, "fake HIP: FAKE_HIP_COPY_CPUS '%s' is not a CPU list\n", cpus);
                abort();
            }
            for (long c = lo; c <= hi; c++)
                CPU_SET((int)c, &g_copy_cpus);
        }
        free(copy);
    }
    const char* f = getenv("FAKE_HIP_FAIL");
    if (f && *f)
        parse_faults(f);

    static const size_t sizes[] = {16ull << 30, 4ull << 30, 1ull << 30};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        void* base = mmap(NULL, sizes[i], PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                          -1, 0);
        if (base == MAP_FAILED)
            continue;
        void* shadow = mmap(NULL, sizes[i], PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (shadow == MAP_FAILED) {
            munmap(base, sizes[i]);
            continue;
        }
        g_dev_base = base;
        g_shadow = shadow;
        g_dev_size = sizes[i];
        break;
    }
    if (!g_dev_base) {
        fprintf(stderr, "fake HIP: cannot reserve the device address range\n");
        abort();
    }
}

static hipError_t set_error(hipError_t e)
{
    if (e != hipSuccess)
        t_last_error = e;
    return e;
}

/* Counts the call; returns nonzero when this call must fail by injection. */
static int enter(int fn)
{
    pthread_once(&g_once, init_once);
    long n = __atomic_add_fetch(&g_calls[fn], 1, __ATOMIC_SEQ_CST);
    for (int i = 0; i < g_nfaults; i++) {
        if (g_faults[i].fn == fn && (g_faults[i].nth == 0 || g_faults[i].nth == n)) {
            fprintf(stderr, "fake HIP: injected failure of %s (call #%ld)\n", g_fn_names[fn], n);
            return 1;
        }
    }
    return 0;
}

#define ENTER(name, injected_error)                                                             \
    do {                                                                                        \
        if (enter(F_##name))                                                                    \
            return set_error(injected_error);                                                   \
    } while (0)

/* ------------------------------------------------------------------ */
/* device allocator                                                     */
/* ------------------------------------------------------------------ */

struct alloc {
    size_t off, size; /* size as requested */
};
static struct alloc* g_allocs; /* sorted by off */
static size_t g_nallocs, g_cap_allocs;

#define DEV_ALIGN 256u

static size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

static int in_region(const void* p)
{
    const char* c = p;
    return c >= g_dev_base && c < g_dev_base + g_dev_size;
}

static int overlaps_region(const void* p, size_t n)
{
    uintptr_t a = (uintptr_t)p, b = a + n;
    uintptr_t lo = (uintptr_t)g_dev_base, hi = lo + g_dev_size;
    return a < hi && b > lo;
}

/* Index of the allocation containing offset `off`, or -1. Caller holds g_lock. */
static long find_alloc(size_t off)
{
    size_t lo = 0, hi = g_nallocs;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (g_allocs[mid].off <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return -1;
    struct alloc* a = &g_allocs[lo - 1];
    if (off < a->off + (a->size ? a->size : 1))
        return (long)(lo - 1);
    return -1;
}

/* Is [p, p+n) inside one live allocation? Caller holds g_lock. */
static int dev_range_ok_locked(const void* p, size_t n)
{
    if (!in_region(p))
        return 0;
    size_t off = (size_t)((const char*)p - g_dev_base);
    long i = find_alloc(off);
    if (i < 0)
        return 0;
    return off + n <= g_allocs[i].off + g_allocs[i].size;
}

static int dev_range_ok(const void* p, size_t n)
{
    pthread_mutex_lock(&g_lock);
    int ok = dev_range_ok_locked(p, n);
    pthread_mutex_unlock(&g_lock);
    return ok;
}

static void* resolve(void* p)
{
    if (in_region(p))
        return g_shadow + ((char*)p - g_dev_base);
    return p;
}

/* ------------------------------------------------------------------ */
/* streams                                                              */
/* ------------------------------------------------------------------ */

enum { OP_COPY, OP_SET, OP_EVENT, OP_WAIT };

struct ihipEvent_t {
    unsigned flags;
    long recorded;  /* records made so far */
    long completed; /* the record that completed last */
    long refs;      /* queued markers and waits that still point here */
    int destroyed;  /* hipEventDestroy called; freed when refs reaches 0 */
    struct timespec when;
    struct ihipEvent_t* next_event;
};

struct op {
    int type;
    void* dst;
    const void* src;
    size_t n; /* bytes; of each row when rows > 0 */
    /* pitched (2-D) copies and memsets: rows of n bytes, dpitch / spitch apart */
    size_t rows, dpitch, spitch;
    int value;
    int kind;
    struct ihipEvent_t* event; /* OP_EVENT, OP_WAIT */
    long seq;                  /* the record an OP_EVENT completes or an OP_WAIT waits for */
    struct timespec due;
    struct op* next;
};

struct ihipStream_t {
    unsigned flags;
    pthread_t thread;
    struct op *head, *tail;
    long pending;
    int stop;
    pthread_cond_t cv;
    struct ihipStream_t* next_stream;
};

static struct ihipStream_t* g_streams;
static struct ihipEvent_t* g_events;

static int stream_known_locked(hipStream_t s)
{
    for (struct ihipStream_t* it = g_streams; it; it = it->next_stream)
        if (it == s)
            return 1;
    return 0;
}

static int event_known_locked(hipEvent_t e)
{
    for (struct ihipEvent_t* it = g_events; it; it = it->next_event)
        if (it == e && !it->destroyed)
            return 1;
    return 0;
}

/* Drops one reference of a queued marker or wait; frees a destroyed event. Caller holds g_lock. */
static void event_unref_locked(struct ihipEvent_t* e)
{
    if (--e->refs > 0 || !e->destroyed)
        return;
    for (struct ihipEvent_t** it = &g_events; *it; it = &(*it)->next_event) {
        if (*it == e) {
            *it = e->next_event;
            break;
        }
    }
    free(e);
}

static void ts_add_ns(struct timespec* t, long long ns)
{
    long long v = (long long)t->tv_nsec + ns;
    t->tv_sec += (time_t)(v / 1000000000LL);
    t->tv_nsec = (long)(v % 1000000000LL);
}

static int ts_before(const struct timespec* a, const struct timespec* b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* Sleeps until t. The thread's timer slack is first cut to 1 ns: Linux lets a
 * sleep of a normal thread run up to 50 us late by default, which would add that
 * much to every modelled copy (a 1 KiB copy took 85 us at 12 GB/s instead of
 * 0.1 us). */
static void sleep_until(const struct timespec* t)
{
    static __thread int slack_cut;
    if (!slack_cut) {
        prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
        slack_cut = 1;
    }
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, t, NULL) == EINTR) {
    }
}

/* When each direction's link (host to device, device to host) is free again. */
static struct timespec g_link_free[2];
static pthread_mutex_t g_link_lock = PTHREAD_MUTEX_INITIALIZER;

/* Reserves the link for a host<->device copy of n bytes; returns when it ends. */
static struct timespec link_reserve(int kind, size_t n)
{
    struct timespec now, end;
    clock_gettime(CLOCK_MONOTONIC, &now);
    pthread_mutex_lock(&g_link_lock);
    struct timespec* link = &g_link_free[kind == hipMemcpyHostToDevice ? 0 : 1];
    end = ts_before(link, &now) ? now : *link;
    ts_add_ns(&end, (long long)((double)n / g_gbps));
    *link = end;
    pthread_mutex_unlock(&g_link_lock);
    return end;
}

/* A DMA engine outruns one core's memcpy: large copies are split over helper threads
 * (on FAKE_HIP_COPY_CPUS when set), so the fake can keep up with the modelled link. */
#define COPY_PARTS 4

/* `rows` rows of `n` bytes, `dpitch` / `spitch` apart (one row: a plain copy). */
struct copy_part {
    char* dst;
    const char* src;
    size_t n, rows, dpitch, spitch;
};

static void* copy_part_run(void* arg)
{
    struct copy_part* p = arg;
    if (p->rows <= 1)
        memcpy(p->dst, p->src, p->n);
    else
        for (size_t r = 0; r < p->rows; r++)
            memmove(p->dst + r * p->dpitch, p->src + r * p->spitch, p->n);
    return NULL;
}

/* Copies `rows` rows of `n` bytes (rows == 0: one plain run), from 1 MiB in total over
 * COPY_PARTS threads: whole runs of bytes, or whole rows. */
static void copy_rows(char* d, const char* s, size_t n, size_t rows, size_t dpitch,
                      size_t spitch)
{
    size_t total = rows ? n * rows : n;
    size_t dext = rows ? (rows - 1) * dpitch + n : n, sext = rows ? (rows - 1) * spitch + n : n;
    /* overlapping ranges (device-to-device within one allocation) stay one pass */
    if (total < g_copy_split_min || (s < d + dext && d < s + sext) || (rows && rows < COPY_PARTS)) {
        if (rows <= 1)
            memmove(d, s, n);
        else
            for (size_t r = 0; r < rows; r++)
                memmove(d + r * dpitch, s + r * spitch, n);
        return;
    }
    struct copy_part parts[COPY_PARTS];
    pthread_t threads[COPY_PARTS];
    int started[COPY_PARTS] = {0};
    /* bytes of a plain run, or rows, a part */
    size_t count = rows ? rows : n;
    size_t step = rows ? (rows + COPY_PARTS - 1) / COPY_PARTS
                       : (n / COPY_PARTS + 63) & ~(size_t)63;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    if (CPU_COUNT(&g_copy_cpus) > 0)
        pthread_attr_setaffinity_np(&attr, sizeof g_copy_cpus, &g_copy_cpus);
    for (int i = 0; i < COPY_PARTS; i++) {
        size_t at = step * (size_t)i < count ? step * (size_t)i : count;
        size_t len = at + step < count ? step : count - at;
        parts[i] = rows ? (struct copy_part){d + at * dpitch, s + at * spitch, n, len, dpitch, spitch}
                        : (struct copy_part){d + at, s + at, len, 0, 0, 0};
        if (i > 0 && len > 0)
            started[i] = pthread_create(&threads[i], &attr, copy_part_run, &parts[i]) == 0;
    }
    pthread_attr_destroy(&attr);
    copy_part_run(&parts[0]);
    for (int i = 1; i < COPY_PARTS; i++) {
        if (started[i])
            pthread_join(threads[i], NULL);
        else
            copy_part_run(&parts[i]); /* no thread to be had: copy it here */
    }
}

static void exec_op(const struct op* op)
{
    if (op->type == OP_COPY) {
        size_t total = op->rows ? op->n * op->rows : op->n;
        int timed = g_gbps > 0 &&
                    (op->kind == hipMemcpyHostToDevice || op->kind == hipMemcpyDeviceToHost);
        struct timespec end;
        if (timed)
            end = link_reserve(op->kind, total);
        copy_rows(resolve(op->dst), resolve((void*)op->src), op->n, op->rows, op->dpitch,
                  op->spitch);
        if (timed)
            sleep_until(&end);
        __atomic_add_fetch(&g_bytes_copied[op->kind], total, __ATOMIC_SEQ_CST);
    } else if (op->type == OP_SET) {
        char* dst = resolve(op->dst);
        if (!op->rows)
            memset(dst, op->value, op->n);
        else
            for (size_t r = 0; r < op->rows; r++)
                memset(dst + r * op->dpitch, op->value, op->n);
    }
}

/* Completes an event's record `seq`. Caller holds g_lock. */
static void event_complete_locked(struct ihipEvent_t* e, long seq)
{
    if (seq > e->completed) {
        e->completed = seq;
        clock_gettime(CLOCK_MONOTONIC, &e->when);
    }
}

static void* stream_worker(void* arg)
{
    struct ihipStream_t* s = arg;
    if (CPU_COUNT(&g_copy_cpus) > 0)
        pthread_setaffinity_np(pthread_self(), sizeof g_copy_cpus, &g_copy_cpus);
    pthread_mutex_lock(&g_lock);
    for (;;) {
        while (!s->head && !s->stop)
            pthread_cond_wait(&s->cv, &g_lock);
        if (!s->head)
            break;
        struct op* op = s->head;
        if (op->type == OP_WAIT) {
            while (op->event->completed < op->seq)
                pthread_cond_wait(&g_done, &g_lock);
        } else if (op->type == OP_EVENT) {
            event_complete_locked(op->event, op->seq);
        } else {
            pthread_mutex_unlock(&g_lock);
            sleep_until(&op->due);
            exec_op(op);
            pthread_mutex_lock(&g_lock);
        }
        if (op->event)
            event_unref_locked(op->event);
        s->head = op->next;
        if (!s->head)
            s->tail = NULL;
        s->pending--;
        free(op);
        pthread_cond_broadcast(&g_done);
    }
    pthread_mutex_unlock(&g_lock);
    return NULL;
}

/* Waits until every stream (or every blocking stream) is idle. Caller holds g_lock. */
static void wait_streams_locked(int blocking_only)
{
    for (;;) {
        int busy = 0;
        for (struct ihipStream_t* it = g_streams; it; it = it->next_stream) {
            if (blocking_only && (it->flags & hipStreamNonBlocking))
                continue;
            if (it->pending > 0)
                busy = 1;
        }
        if (!busy)
            return;
        pthread_cond_wait(&g_done, &g_lock);
    }
}

static void wait_streams(int blocking_only)
{
    pthread_mutex_lock(&g_lock);
    wait_streams_locked(blocking_only);
    pthread_mutex_unlock(&g_lock);
}

/* Queues op on a created stream. Caller holds g_lock and has checked the stream. */
static hipError_t enqueue_locked(hipStream_t stream, struct op* q)
{
    q->next = NULL;
    clock_gettime(CLOCK_MONOTONIC, &q->due);
    if (q->type == OP_COPY || q->type == OP_SET)
        ts_add_ns(&q->due, (long long)g_delay_us * 1000);
    if (stream->tail)
        stream->tail->next = q;
    else
        stream->head = q;
    stream->tail = q;
    stream->pending++;
    pthread_cond_signal(&stream->cv);
    return hipSuccess;
}

/* Runs a copy or memset on `stream`: synchronously for the null stream, queued otherwise. */
static hipError_t submit(hipStream_t stream, struct op op)
{
    if (!stream) {
        wait_streams(1);
        exec_op(&op);
        return hipSuccess;
    }
    struct op* q = malloc(sizeof *q);
    if (!q)
        return hipErrorOutOfMemory;
    *q = op;
    pthread_mutex_lock(&g_lock);
    if (!stream_known_locked(stream)) {
        pthread_mutex_unlock(&g_lock);
        free(q);
        return hipErrorInvalidHandle;
    }
    enqueue_locked(stream, q);
    pthread_mutex_unlock(&g_lock);
    return hipSuccess;
}

static hipError_t check_stream(hipStream_t stream)
{
    if (!stream)
        return hipSuccess;
    pthread_mutex_lock(&g_lock);
    int ok = stream_known_locked(stream);
    pthread_mutex_unlock(&g_lock);
    return ok ? hipSuccess : hipErrorInvalidHandle;
}

/* Validates a copy and resolves hipMemcpyDefault. */
static hipError_t check_copy(void* dst, const void* src, size_t n, hipMemcpyKind* kind)
{
    if (!dst || !src)
        return hipErrorInvalidValue;
    int dd = in_region(dst), sd = in_region(src);
    switch (*kind) {
    case hipMemcpyDefault:
        *kind = sd ? (dd ? hipMemcpyDeviceToDevice : hipMemcpyDeviceToHost)
                   : (dd ? hipMemcpyHostToDevice : hipMemcpyHostToHost);
        break;
    case hipMemcpyHostToHost:
    case hipMemcpyHostToDevice:
    case hipMemcpyDeviceToHost:
    case hipMemcpyDeviceToDevice: break;
    default: return hipErrorInvalidMemcpyDirection;
    }
    int want_dst_dev = (*kind == hipMemcpyHostToDevice || *kind == hipMemcpyDeviceToDevice);
    int want_src_dev = (*kind == hipMemcpyDeviceToHost || *kind == hipMemcpyDeviceToDevice);
    if (want_dst_dev ? !dev_range_ok(dst, n) : overlaps_region(dst, n))
        return hipErrorInvalidValue;
    if (want_src_dev ? !dev_range_ok(src, n) : overlaps_region(src, n))
        return hipErrorInvalidValue;
    return hipSuccess;
}

/* ------------------------------------------------------------------ */
/* exported API                                                         */
/* ------------------------------------------------------------------ */

hipError_t hipInit(unsigned int flags)
{
    (void)flags;
    ENTER(hipInit, hipErrorUnknown);
    return hipSuccess;
}

hipError_t hipMalloc(void** ptr, size_t size)
{
    ENTER(hipMalloc, hipErrorOutOfMemory);
    if (!ptr)
        return set_error(hipErrorInvalidValue);
    if (size == 0) {
        *ptr = NULL;
        return hipSuccess;
    }
    size_t need = align_up(size, DEV_ALIGN);
    pthread_mutex_lock(&g_lock);
    size_t cursor = DEV_ALIGN; /* never hand out the base itself */
    size_t at = g_nallocs;
    for (size_t i = 0; i < g_nallocs; i++) {
        if (g_allocs[i].off >= cursor + need) {
            at = i;
            break;
        }
        cursor = align_up(g_allocs[i].off + g_allocs[i].size, DEV_ALIGN);
    }
    if (cursor + need > g_dev_size) {
        pthread_mutex_unlock(&g_lock);
        *ptr = NULL;
        return set_error(hipErrorOutOfMemory);
    }
    if (g_nallocs == g_cap_allocs) {
        size_t cap = g_cap_allocs ? g_cap_allocs * 2 : 64;
        struct alloc* na = realloc(g_allocs, cap * sizeof *na);
        if (!na) {
            pthread_mutex_unlock(&g_lock);
            return set_error(hipErrorOutOfMemory);
        }
        g_allocs = na;
        g_cap_allocs = cap;
    }
    memmove(&g_allocs[at + 1], &g_allocs[at], (g_nallocs - at) * sizeof *g_allocs);
    g_allocs[at] = (struct alloc){cursor, size};
    g_nallocs++;
    pthread_mutex_unlock(&g_lock);
    *ptr = g_dev_base + cursor;
    return hipSuccess;
}

hipError_t hipFree(void* ptr)
{
    ENTER(hipFree, hipErrorUnknown);
    if (!ptr)
        return hipSuccess;
    pthread_mutex_lock(&g_lock);
    wait_streams_locked(0); /* hipFree synchronizes the device */
    long i = in_region(ptr) ? find_alloc((size_t)((char*)ptr - g_dev_base)) : -1;
    if (i < 0 || g_dev_base + g_allocs[i].off != (char*)ptr) {
        pthread_mutex_unlock(&g_lock);
        return set_error(hipErrorInvalidValue);
    }
    struct alloc a = g_allocs[i];
    memmove(&g_allocs[i], &g_allocs[i + 1], (g_nallocs - (size_t)i - 1) * sizeof *g_allocs);
    g_nallocs--;
    pthread_mutex_unlock(&g_lock);
    /* Give large freed ranges' pages back (their contents become zero). */
    if (a.size >= (1u << 20)) {
        size_t page = 4096;
        size_t lo = align_up(a.off, page), hi = (a.off + a.size) / page * page;
        if (hi > lo)
            madvise(g_shadow + lo, hi - lo, MADV_DONTNEED);
    }
    return hipSuccess;
}

hipError_t hipMemcpyAsync(void* dst, const void* src, size_t sizeBytes, hipMemcpyKind kind,
                          hipStream_t stream)
{
    ENTER(hipMemcpyAsync, hipErrorUnknown);
    hipError_t e = check_stream(stream);
    if (e != hipSuccess)
        return set_error(e);
    if (sizeBytes == 0)
        return hipSuccess;
    e = check_copy(dst, src, sizeBytes, &kind);
    if (e != hipSuccess)
        return set_error(e);
    struct op op = {.type = OP_COPY, .dst = dst, .src = src, .n = sizeBytes, .kind = kind};
    return set_error(submit(stream, op));
}

hipError_t hipMemcpy(void* dst, const void* src, size_t sizeBytes, hipMemcpyKind kind)
{
    ENTER(hipMemcpy, hipErrorUnknown);
    if (sizeBytes == 0)
        return hipSuccess;
    hipError_t e = check_copy(dst, src, sizeBytes, &kind);
    if (e != hipSuccess)
        return set_error(e);
    struct op op = {.type = OP_COPY, .dst = dst, .src = src, .n = sizeBytes, .kind = kind};
    return set_error(submit(NULL, op));
}

static hipError_t memset_common(void* dst, int value, size_t n, hipStream_t stream)
{
    hipError_t e = check_stream(stream);
    if (e != hipSuccess)
        return set_error(e);
    if (n == 0)
        return hipSuccess;
    if (!dst || !dev_range_ok(dst, n))
        return set_error(hipErrorInvalidValue);
    struct op op = {.type = OP_SET, .dst = dst, .n = n, .value = value};
    return set_error(submit(stream, op));
}

hipError_t hipMemset(void* dst, int value, size_t sizeBytes)
{
    ENTER(hipMemset, hipErrorUnknown);
    return memset_common(dst, value, sizeBytes, NULL);
}

hipError_t hipMemsetAsync(void* dst, int value, size_t sizeBytes, hipStream_t stream)
{
    ENTER(hipMemsetAsync, hipErrorUnknown);
    return memset_common(dst, value, sizeBytes, stream);
}

/* Bytes from the first to one past the last byte of `height` rows of `width`, `pitch`
 * apart; 0 where the rows would overlap (width > pitch) or the extent overflows. */
static size_t pitched_extent(size_t pitch, size_t width, size_t height)
{
    if (width > pitch && height > 1)
        return 0;
    if (height > 1 && (height - 1) > (SIZE_MAX - width) / pitch)
        return 0;
    return (height - 1) * pitch + width;
}

/* A pitched copy: each side's extent is validated as one range, as for a plain copy. */
static hipError_t copy2d_common(void* dst, size_t dpitch, const void* src, size_t spitch,
                                size_t width, size_t height, hipMemcpyKind kind,
                                hipStream_t stream, int async)
{
    hipError_t e = async ? check_stream(stream) : hipSuccess;
    if (e != hipSuccess)
        return set_error(e);
    if (width == 0 || height == 0)
        return hipSuccess;
    size_t dext = pitched_extent(dpitch, width, height);
    size_t sext = pitched_extent(spitch, width, height);
    if (!dext || !sext)
        return set_error(hipErrorInvalidValue);
    /* The direction from the first row, then each side's whole extent. */
    hipMemcpyKind k = kind;
    e = check_copy(dst, src, width, &k);
    if (e == hipSuccess) {
        int want_dst_dev = (k == hipMemcpyHostToDevice || k == hipMemcpyDeviceToDevice);
        int want_src_dev = (k == hipMemcpyDeviceToHost || k == hipMemcpyDeviceToDevice);
        if (want_dst_dev ? !dev_range_ok(dst, dext) : overlaps_region(dst, dext))
            e = hipErrorInvalidValue;
        else if (want_src_dev ? !dev_range_ok(src, sext) : overlaps_region(src, sext))
            e = hipErrorInvalidValue;
    }
    if (e != hipSuccess)
        return set_error(e);
    struct op op = {.type = OP_COPY,
                    .dst = dst,
                    .src = src,
                    .n = width,
                    .rows = height,
                    .dpitch = dpitch,
                    .spitch = spitch,
                    .kind = k};
    return set_error(submit(async ? stream : NULL, op));
}

hipError_t hipMemcpy2D(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
                       size_t height, hipMemcpyKind kind)
{
    ENTER(hipMemcpy2D, hipErrorUnknown);
    return copy2d_common(dst, dpitch, src, spitch, width, height, kind, NULL, 0);
}

hipError_t hipMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch,
                            size_t width, size_t height, hipMemcpyKind kind, hipStream_t stream)
{
    ENTER(hipMemcpy2DAsync, hipErrorUnknown);
    return copy2d_common(dst, dpitch, src, spitch, width, height, kind, stream, 1);
}

static hipError_t memset2d_common(void* dst, size_t pitch, int value, size_t width,
                                  size_t height, hipStream_t stream)
{
    hipError_t e = check_stream(stream);
    if (e != hipSuccess)
        return set_error(e);
    if (width == 0 || height == 0)
        return hipSuccess;
    size_t ext = pitched_extent(pitch, width, height);
    if (!dst || !ext || !dev_range_ok(dst, ext))
        return set_error(hipErrorInvalidValue);
    struct op op = {
        .type = OP_SET, .dst = dst, .n = width, .rows = height, .dpitch = pitch, .value = value};
    return set_error(submit(stream, op));
}

hipError_t hipMemset2D(void* dst, size_t pitch, int value, size_t width, size_t height)
{
    ENTER(hipMemset2D, hipErrorUnknown);
    return memset2d_common(dst, pitch, value, width, height, NULL);
}

hipError_t hipMemset2DAsync(void* dst, size_t pitch, int value, size_t width, size_t height,
                            hipStream_t stream)
{
    ENTER(hipMemset2DAsync, hipErrorUnknown);
    return memset2d_common(dst, pitch, value, width, height, stream);
}

static hipError_t stream_create(hipStream_t* stream, unsigned flags)
{
    if (!stream)
        return set_error(hipErrorInvalidValue);
    if (flags & ~hipStreamNonBlocking)
        return set_error(hipErrorInvalidValue);
    struct ihipStream_t* s = calloc(1, sizeof *s);
    if (!s)
        return set_error(hipErrorOutOfMemory);
    s->flags = flags;
    pthread_cond_init(&s->cv, NULL);
    if (pthread_create(&s->thread, NULL, stream_worker, s) != 0) {
        pthread_cond_destroy(&s->cv);
        free(s);
        return set_error(hipErrorOutOfMemory);
    }
    pthread_mutex_lock(&g_lock);
    s->next_stream = g_streams;
    g_streams = s;
    pthread_mutex_unlock(&g_lock);
    *stream = s;
    return hipSuccess;
}

hipError_t hipStreamCreate(hipStream_t* stream)
{
    ENTER(hipStreamCreate, hipErrorUnknown);
    return stream_create(stream, hipStreamDefault);
}

hipError_t hipStreamCreateWithFlags(hipStream_t* stream, unsigned int flags)
{
    ENTER(hipStreamCreateWithFlags, hipErrorUnknown);
    return stream_create(stream, flags);
}

hipError_t hipStreamDestroy(hipStream_t stream)
{
    ENTER(hipStreamDestroy, hipErrorUnknown);
    if (!stream)
        return set_error(hipErrorInvalidHandle);
    pthread_mutex_lock(&g_lock);
    if (!stream_known_locked(stream)) {
        pthread_mutex_unlock(&g_lock);
        return set_error(hipErrorInvalidHandle);
    }
    while (stream->pending > 0)
        pthread_cond_wait(&g_done, &g_lock);
    for (struct ihipStream_t** it = &g_streams; *it; it = &(*it)->next_stream) {
        if (*it == stream) {
            *it = stream->next_stream;
            break;
        }
    }
    stream->stop = 1;
    pthread_cond_signal(&stream->cv);
    pthread_mutex_unlock(&g_lock);
    pthread_join(stream->thread, NULL);
    pthread_cond_destroy(&stream->cv);
    free(stream);
    return hipSuccess;
}

hipError_t hipStreamSynchronize(hipStream_t stream)
{
    ENTER(hipStreamSynchronize, hipErrorUnknown);
    pthread_mutex_lock(&g_lock);
    if (!stream) {
        wait_streams_locked(1);
        pthread_mutex_unlock(&g_lock);
        return hipSuccess;
    }
    if (!stream_known_locked(stream)) {
        pthread_mutex_unlock(&g_lock);
        return set_error(hipErrorInvalidHandle);
    }
    while (stream->pending > 0)
        pthread_cond_wait(&g_done, &g_lock);
    pthread_mutex_unlock(&g_lock);
    return hipSuccess;
}

hipError_t hipStreamQuery(hipStream_t stream)
{
    ENTER(hipStreamQuery, hipErrorUnknown);
    pthread_mutex_lock(&g_lock);
    hipError_t e = hipSuccess;
    if (!stream) {
        for (struct ihipStream_t* it = g_streams; it; it = it->next_stream)
            if (!(it->flags & hipStreamNonBlocking) && it->pending > 0)
                e = hipErrorNotReady;
    } else if (!stream_known_locked(stream)) {
        e = hipErrorInvalidHandle;
    } else if (stream->pending > 0) {
        e = hipErrorNotReady;
    }
    pthread_mutex_unlock(&g_lock);
    return e == hipErrorNotReady ? e : set_error(e);
}

hipError_t hipDeviceSynchronize(void)
{
    ENTER(hipDeviceSynchronize, hipErrorUnknown);
    wait_streams(0);
    return hipSuccess;
}

/* events */

#define EVENT_FLAGS                                                                             \
    (hipEventBlockingSync | hipEventDisableTiming | hipEventInterprocess |                      \
     hipEventReleaseToDevice | hipEventReleaseToSystem)

static hipError_t event_create(hipEvent_t* event, unsigned flags)
{
    if (!event || (flags & ~EVENT_FLAGS))
        return set_error(hipErrorInvalidValue);
    struct ihipEvent_t* e = calloc(1, sizeof *e);
    if (!e)
        return set_error(hipErrorOutOfMemory);
    e->flags = flags;
    pthread_mutex_lock(&g_lock);
    e->next_event = g_events;
    g_events = e;
    pthread_mutex_unlock(&g_lock);
    *event = e;
    return hipSuccess;
}

hipError_t hipEventCreate(hipEvent_t* event)
{
    ENTER(hipEventCreate, hipErrorUnknown);
    return event_create(event, hipEventDefault);
}

hipError_t hipEventCreateWithFlags(hipEvent_t* event, unsigned flags)
{
    ENTER(hipEventCreateWithFlags, hipErrorUnknown);
    return event_create(event, flags);
}

hipError_t hipEventRecord(hipEvent_t event, hipStream_t stream)
{
    ENTER(hipEventRecord, hipErrorUnknown);
    struct op* q = stream ? calloc(1, sizeof *q) : NULL;
    if (stream && !q)
        return set_error(hipErrorOutOfMemory);
    pthread_mutex_lock(&g_lock);
    if (!event_known_locked(event) || (stream && !stream_known_locked(stream))) {
        pthread_mutex_unlock(&g_lock);
        free(q);
        return set_error(hipErrorInvalidHandle);
    }
    long seq = ++event->recorded;
    if (!stream) {
        wait_streams_locked(1);
        event_complete_locked(event, seq);
        pthread_cond_broadcast(&g_done);
    } else {
        q->type = OP_EVENT;
        q->event = event;
        q->seq = seq;
        event->refs++;
        enqueue_locked(stream, q);
    }
    pthread_mutex_unlock(&g_lock);
    return hipSuccess;
}

hipError_t hipEventSynchronize(hipEvent_t event)
{
    ENTER(hipEventSynchronize, hipErrorUnknown);
    pthread_mutex_lock(&g_lock);
    if (!event_known_locked(event)) {
        pthread_mutex_unlock(&g_lock);
        return set_error(hipErrorInvalidHandle);
    }
    long seq = event->recorded;
    while (event->completed < seq)
        pthread_cond_wait(&g_done, &g_lock);
    pthread_mutex_unlock(&g_lock);
    return hipSuccess;
}

hipError_t hipEventQuery(hipEvent_t event)
{
    ENTER(hipEventQuery, hipErrorUnknown);
    pthread_mutex_lock(&g_lock);
    hipError_t e = hipSuccess;
    if (!event_known_locked(event))
        e = hipErrorInvalidHandle;
    else if (event->completed < event->recorded)
        e = hipErrorNotReady;
    pthread_mutex_unlock(&g_lock);
    return e == hipErrorNotReady ? e : set_error(e);
}

hipError_t hipEventElapsedTime(float* ms, hipEvent_t start, hipEvent_t stop)
{
    ENTER(hipEventElapsedTime, hipErrorUnknown);
    if (!ms)
        return set_error(hipErrorInvalidValue);
    pthread_mutex_lock(&g_lock);
    hipError_t e = hipSuccess;
    if (!event_known_locked(start) || !event_known_locked(stop) ||
        ((start->flags | stop->flags) & hipEventDisableTiming) || !start->recorded ||
        !stop->recorded)
        e = hipErrorInvalidHandle;
    else if (start->completed < start->recorded || stop->completed < stop->recorded)
        e = hipErrorNotReady;
    else
        *ms = (float)((double)(stop->when.tv_sec - start->when.tv_sec) * 1e3 +
                      (double)(stop->when.tv_nsec - start->when.tv_nsec) * 1e-6);
    pthread_mutex_unlock(&g_lock);
    return e == hipErrorNotReady ? e : set_error(e);
}

hipError_t hipEventDestroy(hipEvent_t event)
{
    ENTER(hipEventDestroy, hipErrorUnknown);
    pthread_mutex_lock(&g_lock);
    if (!event_known_locked(event)) {
        pthread_mutex_unlock(&g_lock);
        return set_error(hipErrorInvalidHandle);
    }
    /* As in HIP, queued markers and waits still complete; the event is freed after them. */
    event->destroyed = 1;
    event->refs++;
    event_unref_locked(event);
    pthread_mutex_unlock(&g_lock);
    return hipSuccess;
}

hipError_t hipStreamWaitEvent(hipStream_t stream, hipEvent_t event, unsigned int flags)
{
    ENTER(hipStreamWaitEvent, hipErrorUnknown);
    if (flags != 0)
        return set_error(hipErrorInvalidValue);
    struct op* q = calloc(1, sizeof *q);
    if (!q)
        return set_error(hipErrorOutOfMemory);
    pthread_mutex_lock(&g_lock);
    if (!event_known_locked(event) || (stream && !stream_known_locked(stream))) {
        pthread_mutex_unlock(&g_lock);
        free(q);
        return set_error(hipErrorInvalidHandle);
    }
    long seq = event->recorded;
    if (!stream) {
        /* The null stream's later work runs on the caller: wait here. */
        while (event->completed < seq)
            pthread_cond_wait(&g_done, &g_lock);
        pthread_mutex_unlock(&g_lock);
        free(q);
        return hipSuccess;
    }
    q->type = OP_WAIT;
    q->event = event;
    q->seq = seq;
    event->refs++;
    enqueue_locked(stream, q);
    pthread_mutex_unlock(&g_lock);
    return hipSuccess;
}

/* pinned host memory: ordinary host memory, tracked so that frees can be validated */
struct host_block {
    void* p;
    struct host_block* next;
};
static struct host_block* g_host_blocks;

static hipError_t host_alloc(void** ptr, size_t size)
{
    if (!ptr)
        return set_error(hipErrorInvalidValue);
    if (size == 0) {
        *ptr = NULL;
        return hipSuccess;
    }
    void* p = NULL;
    struct host_block* b = malloc(sizeof *b);
    if (!b || posix_memalign(&p, 4096, size) != 0) {
        free(b);
        *ptr = NULL;
        return set_error(hipErrorOutOfMemory);
    }
    pthread_mutex_lock(&g_lock);
    b->p = p;
    b->next = g_host_blocks;
    g_host_blocks = b;
    pthread_mutex_unlock(&g_lock);
    *ptr = p;
    return hipSuccess;
}

static hipError_t host_free(void* ptr)
{
    if (!ptr)
        return hipSuccess;
    pthread_mutex_lock(&g_lock);
    wait_streams_locked(0);
    for (struct host_block** it = &g_host_blocks; *it; it = &(*it)->next) {
        if ((*it)->p == ptr) {
            struct host_block* b = *it;
            *it = b->next;
            pthread_mutex_unlock(&g_lock);
            free(b->p);
            free(b);
            return hipSuccess;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return set_error(hipErrorInvalidValue);
}

hipError_t hipHostMalloc(void** ptr, size_t size, unsigned int flags)
{
    (void)flags;
    ENTER(hipHostMalloc, hipErrorOutOfMemory);
    return host_alloc(ptr, size);
}

hipError_t hipMallocHost(void** ptr, size_t size)
{
    ENTER(hipMallocHost, hipErrorOutOfMemory);
    return host_alloc(ptr, size);
}

hipError_t hipHostFree(void* ptr)
{
    ENTER(hipHostFree, hipErrorUnknown);
    return host_free(ptr);
}

hipError_t hipFreeHost(void* ptr)
{
    ENTER(hipFreeHost, hipErrorUnknown);
    return host_free(ptr);
}

hipError_t hipHostRegister(void* hostPtr, size_t sizeBytes, unsigned int flags)
{
    (void)flags;
    ENTER(hipHostRegister, hipErrorUnknown);
    if (!hostPtr || overlaps_region(hostPtr, sizeBytes))
        return set_error(hipErrorInvalidValue);
    return hipSuccess;
}

hipError_t hipHostUnregister(void* hostPtr)
{
    ENTER(hipHostUnregister, hipErrorUnknown);
    if (!hostPtr)
        return set_error(hipErrorInvalidValue);
    return hipSuccess;
}

const char* hipGetErrorName(hipError_t error)
{
    (void)enter(F_hipGetErrorName);
    switch (error) {
    case hipSuccess: return "hipSuccess";
    case hipErrorInvalidValue: return "hipErrorInvalidValue";
    case hipErrorOutOfMemory: return "hipErrorOutOfMemory";
    case hipErrorNotInitialized: return "hipErrorNotInitialized";
    case hipErrorInvalidDevicePointer: return "hipErrorInvalidDevicePointer";
    case hipErrorInvalidMemcpyDirection: return "hipErrorInvalidMemcpyDirection";
    case hipErrorNoDevice: return "hipErrorNoDevice";
    case hipErrorInvalidDevice: return "hipErrorInvalidDevice";
    case hipErrorInvalidHandle: return "hipErrorInvalidHandle";
    case hipErrorNotReady: return "hipErrorNotReady";
    case hipErrorUnknown: return "hipErrorUnknown";
    default: return "hipErrorUnknown";
    }
}

const char* hipGetErrorString(hipError_t error)
{
    (void)enter(F_hipGetErrorString);
    switch (error) {
    case hipSuccess: return "no error";
    case hipErrorInvalidValue: return "invalid argument";
    case hipErrorOutOfMemory: return "out of memory";
    case hipErrorNotInitialized: return "initialization error";
    case hipErrorInvalidDevicePointer: return "invalid device pointer";
    case hipErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case hipErrorNoDevice: return "no ROCm-capable device is detected";
    case hipErrorInvalidDevice: return "invalid device ordinal";
    case hipErrorInvalidHandle: return "invalid resource handle";
    case hipErrorNotReady: return "device not ready";
    default: return "unknown error";
    }
}

hipError_t hipGetLastError(void)
{
    (void)enter(F_hipGetLastError);
    hipError_t e = t_last_error;
    t_last_error = hipSuccess;
    return e;
}

hipError_t hipPeekAtLastError(void)
{
    (void)enter(F_hipPeekAtLastError);
    return t_last_error;
}

/* ------------------------------------------------------------------ */
/* the device: an RDNA1 card                                            */
/* ------------------------------------------------------------------ */

#define FAKE_DEVICE_NAME "AMD Radeon RX 5700 XT"
#define FAKE_HIP_VERSION 50221153 /* 5.2.x: major * 10^7 + minor * 10^5 + patch */
#define FAKE_TOTAL_MEM (8ull << 30)

/* What ROCm 5.x reports for a Navi 10 RX 5700 XT (gfx1010, wave32, no xnack). */
static void fill_props(hipDeviceProp_t* p)
{
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", FAKE_DEVICE_NAME);
    p->totalGlobalMem = FAKE_TOTAL_MEM;
    p->sharedMemPerBlock = 64 * 1024;
    p->regsPerBlock = 65536;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = p->maxThreadsDim[1] = p->maxThreadsDim[2] = 1024;
    p->maxGridSize[0] = p->maxGridSize[1] = p->maxGridSize[2] = 2147483647;
    p->clockRate = 2100000;
    p->memoryClockRate = 875000;
    p->memoryBusWidth = 256;
    p->totalConstMem = 2147483647;
    p->major = 10;
    p->minor = 1;
    p->multiProcessorCount = 40;
    p->l2CacheSize = 4 * 1024 * 1024;
    p->maxThreadsPerMultiProcessor = 2560;
    p->computeMode = 0;
    p->clockInstructionRate = 100000;
    p->arch.hasGlobalInt32Atomics = 1;
    p->arch.hasGlobalFloatAtomicExch = 1;
    p->arch.hasSharedInt32Atomics = 1;
    p->arch.hasSharedFloatAtomicExch = 1;
    p->arch.hasFloatAtomicAdd = 1;
    p->arch.hasGlobalInt64Atomics = 1;
    p->arch.hasSharedInt64Atomics = 1;
    p->arch.hasDoubles = 1;
    p->arch.hasWarpVote = 1;
    p->arch.hasWarpBallot = 1;
    p->arch.hasWarpShuffle = 1;
    p->arch.hasFunnelShift = 0;
    p->arch.hasThreadFenceSystem = 1;
    p->arch.hasSyncThreadsExt = 0;
    p->arch.hasSurfaceFuncs = 0;
    p->arch.has3dGrid = 1;
    p->arch.hasDynamicParallelism = 0;
    p->concurrentKernels = 1;
    p->pciDomainID = 0;
    p->pciBusID = 3;
    p->pciDeviceID = 0;
    p->maxSharedMemoryPerMultiProcessor = 64 * 1024;
    p->isMultiGpuBoard = 0;
    p->canMapHostMemory = 1;
    p->gcnArch = 1010;
    snprintf(p->gcnArchName, sizeof p->gcnArchName, "%s", "gfx1010:xnack-");
    p->integrated = 0;
    p->cooperativeLaunch = 1;
    p->cooperativeMultiDeviceLaunch = 1;
    p->maxTexture1DLinear = 134217728;
    p->maxTexture1D = 16384;
    p->maxTexture2D[0] = p->maxTexture2D[1] = 16384;
    p->maxTexture3D[0] = p->maxTexture3D[1] = p->maxTexture3D[2] = 2048;
    p->hdpMemFlushCntl = NULL; /* register addresses: a fake has none */
    p->hdpRegFlushCntl = NULL;
    p->memPitch = 2147483647;
    p->textureAlignment = 256;
    p->texturePitchAlignment = 256;
    p->kernelExecTimeoutEnabled = 0;
    p->ECCEnabled = 0;
    p->tccDriver = 0;
    p->cooperativeMultiDeviceUnmatchedFunc = 1;
    p->cooperativeMultiDeviceUnmatchedGridDim = 1;
    p->cooperativeMultiDeviceUnmatchedBlockDim = 1;
    p->cooperativeMultiDeviceUnmatchedSharedMem = 1;
    p->isLargeBar = 0;
    p->asicRevision = 2;
    p->managedMemory = 1;
    p->directManagedMemAccessFromHost = 0;
    p->concurrentManagedAccess = 0; /* no xnack: managed memory migrates, not shared */
    p->pageableMemoryAccess = 0;
    p->pageableMemoryAccessUsesHostPageTables = 0;
}

hipError_t hipGetDeviceProperties(hipDeviceProp_t* prop, int deviceId)
{
    ENTER(hipGetDeviceProperties, hipErrorUnknown);
    if (!prop)
        return set_error(hipErrorInvalidValue);
    if (deviceId != 0)
        return set_error(hipErrorInvalidDevice);
    fill_props(prop);
    return hipSuccess;
}

hipError_t hipDeviceGetAttribute(int* pi, hipDeviceAttribute_t attr, int deviceId)
{
    ENTER(hipDeviceGetAttribute, hipErrorUnknown);
    if (!pi)
        return set_error(hipErrorInvalidValue);
    if (deviceId != 0)
        return set_error(hipErrorInvalidDevice);
    hipDeviceProp_t p;
    fill_props(&p);
    int v;
    switch (attr) {
    case hipDeviceAttributeEccEnabled: v = p.ECCEnabled; break;
    case hipDeviceAttributeCanMapHostMemory: v = p.canMapHostMemory; break;
    case hipDeviceAttributeClockRate: v = p.clockRate; break;
    case hipDeviceAttributeComputeMode: v = p.computeMode; break;
    case hipDeviceAttributeConcurrentKernels: v = p.concurrentKernels; break;
    case hipDeviceAttributeConcurrentManagedAccess: v = p.concurrentManagedAccess; break;
    case hipDeviceAttributeCooperativeLaunch: v = p.cooperativeLaunch; break;
    case hipDeviceAttributeCooperativeMultiDeviceLaunch: v = p.cooperativeMultiDeviceLaunch; break;
    case hipDeviceAttributeDirectManagedMemAccessFromHost:
        v = p.directManagedMemAccessFromHost;
        break;
    case hipDeviceAttributeIntegrated: v = p.integrated; break;
    case hipDeviceAttributeIsMultiGpuBoard: v = p.isMultiGpuBoard; break;
    case hipDeviceAttributeKernelExecTimeout: v = p.kernelExecTimeoutEnabled; break;
    case hipDeviceAttributeL2CacheSize: v = p.l2CacheSize; break;
    case hipDeviceAttributeComputeCapabilityMajor: v = p.major; break;
    case hipDeviceAttributeComputeCapabilityMinor: v = p.minor; break;
    case hipDeviceAttributeManagedMemory: v = p.managedMemory; break;
    case hipDeviceAttributeMaxBlockDimX: v = p.maxThreadsDim[0]; break;
    case hipDeviceAttributeMaxBlockDimY: v = p.maxThreadsDim[1]; break;
    case hipDeviceAttributeMaxBlockDimZ: v = p.maxThreadsDim[2]; break;
    case hipDeviceAttributeMaxGridDimX: v = p.maxGridSize[0]; break;
    case hipDeviceAttributeMaxGridDimY: v = p.maxGridSize[1]; break;
    case hipDeviceAttributeMaxGridDimZ: v = p.maxGridSize[2]; break;
    case hipDeviceAttributeMaxTexture1DWidth: v = p.maxTexture1D; break;
    case hipDeviceAttributeMaxTexture1DLinear: v = p.maxTexture1DLinear; break;
    case hipDeviceAttributeMaxTexture2DWidth: v = p.maxTexture2D[0]; break;
    case hipDeviceAttributeMaxTexture2DHeight: v = p.maxTexture2D[1]; break;
    case hipDeviceAttributeMaxTexture3DWidth: v = p.maxTexture3D[0]; break;
    case hipDeviceAttributeMaxTexture3DHeight: v = p.maxTexture3D[1]; break;
    case hipDeviceAttributeMaxTexture3DDepth: v = p.maxTexture3D[2]; break;
    case hipDeviceAttributeMaxThreadsPerBlock: v = p.maxThreadsPerBlock; break;
    case hipDeviceAttributeMaxThreadsPerMultiProcessor: v = p.maxThreadsPerMultiProcessor; break;
    case hipDeviceAttributeMaxPitch: v = (int)p.memPitch; break;
    case hipDeviceAttributeMemoryBusWidth: v = p.memoryBusWidth; break;
    case hipDeviceAttributeMemoryClockRate: v = p.memoryClockRate; break;
    case hipDeviceAttributeMultiprocessorCount: v = p.multiProcessorCount; break;
    case hipDeviceAttributePageableMemoryAccess: v = p.pageableMemoryAccess; break;
    case hipDeviceAttributePageableMemoryAccessUsesHostPageTables:
        v = p.pageableMemoryAccessUsesHostPageTables;
        break;
    case hipDeviceAttributePciBusId: v = p.pciBusID; break;
    case hipDeviceAttributePciDeviceId: v = p.pciDeviceID; break;
    case hipDeviceAttributePciDomainID: v = p.pciDomainID; break;
    case hipDeviceAttributeMaxRegistersPerBlock: v = p.regsPerBlock; break;
    case hipDeviceAttributeMaxSharedMemoryPerBlock: v = (int)p.sharedMemPerBlock; break;
    case hipDeviceAttributeTccDriver: v = p.tccDriver; break;
    case hipDeviceAttributeTextureAlignment: v = (int)p.textureAlignment; break;
    case hipDeviceAttributeTexturePitchAlignment: v = (int)p.texturePitchAlignment; break;
    case hipDeviceAttributeTotalConstantMemory: v = (int)p.totalConstMem; break;
    case hipDeviceAttributeWarpSize: v = p.warpSize; break;
    case hipDeviceAttributeClockInstructionRate: v = p.clockInstructionRate; break;
    case hipDeviceAttributeMaxSharedMemoryPerMultiprocessor:
        v = (int)p.maxSharedMemoryPerMultiProcessor;
        break;
    case hipDeviceAttributeGcnArch: v = p.gcnArch; break;
    case hipDeviceAttributeCooperativeMultiDeviceUnmatchedFunc:
        v = p.cooperativeMultiDeviceUnmatchedFunc;
        break;
    case hipDeviceAttributeCooperativeMultiDeviceUnmatchedGridDim:
        v = p.cooperativeMultiDeviceUnmatchedGridDim;
        break;
    case hipDeviceAttributeCooperativeMultiDeviceUnmatchedBlockDim:
        v = p.cooperativeMultiDeviceUnmatchedBlockDim;
        break;
    case hipDeviceAttributeCooperativeMultiDeviceUnmatchedSharedMem:
        v = p.cooperativeMultiDeviceUnmatchedSharedMem;
        break;
    case hipDeviceAttributeIsLargeBar: v = p.isLargeBar; break;
    case hipDeviceAttributeAsicRevision: v = p.asicRevision; break;
    case hipDeviceAttributeImageSupport: v = 1; break;
    case hipDeviceAttributePhysicalMultiProcessorCount: v = p.multiProcessorCount; break;
    case hipDeviceAttributeFineGrainSupport: v = 1; break;
    case hipDeviceAttributeCanUseStreamWaitValue: v = 0; break;
    default:
        /* CUDA-only attributes, and those that do not fit an int (name, UUID, total
         * memory): HIP answers hipErrorInvalidValue. */
        return set_error(hipErrorInvalidValue);
    }
    *pi = v;
    return hipSuccess;
}

hipError_t hipMemGetInfo(size_t* free_bytes, size_t* total_bytes)
{
    ENTER(hipMemGetInfo, hipErrorUnknown);
    if (!free_bytes || !total_bytes)
        return set_error(hipErrorInvalidValue);
    size_t used = 0;
    pthread_mutex_lock(&g_lock);
    for (size_t i = 0; i < g_nallocs; i++)
        used += align_up(g_allocs[i].size, DEV_ALIGN);
    pthread_mutex_unlock(&g_lock);
    *total_bytes = FAKE_TOTAL_MEM;
    *free_bytes = used < FAKE_TOTAL_MEM ? FAKE_TOTAL_MEM - used : 0;
    return hipSuccess;
}

hipError_t hipGetDevice(int* deviceId)
{
    ENTER(hipGetDevice, hipErrorUnknown);
    if (!deviceId)
        return set_error(hipErrorInvalidValue);
    *deviceId = 0;
    return hipSuccess;
}

hipError_t hipSetDevice(int deviceId)
{
    ENTER(hipSetDevice, hipErrorUnknown);
    return deviceId == 0 ? hipSuccess : set_error(hipErrorInvalidDevice);
}

hipError_t hipGetDeviceCount(int* count)
{
    ENTER(hipGetDeviceCount, hipErrorUnknown);
    if (!count)
        return set_error(hipErrorInvalidValue);
    *count = 1;
    return hipSuccess;
}

hipError_t hipDeviceGetName(char* name, int len, int deviceId)
{
    ENTER(hipDeviceGetName, hipErrorUnknown);
    if (!name || len <= 0)
        return set_error(hipErrorInvalidValue);
    if (deviceId != 0)
        return set_error(hipErrorInvalidDevice);
    snprintf(name, (size_t)len, "%s", FAKE_DEVICE_NAME);
    return hipSuccess;
}

hipError_t hipRuntimeGetVersion(int* runtimeVersion)
{
    ENTER(hipRuntimeGetVersion, hipErrorUnknown);
    if (!runtimeVersion)
        return set_error(hipErrorInvalidValue);
    *runtimeVersion = FAKE_HIP_VERSION;
    return hipSuccess;
}

hipError_t hipDriverGetVersion(int* driverVersion)
{
    ENTER(hipDriverGetVersion, hipErrorUnknown);
    if (!driverVersion)
        return set_error(hipErrorInvalidValue);
    *driverVersion = FAKE_HIP_VERSION;
    return hipSuccess;
}

int fakehip_stats(const char* name)
{
    pthread_once(&g_once, init_once);
    if (!name)
        return -1;
    for (int i = 0; i < F_COUNT; i++)
        if (strcmp(g_fn_names[i], name) == 0)
            return (int)__atomic_load_n(&g_calls[i], __ATOMIC_SEQ_CST);
    return -1;
}

size_t fakehip_bytes_copied(int kind)
{
    if (kind < 0 || kind > 4)
        return 0;
    return __atomic_load_n(&g_bytes_copied[kind], __ATOMIC_SEQ_CST);
}
