/*
 * hip_abi_list.h -- owns the list of everything hip_api.h declares that must
 * match HIP's real hip_runtime_api.h: the members of hipDeviceProp_t, the
 * bit-fields of hipDeviceArch_t, enum values, flag macros and function
 * prototypes. hip_abi_real.c expands these lists against the real header,
 * hip_abi_ours.c against hip_api.h, and hip_abi_check.c compares the two
 * tables (a Rust test checks that every name hip_api.h declares is listed).
 */
#ifndef SHIM_TESTS_HIP_ABI_LIST_H
#define SHIM_TESTS_HIP_ABI_LIST_H

#include <stddef.h>

#define HIP_ABI_PROP_FIELDS(X)                                                                  \
    X(name) X(totalGlobalMem) X(sharedMemPerBlock) X(regsPerBlock) X(warpSize)                  \
    X(maxThreadsPerBlock) X(maxThreadsDim) X(maxGridSize) X(clockRate) X(memoryClockRate)       \
    X(memoryBusWidth) X(totalConstMem) X(major) X(minor) X(multiProcessorCount)                 \
    X(l2CacheSize) X(maxThreadsPerMultiProcessor) X(computeMode) X(clockInstructionRate)        \
    X(arch) X(concurrentKernels) X(pciDomainID) X(pciBusID) X(pciDeviceID)                      \
    X(maxSharedMemoryPerMultiProcessor) X(isMultiGpuBoard) X(canMapHostMemory) X(gcnArch)       \
    X(gcnArchName) X(integrated) X(cooperativeLaunch) X(cooperativeMultiDeviceLaunch)           \
    X(maxTexture1DLinear) X(maxTexture1D) X(maxTexture2D) X(maxTexture3D) X(hdpMemFlushCntl)    \
    X(hdpRegFlushCntl) X(memPitch) X(textureAlignment) X(texturePitchAlignment)                 \
    X(kernelExecTimeoutEnabled) X(ECCEnabled) X(tccDriver)                                      \
    X(cooperativeMultiDeviceUnmatchedFunc) X(cooperativeMultiDeviceUnmatchedGridDim)            \
    X(cooperativeMultiDeviceUnmatchedBlockDim) X(cooperativeMultiDeviceUnmatchedSharedMem)      \
    X(isLargeBar) X(asicRevision) X(managedMemory) X(directManagedMemAccessFromHost)            \
    X(concurrentManagedAccess) X(pageableMemoryAccess)                                          \
    X(pageableMemoryAccessUsesHostPageTables)

#define HIP_ABI_ARCH_BITS(X)                                                                    \
    X(hasGlobalInt32Atomics) X(hasGlobalFloatAtomicExch) X(hasSharedInt32Atomics)               \
    X(hasSharedFloatAtomicExch) X(hasFloatAtomicAdd) X(hasGlobalInt64Atomics)                   \
    X(hasSharedInt64Atomics) X(hasDoubles) X(hasWarpVote) X(hasWarpBallot) X(hasWarpShuffle)    \
    X(hasFunnelShift) X(hasThreadFenceSystem) X(hasSyncThreadsExt) X(hasSurfaceFuncs)           \
    X(has3dGrid) X(hasDynamicParallelism)

