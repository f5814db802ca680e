# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The small-scale GLUE table
#
# Reads `results/glue_small/*.json` (written by `python experiments/glue_table.py`, one file
# per finished program), draws per-task bars with each seed's score, and the dev-score
# learning curves of each cell's chosen learning rate. A partial table draws what is finished.
# Full setting: `python -m jupytext --to notebook --execute notebooks/glue_table.py` from the
# repository root. Reduced (CI) with no results present: one tiny program of the reduced
# driver is trained first, as a demo.

# %% tags=["parameters"]
REDUCED = False
FIGURES_DIR = "results/figures"

# %%
# ruff: noqa: E402  (imports follow the parameters cell, by notebook convention)
import os
import sys
import tempfile
from pathlib import Path

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "morejax").is_dir())
os.chdir(ROOT)
sys.path.insert(0, str(ROOT))
FIG = Path(FIGURES_DIR) if Path(FIGURES_DIR).is_absolute() else ROOT / FIGURES_DIR
FIG.mkdir(parents=True, exist_ok=True)

import matplotlib.pyplot as plt
import numpy as np

from experiments import glue_table as gt

# %%
results = ROOT / "results" / "glue_small"
plan = gt.make_plan(False)
points = gt.table_points(plan)
done = gt.finished(points, results)
if not done and REDUCED:  # CI before any result is committed: a tiny demo program
    tmp = Path(tempfile.mkdtemp())
    results = tmp / "res"
    gt.main(
        [
            "--reduced",
            "--max-points",
            "1",
            "--results",
            str(results),
            "--runs",
            str(tmp / "runs"),
            "--out",
            str(tmp / "table.md"),
        ]
    )
    plan = gt.make_plan(True)
    points = gt.table_points(plan)
    done = gt.finished(points, results)
print(f"{len(done)} finished programs in {results}")


def seed_scores(task: str, method: str) -> tuple[float | None, list[float]]:
    """(chosen rate, the seeds' best dev scores at it) of a cell, as far as it is finished."""
    rec = done.get(f"{task}-{method}-lr")
    if rec is None:
        return None, []
    lr, _ = gt.chosen_lr(plan, rec)
    scores = [m["best"] for m in rec["members"] if m["learning_rate"] == lr]
    more = done.get(f"{task}-{method}-seeds")
    return lr, scores + ([m["best"] for m in more["members"]] if more else [])


# %% [markdown]
# ## Per-task bars: mean over seeds, each seed a dot

# %%
fig, axes = plt.subplots(1, len(plan.tasks), figsize=(5 * len(plan.tasks), 3.8), squeeze=False)
for ax, task in zip(axes[0], plan.tasks):
    for i, method in enumerate(plan.methods):
        _, s = seed_scores(task, method)
        if not s:
            continue
        s = 100 * np.asarray(s)
        ax.bar(
            i,
            s.mean(),
            yerr=s.std(ddof=1) if len(s) > 1 else 0,
            color=f"C{i}",
            alpha=0.7,
            capsize=4,
        )
        ax.plot([i] * len(s), s, "k.", ms=5)
    ax.set_xticks(range(len(plan.methods)), plan.methods, rotation=30)
    ax.set_title(gt.TASK_NAMES.get(task, task))
axes[0][0].set_ylabel("dev score x100 (best checkpoint)")
fig.suptitle("MiniLM-L6, q,k,v adapted, equal budgets (r=8 / MoRe nb4 r8); bars: seed mean ± std")
fig.tight_layout()
fig.savefig(FIG / "glue_table_bars.png", dpi=110)

# %% [markdown]
# ## Learning curves at each cell's chosen rate (seed 0)

# %%
fig, axes = plt.subplots(1, len(plan.tasks), figsize=(5 * len(plan.tasks), 3.6), squeeze=False)
for ax, task in zip(axes[0], plan.tasks):
    for i, method in enumerate(plan.methods):
        rec = done.get(f"{task}-{method}-lr")
        if rec is None:
            continue
        lr, _ = gt.chosen_lr(plan, rec)
        j = [m["learning_rate"] for m in rec["members"]].index(lr)
        c = rec["curves"]
        ax.plot(
            c["eval_step"],
            [100 * row[j] for row in c["score"]],
            "o-",
            color=f"C{i}",
            label=f"{method} ({lr:g})",
        )
    ax.set_title(gt.TASK_NAMES.get(task, task))
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
axes[0][0].set_ylabel("dev score x100")
fig.tight_layout()
fig.savefig(FIG / "glue_table_curves.png", dpi=110)
