"""The ``morejax`` command line: `train`, `eval`, `params`, `plan`, `sweep`, `generate`,
`export`, `import`.

Each subcommand module registers its parser and sets ``func`` (the handler taking the
parsed args and returning an exit code). Heavy imports (jax, models) happen inside
handlers so ``morejax --help`` stays fast. A user error prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

__all__ = ["build_parser", "error_line", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    from morejax.cli import generate, interop, plan, sweep, train

    parser = argparse.ArgumentParser(
        prog="morejax", description="Parameter-efficient fine-tuning in JAX/Flax."
    )
    debug_help = "show the traceback of an error (also MOREJAX_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    train.register(subparsers)
    plan.register(subparsers)
    sweep.register(subparsers)
    generate.add_generate_parser(subparsers)
    interop.register(subparsers)
    for sub in subparsers.choices.values():  # `morejax params CFG --debug` works too
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


# What a user can cause and fix (a bad config, value, path, file or missing package): one
# line on stderr, exit code 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, KeyError, ImportError)


# Commands that compile training or evaluation steps use the persistent compilation cache.
COMPILING = ("train", "eval", "sweep", "generate")


def error_line(e: BaseException) -> str:
    """The exception's message on one line (notes such as fiddle's context included)."""
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    notes = [n for n in getattr(e, "__notes__", []) if "JAX_TRACEBACK_FILTERING" not in n]
    parts = [str(text), *(n for n in notes if n.strip("- \n"))]
    if isinstance(e, OSError) and e.filename and str(e.filename) not in parts[0]:
        parts.append(str(e.filename))
    return " ".join(" ".join(p.split()) for p in parts if str(p).strip())


def run(args, debug: bool = False) -> int:
    """Run a parsed command; user errors become one line and exit code 2 (with `debug`,
    the traceback first: the exit code does not depend on it)."""
    debug = debug or os.environ.get("MOREJAX_DEBUG", "").strip() not in ("", "0")
    before = os.environ.get("MOREJAX_DEBUG")
    if debug:  # the library's switch too (e.g. TFDS's preparation output), for this command
        os.environ["MOREJAX_DEBUG"] = "1"
    try:
        if args.command in COMPILING:
            from morejax.train import compile_cache

            compile_cache.enable()
        return args.func(args)
    except USER_ERRORS as e:
        if debug:
            traceback.print_exc()
            print(f"error: {error_line(e)}", file=sys.stderr)
        else:
            print(f"error: {error_line(e)} (--debug for the traceback)", file=sys.stderr)
        return 2
    finally:
        if before is None:
            os.environ.pop("MOREJAX_DEBUG", None)
        else:
            os.environ["MOREJAX_DEBUG"] = before


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args, args.debug)
