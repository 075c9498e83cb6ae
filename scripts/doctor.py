#!/usr/bin/env python3
"""Runs `rdna1shim doctor` from this source checkout, without installing the package.

    python3 scripts/doctor.py [--shim PATH] [--miopen PATH] [--hip PATH] [--python PYTHON]

The doctor itself is rdna1shim/doctor.py; the shim checked by default is this checkout's
target/release/librdna1shim.so (or RDNA1SHIM_LIBRARY).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rdna1shim import doctor  # noqa: E402

if __name__ == "__main__":
    sys.exit(doctor.main())
