"""The training loop, read top to bottom: set up, restore, loop (step, log, evaluate,
save), summarise. Each step of a run is a named function below `train`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import morejax
from morejax import paths, points
from morejax.data import pipeline
from morejax.train import checkpoints, config, distributed
from morejax.train.checkpoints import is_better
from morejax.train.config import Experiment
from morejax.train.evaluate import evaluate, metric_of
from morejax.train.inputs import batch_keys, load_split, train_batches, truncation_warning
from morejax.train.logger import Logger, fmt, say
from morejax.train.mesh import state_sharding, to_global
from morejax.train.optim import make_optimizer, schedule_shape
from morejax.train.setup import Adapted, Setup, seed_keys, setup
from morejax.train.step import (
    batch_spec,
    compile_eval_step,
    compile_train_step,
    make_forward,
    make_member_step,
)


def train(
    exp: Experiment,
    workdir: str | Path,
    *,
    resolved: dict | None = None,
    stop_at: int | None = None,
    progress: bool = True,
    allow_config_change: bool = False,
    adapted: Adapted | None = None,
) -> dict:
    """Train (resuming from the workdir's latest checkpoint), evaluate, keep best + latest.

    `stop_at` ends the run after that step with a checkpoint, as a preemption would.
    Resuming with another config than the checkpoint's is an error naming the changed
    fields, unless `allow_config_change` (the new learning rate then applies).
    `adapted` (`setup.load_adapted`) is the model already loaded, with fresh adapters.
    Returns a summary (also written to `results.json` once the run is complete).
    """
    t_start = time.time()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    s = setup(exp, adapted)
    describe(exp, s)
    stream, steps = training_data(exp, s)
    run = start_run(exp, s, steps, workdir, resolved or {})
    restore(run, s, stream, allow_config_change)
    try:
        with stop_signals() as stop:
            last_eval = loop(exp, s, run, stream, stop_at, progress, stop)
    finally:
        run.logger.close()
        run.ckpt.wait()
        run.ckpt.close()
    out = summary(exp, s, run, last_eval, workdir, time.time() - t_start)
    if out["finished"] and jax.process_index() == 0:
        points.write_json(workdir / "results.json", out)  # whole, or the rerun trains again
    return {**out, "state": run.state}


@dataclasses.dataclass
class Run:
    """The moving parts of a run: state, compiled steps, checkpoints, the best so far."""

    steps: int
    state: dict
    keys: Any
    train_step: Any
    eval_step: Any
    ckpt: checkpoints.Checkpoints
    logger: Logger
    metric: str
    mode: str
    resolved: dict
    leaf_names: list = dataclasses.field(default_factory=list)
    skip_nonfinite: bool = False
    step: int = 0
    data_state: dict | None = None
    checked: int = 0  # steps whose finiteness was checked
    meta: dict = dataclasses.field(
        default_factory=lambda: {
            "best": None,
            "best_step": None,
            "best_members": None,
            "skipped_steps": 0,
        }
    )


def one_member(s: Setup):
    """Member 0 of a vectorised tree (the tree itself for a single run)."""
    if s.n_members is None:
        return lambda t: t
    return lambda t: jax.tree.map(lambda x: x[0], t)


def describe(exp: Experiment, s: Setup) -> None:
    """Devices, parameter counts, memory, and the step-0 check, on the console."""
    info = morejax.summarize(s.base, one_member(s)(s.adapters))
    leaves = jax.tree.leaves(s.base)
    per_device = sum(x.addressable_shards[0].data.nbytes for x in leaves) / 2**20
    say(
        f"devices {jax.device_count()} ({jax.devices()[0].platform}), mesh {dict(s.mesh.shape)}; "
        f"adapter params {info.adapter_params:,}, other trainable {info.other_trainable:,}, "
        f"frozen {info.base_params:,} ({sum(x.nbytes for x in leaves) / 2**20:.1f} MiB, "
        f"{per_device:.1f} MiB per device)" + (f"; {s.n_members} members" if s.n_members else "")
    )
    if s.init_error is None:
        return
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


def training_data(exp: Experiment, s: Setup):
    """(this process's stream of training batches, total steps)."""
    data_shards = math.lcm(s.mesh.shape["data"], jax.process_count())
    check_batch_split(exp, data_shards)
    data = exp.data
    source = load_split(data, data.train_split, data.train_limit, exp.model.num_labels)
    if source.overlap is not None:
        s.test_overlap["train"] = source.overlap.as_dict()
    warning = truncation_warning(data, s.kind, source, s.loaded.tokenizer, "train")
    if warning:
        say(warning)
    groups = exp.micro_batches * data_shards  # packing never mixes micro-batches or shards
    stream = train_batches(exp, s.kind, source, s.loaded.tokenizer, s.seeds, s.n_members, groups)
    return stream, total_steps(exp, len(source))


def check_batch_split(exp: Experiment, data_shards: int) -> None:
    if exp.batch_size % (exp.micro_batches * data_shards):
        raise ValueError(
            f"batch_size {exp.batch_size} does not split into {exp.micro_batches} micro-batches "
            f"over {data_shards} data shards"
        )


def start_run(exp: Experiment, s: Setup, steps: int, workdir: Path, resolved: dict) -> Run:
    """Optimizer and train state (float32, replicated; members lead), compiled steps."""
    vec = s.n_members is not None
    tx, shape = optimizer(exp, steps, one_member(s)(s.adapters))
    state, keys = initial_state(exp, tx, s.adapters, s.seeds, s.lrs, vec)
    state = distributed.put(state, state_sharding(s.mesh, state, s.sharding))
    forward, member_step = member_step_of(exp, s.kind, s.loaded.model, s.loaded.family, tx, shape)
    metric, mode = metric_of(exp)
    ckpt = checkpoints.Checkpoints(workdir / "checkpoints", metric=metric, mode=mode)
    ckpt.probe(state)  # an unwritable or full workdir fails now, not at the first save
    flat = jax.tree_util.tree_flatten_with_path(one_member(s)(s.adapters))[0]
    return Run(
        steps=steps,
        state=state,
        keys=keys,
        train_step=compile_train_step(member_step, s.mesh, state, s.base, vec, s.sharding),
        eval_step=compile_eval_step(forward, s.kind, vec),
        ckpt=ckpt,
        logger=Logger(workdir),
        metric=metric,
        mode=mode,
        resolved=resolved,
        leaf_names=[paths.path_str(kp) for kp, _ in flat],
        skip_nonfinite=exp.nonfinite == "skip",
    )


def optimizer(exp: Experiment, steps: int, member_adapters):
    """(optax transformation, learning-rate factor per update) of a run of `steps`."""
    return make_optimizer(exp.optimizer, steps, member_adapters), schedule_shape(
        exp.optimizer, steps
    )


def initial_state(exp: Experiment, tx, adapters, seeds: list, lrs: list, vec: bool):
    """(train state at step 0, dropout keys): float32 adapters and optimizer state, members
    leading when vectorised (each with its own peak learning rate and key)."""
    if vec:
        opt_state = jax.vmap(tx.init)(adapters)
        opt_state.hyperparams["learning_rate"] = jnp.asarray(lrs, jnp.float32)
        keys = jnp.stack([seed_keys(x)[1] for x in seeds])
    else:
        opt_state = tx.init(adapters)
        keys = seed_keys(exp.seed)[1]
    state = {"adapters": adapters, "opt_state": opt_state, "step": jnp.zeros((), jnp.int32)}
    return state, keys


def member_step_of(exp: Experiment, kind: str, model, family: str, tx, shape):
    """(forward, one member's optimizer step) as the config sets them."""
    if exp.nonfinite not in ("stop", "skip"):
        raise ValueError(f"nonfinite must be 'stop' or 'skip', got {exp.nonfinite!r}")
    forward = make_forward(model, family)
    member_step = make_member_step(
        forward,
        kind,
        tx,
        shape,
        exp.dropout,
        skip_nonfinite=exp.nonfinite == "skip",
        poison_step=exp.inject_nan_at,
    )
    return forward, member_step


def restore(run: Run, s: Setup, stream, allow_config_change: bool) -> None:
    """The newest readable checkpoint, if any: adapters, optimizer, step, data position, best
    so far. A damaged newest step is reported and the previous one used; one of another
    model / method / rank / targets / member count is an error before anything is written."""
    found = run.ckpt.restore_latest(run.state, run.resolved)
    if found is None:
        return
    _, restored = found
    check_resume_config(restored["config"], run.resolved, allow_config_change, run.ckpt)
    run.state, run.meta = restored["state"], {**run.meta, **restored["meta"]}
    stream.set_state(checkpoints.decode_data_state(restored["data"]))
    # The peak learning rate lives in the optimizer state: the config's applies.
    lrs = s.lrs if s.n_members is not None else s.lrs[0]
    run.state["opt_state"].hyperparams["learning_rate"] = jnp.asarray(lrs, jnp.float32)
    say(f"resumed at step {int(run.state['step'])} from {run.ckpt.directory}")


def loop(exp: Experiment, s: Setup, run: Run, stream, stop_at, progress: bool, stop):
    """Steps until the end (or `stop_at`, or a stop signal): log, evaluate and save on their
    schedules. Returns the last evaluation's results (None when nothing was evaluated)."""
    run.step = run.checked = int(run.state["step"])
    end = run.steps if stop_at is None else min(run.steps, stop_at)
    at_start = (exp.eval_at_start and run.step == 0) or run.step >= run.steps
    last_eval = run_eval(exp, s, run) if at_start else None
    bar = progress_bar(run) if progress and on_terminal() and jax.process_index() == 0 else None
    window, tokens, t_window = [], 0, time.time()
    # The data position of the last finished step: an interrupt between fetching a batch
    # and finishing its step must not save a position one batch ahead.
    run.data_state = checkpoints.encode_data_state(stream.get_state())
    try:
        while run.step < end:
            local = next(stream)
            tokens += pipeline.count_tokens(local)
            batch = to_global(s.mesh, split_micro(exp, s, local), batch_spec(s.n_members))
            run.state, metrics = run.train_step(run.state, run.keys, s.base, batch)
            run.step += 1
            run.data_state = checkpoints.encode_data_state(stream.get_state())
            window.append(metrics)
            evaluate_now = (exp.eval_every and run.step % exp.eval_every == 0) or (
                run.step == run.steps
            )
            save_now = run.step == end or (
                exp.checkpoint_every and run.step % exp.checkpoint_every == 0
            )
            log_now = run.step % max(exp.log_every, 1) == 0 or run.step == end
            if log_now or evaluate_now or save_now or stop.requested:
                window = check_finite(run, window)  # never evaluate or save a NaN state
            if log_now:
                rate = tokens * jax.process_count() / max(time.time() - t_window, 1e-9)
                row = log_train(run, window, rate)
                if bar is not None:
                    bar.set_postfix(loss=fmt(row["loss"]), tok_s=f"{row['tokens_per_s']:.0f}")
                    bar.update(run.step - bar.n)
                else:
                    say(
                        f"step {run.step}/{run.steps}: loss {fmt(row['loss'])}, "
                        f"{row['tokens_per_s']:.0f} tokens/s"
                    )
                window, tokens, t_window = [], 0, time.time()
            if evaluate_now:
                t_eval = time.time()
                last_eval = run_eval(exp, s, run)
                save(run, last_eval)
                t_window += time.time() - t_eval  # tokens/s counts training time only
            elif save_now or stop.requested:
                save(run, None)
            if stop.requested:
                raise Preempted(run.step, stop.requested)
    except KeyboardInterrupt:
        if not any(x.is_deleted() for x in jax.tree.leaves(run.state)):
            check_finite(run, window)
            say(f"interrupted at step {run.step}: saving a checkpoint")
            save(run, None)
        raise
    finally:
        if bar is not None:
            bar.close()
    return last_eval


class Preempted(points.Stopped):
    """A stop signal ended the run after a checkpoint; rerunning the command resumes."""

    def __init__(self, step: int, signame: str):
        super().__init__(f"stopped by {signame} at step {step}; checkpoint saved, rerun to resume")
        self.step, self.signame = step, signame


class NonFiniteError(ValueError):
    """A non-finite loss or gradient: the run stops before anything is saved."""


@contextlib.contextmanager
def stop_signals():
    """SIGTERM / SIGINT set a flag that the loop reads after its step (a checkpoint follows);
    a second SIGINT interrupts at once. Outside the main thread nothing is installed."""

    class Stop:
        requested: str | None = None

    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.requested = signal.Signals(signum).name
        say(f"{stop.requested} received: stopping after this step with a checkpoint")

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def check_finite(run: Run, window: list) -> list:
    """The window's metrics on the host; a non-finite step stops the run (naming the step and
    the first non-finite leaf) unless such steps are skipped, which are then counted."""
    window = jax.device_get(window)
    first = run.step - len(window) + 1
    for i, m in enumerate(window):
        step = first + i
        if step <= run.checked:
            continue
        bad = ~np.asarray(m["finite"], bool).reshape(-1)
        if not bad.any():
            continue
        if run.skip_nonfinite:
            run.meta["skipped_steps"] += int(bad.sum())
            say(f"step {step}: non-finite loss or gradient, step skipped ({int(bad.sum())})")
            continue
        member = int(np.argmax(bad))
        flags = np.asarray(m["leaf_finite"], bool).reshape(bad.size, -1)[member]
        leaf = run.leaf_names[int(np.argmin(flags))] if not flags.all() else "(the loss)"
        who = f" (member {member})" if bad.size > 1 else ""
        kept = run.ckpt.latest_step()
        kept = "no checkpoint yet" if kept is None else f"last good checkpoint: step {kept}"
        raise NonFiniteError(
            f"step {step}{who}: non-finite loss or gradient, first non-finite leaf {leaf}; "
            f"stopped without saving ({kept}); set nonfinite='skip' "
            "to skip such steps, or lower the learning rate"
        )
    run.checked = run.step
    return window


def on_terminal() -> bool:
    """Whether a person watches the console: redirected output (a log file, a scheduler)
    gets plain lines, never progress-bar frames."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def progress_bar(run: Run):
    from tqdm import tqdm

    return tqdm(
        total=run.steps, initial=run.step, file=sys.stderr, dynamic_ncols=True, mininterval=1.0
    )


def split_micro(exp: Experiment, s: Setup, local: dict) -> dict:
    """(members,) rows -> (members,) micro-batches x rows, for the accumulating step."""
    lead = 0 if s.n_members is None else 1
    return {
        k: np.reshape(
            local[k],
            (*np.shape(local[k])[:lead], exp.micro_batches, -1, *np.shape(local[k])[lead + 1 :]),
        )
        for k in batch_keys(exp.data, s.kind)
    }


def log_train(run: Run, window: list, tokens_per_s: float) -> dict:
    flags = ("finite", "leaf_finite")
    row = {k: np.mean([m[k] for m in window], axis=0) for k in window[0] if k not in flags}
    row["skipped"] = np.sum([1 - np.asarray(m["finite"], np.int32) for m in window], axis=0)
    row["tokens_per_s"] = tokens_per_s
    run.logger.write(run.step, "train", row)
    return row


def run_eval(exp: Experiment, s: Setup, run: Run) -> list[dict]:
    """Evaluate the current adapters; log and print one row (per-member lists if vectorised)."""
    adapters = run.state["adapters"]
    results = evaluate(exp, run.eval_step, adapters, s.base, s.dev_batches, s.n_members, s.loaded)
    row = results[0] if s.n_members is None else {k: [r[k] for r in results] for k in results[0]}
    run.logger.write(run.step, "eval", row)
    say(f"step {run.step}: " + ", ".join(f"{k} {fmt(v)}" for k, v in row.items()))
    return results


def save(run: Run, results: list[dict] | None) -> None:
    """A checkpoint of this step; with results, it also ranks for 'best' (mean over members)."""
    metrics, meta = None, run.meta
    if results is not None:
        values = [float(r[run.metric]) for r in results]
        metrics = {run.metric: float(np.mean(values))}
        if is_better(metrics[run.metric], meta["best"], run.mode):
            meta.update(best=metrics[run.metric], best_step=run.step)
        old = meta.get("best_members") or [None] * len(values)
        meta["best_members"] = [
            {"value": v, "step": run.step} if o is None or is_better(v, o["value"], run.mode) else o
            for v, o in zip(values, old)
        ]
    step_meta = {**meta, "step": run.step}
    run.ckpt.save(run.step, run.state, step_meta, run.data_state, run.resolved, metrics)


def summary(exp: Experiment, s: Setup, run: Run, last_eval, workdir: Path, wall: float) -> dict:
    vec = s.n_members is not None
    best_step, latest = run.meta["best_step"], run.ckpt.latest_step()
    return {
        "name": exp.name,
        "step": run.step,
        "steps": run.steps,
        "finished": run.step >= run.steps,
        "metric": run.metric,
        "final": (last_eval if vec else last_eval[0]) if last_eval else None,
        "best": run.meta["best"],
        "best_step": best_step,
        "best_members": run.meta["best_members"] if vec else None,
        "members": {"seeds": s.seeds, "learning_rates": s.lrs} if vec else None,
        "checkpoint": str(run.ckpt.step_dir(best_step)) if best_step is not None else None,
        "latest_checkpoint": str(run.ckpt.step_dir(latest)) if latest is not None else None,
        "init_error": s.init_error,
        "skipped_steps": run.meta.get("skipped_steps", 0),
        "test_overlap": s.test_overlap or None,
        "workdir": str(workdir),
        "wall_s": round(wall, 2),
    }


# LoRA / MoRe / DoRA start at exactly 0 and float32 SVD residuals at ~1e-7; a bf16 residual
# is ~1e-5 to 1e-3, the size of the minor components that MiLoRA trains.
INIT_ERROR_WARN = 1e-5


def check_resume_config(old: dict, new: dict, allow: bool, ckpt) -> None:
    """An error naming the fields a resumed run changes, unless `allow`."""
    changed = config.changes(old, new)
    if changed and not allow:
        raise ValueError(
            f"{ckpt.directory} holds a run of another config ({changed}); use another "
            "--workdir, or pass --allow-config-change to resume with the new values"
        )
    if changed:
        say(f"resuming with a changed config: {changed}")


def total_steps(exp: Experiment, n_train: int) -> int:
    if exp.steps:
        return int(exp.steps)
    if exp.epochs:
        return max(1, int(math.ceil(exp.epochs * n_train / exp.batch_size)))
    raise ValueError("set steps or epochs")
