/*
 * hip_abi_ours.c -- owns the ABI facts of the test suite's own hip_api.h (what
 * the fake HIP is compiled against): the lists of hip_abi_list.h expanded
 * against it. Part of hip_abi_check.
 */
#include "hip_api.h"

#include <stddef.h>
#include <string.h>

#include "hip_abi_list.h"

HIP_ABI_DEFINE_FACTS(hip_abi_facts_ours)
