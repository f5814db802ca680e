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
# # Spectra of real layers: what PiSSA, MiLoRA and MoReMinor take, and what moved
#
# Singular values of real MiniLM-L6 and SmolLM2-135M projections; the part PiSSA (top r) and
# MiLoRA (bottom r) move into the adapter, and the part MoReMinor takes (the bottom of each
# Monarch block); then, from the runs of `experiments/reasoning_tables.py`
# (`results/{commonsense,math}_small/test__<method>.json`), how far each method turned the
# top-16 singular subspaces of q,k,v,up,down. Full setting: `python -m jupytext --to notebook
# --execute notebooks/spectra.py` from the repository root. Reduced (CI): one layer of each
# model; without run results, a labelled one-update demo stands in for the last figure.

# %% tags=["parameters"]
REDUCED = False
FIGURES_DIR = "results/figures"

# %%
# ruff: noqa: E402  (imports follow the parameters cell, by notebook convention)
import json
import os
import sys
from pathlib import Path

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "morejax").is_dir())
os.chdir(ROOT)
sys.path.insert(0, str(ROOT))
FIG = Path(FIGURES_DIR) if Path(FIGURES_DIR).is_absolute() else ROOT / FIGURES_DIR
FIG.mkdir(parents=True, exist_ok=True)

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import morejax
from morejax import subspace
from morejax.methods.more_minor import block_channels

RANK = 8  # the math table's rank (commonsense: 4)
LAYERS = [0] if REDUCED else [0, 15, 29]

# %% [markdown]
# ## The matrices
# SmolLM2 tensors are dequantised from the GGUF one by one (all 134.5M take seconds); the
# ggml q/k row permutation does not change singular values. MiniLM comes from its safetensors.

# %%
from morejax.models.gguf import gguf_reader, gguf_tensors, smollm2_path

GGUF = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "up": "ffn_up", "down": "ffn_down"}
wanted = {f"blk.{i}.{g}.weight": (i, p) for i in LAYERS for p, g in GGUF.items()}
smol = {}  # (layer, proj) -> Flax-layout kernel (d_in, d_out)
for name, w in gguf_tensors(gguf_reader(smollm2_path()), names=set(wanted)):
    smol[wanted[name]] = w.T

from morejax.models.registry import load_pretrained

mini_params = load_pretrained("minilm-l6").params
MINI = {
    "q": "attention/query",
    "k": "attention/key",
    "v": "attention/value",
    "up": "intermediate/dense",
    "down": "output/dense",
}
flat = morejax.paths.flatten(mini_params)
mini = {}
for i in [0] if REDUCED else [0, 3, 5]:
    for p, sub in MINI.items():
        mini[(i, p)] = np.asarray(flat[f"encoder/layers_{i}/{sub}/kernel"], np.float32)
print(f"SmolLM2 matrices: {len(smol)}, MiniLM matrices: {len(mini)}")

# %% [markdown]
# ## Singular values, and the slices PiSSA and MiLoRA take (r = 8)
# σ / σ_max per projection of the first layer; the shaded ends are PiSSA's top r and MiLoRA's
# bottom r. The legend gives each end's share of ||K||²_F: PiSSA takes most of a layer's
# energy, MiLoRA almost none of it.


# %%
def spectrum(k):
    return np.linalg.svd(np.asarray(k, np.float64), compute_uv=False)


def share(s, part):
    return float((s[part] ** 2).sum() / (s**2).sum())


fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
rows = []
for ax, (label, mats) in zip(axes, [("MiniLM-L6", mini), ("SmolLM2-135M", smol)]):
    layer = min(i for i, _ in mats)
    for p in GGUF:
        s = spectrum(mats[(layer, p)])
        top, bottom = share(s, slice(0, RANK)), share(s, slice(-RANK, None))
        rows.append((label, layer, p, mats[(layer, p)].shape, s[0], s[-1], top, bottom))
        ax.semilogy(
            np.arange(len(s)) / (len(s) - 1), s / s[0], label=f"{p}: {top:.0%} / {bottom:.2%}"
        )
    ax.axvspan(0, 0.02, color="tab:red", alpha=0.15)
    ax.axvspan(0.98, 1, color="tab:blue", alpha=0.15)
    ax.set_title(f"{label}, layer {layer} (red: PiSSA's top {RANK}, blue: MiLoRA's bottom {RANK})")
    ax.set_xlabel("singular value index / (n − 1)")
    ax.legend(title="energy share: top r / bottom r", fontsize=8)
axes[0].set_ylabel("σ / σ_max")
fig.tight_layout()
fig.savefig(FIG / "spectra_singular_values.png", dpi=120)
print("| model | layer | proj | shape | σ_max | σ_min | top-8 energy | bottom-8 energy |")
print("|---|---|---|---|---|---|---|---|")
for label, layer, p, shape, smax, smin, top, bottom in rows:
    print(
        f"| {label} | {layer} | {p} | {shape} | {smax:.2f} | {smin:.3g} | {top:.1%} "
        f"| {bottom:.3%} |"
    )

# %% [markdown]
# ## Across depth (SmolLM2): how much PiSSA's and MiLoRA's slices hold, per layer

# %%
fig, ax = plt.subplots(figsize=(7, 3.6))
for p in GGUF:
    layers = sorted(i for i, q in smol if q == p)
    tops = [share(spectrum(smol[(i, p)]), slice(0, RANK)) for i in layers]
    bottoms = [share(spectrum(smol[(i, p)]), slice(-RANK, None)) for i in layers]
    ax.plot(layers, tops, "o-", label=f"{p} top {RANK}")
    ax.plot(layers, bottoms, "x--", label=f"{p} bottom {RANK}")
