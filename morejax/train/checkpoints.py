"""Adapter-sized checkpoints with orbax: the train state, the data position, the config.

Each step directory holds `adapters`, `optimizer` (optimizer state and step; never
the frozen base), `meta` (best metric so far, ...), `data` (the data iterator's JSON state) and
`config` (the resolved config). Kept: the two latest and the best one on the validation metric.

Faults, and what each one does:
- a kill at any moment: orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it
  when complete; step listings ignore such folders and opening the manager removes them. An
  old step is renamed into `.deleted/` before it is removed, so a kill mid-delete never
  leaves a half-deleted step under a step name.
- a committed step that cannot be read back (a file damaged or deleted later):
  `restore_latest` names it and the item, resumes from the newest older step that reads
  back, and moves the damaged one aside to `<step>.damaged` (never deleting it), since a
  newer step left in place would stay "latest" and make orbax delete the steps saved after.
- a checkpoint of another model / adapter / rank / member count: `check_compatible` compares
  the saved trees (from orbax's metadata, nothing restored) with the run's, before restoring.
- a read-only or full disk: `probe` fails at start; a failed `save` names the step and folder
  and keeps every earlier step (orbax deletes old steps only after a save succeeded).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from morejax import paths
from morejax.train.config import SHAPE_FIELDS
from morejax.train.disk import errno_of, one_line, probe_writable
from morejax.train.logger import say

ITEMS = ("adapters", "optimizer", "meta", "data", "config")
# Names beside the step folders; orbax's step listing skips them (they are not step numbers).
TRASH = ".deleted"
DAMAGED = ".damaged"
TMP_SUFFIX = ".orbax-checkpoint-tmp"
MAX_SHOWN = 8
KEEP_LATEST = 2


class DamagedCheckpointError(ValueError):
    """A committed step that does not read back: names its folder and the failing item."""

    def __init__(self, path: Path, item: str, reason: str):
        self.path, self.item, self.reason = Path(path), item, reason
        super().__init__(f"checkpoint {path} is damaged: {item}: {reason}")


class CheckpointMismatchError(ValueError):
    """A checkpoint made for other adapters (model, method, rank, targets, member count)."""


def is_better(value: float, best: float | None, mode: str) -> bool:
    """Ties go to the later step, as orbax's BestN keeps the later of equal checkpoints."""
    return best is None or (value >= best if mode == "max" else value <= best)


def encode_data_state(state: Any) -> dict:
    """Iterator states as JSON: dicts pass through, bytes (grain) are kept as text."""
    if isinstance(state, bytes):
        return {"__bytes__": state.decode("utf-8")}
    return json.loads(json.dumps(state))


def decode_data_state(state: dict) -> Any:
    if isinstance(state, dict) and set(state) == {"__bytes__"}:
        return state["__bytes__"].encode("utf-8")
    return state


