#!/usr/bin/env python3
"""What cutting a call into chunks costs the engine: the same layer-passes called
through MIOpen's API with several RDNA1SHIM_CHUNKS settings, the settings alternating,
each keeping its best call, and the shim's own breakdown of that call.

    python3 scripts/bench_chunking.py [--threads N] [--chunks 1,5/1,5] [--gbps G]
        [--rounds R] [--isolate | --spare] [--by-batch] [--shim PATH] [--driver PATH]

Chunks let the copies of one chunk overlap the computation of another, but each chunk
is a separate engine call over a few images. The engine's time with K chunks over its
time with one is that cost. `K/1` (K chunks, one staged at a time) runs the same K
engine calls with no copy beside them: against one chunk it is the cost of the cutting
itself, against `K` the cost of the copies running beside the engine.

The doubles' copies are memcpy on CPU threads. With --isolate the engine gets one core
fewer than --threads and the copies that core; with --spare the engine keeps --threads
cores and the copies get all the others (as a GPU's copy engine would leave the cores
to the engine). FAKE_HIP_COPY_CPUS carries the copies' cores.

--by-batch times one engine call (one chunk, unlimited copies) at batches 1 to 32
instead: what a call costs besides its work per image.

Needs `cargo build --release --workspace`.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_callpath as B  # noqa: E402


def resnet64(n):
    return B.shape2d(n, 64, 64, 56, 3, 1, 1)


def stem(n):
    return B.shape2d(n, 3, 64, 224, 7, 2, 3)


def resnet128(n):
    return B.shape2d(n, 128, 128, 28, 3, 1, 1)


# (name, shape at batch n, pass)
LAYERS = (
    ("resnet18 64 3x3 56 forward", resnet64, "forward"),
    ("resnet18 64 3x3 56 backward_data", resnet64, "backward_data"),
    ("resnet18 64 3x3 56 backward_weights", resnet64, "backward_weights"),
    ("resnet18 stem 7x7/2 224 forward", stem, "forward"),
    ("resnet18 stem 7x7/2 224 backward_weights", stem, "backward_weights"),
    ("resnet18 128 3x3 28 forward", resnet128, "forward"),
)
BATCHES = (1, 2, 4, 7, 8, 16, 32)


def cores(a):
    """The engine's thread count and the copies' cores, after pinning this process."""
    cpus = sorted(os.sched_getaffinity(0))
    if a.isolate:
        if len(cpus) < 2:
            sys.exit("--isolate needs at least two cores")
        threads = min(a.threads, len(cpus) - 1)
    elif a.spare:
        if len(cpus) <= a.threads:
            sys.exit(f"--spare needs more than {a.threads} cores")
        threads = a.threads
    else:
        return a.threads, None
    os.sched_setaffinity(0, cpus[:threads])
    return threads, cpus[threads:]


def by_variant(a, driver, threads, copy_cpus):
    variants = [v.strip() for v in a.chunks.split(",") if v.strip()]
    if "1" not in variants:
        variants.insert(0, "1")
    sides = {}
    for v in variants:
        o = B.Ours(driver, os.path.abspath(a.shim), threads, a.gbps, {"RDNA1SHIM_CHUNKS": v}, copy_cpus)
        sides[v] = (o, [o.layer(mk(a.batch), 2, "nchw", "fp32") for _, mk, _ in LAYERS])
    print(f"# {threads} engine threads, copies {'on ' + str(copy_cpus) if copy_cpus else 'sharing the cores'}, "
          f"FAKE_HIP_GBPS={a.gbps or 'unlimited'}, batch {a.batch}; best of {a.rounds} alternating rounds; ms")
    print(f"{'layer-pass':<44}{'chunks':>7}{'call':>9}{'engine':>9}{'waits':>8}   engine vs one chunk")
    for i, (name, _, p) in enumerate(LAYERS):
        best = {}
        order = list(sides.items())
        for r in range(a.rounds):
            for v, (o, ids) in (order if r % 2 == 0 else order[::-1]):
                t = o.time(ids[i], p, a.min_ms)
                if v not in best or t["best_ms"] < best[v]["best_ms"]:
                    best[v] = t
        one = best["1"]["profile"].get("engine_ms", 0)
        for v in variants:
            pr = best[v]["profile"]
            eng = pr.get("engine_ms", 0)
            rel = f"{(eng / one - 1) * 100:+.0f} %" if one and v != "1" else ""
            print(f"{name:<44}{v:>7}{best[v]['best_ms']:>9.2f}{eng:>9.2f}"
                  f"{pr.get('wait_in_ms', 0) + pr.get('wait_out_ms', 0):>8.2f}   {rel}")
    for o, _ in sides.values():
        o.close()


def by_batch(a, driver, threads, copy_cpus):
    o = B.Ours(driver, os.path.abspath(a.shim), threads, 0, {"RDNA1SHIM_CHUNKS": "1"}, copy_cpus)
    print(f"# {threads} engine threads; engine ms of one call (one chunk, unlimited copies), best of "
          f"{a.rounds}; in brackets ms per image over batch 32's")
    print(f"{'layer-pass':<44}" + "".join(f"{'b' + str(n):>15}" for n in BATCHES))
    for name, mk, p in LAYERS:
        row = []
        for n in BATCHES:
            lid = o.layer(mk(n), 2, "nchw", "fp32")
            row.append(min(o.time(lid, p, a.min_ms / 2)["profile"].get("engine_ms", 0) for _ in range(a.rounds)))
            o.free(lid)
        per = row[-1] / BATCHES[-1] or 1
        print(f"{name:<44}" + "".join(f"{e:>8.2f} ({e / n / per:.2f})" for n, e in zip(BATCHES, row)))
        # Least squares over the small batches (a chunk's sizes): a fixed part per call,
        # a part per image.
        pts = [(x, y) for x, y in zip(BATCHES, row) if x <= 8]
        mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
        slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
        print(f"{'':<44}batches 1-8: about {my - slope * mx:.3f} ms a call + {slope:.3f} ms an image")
    o.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--chunks", default="5/1,5",
                    help="comma-separated RDNA1SHIM_CHUNKS settings, timed against one chunk")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--gbps", type=float, default=12.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-ms", type=float, default=300)
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--isolate", action="store_true",
                       help="one core fewer for the engine, that core for the doubles' copies")
    where.add_argument("--spare", action="store_true",
                       help="--threads cores for the engine, the other cores for the doubles' copies")
    ap.add_argument("--by-batch", action="store_true", help="one call's engine time by batch size")
    ap.add_argument("--shim", default=os.path.join(B.ROOT, "target", "release", "librdna1shim.so"))
    ap.add_argument("--driver", default=None)
    a = ap.parse_args()
    threads, copy_cpus = cores(a)
    driver = a.driver or B.find_driver()
    (by_batch if a.by_batch else by_variant)(a, driver, threads, copy_cpus)


if __name__ == "__main__":
    main()
