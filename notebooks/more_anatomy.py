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
# # MoRe anatomy
#
# What a MoRe adapter is as a matrix, how its rank and parameter count compare with LoRA's,
# and how well each structure can approximate real MiniLM-L6 weights and the updates that
# full fine-tuning makes to them, at equal parameters. LoRA's best approximation is a truncated
# SVD; MoRe's is a truncated SVD of each (output group, input chunk) sub-block
# (`morejax.analysis.more_project`, exact: the mid permutation gives every sub-block its own
# factors), checked against a few hundred gradient steps through `MoRe.apply`.
#
# Full setting: `python -m jupytext --to notebook --execute notebooks/more_anatomy.py` from
# the repository root (figures go to `results/figures/`).

# %% tags=["parameters"]
REDUCED = False
FIGURES_DIR = "results/figures"

# %%
# ruff: noqa: E402  (imports follow the parameters cell, by notebook convention)
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "morejax").is_dir())
os.chdir(ROOT)
sys.path.insert(0, str(ROOT))
FIG = Path(FIGURES_DIR) if Path(FIGURES_DIR).is_absolute() else ROOT / FIGURES_DIR
FIG.mkdir(parents=True, exist_ok=True)

import warnings

import jax
import matplotlib.pyplot as plt
import numpy as np

import morejax
from morejax import analysis, paths

warnings.filterwarnings("ignore", message="MoRe rank")

# %% [markdown]
# ## The structure, drawn for a small rectangular case
#
# `d_in = 12, d_out = 18, nb = 3, r = 3`: the input is cut into 3 chunks of `p = 4`, each
# chunk is mapped to `r = 3` channels by its block of `L`, the mid permutation deals the
# channels out to the 3 output groups, each group's block of `R` maps them to `s = 6` outputs,
# and the output permutation interleaves the groups (`y[t·nb + l]`).

# %%
d_in, d_out, nb, r = 12, 18, 3, 3
method = morejax.MoRe(nblocks=nb, rank=r)
params, _ = method.init(jax.random.key(0), np.zeros((d_in, d_out), np.float32))
params["R"] = np.random.default_rng(0).normal(size=params["R"].shape).astype(np.float32)
mats = analysis.more_matrices(params, d_in, d_out)
w = mats["P_out"] @ mats["R"] @ mats["P_mid"] @ mats["L"]
assert np.allclose(w.T, np.asarray(method.delta(params, np.zeros((d_in, d_out)))), atol=1e-5)

