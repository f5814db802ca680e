"""GPU time per kernel family in a Perfetto trace from `jax.profiler.trace(...,
create_perfetto_trace=True)` (e.g. `benchmarks/llama_mfu.py --profile DIR`): what a step
spends in cuBLAS GEMMs, cuDNN attention, XLA's Triton GEMM fusions and elementwise work.

    python benchmarks/trace_summary.py DIR/plugins/profile/*/perfetto_trace.json.gz --steps 3
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import sys


def family(kernel: str) -> str:
    if kernel.startswith("nvjet") or ("gemm" in kernel and not kernel.startswith("gemm_fusion")):
        return "cuBLAS GEMMs"
    if "sdpa" in kernel or "cudnn" in kernel:
        return "cuDNN attention"
    if kernel.startswith("gemm_fusion"):
        return "XLA Triton GEMM fusions"
    if "reduce" in kernel:
        return "reduction fusions"
    if "convert" in kernel:
        return "dtype conversions"
    if kernel.startswith(("loop_", "wrapped_", "fusion", "input_")):
        return "elementwise fusions"
    return "other"


def summarise(path: str, steps: int, device: str = "GPU") -> list[tuple[str, float]]:
    with gzip.open(path) if path.endswith(".gz") else open(path) as f:
        events = json.load(f)["traceEvents"]
    gpus = {
        e["pid"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name" and device in e["args"]["name"]
    }
    ms = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e["pid"] in gpus:
            ms[family(e["name"])] += e["dur"] / 1e3 / steps
    return ms.most_common()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("trace")
    p.add_argument("--steps", type=int, default=3, help="steps the trace holds")
    p.add_argument("--device", default="GPU", help="processes whose name contains this")
    args = p.parse_args(argv)
    rows = summarise(args.trace, args.steps, args.device)
    total = sum(v for _, v in rows)
    print(f"| kernels | ms per step | share of {args.device}-busy time |\n|---|---|---|")
    for name, v in rows:
        print(f"| {name} | {v:.1f} | {v / total:.1%} |")
    print(f"| {args.device} busy | {total:.1f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
