"""The compiled steps: forward with adapters, per-example losses, one optimizer step per
member (micro-batches accumulated exactly), jit over the mesh, and the evaluation step.

The frozen base is an argument of every compiled function (never a closure: closed-over
weights become constants); the train state is donated and gradients are taken w.r.t. the
adapters only. A vectorised run vmaps the member step over adapters, optimizer states,
keys and batches (each member sees its own data order).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import morejax
from morejax.train.mesh import base_sharding, state_sharding
from morejax.train.model import model_inputs, packed_inputs


def make_forward(model, family: str):
    def forward(adapters, base, batch, rng):
        kwargs: dict = {"deterministic": rng is None, **packed_inputs(batch)}
        if rng is not None:
            kwargs["rngs"] = {"dropout": rng}
        out = morejax.call(model.apply, base, adapters, *model_inputs(family, batch), **kwargs)
        return out[0] if isinstance(out, tuple) else out  # LLaMA returns (logits, cache)

    return forward


def per_example_loss(out, batch, kind: str):
    """(loss summed per row, count per row): sums make accumulation exact over micro-batches."""
    valid = batch["valid"].astype(jnp.float32)
    if kind == "lm":
        # Position t predicts token t+1. NLL = logsumexp - the target's logit: XLA fuses the
        # float32 cast into the reductions, so no float32 copy of the (B, L, vocab) logits (or
        # their shifted slice) is written, unlike log_softmax.
        ids, loss_mask = batch["input_ids"], batch["loss_mask"]
        targets = jnp.concatenate([ids[:, 1:], ids[:, :1]], axis=1)  # last column is masked
        mask = jnp.concatenate([loss_mask[:, 1:], jnp.zeros_like(loss_mask[:, :1])], axis=1)
        mask = mask.astype(jnp.float32) * valid[:, None]
        picked = jnp.take_along_axis(out, targets[..., None], -1)[..., 0].astype(jnp.float32)
        nll = jax.nn.logsumexp(out.astype(jnp.float32), axis=-1) - picked
        return jnp.sum(nll * mask, -1), jnp.sum(mask, -1)
    if kind == "regression":
        err = (out.astype(jnp.float32) - batch["labels"].astype(jnp.float32)) ** 2
    else:
        logp = jax.nn.log_softmax(out.astype(jnp.float32))
        err = -jnp.take_along_axis(logp, batch["labels"][:, None].astype(jnp.int32), -1)[:, 0]
    return err * valid, valid


def make_member_step(
    forward,
    kind: str,
    tx,
    shape,
    use_dropout: bool,
    *,
    skip_nonfinite: bool = False,
    poison_step: int | None = None,
):
    """One optimizer step of one member; batch leaves are (micro_batches, b, ...).

    Metrics carry `finite` (loss and every gradient leaf finite) and `leaf_finite` (one flag
    per adapter leaf, to name the first bad one). `skip_nonfinite` keeps the adapters and
    the optimizer state unchanged on such a step; `poison_step` makes the gradients of that
    (1-based) step NaN, for fault-injection tests.
    """

    def loss_fn(adapters, base, batch, rng):
        losses, counts = per_example_loss(forward(adapters, base, batch, rng), batch, kind)
        return jnp.sum(losses), jnp.sum(counts)

    def member_step(adapters, opt_state, step, key, base, batch):
        rng = jax.random.fold_in(key, step)

        def micro(carry, xs):
            i, mb = xs
            mb_rng = jax.random.fold_in(rng, i) if use_dropout else None
            grad_fn = jax.value_and_grad(loss_fn, has_aux=True)  # w.r.t. the adapters only
            (loss_sum, count), grads = grad_fn(adapters, base, mb, mb_rng)
            g_acc, l_acc, n_acc = carry
            return (jax.tree.map(jnp.add, g_acc, grads), l_acc + loss_sum, n_acc + count), None

        zero = jnp.zeros((), jnp.float32)
        init = (jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), adapters), zero, zero)
        n_micro = jax.tree.leaves(batch)[0].shape[0]
        if n_micro == 1:  # no loop: XLA optimises a straight-line step better
            (grads, loss_sum, count), _ = micro(init, (0, jax.tree.map(lambda x: x[0], batch)))
        else:
            (grads, loss_sum, count), _ = jax.lax.scan(micro, init, (jnp.arange(n_micro), batch))
        count = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        if poison_step is not None:
            grads = jax.tree.map(lambda g: jnp.where(step + 1 == poison_step, jnp.nan, g), grads)
        leaf_finite = jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
        finite = jnp.all(leaf_finite) & jnp.isfinite(loss_sum)
        lr = opt_state.hyperparams["learning_rate"] * shape(opt_state.count)
        updates, new_opt_state = tx.update(grads, opt_state, adapters)
        new_adapters = optax.apply_updates(adapters, updates)
        if skip_nonfinite:  # a bad step changes nothing (its count is logged)
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            new_adapters = jax.tree.map(keep, new_adapters, adapters)
            new_opt_state = jax.tree.map(keep, new_opt_state, opt_state)
        metrics = {
            "loss": loss_sum / count,
            "grad_norm": optax.tree.norm(grads),
            "lr": lr,
            "finite": finite,
            "leaf_finite": leaf_finite,
        }
        return new_adapters, new_opt_state, metrics

    return member_step


def compile_train_step(member_step, mesh, state, base, vectorised: bool, sharding: str = "largest"):
    """jit over the mesh: the state is donated, the base is an argument, batches are sharded;
    base and state are split as the `sharding` strategy says (`mesh.base_sharding`)."""
    # Members of a vectorised run have their own batches (their seed orders their data).
    fn = jax.vmap(member_step, in_axes=(0, 0, None, 0, None, 0)) if vectorised else member_step

    def train_step(state, keys, base, batch):
        adapters, opt_state, metrics = fn(
            state["adapters"], state["opt_state"], state["step"], keys, base, batch
        )
        return {"adapters": adapters, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    state_sh = state_sharding(mesh, state, sharding)
    rep = NamedSharding(mesh, P())
    return jax.jit(
        train_step,
        in_shardings=(
            state_sh,
            rep,
            base_sharding(mesh, base, sharding),
            NamedSharding(mesh, batch_spec(vectorised)),
        ),
        out_shardings=(state_sh, rep),
        donate_argnums=(0,),
    )


def batch_spec(vectorised: bool) -> P:
    """Training batches: (members,) micro-batches, rows split over 'data'."""
    return P(None, None, "data") if vectorised else P(None, "data")


def compile_eval_step(forward, kind: str, vectorised: bool):
    """Outputs per example: logits / scores, or (summed NLL, tokens) for LM data."""

    def predict(adapters, base, batch):
        out = forward(adapters, base, batch, None)
        if kind == "lm":
            return jnp.stack(per_example_loss(out, batch, kind), -1)
        return out.astype(jnp.float32)

    predict_all = jax.vmap(predict, in_axes=(0, None, None)) if vectorised else predict

    def eval_step(adapters, base, batch):
        labels = batch.get("labels", batch["valid"])
        return predict_all(adapters, base, batch), labels, batch["valid"]

    return jax.jit(eval_step)
