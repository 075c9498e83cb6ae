#!/usr/bin/env python3
"""Runs `rdna1shim probe` from this source checkout, without installing the package.

    python3 scripts/probe.py --record FILE [--record FILE ...] --out ROUTES
                             [--timeout S] [--miopen PATH] [--hip PATH]
                             [--child PATH] [--python PYTHON] [--only ID[,ID...]] [--table FILE]

The probe itself is rdna1shim/probe.py (docs/routes.md); the child program it runs by
default is this checkout's target/release/rdna1shim-probe (`cargo build --release`), or
RDNA1SHIM_PROBE_CHILD.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rdna1shim import probe  # noqa: E402

if __name__ == "__main__":
    sys.exit(probe.main(prog="scripts/probe.py"))
