#!/usr/bin/env python3
"""The call-path benchmark: convolutions called through MIOpen's public API with
librdna1shim.so preloaded (the speed a training script gets), against PyTorch's CPU
convolution on the same pass, measured in the same run.

    python3 scripts/bench_callpath.py [--threads N] [--layout nchw|nhwc]
        [--dtype fp32|fp16|bf16] [--modes nchw-fp32,nhwc-fp32,nchw-fp16,nhwc-bf16]
        [--gbps G] [--step] [--layer SUBSTRING] [--rounds R] [--min-ms MS]
        [--peer-dtype same|fp32] [--isa avx512|avx2|portable] [--markdown]

Our side is `callpath_bench` (built by `cargo build --release -p shim-tests`), a client of
the public HIP and MIOpen API running on the test doubles with LD_PRELOAD, exactly as
PyTorch calls MIOpen: device tensors, descriptors, the handle on a non-blocking stream,
the classic convolution calls; each call is timed until its stream is idle. FAKE_HIP_GBPS
(--gbps) makes every host<->device copy take bytes / bandwidth, like PCIe (12 GB/s is
PCIe 3.0 x16 / 4.0 x8 in practice, 24 GB/s 4.0 x16); 0 leaves copies as plain memcpy.

A GPU's copy engines take no CPU time, but the doubles' copies are memcpy on their
stream's worker thread. Where the machine has more cores than --threads, both sides run
on the first --threads cores and the workers on the others (FAKE_HIP_COPY_CPUS), so the
copies do not slow the engine as real ones would not; on a machine without spare cores
they share them, which understates what overlapping copies with compute gains.

PyTorch runs the same geometry in the same memory format: forward F.conv{1,2,3}d,
backward passes aten.convolution_backward with one output mask each. Its dtype is the
same as ours unless --peer-dtype fp32 (PyTorch's CPU fp16 convolutions are not what a
user would train with on a CPU). Sides alternate per round, each keeping its best.

Per layer-pass it prints the ratio (PyTorch time / ours: above 1 we are faster) and the
shim's breakdown of its best call: waiting for inputs (copies not overlapped), dtype and
layout conversion, the engine, the store (alpha/beta, conversion back), waiting for the
last results, and the chunks the call was cut into; `model` is the PCIe time the bytes of
the call need at --gbps, and `call/max` is the call's time over max(engine, model).

--isa caps both sides at one instruction set, as scripts/bench_vs_torch.py does: the shim
through RDNA1SHIM_MAX_ISA, PyTorch through ONEDNN_MAX_CPU_ISA and ATEN_CPU_CAPABILITY, so
the AVX2 desktops most users have can be measured on an AVX-512 machine.

--modes runs several layout-dtype modes one after the other and ends with a table of
their geomeans. --step runs instead every convolution of one training step (forward, backward-data
except for the first layer, backward-weights) of ResNet-18 (224x224), the CIFAR-10 ResNet-20
(32x32) and the MNIST CNN of PyTorch's examples, at --batch (32), and prints the totals. Before timing, it runs the
step at least --warmup-steps times (10), as the first steps of a training run would: the shim
tries a few chunk counts on the first nine calls of each configuration
(`src/plan_tuner.rs`) and keeps the fastest, and a layer that occurs once a step is
still trying them in its ninth step; the figure is the steady state after that.
--step --by-pass adds, for each distinct convolution-pass of the ResNet-18 step, our
best call against PyTorch with its breakdown and how often the step runs it, and the
totals weighted by those counts: where the step's time goes, pass by pass.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSES = ("forward", "backward_data", "backward_weights")
DSIZE = {"fp32": 4, "fp16": 2, "bf16": 2}
# The engine's instruction-set cap -> PyTorch's (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY).
PEER_ISA = {"avx512": ("AVX512_CORE", "avx512"), "avx2": ("AVX2", "avx2"), "portable": ("SSE41", "default")}


def find_driver():
    import glob
    bins = glob.glob(os.path.join(ROOT, "target", "release", "build", "shim-tests-*", "out", "bin",
                                  "callpath_bench"))
    if not bins:
        sys.exit("callpath_bench not found: cargo build --release -p shim-tests")
    return max(bins, key=os.path.getmtime)


class Ours:
    """callpath_bench with the shim preloaded: one layer-pass or sequence per request."""

    def __init__(self, driver, shim, threads, gbps, extra_env, copy_cpus=None):
        env = dict(os.environ)
        env.update({"LD_PRELOAD": shim, "RDNA1SHIM_THREADS": str(threads), "FAKE_HIP_DELAY_US": "0",
                    "FAKE_HIP_GBPS": str(gbps), "RDNA1SHIM_LOG": "warn"})
        if copy_cpus:
            env["FAKE_HIP_COPY_CPUS"] = ",".join(map(str, copy_cpus))
        env.update(extra_env)
        self.proc = subprocess.Popen([driver], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        ready = self.proc.stdout.readline()
        if "shim=yes" not in ready:
            sys.exit(f"callpath_bench did not load the shim: {ready.strip()!r}")
        self.next_id = 0

    def ask(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        ans = self.proc.stdout.readline()
        if not ans or ans.startswith("error"):
            sys.exit(f"callpath_bench failed on {line!r}: {ans.strip()!r}")
        return ans

    def layer(self, s, sd, layout, dtype):
        i = self.next_id
        self.next_id += 1
        nums = [s["n"], s["c_in"], s["c_out"], s["groups"]] + s["input"] + s["kernel"] + s["pad"] + \
            s["stride"] + s["dilation"]
        self.ask(f"layer {i} {layout} {dtype} {sd} " + " ".join(map(str, nums)))
        return i

    def time(self, lid, p, min_ms):
        return json.loads(self.ask(f"time {lid} {p} {min_ms}"))

    def seq(self, items, min_ms):
        return json.loads(self.ask(f"seq {min_ms} " + " ".join(f"{i}:{p}" for i, p in items)))

    def free(self, lid):
        self.ask(f"free {lid}")

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def list_layers(bench, layer):
    cmd = [bench, "--list"] + (["--layer", layer] if layer else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def spatial_dims(s):
    """1, 2 or 3: problems are stated in 3-D with leading unit dims."""
    for sd, lead in ((1, 2), (2, 1)):
        if all(s["input"][i] == 1 and s["kernel"][i] == 1 and s["pad"][i] == 0 and s["stride"][i] == 1
               and s["dilation"][i] == 1 for i in range(lead)):
            return sd
    return 3


def out_dims(s):
    return [(s["input"][i] + 2 * s["pad"][i] - s["dilation"][i] * (s["kernel"][i] - 1) - 1) // s["stride"][i] + 1
            for i in range(3)]


def shape2d(n, cin, cout, hw, k, stride=1, pad=0, groups=1, dil=1):
    return {"n": n, "c_in": cin, "c_out": cout, "groups": groups, "input": [1, hw, hw], "kernel": [1, k, k],
            "pad": [0, pad, pad], "stride": [1, stride, stride], "dilation": [1, dil, dil]}


def flops(s):
    o = out_dims(s)
    k = s["kernel"]
    return 2.0 * s["n"] * s["c_out"] * (s["c_in"] // s["groups"]) * k[0] * k[1] * k[2] * o[0] * o[1] * o[2]


def pass_bytes(s, p, dtype):
    """Bytes a call of pass p moves over PCIe: its inputs down, its output up."""
    o = out_dims(s)
    x = s["n"] * s["c_in"] * math.prod(s["input"])
    y = s["n"] * s["c_out"] * math.prod(o)
    w = s["c_out"] * (s["c_in"] // s["groups"]) * math.prod(s["kernel"])
    return DSIZE[dtype] * {"forward": x + w + y, "backward_data": y + w + x, "backward_weights": x + y + w}[p]


def torch_pass_timer(torch, s, p, layout, dtype, min_ms):
    """A function giving PyTorch's best ms on pass p of s over min_ms; None without PyTorch."""
    if torch is None:
        return None
    fn = torch_runner(torch, s, p, layout, dtype)

    def once():
        with torch.no_grad():
            return time_best(fn, min_ms)

    return once


