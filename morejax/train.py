"""The training loop: one jitted step over a device mesh, evaluation, best checkpoint.

Read top to bottom: devices, model, optimizer, the compiled steps, data, evaluation,
logging, then `train`, which strings them together. The frozen base is an argument of
every compiled function (never a closure: closed-over weights become constants),
adapters and optimizer state are donated and stay float32, and gradients are taken
w.r.t. the adapters only. A vectorised run (`vmap_seeds` / `vmap_learning_rates`)
trains several members in one program: adapters and optimizer states carry a leading
member axis, the base and the batches are shared.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import morejax
from morejax import checkpointing, distributed, paths
from morejax.checkpointing import is_better
from morejax.config import Experiment

# ----------------------------------------------------------------------------- devices


def maybe_initialize_distributed() -> None:
    """Join a multi-host job when the environment describes one (morejax.distributed)."""
    from morejax import distributed

    distributed.initialize_from_env()


def make_mesh(spec) -> jax.sharding.Mesh:
    """A ('data', 'model') mesh; `model` > 1 shards the frozen base so that large models fit."""
    n = jax.device_count()
    model = max(1, spec.model if spec is not None else 1)
    data = spec.data if spec is not None and spec.data > 0 else n // model
    if data < 1 or data * model > n:
        raise ValueError(f"mesh data={data} x model={model} needs more than the {n} devices")
    if jax.process_count() > 1 and data % jax.process_count():
        raise ValueError(
            f"mesh.data={data} must be a multiple of the {jax.process_count()} processes "
            "(each feeds its own rows); lower mesh.model"
        )
    auto = jax.sharding.AxisType.Auto
    devices = jax.devices()[: data * model]
    return jax.make_mesh((data, model), ("data", "model"), (auto, auto), devices=devices)


def base_sharding(mesh, base):
    """Each frozen matrix split over 'model' on its largest divisible axis; the rest replicated."""
    m = mesh.shape["model"]

    def spec(x):
        for a in sorted(range(x.ndim), key=lambda a: -x.shape[a]):
            if m > 1 and x.ndim >= 2 and x.shape[a] % m == 0:
                return NamedSharding(
                    mesh, P(*[("model" if i == a else None) for i in range(x.ndim)])
                )
        return NamedSharding(mesh, P())

    return jax.tree.map(spec, base)


def replicated(mesh, tree):
    return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)


def to_global(mesh, local: dict, spec: P) -> dict:
    """This process's numpy rows -> global arrays sharded over 'data' (multi-host safe)."""
    sharding = NamedSharding(mesh, spec)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def gather(x) -> np.ndarray:
    """A global array on the host of every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


# ----------------------------------------------------------------------------- model


@dataclasses.dataclass
class Loaded:
    model: Any
    params: Any
    tokenizer: Any
    family: str


def model_from_config(spec):
    """The Linen module of a named config plus `overrides` (no weights)."""
    from morejax.models import bert, llama

    mod = {"bert": bert, "llama": llama}[spec.family]
    if spec.name not in mod.CONFIGS:
        raise ValueError(
            f"unknown {spec.family} config {spec.name!r}; known: {sorted(mod.CONFIGS)}"
        )
    fields = dict(spec.overrides or {}, scan_layers=spec.scan_layers, dtype=spec.dtype)
    if spec.family == "bert":
        cfg = mod.CONFIGS[spec.name].replace(num_labels=spec.num_labels, **fields)
        return mod.MODELS[spec.head or "encoder"](cfg)
    return mod.LlamaForCausalLM(mod.CONFIGS[spec.name].replace(**fields))


def _example_inputs(family: str) -> tuple:
    ids = jnp.zeros((1, 8), jnp.int32)
    return (ids, jnp.ones_like(ids), jnp.zeros_like(ids)) if family == "bert" else (ids,)


def abstract_params(spec):
    """(model, parameter shapes): nothing is read or allocated, so 7B models work anywhere."""
    model = model_from_config(spec)
    shapes = jax.eval_shape(model.init, jax.random.key(0), *_example_inputs(spec.family))
    return model, shapes["params"]


def kernel_layout(model, family: str, params):
    """Matrix views of 3-D+ kernels (scanned layers); None when every kernel is 2-D."""
    if all(x.ndim <= 2 for x in jax.tree.leaves(params)):
        return None
    return morejax.kernel_layout(model, *_example_inputs(family))


def load_model(spec, seed: int = 0) -> Loaded:
    """Pretrained weights through the registry, or a random init of a named config."""
    from morejax.models import registry
    from morejax.tokenizer import load_tokenizer

    if spec.pretrained:
        kw = dict(
            scan_layers=spec.scan_layers, dtype=spec.dtype, seed=seed, **(spec.overrides or {})
        )
        if spec.family == "bert":
            kw.update(head=spec.head, num_labels=spec.num_labels)
        where = spec.checkpoint or spec.name
        if where not in registry.PRETRAINED and not os.path.isdir(where):
            raise FileNotFoundError(
                f"no weights for {spec.name!r}: set model.checkpoint to a local Hugging Face "
                f"folder or one of {sorted(registry.PRETRAINED)} (`params` needs no weights)"
            )
        pre = registry.load_pretrained(where, **kw)
        return Loaded(pre.model, pre.params, pre.tokenizer, spec.family)
    model = model_from_config(spec)
    init = jax.jit(model.init)  # the frozen weights come from model.seed, not the run's seed
    params = init(jax.random.key(spec.seed), *_example_inputs(spec.family))["params"]
    tokenizer = None
    if spec.tokenizer:
        where = spec.tokenizer
        tokenizer = load_tokenizer(
            where if os.path.exists(where) else registry.find_model_dir(where)
        )
    return Loaded(model, params, tokenizer, spec.family)


def fresh_head(loaded: Loaded, seed: int):
    """A classification head initialised from `seed` (None when the model has none).

    Every run seed gets its own head, in separate runs and in vectorised members alike.
    """
    if loaded.family != "bert" or "head" not in loaded.params:
        return None
    from morejax.models import bert

    cfg = loaded.model.config
    init = jax.jit(bert.BertClassificationHead(cfg).init)
    return init(jax.random.key(seed), jnp.zeros((1, 1, cfg.hidden_size), cfg.dtype))["params"]


def task_kind(exp: Experiment) -> str:
    if exp.data.kind == "reasoning":
        return "lm"
    return "regression" if exp.model.num_labels == 1 else "classification"


_BATCH_KEYS = {
    "classification": ("input_ids", "attention_mask", "token_type_ids", "labels", "valid"),
    "regression": ("input_ids", "attention_mask", "token_type_ids", "labels", "valid"),
    "lm": ("input_ids", "attention_mask", "loss_mask", "valid"),
}


def model_inputs(family: str, batch) -> tuple:
    if family == "bert":
        return batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    return batch["input_ids"], batch["attention_mask"]


# ----------------------------------------------------------------------------- optimizer


def schedule_shape(opt, total_steps: int):
    """The learning-rate factor per update: linear warmup to 1, then linear/cosine/constant."""
    if opt.schedule not in ("linear", "cosine", "constant"):
        raise ValueError(f"schedule must be linear, cosine or constant, got {opt.schedule!r}")
    warmup = opt.warmup_steps
    if warmup is None:
        warmup = int(math.ceil(opt.warmup_ratio * total_steps))
    decay_steps, end = max(1, total_steps - warmup), opt.end_factor

    def shape(count):
        c = jnp.asarray(count, jnp.float32)
        t = jnp.clip((c - warmup) / decay_steps, 0.0, 1.0)
        if opt.schedule == "linear":
            decay = 1.0 - (1.0 - end) * t
        elif opt.schedule == "cosine":
            decay = end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
        else:
            decay = jnp.ones_like(t)
        return jnp.where(c < warmup, c / max(warmup, 1), decay)

    return shape


def make_optimizer(opt, total_steps: int, adapters) -> optax.GradientTransformation:
    """AdamW over the adapters; the peak learning rate is an injected (vmappable) hyperparameter.

    Clipping sees only adapter gradients (nothing else is differentiated). Leaves matching
    `no_decay` skip weight decay; `lr_groups` scales the updates of leaves matching each
    regex (first match wins).
    """
    shape = schedule_shape(opt, total_steps)
    no_decay = paths.compile_patterns(opt.no_decay or ())
    decay_mask = jax.tree_util.tree_map_with_path(
        lambda kp, _: not paths.matches_any(paths.path_str(kp), no_decay), adapters
    )
    groups = [(paths.compile_patterns(p), float(m)) for p, m in (opt.lr_groups or {}).items()]

    def group_of(kp, _):
        hits = [
            i for i, (pats, _) in enumerate(groups) if paths.matches_any(paths.path_str(kp), pats)
        ]
        return f"g{hits[0]}" if hits else "rest"

    def build(learning_rate):
        parts = []
        if opt.clip_norm:
            parts.append(optax.clip_by_global_norm(opt.clip_norm))
        parts.append(optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps))
        if opt.weight_decay:
            parts.append(optax.add_decayed_weights(opt.weight_decay, mask=decay_mask))
        if groups:
            scales = {f"g{i}": optax.scale(m) for i, (_, m) in enumerate(groups)}
            scales["rest"] = optax.identity()
            labels = jax.tree_util.tree_map_with_path(group_of, adapters)
            parts.append(optax.partition(scales, labels))
        parts.append(optax.scale_by_schedule(lambda count: -learning_rate * shape(count)))
        return optax.chain(*parts)

    return optax.inject_hyperparams(build)(learning_rate=opt.learning_rate)


# ----------------------------------------------------------------------------- compiled steps


def make_forward(model, family: str):
    def forward(adapters, base, batch, rng):
        kwargs: dict = {"deterministic": rng is None}
        if rng is not None:
            kwargs["rngs"] = {"dropout": rng}
        out = morejax.call(model.apply, base, adapters, *model_inputs(family, batch), **kwargs)
        return out[0] if isinstance(out, tuple) else out  # LLaMA returns (logits, cache)

    return forward


def per_example_loss(out, batch, kind: str):
    """(loss summed per row, count per row): sums make accumulation exact over micro-batches."""
    valid = batch["valid"].astype(jnp.float32)
    if kind == "lm":
        logp = jax.nn.log_softmax(out[:, :-1].astype(jnp.float32))
        nll = -jnp.take_along_axis(logp, batch["input_ids"][:, 1:, None], -1)[..., 0]
        mask = batch["loss_mask"][:, 1:].astype(jnp.float32) * valid[:, None]
        return jnp.sum(nll * mask, -1), jnp.sum(mask, -1)
    if kind == "regression":
        err = (out.astype(jnp.float32) - batch["labels"].astype(jnp.float32)) ** 2
    else:
        logp = jax.nn.log_softmax(out.astype(jnp.float32))
        err = -jnp.take_along_axis(logp, batch["labels"][:, None].astype(jnp.int32), -1)[:, 0]
    return err * valid, valid


def make_member_step(forward, kind: str, tx, shape, use_dropout: bool):
    """One optimizer step of one member; batch leaves are (micro_batches, b, ...)."""

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
        lr = opt_state.hyperparams["learning_rate"] * shape(opt_state.count)
        updates, opt_state = tx.update(grads, opt_state, adapters)
        adapters = optax.apply_updates(adapters, updates)
        metrics = {"loss": loss_sum / count, "grad_norm": optax.global_norm(grads), "lr": lr}
        return adapters, opt_state, metrics

    return member_step


def compile_train_step(member_step, mesh, state, base, vectorised: bool):
    """jit over the mesh: the state is donated, the base is an argument, batches are sharded."""
    # Members of a vectorised run have their own batches (their seed orders their data).
    fn = jax.vmap(member_step, in_axes=(0, 0, None, 0, None, 0)) if vectorised else member_step

    def train_step(state, keys, base, batch):
        adapters, opt_state, metrics = fn(
            state["adapters"], state["opt_state"], state["step"], keys, base, batch
        )
        return {"adapters": adapters, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    state_sh = replicated(mesh, state)
    rep = NamedSharding(mesh, P())
    return jax.jit(
        train_step,
        in_shardings=(
            state_sh,
            rep,
            base_sharding(mesh, base),
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


# ----------------------------------------------------------------------------- data


class Head:
    """The first `limit` examples of a random-access source (smoke runs, tests)."""

    def __init__(self, source, limit: int | None):
        self.source, self.n = source, len(source) if limit is None else min(limit, len(source))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.source[i]


def load_split(data, split: str, limit: int | None, num_labels: int | None = None):
    """A split's examples; GLUE labels are checked against the head here, not as a NaN later."""
    if data.kind == "glue":
        from morejax.data import glue

        source = glue.load(
            data.task, split, local_dir=data.local_dir, data_dir=data.data_dir, normalize=True
        )
        if num_labels is not None:
            glue.check_labels(data.task, source, num_labels, split)
    else:
        from morejax.data import reasoning

        source = reasoning.load_examples(data.task, split, data.local_dir)
    return Head(source, limit)