def abstract(tree):
    """Shape/dtype/sharding targets for restoring onto the same devices as `tree`."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )


def signature(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    """{'/'-joined leaf path: (shape, dtype)} of arrays or of orbax's array metadata.

    Keys are plain strings, so a namedtuple field, a dict key and a list index saved by
    orbax (which stores custom nodes as dicts) match the live tree's.
    """
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None and not isinstance(leaf, (bool, int, float, complex, np.generic)):
            continue  # orbax's placeholders for empty nodes
        shape = getattr(leaf, "shape", None)
        shape = np.shape(leaf) if shape is None else shape
        dtype = np.asarray(leaf).dtype if dtype is None else dtype
        out[paths.path_str(path)] = (tuple(int(d) for d in shape), str(np.dtype(dtype)))
    return out


def tree_differences(saved: dict, expected: dict) -> list[str]:
    """What differs between two `signature`s, one line per leaf (checkpoint vs this run)."""
    lines = [f"{p} missing in checkpoint" for p in expected if p not in saved]
    lines += [f"{p} extra in checkpoint" for p in saved if p not in expected]
    for p in expected:
        if p in saved and saved[p] != expected[p]:
            (s_shape, s_dtype), (e_shape, e_dtype) = saved[p], expected[p]
            what = [f"shape {s_shape} vs {e_shape}"] if s_shape != e_shape else []
            what += [f"dtype {s_dtype} vs {e_dtype}"] if s_dtype != e_dtype else []
            lines.append(f"{p} {', '.join(what)}")
    return lines


def config_differences(saved: dict | None, current: dict | None) -> list[str]:
    """The `SHAPE_FIELDS` that differ between two flat resolved configs ("old -> new")."""
    if not saved or not current:
        return []
    out = []
    for name in SHAPE_FIELDS:
        old, new = _field(saved, name), _field(current, name)
        if old != new:
            out.append(f"{name}: {_show(old)} -> {_show(new)}")
    return out


def _field(cfg: dict, name: str):
    """A field of a flat config; a list or dict field is flattened as `name[i]` keys."""
    if name in cfg:
        return cfg[name]
    sub = {k[len(name) :]: v for k, v in cfg.items() if k.startswith((name + "[", name + "."))}
    return sub or None


def _show(value) -> str:
    if isinstance(value, dict) and value and all(k[1:-1].isdigit() for k in value):
        return repr([value[k] for k in sorted(value, key=lambda k: int(k[1:-1]))])
    return repr(value)


def nbytes(tree) -> int:
    """Bytes of the leaves, without fetching them (a leaf split over processes cannot be)."""
    return int(
        sum(
            x.nbytes if hasattr(x, "nbytes") else np.asarray(x).nbytes
            for x in jax.tree.leaves(tree)
        )
    )


class Checkpoints:
    """An orbax CheckpointManager keeping the latest step and the best one by `metric`."""

    def __init__(
        self,
        directory: str | Path,
        *,
        metric: str = "score",
        mode: str = "max",
        keep_latest: int = KEEP_LATEST,
    ):
        self.directory = Path(directory).absolute()
        self.metric, self.mode = metric, mode
        best = cm.BestN(
            get_metric_fn=lambda m: m[metric],
            reverse=mode == "min",
            n=1,
            keep_checkpoints_without_metrics=False,
        )
        # Two latest: a damaged newest step always has a previous one to fall back to.
        latest = cm.LatestN(n=keep_latest)
        policy = cm.AnyPreservationPolicy([latest, _SavedMetrics(best, self._metrics)])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
            todelete_subdir=TRASH,
            create=True,
        )
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        except Exception:
            probe_writable(self.directory)  # the clear error when the folder is the cause
            raise
        self._empty_trash()

    def _metrics(self, step: int) -> dict | None:
        """A step's ranking metrics from its `meta` item (None: not evaluated, unreadable)."""
        try:
            metrics = self.read_meta(step).get("metrics")
        except DamagedCheckpointError:
            return None
        return metrics if isinstance(metrics, dict) and self.metric in metrics else None

    def probe(self, like=None) -> None:
        """Fail now, naming the folder, if a checkpoint (about the size of `like`) cannot be
        written there: read-only, full, no permission."""
        probe_writable(self.directory, nbytes(like) + 2**20 if like is not None else 0)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The kept step with the best recorded metric (None when none was evaluated)."""
        best, best_step = None, None
        for step in sorted(self.all_steps()):
            try:
                value = self.read_meta(step).get("metrics", {}).get(self.metric)
            except DamagedCheckpointError as e:
                say(f"warning: skipping {e}")
                continue
            if value is None:
                continue
            if is_better(value, best, self.mode):
                best, best_step = value, step
        return best_step

    def resolve(self, which: str | int) -> int:
        """'best' (falls back to latest), 'latest', or a step number."""
        if isinstance(which, int) or str(which).isdigit():
            step = int(which)
        elif which == "best":
            step = self.best_step()
            step = self.latest_step() if step is None else step
        elif which == "latest":
            step = self.latest_step()
        else:
            raise ValueError(f"checkpoint must be 'best', 'latest' or a step, got {which!r}")
        if step is None or step not in self.all_steps():
            raise FileNotFoundError(
                f"no checkpoint {which!r} in {self.directory} (steps: {self.all_steps()})"
            )
        return step

    def step_dir(self, step: int | None) -> Path | None:
        return None if step is None else self.directory / str(step)

    def save(
        self, step: int, state, meta: dict, data_state: dict, config: dict, metrics=None
    ) -> bool:
        """Write one step (synchronously; it is small). `metrics` ranks it for 'best'.

        False when the step is on disk already (a Ctrl-C right after a scheduled save: the
        state is the saved one). A failure raises OSError (a disk or permission cause) or
        RuntimeError naming the step and folder; the earlier steps stay, and the partial
        step folder is removed (best effort: orbax's next open or save removes any rest).
        """
        if step in self.all_steps():
            return False
        meta = {**meta, "metrics": metrics or {}}
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    adapters=ocp.args.StandardSave(state["adapters"]),
                    optimizer=ocp.args.StandardSave(
                        {"opt_state": state["opt_state"], "step": state["step"]}
                    ),
                    meta=ocp.args.JsonSave(_json(meta)),
                    data=ocp.args.JsonSave(_json(data_state)),
                    config=ocp.args.JsonSave(_json(config)),
                ),
                metrics=metrics,
                force=True,
            )
        except Exception as e:
            raise self._save_failed(step, e) from e
        self._empty_trash()
        return True

    def _save_failed(self, step: int, e: Exception) -> Exception:
        if jax.process_index() == 0:
            for tmp in self.directory.glob(f"{step}{TMP_SUFFIX}*"):
                shutil.rmtree(tmp, ignore_errors=True)
        self.manager.reload()
        code = errno_of(e)
        cause = f"{os.strerror(code)} ({one_line(e)})" if code else one_line(e)
        text = (
            f"could not write checkpoint step {step} to {self.directory}: {cause}; the earlier "
            f"checkpoints there are kept (steps {self.all_steps()})"
        )
        if code is None:
            return RuntimeError(text)
        return OSError(code, f"{text}; free some space or fix the folder, or use another --workdir")

    def check_compatible(self, step: int, like, config: dict | None = None) -> None:
        """Raise CheckpointMismatchError when `step` was saved for other trees than `like`.

        `like` is a train state ({'adapters', 'opt_state', 'step'}) or an adapters tree.
        Reads only orbax's metadata; the message lists up to 8 differing leaves and, when
        `config` (this run's flat resolved config) is given, the fields that explain them.
        A step whose metadata does not read raises DamagedCheckpointError.
        """
        lines = []
        for item, tree in self._trees(like).items():
            diffs = tree_differences(self._saved_signature(step, item), signature(tree))
            lines += [f"{item}: {d}" for d in diffs]
            if lines:
                break  # other adapters imply another optimizer state: name the cause only
        if not lines:
            return
        shown = "; ".join(lines[:MAX_SHOWN])
        more = f" (+{len(lines) - MAX_SHOWN} more)" if len(lines) > MAX_SHOWN else ""
        fields = []
        if config:
            try:
                fields = config_differences(self._restore_json(step, "config"), config)
            except DamagedCheckpointError:
                pass
        why = f"; config {', '.join(fields)}" if fields else ""
        raise CheckpointMismatchError(
            f"checkpoint step {step} in {self.directory} was saved for another model, adapter, "
            f"rank, targets, member count or optimizer than this run's (checkpoint vs run: "
            f"{shown}{more})"
            f"{why}; use another --workdir, or move {self.directory} away to start afresh"
        )

    def _trees(self, like) -> dict:
        if isinstance(like, dict) and {"adapters", "opt_state"} <= set(like):
            return {
                "adapters": like["adapters"],
                "optimizer": {"opt_state": like["opt_state"], "step": like["step"]},
            }
        return {"adapters": like}

    def _saved_signature(self, step: int, item: str) -> dict:
        path = self._item_dir(step, item)
        try:
            return signature(ocp.StandardCheckpointHandler().metadata(path))
        except Exception as e:
            raise DamagedCheckpointError(path.parent, item, one_line(e)) from e

    def _item_dir(self, step: int, item: str) -> Path:
        path = self.directory / str(step) / item
        if not path.is_dir():
            raise DamagedCheckpointError(path.parent, item, f"the folder {path} is missing")
        return path

    def _restore(self, step: int, args: dict) -> dict:
        """Restore some items; a failure names the item that does not read back."""
        for item in args:
            self._item_dir(step, item)
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as e:
            error = e
        if len(args) > 1:
            for item, arg in args.items():
                self._restore(step, {item: arg})
        raise DamagedCheckpointError(
            self.directory / str(step), "/".join(args), one_line(error)
        ) from error

    def _restore_json(self, step: int, item: str):
        return self._restore(step, {item: ocp.args.JsonRestore()})[item]

    def restore(self, step: int, like, config: dict | None = None) -> dict:
        """State (onto the shardings of `like`), meta, data state and config of a step.

        Checks the trees first (`check_compatible`); a step that does not read back raises
        DamagedCheckpointError naming the item.
        """
        self.check_compatible(step, like, config)
        out = self._restore(
            step,
            dict(
                adapters=ocp.args.StandardRestore(abstract(like["adapters"])),
                optimizer=ocp.args.StandardRestore(
                    abstract({"opt_state": like["opt_state"], "step": like["step"]})
                ),
                meta=ocp.args.JsonRestore(),
                data=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
            ),
        )
        state = {"adapters": out["adapters"], **out["optimizer"]}
        return {
            "state": state,
            "meta": dict(out["meta"]),
            "data": out["data"],
            "config": dict(out["config"] or {}),
        }

    def restore_latest(self, like, config: dict | None = None) -> tuple[int, dict] | None:
        """(step, `restore`'s dict) of the newest step that reads back; None without any step.

        A damaged newer step is reported (one line each) and, once an older one restored,
        moved aside to `<step>.damaged` (never deleted). A step of other trees than `like`
        raises CheckpointMismatchError (no fallback); no readable step raises ValueError.
        """
        damaged = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                out = self.restore(step, like, config)
            except DamagedCheckpointError as e:
                damaged.append((step, e))
                continue
            for bad, e in damaged:
                aside = self._set_aside(bad)
                say(
                    f"warning: skipped damaged checkpoint {e.path} ({e.item}: {e.reason}); "
                    f"moved it to {aside}, resuming from step {step}"
                )
            return step, out
        if not damaged:
            return None
        shown = "; ".join(f"step {s}: {e.item}: {e.reason}" for s, e in damaged)
        raise ValueError(
            f"no readable checkpoint in {self.directory} ({shown}); nothing was deleted: move "
            f"{self.directory} away (or use another --workdir) to start afresh"
        )

    def _set_aside(self, step: int) -> Path:
        """Rename a damaged step out of orbax's step listing; returns the new path."""
        src, n = self.directory / str(step), 0
        dst = self.directory / f"{step}{DAMAGED}"
        while dst.exists():
            n += 1
            dst = self.directory / f"{step}{DAMAGED}-{n}"
        if jax.process_index() == 0:
            src.rename(dst)
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes(f"morejax:set_aside:{step}")
        self.manager.reload()
        return dst

    def restore_adapters(self, step: int, like):
        """Only the adapters of a step (evaluation needs no optimizer state)."""
        self.check_compatible(step, like)
        args = {"adapters": ocp.args.StandardRestore(abstract(like))}
        return self._restore(step, args)["adapters"]

    def read_meta(self, step: int) -> dict:
        path = self.directory / str(step) / "meta" / "metadata"
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise DamagedCheckpointError(path.parent.parent, "meta", one_line(e)) from e
        return dict(self._restore_json(step, "meta"))

    def _empty_trash(self) -> None:
        """Remove the steps orbax renamed into `TRASH` (a kill here only leaves trash)."""
        if jax.process_index() == 0:
            shutil.rmtree(self.directory / TRASH, ignore_errors=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


@dataclasses.dataclass(frozen=True)
class _Info:
    step: int
    metrics: dict | None
    time: Any


class _SavedMetrics:
    """A preservation policy with each step's metrics read back from its `meta` when orbax
    has none: orbax keeps them only in memory unless `best_fn` is set, so after a restart
    BestN would see none and delete the best step at the next save."""

    def __init__(self, policy, read):
        self.policy, self.read = policy, read

    def should_preserve(self, checkpoints, *, context):
        infos = [
            c if c.metrics is not None else _Info(c.step, self.read(c.step), c.time)
            for c in checkpoints
        ]
        return self.policy.should_preserve(infos, context=context)


def _json(x):
    return json.loads(json.dumps(x, default=str))
