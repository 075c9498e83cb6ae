#!/usr/bin/env bash
# Installs the Python package the way a user does -- `pip install .` into a fresh virtual
# environment -- and runs the package's tests against that installation: the `rdna1shim`
# console script, the packaged librdna1shim.so, `rdna1shim run` and `import rdna1shim`
# reaching the shim with the test doubles, the doctor, the Jupyter kernel spec.
#
# Needs python3 with venv, and PyPI (pip fetches setuptools and setuptools-rust to build).
# Run after scripts/test.sh: the doubles come from that build, and cargo's build of the
# crate is reused from ./target (CARGO_TARGET_DIR), so pip only compiles the cdylib.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d "${TMPDIR:-/tmp}/rdna1shim-venv.XXXXXX")"
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
echo "pip install . into $venv"
"$venv/bin/pip" install --disable-pip-version-check --quiet .
SHIM_TESTS_VENV="$venv" cargo test --release -p shim-tests --test python_package -- \
  --ignored installed_package_in_a_virtual_environment