ax.set_yscale("log")
ax.set_xlabel("layer")
ax.set_ylabel("share of ||K||²")
ax.legend(fontsize=7, ncol=2)
fig.tight_layout()
fig.savefig(FIG / "spectra_energy_by_layer.png", dpi=120)

# %% [markdown]
# ## MoReMinor: the bottom of each Monarch block (nb = 4, r = 8)
# MoReMinor's channels join input chunk k to output group l; each (k, l) block of K gives up
# its |F(k,l)| = r / nb = 2 smallest components. Per block of SmolLM2's layer-0 q and up, the
# share of the block's energy taken, beside MiLoRA's share of the whole matrix.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for ax, p in zip(axes, ("q", "up")):
    k = smol[(0, p)]
    d_in, d_out = k.shape
    grid = np.zeros((4, 4))
    p_blk = -(-d_in // 4)
    for (ci, gl), (p_k, s_l, fs) in block_channels(d_in, d_out, 4, RANK).items():
        blk = k[ci * p_blk : ci * p_blk + p_k, gl : gl + 4 * (s_l - 1) + 1 : 4]
        grid[ci, gl] = share(spectrum(blk), slice(-len(fs), None))
    ax.imshow(grid * 100, cmap="viridis")
    for (ci, gl), v in np.ndenumerate(grid * 100):
        ax.text(gl, ci, f"{v:.2g}%", ha="center", va="center", color="w", fontsize=8)
    whole = share(spectrum(k), slice(-RANK, None))
    ax.set_title(f"{p} (layer 0): share of each block's energy\n(MiLoRA, whole: {whole:.3%})")
    ax.set_xticks(range(4))
    ax.set_yticks(range(4))
    ax.set_xlabel("output group l")
    ax.set_ylabel("input chunk k")
fig.tight_layout()
fig.savefig(FIG / "spectra_more_minor_blocks.png", dpi=120)

# %% [markdown]
# ## How far fine-tuning turned the top-16 singular subspaces, per method
# From the runs' `test__<method>.json` (principal angles between the pretrained and the merged
# fine-tuned kernel, mean over layers, input side). Without run results (CI before the runs),
# a demo: one random update of equal norm (1% of the kernel's) in each method's own
# parameters on SmolLM2's layer-0 q; it shows where each method *can* move, not training.

# %%
METHODS = ("lora", "pissa", "milora", "dora", "more", "more_minor")
PROJS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
found = {}
for table in ("commonsense", "math"):
    for m in METHODS:
        path = ROOT / "results" / f"{table}_small" / f"test__{m}.json"
        if path.is_file():
            rec = json.loads(path.read_text())
            if not rec.get("settings", {}).get("reduced"):
                found[(table, m)] = rec["shifts"]

if found:
    tables = sorted({t for t, _ in found})
    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 3.8), squeeze=False)
    for ax, table in zip(axes[0], tables):
        ms = [m for m in METHODS if (table, m) in found]
        x = np.arange(len(PROJS))
        for j, m in enumerate(ms):
            vals = [found[(table, m)].get(p, {}).get("left_mean_deg", np.nan) for p in PROJS]
            ax.bar(x + j / (len(ms) + 1), vals, 1 / (len(ms) + 1), label=m)
        ax.set_xticks(x + 0.4, PROJS)
        ax.set_yscale("log")
        ax.set_ylabel("mean principal angle (deg)")
        ax.set_title(f"after {table} fine-tuning (top-16, input side)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIG / "spectra_subspace_shift.png", dpi=120)
else:
    kernel = jnp.asarray(smol[(0, "q")])
    params = {"layers_0": {"q_proj": {"kernel": kernel}}}
    demo = {}
    for name, method in [
        ("lora", morejax.LoRA(RANK, 2.0 * RANK)),
        ("pissa", morejax.PiSSA(RANK)),
        ("milora", morejax.MiLoRA(RANK)),
        ("more", morejax.MoRe(4, RANK)),
        ("more_minor", morejax.MoReMinor(4, RANK)),
    ]:
        base, adapters = morejax.adapt(params, {r".*kernel": method}, jax.random.key(0))
        a = adapters["layers_0"]["q_proj"]["kernel"]
        # The update's size: 1% of ||K|| once merged (set on B / R, the factor LoRA and MoRe
        # start at 0), so every method changes the kernel by the same amount.
        name_out = "B" if "B" in a.params else "R"
        noise = jax.random.normal(jax.random.key(1), a.params[name_out].shape)
        moved = dict(a.params, **{name_out: a.params[name_out] + noise})
        change = np.linalg.norm(a.method.delta(moved, kernel) - a.method.delta(a.params, kernel))
        step = 0.01 * float(np.linalg.norm(kernel)) / change
        a.params[name_out] = a.params[name_out] + step * noise
        rows = subspace.kernel_shifts(params, base, adapters, 16)
        demo[name] = rows[0]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = list(demo)
    x = np.arange(len(names))
    ax.bar(x - 0.2, [demo[n]["left_mean_deg"] for n in names], 0.4, label="input side")
    ax.bar(x + 0.2, [demo[n]["right_mean_deg"] for n in names], 0.4, label="output side")
    ax.set_xticks(x, names)
    ax.set_yscale("log")
    ax.set_ylabel("mean principal angle (deg)")
    ax.set_title("DEMO (no runs found): one equal-norm random update, SmolLM2 layer-0 q")
    ax.legend()
    fig.tight_layout()
    fig.savefig(FIG / "spectra_subspace_shift.png", dpi=120)
    for n in names:
        print(
            f"{n:11s} input {demo[n]['left_mean_deg']:.3f}°, "
            f"output {demo[n]['right_mean_deg']:.3f}°"
        )