def data_seed(data, seed: int) -> int:
    """The data order's seed: the run's seed unless `data.seed` pins one."""
    return seed if data.seed is None else int(data.seed)


def batches(
    data,
    kind: str,
    source,
    tokenizer,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    num_labels: int | None = None,
):
    """Training: endless shuffled global batches (this process's rows), restorable.
    Evaluation: one ordered pass, the remainder padded with `valid=0` rows."""
    from morejax.data import pipeline

    kw = dict(data.pipeline or {})
    if kind == "lm":
        fn = pipeline.decoder_batches
    else:
        fn = pipeline.encoder_batches
        kw.setdefault("num_labels", num_labels)
    return fn(
        source,
        tokenizer,
        batch_size=batch_size,
        max_len=data.max_len,
        buckets=data.buckets,
        seed=seed,
        shuffle=train,
        epochs=None if train else 1,
        drop_remainder=train,
        num_threads=data.num_threads,
        **kw,
    )


def train_batches(exp: Experiment, kind: str, source, tokenizer, seeds: list, vec: bool):
    """The training stream: one iterator, or one per member stacked on a leading axis."""
    from morejax.data import pipeline

    def one(seed):
        return batches(
            exp.data,
            kind,
            source,
            tokenizer,
            exp.batch_size,
            train=True,
            seed=data_seed(exp.data, seed),
            num_labels=exp.model.num_labels,
        )

    return pipeline.StackedBatches([one(x) for x in seeds]) if vec else one(seeds[0])


