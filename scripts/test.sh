#!/usr/bin/env bash
# Runs every test: the crate's unit tests (engine, layouts, descriptors), golden vectors,
# and the shim-tests harness (test doubles + LD_PRELOAD runs in child processes).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --all-targets
cargo test --release --workspace "$@"
