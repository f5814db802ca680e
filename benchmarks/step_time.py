"""Training-step time per method on MiniLM-L6, factored vs merged, against the machine's
dense-matmul rate (the ceiling) and against Hugging Face PEFT, all measured in one run;
compiled memory per configuration; PiSSA/MiLoRA initialisation time per model size.

    python benchmarks/step_time.py                      # batch 32 x 64 tokens, AdamW
    python benchmarks/step_time.py --batch 2 --length 8 --repeats 1 --methods lora \
        --init-sizes minilm --no-record                 # smoke (CI)

The step is morejax's own (`train.step.make_member_step`: forward, per-example loss,
gradients w.r.t. the adapters, clipping, AdamW) on random tokens; FLOPs are XLA's count of
the compiled step. PEFT runs the same shape (LoRA r8 on query/value, AdamW, torch threads =
cores) when torch, transformers and peft are installed.
"""

from __future__ import annotations

import argparse
import collections
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

import morejax  # noqa: E402
from benchmarks import write_section  # noqa: E402
from morejax.models import registry  # noqa: E402
from morejax.train import config, optim  # noqa: E402
from morejax.train import step as steps  # noqa: E402

QV = r".*/(query|value)/kernel"
QKV = r".*/(query|key|value)/kernel"
METHODS = {  # name -> (method, targets); the head trains in all
    "full": (morejax.Full(), r".*/(query|key|value|dense)/kernel"),
    "lora_qv": (morejax.LoRA(8, 8.0), QV),
    "lora": (morejax.LoRA(8, 8.0), QKV),
    "more": (morejax.MoRe(4, 4), QKV),
    "milora": (morejax.MiLoRA(8), QKV),
    "dora": (morejax.DoRA(8, 8.0), QKV),
}
# (rows, cols) of each SVD-initialised kernel and how many a model has (q,k,v / q,k,v,up,down).
INIT_SIZES = {
    "minilm": ([(384, 384)] * 3, 6),
    "roberta-large": ([(1024, 1024)] * 3, 24),
    "llama-1b": ([(2048, 2048), (2048, 512), (2048, 512), (2048, 8192), (8192, 2048)], 16),
}


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dense_ceiling(repeats: int) -> float:
    """GFLOP/s of one float32 GEMM (2048x1024 @ 1024x1024): what a step could approach."""
    a = jnp.ones((2048, 1024), jnp.float32)
    b = jnp.ones((1024, 1024), jnp.float32)
    f = jax.jit(jnp.matmul)
    jax.block_until_ready(f(a, b))
    return 2 * 2048 * 1024 * 1024 / median_seconds(lambda: f(a, b), max(repeats, 5)) / 1e9


def morejax_step(loaded, name: str, merged: bool, batch, total_steps: int = 1000):
    """(compiled step, its arguments) for one method."""
    method, targets = METHODS[name]
    base, adapters = morejax.adapt(
        loaded.params, {targets: method}, jax.random.key(0), trainable=(r"head/.*",)
    )
    adapters = jax.tree.map(jnp.copy, adapters)  # donated below; the loaded head is shared
    model = loaded.model

    def forward(adapters, base, batch, rng):
        inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return morejax.call(model.apply, base, adapters, *inputs, merged=merged)

    opt = config.Optimizer(learning_rate=1e-3)
    tx = optim.make_optimizer(opt, total_steps, adapters)
    shape = optim.schedule_shape(opt, total_steps)
    member = steps.make_member_step(forward, "classification", tx, shape, use_dropout=False)

    def train_step(adapters, opt_state, base, batch):
        return member(adapters, opt_state, jnp.int32(0), jax.random.key(0), base, batch)[:2]

    opt_state = tx.init(adapters)
    micro = {k: v[None] for k, v in batch.items()}
    compiled = (
        jax.jit(train_step, donate_argnums=(0, 1)).lower(adapters, opt_state, base, micro).compile()
    )
    return compiled, (adapters, opt_state, base, micro)


def run_morejax(compiled, args, repeats: int) -> float:
    state = list(args)

    def one():
        state[0], state[1] = compiled(*state)
        return state[0]

    jax.block_until_ready(one())  # warm
    return median_seconds(one, repeats)


