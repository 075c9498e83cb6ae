"""rdna1shim probe: finds which recorded convolution configurations run correctly on this GPU.

    rdna1shim probe --record FILE [--record FILE ...] --out ROUTES
                    [--timeout S] [--miopen PATH] [--hip PATH]
                    [--child PATH] [--python PYTHON] [--only ID[,ID...]] [--table FILE]

(also ``python -m rdna1shim probe``, and ``python3 scripts/probe.py`` in a source
checkout). FILE is what RDNA1SHIM_RECORD wrote (one convolution configuration a line;
several files are merged). Each configuration runs on the GPU in its own process
(``rdna1shim-probe``: the one inside the package, or a checkout's
``target/release/rdna1shim-probe``; ``--child`` or ``RDNA1SHIM_PROBE_CHILD`` choose
another), with the real libMIOpen and HIP runtime -- by default the ones PyTorch loads --
through the entry points the training used (Find + the classic call, or the
immediate-mode calls), on random inputs, and its output is compared with the shim's CPU
engine. A memory fault, an abort or a hang ends only that process. Verdicts:

    works    the output matches the CPU within the data type's tolerance  -> route gpu
    wrong    it ran but the output differs (max error shown)             -> route cpu
    crashes  the process died of a signal (the last message shown)        -> route cpu
    hangs    no answer within --timeout seconds of GPU time; killed        -> route cpu
    error    MIOpen or HIP returned an error status                        -> route cpu

ROUTES gets every configuration with its "route" (gpu only for works) for RDNA1SHIM_ROUTES;
a table of the verdicts is printed (and written to --table FILE). Run it before training,
never during: a GPU memory fault can reset the GPU and take down whatever else uses it.
Exit status: 0 when every configuration was probed, 1 when the probe could not run, 130
when interrupted (the routes probed so far are written).
"""
import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib

from ._library import how_to_get_probe_child, probe_child_path

# The members that identify a configuration (src/conv_config.rs); the rest is statistics.
KEY = ("op", "dtype", "mode", "x", "w", "y", "pad", "stride", "dilation", "groups", "deterministic")
# Largest output error, relative to the largest reference value, that still "works".
TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2, "bf16": 5e-2}
VERDICTS = ("works", "wrong", "crashes", "hangs", "error")


class ProbeError(Exception):
    """The probe cannot run; the message says why (and what to do)."""


def fail(msg):
    raise ProbeError(msg)


def read_records(paths):
    """Configurations of the record files in first-seen order, merged by identity."""
    configs, index = [], {}
    for path in paths:
        try:
            lines = open(path, encoding="utf-8").read().splitlines()
        except OSError as e:
            fail(f"cannot read the record {path}: {e}")
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                key = key_of(obj)
            except (ValueError, KeyError, TypeError) as e:
                print(f"probe: {path} line {n} is not a configuration ({e}); skipped", file=sys.stderr)
                continue
            if key in index:
                seen = configs[index[key]]
                seen["entry_points"] = sorted(set(seen.get("entry_points", [])) | set(obj.get("entry_points", [])))
                seen["calls"] = seen.get("calls", 0) + obj.get("calls", 0)
            else:
                index[key] = len(configs)
                obj.pop("route", None)
                configs.append(obj)
    return configs


def torch_lib_dir(python):
    """The lib folder of the PyTorch that `python` imports (without touching the GPU)."""
    code = "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else None


def find_lib(name, dirs):
    for d in dirs:
        hits = sorted(glob.glob(os.path.join(d, name + "*")))
        if hits:
            return hits[0]
    return None


def find_child(given):
    """The child program: ``--child``, else :func:`probe_child_path`."""
    if given:
        return os.path.abspath(given) if os.path.isfile(given) else fail(f"--child {given} does not exist")
    path = probe_child_path()
    if os.path.isfile(path):
        return path
    fail(f"the probe's child program {path} does not exist: {how_to_get_probe_child(path)} "
         "(--child PATH names another)")


def child_env():
    """This environment without the shim preloaded: the child must reach the real MIOpen."""
    env = dict(os.environ)
    pre = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if "rdna1shim" not in p]
    if pre:
        env["LD_PRELOAD"] = " ".join(pre)
    else:
        env.pop("LD_PRELOAD", None)
    return env


