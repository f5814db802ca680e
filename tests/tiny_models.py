"""Tiny models the core tests adapt: a Linen transformer with scanned, rematerialised
layers and DenseGeneral attention, and an NNX MLP."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx


class Block(nn.Module):
    d: int = 16
    heads: int = 2

    @nn.compact
    def __call__(self, x_BxLxD, _):
        hd = self.d // self.heads
        h = nn.LayerNorm(name="ln1")(x_BxLxD)
        q_BxLxHxK = nn.DenseGeneral((self.heads, hd), name="query")(h)
        k_BxLxHxK = nn.DenseGeneral((self.heads, hd), name="key")(h)
        v_BxLxHxK = nn.DenseGeneral((self.heads, hd), name="value")(h)
        logits = jnp.einsum("blhk,bmhk->bhlm", q_BxLxHxK, k_BxLxHxK) / jnp.sqrt(hd)
        a_BxLxHxK = jnp.einsum("bhlm,bmhk->blhk", jax.nn.softmax(logits), v_BxLxHxK)
        x_BxLxD = x_BxLxD + nn.DenseGeneral(self.d, axis=(-2, -1), name="out")(a_BxLxHxK)
        h = nn.LayerNorm(name="ln2")(x_BxLxD)
        h = nn.gelu(nn.Dense(2 * self.d, name="up")(h))
        return x_BxLxD + nn.Dense(self.d, name="down")(h), None


class TinyTransformer(nn.Module):
    vocab: int = 32
    d: int = 16
    layers: int = 2

    @nn.compact
    def __call__(self, ids_BxL):
        x = nn.Embed(self.vocab, self.d, name="embed")(ids_BxL)
        stack = nn.scan(
            nn.remat(Block),
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            length=self.layers,
        )
        x, _ = stack(d=self.d, name="layers")(x, None)
        return nn.Dense(3, name="head")(x.mean(axis=1))


class NNXMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, d: int = 12):
        self.up = nnx.Linear(d, 2 * d, rngs=rngs)
        self.proj = nnx.LinearGeneral(2 * d, (2, d // 2), rngs=rngs)
        self.head = nnx.Linear(d, 3, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.gelu(self.up(x))
        h = self.proj(h).reshape(*x.shape[:-1], -1)
        return self.head(h)


def tiny_linen():
    model = TinyTransformer()
    ids = jax.random.randint(jax.random.key(1), (2, 8), 0, 32)
    params = model.init(jax.random.key(0), ids)["params"]
    return model, params, ids
