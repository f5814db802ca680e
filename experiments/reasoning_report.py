"""The reasoning tables' Markdown (results/commonsense_small.md, math_small.md,
forgetting_small.md), written from the finished points of experiments/reasoning_plan.py;
the prose a person writes below a table's end marker is kept.
"""

from __future__ import annotations

import math
from pathlib import Path

from experiments.glue_table import write_report
from experiments.reasoning_plan import (
    CONTAMINATED,
    DEFAULT_TIMING,
    FACTORS,
    LABELS,
    LEGACY_TRAIN_DATA,
    MARGIN,
    ROOT,
    SUBSPACE_K,
    UNSEEN,
    Plan,
    estimate_s,
    forget_points,
    load_exp,
    point,
    table_points,
    test_records,
)
from morejax import points

PAPER = {
    "commonsense": (
        "MiLoRA paper, commonsense average over 8 sets (LLaMA-2-7B, r=32, commonsense_170k): "
        "LoRA 77.6, PiSSA 73.8, MiLoRA 79.2 (LLaMA-3-8B: 80.8 / 75.4 / 81.9)",
        {"lora": 77.6, "pissa": 73.8, "milora": 79.2},
    ),
    "math": (
        "MiLoRA paper, GSM8K (LLaMA-2-7B, r=64, math_10k): LoRA 60.6, PiSSA 58.2, MiLoRA 63.5 "
        "(MATH: 16.9 / 15.8 / 17.8)",
        {"lora": 60.6, "pissa": 58.2, "milora": 63.5},
    ),
}


DIFFERS = {
    "commonsense": "4 of the 8 sets (the others have no train file here)",
    "math": "GSM8K's training split (7,473 problems, worked solutions without their "
    "calculator annotations) instead of math_10k",
}


