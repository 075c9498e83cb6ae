/*
 * harness_dlopen.c -- owns the loader that runs the harness the way PyTorch
 * reaches MIOpen: this executable links neither MIOpen nor HIP; it dlopen()s
 * libconvplugin.so (next to itself) with RTLD_NOW | RTLD_LOCAL, so MIOpen and
 * HIP end up in a local scope that dlsym(RTLD_NEXT/RTLD_DEFAULT) from a
 * preloaded library cannot search, and calls its harness_main().
 *
 * "harness_dlopen --plugin NAME --entry SYMBOL ARGS..." loads another plugin
 * next to itself (e.g. libtrainplugin.so) the same way and calls SYMBOL with
 * ARGS (argv[0] kept).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char** argv)
{
    char path[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n <= 0) {
        perror("harness_dlopen: readlink(/proc/self/exe)");
        return 3;
    }
    path[n] = 0;
    char* slash = strrchr(path, '/');
    if (!slash) {
        fprintf(stderr, "harness_dlopen: cannot locate own directory\n");
        return 3;
    }
    const char* plugin = "libconvplugin.so";
    const char* entry = "harness_main";
    if (argc >= 5 && strcmp(argv[1], "--plugin") == 0 && strcmp(argv[3], "--entry") == 0) {
        plugin = argv[2];
        entry = argv[4];
        argv[4] = argv[0];
        argv += 4;
        argc -= 4;
    }
    if ((size_t)(slash + 1 - path) + strlen(plugin) + 1 > sizeof path) {
        fprintf(stderr, "harness_dlopen: path too long\n");
        return 3;
    }
    strcpy(slash + 1, plugin);
    void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "harness_dlopen: dlopen(%s) failed: %s\n", path, dlerror());
        return 3;
    }
    int (*harness_main)(int, char**);
    *(void**)(&harness_main) = dlsym(h, entry);
    if (!harness_main) {
        fprintf(stderr, "harness_dlopen: %s not found: %s\n", entry, dlerror());
        return 3;
    }
    return harness_main(argc, argv);
}