def torch_runner(torch, s, p, layout, dtype):
    import torch.nn.functional as F
    sd = spatial_dims(s)
    sl = slice(3 - sd, 3)
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    o = out_dims(s)
    x = torch.randn([s["n"], s["c_in"]] + s["input"][sl]).to(dt)
    w = torch.randn([s["c_out"], s["c_in"] // s["groups"]] + s["kernel"][sl]).to(dt)
    dy = torch.randn([s["n"], s["c_out"]] + o[sl]).to(dt)
    if layout == "nhwc" and sd >= 2:
        fmt = torch.channels_last if sd == 2 else torch.channels_last_3d
        x, w, dy = (t.contiguous(memory_format=fmt) for t in (x, w, dy))
    stride, pad, dil, g = s["stride"][sl], s["pad"][sl], s["dilation"][sl], s["groups"]
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[sd]
    back = torch.ops.aten.convolution_backward
    if p == "forward":
        return lambda: conv(x, w, None, stride, pad, dil, g)
    mask = [True, False, False] if p == "backward_data" else [False, True, False]
    return lambda: back(dy, x, w, None, stride, pad, dil, False, [0] * sd, g, mask)


def time_best(fn, min_ms):
    fn()  # warm-up (oneDNN primitive creation)
    best, total, runs = float("inf"), 0.0, 0
    while runs < 3 or total * 1e3 < min_ms:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, total, runs = min(best, dt), total + dt, runs + 1
    return best * 1e3


def geomean(v):
    v = [x for x in v if x and x > 0]
    return math.exp(sum(math.log(x) for x in v) / len(v)) if v else float("nan")


def alternate(rounds, ours_fn, torch_fn):
    """Best of `rounds` alternating measurements of each side (who goes first alternates)."""
    mine, theirs = None, None
    for r in range(rounds):
        for side in (("ours", "torch") if r % 2 == 0 else ("torch", "ours")):
            if side == "ours":
                res = ours_fn()
                if mine is None or res["best_ms"] < mine["best_ms"]:
                    mine = res
            elif torch_fn is not None:
                t = torch_fn()
                theirs = t if theirs is None else min(theirs, t)
    return mine, theirs


def resnet18_step(n):
    """(name, shape, passes) of every convolution of a ResNet-18 training step at 224x224."""
    convs = [("conv1 3->64 7x7/2", shape2d(n, 3, 64, 224, 7, 2, 3), ("forward", "backward_weights"))]
    every = PASSES
    for i in range(4):
        convs.append((f"layer1.{i} 64 3x3", shape2d(n, 64, 64, 56, 3, 1, 1), every))
    for c, hw in ((128, 56), (256, 28), (512, 14)):
        convs.append((f"{c}.down 3x3/2", shape2d(n, c // 2, c, hw, 3, 2, 1), every))
        convs.append((f"{c}.proj 1x1/2", shape2d(n, c // 2, c, hw, 1, 2, 0), every))
        for i in range(3):
            convs.append((f"{c}.{i} 3x3", shape2d(n, c, c, hw // 2, 3, 1, 1), every))
    return convs


def cifar_resnet20_step(n):
    """(name, shape, passes) of every convolution of a CIFAR-10 ResNet-20 training step
    (32x32 images; three stages of three basic blocks at 16, 32 and 64 channels, the
    identity shortcuts padded with zero channels, as in the ResNet paper's CIFAR models)."""
    convs = [("conv1 3->16 3x3", shape2d(n, 3, 16, 32, 3, 1, 1), ("forward", "backward_weights"))]
    for i in range(6):
        convs.append((f"16.{i} 3x3", shape2d(n, 16, 16, 32, 3, 1, 1), PASSES))
    for c, hw in ((32, 32), (64, 16)):
        convs.append((f"{c}.down 3x3/2", shape2d(n, c // 2, c, hw, 3, 2, 1), PASSES))
        for i in range(5):
            convs.append((f"{c}.{i} 3x3", shape2d(n, c, c, hw // 2, 3, 1, 1), PASSES))
    return convs


def mnist_step(n):
    return [("conv1 1->32 3x3", shape2d(n, 1, 32, 28, 3), ("forward", "backward_weights")),
            ("conv2 32->64 3x3", shape2d(n, 32, 64, 26, 3), PASSES)]


def run_step_by_pass(a, ours, torch, peer_dtype):
    """Each distinct convolution-pass of the ResNet-18 step alone: ours (breakdown) and
    PyTorch, and the totals weighted by how often the step runs each."""
    counts, shapes = {}, {}
    for name, s, passes in resnet18_step(a.batch):
        shapes.setdefault(str(s), (name, s))
        for p in passes:
            counts[(str(s), p)] = counts.get((str(s), p), 0) + 1
    print(f"# ResNet-18 step by pass, batch {a.batch}, {a.layout} {a.dtype}, {a.threads} threads, "
          f"FAKE_HIP_GBPS={a.gbps or 'unlimited'}: ours ms (engine, wait in, wait out, chunks) against "
          f"PyTorch, x how often a step runs it")
    if a.markdown:
        print("| convolution | pass | x | ours ms | PyTorch ms | ratio | engine | wait in | wait out | chunks | model ms |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    tot = {"ours": 0.0, "torch": 0.0, "engine": 0.0, "model": 0.0}
    ids = {}
    for (key, p), m in counts.items():
        name, s = shapes[key]
        if key not in ids:
            ids[key] = ours.layer(s, spatial_dims(s), a.layout, a.dtype)
        torch_once = torch_pass_timer(torch, s, p, a.layout, peer_dtype, a.min_ms)
        mine, theirs = alternate(a.rounds, lambda: ours.time(ids[key], p, a.min_ms), torch_once)
        pr = mine.get("profile", {})
        model = pass_bytes(s, p, a.dtype) / (a.gbps * 1e9) * 1e3 if a.gbps else 0.0
        tot["ours"] += m * mine["best_ms"]
        tot["torch"] += m * (theirs or 0)
        tot["engine"] += m * pr.get("engine_ms", 0)
        tot["model"] += m * model
        cells = [name, p, str(m), f"{mine['best_ms']:.2f}", f"{theirs:.2f}" if theirs else "-",
                 f"{theirs / mine['best_ms']:.2f}x" if theirs else "-", f"{pr.get('engine_ms', 0):.2f}",
                 f"{pr.get('wait_in_ms', 0):.2f}", f"{pr.get('wait_out_ms', 0):.2f}",
                 str(int(pr.get("chunks", 0))), f"{model:.2f}"]
        if a.markdown:
            print("| " + " | ".join(cells) + " |")
        else:
            print(f"{name:<18} {p:<16} x{m}  ours {cells[3]:>7} ms  torch {cells[4]:>7} ms  {cells[5]:>6}"
                  f"  (engine {cells[6]}, wait in {cells[7]}, wait out {cells[8]}, chunks {cells[9]})"
                  f"  model {cells[10]}")
        sys.stdout.flush()
    ratio = f"{tot['torch'] / tot['ours']:.2f}x" if tot["torch"] else "-"
    print(f"# weighted totals: ours {tot['ours']:.1f} ms (engine {tot['engine']:.1f}), PyTorch "
          f"{tot['torch']:.1f} ms, ratio {ratio}, model {tot['model']:.1f} ms")


def run_step(a, ours, torch, peer_dtype):
    print(f"# training-step convolutions, batch {a.batch}, {a.layout} {a.dtype}, {a.threads} threads, "
          f"FAKE_HIP_GBPS={a.gbps or 'unlimited'}; peer: PyTorch CPU {peer_dtype}"
          f"{'; both sides capped at ' + a.isa if a.isa else ''}")
    if a.markdown:
        print("| network | convolution calls | ours ms | PyTorch ms | ratio | engine ms | convert+store ms "
              "| waiting for copies ms | model ms |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, convs in (("ResNet-18", resnet18_step(a.batch)), ("ResNet-20", cifar_resnet20_step(a.batch)),
                        ("MNIST CNN", mnist_step(a.batch))):
        items, fns, model = [], [], 0.0
        ids = []
        for _, s, passes in convs:
            lid = ours.layer(s, spatial_dims(s), a.layout, a.dtype)
            ids.append(lid)
            for p in passes:
                items.append((lid, p))
                model += pass_bytes(s, p, a.dtype) / (a.gbps * 1e9) * 1e3 if a.gbps else 0.0
                if torch is not None:
                    fns.append(torch_runner(torch, s, p, a.layout, peer_dtype))

        def torch_seq():
            with torch.no_grad():
                return time_best(lambda: [f() for f in fns], a.min_ms)

        # `seq` runs the list once untimed and at least three times timed.
        for _ in range(math.ceil(a.warmup_steps / 4)):
            ours.seq(items, 0)

        mine, theirs = alternate(a.rounds, lambda: ours.seq(items, a.min_ms),
                                 torch_seq if torch is not None else None)
        pr = mine.get("profile", {})
        cells = [name, str(len(items)), f"{mine['best_ms']:.1f}", f"{theirs:.1f}" if theirs else "-",
                 f"{theirs / mine['best_ms']:.2f}x" if theirs else "-", f"{pr.get('engine_ms', 0):.1f}",
                 f"{pr.get('convert_ms', 0) + pr.get('store_ms', 0):.1f}",
                 f"{pr.get('wait_in_ms', 0) + pr.get('wait_out_ms', 0):.1f}", f"{model:.1f}" if a.gbps else "-"]
        if a.markdown:
            print("| " + " | ".join(cells) + " |")
        else:
            print(f"{name:<10} {cells[1]:>3} calls  ours {cells[2]:>8} ms  torch {cells[3]:>8} ms  ratio {cells[4]:>7}"
                  f"  engine {cells[5]} ms  convert+store {cells[6]} ms  waits {cells[7]} ms  model {cells[8]} ms")
        sys.stdout.flush()
        for lid in ids:
            ours.free(lid)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw")
    ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    ap.add_argument("--modes", default="", help="comma-separated LAYOUT-DTYPE modes, e.g. nchw-fp32,nhwc-bf16")
    ap.add_argument("--peer-dtype", choices=("same", "fp32"), default="same",
                    help="PyTorch's dtype: the same as ours, or fp32")
    ap.add_argument("--gbps", type=float, default=0.0, help="FAKE_HIP_GBPS: modelled PCIe bandwidth (0: none)")
    ap.add_argument("--layer", default="")
    ap.add_argument("--step", action="store_true", help="training-step mode (ResNet-18, CIFAR ResNet-20 and MNIST CNN)")
    ap.add_argument("--by-pass", action="store_true",
                    help="with --step: each distinct ResNet-18 convolution-pass timed alone, weighted")
    ap.add_argument("--batch", type=int, default=32, help="batch of the training-step mode")
    ap.add_argument("--warmup-steps", type=int, default=10,
                    help="training-step mode: untimed steps first, so that the shim's chunk tuning is over")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-ms", type=float, default=150)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--bench", default=os.path.join(ROOT, "target", "release", "conv_bench"))
    ap.add_argument("--shim", default=os.path.join(ROOT, "target", "release", "librdna1shim.so"))
    ap.add_argument("--driver", default=None)
    ap.add_argument("--env", action="append", default=[], help="extra NAME=VALUE for our side")
    ap.add_argument("--isa", choices=sorted(PEER_ISA), default=os.environ.get("RDNA1SHIM_MAX_ISA", "").strip().lower() or None,
                    help="cap both sides at this instruction set: RDNA1SHIM_MAX_ISA for ours, "
                         "ONEDNN_MAX_CPU_ISA and ATEN_CPU_CAPABILITY for PyTorch (default: RDNA1SHIM_MAX_ISA, else none)")
    ap.add_argument("--no-pin", action="store_true",
                    help="do not keep the doubles' copies off the measured cores")
    a = ap.parse_args()
    # Both sides on the first --threads cores, the doubles' copy workers on the rest.
    cpus = sorted(os.sched_getaffinity(0))
    copy_cpus = None
    if not a.no_pin and len(cpus) > a.threads:
        os.sched_setaffinity(0, cpus[:a.threads])
        copy_cpus = cpus[a.threads:]
    if not os.path.exists(a.shim):
        sys.exit(f"{a.shim} not found: cargo build --release")
    driver = a.driver or find_driver()
    extra_env = dict(e.split("=", 1) for e in a.env)
    if a.isa:
        # oneDNN and ATen read these once, when torch is imported.
        os.environ["ONEDNN_MAX_CPU_ISA"], os.environ["ATEN_CPU_CAPABILITY"] = PEER_ISA[a.isa]
        extra_env.setdefault("RDNA1SHIM_MAX_ISA", a.isa)
    try:
        import torch
        torch.set_num_threads(a.threads)
        peer = f"PyTorch {torch.__version__} CPU"
        if a.isa:
            peer += f" (ONEDNN_MAX_CPU_ISA={os.environ['ONEDNN_MAX_CPU_ISA']}, engine capped at {a.isa})"
    except ImportError:
        torch, peer = None, None
    ours = Ours(driver, a.shim, a.threads, a.gbps, extra_env, copy_cpus)
    print(f"# cores: {'both sides on ' + str(cpus[:a.threads]) + ', copies on ' + str(copy_cpus) if copy_cpus else 'shared by the engine and the doubles copies (no spare cores)'}")
    if a.step:
        peer_dtype = a.dtype if a.peer_dtype == "same" else "fp32"
        (run_step_by_pass if a.by_pass else run_step)(a, ours, torch, peer_dtype)
        ours.close()
        return
    if not os.path.exists(a.bench):
        sys.exit(f"{a.bench} not found: cargo build --release --bin conv_bench")
    modes = [m.split("-") for m in a.modes.split(",")] if a.modes else [(a.layout, a.dtype)]
    summary = []
    for layout, dtype in modes:
        peer_dtype = dtype if a.peer_dtype == "same" else "fp32"
        summary.append((layout, dtype, peer_dtype) + run_layers(a, ours, torch, peer, layout, dtype, peer_dtype))
    ours.close()
    if len(summary) > 1:
        print()
        print(f"# summary: {a.threads} threads, FAKE_HIP_GBPS={a.gbps or 'unlimited'}")
        print("| mode | PyTorch dtype | geomean ratio | forward | backward-data | backward-weights | call / max(engine, model) |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for layout, dtype, pd, ratios, vs_max in summary:
            g = lambda v: f"{geomean(v):.2f}x" if v else "-"
            allr = [x for v in ratios.values() for x in v]
            print(f"| {layout} {dtype} | {pd} | {g(allr)} | {g(ratios.get('forward'))} | "
                  f"{g(ratios.get('backward_data'))} | {g(ratios.get('backward_weights'))} | "
                  f"{geomean(vs_max):.2f} (worst {max(vs_max):.2f}) |" if vs_max else "")


def print_bounds(bounds):
    """What the ratio could be if every call took only max(its engine, the link model):
    copies perfectly overlapped with the same engine; and if it took only the link model:
    an engine of no time at all. Both from the run's own measurements."""
    overlap = geomean([t / max(e, m) for t, e, m in bounds])
    link = [t / m for t, _, m in bounds if m > 0]
    slower = sum(1 for t, _, m in bounds if m > t)
    print(f"bound with perfect overlap (each call = max(its engine, model)): geomean {overlap:.2f}x")
    if link:
        print(f"bound of the link alone (each call = model): geomean {geomean(link):.2f}x; "
              f"{slower} of {len(bounds)} layer-passes need longer on the link than PyTorch's whole pass")


def run_layers(a, ours, torch, peer, layout, dtype, peer_dtype):
    """One table of every layer-pass in one layout and dtype; returns (ratios, call/max)."""
    print(f"# call path: {layout} {dtype}, {a.threads} threads, FAKE_HIP_GBPS={a.gbps or 'unlimited'}; "
          f"peer: {peer + ' ' + peer_dtype if peer else 'none (PyTorch not installed)'} {layout}; "
          f"best of {a.rounds} alternating rounds; ratio = PyTorch time / ours")
    cols = ["layer", "pass", "ours ms", "PyTorch ms", "ratio", "GFLOP/s", "wait in", "convert", "engine", "store",
            "wait out", "chunks", "model ms", "call/max"]
    if a.markdown:
        print("| " + " | ".join(cols) + " |")
        print("|---|---|" + "---:|" * (len(cols) - 2))
    ratios, vs_max = {}, []
    bounds = []  # (PyTorch ms, our engine ms, model ms) per layer-pass, for the bounds below
    geos = list_layers(a.bench, a.layer)
    layer_ids = {}
    for geo in geos:
        s, p = geo["shape"], geo["pass"]
        if geo["layer"] not in layer_ids:
            layer_ids[geo["layer"]] = ours.layer(s, spatial_dims(s), layout, dtype)
        lid = layer_ids[geo["layer"]]
        torch_once = torch_pass_timer(torch, s, p, layout, peer_dtype, a.min_ms)
        mine, theirs = alternate(a.rounds, lambda: ours.time(lid, p, a.min_ms), torch_once)
        ms = mine["best_ms"]
        pr = mine.get("profile", {})
        model = pass_bytes(s, p, dtype) / (a.gbps * 1e9) * 1e3 if a.gbps else 0.0
        over = ms / max(pr.get("engine_ms", 0), model) if max(pr.get("engine_ms", 0), model) > 0 else None
        if over:
            vs_max.append(over)
        ratio = theirs / ms if theirs else None
        if ratio:
            ratios.setdefault(p, []).append(ratio)
            bounds.append((theirs, pr.get("engine_ms", 0), model))
        cells = [geo["layer"], p, f"{ms:.3f}", f"{theirs:.3f}" if theirs else "-", f"{ratio:.2f}x" if ratio else "-",
                 f"{flops(s) / ms * 1e-6:.1f}"] + \
            [f"{pr.get(k, 0):.3f}" for k in ("wait_in_ms", "convert_ms", "engine_ms", "store_ms", "wait_out_ms")] + \
            [f"{pr.get('chunks', 0):.0f}", f"{model:.3f}" if a.gbps else "-", f"{over:.2f}" if over else "-"]
        if a.markdown:
            print("| " + " | ".join(cells) + " |")
        else:
            print("  ".join(cells))
        sys.stdout.flush()
    for lid in layer_ids.values():
        ours.free(lid)
    if ratios:
        allr = [x for v in ratios.values() for x in v]
        for p, v in ratios.items():
            print(f"geomean ratio {p}: {geomean(v):.2f}x")
        print(f"geomean ratio all passes: {geomean(allr):.2f}x over {len(allr)} layer-passes")
    if vs_max:
        print(f"call / max(engine, model): geomean {geomean(vs_max):.2f}, worst {max(vs_max):.2f}")
    if a.gbps and bounds and all(e > 0 for _, e, _ in bounds):
        print_bounds(bounds)
    print()
    return ratios, vs_max


if __name__ == "__main__":
    main()
