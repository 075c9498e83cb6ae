#!/usr/bin/env python3
"""What cutting a call into chunks costs the engine: the same layer-passes called
through MIOpen's API with one chunk and with --chunks chunks (RDNA1SHIM_CHUNKS), the two
alternating, each keeping its best call, and the shim's own breakdown of that call.

    python3 scripts/bench_chunking.py [--threads N] [--chunks K] [--gbps G] [--rounds R]
        [--isolate] [--shim PATH] [--driver PATH]

Chunks let the copies of one chunk overlap the computation of another, but each chunk
is a separate engine call over a few images. The engine's time with K chunks over its
time with one is that cost. The doubles' copies are memcpy on CPU threads; with
--isolate both runs use one core fewer than --threads and the copies get that core
(FAKE_HIP_COPY_CPUS), which separates what the copies take from the engine's cores
from what the chunking itself costs. Needs `cargo build --release --workspace`.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_callpath as B  # noqa: E402

LAYERS = (
    ("resnet18 64 3x3 56 b32 forward", B.shape2d(32, 64, 64, 56, 3, 1, 1), "forward"),
    ("resnet18 64 3x3 56 b32 backward_weights", B.shape2d(32, 64, 64, 56, 3, 1, 1), "backward_weights"),
    ("resnet18 stem 7x7/2 224 b32 forward", B.shape2d(32, 3, 64, 224, 7, 2, 3), "forward"),
)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--chunks", type=int, default=5)
    ap.add_argument("--gbps", type=float, default=12.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-ms", type=float, default=300)
    ap.add_argument("--isolate", action="store_true",
                    help="one core fewer for the engine, that core for the doubles' copies")
    ap.add_argument("--shim", default=os.path.join(B.ROOT, "target", "release", "librdna1shim.so"))
    ap.add_argument("--driver", default=None)
    a = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    threads, copy_cpus = a.threads, None
    if a.isolate:
        if len(cpus) < 2:
            sys.exit("--isolate needs at least two cores")
        threads = min(a.threads, len(cpus) - 1)
        os.sched_setaffinity(0, cpus[:threads])
        copy_cpus = cpus[threads:]
    driver = a.driver or B.find_driver()
    sides = {}
    for k in (1, a.chunks):
        o = B.Ours(driver, os.path.abspath(a.shim), threads, a.gbps, {"RDNA1SHIM_CHUNKS": str(k)}, copy_cpus)
        sides[k] = (o, [o.layer(s, 2, "nchw", "fp32") for _, s, _ in LAYERS])
    print(f"# {threads} engine threads, copies {'on ' + str(copy_cpus) if copy_cpus else 'sharing the cores'}, "
          f"FAKE_HIP_GBPS={a.gbps or 'unlimited'}; best of {a.rounds} alternating rounds; ms")
    print(f"{'layer-pass':<42}{'chunks':>7}{'call':>9}{'engine':>9}{'waits':>8}   engine vs one chunk")
    for i, (name, _, p) in enumerate(LAYERS):
        best = {}
        for r in range(a.rounds):
            for k, (o, ids) in (sides.items() if r % 2 == 0 else reversed(sides.items())):
                t = o.time(ids[i], p, a.min_ms)
                if k not in best or t["best_ms"] < best[k]["best_ms"]:
                    best[k] = t
        one = best[1]["profile"].get("engine_ms", 0)
        for k, t in best.items():
            pr = t["profile"]
            eng = pr.get("engine_ms", 0)
            rel = f"{(eng / one - 1) * 100:+.0f} %" if one and k != 1 else ""
            print(f"{name:<42}{k:>7}{t['best_ms']:>9.2f}{eng:>9.2f}"
                  f"{pr.get('wait_in_ms', 0) + pr.get('wait_out_ms', 0):>8.2f}   {rel}")
    for o, _ in sides.values():
        o.close()


if __name__ == "__main__":
    main()