#define HIP_ABI_ENUM_VALUES(X)                                                                  \
    X(hipSuccess) X(hipErrorInvalidValue) X(hipErrorOutOfMemory) X(hipErrorNotInitialized)      \
    X(hipErrorInvalidDevicePointer) X(hipErrorInvalidMemcpyDirection) X(hipErrorNoDevice)       \
    X(hipErrorInvalidDevice) X(hipErrorInvalidHandle) X(hipErrorNotReady) X(hipErrorUnknown)    \
    X(hipMemcpyHostToHost) X(hipMemcpyHostToDevice) X(hipMemcpyDeviceToHost)                   \
    X(hipMemcpyDeviceToDevice) X(hipMemcpyDefault) X(hipDeviceAttributeCudaCompatibleBegin)     \
    X(hipDeviceAttributeEccEnabled) X(hipDeviceAttributeAccessPolicyMaxWindowSize)              \
    X(hipDeviceAttributeAsyncEngineCount) X(hipDeviceAttributeCanMapHostMemory)                 \
    X(hipDeviceAttributeCanUseHostPointerForRegisteredMem) X(hipDeviceAttributeClockRate)       \
    X(hipDeviceAttributeComputeMode) X(hipDeviceAttributeComputePreemptionSupported)            \
    X(hipDeviceAttributeConcurrentKernels) X(hipDeviceAttributeConcurrentManagedAccess)         \
    X(hipDeviceAttributeCooperativeLaunch) X(hipDeviceAttributeCooperativeMultiDeviceLaunch)    \
    X(hipDeviceAttributeDeviceOverlap) X(hipDeviceAttributeDirectManagedMemAccessFromHost)      \
    X(hipDeviceAttributeGlobalL1CacheSupported) X(hipDeviceAttributeHostNativeAtomicSupported)  \
    X(hipDeviceAttributeIntegrated) X(hipDeviceAttributeIsMultiGpuBoard)                        \
    X(hipDeviceAttributeKernelExecTimeout) X(hipDeviceAttributeL2CacheSize)                     \
    X(hipDeviceAttributeLocalL1CacheSupported) X(hipDeviceAttributeLuid)                        \
    X(hipDeviceAttributeLuidDeviceNodeMask) X(hipDeviceAttributeComputeCapabilityMajor)         \
    X(hipDeviceAttributeManagedMemory) X(hipDeviceAttributeMaxBlocksPerMultiProcessor)          \
    X(hipDeviceAttributeMaxBlockDimX) X(hipDeviceAttributeMaxBlockDimY)                         \
    X(hipDeviceAttributeMaxBlockDimZ) X(hipDeviceAttributeMaxGridDimX)                          \
    X(hipDeviceAttributeMaxGridDimY) X(hipDeviceAttributeMaxGridDimZ)                           \
    X(hipDeviceAttributeMaxSurface1D) X(hipDeviceAttributeMaxSurface1DLayered)                  \
    X(hipDeviceAttributeMaxSurface2D) X(hipDeviceAttributeMaxSurface2DLayered)                  \
    X(hipDeviceAttributeMaxSurface3D) X(hipDeviceAttributeMaxSurfaceCubemap)                    \
    X(hipDeviceAttributeMaxSurfaceCubemapLayered) X(hipDeviceAttributeMaxTexture1DWidth)        \
    X(hipDeviceAttributeMaxTexture1DLayered) X(hipDeviceAttributeMaxTexture1DLinear)            \
    X(hipDeviceAttributeMaxTexture1DMipmap) X(hipDeviceAttributeMaxTexture2DWidth)              \
    X(hipDeviceAttributeMaxTexture2DHeight) X(hipDeviceAttributeMaxTexture2DGather)             \
    X(hipDeviceAttributeMaxTexture2DLayered) X(hipDeviceAttributeMaxTexture2DLinear)            \
    X(hipDeviceAttributeMaxTexture2DMipmap) X(hipDeviceAttributeMaxTexture3DWidth)              \
    X(hipDeviceAttributeMaxTexture3DHeight) X(hipDeviceAttributeMaxTexture3DDepth)              \
    X(hipDeviceAttributeMaxTexture3DAlt) X(hipDeviceAttributeMaxTextureCubemap)                 \
    X(hipDeviceAttributeMaxTextureCubemapLayered) X(hipDeviceAttributeMaxThreadsDim)            \
    X(hipDeviceAttributeMaxThreadsPerBlock) X(hipDeviceAttributeMaxThreadsPerMultiProcessor)    \
    X(hipDeviceAttributeMaxPitch) X(hipDeviceAttributeMemoryBusWidth)                           \
    X(hipDeviceAttributeMemoryClockRate) X(hipDeviceAttributeComputeCapabilityMinor)            \
    X(hipDeviceAttributeMultiGpuBoardGroupID) X(hipDeviceAttributeMultiprocessorCount)          \
    X(hipDeviceAttributeName) X(hipDeviceAttributePageableMemoryAccess)                         \
    X(hipDeviceAttributePageableMemoryAccessUsesHostPageTables) X(hipDeviceAttributePciBusId)   \
    X(hipDeviceAttributePciDeviceId) X(hipDeviceAttributePciDomainID)                           \
    X(hipDeviceAttributePersistingL2CacheMaxSize) X(hipDeviceAttributeMaxRegistersPerBlock)     \
    X(hipDeviceAttributeMaxRegistersPerMultiprocessor)                                          \
    X(hipDeviceAttributeReservedSharedMemPerBlock) X(hipDeviceAttributeMaxSharedMemoryPerBlock) \
    X(hipDeviceAttributeSharedMemPerBlockOptin) X(hipDeviceAttributeSharedMemPerMultiprocessor) \
    X(hipDeviceAttributeSingleToDoublePrecisionPerfRatio)                                       \
    X(hipDeviceAttributeStreamPrioritiesSupported) X(hipDeviceAttributeSurfaceAlignment)        \
    X(hipDeviceAttributeTccDriver) X(hipDeviceAttributeTextureAlignment)                        \
    X(hipDeviceAttributeTexturePitchAlignment) X(hipDeviceAttributeTotalConstantMemory)         \
    X(hipDeviceAttributeTotalGlobalMem) X(hipDeviceAttributeUnifiedAddressing)                  \
    X(hipDeviceAttributeUuid) X(hipDeviceAttributeWarpSize)                                     \
    X(hipDeviceAttributeMemoryPoolsSupported) X(hipDeviceAttributeCudaCompatibleEnd)            \
    X(hipDeviceAttributeAmdSpecificBegin) X(hipDeviceAttributeClockInstructionRate)             \
    X(hipDeviceAttributeArch) X(hipDeviceAttributeMaxSharedMemoryPerMultiprocessor)             \
    X(hipDeviceAttributeGcnArch) X(hipDeviceAttributeGcnArchName)                               \
    X(hipDeviceAttributeHdpMemFlushCntl) X(hipDeviceAttributeHdpRegFlushCntl)                   \
    X(hipDeviceAttributeCooperativeMultiDeviceUnmatchedFunc)                                    \
    X(hipDeviceAttributeCooperativeMultiDeviceUnmatchedGridDim)                                 \
    X(hipDeviceAttributeCooperativeMultiDeviceUnmatchedBlockDim)                                \
    X(hipDeviceAttributeCooperativeMultiDeviceUnmatchedSharedMem)                               \
    X(hipDeviceAttributeIsLargeBar) X(hipDeviceAttributeAsicRevision)                           \
    X(hipDeviceAttributeCanUseStreamWaitValue) X(hipDeviceAttributeImageSupport)                \
    X(hipDeviceAttributePhysicalMultiProcessorCount) X(hipDeviceAttributeFineGrainSupport)      \
    X(hipDeviceAttributeAmdSpecificEnd) X(hipDeviceAttributeVendorSpecificBegin)

