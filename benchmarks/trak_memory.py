"""TRAK's peak memory against the matrices it avoids, side by side in one run.

    .venv/bin/python benchmarks/trak_memory.py [--arch lenet] [--k 2048] [--n 16 64] [--chunk-mb 64] [--sides ours direct] [--markdown F]

Ours (`estimators/trak.py`, `fit` + `scores` for 2 test points) computes the output gradients a
block of training rows at a time and projects each block with rows of P generated a block of
parameters at a time, so its memory is bounded by `chunk_bytes` whatever n and k:
  about model + 2 × chunk (one block of gradients, one block of P) + Φ (n × k) + the kernel (k × k).
The baseline is the direct way: the n × p matrix of output gradients G (in the model's float32, the
precision ours projects in), the whole p × k projection P, then Φ = G P:
  about model + n·p·4 + p·k·4 bytes.
Each configuration runs in its own process; the peak is the process's peak resident memory
(`ru_maxrss`) less its resident memory once the model and data are built (on CUDA:
`torch.cuda.max_memory_allocated`). Both sides get the same P (our `Projection`'s rows), so Φ
agrees (checked: the largest difference of the projected features).

ResNet18 (p = 11.2 M) with k = 2,048 is slow on CPU (generating p × k Gaussian numbers once, at
the ~29 M/s measured on the project's 2-core machine, takes about 13 minutes, and ours generates P
once per block of training rows and once for the test points), so it is for a GPU machine
(`--arch resnet18 --device cuda`) or, ours alone, for 50 minutes of one core (measured:
2,966 s for three draws of P, peak 2,362 MB): `--arch resnet18 --n 16 --chunk-mb 1024 --sides ours`
(the direct way's P, 92 GB in float32, fits in no memory here).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch


def resident_mb() -> float:
    """This process's resident memory now (from /proc), in MB."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one(arch: str, side: str, n: int, k: int, chunk_mb: float, device: str, compare: bool = True) -> dict:
    """Build the model and data, then run one side; return its peak memory beyond that point."""
    from fragility.engine.flat import FlatModel
    from fragility.estimators import trak as trak_module
    from fragility.estimators.base import Context
    from fragility.models.registry import build_model

    torch.manual_seed(0)
    dev = torch.device(device)
    shape = (3, 32, 32)
    net = FlatModel(build_model(arch, shape, 10).to(dev))
    net.model.eval()
    theta = net.flatten()
    x, y = torch.randn(n, *shape, device=dev), torch.randint(0, 10, (n,), device=dev)
    xt, yt = torch.randn(2, *shape, device=dev), torch.randint(0, 10, (2,), device=dev)
    p = theta.numel()
    chunk = chunk_mb * 2**20
    before = resident_mb()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    started = time.perf_counter()
    if side == "ours":
        c = Context(net, theta, x, y, xt, yt, decay=0.0, damping=0.0, device=dev)
        estimator = trak_module.TRAK(projection_dim=k, chunk_bytes=chunk).fit(c)
        estimator.scores([{"name": "a", "index": 0}, {"name": "b", "index": 1}])
        # Φ of two training rows for the comparison with the direct way (P drawn once more)
        features = estimator.features(net, theta, x[:2], y[:2]) if compare else torch.zeros(0)
    else:
        block = int(chunk // (k * 8))  # ours's blocks of P (sized by their float64 draws): both sides draw the same P
        project = trak_module.Projection(p, k, "gaussian", 0, block, torch.float32, dev, keep_bytes=0)
        gradients = trak_module.output_gradients(net, theta, x, y)  # G, [n, p], float32
        whole = torch.cat([project.rows(s, min(s + block, p)) for s in range(0, p, block)])  # P, [p, k]
        features = (gradients @ whole)[:2].double()
        del gradients, whole
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    row = {"arch": arch, "side": side, "n": n, "k": k, "p": p, "chunk_mb": chunk_mb, "device": device,
           "peak_mb": peak_mb, "seconds": seconds, "features": features.cpu().tolist()}
    if dev.type == "cuda":
        row["peak_mb"] = (torch.cuda.max_memory_allocated() - base_gpu) / 2**20
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="lenet")
    parser.add_argument("--k", type=int, default=2048)
    parser.add_argument("--n", type=int, nargs="*", default=[16, 64])
    parser.add_argument("--chunk-mb", type=float, default=64.0, help="ours: chunk_bytes in MB")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sides", nargs="+", default=["ours", "direct"], choices=["ours", "direct"],
                        help="ours alone where the direct way cannot fit in memory (ResNet18: P is 92 GB)")
    parser.add_argument("--markdown")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration (JSON) and print its row
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one(**json.loads(args.one))))
        return 0
    rows = []
    for n in args.n:
        for side in args.sides:
            spec = {"arch": args.arch, "side": side, "n": n, "k": args.k, "chunk_mb": args.chunk_mb, "device": args.device,
                    "compare": "direct" in args.sides}
            out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--one", json.dumps(spec)],
                                 capture_output=True, text=True, env={**os.environ})
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                return out.returncode
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{r['arch']} n={n} {side:<6} peak {r['peak_mb']:9.1f} MB  {r['seconds']:7.1f} s", flush=True)
    lines = [f"torch {torch.__version__}, {args.threads} thread(s), device {args.device}, load average "
             f"{os.getloadavg()[0]:.1f}", "",
             "| arch | p | k | n | ours: peak MB | direct: peak MB | ratio | n·p·4 + p·k·4 (MB) | ours (s) | direct (s) | "
             "max |Φ ours − Φ direct| |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in args.n:
        a, b = (next((r for r in rows if r["n"] == n and r["side"] == s), None) for s in ("ours", "direct"))
        if a is None or b is None:  # one side not run
            r = a or b
            formed = (n * r["p"] + r["p"] * r["k"]) * 4 / 2**20
            peak = lambda row: f"{row['peak_mb']:.0f}" if row else "not run"  # noqa: E731
            secs = lambda row: f"{row['seconds']:.1f}" if row else "—"  # noqa: E731
            lines.append(f"| {r['arch']} | {r['p']:,} | {r['k']} | {n} | {peak(a)} | {peak(b)} | — | {formed:.0f} | "
                         f"{secs(a)} | {secs(b)} | — |")
            continue
        formed = (n * a["p"] + a["p"] * a["k"]) * 4 / 2**20
        difference = float((torch.tensor(a["features"]) - torch.tensor(b["features"])).abs().max())
        lines.append(f"| {a['arch']} | {a['p']:,} | {a['k']} | {n} | {a['peak_mb']:.0f} | {b['peak_mb']:.0f} | "
                     f"{b['peak_mb'] / a['peak_mb']:.1f}× | {formed:.0f} | {a['seconds']:.1f} | {b['seconds']:.1f} | "
                     f"{difference:.1e} |")
    print("\n".join(lines))
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