def compiled_stats(compiled) -> tuple[float, float]:
    """(XLA GFLOPs, compiled memory in MiB: arguments + outputs + temporaries - aliased)."""
    cost = compiled.cost_analysis()
    flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
    m = compiled.memory_analysis()
    mem = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    mem -= m.alias_size_in_bytes
    return flops / 1e9, mem / 2**20


_DEF = re.compile(r"%(\S+) = (\w+)\[([\d,]*)\]")
_DOT = re.compile(r"= \w+\[[\d,]*\]\S* dot\(%([^,\s]+), %([^,\s)]+)\), (.*)")
_DIMS = ("lhs_batch_dims", "lhs_contracting_dims", "rhs_batch_dims", "rhs_contracting_dims")
_DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16}


def step_dots(hlo_text: str) -> collections.Counter:
    """How many times each (lhs, rhs, dimension numbers) matmul occurs in a compiled
    step's HLO (the step has no loops, so each occurs once per step)."""
    shapes = {
        m.group(1): (m.group(2), tuple(int(d) for d in m.group(3).split(",") if d))
        for m in _DEF.finditer(hlo_text)
    }
    dots = collections.Counter()
    for line in hlo_text.splitlines():
        m = _DOT.search(line)
        if m is None:
            continue
        dims = []
        for key in _DIMS:
            found = re.search(key + r"=\{([\d,]*)\}", m.group(3))
            dims.append(tuple(int(x) for x in found.group(1).split(",") if x) if found else ())
        dots[shapes[m.group(1)], shapes[m.group(2)], tuple(dims)] += 1
    return dots


def matmul_seconds(compiled, repeats: int) -> tuple[float, float]:
    """(seconds, GFLOP) of the step's matmuls alone, each timed by itself at its own shape:
    what the step would take if everything but the matmuls were free."""
    if " while(" in compiled.as_text():
        raise ValueError("the step has loops: its matmul counts are not per step")
    noop = jax.jit(lambda x: x + 1)
    x = jnp.ones((), jnp.float32)
    jax.block_until_ready(noop(x))
    dispatch = median_seconds(lambda: noop(x), max(repeats, 20))  # not part of the step
    total = flops = 0.0
    for ((ldt, lhs), (_, rhs), (lb, lc, rb, rc)), n in step_dots(compiled.as_text()).items():
        a, b = jnp.ones(lhs, _DTYPES[ldt]), jnp.ones(rhs, _DTYPES[ldt])
        f = jax.jit(lambda a, b, d=((lc, rc), (lb, rb)): lax.dot_general(a, b, d))
        jax.block_until_ready(f(a, b))
        seconds = median_seconds(lambda f=f, a=a, b=b: f(a, b), repeats) - dispatch
        total += n * max(seconds, 0.0)
        contract, batch = np.prod([lhs[i] for i in lc]), np.prod([lhs[i] for i in lb])
        flops += n * 2 * np.prod(lhs) * np.prod(rhs) / (contract * batch)
    return total, flops / 1e9