#define HIP_ABI_FLAG_VALUES(X)                                                                  \
    X(hipStreamDefault) X(hipStreamNonBlocking) X(hipHostMallocDefault)                         \
    X(hipHostRegisterDefault) X(hipEventDefault) X(hipEventBlockingSync)                        \
    X(hipEventDisableTiming) X(hipEventInterprocess) X(hipEventReleaseToDevice)                 \
    X(hipEventReleaseToSystem)

/* X(return type, name, (parameter types)): each side checks that its declaration has
 * exactly this type, so the two declarations agree. */
#define HIP_ABI_FUNCTIONS(X)                                                                    \
    X(hipError_t, hipInit, (unsigned int))                                                      \
    X(hipError_t, hipMalloc, (void**, size_t))                                                  \
    X(hipError_t, hipFree, (void*))                                                             \
    X(hipError_t, hipMemcpy, (void*, const void*, size_t, hipMemcpyKind))                       \
    X(hipError_t, hipMemcpyAsync, (void*, const void*, size_t, hipMemcpyKind, hipStream_t))     \
    X(hipError_t, hipMemset, (void*, int, size_t))                                              \
    X(hipError_t, hipMemsetAsync, (void*, int, size_t, hipStream_t))                            \
    X(hipError_t, hipMemcpy2D, (void*, size_t, const void*, size_t, size_t, size_t, hipMemcpyKind)) \
    X(hipError_t, hipMemcpy2DAsync,                                                             \
      (void*, size_t, const void*, size_t, size_t, size_t, hipMemcpyKind, hipStream_t))         \
    X(hipError_t, hipMemset2D, (void*, size_t, int, size_t, size_t))                            \
    X(hipError_t, hipMemset2DAsync, (void*, size_t, int, size_t, size_t, hipStream_t))          \
    X(hipError_t, hipStreamCreate, (hipStream_t*))                                              \
    X(hipError_t, hipStreamCreateWithFlags, (hipStream_t*, unsigned int))                       \
    X(hipError_t, hipStreamDestroy, (hipStream_t))                                              \
    X(hipError_t, hipStreamSynchronize, (hipStream_t))                                          \
    X(hipError_t, hipStreamQuery, (hipStream_t))                                                \
    X(hipError_t, hipDeviceSynchronize, (void))                                                 \
    X(hipError_t, hipHostMalloc, (void**, size_t, unsigned int))                                \
    X(hipError_t, hipHostFree, (void*))                                                         \
    X(hipError_t, hipMallocHost, (void**, size_t))                                              \
    X(hipError_t, hipFreeHost, (void*))                                                         \
    X(hipError_t, hipHostRegister, (void*, size_t, unsigned int))                               \
    X(hipError_t, hipHostUnregister, (void*))                                                   \
    X(const char*, hipGetErrorString, (hipError_t))                                             \
    X(const char*, hipGetErrorName, (hipError_t))                                               \
    X(hipError_t, hipGetLastError, (void))                                                      \
    X(hipError_t, hipPeekAtLastError, (void))                                                   \
    X(hipError_t, hipGetDevice, (int*))                                                         \
    X(hipError_t, hipSetDevice, (int))                                                          \
    X(hipError_t, hipGetDeviceCount, (int*))                                                    \
    X(hipError_t, hipDeviceGetName, (char*, int, int))                                          \
    X(hipError_t, hipGetDeviceProperties, (hipDeviceProp_t*, int))                              \
    X(hipError_t, hipDeviceGetAttribute, (int*, hipDeviceAttribute_t, int))                     \
    X(hipError_t, hipMemGetInfo, (size_t*, size_t*))                                            \
    X(hipError_t, hipEventCreate, (hipEvent_t*))                                                \
    X(hipError_t, hipEventCreateWithFlags, (hipEvent_t*, unsigned))                             \
    X(hipError_t, hipEventRecord, (hipEvent_t, hipStream_t))                                    \
    X(hipError_t, hipEventSynchronize, (hipEvent_t))                                            \
    X(hipError_t, hipEventQuery, (hipEvent_t))                                                  \
    X(hipError_t, hipEventElapsedTime, (float*, hipEvent_t, hipEvent_t))                        \
    X(hipError_t, hipEventDestroy, (hipEvent_t))                                                \
    X(hipError_t, hipStreamWaitEvent, (hipStream_t, hipEvent_t, unsigned int))                  \
    X(hipError_t, hipRuntimeGetVersion, (int*))                                                 \
    X(hipError_t, hipDriverGetVersion, (int*))

