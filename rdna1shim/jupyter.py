"""``rdna1shim jupyter-kernel``: a Jupyter kernel whose Python runs with the shim preloaded.

Writes ``kernels/<name>/kernel.json`` into a Jupyter data directory, like ``python -m
ipykernel install`` does, with an ``env`` that sets ``LD_PRELOAD`` to the shim. The kernel
runs ``ipykernel_launcher`` with this package's Python (``--python`` chooses another);
ipykernel must be installed there. Where it goes:

* ``--user`` (the default): the user's Jupyter data directory -- ``$JUPYTER_DATA_DIR``, else
  ``$XDG_DATA_HOME/jupyter``, else ``~/.local/share/jupyter``;
* ``--sys-prefix``: ``<sys.prefix>/share/jupyter`` (this virtual environment's Jupyter);
* ``--prefix DIR``: ``DIR/share/jupyter``.

The kernel's ``LD_PRELOAD`` names only the shim: Jupyter replaces the variable rather than
extending it, so other preloads must be added with ``--env LD_PRELOAD=...`` in full.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

from ._library import how_to_get_it, library_path

DEFAULT_NAME = "rdna1shim"
DEFAULT_DISPLAY_NAME = "Python 3 (rdna1shim)"


def user_data_dir():
    """The user's Jupyter data directory, as jupyter_core computes it on Linux."""
    if os.environ.get("JUPYTER_DATA_DIR"):
        return os.environ["JUPYTER_DATA_DIR"]
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(xdg, "jupyter")


def kernel_spec(python, display_name, library, extra_env):
    """The kernel.json document."""
    env = {"LD_PRELOAD": library}
    env.update(extra_env)
    return {
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": display_name,
        "language": "python",
        "env": env,
        "metadata": {"debugger": True},
    }


def main(argv):
    ap = argparse.ArgumentParser(
        prog="rdna1shim jupyter-kernel",
        description="Write a Jupyter kernel spec whose Python starts with the shim preloaded.",
    )
    ap.add_argument("--name", default=DEFAULT_NAME,
                    help=f"kernel name: letters, digits, '.', '_', '-' (default {DEFAULT_NAME})")
    ap.add_argument("--display-name", default=DEFAULT_DISPLAY_NAME,
                    help=f"name shown in Jupyter's menus (default {DEFAULT_DISPLAY_NAME!r})")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true",
                       help="install for the current user (the default)")
    where.add_argument("--sys-prefix", action="store_true",
                       help="install into sys.prefix (this virtual environment)")
    where.add_argument("--prefix", metavar="DIR", help="install into DIR/share/jupyter/kernels")
    ap.add_argument("--python", default=sys.executable,
                    help="Python interpreter of the kernel (default: this one)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="another environment variable of the kernel (repeatable)")
    a = ap.parse_args(argv)

    if not re.fullmatch(r"[A-Za-z0-9._-]+", a.name):
        ap.error(f"invalid kernel name {a.name!r}: use letters, digits, '.', '_' and '-'")
    extra = {}
    for item in a.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            ap.error(f"--env takes KEY=VALUE, not {item!r}")
        extra[key] = value
    lib = library_path()
    if not os.path.isfile(lib):
        print(f"rdna1shim: {lib} does not exist: {how_to_get_it(lib)}", file=sys.stderr)
        return 1
    if a.prefix:
        data_dir = os.path.join(os.path.abspath(a.prefix), "share", "jupyter")
    elif a.sys_prefix:
        data_dir = os.path.join(sys.prefix, "share", "jupyter")
    else:
        data_dir = user_data_dir()
    # Jupyter looks kernels up by lower-case name.
    kernel_dir = os.path.join(data_dir, "kernels", a.name.lower())
    os.makedirs(kernel_dir, exist_ok=True)
    python = a.python if os.sep in a.python else (shutil.which(a.python) or a.python)
    python = os.path.abspath(python)
    spec = kernel_spec(python, a.display_name, lib, extra)
    path = os.path.join(kernel_dir, "kernel.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    print(f"Installed kernelspec {a.name.lower()} in {kernel_dir}")
    print(f"It runs {spec['argv'][0]} with LD_PRELOAD={lib}; "
          f"choose \"{a.display_name}\" in Jupyter's kernel menu.")
    try:
        probe = subprocess.run([python, "-c", "import ipykernel"], capture_output=True, timeout=60)
        has_ipykernel = probe.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        has_ipykernel = False
    if not has_ipykernel:
        print(f"Note: {python} cannot import ipykernel; install it there "
              f"({python} -m pip install ipykernel) before starting the kernel.")
    return 0