def eval_splits(data) -> tuple[str, ...]:
    split = data.eval_split
    return (split,) if isinstance(split, str) else tuple(split)


def truncation_warning(data, kind: str, source, tokenizer, split: str) -> str | None:
    """Say how many examples of a split are longer than `data.max_len` (cut silently else)."""
    if kind == "lm" or tokenizer is None:
        return None
    from morejax.data import pipeline

    raw = pipeline._unwrap(tokenizer)
    n = min(len(source), 2000)
    rows = [source[i] for i in range(n)]
    texts = [r["text_a"] if r.get("text_b") is None else (r["text_a"], r["text_b"]) for r in rows]
    lengths = [len(e.ids) for e in pipeline._own_tokenizer(raw).encode_batch(texts)]
    over = sum(x > data.max_len for x in lengths)
    if over / max(n, 1) <= 0.01:
        return None
    return (
        f"warning: {over} of {n} {data.task} {split} examples are longer than data.max_len="
        f"{data.max_len} tokens (longest {max(lengths)}) and are truncated; raise data.max_len"
    )


# ----------------------------------------------------------------------------- evaluation


def evaluate(
    exp, eval_step, adapters, base, dev: dict, n_members: int | None, loaded=None
) -> list[dict]:
    """The task metrics on each evaluation split; one dict per member (one for a single run).

    Several splits (MNLI matched / mismatched) are reported under their names, and `score`
    is their mean.
    """
    per_split = {
        split: evaluate_split(exp, eval_step, adapters, base, b, n_members, loaded)
        for split, b in dev.items()
    }
    if len(per_split) == 1:
        return next(iter(per_split.values()))
    rows = []
    for m in range(len(next(iter(per_split.values())))):
        row = {}
        for split, results in per_split.items():
            name = split.removeprefix("validation_")
            row.update({f"{name}/{k}": v for k, v in results[m].items()})
        row["score"] = float(np.mean([results[m]["score"] for results in per_split.values()]))
        rows.append(row)
    return rows


