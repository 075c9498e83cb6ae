/*
 * quiet_probe.c -- owns the probe of what merely loading rdna1shim costs a
 * process that never calls MIOpen: it links nothing special, and prints its
 * own thread count (from /proc/self/status) and whether librdna1shim.so is
 * mapped into it (from /proc/self/maps, proving that LD_PRELOAD took effect),
 * as "threads=N shim_mapped=0|1".
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>

int main(void)
{
    char line[4096];
    int threads = -1, mapped = 0;
    FILE* f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %d", &threads) == 1)
            break;
    if (f)
        fclose(f);
    f = fopen("/proc/self/maps", "r");
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, "librdna1shim"))
            mapped = 1;
    if (f)
        fclose(f);
    printf("threads=%d shim_mapped=%d\n", threads, mapped);
    return threads > 0 ? 0 : 1;
}
