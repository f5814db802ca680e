"""Trainable-parameter columns of the papers' tables, from model shapes alone.

    python experiments/param_counts.py > results/param_counts.md

No weights are read or allocated: params are jax.ShapeDtypeStructs and the
adapters are built under jax.eval_shape (SVD inits included).
Shapes only, so the full run is also the smoke run (CI): seconds on a CPU.
"""

from __future__ import annotations

import jax

import morejax
from morejax.models import llama
from morejax.train.config import Model
from morejax.train.model import abstract_params

QKV_LLAMA = r".*/self_attn/(q_proj|k_proj|v_proj)/kernel"
ALL7 = r".*/(self_attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)/kernel"
QKVUD = r".*/(self_attn/(q|k|v)_proj|mlp/(up|down)_proj)/kernel"
QKV_BERT = r".*/attention/(query|key|value)/kernel"

# (setting, model, rules, published figure from docs/methods.md)
SETTINGS = [
    (
        "RoBERTa-large, MoRe nb4 r4 on q,k,v",
        "roberta-large",
        {QKV_BERT: morejax.MoRe(4, 4)},
        "589,824",
    ),
    ("LLaMA-7B, MoRe nb4 r4 on q,k,v", "llama-7b", {QKV_LLAMA: morejax.MoRe(4, 4)}, "3,145,728"),
    ("LLaMA-7B, MoRe nb4 r8 on q,k,v", "llama-7b", {QKV_LLAMA: morejax.MoRe(4, 8)}, "6,291,456"),
    (
        "LLaMA-7B, all 7 projections, MoRe nb4 r4 (current s)",
        "llama-7b",
        {ALL7: morejax.MoRe(4, 4)},
        "9,994,240",
    ),
    (
        "LLaMA-7B, all 7 projections, MoRe nb4 r4 (paper-time s)",
        "llama-7b",
        {ALL7: morejax.MoRe(4, 4, block_out="paper")},
        "11,206,656",
    ),
    (
        "LLaMA-7B, LoRA r=32 on q,k,v,up,down",
        "llama-7b",
        {QKVUD: morejax.LoRA(32, 64.0)},
        "53.3M (0.83%)",
    ),
    (
        "LLaMA-2-7B, MiLoRA r=32 on q,k,v,up,down",
        "llama-2-7b",
        {QKVUD: morejax.MiLoRA(32)},
        "56.1M (0.83%)",
    ),
    (
        "LLaMA-3-8B, MiLoRA r=32 on q,k,v,up,down",
        "llama-3-8b",
        {QKVUD: morejax.MiLoRA(32)},
        "56.6M (0.70%)",
    ),
    (
        "LLaMA-2-7B, MiLoRA r=64 on q,k,v,up,down",
        "llama-2-7b",
        {QKVUD: morejax.MiLoRA(64)},
        "112.2M (1.67%)",
    ),
]


def count(name: str, rules) -> tuple[int, int]:
    family = "llama" if name in llama.CONFIGS else "bert"
    _, params = abstract_params(Model(name=name, family=family, head="encoder"))
    base, adapters = jax.eval_shape(lambda p: morejax.adapt(p, rules, jax.random.key(0)), params)
    summary = morejax.summarize(base, adapters)
    return summary.adapter_params, summary.model_params


def main():
    print("# Trainable parameters from shapes alone\n")
    print("Command: `python experiments/param_counts.py > results/param_counts.md`\n")
    print("| setting | morejax | % of model | published |")
    print("|---|---:|---:|---|")
    for setting, model, rules, published in SETTINGS:
        n, total = count(model, rules)
        print(f"| {setting} | {n:,} | {100 * n / total:.3f}% | {published} |")


if __name__ == "__main__":
    main()