/* One measured fact: "offsetof(hipDeviceProp_t, name)" = 0, "hipSuccess" = 0, ... */
struct hip_abi_fact {
    const char* what;
    long long value;
};

/* The facts as the real header states them (hip_abi_real.c) and as hip_api.h does
 * (hip_abi_ours.c), in the same order; *count receives the number of facts. */
const struct hip_abi_fact* hip_abi_facts_real(size_t* count);
const struct hip_abi_fact* hip_abi_facts_ours(size_t* count);

/* Expands to the body of one hip_abi_facts_* function; needs the HIP declarations
 * (either header), <stddef.h> and <string.h> in scope. */
#define HIP_ABI_FIELD_FACTS(f)                                                                  \
    {"offsetof(hipDeviceProp_t, " #f ")", (long long)offsetof(hipDeviceProp_t, f)},             \
        {"sizeof(hipDeviceProp_t." #f ")", (long long)sizeof(((hipDeviceProp_t*)0)->f)},
#define HIP_ABI_VALUE_FACT(v) {#v, (long long)(v)},
#define HIP_ABI_ARCH_FACT(b) {"hipDeviceArch_t." #b " bit", hip_abi_arch_bit_##b()},
#define HIP_ABI_ARCH_BIT_FN(b)                                                                  \
    static long long hip_abi_arch_bit_##b(void)                                                 \
    {                                                                                           \
        hipDeviceArch_t a;                                                                      \
        unsigned char raw[sizeof a];                                                            \
        memset(&a, 0, sizeof a);                                                                \
        a.b = 1;                                                                                \
        memcpy(raw, &a, sizeof a);                                                              \
        for (size_t i = 0; i < sizeof a * 8; i++)                                               \
            if (raw[i / 8] & (1u << (i % 8)))                                                   \
                return (long long)i;                                                            \
        return -1;                                                                              \
    }
#define HIP_ABI_FUNCTION_CHECK(ret, fn, params)                                                 \
    _Static_assert(__builtin_types_compatible_p(__typeof__(fn), ret params),                   \
                   #fn " is declared as " #ret " " #fn #params);

#define HIP_ABI_DEFINE_FACTS(fn_name)                                                           \
    HIP_ABI_ARCH_BITS(HIP_ABI_ARCH_BIT_FN)                                                      \
    HIP_ABI_FUNCTIONS(HIP_ABI_FUNCTION_CHECK)                                                   \
    const struct hip_abi_fact* fn_name(size_t* count)                                           \
    {                                                                                           \
        static const struct hip_abi_fact consts[] = {                                           \
            {"sizeof(hipDeviceProp_t)", (long long)sizeof(hipDeviceProp_t)},                    \
            {"sizeof(hipDeviceArch_t)", (long long)sizeof(hipDeviceArch_t)},                    \
            {"sizeof(hipError_t)", (long long)sizeof(hipError_t)},                              \
            {"sizeof(hipMemcpyKind)", (long long)sizeof(hipMemcpyKind)},                        \
            {"sizeof(hipDeviceAttribute_t)", (long long)sizeof(hipDeviceAttribute_t)},          \
            HIP_ABI_PROP_FIELDS(HIP_ABI_FIELD_FACTS) HIP_ABI_ENUM_VALUES(HIP_ABI_VALUE_FACT)    \
                HIP_ABI_FLAG_VALUES(HIP_ABI_VALUE_FACT)};                                       \
        static struct hip_abi_fact all[sizeof consts / sizeof consts[0] + 32];                  \
        size_t n = 0;                                                                           \
        for (size_t i = 0; i < sizeof consts / sizeof consts[0]; i++)                           \
            all[n++] = consts[i];                                                               \
        const struct hip_abi_fact bits[] = {HIP_ABI_ARCH_BITS(HIP_ABI_ARCH_FACT)};              \
        for (size_t i = 0; i < sizeof bits / sizeof bits[0]; i++)                               \
            all[n++] = bits[i];                                                                 \
        *count = n;                                                                             \
        return all;                                                                             \
    }

#endif