def evaluate_split(
    exp, eval_step, adapters, base, dev_batches, n_members: int | None, loaded=None
) -> list[dict]:
    outs, labels, valid = [], [], []
    for batch in dev_batches:
        out, y, v = eval_step(adapters, base, batch)
        outs.append(gather(out))
        labels.append(gather(y))
        valid.append(gather(v) > 0)
    keep = np.concatenate(valid)
    out = np.concatenate(outs, axis=1 if n_members else 0)
    y = np.concatenate(labels)[keep]
    results = []
    for o in out if n_members else out[None]:
        o = o[keep]
        if task_kind(exp) == "lm":
            if o[:, 1].sum() == 0:
                raise ValueError(
                    f"no response tokens in the evaluation split after truncation to "
                    f"data.max_len={exp.data.max_len}: raise data.max_len"
                )
            loss = float(o[:, 0].sum() / o[:, 1].sum())
            results.append({"loss": loss, "perplexity": float(np.exp(min(loss, 50.0)))})
            if exp.data.generate_sets and loaded is not None:
                member = len(results) - 1
                mine = jax.tree.map(lambda a, m=member: a[m], adapters) if n_members else adapters
                results[-1].update(generation_accuracy(exp.data, loaded, base, mine))
        else:
            from morejax.metrics import glue_metrics

            results.append(glue_metrics(exp.data.task, o, y))
    return results


def generation_accuracy(data, loaded, base, adapters) -> dict:
    """Accuracy per reasoning set by greedy generation with the adapters, and the average."""
    from morejax import generate
    from morejax.data import reasoning

    pretrained = (loaded.model, None, loaded.tokenizer)
    generate_fn = generate.text_generator(
        pretrained, base, adapters, max_new_tokens=data.generate_tokens
    )
    scores = reasoning.evaluate(
        generate_fn,
        list(data.generate_sets),
        root=data.local_dir,
        limit=data.generate_limit,
        batch_size=data.eval_batch_size,
    )
    return {"accuracy": scores.pop("average"), **{f"accuracy/{k}": v for k, v in scores.items()}}


# ----------------------------------------------------------------------------- logging


