"""rdna1shim: MIOpen's convolutions on the CPU, for AMD RDNA1 GPUs (gfx1010/1011/1012).

Importing this package activates the shim in the running process, so that a script or a
notebook needs no ``LD_PRELOAD``::

    import rdna1shim      # first, before torch
    import torch

The library is loaded with ``RTLD_GLOBAL | RTLD_NOW``: it joins the process's global
symbol scope, which the dynamic linker searches before the local scope of every library
loaded afterwards -- including libMIOpen, which PyTorch's extension modules bring in with
``RTLD_LOCAL`` -- so their references to MIOpen's convolution functions bind to the shim.
References bound before the import (torch imported first: Python loads extension modules
with ``RTLD_NOW``, which binds every symbol at load) cannot be redirected; the import then
leaves the process alone and warns (:class:`RDNA1ShimWarning`) with the fix.

Other ways in: ``rdna1shim run python train.py`` (preloads the shim), ``rdna1shim
jupyter-kernel`` (a Jupyter kernel that does), ``rdna1shim doctor``; see ``rdna1shim --help``.
"""

import ctypes
import os
import warnings

from ._library import is_miopen, is_shim, library_path, loaded_objects

__version__ = "0.1.0"
__all__ = ["RDNA1ShimWarning", "activate", "active", "library_path", "status"]


class RDNA1ShimWarning(RuntimeWarning):
    """The shim could not be activated by ``import rdna1shim``."""


_handle = None
_status = "not activated"


def status():
    """How the shim came to be (or not to be) in this process, in words."""
    return _status


def active():
    """Whether the shim is loaded in this process (preloaded or by ``import rdna1shim``)."""
    try:
        return any(is_shim(p) for p in loaded_objects())
    except OSError:
        return _handle is not None


def activate():
    """Loads the shim into this process unless it is there already; returns :func:`active`.

    Runs on ``import rdna1shim``. Warns, and loads nothing, when libMIOpen is already loaded
    (its callers are bound to it by then) or the library is missing.
    """
    global _handle, _status
    try:
        objects = loaded_objects()
    except OSError:  # no /proc: nothing to learn from it; load the shim
        objects = []
    shim = next((p for p in objects if is_shim(p)), None)
    if shim is not None:
        if _handle is None:
            _status = f"already loaded in this process (LD_PRELOAD): {shim}"
        return True
    miopen = next((p for p in objects if is_miopen(p)), None)
    if miopen is not None:
        _status = f"not loaded: libMIOpen was loaded first ({miopen})"
        warnings.warn(
            f"rdna1shim: libMIOpen is already loaded in this process ({miopen}), so the shim "
            "cannot come before it and was NOT activated: convolutions will reach MIOpen's "
            "kernels, which crash on RDNA1. Fix: `import rdna1shim` before `import torch` "
            "(the first import of the script; in Jupyter restart the kernel and make it the "
            "first cell, or use a kernel made by `rdna1shim jupyter-kernel`), or start the "
            "program with `rdna1shim run python ...`.",
            RDNA1ShimWarning,
            stacklevel=2,
        )
        return False
    path = library_path()
    if not os.path.isfile(path):
        from ._library import how_to_get_it

        _status = f"not loaded: {path} does not exist"
        warnings.warn(
            f"rdna1shim: the shim library {path} does not exist, so the shim was NOT "
            f"activated: {how_to_get_it(path)}",
            RDNA1ShimWarning,
            stacklevel=2,
        )
        return False
    try:
        _handle = ctypes.CDLL(path, mode=os.RTLD_GLOBAL | os.RTLD_NOW)
    except OSError as e:
        _status = f"not loaded: {e}"
        warnings.warn(
            f"rdna1shim: loading {path} failed ({e}), so the shim was NOT activated.",
            RDNA1ShimWarning,
            stacklevel=2,
        )
        return False
    _status = f"loaded by import rdna1shim: {path}"
    return True


activate()
