"""Adapter-sized checkpoints with orbax: the train state, the data position, the config.

Each step directory holds `adapters`, `optimizer` (optimizer state and step; never
the frozen base), `meta` (best metric so far, ...), `data` (the data iterator's JSON state) and
`config` (the resolved config). Orbax writes a step to a temporary folder and renames
it when complete, so a crash never damages an earlier checkpoint. Kept: the latest one
and the best one on the validation metric.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm


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


class Checkpoints:
    """An orbax CheckpointManager keeping the latest step and the best one by `metric`."""

    def __init__(self, directory: str | Path, *, metric: str = "score", mode: str = "max"):
        self.directory = Path(directory).absolute()
        self.metric, self.mode = metric, mode
        policy = cm.AnyPreservationPolicy(
            [
                cm.LatestN(n=1),
                cm.BestN(
                    get_metric_fn=lambda m: m[metric],
                    reverse=mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_names=("adapters", "optimizer", "meta", "data", "config"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The kept step with the best recorded metric (None when none was evaluated)."""
        best, best_step = None, None
        for step in sorted(self.all_steps()):
            value = self.read_meta(step).get("metrics", {}).get(self.metric)
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

    def save(self, step: int, state, meta: dict, data_state: dict, config: dict, metrics=None):
        """Write one step (synchronously; it is small). `metrics` ranks it for 'best'."""
        meta = {**meta, "metrics": metrics or {}}
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

    def restore(self, step: int, like) -> dict:
        """State (onto the shardings of `like`), meta, data state and config of a step."""
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
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

    def restore_adapters(self, step: int, like):
        """Only the adapters of a step (evaluation needs no optimizer state)."""
        out = self.manager.restore(
            step, args=ocp.args.Composite(adapters=ocp.args.StandardRestore(abstract(like)))
        )
        return out["adapters"]

    def read_meta(self, step: int) -> dict:
        path = self.directory / str(step) / "meta" / "metadata"
        if path.is_file():
            return json.loads(path.read_text())
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _json(x):
    return json.loads(json.dumps(x, default=str))