class Logger:
    """metrics.jsonl and TensorBoard event files in the workdir (process 0 only)."""

    def __init__(self, workdir: Path):
        self.active = jax.process_index() == 0
        if self.active:
            from tensorboardX import SummaryWriter

            self.jsonl = open(workdir / "metrics.jsonl", "a")
            self.tb = SummaryWriter(str(workdir / "tb"))

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.active:
            return
        row = {"step": int(step), "split": split}
        row.update({k: np.asarray(v).tolist() for k, v in metrics.items()})
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        for k, v in metrics.items():
            v = np.asarray(v, np.float64)
            if v.ndim == 0:
                self.tb.add_scalar(f"{split}/{k}", float(v), step)
            else:
                for i, x in enumerate(v.reshape(-1)):
                    self.tb.add_scalar(f"{split}/{k}/member{i}", float(x), step)
        self.tb.flush()

    def close(self) -> None:
        if self.active:
            self.jsonl.close()
            self.tb.close()


def say(*args) -> None:
    if jax.process_index() == 0:
        print(*args, flush=True)


def _fmt(v) -> str:
    v = np.asarray(v)
    return f"{float(v):.4f}" if v.ndim == 0 else "[" + ", ".join(f"{x:.3f}" for x in v) + "]"


# ----------------------------------------------------------------------------- setup


def members(exp: Experiment) -> tuple[list[int], list[float]] | None:
    """Per-member (seeds, peak learning rates) of a vectorised run; None for a single run."""
    seeds, lrs = list(exp.vmap_seeds or ()), [float(x) for x in exp.vmap_learning_rates or ()]
    if not seeds and not lrs:
        return None
    n = max(len(seeds), len(lrs))
    seeds, lrs = seeds or [exp.seed], lrs or [float(exp.optimizer.learning_rate)]
    if len(seeds) not in (1, n) or len(lrs) not in (1, n):
        raise ValueError(f"vmap_seeds ({len(seeds)}) and vmap_learning_rates ({len(lrs)}) differ")
    return seeds * (n // len(seeds)), lrs * (n // len(lrs))


def seed_keys(seed: int):
    """(adapter init key, dropout key) of one seed: a vmapped member uses the same ones."""
    root = jax.random.key(seed)
    return jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)


def metric_of(exp: Experiment) -> tuple[str, str]:
    default = "score"
    if task_kind(exp) == "lm":
        default = "accuracy" if exp.data.generate_sets else "loss"
    name = exp.metric or default
    return name, "min" if name in ("loss", "perplexity") else "max"


@dataclasses.dataclass
class Setup:
    """What training and evaluation share: mesh, model, frozen base, initial adapters, data."""

    mesh: Any
    kind: str
    loaded: Loaded
    base: Any
    adapters: Any
    seeds: list
    lrs: list
    n_members: int | None
    dev_batches: dict
    init_error: float | None = None


def adapt_members(exp: Experiment, loaded: Loaded, seeds: list, layout):
    """(frozen base, adapters per member): the seed draws the adapters and the fresh head.

    The base (pretrained weights in `base_dtype`, PiSSA/MiLoRA residuals) is the same for
    every seed, so one copy is kept. Trainable leaves stay float32 whatever the base dtype.
    """
    base, adapters = None, []
    for seed in seeds:
        params = loaded.params
        head = fresh_head(loaded, seed)
        if head is not None:
            params = {**params, "head": morejax.cast(head, params_dtype(params))}
        b, a = morejax.adapt(
            params,
            exp.all_rules(),
            seed_keys(seed)[0],
            exclude=exp.exclude,
            trainable=exp.trainable,
            layout=layout,
        )
        base = b if base is None else base
        adapters.append(morejax.cast(a, jnp.float32))
    return base, adapters


def params_dtype(params):
    floats = [x.dtype for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)]
    return floats[0] if floats else jnp.float32


