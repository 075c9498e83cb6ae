"""Where the shim and the probe's child program are, and what a process has loaded.

Owns finding ``librdna1shim.so`` (``RDNA1SHIM_LIBRARY``, else the copy that ``pip install``
put inside this package, else the cargo build of the source checkout this package sits
in) and the probe's child program ``rdna1shim-probe`` (``RDNA1SHIM_PROBE_CHILD``, else the
packaged copy, else the checkout's build, else ``PATH``), reading a process's loaded
objects from ``/proc/<pid>/maps``, and composing an ``LD_PRELOAD`` value that puts the
shim first.
"""

import os
import shutil

LIBRARY_NAME = "librdna1shim.so"
PROBE_CHILD_NAME = "rdna1shim-probe"
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def checkout_root():
    """The source checkout this package folder belongs to, or None when installed."""
    root = os.path.dirname(PACKAGE_DIR)
    manifest = os.path.join(root, "Cargo.toml")
    try:
        with open(manifest, encoding="utf-8") as f:
            if 'name = "rdna1shim"' in f.read():
                return root
    except OSError:
        pass
    return None


def checkout_release_dir(root):
    """``target/release`` of a checkout (``$CARGO_TARGET_DIR/release`` when that is set)."""
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(root, "target")
    return os.path.abspath(os.path.join(root, target, "release"))


def packaged_library():
    """Where ``pip install`` puts the library: inside this package."""
    return os.path.join(PACKAGE_DIR, LIBRARY_NAME)


def library_path():
    """Absolute path of the shim library (it may not exist; callers say so).

    1. ``RDNA1SHIM_LIBRARY``, when set;
    2. the library inside this package (``pip install``);
    3. in a source checkout, ``target/release/librdna1shim.so`` (``cargo build --release``;
       ``$CARGO_TARGET_DIR/release`` when that is set).
    """
    override = os.environ.get("RDNA1SHIM_LIBRARY")
    if override:
        return os.path.abspath(override)
    packaged = packaged_library()
    if os.path.isfile(packaged):
        return packaged
    root = checkout_root()
    if root is not None:
        return os.path.join(checkout_release_dir(root), LIBRARY_NAME)
    return packaged


def how_to_get_it(path):
    """One sentence telling the user how to obtain the library at ``path``."""
    if os.environ.get("RDNA1SHIM_LIBRARY"):
        return "RDNA1SHIM_LIBRARY names a file that does not exist: correct or unset it."
    if path == packaged_library() and checkout_root() is None:
        return "the package was installed without its library: reinstall it (pip install --force-reinstall rdna1shim)."
    return "build it with `cargo build --release` in the source checkout, or install the package with `pip install .`."


def packaged_probe_child():
    """Where ``pip install`` puts the probe's child program: inside this package."""
    return os.path.join(PACKAGE_DIR, PROBE_CHILD_NAME)


def probe_child_path():
    """Absolute path of ``rdna1shim-probe``, the program ``rdna1shim probe`` runs once per
    configuration (it may not exist; callers say so).

    1. ``RDNA1SHIM_PROBE_CHILD``, when set;
    2. the program inside this package (``pip install``), next to the library;
    3. in a source checkout, ``target/release/rdna1shim-probe`` (``cargo build --release``;
       ``$CARGO_TARGET_DIR/release`` when that is set), when it exists;
    4. ``rdna1shim-probe`` on ``PATH`` (``cargo install``).
    """
    override = os.environ.get("RDNA1SHIM_PROBE_CHILD")
    if override:
        return os.path.abspath(override)
    packaged = packaged_probe_child()
    if os.path.isfile(packaged):
        return packaged
    root = checkout_root()
    built = os.path.join(checkout_release_dir(root), PROBE_CHILD_NAME) if root else None
    if built and os.path.isfile(built):
        return built
    on_path = shutil.which(PROBE_CHILD_NAME)
    if on_path:
        return os.path.abspath(on_path)
    return built or packaged


def how_to_get_probe_child(path):
    """One sentence telling the user how to obtain the probe's child program at ``path``."""
    if os.environ.get("RDNA1SHIM_PROBE_CHILD"):
        return "RDNA1SHIM_PROBE_CHILD names a file that does not exist: correct or unset it."
    if path == packaged_probe_child() and checkout_root() is None:
        return "the package was installed without it: reinstall it (pip install --force-reinstall rdna1shim)."
    return "build it with `cargo build --release` in the source checkout, or install the package with `pip install .`."


def loaded_objects(pid="self"):
    """Paths of the files mapped into a process, in order of first appearance."""
    seen = []
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split(None, 5)
            if len(parts) < 6 or not parts[5].startswith("/"):
                continue
            path = parts[5]
            if path.endswith(" (deleted)"):
                path = path[: -len(" (deleted)")]
            if path not in seen:
                seen.append(path)
    return seen


def is_miopen(path):
    return os.path.basename(path).startswith("libMIOpen.so")


def is_shim(path):
    return os.path.basename(path).startswith("librdna1shim")


def preload_value(library, existing=""):
    """``LD_PRELOAD`` with ``library`` first, keeping every other entry of ``existing``.

    ld.so separates entries with colons or spaces; an entry naming the same file as
    ``library`` is dropped so the shim is not preloaded twice.
    """
    entries = [e for e in existing.replace(":", " ").split() if e]
    real = os.path.realpath(library)
    rest = [e for e in entries if e != library and os.path.realpath(e) != real]
    return ":".join([library] + rest)