def entries_of(config):
    eps = set(config.get("entry_points") or [])
    seq = []
    if eps & {"find", "classic", "workspace"} or not eps & {"solutions", "compile", "immediate"}:
        seq.append("find")
    if eps & {"solutions", "compile", "immediate"}:
        seq.append("immediate")
    return seq, "compile" in eps


def signal_name(n):
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def run_child(cmd, env, timeout, reference_limit):
    """Runs one child; returns (returncode or None if killed, stdout lines, stderr lines,
    why it was killed, GPU seconds)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            stdin=subprocess.DEVNULL, start_new_session=True, text=True,
                            errors="replace")
    out, err, gpu_start = [], [], []

    def pump(stream, sink, watch):
        for line in stream:
            sink.append(line.rstrip("\n"))
            if watch and '"gpu_start"' in line:
                gpu_start.append(time.monotonic())

    readers = [threading.Thread(target=pump, args=(proc.stdout, out, True), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, err, False), daemon=True)]
    for r in readers:
        r.start()
    def kill():
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    start, killed = time.monotonic(), None
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if gpu_start and now - gpu_start[0] > timeout:
                killed = "hang"
            elif not gpu_start and now - start > reference_limit:
                killed = "reference"
            if killed:
                kill()
                break
            time.sleep(0.02)
    except BaseException:  # Ctrl-C: the child is in its own session and would live on
        kill()
        raise
    for r in readers:
        r.join(timeout=5)
    gpu_s = (time.monotonic() - gpu_start[0]) if gpu_start else 0.0
    return (None if killed else proc.returncode), out, err, killed, gpu_s


def last_message(err):
    lines = [l.strip() for l in err if l.strip()]
    return lines[-1] if lines else "(no message)"


def probe_one(config, child, miopen, hip, timeout, env):
    line = json.dumps({k: config[k] for k in KEY})
    seq, compile_ = entries_of(config)
    cmd = [child, "--miopen", miopen, "--config", line, "--seed", str(zlib.crc32(line.encode()) or 1)]
    if hip:
        cmd += ["--hip", hip]
    for e in seq:
        cmd += ["--entry", e]
    if compile_:
        cmd.append("--compile")
    rc, out, err, killed, gpu_s = run_child(cmd, env, timeout, max(600.0, 10 * timeout))
    events = []
    for l in out:
        try:
            events.append(json.loads(l))
        except ValueError:
            pass
    result = {"entries": "+".join(seq + (["compile"] if compile_ else [])), "gpu_s": gpu_s}
    if killed == "hang":
        return dict(result, verdict="hangs", detail=f"no answer within {timeout:g} s; last message: {last_message(err)}")
    if killed == "reference":
        return dict(result, verdict="error", detail="the CPU reference did not finish; nothing ran on the GPU")
    if rc < 0:
        return dict(result, verdict="crashes", detail=f"{signal_name(-rc)}; last message: {last_message(err)}")
    errors = [e["message"] for e in events if e.get("event") == "error"]
    results = [e for e in events if e.get("event") == "result"]
    if rc != 0 or errors or not results:
        why = errors[0] if errors else last_message(err)
        return dict(result, verdict="error", detail=f"exit status {rc}: {why}")
    tol = TOLERANCE.get(config.get("dtype"), 1e-3)
    worst = max(results, key=lambda e: float("inf") if e.get("max_err") is None else e["max_err"])
    err_v = worst.get("max_err")
    shown = "NaN/inf" if err_v is None else f"{err_v:.2e}"
    detail = f"max error {shown} (tolerance {tol:.0e})"
    if err_v is not None and err_v <= tol:
        return dict(result, verdict="works", max_err=err_v, detail=detail)
    return dict(result, verdict="wrong", max_err=err_v, detail=f"{detail} via {worst.get('entry')}")


def key_of(obj):
    return json.dumps({k: obj[k] for k in KEY}, sort_keys=True)


def write_routes(path, configs, results, keep_others):
    """Writes the routes file; with keep_others, the lines of an existing file whose
    configurations were not probed now are kept (re-probing a few with --only)."""
    lines = []
    for c, r in zip(configs, results):
        obj = dict(c)
        obj["route"] = "gpu" if r["verdict"] == "works" else "cpu"
        obj["verdict"] = r["verdict"]
        obj["probe"] = r["detail"]
        obj["probe_gpu_s"] = round(r["gpu_s"], 3)
        if "max_err" in r:
            obj["max_err"] = r["max_err"]
        lines.append(obj)
    if keep_others and os.path.exists(path):
        probed = {key_of(o) for o in lines}
        kept = []
        for line in open(path, encoding="utf-8"):
            try:
                old = json.loads(line)
                if key_of(old) not in probed:
                    kept.append(old)
            except (ValueError, KeyError, TypeError):
                pass
        lines = kept + lines
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for obj in lines:
            f.write(json.dumps(obj) + "\n")
    os.replace(tmp, path)


def table(configs, results):
    rows = [("#", "id", "op", "entries", "verdict", "gpu s", "detail", "configuration")]
    for i, (c, r) in enumerate(zip(configs, results), 1):
        detail = r["detail"] if len(r["detail"]) <= 100 else r["detail"][:97] + "..."
        rows.append((str(i), c.get("id", "?"), c.get("op", "?"), r["entries"], r["verdict"],
                     f"{r['gpu_s']:.1f}", detail, c.get("description", "")))
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[-1] for row in rows)


def main(argv=None, prog="rdna1shim probe"):
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="append", required=True, help="record file (RDNA1SHIM_RECORD); repeatable")
    ap.add_argument("--out", required=True, help="routes file to write (for RDNA1SHIM_ROUTES)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds of GPU time before a configuration counts as hanging (default 120: "
                         "MIOpen compiles kernels on first use)")
    ap.add_argument("--miopen", help="libMIOpen to probe (default: the one PyTorch loads, else ROCm's)")
    ap.add_argument("--hip", help="HIP runtime (default: the one that libMIOpen links)")
    ap.add_argument("--child", help="rdna1shim-probe executable (default: RDNA1SHIM_PROBE_CHILD, else the one "
                                    "inside the package, else a checkout's target/release/, else PATH)")
    ap.add_argument("--python", default=sys.executable, help="the Python whose PyTorch to follow")
    ap.add_argument("--only", help="comma-separated configuration ids to probe; the other lines of an "
                                   "existing --out file are kept")
    ap.add_argument("--table", help="also write the verdict table to this file")
    a = ap.parse_args(argv)
    try:
        return probe(a)
    except ProbeError as e:
        print(f"probe: {e}", file=sys.stderr)
        return 1


def probe(a):
    """Probes the configurations of ``a.record``; returns the exit status."""
    configs = read_records(a.record)
    if a.only:
        wanted = set(a.only.split(","))
        configs = [c for c in configs if c.get("id") in wanted]
    if not configs:
        fail("no configuration to probe (is the record empty? it is written when the recorded process exits)")
    child = find_child(a.child)
    miopen = a.miopen
    if not miopen:
        lib = torch_lib_dir(a.python)
        miopen = find_lib("libMIOpen.so", ([lib] if lib else []) + ["/opt/rocm/lib", "/opt/rocm/lib64"])
        if not miopen:
            fail("no libMIOpen found (looked in PyTorch's lib folder and /opt/rocm): pass --miopen PATH")
    hip = a.hip
    env = child_env()
    print(f"probe: {len(configs)} configurations on the GPU, one process each; MIOpen {miopen}, "
          f"HIP {hip or '(the one MIOpen links)'}, timeout {a.timeout:g} s, child {child}. A GPU memory "
          f"fault can reset the GPU: nothing else should use it now.", flush=True)
    results = []
    try:
        for i, c in enumerate(configs, 1):
            r = probe_one(c, child, miopen, hip, a.timeout, env)
            results.append(r)
            print(f"probe: [{i}/{len(configs)}] {c.get('id', '?')} {c.get('op', '?')}: {r['verdict']} "
                  f"({r['detail']})", flush=True)
    except KeyboardInterrupt:
        write_routes(a.out, configs[:len(results)], results, keep_others=True)
        print(f"probe: interrupted; routes of the {len(results)} configurations probed so far written to "
              f"{a.out} (the others follow the per-operation switches)", file=sys.stderr)
        return 130
    write_routes(a.out, configs, results, keep_others=bool(a.only))
    text = table(configs, results)
    print(text)
    if a.table:
        with open(a.table, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    counts = {v: sum(r["verdict"] == v for r in results) for v in VERDICTS}
    print(f"probe: {counts['works']} of {len(results)} configurations run on the GPU (works); "
          + ", ".join(f"{counts[v]} {v}" for v in VERDICTS[1:]) + " stay on the CPU.")
    print(f"probe: routes written to {a.out}; train with RDNA1SHIM_ROUTES={a.out} (and the shim preloaded).")
    return 0