panels = [
    ("W = ΔKᵀ", w),
    ("P_out", mats["P_out"]),
    ("R (block-diag)", mats["R"]),
    ("P_mid", mats["P_mid"]),
    ("L (block-diag)", mats["L"]),
]
fig, axes = plt.subplots(
    1, 6, figsize=(17, 3.6), gridspec_kw={"width_ratios": [12, 18, 9, 9, 12, 6]}
)
for ax, (title, m) in zip(axes, panels):
    lim = np.abs(m).max() or 1.0
    ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_title(f"{title}\n{m.shape[0]}x{m.shape[1]}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
ranks = analysis.more_block_ranks(d_in, d_out, method)
axes[-1].imshow(ranks, cmap="Greens", vmin=0)
for (i, j), v in np.ndenumerate(ranks):
    axes[-1].text(j, i, str(v), ha="center", va="center")
axes[-1].set_title("rank per sub-block\n(group l, chunk k)", fontsize=9)
axes[-1].set_xlabel("input chunk k")
axes[-1].set_ylabel("output group l")
fig.suptitle(
    f"MoRe nb={nb} r={r} on a {d_in}->{d_out} kernel: W = P_out · R · P_mid · L "
    f"(rank {np.linalg.matrix_rank(w)} <= nb·r = {nb * r})"
)
fig.tight_layout()
fig.savefig(FIG / "more_anatomy_structure.png", dpi=110)

# %% [markdown]
# ## Rank and parameters against LoRA, across shapes
#
# At an equal budget (MoRe block rank r = LoRA rank r) MoRe's rank ceiling is nb·r. Shapes:
# MiniLM attention (384²) and MLP (384x1536), RoBERTa-large attention (1024²), LLaMA-7B MLP
# (4096x11008).

# %%
shapes = [(384, 384), (384, 1536), (1024, 1024), (4096, 11008)]
fig, axes = plt.subplots(1, len(shapes), figsize=(4 * len(shapes), 3.4))
for ax, (a, b) in zip(axes, shapes):
    rs = [1, 2, 4, 8, 16, 32]
    ax.plot(
        [analysis.lora_params(a, b, x) for x in rs],
        [min(x, a, b) for x in rs],
        "o-",
        label="LoRA r",
    )
    for n in (4, 8):
        m = [morejax.MoRe(n, x) for x in rs]
        ax.plot(
            [analysis.more_params(a, b, x) for x in m],
            [min(n * x.rank, a, b) for x in m],
            "s--",
            label=f"MoRe nb={n}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(f"{a} x {b}")
    ax.set_xlabel("params per matrix")
axes[0].set_ylabel("rank ceiling")
axes[0].legend()
# A numerical check of the ceiling: a random MoRe matrix reaches nb·r.
m = morejax.MoRe(4, 4)
p, _ = m.init(jax.random.key(1), np.zeros((64, 96), np.float32))
p["R"] = np.random.default_rng(1).normal(size=p["R"].shape)
print(
    "rank of a random MoRe(4, 4) 64x96 delta:",
    np.linalg.matrix_rank(analysis.more_delta(p, 64, 96)),
)
fig.tight_layout()
fig.savefig(FIG / "more_anatomy_rank.png", dpi=110)

# %% [markdown]
# ## Best approximations of real MiniLM-L6 weights at equal parameters

# %%
from morejax.models.registry import load_pretrained

pre = load_pretrained("minilm-l6", head="encoder")
flat = {
    paths.path_str(kp): np.asarray(x)
    for kp, x in jax.tree_util.tree_flatten_with_path(pre.params)[0]
}
names = [
    "encoder/layers_0/attention/query/kernel",
    "encoder/layers_5/attention/value/kernel",
    "encoder/layers_2/intermediate/dense/kernel",
]
names = names[:1] if REDUCED else names
lora_ranks = [1, 4, 16] if REDUCED else [1, 2, 4, 8, 16, 32, 64, 128]
more_settings = (
    [morejax.MoRe(4, x) for x in (4, 16)]
    if REDUCED
    else [morejax.MoRe(n, x) for n in (4, 8) for x in (1, 2, 4, 8, 16, 32, 64, 128)]
)


def plot_curves(targets: dict, title: str, path: Path):
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 3.8), squeeze=False)
    for ax, (name, target) in zip(axes[0], targets.items()):
        curves = analysis.error_curves(target, lora_ranks, more_settings)
        for label, pts in curves.items():
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, "o-" if label == "lora" else "s--", label=label)
        ax.set_xscale("log")
        ax.set_title(name.replace("encoder/", "").replace("/kernel", ""), fontsize=9)
        ax.set_xlabel("params")
    axes[0][0].set_ylabel("relative Frobenius error")
    axes[0][0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


plot_curves(
    {n: flat[n] for n in names},
    "Pretrained weights: best LoRA vs best MoRe",
    FIG / "more_anatomy_weights.png",
)

# %% [markdown]
# The projection is the optimum: gradient steps through the real forward do not beat it.

# %%
target = flat[names[0]][:96, :96] if REDUCED else flat[names[0]]
check = morejax.MoRe(4, 8)
_, proj = analysis.more_project(target, check)
_, fit_err = analysis.more_fit(target, check, steps=100 if REDUCED else 400, lr=0.01)
print(
    f"MoRe(4, 8): projection error {analysis.relative_error(proj, target):.4f}, "
    f"gradient-descent fit {fit_err:.4f}"
)

# %% [markdown]
# ## The updates of full fine-tuning, ΔW
#
# ΔW of the q,k,v kernels from the GLUE table's full fine-tuning run on CoLA
# (`results/glue_small/cola-full-lr.json`, its chosen rate's member, best checkpoint in
# `runs/glue_small/`); when that run is not on this machine, a short run of the same config
# (reduced: a tiny random model, a few steps).

# %%
from morejax.cli.train import run_one
from morejax.train import config as cfgs


def deltas(adapters, reference: dict, member=None) -> dict:
    out = {}
    for kp, x in jax.tree_util.tree_flatten_with_path(adapters)[0]:
        name = paths.path_str(kp)  # Full's kernels are trainable leaves at the kernel's path
        if re.fullmatch(r".*/(query|key|value)/kernel(/kernel)?", name):
            k = name.removesuffix("/kernel") if name.endswith("/kernel/kernel") else name
            x = np.asarray(x if member is None else x[member])
            out[k] = x - reference[k]
    return out


def from_table_run():
    import json

    rec_path = ROOT / "results/glue_small/cola-full-lr.json"
    if REDUCED or not rec_path.is_file():
        return None
    rec = json.loads(rec_path.read_text())
    if not (Path(rec["workdir"]) / "checkpoints").is_dir():
        return None
    from morejax.train.evaluate import restore_checkpoint

    exp = cfgs.build(cfgs.load(ROOT / "configs/glue_table_minilm.py", (), rec["overrides"]))
    s, step, adapters, _ = restore_checkpoint(exp, rec["workdir"])
    best = max(range(len(rec["members"])), key=lambda i: rec["members"][i]["best"])
    print(f"ΔW from {rec['workdir']} step {step}, lr {rec['members'][best]['learning_rate']}")
    return deltas(adapters, flat, member=best)


def from_short_run():
    sets = {
        "task": "cola",
        "method": "full",
        "optimizer.learning_rate": 1e-4,
        "steps": 100,
        "eval_every": 0,
        "checkpoint_every": 0,
        "data.eval_limit": 64,
    }
    ref = flat
    if REDUCED:
        from experiments.glue_table import TINY

        sets.update(
            TINY,
            steps=3,
            eval_every=0,
            checkpoint_every=0,
            log_every=1,
            **{"data.train_limit": 48, "data.eval_limit": 16},
        )
    cfg = cfgs.load(ROOT / "configs/glue_table_minilm.py", (), sets)
    with tempfile.TemporaryDirectory() as tmp:
        out = run_one(cfg, Path(tmp), progress=False)
    if REDUCED:  # the tiny model's own starting weights are the reference
        from morejax.train.model import load_model

        loaded = load_model(cfgs.build(cfgs.resolve(cfg)).model, seed=0)
        ref = {
            paths.path_str(kp): np.asarray(x)
            for kp, x in jax.tree_util.tree_flatten_with_path(loaded.params)[0]
        }
    return deltas(out["state"]["adapters"], ref)


dw = from_table_run() or from_short_run()
keys = sorted(dw)
print(len(keys), "matrices, e.g.", keys[0], dw[keys[0]].shape)
pick = [k for k in keys if "layers_0/attention/query" in k or "layers_5/attention/value" in k]
pick = pick or keys[:1]
d_small = min(dw[pick[0]].shape)
lora_ranks = [x for x in lora_ranks if x <= d_small]
more_settings = [m for m in more_settings if m.nblocks <= d_small]
plot_curves(
    {k: dw[k] for k in pick},
    "Fine-tuning updates ΔW: best LoRA vs best MoRe",
    FIG / "more_anatomy_updates.png",
)
