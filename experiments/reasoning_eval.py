"""Accuracy per reasoning set and the average, by batched greedy generation (LLM-Adapters rules).

    python experiments/reasoning_eval.py --model smollm2-135m --limit 50 \
        --sets boolq ARC-Easy ARC-Challenge openbookqa piqa social_i_qa winogrande

Optionally `--workdir RUN` evaluates the adapters of a `morejax train` run on a
decoder config (its best checkpoint). Prints a Markdown table like the papers'.
"""

from __future__ import annotations

import argparse
import time

from morejax import generate
from morejax.data import reasoning
from morejax.models.registry import load_pretrained


def restore(config_path: str, workdir: str):
    """(model, params, tokenizer), frozen base and best adapters of a decoder training run."""
    from morejax import config, train

    s, _, adapters, _ = train.restore_checkpoint(config.build(config.load(config_path)), workdir)
    return (s.loaded.model, None, s.loaded.tokenizer), s.base, adapters


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sets", nargs="+", default=["boolq", "ARC-Easy", "openbookqa"])
    parser.add_argument("--limit", type=int, default=50, help="first N test records per set")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--config", help="with --workdir: the run's config file")
    parser.add_argument("--workdir", help="a training run whose best adapters to evaluate")
    args = parser.parse_args()

    pre = load_pretrained(args.model)
    base = adapters = None
    if args.workdir:
        from morejax import config, train

        exp = config.build(config.load(args.config))
        base, adapters = train.restore_adapters(exp, args.workdir, "best")
    generate_fn = generate.text_generator(pre, base, adapters, max_new_tokens=args.max_new_tokens)
    start = time.perf_counter()
    scores = reasoning.evaluate(
        generate_fn, args.sets, batch_size=args.batch_size, limit=args.limit
    )
    took = time.perf_counter() - start
    names = [s for s in scores if s != "average"]
    print(f"{args.model}, first {args.limit} test records per set, greedy, {took:.0f} s\n")
    print("| " + " | ".join(names + ["average"]) + " |")
    print("|" + "---|" * (len(names) + 1))
    print("| " + " | ".join(f"{100 * scores[n]:.1f}" for n in names + ["average"]) + " |")


if __name__ == "__main__":
    main()
