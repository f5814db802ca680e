"""Peak memory of loading a sharded bf16 Hugging Face checkpoint, against its size on disk.

    python benchmarks/load_memory.py                          # llama3.2-1b shapes, ~2.5 GB
    python benchmarks/load_memory.py --model tiny --no-record # smoke

A random checkpoint of the named config's shapes is written as safetensors shards
(`model.safetensors.index.json`), then a fresh process loads it with `load_pretrained` into
bf16 params and reports its peak resident memory above what it held before loading. Loading
streams tensor by tensor into preallocated leaves, so the ratio should stay near 1 (the
target is at most 1.3x): a second full copy would show as ~2x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import write_section  # noqa: E402

TINY = dict(vocab_size=512, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
            intermediate_size=256)  # fmt: skip


def write_checkpoint(model: str, folder: Path, shard_mb: float) -> int:
    """Random bf16 weights of the config's shapes, sharded; returns the bytes on disk."""
    import jax
    import ml_dtypes
    import numpy as np

    from morejax.models import llama

    cfg = llama.CONFIGS["llama3.2-1b"].replace(**TINY) if model == "tiny" else llama.CONFIGS[model]
    cfg = cfg.replace(param_dtype="bfloat16")
    rng = np.random.default_rng(0)

    def leaf(s):
        return (0.02 * rng.standard_normal(s.shape, np.float32)).astype(ml_dtypes.bfloat16)

    params = jax.tree.map(leaf, llama.abstract_params(cfg))
    llama.save_hf_checkpoint(params, cfg, folder, max_shard_bytes=int(shard_mb * 2**20))
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


LOADER = """
import json, resource, sys, time
import jax
from morejax.models.registry import load_pretrained
jax.numpy.zeros(1).block_until_ready()  # the runtime's own memory counts as baseline
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))
before = rss()
t0 = time.time()
pre = load_pretrained(sys.argv[1], param_dtype="bfloat16", dtype="bfloat16")
jax.block_until_ready(pre.params)
seconds = time.time() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
n = sum(x.size for x in jax.tree.leaves(pre.params))
held = sum(x.nbytes for x in jax.tree.leaves(pre.params))
print(json.dumps({"before": before, "peak": peak, "params": n, "held": held, "seconds": seconds}))
"""


def measure(folder: Path) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    out = subprocess.run(
        [sys.executable, "-c", LOADER, str(folder)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama3.2-1b", help="a named decoder config, or 'tiny'")
    p.add_argument("--shard-mb", type=float, default=512)
    p.add_argument("--no-record", action="store_true", help="print only")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ckpt"
        t0 = time.time()
        disk = write_checkpoint(args.model, folder, args.shard_mb)
        write_s = time.time() - t0
        shards = len(list(folder.glob("*.safetensors")))
        m = measure(folder)
    gib = 2**30
    extra = m["peak"] - m["before"]
    ratio = extra / disk
    body = (
        f"Random {args.model} checkpoint, bf16, {m['params']:,} params in {shards} safetensors "
        f"shards ({disk / gib:.2f} GiB on disk; written in {write_s:.0f} s), loaded by "
        f"`load_pretrained(folder, param_dtype='bfloat16')` in a fresh process in "
        f"{m['seconds']:.1f} s.\n\n"
        "| resident before loading | peak during loading | peak - before | params held | "
        "(peak - before) / size on disk |\n|---:|---:|---:|---:|---:|\n"
        f"| {m['before'] / gib:.2f} GiB | {m['peak'] / gib:.2f} GiB | {extra / gib:.2f} GiB | "
        f"{m['held'] / gib:.2f} GiB | {ratio:.2f}x |\n\n"
        "Target: at most 1.3x (one copy of the weights plus one tensor in flight)."
    )
    print(body)
    if not args.no_record:
        print(write_section("Loading a sharded checkpoint: peak memory", body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
