/*
 * naive_bn.h -- owns the obviously-right reference batch normalization shared
 * by the fake MIOpen (healthy mode) and the integration harness: MIOpen's
 * forward training, forward inference and backward in spatial and
 * per-activation modes, on strided host images (the nc_tensor of naive_conv.h)
 * of 3..5 dims, data in fp32/fp16/bf16/fp64 and parameters (scale, bias,
 * running/saved statistics, their gradients) in their own type, computed in
 * double precision with round-to-nearest-even stores.
 *
 * Semantics (MIOpen's kernels and driver/miopen_BatchNormHost.hpp):
 *   feature   = channel (spatial mode) or (channel, position) (per activation);
 *               m = elements per feature
 *   mean      = sum(x) / m;  var = sum((x - mean)^2) / m
 *   y         = alpha * (scale * (x - mean) / sqrt(var + eps) + bias) + beta * y
 *   running   = updated only when both pointers are non-NULL:
 *               mean_r = (1 - f) mean_r + f mean
 *               var_r  = (1 - f) var_r + f var * m / (m - 1)   (var when m == 1)
 *   saved     = written only when both pointers are non-NULL:
 *               mean and 1 / sqrt(var + eps)
 *   inference = with NULL estimated mean or variance, the batch's own statistics
 *   backward  = saved statistics when both pointers are non-NULL, otherwise
 *               recomputed from x with eps; xhat = (x - mean) * inv;
 *               dbias = sum(dy), dscale = sum(dy * xhat),
 *               dx = scale * inv / m * (m dy - dbias - xhat dscale);
 *               dx = ad * dx + bd * dx_old, dscale/dbias = ap * d + bp * old
 * Outputs are read only when their beta is not 0.
 */
#ifndef SHIM_TESTS_NAIVE_BN_H
#define SHIM_TESTS_NAIVE_BN_H

#include "naive_conv.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { NB_PER_ACTIVATION = 0, NB_SPATIAL = 1 }; /* miopenBatchNormMode_t values */

/* Checks data descriptors (same lens and type as x; y or dy, and dx may be
 * NULL) and the parameter descriptor (MIOpen's derived shape for the mode). */
NC_API int nb_validate(int mode, const nc_tensor* x, const nc_tensor* y, const nc_tensor* dx,
                       const nc_tensor* p, char* err, size_t errlen);

NC_API int nb_forward_training(int mode, const nc_tensor* xd, const void* x, const nc_tensor* yd,
                               void* y, const nc_tensor* pd, const void* scale, const void* bias,
                               double factor, void* run_mean, void* run_var, double eps,
                               void* saved_mean, void* saved_inv, double alpha, double beta,
                               char* err, size_t errlen);

NC_API int nb_forward_inference(int mode, const nc_tensor* xd, const void* x, const nc_tensor* yd,
                                void* y, const nc_tensor* pd, const void* scale, const void* bias,
                                const void* est_mean, const void* est_var, double eps,
                                double alpha, double beta, char* err, size_t errlen);

NC_API int nb_backward(int mode, const nc_tensor* xd, const void* x, const nc_tensor* dyd,
                       const void* dy, const nc_tensor* dxd, void* dx, const nc_tensor* pd,
                       const void* scale, void* dscale, void* dbias, double eps,
                       const void* saved_mean, const void* saved_inv, double alpha_data,
                       double beta_data, double alpha_param, double beta_param, char* err,
                       size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
