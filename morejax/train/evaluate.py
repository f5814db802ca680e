"""Evaluation: the task's metrics on each validation split (GLUE) or loss and
generation accuracy (reasoning sets), per member; restoring a run's checkpoint to score it.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from morejax.train import checkpoints, distributed
from morejax.train.config import Experiment
from morejax.train.inputs import task_kind
from morejax.train.logger import say
from morejax.train.mesh import gather, state_sharding
from morejax.train.setup import setup
from morejax.train.step import compile_eval_step, make_forward


def metric_of(exp: Experiment) -> tuple[str, str]:
    """What picks the best checkpoint: the GLUE score on validation; for decoders the loss on
    the held-out validation slice (generation accuracy is on test sets: reported, never used
    to choose, unless `metric` says so)."""
    default = "loss" if task_kind(exp) == "lm" else "score"
    name = exp.metric or default
    return name, "min" if name in ("loss", "perplexity") else "max"


def evaluate(
    exp, eval_step, adapters, base, dev: dict, n_members: int | None, loaded=None
) -> list[dict]:
    """The task metrics on each evaluation split; one dict per member (one for a single run).

    Several splits (MNLI matched / mismatched) are reported under their names, and `score`
    is their mean; a 'test' split is reported but never chooses (the others' mean).
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
        chosen = [r for split, r in per_split.items() if split != "test"] or per_split.values()
        row["score"] = float(np.mean([results[m]["score"] for results in chosen]))
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
            scored = generation_accuracy if exp.data.generate_sets else None
            if exp.data.kind == "chat" and exp.data.exact_match:
                scored = exact_match
            if scored is not None and loaded is not None:
                member = len(results) - 1
                mine = jax.tree.map(lambda a, m=member: a[m], adapters) if n_members else adapters
                results[-1].update(scored(exp.data, loaded, base, mine))
        elif exp.data.kind == "text":
            from morejax.data.metrics import label_metrics

            n = exp.model.num_labels
            results.append(label_metrics(o, y, num_labels=n, metric=exp.data.metric))
        else:
            from morejax.data.metrics import glue_metrics

            results.append(glue_metrics(exp.data.task, o, y))
    return results


def generation_accuracy(data, loaded, base, adapters) -> dict:
    """Accuracy per reasoning set by greedy generation with the adapters, and the average."""
    from morejax.data import reasoning
    from morejax.models import generate

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


def exact_match(data, loaded, base, adapters) -> dict:
    """The first `generate_limit` validation rows of a chat run answered by greedy generation,
    each prompt tokenised as training saw it (a rendered chat carries its own special tokens)."""
    from morejax.data import chat
    from morejax.models import generate

    examples = chat.load(data, "validation")[: data.generate_limit]
    generate_fn = generate.text_generator(
        (loaded.model, None, loaded.tokenizer),
        base,
        adapters,
        max_new_tokens=data.generate_tokens,
        add_special_tokens="spans" not in examples[0],
    )
    score = chat.exact_match(generate_fn, examples, data.answer_regex, data.eval_batch_size)
    return {"exact_match": score}


def checkpoints_of(workdir: str | Path) -> Path:
    """A run's checkpoint folder; an error, before anything is created, when there is none."""
    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"no trained run in {workdir} (it has no checkpoints/ folder)")
    return directory


def restore_checkpoint(exp: Experiment, workdir: str | Path, which: str = "best"):
    """(setup, step, adapters, checkpoint dir) of a run's checkpoint: 'best', 'latest', a step."""
    directory = checkpoints_of(workdir)
    s = setup(exp)
    metric, mode = metric_of(exp)
    ckpt = checkpoints.Checkpoints(directory, metric=metric, mode=mode)
    try:
        step = ckpt.resolve(which)
        like = distributed.put(s.adapters, state_sharding(s.mesh, s.adapters, s.sharding))
        adapters = ckpt.restore_adapters(step, like)
    finally:
        ckpt.close()
    return s, step, adapters, ckpt.step_dir(step)


def evaluate_checkpoint(exp: Experiment, workdir: str | Path, which: str = "best") -> dict:
    """Restore a checkpoint's adapters and evaluate them."""
    s, step, adapters, where = restore_checkpoint(exp, workdir, which)
    split = exp.data.eval_split
    split = ", ".join(split) if isinstance(split, (tuple, list)) else split
    say(f"scoring {exp.data.task} ({split}) with the {which} checkpoint, step {step}: {where}")
    eval_step = compile_eval_step(
        make_forward(s.loaded.model, s.loaded.family), s.kind, s.n_members is not None
    )
    results = evaluate(exp, eval_step, adapters, s.base, s.dev_batches, s.n_members, s.loaded)
    return {"step": step, "checkpoint": str(where), "results": results}
