#!/usr/bin/env bash
# Builds the shim and the test doubles, then runs a PyTorch-style training step through
# the shim with per-call logging: the fake MIOpen's convolution kernels crash like RDNA1's,
# so the step only finishes if the shim computed every convolution on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release -p shim-tests --bin demo -- "$@"
