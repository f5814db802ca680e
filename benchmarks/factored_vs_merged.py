"""Factored vs merged training steps: XLA FLOPs and wall time, measured in one run.

    python benchmarks/factored_vs_merged.py [--width 512] [--layers 4] [--tokens 1024]

Smoke run (CI): `--width 32 --layers 1 --tokens 16 --repeats 1`.

The factored step computes x@K + Δy(x) and never forms a full weight gradient;
the merged step differentiates through K + ΔK. Ratios are what to read: absolute
times drift on a shared CPU.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

import morejax


class Stack(nn.Module):
    width: int
    layers: int

    @nn.compact
    def __call__(self, x):
        for i in range(self.layers):
            x = jnp.tanh(nn.Dense(self.width, name=f"dense_{i}")(x))
        return x


def compiled_step(model, x, base, adapters, merged):
    def loss(a, b):
        return jnp.mean(morejax.call(model.apply, b, a, x, merged=merged) ** 2)

    def step(a, b):
        return jax.tree.map(lambda p, g: p - 0.1 * g, a, jax.grad(loss)(a, b))

    return jax.jit(step).lower(adapters, base).compile()


def seconds_per_step(step, adapters, base, repeats=5):
    jax.block_until_ready(step(adapters, base))
    start = time.perf_counter()
    for _ in range(repeats):
        adapters = step(adapters, base)
    jax.block_until_ready(adapters)
    return (time.perf_counter() - start) / repeats


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per program")
    args = parser.parse_args(argv)
    model = Stack(args.width, args.layers)
    x = jnp.ones((args.tokens, args.width))
    params = model.init(jax.random.key(0), x)["params"]
    print(f"{args.layers} layers x {args.width} wide, {args.tokens} tokens, {jax.devices()[0]}")
    cols = "factored GFLOP | merged GFLOP | FLOP ratio | factored ms | merged ms | time ratio"
    print(f"| method | {cols} |")
    print("|---|---|---|---|---|---|---|")
    for method in [morejax.MoRe(4, 4), morejax.LoRA(16, 16.0), morejax.DoRA(16, 16.0)]:
        base, adapters = morejax.adapt(params, {r".*/kernel": method}, jax.random.key(0))
        row = []
        for merged in (False, True):
            step = compiled_step(model, x, base, adapters, merged)
            cost = step.cost_analysis()
            flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
            row.append((flops, seconds_per_step(step, adapters, base, args.repeats)))
        (ff, ft), (mf, mt) = row
        name = type(method).__name__
        print(
            f"| {name} | {ff / 1e9:.3f} | {mf / 1e9:.3f} | {mf / ff:.2f} "
            f"| {ft * 1e3:.1f} | {mt * 1e3:.1f} | {mt / ft:.2f} |"
        )


if __name__ == "__main__":
    main()