def init_error(forward, model, family: str, reference, base, adapters, batch) -> float:
    """Relative output change of the adapted model at step 0 against the unadapted one.

    Zero for LoRA / MoRe / DoRA; for PiSSA / MiLoRA it is the rounding of the residual to the
    base dtype, which is the size of the minor components that MiLoRA trains.
    """

    def plain(params, batch):
        out = model.apply({"params": params}, *model_inputs(family, batch), deterministic=True)
        return out[0] if isinstance(out, tuple) else out

    rows = {k: gather(v)[:4] for k, v in batch.items()}
    want = np.asarray(jax.jit(plain)(reference, rows), np.float64)
    got = np.asarray(jax.jit(forward)(adapters, base, rows, None), np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def setup(exp: Experiment) -> Setup:
    maybe_initialize_distributed()
    mesh = make_mesh(exp.mesh)
    kind = task_kind(exp)
    vec = members(exp)
    seeds, lrs = vec if vec else ([exp.seed], [float(exp.optimizer.learning_rate)])
    loaded = load_model(exp.model, seed=seeds[0])
    # The base model is the pretrained one in base_dtype: adapters start exactly on it (DoRA's
    # magnitudes and PiSSA/MiLoRA's SVD see the weights as they are stored).
    if exp.base_dtype != "float32":
        loaded.params = morejax.cast(loaded.params, jnp.dtype(exp.base_dtype))
    layout = kernel_layout(loaded.model, loaded.family, loaded.params)
    base, adapted = adapt_members(exp, loaded, seeds, layout)
    adapters = adapted[0] if not vec else jax.tree.map(lambda *xs: jnp.stack(xs), *adapted)

    # The evaluation split(s) as global device arrays, built once.
    granule = math.lcm(mesh.shape["data"], jax.process_count())
    eval_bs = int(math.ceil(exp.data.eval_batch_size / granule) * granule)
    keys = _BATCH_KEYS[kind]
    dev = {}
    for split in eval_splits(exp.data):
        source = load_split(exp.data, split, exp.data.eval_limit, exp.model.num_labels)
        warning = truncation_warning(exp.data, kind, source, loaded.tokenizer, split)
        if warning:
            say(warning)
        dev[split] = [
            to_global(mesh, {k: b[k] for k in keys}, P("data"))
            for b in batches(
                exp.data,
                kind,
                source,
                loaded.tokenizer,
                eval_bs,
                train=False,
                num_labels=exp.model.num_labels,
            )
        ]

    error = None
    if exp.init_check:
        reference = loaded.params
        head = fresh_head(loaded, seeds[0])
        if head is not None:
            reference = {**reference, "head": morejax.cast(head, params_dtype(reference))}
        first = next(iter(dev.values()))[0]
        forward = make_forward(loaded.model, loaded.family)
        error = init_error(forward, loaded.model, loaded.family, reference, base, adapted[0], first)
    loaded.params = None
    base = distributed.put(base, base_sharding(mesh, base))
    return Setup(
        mesh, kind, loaded, base, adapters, seeds, lrs, len(seeds) if vec else None, dev, error
    )


# ----------------------------------------------------------------------------- the run


INIT_ERROR_WARN = 1e-3
# Fields that change neither the training trajectory nor the results' meaning.
RESUME_SAFE = (
    "name",
    "log_every",
    "eval_every",
    "eval_at_start",
    "checkpoint_every",
    "data.num_threads",
    "data.eval_batch_size",
)


def check_resume_config(old: dict, new: dict, allow: bool, ckpt) -> list[str]:
    """The fields a resumed run changes; an error naming them unless `allow`."""
    changed = sorted(
        k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUME_SAFE
    )
    if changed and old and new:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
        more = f" (+{len(changed) - 8} more)" if len(changed) > 8 else ""
        if not allow:
            raise ValueError(
                f"{ckpt.directory} holds a run of another config ({shown}{more}); use another "
                "--workdir, or pass --allow-config-change to resume with the new values"
            )
        say(f"resuming with a changed config: {shown}{more}")
    return changed


def total_steps(exp: Experiment, n_train: int) -> int:
    if exp.steps:
        return int(exp.steps)
    if exp.epochs:
        return max(1, int(math.ceil(exp.epochs * n_train / exp.batch_size)))
    raise ValueError("set steps or epochs")


def train(
    exp: Experiment,
    workdir: str | Path,
    *,
    resolved: dict | None = None,
    stop_at: int | None = None,
    progress: bool = True,
    allow_config_change: bool = False,
) -> dict:
    """Train (resuming from the workdir's latest checkpoint), evaluate, keep best + latest.

    `stop_at` ends the run after that step with a checkpoint, as a preemption would.
    Resuming with another config than the checkpoint's is an error naming the changed
    fields, unless `allow_config_change` (the new learning rate then applies).
    Returns a summary (also written to `results.json` once the run is complete).
    """
    t_start = time.time()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    s = setup(exp)
    mesh, kind, vec = s.mesh, s.kind, s.n_members is not None
    one = (lambda t: jax.tree.map(lambda x: x[0], t)) if vec else (lambda t: t)
    info = morejax.summarize(s.base, one(s.adapters))
    leaves = jax.tree.leaves(s.base)
    per_device = sum(x.addressable_shards[0].data.nbytes for x in leaves) / 2**20
    say(
        f"devices {jax.device_count()} ({jax.devices()[0].platform}), mesh {dict(mesh.shape)}; "
        f"adapter params {info.adapter_params:,}, other trainable {info.other_trainable:,}, "
        f"frozen {info.base_params:,} ({sum(x.nbytes for x in leaves) / 2**20:.1f} MiB, "
        f"{per_device:.1f} MiB per device)" + (f"; {s.n_members} members" if vec else "")
    )
    if s.init_error is not None:
        say(
            f"init check: the adapted model's outputs differ from the base model's by "
            f"{s.init_error:.1e} (relative) at step 0"
        )
        if s.init_error > INIT_ERROR_WARN:
            say(
                f"warning: the adapters do not start at the base model (relative output change "
                f"{s.init_error:.1e} > {INIT_ERROR_WARN:g}); for PiSSA / MiLoRA with a "
                f"{exp.base_dtype} base, adapter.residual_dtype='float32' keeps the residual exact"
            )

    # Training data: this process's rows of each global batch.
    data_shards = math.lcm(mesh.shape["data"], jax.process_count())
    if exp.batch_size % (exp.micro_batches * data_shards):
        raise ValueError(
            f"batch_size {exp.batch_size} does not split into {exp.micro_batches} micro-batches "
            f"over {data_shards} data shards"
        )
    source = load_split(exp.data, exp.data.train_split, exp.data.train_limit, exp.model.num_labels)
    warning = truncation_warning(exp.data, kind, source, s.loaded.tokenizer, "train")
    if warning:
        say(warning)
    stream = train_batches(exp, kind, source, s.loaded.tokenizer, s.seeds, vec)
    steps = total_steps(exp, len(source))

    # Optimizer and train state (float32, replicated; the member axis leads when vectorised).
    shape = schedule_shape(exp.optimizer, steps)
    tx = make_optimizer(exp.optimizer, steps, one(s.adapters))
    if vec:
        opt_state = jax.vmap(tx.init)(s.adapters)
        opt_state.hyperparams["learning_rate"] = jnp.asarray(s.lrs, jnp.float32)
        keys = jnp.stack([seed_keys(x)[1] for x in s.seeds])
    else:
        opt_state = tx.init(s.adapters)
        keys = seed_keys(exp.seed)[1]
    state = {"adapters": s.adapters, "opt_state": opt_state, "step": jnp.zeros((), jnp.int32)}
    state = distributed.put(state, replicated(mesh, state))

    # Resume from the latest checkpoint (adapters, optimizer, step, data position).
    metric, mode = metric_of(exp)
    ckpt = checkpointing.Checkpoints(workdir / "checkpoints", metric=metric, mode=mode)
    meta: dict = {"best": None, "best_step": None, "best_members": None}
    if ckpt.latest_step() is not None:
        restored = ckpt.restore(ckpt.latest_step(), state)
        state, meta = restored["state"], {**meta, **restored["meta"]}
        check_resume_config(restored["config"], resolved or {}, allow_config_change, ckpt)
        stream.set_state(checkpointing.decode_data_state(restored["data"]))
        # The peak learning rate lives in the optimizer state: the config's applies.
        state["opt_state"].hyperparams["learning_rate"] = jnp.asarray(
            s.lrs if vec else s.lrs[0], jnp.float32
        )
        say(f"resumed at step {int(state['step'])} from {ckpt.directory}")

    forward = make_forward(s.loaded.model, s.loaded.family)
    member_step = make_member_step(forward, kind, tx, shape, exp.dropout)
    train_step = compile_train_step(member_step, mesh, state, s.base, vec)
    eval_step = compile_eval_step(forward, kind, vec)
    logger = Logger(workdir)

    def run_eval(step: int) -> list[dict]:
        results = evaluate(
            exp, eval_step, state["adapters"], s.base, s.dev_batches, s.n_members, s.loaded
        )
        row = results[0] if not vec else {k: [r[k] for r in results] for k in results[0]}
        logger.write(step, "eval", row)
        say(f"step {step}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in row.items()))
        return results

    def save(step: int, results: list[dict] | None) -> None:
        nonlocal meta
        metrics = None
        if results is not None:
            values = [float(r[metric]) for r in results]
            metrics = {metric: float(np.mean(values))}
            if is_better(metrics[metric], meta["best"], mode):
                meta.update(best=metrics[metric], best_step=step, best_results=results)
            old = meta.get("best_members") or [None] * len(values)
            meta["best_members"] = [
                {"value": v, "step": step} if o is None or is_better(v, o["value"], mode) else o
                for v, o in zip(values, old)
            ]
        ckpt.save(step, state, {**meta, "step": step}, data_state, resolved or {}, metrics)

    # The loop.
    step = int(state["step"])
    end = steps if stop_at is None else min(steps, stop_at)
    last_eval = run_eval(step) if (exp.eval_at_start and step == 0) or step >= steps else None
    show = progress and jax.process_index() == 0
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=step, file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
    window, tokens, t_window = [], 0, time.time()
    # The data position of the last finished step: an interrupt between fetching a batch
    # and finishing its step must not save a position one batch ahead.
    data_state = checkpointing.encode_data_state(stream.get_state())
    lead = 1 if vec else 0  # the member axis of a vectorised run's batches
    try:
        while step < end:
            local = next(stream)
            tokens += int(
                np.sum(np.asarray(local["attention_mask"]) * np.asarray(local["valid"])[..., None])
            )
            local = {
                k: np.reshape(
                    local[k],
                    (
                        *np.shape(local[k])[:lead],
                        exp.micro_batches,
                        -1,
                        *np.shape(local[k])[lead + 1 :],
                    ),
                )
                for k in _BATCH_KEYS[kind]
            }
            state, metrics = train_step(
                state, keys, s.base, to_global(mesh, local, batch_spec(vec))
            )
            step += 1
            data_state = checkpointing.encode_data_state(stream.get_state())
            window.append(metrics)
            if step % max(exp.log_every, 1) == 0 or step == end:
                window = jax.device_get(window)
                row = {k: np.mean([m[k] for m in window], axis=0) for k in window[0]}
                row["tokens_per_s"] = (
                    tokens * jax.process_count() / max(time.time() - t_window, 1e-9)
                )
                logger.write(step, "train", row)
                if bar is not None:
                    bar.set_postfix(loss=_fmt(row["loss"]), tok_s=f"{row['tokens_per_s']:.0f}")
                    bar.update(step - bar.n)
                window, tokens, t_window = [], 0, time.time()
            if (exp.eval_every and step % exp.eval_every == 0) or step == steps:
                last_eval = run_eval(step)
                save(step, last_eval)
            elif step == end or (exp.checkpoint_every and step % exp.checkpoint_every == 0):
                save(step, None)
    except KeyboardInterrupt:
        if not any(x.is_deleted() for x in jax.tree.leaves(state)):
            say(f"interrupted at step {step}: saving a checkpoint")
            save(step, None)
        raise
    finally:
        if bar is not None:
            bar.close()
        logger.close()
        ckpt.wait()
        ckpt.close()

    best_step = meta["best_step"]
    out = {
        "name": exp.name,
        "step": step,
        "steps": steps,
        "finished": step >= steps,
        "metric": metric,
        "final": (last_eval if vec else last_eval[0]) if last_eval else None,
        "best": meta["best"],
        "best_step": best_step,
        "best_members": meta["best_members"] if vec else None,
        "members": {"seeds": s.seeds, "learning_rates": s.lrs} if vec else None,
        "checkpoint": str(ckpt.step_dir(best_step)) if best_step is not None else None,
        "init_error": s.init_error,
        "workdir": str(workdir),
        "wall_s": round(time.time() - t_start, 2),
    }
    if out["finished"] and jax.process_index() == 0:
        (workdir / "results.json").write_text(json.dumps(out, indent=1) + "\n")
    return {**out, "state": state}


# ----------------------------------------------------------------------------- eval / params


def restore_checkpoint(exp: Experiment, workdir: str | Path, which: str = "best"):
    """(setup, step, adapters, checkpoint dir) of a run's checkpoint: 'best', 'latest', a step."""
    s = setup(exp)
    metric, mode = metric_of(exp)
    ckpt = checkpointing.Checkpoints(Path(workdir) / "checkpoints", metric=metric, mode=mode)
    try:
        step = ckpt.resolve(which)
        like = distributed.put(s.adapters, replicated(s.mesh, s.adapters))
        adapters = ckpt.restore_adapters(step, like)
    finally:
        ckpt.close()
    return s, step, adapters, ckpt.step_dir(step)


def evaluate_checkpoint(exp: Experiment, workdir: str | Path, which: str = "best") -> dict:
    """Restore a checkpoint's adapters and evaluate them."""
    s, step, adapters, where = restore_checkpoint(exp, workdir, which)
    eval_step = compile_eval_step(
        make_forward(s.loaded.model, s.loaded.family), s.kind, s.n_members is not None
    )
    results = evaluate(exp, eval_step, adapters, s.base, s.dev_batches, s.n_members, s.loaded)
    return {"step": step, "checkpoint": str(where), "results": results}


def param_summary(exp: Experiment):
    """The adapted-parameter summary from shapes alone (no weights are read or allocated)."""
    model, shapes = abstract_params(exp.model)
    layout = kernel_layout(model, exp.model.family, shapes)

    def adapt(params):
        key = jax.random.key(exp.seed)
        return morejax.adapt(
            params,
            exp.all_rules(),
            key,
            exclude=exp.exclude,
            trainable=exp.trainable,
            layout=layout,
        )

    base, adapters = jax.eval_shape(adapt, shapes)
    return morejax.summarize(base, adapters)
