#!/usr/bin/env python3
"""Writes tests/golden/bn_golden.json: reference results of PyTorch's batch norm on the CPU.

Run wherever PyTorch is installed:  python3 scripts/gen_golden_bn.py [output.json]

For each case the file holds, computed by PyTorch in float64 from inputs rounded first to
float32 and then to the case's dtype (exactly what the Rust test feeds the shim):
  - training forward: y, the updated running mean and variance (PyTorch's momentum is
    MIOpen's exponential-average factor; the variance update is unbiased), and the saved
    mean and inverse standard deviation (torch.ops.aten.native_batch_norm);
  - backward of sum(y * dy): dx, dscale (weight.grad), dbias (bias.grad);
  - inference with the initial running statistics: y_infer.
Per-activation cases reshape [N, C, spatial...] to [N, C * spatial] (one feature per
channel and position, statistics over the batch), which is MIOpen's miopenBNPerActivation.

Inputs are not stored: the Rust test (tests/golden_bn.rs) regenerates them with `values`
below, seeds 1 (x), 2 (scale), 3 (bias), 4 (running mean), 5 (running variance), 6 (dy).
"""
import json
import math
import sys

import torch
import torch.nn.functional as F


def fill(n, seed):
    return [((i * 7919 + seed * 104729) % 2003) / 1001.5 - 1.0 for i in range(n)]


def values(n, seed, scale=1.0, offset=0.0):
    return [scale * v + offset for v in fill(n, seed)]


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# name, mode, shape [N, C, spatial...], dtype, momentum, eps, x scale, x offset
CASES = [
    ("spatial_2d_fp32", "spatial", [2, 3, 4, 5], "fp32", 0.1, 1e-5, 2.0, 0.5),
    ("spatial_2d_fp16", "spatial", [2, 4, 3, 3], "fp16", 0.1, 1e-5, 2.0, 0.5),
    ("spatial_2d_bf16", "spatial", [3, 2, 4, 4], "bf16", 0.1, 1e-5, 2.0, 0.5),
    ("spatial_3d_fp32", "spatial", [2, 2, 3, 2, 4], "fp32", 0.1, 1e-5, 2.0, 0.5),
    ("spatial_3d_fp16", "spatial", [1, 3, 2, 3, 3], "fp16", 0.1, 1e-5, 1.0, -0.25),
    ("spatial_1d_fp32", "spatial", [3, 4, 7], "fp32", 0.1, 1e-5, 2.0, 0.5),
    ("spatial_momentum1_eps_fp32", "spatial", [2, 3, 3, 3], "fp32", 1.0, 1e-3, 1.0, 0.0),
    ("spatial_momentum_small_bf16", "spatial", [2, 2, 5, 5], "bf16", 0.01, 1e-5, 3.0, 1.0),
    ("spatial_large_mean_fp32", "spatial", [2, 3, 6, 6], "fp32", 0.1, 1e-5, 0.01, 100.0),
    ("spatial_batch1_fp32", "spatial", [1, 4, 3, 2], "fp32", 0.1, 1e-5, 2.0, 0.5),
    ("per_activation_fc_fp32", "per_activation", [5, 6], "fp32", 0.1, 1e-5, 2.0, 0.5),
    ("per_activation_2d_fp32", "per_activation", [4, 2, 3, 3], "fp32", 0.1, 1e-5, 2.0, 0.5),
    ("per_activation_2d_fp16", "per_activation", [3, 2, 2, 3], "fp16", 0.1, 1e-5, 2.0, 0.5),
    ("per_activation_3d_bf16", "per_activation", [4, 2, 2, 2, 2], "bf16", 0.1, 1e-5, 2.0, 0.5),
]


def prod(xs):
    p = 1
    for v in xs:
        p *= v
    return p


def data(vals, dtype, shape):
    """float64 tensor holding vals rounded to float32, then to dtype."""
    return torch.tensor(vals, dtype=torch.float32).to(dtype).double().reshape(shape)


def param(vals):
    return torch.tensor(vals, dtype=torch.float32).double()


def run_case(case):
    name, mode, shape, dt, momentum, eps, xs, xo = case
    dtype = DTYPES[dt]
    n, c = shape[0], shape[1]
    numel = prod(shape)
    feats = c if mode == "spatial" else numel // n
    # per activation: every (channel, position) is a feature of a [N, features] problem
    view = shape if mode == "spatial" else [n, feats]
    x = data(values(numel, 1, xs, xo), dtype, view).requires_grad_()
    dy = data(values(numel, 6), dtype, view)
    w = param(values(feats, 2, 0.5, 1.0)).requires_grad_()
    b = param(values(feats, 3)).requires_grad_()
    rm0 = param(values(feats, 4, 0.5))
    rv0 = param(values(feats, 5, 0.25, 1.0))

    rm, rv = rm0.clone(), rv0.clone()
    y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum, eps=eps)
    y.backward(dy)
    _, save_mean, save_invstd = torch.ops.aten.native_batch_norm(
        x.detach(), w.detach(), b.detach(), None, None, True, momentum, eps
    )
    # sanity: PyTorch's saved statistics are the biased batch statistics
    dims = [0] + list(range(2, x.dim()))
    mean = x.detach().mean(dim=dims)
    invstd = 1.0 / torch.sqrt(x.detach().var(dim=dims, unbiased=False) + eps)
    assert torch.allclose(save_mean, mean, rtol=1e-12, atol=1e-12), name
    assert torch.allclose(save_invstd, invstd, rtol=1e-10, atol=0.0), name
    y_infer = F.batch_norm(x.detach(), rm0, rv0, w.detach(), b.detach(), training=False, eps=eps)

    flat = lambda t: [float(v) for v in t.detach().reshape(-1).tolist()]
    return {
        "name": name, "mode": mode, "shape": shape, "dtype": dt, "momentum": momentum,
        "eps": eps, "x_scale": xs, "x_offset": xo,
        "y": flat(y), "running_mean": flat(rm), "running_var": flat(rv),
        "saved_mean": flat(save_mean), "saved_invstd": flat(save_invstd),
        "dx": flat(x.grad), "dscale": flat(w.grad), "dbias": flat(b.grad),
        "y_infer": flat(y_infer),
    }


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/golden/bn_golden.json"
    torch.set_num_threads(1)
    cases = [run_case(c) for c in CASES]
    for c in cases:
        for k in ("y", "dx", "y_infer", "running_var", "saved_invstd"):
            assert all(math.isfinite(v) for v in c[k]), (c["name"], k)
    doc = {"generator": "scripts/gen_golden_bn.py", "torch_version": torch.__version__, "cases": cases}
    with open(out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    print(f"wrote {len(cases)} cases to {out} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
