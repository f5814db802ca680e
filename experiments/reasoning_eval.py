"""Accuracy per reasoning set and the average, by batched greedy generation (LLM-Adapters rules).

    python experiments/reasoning_eval.py --model smollm2-135m --limit 50 \
        --sets boolq ARC-Easy ARC-Challenge openbookqa piqa social_i_qa winogrande

`--config CFG --workdir RUN` instead evaluates the adapters of a `morejax train` run of a
decoder config (its best checkpoint; `--checkpoint` picks another), on the config's
`data.generate_sets` unless `--sets` is given. Prints a Markdown table like the papers'.
Smoke run (CI): `--limit 2 --max-new-tokens 2` on one set.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

from morejax.data import reasoning
from morejax.models import generate


def restore(config_path: str, workdir: str, overrides=(), which: str = "best"):
    """The run's experiment, (model, params, tokenizer), frozen base, adapters and step."""
    from morejax.train import config, evaluate

    exp = config.build(config.load(config_path, overrides))
    # Setup's log lines (test overlap, warnings) go to stderr: stdout is the Markdown report.
    with contextlib.redirect_stdout(sys.stderr):
        s, step, adapters, _ = evaluate.restore_checkpoint(exp, workdir, which)
    return exp, (s.loaded.model, None, s.loaded.tokenizer), s.base, adapters, step


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m", help="a pretrained registry name")
    parser.add_argument("--sets", nargs="+", help="default: boolq ARC-Easy openbookqa")
    parser.add_argument("--limit", type=int, default=50, help="first N test records per set")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--root", help="folder of <set>/test.json (default: data.local_dir)")
    parser.add_argument("--config", help="with --workdir: the run's config file")
    parser.add_argument("--workdir", help="a training run whose adapters to evaluate")
    parser.add_argument("--checkpoint", default="best", help="'best', 'latest' or a step")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config override a.b=v"
    )
    args = parser.parse_args(argv)
    if bool(args.workdir) != bool(args.config):
        parser.error("--workdir and --config go together (the run and its config file)")

    root, sets = args.root, args.sets
    if args.workdir:
        exp, pre, base, adapters, step = restore(
            args.config, args.workdir, args.overrides, args.checkpoint
        )
        label = f"{exp.name} adapters (step {step} of {args.workdir})"
        root = root or exp.data.local_dir
        sets = sets or list(exp.data.generate_sets)
    else:
        from morejax.models.registry import load_pretrained

        pre, base, adapters, label = load_pretrained(args.model), None, None, args.model
    sets = sets or ["boolq", "ARC-Easy", "openbookqa"]
    generate_fn = generate.text_generator(pre, base, adapters, max_new_tokens=args.max_new_tokens)
    start = time.perf_counter()
    scores = reasoning.evaluate(
        generate_fn, sets, root=root, batch_size=args.batch_size, limit=args.limit
    )
    took = time.perf_counter() - start
    names = [s for s in scores if s != "average"]
    print(f"{label}, first {args.limit} test records per set, greedy, {took:.0f} s\n")
    print("| " + " | ".join(names + ["average"]) + " |")
    print("|" + "---|" * (len(names) + 1))
    print("| " + " | ".join(f"{100 * scores[n]:.1f}" for n in names + ["average"]) + " |")


if __name__ == "__main__":
    main()
