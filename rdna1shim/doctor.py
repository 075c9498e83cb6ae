"""rdna1shim doctor: checks that the shim will work for this machine and Python, and says
so in plain sentences that can be pasted into an issue.

    rdna1shim doctor [--shim PATH] [--miopen PATH] [--hip PATH] [--python PYTHON]

(also ``python -m rdna1shim doctor``, and ``python3 scripts/doctor.py`` in a source
checkout). It reports: the GPU architecture (from the kernel's KFD topology, or
rocminfo), where the libMIOpen and HIP runtime that PyTorch loads are, whether the
shim's symbols interpose (child processes load libMIOpen the way PyTorch does, one under
LD_PRELOAD and one after ``import rdna1shim``, and ask which library defines
miopenConvolutionForward), the effective RDNA1SHIM_* configuration, the routes file
(RDNA1SHIM_ROUTES) or, without one, where the probe that makes it is, and combinations
known to fail. Exit status 0 when nothing blocks use, 1 otherwise.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys

from ._library import PACKAGE_DIR, how_to_get_it, how_to_get_probe_child, library_path, probe_child_path
RDNA1 = {"gfx1010": "RX 5600/5700 (Navi 10)", "gfx1011": "Radeon Pro V520 (Navi 12)", "gfx1012": "RX 5500 (Navi 14)"}

findings = []  # (level, sentence); level: ok | note | warn | fail


def say(level, text):
    findings.append((level, text))
    print(f"[{level:>4}] {text}")


def gpu_archs():
    """gfx names of the GPUs, from /sys (no ROCm needed) or rocminfo."""
    names = []
    for props in glob.glob("/sys/class/kfd/kfd/topology/nodes/*/properties"):
        try:
            kv = dict(l.split(None, 1) for l in open(props) if len(l.split(None, 1)) == 2)
        except OSError:
            continue
        v = int(kv.get("gfx_target_version", "0").strip() or 0)
        if v:
            major, minor, step = v // 10000, (v // 100) % 100, v % 100
            names.append(f"gfx{major}{minor:x}{step:x}" if major < 10 else f"gfx{major}{minor}{step:x}")
    if not names and shutil.which("rocminfo"):
        out = subprocess.run(["rocminfo"], capture_output=True, text=True).stdout
        names = sorted({w for w in out.split() if w.startswith("gfx") and w[3:].isalnum()})
    return names


def torch_info(python):
    code = ("import json, os, torch; d=os.path.dirname(torch.__file__); "
            "print(json.dumps({'version': torch.__version__, 'hip': getattr(torch.version, 'hip', None), "
            "'lib': os.path.join(d, 'lib')}))")
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def find_lib(name, dirs):
    for d in dirs:
        hits = sorted(glob.glob(os.path.join(d, name + "*")))
        if hits:
            return hits[0]
    return None


PROBE = r"""
import ctypes, os, sys
RTLD_NOW, RTLD_LOCAL = 2, 0
miopen = sys.argv[1]
if sys.argv[2:] == ["import"]:
    import rdna1shim                                     # before MIOpen, as a script would
lib = ctypes.CDLL(miopen, mode=RTLD_NOW | RTLD_LOCAL)   # as PyTorch's extension modules do
proc = ctypes.CDLL(None)
try:
    proc.rdna1shim_version.restype = ctypes.c_char_p
    proc.rdna1shim_config_summary.restype = ctypes.c_char_p
    ver = proc.rdna1shim_version().decode()
    cfg = proc.rdna1shim_config_summary().decode()
except AttributeError:
    ver, cfg = None, None
class DlInfo(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p), ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]
print("VERSION", ver)
print("CONFIG", cfg)
try:
    addr = ctypes.cast(getattr(proc, "miopenConvolutionForward"), ctypes.c_void_p)
except AttributeError:  # only MIOpen's RTLD_LOCAL copy defines it: nothing interposes
    print("DEFINER (not in the global scope)")
    sys.exit(0)
