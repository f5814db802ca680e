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
# # MoRe's CoLA ablations next to the paper's
#
# Reads `results/more_ablation/*.json` (written by `python experiments/more_ablation.py`)
# and draws MCC against trainable parameters and against each series' axis (blocks, rank
# nb·r, block size), with the paper's RoBERTa-large series beside ours. Full setting:
# `python -m jupytext --to notebook --execute notebooks/more_ablation.py` from the repository
# root. Reduced (CI) with no results present: one tiny program of the reduced driver first.

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

from experiments import more_ablation as ab

# %%
results = ROOT / "results" / "more_ablation"
pairs = ab.make_points(False)


def all_points(done):
    return [p for _, p in pairs]


done = ab.finished(all_points, results)
if not done and REDUCED:  # CI before any result is committed: a tiny demo program
    tmp = Path(tempfile.mkdtemp())
    results = tmp / "res"
    ab.main(
        [
            "--reduced",
            "--max-points",
            "1",
            "--results",
            str(results),
            "--runs",
            str(tmp / "runs"),
            "--out",
            str(tmp / "ablation.md"),
        ]
    )
    pairs = ab.make_points(True)
    done = ab.finished(all_points, results)
rows = [r for r in ab.rows(pairs, done) if r["rec"]]
print(f"{len(done)} finished settings in {results}")

# %% [markdown]
# ## MCC against trainable parameters: ours (MiniLM-L6) and the paper's (RoBERTa-large)

# %%
fig, (ours, paper) = plt.subplots(1, 2, figsize=(11, 4))
for i, series in enumerate(["rank", "block size", "lora", "blocks"]):
    pts = sorted(
        (r["params"], 100 * r["mean"], 100 * r["std"]) for r in rows if r["series"] == series
    )
    if pts:
        x, y, e = zip(*pts)
        ours.errorbar(
            x,
            y,
            yerr=e,
            fmt="o-" if series != "lora" else "s--",
            color=f"C{i}",
            capsize=3,
            label=f"MoRe {series}" if series != "lora" else "LoRA",
        )
    ref = ab.PAPER[series]
    if "params_m" in ref:
        paper.plot(
            ref["params_m"],
            ref["mcc"],
            "o-" if series != "lora" else "s--",
            color=f"C{i}",
            label=f"MoRe {series}" if series != "lora" else "LoRA",
        )
for ax, title, unit in [
    (ours, "here: MiniLM-L6, CPU sizing, 3 seeds", "params"),
    (paper, "MoRe paper: RoBERTa-large", "params (M)"),
]:
    ax.set_xscale("log")
    ax.set_xlabel(f"trainable {unit}")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
ours.set_ylabel("CoLA dev MCC x100")
fig.tight_layout()
fig.savefig(FIG / "more_ablation_params.png", dpi=110)

# %% [markdown]
# ## Each series on its own axis

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
for ax, series in zip(axes, ["blocks", "rank", "block size"]):
    pts = sorted((r["x"], 100 * r["mean"], 100 * r["std"]) for r in rows if r["series"] == series)
    if pts:
        x, y, e = zip(*pts)
        ax.errorbar(x, y, yerr=e, fmt="o-", capsize=3, label="here (MiniLM-L6)")
    twin = ax.twinx()
    twin.plot(
        ab.PAPER[series]["x"],
        ab.PAPER[series]["mcc"],
        "s--",
        color="C3",
        label="paper (RoBERTa-large)",
    )
    twin.set_ylabel("paper MCC x100", color="C3")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(ab.SERIES_X[series])
    ax.set_ylabel("MCC x100 here")
    ax.set_title(series)
    ax.legend(loc="lower left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)
fig.tight_layout()
fig.savefig(FIG / "more_ablation_series.png", dpi=110)
