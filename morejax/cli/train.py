"""`morejax train`, `eval` and `params`: one experiment file, `--set` overrides."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from morejax.data import folders
from morejax.train import config


def common_arguments(p: argparse.ArgumentParser, *, config_help: str | None = None) -> None:
    if config_help:
        p.add_argument("config", nargs="?", help=config_help)
    else:
        p.add_argument("config", help="experiment file (configs/*.py) defining config()")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a nested value, e.g. --set adapter.rank=8 (values are Python literals; "
        "text fields take the text as written)",
    )


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="fine-tune with a config file (resumes a workdir)")
    common_arguments(p)
    p.add_argument("--workdir", help="run directory (default runs/<config file stem>)")
    p.add_argument("--stop-at", type=int, help="stop after this step with a checkpoint")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="plain lines (loss, tokens/s every log_every steps) instead of a progress bar, "
        "as when the output is not a terminal",
    )
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume a workdir whose checkpoint was made with other config values",
    )
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("eval", help="evaluate a run's best or latest checkpoint")
    common_arguments(
        p,
        config_help="experiment file; default: the run's saved config (workdir/config.json). "
        "A file or --set that changes the run's config is an error naming the fields",
    )
    p.add_argument("--workdir", required=True)
    p.add_argument("--checkpoint", default="best", help="best | latest | STEP")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("params", help="adapted-parameter table from shapes alone")
    common_arguments(p)
    p.add_argument("--totals", action="store_true", help="print the totals only")
    p.set_defaults(func=cmd_params)


def load(args, extra: dict | None = None):
    return config.load(args.config, args.set, extra)


def default_workdir(args, suffix: str = "") -> Path:
    return Path("runs") / (Path(args.config).stem + suffix)


def run_one(cfg, workdir: Path, *, stop_at=None, progress=True, allow_config_change=False):
    """Print and write the resolved config, then train (resuming when the workdir has a run)."""
    from morejax.train import loop

    config.resolve(cfg)
    print("resolved config:\n" + config.to_text(cfg), flush=True)
    exp = config.build(cfg)
    print(f"data folder: {data_folder(exp.data)}", flush=True)
    config.write_resolved(cfg, workdir)
    return loop.train(
        exp,
        workdir,
        resolved=config.to_json(cfg),
        stop_at=stop_at,
        progress=progress,
        allow_config_change=allow_config_change,
    )


def data_folder(data: config.Data) -> str:
    """Where a run reads its examples, said at its start: a wrong guess is seen at once."""
    if data.kind in ("text", "chat"):
        return ", ".join(str(p) for p in (data.train, data.validation, data.test) if p)
    if data.local_dir:
        return data.local_dir
    looked = folders.shared_data("glue" if data.kind == "glue" else "llm-adapters")
    if data.kind == "glue":
        tfds = data.data_dir or "~/tensorflow_datasets"
        return f"none ({looked} does not exist): GLUE as TFDS prepared it in {tfds}, or downloaded"
    return f"none ({looked} does not exist): the reasoning sets' default folder"


def cmd_train(args) -> int:
    from morejax.train.loop import Preempted

    cfg = load(args)
    workdir = Path(args.workdir) if args.workdir else default_workdir(args)
    try:
        out = run_one(
            cfg,
            workdir,
            stop_at=args.stop_at,
            progress=not args.no_progress,
            allow_config_change=args.allow_config_change,
        )
    except Preempted as e:
        print(f"preempted: {e} (exit code {e.exit_code})", file=sys.stderr, flush=True)
        return e.exit_code
    report(out, workdir)
    return 0


def report(out: dict, workdir: Path) -> None:
    final = out["final"]
    if isinstance(final, dict):
        shown = ", ".join(f"{k} {v:.4f}" for k, v in final.items())
        print(f"dev at step {out['step']}: {shown}")
    elif final:
        print(f"dev at step {out['step']}, per member: {final}")
    if out["best"] is not None:
        print(f"best dev {out['metric']} {out['best']:.4f} at step {out['best_step']} (kept)")
    if out["checkpoint"]:
        kept = f"{out['checkpoint']} (best)"
    elif out["latest_checkpoint"]:
        kept = f"{out['latest_checkpoint']} (latest; not evaluated yet)"
    else:
        kept = "none yet"
    print(f"adapter checkpoint: {kept}; workdir {workdir}")
    print(f"wall time {out['wall_s']:.0f} s, {out['step']} / {out['steps']} steps")


def cmd_eval(args) -> int:
    from morejax.train import evaluate

    cfg = eval_config(args)
    exp = config.build(cfg)
    out = evaluate.evaluate_checkpoint(exp, args.workdir, args.checkpoint)
    for i, r in enumerate(out["results"]):
        label = f"member {i}: " if len(out["results"]) > 1 else ""
        print(label + ", ".join(f"{k} {v:.4f}" for k, v in r.items()))
    print(json.dumps(out["results"]))
    return 0


def eval_config(args):
    """The config of the run in `--workdir` (its saved one unless a file is given); a file or
    `--set` that changes it is an error, so a run is never scored on another task or model."""
    from morejax.train.evaluate import checkpoints_of

    workdir = Path(args.workdir)
    checkpoints_of(workdir)
    saved = config.saved(workdir)
    if args.config:
        cfg = load(args)
    elif saved is None:
        raise FileNotFoundError(f"{workdir} has no config.json: pass the run's config file")
    else:
        cfg = config.apply_overrides(config.from_json(saved), args.set)
    config.resolve(cfg)
    changed = (args.config or args.set) and config.changes(saved or {}, config.to_json(cfg))
    if changed:
        raise ValueError(
            f"{workdir} holds a run of another config ({changed}); leave out the config file "
            "and --set to score the run as it was trained"
        )
    return cfg


def cmd_params(args) -> int:
    from morejax.train import setup

    exp = config.build(load(args))
    summary = setup.param_summary(exp)
    print(summary.totals() if args.totals else summary.table())
    return 0