def fmt(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def ranking_note(table: str, rows: dict, n_records: int) -> str:
    """Whether the small-scale order of LoRA / PiSSA / MiLoRA is the paper's, and whether the
    test subset (n_records behind the compared score) can tell them apart at all."""
    paper = PAPER[table][1]
    key = "average" if table == "commonsense" else "gsm8k"
    if not all(m in rows for m in paper):
        return "Ranking: not yet known (LoRA, PiSSA and MiLoRA must all finish)."
    small = {m: round(100 * rows[m]["scores"][key], 1) for m in paper}

    def order(d):
        ranked = sorted(d, key=lambda m: -d[m])
        text = LABELS[ranked[0]]
        for a, b in zip(ranked, ranked[1:]):
            text += (" = " if d[a] == d[b] else " > ") + LABELS[b]
        return text

    agree = order(small) == order(paper)
    exact = {m: 100 * rows[m]["scores"][key] for m in paper}  # gaps from unrounded scores
    ranked = sorted(exact, key=lambda m: -exact[m])
    steps = ", ".join(
        f"{LABELS[a]} - {LABELS[b]} = {exact[a] - exact[b]:.2f}" for a, b in zip(ranked, ranked[1:])
    )
    gap = exact[ranked[0]] - exact[ranked[-1]]
    p = sum(exact.values()) / 300
    # Two accuracies on n records each differ by 2 standard errors of their difference
    # by chance about 1 time in 20; below that the subset does not order the methods.
    noise = 200 * math.sqrt(2 * max(p * (1 - p), 1 / n_records) / n_records)
    resolved = gap > noise
    return (
        f"Ranking on {key}: here {order(small)}; paper {order(paper)}: "
        f"{'the same order' if agree else 'a different order'}. The gaps here ({steps}) "
        f"span {gap:.2f} points on {n_records} test records, "
        + (
            f"above the {noise:.1f} points that sampling alone gives 1 time in 20."
            if resolved
            else f"within the {noise:.1f} points that sampling alone gives 1 time in 20: "
            "this subset does not resolve the order."
        )
    )


def averages_note(rows: dict, n_records: int, what: str = "the average") -> str:
    """The averages in order, the largest gap between methods and the sampling noise, all
    from unrounded scores, so that a reading quotes numbers, not rounded cells.

    `rows`: label -> (accuracy, ...) with the untuned model under "untuned"."""
    methods = {k: v for k, v in rows.items() if k != "untuned"}
    if not methods:
        return f"Averages ({what}): none finished yet."
    ranked = sorted(methods, key=lambda k: -methods[k])
    order = ", ".join(f"{k} {100 * methods[k]:.1f}" for k in ranked)
    untuned = f" (untuned {100 * rows['untuned']:.1f})" if "untuned" in rows else ""
    text = f"Averages over {what}, highest first: {order}{untuned}."
    if len(ranked) > 1:
        top, low = ranked[0], ranked[-1]
        p = sum(rows.values()) / len(rows)
        # 95% half-widths of one accuracy on n records and of a difference of two.
        one = 196 * math.sqrt(max(p * (1 - p), 1 / n_records) / n_records)
        text += (
            f" Largest gap: {top} - {low} = {100 * (methods[top] - methods[low]):.2f} "
            f"({100 * methods[top]:.2f} - {100 * methods[low]:.2f}). On {n_records} records at "
            f"{100 * p:.1f}% correct, sampling alone moves one average by ±{one:.1f} points "
            f"and a difference of two by ±{one * math.sqrt(2):.1f} (95%)."
        )
    return text


def header(title: str, command: str, recs: dict, extra: list[str]) -> list[str]:
    done = [r for r in recs.values() if r]
    wall = sum(r["wall_s"] for r in done)
    # The load when each point started, not when this report is written (often much later).
    loads = [r["load"] for r in done if "load" in r]
    load = (
        f"1-minute load when a point started: {min(loads):.1f} to {max(loads):.1f}"
        + (f" ({len(loads)} of {len(done)} points recorded it)" if len(loads) < len(done) else "")
        if loads
        else "load at the start of each point not recorded"
    )
    return [
        f"# {title}",
        "",
        "```",
        command,
        "```",
        "",
        f"Machine: {points.machine_text(with_load=False)}; {load}. "
        f"Wall time of the finished points: {wall / 3600:.2f} h.",
        "",
        *extra,
    ]


def sizing_note(plan: Plan) -> str:
    """The measured costs behind the sizing, and the estimate for the whole table."""
    timing = points.read_json(plan.out.parent / "reasoning_tables_timing.json") or DEFAULT_TIMING
    total = sum(estimate_s({}, plan, n, timing) for n in table_points(plan))
    return (
        f"Sizing: measured here ({timing.get('machine', 'built-in defaults')}): "
        f"{1000 * timing['train_s_per_token']:.2f} ms per padded training token (batch 16), "
        f"{1000 * timing['prefill_s_per_token']:.2f} ms per prompt token, "
        f"{1000 * timing['decode_s_per_step']:.0f} ms per decoding step of 16 rows; with a "
        f"{MARGIN}x margin the table is estimated at {total / 3600:.2f} h "
        "(`--dry-run` lists each point; budget 2.5 h of this 2-core machine)."
    )


def overlap_note(plan: Plan, recs: dict) -> str:
    """Train/test overlap of the table's training file, computed now from the data, and
    whether its finished points were trained with the guard (morejax.data.overlap)."""
    from morejax.data import overlap, reasoning
    from morejax.train.inputs import scored_sets

    from_config = load_exp(plan, plan.methods[0])[1].data
    sets = tuple(dict.fromkeys((*scored_sets(from_config), *plan.sets, *UNSEEN)))
    counts = {}
    for split in ("train", "validation"):
        guard = overlap.Guard(sets)
        reasoning.load_examples(plan.train_data, split, keep=guard.keep)
        counts[split] = guard.report(split)
    scored = {
        overlap.record_key(r) for recs_ in test_records(plan, plan.sets).values() for r in recs_
    }
    train_keys = {
        overlap.record_key(r)
        for split in ("train", "validation")
        for r in reasoning.load_split_records(plan.train_data, split, required=("instruction",))
    }
    in_scored = len(scored & train_keys)
    trained = [r for n, r in recs.items() if n.startswith("train/") and r]
    guarded = [r for r in trained if r.get("test_overlap") is not None]
    text = (
        f"Train/test overlap (`morejax.data.overlap`: normalised instruction + input, against the "
        f"full test files of {', '.join(sets)}): "
        + "; ".join(f"{c.dropped} of {c.total} {s} records" for s, c in counts.items())
        + f"; {in_scored} of the {len(scored)} scored test records occur in the training file. "
    )
    if len(guarded) == len(trained):
        return text + "Every training point ran with the guard, which drops such records."
    return text + (
        f"{len(trained) - len(guarded)} of the {len(trained)} training points ran before the "
        "guard existed and trained on every record of the file, these included."
    )


def before_and_after(plan: Plan, tests: dict, cols: list) -> list[str]:
    """The same test subsets, scored after training on the contaminated file (math_data)."""
    folder = CONTAMINATED.get(plan.table.name)
    if plan.reduced or folder is None or not (plan.out.parent / folder).is_dir():
        return []
    old = {
        m: points.read_json(plan.out.parent / folder / f"test__{m}.json")
        for m in ("base", *plan.methods)
    }
    lines = [
        f"Before and after (averages over {', '.join(plan.sets)}; same test subsets, same "
        f'decoding). "before": trained on {LEGACY_TRAIN_DATA[plan.table.name]}.json, whose '
        "every record is a problem of these test sets (the 2026-12-05 table, its points in "
        f'results/{folder}/); "after": trained on {plan.train_data}.',
        "",
        "| method | before | after | change |",
        "|---|---|---|---|",
    ]
    for m in ("base", *plan.methods):
        was = (old.get(m) or {}).get("scores", {}).get("average")
        now = (tests.get(m) or {}).get("scores", {}).get("average")
        change = f"{100 * (now - was):+.1f}" if was is not None and now is not None else "…"
        label = "untuned" if m == "base" else LABELS[m]
        lines += [f"| {label} | {fmt(was)} | {fmt(now)} | {change} |"]
    return lines + [""]


def write_table_md(plan: Plan, command: str) -> Path:
    t = plan.table
    names = table_points(plan)
    recs = {n: point(plan, n) for n in names}
    missing = [n for n, r in recs.items() if r is None]
    tests = {n.split("/")[1]: r for n, r in recs.items() if n.startswith("test/") and r}
    digests = sorted({r["weights"] for r in tests.values()})
    cols = list(plan.sets) + ["average"]
    lines = header(
        f"{t.name.capitalize()} reasoning, small scale (SmolLM2-135M)",
        command,
        recs,
        [
            ("REDUCED smoke run: a tiny random LLaMA, not SmolLM2. " if plan.reduced else "")
            + f"Base model: SmolLM2-135M-Instruct, its Q4_1 GGUF dequantised to float32; every "
            f"method starts from the same tensors (sha256 prefix {', '.join(digests) or '–'}). "
            f"Adapters on q,k,v,up,down of all 30 layers; {plan.steps} steps of batch 16; "
            f"{plan.per_set} test records per set (a fixed random subset, seeded by the set's "
            f"name), greedy decoding with the KV cache, at most {plan.tokens} new tokens, "
            "stopping at EOS; LLM-Adapters prompts and answer extraction. Learning rate per "
            f"method: the lowest validation loss of {FACTORS} x the "
            "config's default (validation: held-out training records).",
            "",
            overlap_note(plan, recs),
            "",
        ],
    )
    lines += ["| method | params | lr | " + " | ".join(cols) + " |"]
    lines += ["|---|---|---|" + "---|" * len(cols)]
    if "base" in tests:
        s = tests["base"]["scores"]
        lines += ["| untuned | 0 | – | " + " | ".join(fmt(s.get(c)) for c in cols) + " |"]
    for m in plan.methods:
        r = tests.get(m)
        if r is None:
            lines += [f"| {LABELS[m]} | … | … | " + " | ".join("…" for _ in cols) + " |"]
            continue
        s = r["scores"]
        lines += [
            f"| {LABELS[m]} | {r['params']:,} | {r['lr']:g} | "
            + " | ".join(fmt(s.get(c)) for c in cols)
            + " |"
        ]
    paper_text, _ = PAPER[t.name]
    width = max(map(len, plan.lrs.values()))
    lines += [
        "",
        f"Paper (for comparison, not the same experiment): {paper_text}. What differs: a "
        f"135M model instead of 7B, {plan.steps * 16:,} training examples (a fraction of an "
        f"epoch) instead of 3 epochs of {'170k' if t.name == 'commonsense' else '10k'}, "
        f"{DIFFERS[t.name]}, "
        "subsets of the test sets, float32 throughout.",
        "",
        ranking_note(
            t.name, tests, plan.per_set * (len(plan.sets) if t.name == "commonsense" else 1)
        ),
        "",
        averages_note(
            {label_of(m): r["scores"]["average"] for m, r in tests.items()},
            plan.per_set * len(plan.sets),
            f"the {len(plan.sets)} sets",
        ),
        "",
        "Validation loss per learning rate:",
        "",
        "| method | " + " | ".join(f"lr {i + 1}" for i in range(width)) + " |",
        "|---|" + "---|" * width,
    ]
    for m in plan.methods:
        cells = []
        r = recs.get(f"train/{m}")
        for i, lr in enumerate(plan.lrs[m]):
            cells.append(f"{lr:g}: {r['val_loss'][i]:.4f}" if r else f"{lr:g}: …")
        lines += [f"| {LABELS[m]} | " + " | ".join(cells) + " |"]
    lines += ["", sizing_note(plan), ""]
    lines += before_and_after(plan, tests, cols)
    lines += [f"Missing points ({len(missing)}): " + (", ".join(missing) or "none"), ""]
    path = ROOT / "results" / f"{t.name}_small.md" if not plan.reduced else plan.out / "table.md"
    write_report(path, "\n".join(lines) + "\n")  # the reading written below it stays
    return path


def label_of(method: str) -> str:
    return "untuned" if method == "base" else LABELS[method]


def mean(scores: dict, names) -> float:
    return sum(scores[n] for n in names) / len(names)


def forget_averages(plan: Plan, other: Plan, unseen: Plan, recs: dict, untuned: dict) -> list:
    """After training on `plan`: the averages on the unseen sets (scored as `unseen` scores
    them) and on the other table's sets (as `other` does)."""
    t, out = plan.table.name, []
    done = {m: recs[f"forget/{t}/{m}"] for m in plan.methods if recs.get(f"forget/{t}/{m}")}
    for names, scorer, key in ((unseen.unseen, unseen, "scores"), (other.sets, other, "cross")):
        rows = {LABELS[m]: mean(r[key], names) for m, r in done.items()}
        if all(n in untuned for n in names):
            rows["untuned"] = mean(untuned, names)
        what = "the unseen sets" if key == "scores" else f"the {other.table.name} sets"
        out += [averages_note(rows, scorer.per_set * len(names), what), ""]
    return out[:-1]


def write_forget_md(plans: dict, command: str) -> Path:
    first = next(iter(plans.values()))
    names = forget_points(plans)
    recs = {n: point(first, n) for n in names}
    missing = [n for n, r in recs.items() if r is None]
    lines = header(
        "Forgetting after fine-tuning, small scale (SmolLM2-135M)",
        command,
        recs,
        [
            "(a) Accuracy on sets the model never trained on (piqa, social_i_qa, winogrande; "
            "and the other table's sets), against the untuned model. (b) How far each adapted "
            f"matrix's top-{SUBSPACE_K} singular subspaces moved: principal angles between the "
            "pretrained and the merged fine-tuned kernel, mean over the 30 layers of each "
            "projection's mean angle (degrees), input side / output side. The input-side "
            "angles as bars, with the spectra they start from: results/figures/spectra_*.png "
            "(`python experiments/make_figures.py notebooks/spectra.py`).",
            "",
        ],
    )
    base = recs.get("forget/base")
    for t, plan in plans.items():
        other = plans[plan.table.other]
        cross_cols = list(plans[plan.table.other].sets)
        cols = list(plan.unseen) + cross_cols
        lines += [f"## Trained on {t}", ""]
        lines += ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        b = dict(base["scores"]) if base else {}
        if point(other, "test/base"):
            b.update(point(other, "test/base")["scores"])
        lines += ["| untuned | " + " | ".join(fmt(b.get(c)) for c in cols) + " |"]
        for m in plan.methods:
            r = recs.get(f"forget/{t}/{m}")
            s = dict(r["scores"]) | dict(r["cross"] or {}) if r else {}
            lines += [f"| {LABELS[m]} | " + " | ".join(fmt(s.get(c)) for c in cols) + " |"]
        lines += [""] + forget_averages(plan, other, plans["commonsense"], recs, b) + [""]
        lines += [f"Principal angles after {t} fine-tuning (degrees, input / output):", ""]
        projs = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
        lines += ["| method | " + " | ".join(projs) + " |", "|---|" + "---|" * len(projs)]
        for m in plan.methods:
            r = point(plan, f"test/{m}")
            cells = []
            for p in projs:
                sh = (r or {}).get("shifts", {}).get(p)
                cells.append(
                    f"{sh['left_mean_deg']:.2f} / {sh['right_mean_deg']:.2f}" if sh else "…"
                )
            lines += [f"| {LABELS[m]} | " + " | ".join(cells) + " |"]
        lines += [""]
    lines += [f"Missing points ({len(missing)}): " + (", ".join(missing) or "none"), ""]
    path = (
        ROOT / "results" / "forgetting_small.md"
        if not first.reduced
        else first.out / "forgetting.md"
    )
    write_report(path, "\n".join(lines) + "\n")  # the reading written below it stays
    return path
