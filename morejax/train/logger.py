"""What a run reports: metrics.jsonl and TensorBoard events (process 0), console lines."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np


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
        # Unix time on each row: time-to-accuracy is read off the log (not sent to TensorBoard).
        row = {"step": int(step), "split": split, "time": round(time.time(), 3)}
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


def fmt(v) -> str:
    v = np.asarray(v)
    return f"{float(v):.4f}" if v.ndim == 0 else "[" + ", ".join(f"{x:.3f}" for x in v) + "]"
