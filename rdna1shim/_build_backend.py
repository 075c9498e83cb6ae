"""PEP 517 build backend of ``pip install .`` (named by pyproject.toml; not used at run time).

It is setuptools' own backend (setuptools-rust builds the crate's cdylib), with one
difference: setuptools names an extension ``<name><EXT_SUFFIX>``, e.g.
``librdna1shim.cpython-311-x86_64-linux-gnu.so``, as if Python imported it. The shim is
not a Python module -- it is loaded by ``LD_PRELOAD`` or ``ctypes`` -- so its file keeps
the plain name ``librdna1shim.so``, through setuptools' ``SETUPTOOLS_EXT_SUFFIX``.
"""

import os

os.environ["SETUPTOOLS_EXT_SUFFIX"] = ".so"

from setuptools.build_meta import *  # noqa: E402,F401,F403
from setuptools.build_meta import __all__  # noqa: E402,F401
