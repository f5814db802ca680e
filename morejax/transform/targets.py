"""Which kernels a rule adapts: regexes fullmatched against '/'-joined paths, the named targets
(`all-linear`, `attention`, `mlp`, `more-paper`, `milora-paper`) and each kernel's matrix view."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from morejax.paths import compile_patterns, flatten_keys, matches_any, path_str
from morejax.transform.adapter import Layout

ALL_LINEAR = "all-linear"
# Kept out of `all-linear`, as PEFT keeps the output layer out: heads train fully or not at all.
HEAD_PATTERN = r"(.*/)?(head|lm_head|classifier|pooler)(/.*)?"
# Named targets, usable as a rule key like `all-linear`. Each holds across the families (BERT /
# RoBERTa, the LLaMA-style decoders; fused Phi-3 kernels count as one matrix, as in PEFT):
# `more-paper` is the MoRe paper's q,k,v, `milora-paper` MiLoRA's q,k,v,up,down.
_Q_K_V = r"self_attn/(q_proj|k_proj|v_proj|qkv_proj)|attention/(query|key|value)"
PRESETS = {
    "attention": rf".*/({_Q_K_V}|self_attn/o_proj|attention/output/dense)/kernel",
    "mlp": r".*/(mlp/(gate_proj|up_proj|down_proj|gate_up_proj)"
    r"|layers(_\d+)?/(intermediate|output)/dense)/kernel",
    "more-paper": rf".*/({_Q_K_V})/kernel",
    "milora-paper": rf".*/({_Q_K_V}|mlp/(up_proj|gate_up_proj|down_proj))/kernel",
}


def _is_kernel(path: tuple, leaf) -> bool:
    return path[-1] == "kernel" and len(getattr(leaf, "shape", ())) >= 2


def _normalise_rules(rules) -> list[tuple[str, Any]]:
    if rules is None:
        return []
    items = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
    for pattern, _ in items:
        if not isinstance(pattern, str):
            raise TypeError(f"rule patterns must be regex strings, got {pattern!r}")
    return items


def _layout_for(path_s: str, shape, layout) -> Layout:
    if layout is not None:
        if path_s in layout:
            return Layout(*layout[path_s])
        for pattern, lay in layout.items():
            if re.fullmatch(pattern, path_s):
                return Layout(*lay)
    if len(shape) == 2:
        return Layout(0, 1)
    raise ValueError(
        f"kernel {path_s} has shape {tuple(shape)}: its matrix view is ambiguous (scanned layers? "
        "DenseGeneral?). Pass layout=morejax.kernel_layout(model, *example_inputs), or a dict "
        "{path_or_regex: Layout(stack, n_in)}."
    )


def plan(params, rules, *, exclude: Sequence[str] = (), layout=None) -> dict[str, tuple]:
    """{kernel path: (method, Layout)}; a rule that matches nothing is an error."""
    rules = _normalise_rules(rules)
    excluded = compile_patterns(exclude)
    head = re.compile(HEAD_PATTERN)
    kernels = {path_str(p): leaf for p, leaf in flatten_keys(params).items() if _is_kernel(p, leaf)}
    hits = {i: 0 for i in range(len(rules))}
    chosen: dict[str, tuple] = {}
    for path_s, leaf in kernels.items():
        if matches_any(path_s, excluded):
            continue
        for i, (pattern, method) in enumerate(rules):
            if pattern == ALL_LINEAR:
                hit = not head.fullmatch(path_s)
            else:
                hit = re.fullmatch(PRESETS.get(pattern, pattern), path_s) is not None
            if hit:
                hits[i] += 1
                if method is not None:
                    chosen[path_s] = (method, _layout_for(path_s, leaf.shape, layout))
                break
    unmatched = [rules[i][0] for i, n in hits.items() if n == 0]
    if unmatched:
        listing = "\n  ".join(f"{k}  {tuple(v.shape)}" for k, v in kernels.items()) or "(none)"
        raise ValueError(
            f"adapter rule(s) {unmatched} matched no kernel (patterns are fullmatched against "
            f"'/'-joined paths, after `exclude`; named targets: {ALL_LINEAR}, "
            f"{', '.join(PRESETS)}). The kernels are:\n  {listing}"
        )
    return chosen
