"""`morejax plan`: a config's steps compiled for a TPU slice from shapes alone (no TPU, no
weights): memory per chip, whether it fits, estimated step time, tokens/s and chip-hours."""

from __future__ import annotations

import dataclasses
import json
import sys

from morejax.cli.train import common_arguments, load
from morejax.train import config


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="compile a config's steps for a TPU slice (no TPU needed): memory, fit, cost",
        description="Compile the config's training step (and evaluation, generation and SVD "
        "initialisation, where it has them) for a TPU topology with libtpu "
        "(pip install -e '.[tpu]'), from shapes alone. Memory per chip is the compiler's; "
        "step time, tokens/s and chip-hours are estimates (a roofline).",
    )
    common_arguments(p)
    p.add_argument(
        "--topology",
        required=True,
        help="CHIP:SHAPE (v5e:2x4, v4:2x2x1, v5p:2x2x1, v6e:2x4) or a slice name (v5e-8, v4-8)",
    )
    p.add_argument("--mesh", metavar="data=D,model=M", help="the mesh (default: the config's)")
    p.add_argument(
        "--examples",
        type=int,
        help="training examples, to count an epochs-based run's steps (default: the published "
        "size of the config's data set, where known)",
    )
    p.add_argument(
        "--search",
        type=int,
        default=6,
        metavar="N",
        help="when it does not fit, compile the train step of up to N other settings (mesh, "
        "micro-batches, remat, batch size) and name the cheapest that fits (0: none)",
    )
    p.add_argument(
        "--programs",
        default="train,eval,generate,init",
        help="which to compile, comma-separated (default: all the config has)",
    )
    p.add_argument(
        "--cache",
        metavar="DIR",
        help="keep each compiled program's measurements in DIR, and take them from there "
        "when the same program (same lowered text, topology and versions) is planned again",
    )
    p.add_argument("--json", action="store_true", help="the plan as JSON on stdout")
    p.set_defaults(func=cmd_plan)


def mesh_overrides(text: str | None) -> dict:
    """`data=1,model=8` -> {'mesh.data': 1, 'mesh.model': 8}."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in ("data", "model") or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"--mesh {text!r}: give data=D,model=M (whole numbers)")
        out[f"mesh.{key.strip()}"] = int(value)
    return out


def cmd_plan(args) -> int:
    from morejax.train import plan, plan_report

    exp = config.build(load(args, mesh_overrides(args.mesh)))
    result = plan.plan(
        exp,
        args.topology,
        programs=tuple(x.strip() for x in args.programs.split(",") if x.strip()),
        examples=args.examples,
        search=args.search,
        progress=lambda text: print(text, file=sys.stderr, flush=True),
        cache=args.cache,
    )
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=1))
    else:
        print(plan_report.report(result))
    return 0