info = DlInfo()
libc = ctypes.CDLL("libc.so.6")
libc.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
libc.dladdr(addr, ctypes.byref(info))
print("DEFINER", (info.fname or b"?").decode())
"""


def run_probe(python, miopen, shim, how):
    """Runs PROBE: ``how`` is "preload" (LD_PRELOAD) or "import" (``import rdna1shim``)."""
    env = dict(os.environ)
    env.setdefault("RDNA1SHIM_LOG", "warn")
    env.pop("LD_PRELOAD", None)
    if how == "preload":
        env["LD_PRELOAD"] = shim
    else:
        env["RDNA1SHIM_LIBRARY"] = shim
        parent = os.path.dirname(PACKAGE_DIR)
        env["PYTHONPATH"] = os.pathsep.join([parent] + [p for p in [env.get("PYTHONPATH")] if p])
    r = subprocess.run([python, "-c", PROBE, miopen, how], capture_output=True, text=True,
                       env=env, timeout=120)
    lines = dict(l.split(" ", 1) for l in r.stdout.splitlines() if " " in l)
    return r, lines


def routes_file(path):
    """Reads the routes file ``path`` as the shim will: (cpu, gpu) counts, or why the shim
    will not use it (the shim's own start-up log line has the last word)."""
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as e:
        return None, f"cannot read it ({e.strerror})"
    routes = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except ValueError:
            return None, f"line {n} is not a JSON object"
        route = obj.get("route") if isinstance(obj, dict) else None
        if route not in ("cpu", "gpu"):
            why = "has no \"route\" (a record, not routes?)" if isinstance(obj, dict) and "route" not in obj \
                else "has no \"route\" of \"cpu\" or \"gpu\""
            return None, f"line {n} {why}"
        routes.append(route)
    return (routes.count("cpu"), routes.count("gpu")), None


def check_routes():
    """One line on the routes file, or, without one, on the probe that makes it."""
    path = os.environ.get("RDNA1SHIM_ROUTES")
    if path:
        counts, why = routes_file(path)
        if counts is None:
            say("warn", f"RDNA1SHIM_ROUTES={path}: {why}; the shim will not use it, and every convolution follows the per-operation switches. Make one with `rdna1shim probe`.")
        else:
            gpu = f"{counts[1]} configuration{'' if counts[1] == 1 else 's'}"
            say("ok", f"RDNA1SHIM_ROUTES={path}: {gpu} to the GPU, {counts[0]} to the CPU (configurations not in it follow the per-operation switches).")
        return
    child = probe_child_path()
    if os.path.isfile(child):
        probe = f"its child program is {child}"
    else:
        probe = f"its child program {child} is missing: {how_to_get_probe_child(child)}"
    say("note", f"No routes file (RDNA1SHIM_ROUTES): convolutions follow the per-operation switches. To run on the GPU those that work there, record a run and probe it with `rdna1shim probe` ({probe}); see docs/routes.md.")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="rdna1shim doctor", description=__doc__.splitlines()[0])
    ap.add_argument("--shim", default=library_path(),
                    help="the shim library to check (default: %(default)s)")
    ap.add_argument("--miopen", help="libMIOpen to check (default: the one PyTorch bundles, else the ROCm one)")
    ap.add_argument("--hip", help="HIP runtime to check (default: found next to libMIOpen)")
    ap.add_argument("--python", default=sys.executable)
    a = ap.parse_args(argv)

    shim = os.path.abspath(a.shim)
    if os.path.exists(shim):
        say("ok", f"The shim library is {shim}.")
    else:
        say("fail", f"The shim library {shim} does not exist: {how_to_get_it(shim)}")

    archs = gpu_archs()
    rdna1 = [g for g in archs if g in RDNA1]
    if not archs:
        say("note", "No AMD GPU is visible (no KFD topology and no rocminfo): the shim has nothing to fix on this machine, though it can still be tested with its test doubles.")
    for g in archs:
        if g in RDNA1:
            say("ok", f"GPU {g} ({RDNA1[g]}) is RDNA1: MIOpen's convolution kernels crash on it, which is what the shim is for.")
        else:
            say("note", f"GPU {g} is not RDNA1: MIOpen's kernels should work on it; the shim is not needed, though it works.")
    if os.environ.get("HSA_OVERRIDE_GFX_VERSION"):
        say("warn", f"HSA_OVERRIDE_GFX_VERSION={os.environ['HSA_OVERRIDE_GFX_VERSION']} is set: the runtime then loads kernels built for another architecture, a common cause of crashes the shim cannot prevent outside convolutions.")

    t = torch_info(a.python)
    lib_dirs = []
    if t is None:
        say("note", f"PyTorch could not be imported by {a.python}: skipping the checks of what PyTorch loads.")
    else:
        if t["hip"]:
            say("ok", f"PyTorch {t['version']} is a ROCm build (HIP {t['hip']}).")
        else:
            say("warn", f"PyTorch {t['version']} is not a ROCm build: it never calls MIOpen, so the shim has nothing to intercept.")
        lib_dirs.append(t["lib"])
    lib_dirs += ["/opt/rocm/lib", "/opt/rocm/lib64", "/usr/lib/x86_64-linux-gnu"]
    miopen = a.miopen or find_lib("libMIOpen.so", lib_dirs)
    if miopen and os.path.exists(miopen):
        say("ok", f"libMIOpen: {miopen}")
    else:
        say("fail" if rdna1 else "note", "No libMIOpen was found (looked in PyTorch's lib folder and /opt/rocm); pass --miopen PATH.")
        miopen = None
    hip = a.hip or (find_lib("libamdhip64.so", [os.path.dirname(miopen)] + lib_dirs) if miopen else None)
    if hip:
        say("ok", f"HIP runtime: {hip} (the shim uses whichever copy the process has loaded; it never loads a second one).")

    if miopen and os.path.exists(shim):
        r, lines = run_probe(a.python, miopen, shim, "preload")
        if r.returncode != 0:
            say("fail", f"The probe process failed under LD_PRELOAD (exit {r.returncode}): {r.stderr.strip()[-400:]}")
        elif lines.get("VERSION", "None") == "None":
            say("fail", "The probe process did not see the shim although LD_PRELOAD named it: check the path and that it is a 64-bit ELF for this machine.")
        else:
            definer = lines.get("DEFINER", "?")
            if os.path.realpath(definer) == os.path.realpath(shim):
                say("ok", f"{lines['VERSION']} interposes: with libMIOpen loaded RTLD_LOCAL as PyTorch does, miopenConvolutionForward resolves to the shim.")
            else:
                say("fail", f"miopenConvolutionForward resolves to {definer}, not the shim: convolutions would still reach MIOpen.")
            say("ok", f"Effective configuration: {lines.get('CONFIG')}.")
            cfg = lines.get("CONFIG", "")
            if rdna1 and ("disabled" in cfg or "=gpu" in cfg.split(" threads")[0]):
                say("warn", "On this RDNA1 GPU, operations switched to gpu (or RDNA1SHIM_DISABLE=1) will reach MIOpen's crashing kernels.")
            r, lines = run_probe(a.python, miopen, shim, "import")
            definer = lines.get("DEFINER", "?")
            if r.returncode == 0 and os.path.realpath(definer) == os.path.realpath(shim):
                say("ok", "`import rdna1shim` before torch interposes too (no LD_PRELOAD needed).")
            else:
                why = r.stderr.strip()[-400:] if r.returncode != 0 else f"miopenConvolutionForward resolves to {definer}"
                say("warn", f"`import rdna1shim` in {a.python} does not activate the shim ({why}): use `rdna1shim run` or LD_PRELOAD instead.")
    check_routes()
    preload = os.environ.get("LD_PRELOAD", "")
    if "rdna1shim" not in preload:
        say("note", f"LD_PRELOAD does not name the shim in this shell; run training as `rdna1shim run python train.py`, as LD_PRELOAD={shim} python train.py, or with `import rdna1shim` as the script's first import.")

    failed = any(l == "fail" for l, _ in findings)
    print("doctor: " + ("something blocks use of the shim (see [fail] lines)." if failed else "nothing blocks use of the shim."))
    return 1 if failed else 0
