/*
 * hip_abi_real.c -- owns the ABI facts of HIP's real hip_runtime_api.h (Debian's
 * libamdhip64-dev 5.x, compiled with -D__HIP_PLATFORM_AMD__): the lists of
 * hip_abi_list.h expanded against it. Part of hip_abi_check.
 */
#include <hip/hip_runtime_api.h>

#include <stddef.h>
#include <string.h>

#include "hip_abi_list.h"

/* hipMallocHost and hipFreeHost are deprecated in the real header; their types are still
 * checked. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

HIP_ABI_DEFINE_FACTS(hip_abi_facts_real)