def peft_step_seconds(batch: int, length: int, repeats: int) -> float | None:
    try:
        import peft
        import torch
        from transformers import BertForSequenceClassification
    except ImportError:
        return None
    torch.manual_seed(0)
    torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))
    path = registry.find_model_dir("minilm-l6")
    model = BertForSequenceClassification.from_pretrained(str(path), num_labels=2)
    cfg = peft.LoraConfig(
        r=8, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"]
    )
    model = peft.get_peft_model(model, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(1000, 20000, (batch, length))
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (batch,))

    def one():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    one()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        one()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def init_seconds(sizes: str, repeats: int) -> list[tuple[str, str, float, float]]:
    """(model, method, seconds per model, seconds per kernel) of the SVD initialisation."""
    rows = []
    for model_name in sizes:
        shapes, layers = INIT_SIZES[model_name]
        rng = np.random.default_rng(0)
        kernels = {f"k{i}": {"kernel": jnp.asarray(rng.normal(0, 0.02, s), jnp.float32)}
                   for i, s in enumerate(shapes)}  # fmt: skip
        for method in (morejax.PiSSA(8), morejax.MiLoRA(8)):

            def init(method=method, kernels=kernels):
                return morejax.adapt(kernels, {r".*": method}, jax.random.key(0))[1]

            jax.block_until_ready(init())
            per_layer = median_seconds(init, repeats)
            rows.append((model_name, type(method).__name__, per_layer * layers,
                         per_layer / len(shapes)))  # fmt: skip
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=8, help="timed steps per program (median)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"of {','.join(METHODS)}")
    p.add_argument("--init-sizes", default=",".join(INIT_SIZES), help="'' skips")
    p.add_argument("--no-peft", action="store_true")
    p.add_argument("--no-record", action="store_true", help="print only (no results/ update)")
    args = p.parse_args(argv)
    names = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {sorted(METHODS)}")

    ceiling = dense_ceiling(args.repeats)
    print(f"dense float32 GEMM ceiling: {ceiling:.1f} GFLOP/s ({jax.devices()[0]})")
    loaded = registry.load_pretrained("minilm-l6", head="classification", num_labels=2)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, (args.batch, args.length)).astype(np.int32)
    batch = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
        "labels": rng.integers(0, 2, args.batch).astype(np.int32),
        "valid": np.ones(args.batch, np.int32),
    }
    peft_s = None if args.no_peft else peft_step_seconds(args.batch, args.length, args.repeats)
    lines = [
        f"MiniLM-L6, batch {args.batch} x {args.length} random tokens, AdamW, median of "
        f"{args.repeats} steps. Ceiling: one float32 GEMM at {ceiling:.1f} GFLOP/s measured "
        "in the same run. `of ceiling` = achieved / ceiling; `vs merged` = merged time / "
        "factored time (above 1: factored is faster). `matmuls s`: the step's matmuls "
        "alone, each timed by itself at its own shape (HLO `dot`s); `matmul share` = that "
        "/ step s, the rest being elementwise ops, reductions, layout and the optimizer.",
        "",
        "| method | form | step s | GFLOP | GFLOP/s | of ceiling | memory MiB | vs merged "
        "| matmuls s | matmul GFLOP/s | matmul share |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    times = {}
    for name in names:
        forms = ("factored",) if name == "full" else ("factored", "merged")
        for form in forms:
            compiled, cargs = morejax_step(loaded, name, form == "merged", batch)
            gflop, mib = compiled_stats(compiled)
            t = run_morejax(compiled, cargs, args.repeats)
            mm_s, mm_gflop = matmul_seconds(compiled, args.repeats)
            times[name, form] = (t, gflop, mib, mm_s, mm_gflop)
            del compiled, cargs
        for form in forms:
            t, gflop, mib, mm_s, mm_gflop = times[name, form]
            ratio = times[name, "merged"][0] / t if (name, "merged") in times else 1.0
            lines.append(
                f"| {name} | {form} | {t:.3f} | {gflop:.1f} | {gflop / t:.1f} | "
                f"{gflop / t / ceiling:.2f} | {mib:.0f} | {ratio:.2f} | {mm_s:.3f} | "
                f"{mm_gflop / mm_s:.1f} | {mm_s / t:.2f} |"
            )
        print(f"measured {name}: {lines[-1]}", flush=True)  # progress; the table comes last
    lines.append("")
    ref = times.get(("lora", "factored"))
    if ref and ("more", "factored") in times:
        lines.append(f"MoRe / LoRA step time (factored, q,k,v): "
                     f"{times['more', 'factored'][0] / ref[0]:.2f}")  # fmt: skip
    if peft_s is not None:
        lines.append(f"PEFT LoRA r8 q,v (torch, same shape): {peft_s:.3f} s/step")
        if ("lora_qv", "factored") in times:
            lines.append(f"PEFT / morejax LoRA r8 q,v step time: "
                         f"{peft_s / times['lora_qv', 'factored'][0]:.2f}x")  # fmt: skip
    if args.init_sizes:
        lines += [
            "",
            "PiSSA / MiLoRA initialisation (SVD of each target kernel, rank 8; random kernels "
            "of each model's shapes, one layer timed, times layers):",
            "",
            "| model | method | seconds per model | seconds per kernel |",
            "|---|---|---|---|",
        ]
        for row in init_seconds([s for s in args.init_sizes.split(",") if s], args.repeats):
            lines.append(f"| {row[0]} | {row[1]} | {row[2]:.2f} | {row[3]:.3f} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        print(f"wrote {write_section('Training step time', text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
