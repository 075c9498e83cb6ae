"""The ``rdna1shim`` command line (also ``python -m rdna1shim``).

    rdna1shim run COMMAND [ARGS...]     run COMMAND with the shim preloaded
    rdna1shim path                      print the path of librdna1shim.so
    rdna1shim doctor [OPTIONS]          check that the shim will work here
    rdna1shim probe [OPTIONS]           find which recorded convolutions work on the GPU
    rdna1shim jupyter-kernel [OPTIONS]  write a Jupyter kernel that preloads the shim

``run`` puts the shim first in ``LD_PRELOAD`` (keeping what is there) and then *becomes*
the command (``exec``, as ``env`` and ``nice`` do): the program keeps the launcher's
process id, so every signal sent to it -- Ctrl-C, a scheduler's SIGTERM -- reaches the
program itself, and the exit status its parent sees, death by a signal included, is the
program's own. Signal dispositions that Python changes at start-up (SIGPIPE, SIGXFSZ
ignored) are restored first, as a shell would leave them.
"""

import os
import signal
import sys

from ._library import how_to_get_it, library_path, preload_value

USAGE = """usage: rdna1shim COMMAND [ARGS...]

commands:
  run COMMAND [ARGS...]     run COMMAND with the shim preloaded (LD_PRELOAD)
  path                      print the path of librdna1shim.so
  doctor [OPTIONS]          check that the shim will work here
  probe --record FILE --out ROUTES [OPTIONS]
                            run each recorded convolution configuration on the GPU in
                            its own process; write the routes (RDNA1SHIM_ROUTES) file
  jupyter-kernel [OPTIONS]  write a Jupyter kernel that preloads the shim

`import rdna1shim` before `import torch` activates the shim inside a Python program.
`rdna1shim COMMAND --help` describes a command's options."""


def _library_or_complain():
    path = library_path()
    if os.path.isfile(path):
        return path
    print(f"rdna1shim: {path} does not exist: {how_to_get_it(path)}", file=sys.stderr)
    return None


def run(argv):
    """``rdna1shim run COMMAND [ARGS...]``: exec COMMAND with the shim preloaded."""
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: rdna1shim run [--] COMMAND [ARGS...]\n\n"
              "Runs COMMAND with librdna1shim.so first in LD_PRELOAD; arguments, exit status\n"
              "and signals pass through unchanged.", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    lib = _library_or_complain()
    if lib is None:
        return 1
    env = dict(os.environ)
    env["LD_PRELOAD"] = preload_value(lib, env.get("LD_PRELOAD", ""))
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        print(f"rdna1shim: {argv[0]}: command not found", file=sys.stderr)
        return 127
    except OSError as e:
        print(f"rdna1shim: {argv[0]}: {e.strerror}", file=sys.stderr)
        return 126


def path(argv):
    """``rdna1shim path``: print the library's path; exit 1 if it does not exist."""
    if argv:
        print("usage: rdna1shim path", file=sys.stderr)
        return 2
    lib = _library_or_complain()
    if lib is None:
        return 1
    print(lib)
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"rdna1shim {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        return run(rest)
    if command == "path":
        return path(rest)
    if command == "doctor":
        from . import doctor

        return doctor.main(rest)
    if command == "probe":
        from . import probe

        return probe.main(rest)
    if command == "jupyter-kernel":
        from . import jupyter

        return jupyter.main(rest)
    print(f"rdna1shim: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2
