#!/usr/bin/env python3
"""Side-by-side benchmark: rdna1shim's CPU engine against PyTorch's CPU convolution
(oneDNN), same machine, same thread count, measured in the same run.

    python3 scripts/bench_vs_torch.py [--threads N] [--layer SUBSTRING] [--bench PATH]
                                      [--isa avx512|avx2|portable] [--rounds R] [--min-ms MS]
                                      [--wait-idle S] [--batch N] [--set cifar] [--markdown]

The layer list comes from the engine's own benchmark (`conv_bench --list`, built with
`cargo build --release --bin conv_bench`), which prints each layer's geometry. For each
layer-pass the script alternates R times between the engine (`conv_bench --serve`, a
long-lived process) and PyTorch on exactly that geometry, keeping each side's best, so
that the machine's slow spells hit both sides alike; the table is printed at the end
(progress goes to stderr). PyTorch runs:
  forward          F.conv{1,2,3}d
  backward_data    aten.convolution_backward, grad-input only (= a transposed conv forward)
  backward_weights aten.convolution_backward, grad-weight only
Without PyTorch installed it prints the engine's numbers only.

--isa caps both sides at the same instruction set, so that e.g. the AVX2 engine can be
measured like-for-like on an AVX-512 machine: the engine through `conv_bench --isa`
(RDNA1SHIM_MAX_ISA), PyTorch through oneDNN's ONEDNN_MAX_CPU_ISA and ATen's
ATEN_CPU_CAPABILITY, set before torch is imported (avx2 -> AVX2 / avx2, avx512 ->
AVX512_CORE / avx512, portable -> SSE41 / default). Without --isa it follows
RDNA1SHIM_MAX_ISA when that is set, else both sides use the best the CPU has. The FMA peak
is measured at the engine's instruction set.

--batch N runs every layer at batch N instead of its own (e.g. 32, a training step's).
--set cifar measures the six distinct convolutions of CIFAR-10's ResNet-20 (batch 32)
instead of the yardstick.

--wait-idle S makes every measurement wait (up to S seconds) until the machine has been
idle for half a second, for machines shared with other work (Linux only).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The engine's instruction-set cap -> (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY).
PEER_ISA = {"avx512": ("AVX512_CORE", "avx512"), "avx2": ("AVX2", "avx2"), "portable": ("SSE41", "default")}


class Ours:
    """The engine's benchmark in `--serve` mode: one timed layer-pass per request."""

    def __init__(self, bench, threads, min_ms, isa, batch=None, layer_set=None):
        cmd = [bench, "--serve", "--threads", str(threads), "--min-ms", str(min_ms)]
        if layer_set:
            cmd += ["--set", layer_set]
        if isa:
            cmd += ["--isa", isa]
        if batch:
            cmd += ["--batch", str(batch)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def time(self, layer, p):
        self.proc.stdin.write(f"{layer}\t{p}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            sys.exit("conv_bench --serve stopped")
        return json.loads(line)

    def peak(self):
        """The threads' FMA peak and the instruction set the engine runs at."""
        self.proc.stdin.write("peak\n")
        self.proc.stdin.flush()
        res = json.loads(self.proc.stdout.readline())
        return res["peak_gflops"], res.get("isa", "?")

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def list_layers(bench, layer, batch=None, layer_set=None):
    cmd = [bench, "--list"] + (["--layer", layer] if layer else []) + (["--batch", str(batch)] if batch else [])
    cmd += ["--set", layer_set] if layer_set else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def spatial_dims(s):
    """1, 2 or 3: the engine pads lower-dimensional problems with leading unit dims."""
    for sd, lead in ((1, 2), (2, 1)):
        if all(s["input"][i] == 1 and s["kernel"][i] == 1 and s["pad"][i] == 0 and s["stride"][i] == 1
               and s["dilation"][i] == 1 for i in range(lead)):
            return sd
    return 3


def torch_runner(torch, s, p):
    import torch.nn.functional as F
    sd = spatial_dims(s)
    sl = slice(3 - sd, 3)
    x = torch.randn([s["n"], s["c_in"]] + s["input"][sl])
    w = torch.randn([s["c_out"], s["c_in"] // s["groups"]] + s["kernel"][sl])
    dy = torch.randn([s["n"], s["c_out"]] + s["output"][sl])
    stride, pad, dil, g = s["stride"][sl], s["pad"][sl], s["dilation"][sl], s["groups"]
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[sd]
    back = torch.ops.aten.convolution_backward
    if p == "forward":
        return lambda: conv(x, w, None, stride, pad, dil, g)
    mask = [True, False, False] if p == "backward_data" else [False, True, False]
    return lambda: back(dy, x, w, None, stride, pad, dil, False, [0] * sd, g, mask)


def cpu_idle_share(dt=0.5):
    """Share of the machine's CPU time that was idle over the next `dt` seconds."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v), v[3] + v[4]
    t0, i0 = sample()
    time.sleep(dt)
    t1, i1 = sample()
    return (i1 - i0) / max(1, t1 - t0)


def wait_idle(limit_s):
    """Waits until the machine is (nearly) idle, for at most `limit_s` seconds."""
    if limit_s <= 0 or not os.path.exists("/proc/stat"):
        return
    end = time.monotonic() + limit_s
    while time.monotonic() < end and cpu_idle_share() < 0.9:
        time.sleep(1.0)


def time_best(fn, min_ms):
    fn()  # warm-up (oneDNN primitive creation)
    best, total, runs = float("inf"), 0.0, 0
    while runs < 3 or total * 1e3 < min_ms:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, total, runs = min(best, dt), total + dt, runs + 1
    return best


def geomean(v):
    v = [x for x in v if x > 0]
    return math.exp(sum(math.log(x) for x in v) / len(v)) if v else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--layer", default="")
    ap.add_argument("--batch", type=int, default=None, help="every layer at this batch instead of its own")
    ap.add_argument("--set", dest="layer_set", choices=("yardstick", "cifar"), default=None,
                    help="the layers: the yardstick (default) or CIFAR-10's ResNet-20")
    ap.add_argument("--bench", default=os.path.join(ROOT, "target", "release", "conv_bench"))
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating measurements of each side per layer-pass (best kept)")
    ap.add_argument("--min-ms", type=float, default=150, help="time spent per measurement")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="S",
                    help="before each measurement wait up to S seconds for an idle machine")
    ap.add_argument("--isa", choices=sorted(PEER_ISA), default=os.environ.get("RDNA1SHIM_MAX_ISA", "").strip().lower() or None,
                    help="cap both sides at this instruction set (default: RDNA1SHIM_MAX_ISA, else none)")
    a = ap.parse_args()
    if not os.path.exists(a.bench):
        sys.exit(f"{a.bench} not found: cargo build --release --bin conv_bench")
    if a.isa and a.isa not in PEER_ISA:
        sys.exit(f"unknown instruction set {a.isa!r} (use avx512, avx2 or portable)")
    if a.isa:
        # oneDNN and ATen read these once, when torch is imported.
        os.environ["ONEDNN_MAX_CPU_ISA"], os.environ["ATEN_CPU_CAPABILITY"] = PEER_ISA[a.isa]
    try:
        import torch
        torch.set_num_threads(a.threads)
        peer = f"PyTorch {torch.__version__} CPU (oneDNN {torch.backends.mkldnn.is_available()}"
        if a.isa:
            peer += f", ONEDNN_MAX_CPU_ISA={os.environ['ONEDNN_MAX_CPU_ISA']}"
        peer += f", ATen {torch.backends.cpu.get_cpu_capability()})"
    except ImportError:
        torch, peer = None, None
    ours = Ours(a.bench, a.threads, a.min_ms, a.isa, a.batch, a.layer_set)
    wait_idle(a.wait_idle)
    peak, isa = ours.peak()
    ratios, rows = {}, []
    for geo in list_layers(a.bench, a.layer, a.batch, a.layer_set):
        flops = geo["flops"]
        fn = None
        if torch is not None:
            fn = torch_runner(torch, geo["shape"], geo["pass"])
        # Alternate who goes first so that a slow spell of the machine
        # (frequency, neighbours) hits both sides alike.
        mine, theirs, extra = 0.0, None, None
        for r in range(a.rounds):
            order = ("ours", "torch") if r % 2 == 0 else ("torch", "ours")
            for side in order:
                wait_idle(a.wait_idle)
                if side == "ours":
                    res = ours.time(geo["layer"], geo["pass"])
                    mine = max(mine, res["gflops"])
                    extra = res["extra_mib"] if extra is None else max(extra, res["extra_mib"] or 0)
                elif fn is not None:
                    with torch.no_grad():
                        g = flops / time_best(fn, a.min_ms) / 1e9
                    theirs = g if theirs is None else max(theirs, g)
        ratio = mine / theirs if theirs else None
        if ratio:
            ratios.setdefault(geo["pass"], []).append(ratio)
        rows.append((geo, mine, theirs, ratio, extra))
        # Progress (the table comes at the end, against the best peak seen).
        print(f"{geo['layer']} {geo['pass']}: ours {mine:.1f} GFLOP/s, PyTorch "
              f"{f'{theirs:.1f}' if theirs else '-'}", file=sys.stderr, flush=True)
    # The peak again, keeping the higher: a busy machine only lowers it.
    wait_idle(a.wait_idle)
    peak = max(filter(None, [peak, ours.peak()[0]]), default=None)
    ours.close()
    pct = (lambda g: f"{100 * g / peak:.0f}%") if peak else (lambda g: "-")
    print(f"# {a.threads} threads; engine instruction set: {isa}; peer: {peer or 'none (PyTorch not installed)'}; "
          f"best of {a.rounds} alternating rounds each; FMA peak of the threads at {isa} "
          f"(the higher of two probes, at the start and at the end): "
          f"{f'{peak:.0f} GFLOP/s' if peak else 'unknown'}")
    if a.markdown:
        print("| layer | pass | ours GFLOP/s | PyTorch GFLOP/s | ratio | ours % peak | PyTorch % peak | ours extra MiB |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
    for geo, mine, theirs, ratio, extra in rows:
        cells = [geo["layer"], geo["pass"], f"{mine:.1f}", f"{theirs:.1f}" if theirs else "-",
                 f"{ratio:.2f}x" if ratio else "-", pct(mine), pct(theirs) if theirs else "-",
                 f"{extra}" if extra is not None else "-"]
        if a.markdown:
            print("| " + " | ".join(cells) + " |")
        else:
            print(f"{cells[0]:<40} {cells[1]:>16} ours {cells[2]:>7} ({cells[5]:>4})  torch {cells[3]:>7} ({cells[6]:>4})"
                  f"  ratio {cells[4]:>7}  extra {cells[7]:>6} MiB")
    if ratios:
        allr = [x for v in ratios.values() for x in v]
        for p, v in ratios.items():
            print(f"geomean ratio {p}: {geomean(v):.2f}x")
        print(f"geomean ratio all passes: {geomean(allr):.2f}x over {len(allr)} layer-passes")


if __name__ == "__main__":
    main()
