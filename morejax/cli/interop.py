"""`morejax export` and `morejax import`: a run's adapters to and from Hugging Face formats.

`export` restores a workdir's checkpoint (no data is read) and writes a PEFT adapter, a
merged Hugging Face model or MoRe's own adapter folder. `import` reads a PEFT (or MoRe)
adapter folder into a new workdir as a step-0 checkpoint of the config, which
`morejax eval` scores and `morejax train` continues.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from morejax.cli.train import common_arguments, eval_config, load

FORMATS = ("peft", "merged", "more")
# What the pretrained short names are called on the Hugging Face Hub (for adapter configs).
HUB_NAMES = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a run's adapters as PEFT, a merged HF model, or MoRe's format"
    )
    common_arguments(p, config_help="the run's config file (default: its saved config.json)")
    p.add_argument("--workdir", required=True, help="the run directory (with checkpoints/)")
    p.add_argument("--format", choices=FORMATS, default="peft")
    p.add_argument("--out", required=True, help="output folder (created; must be empty)")
    p.add_argument("--checkpoint", default="best", help="best | latest | STEP")
    p.add_argument(
        "--svd-mode",
        choices=("lora2r", "residual"),
        default="lora2r",
        help="PiSSA/MiLoRA as PEFT: a rank-2r LoRA over the original weights (default), or "
        "the rank-r adapter plus its residual base model in OUT/base_model",
    )
    p.add_argument("--member", type=int, help="which member of a vectorised run (default 0)")
    p.add_argument("--base-model", help="base_model_name_or_path to record (default: derived)")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser(
        "import", help="a PEFT (or MoRe) adapter folder -> a step-0 checkpoint in a workdir"
    )
    common_arguments(p)
    p.add_argument("adapter", help="folder with adapter_config.json (or more_config.json)")
    p.add_argument("--workdir", required=True, help="new run directory to write")
    p.set_defaults(func=cmd_import)


# ----------------------------------------------------------------------------- shared


def _steps(workdir: Path) -> list[int]:
    ckpt = workdir / "checkpoints"
    if not ckpt.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit())


def _model_dir(spec) -> Path | None:
    """The Hugging Face folder the run's weights came from (None: random init or GGUF)."""
    from morejax.models import registry

    if not spec.pretrained:
        return None
    where = spec.checkpoint or spec.name
    if where in registry.PRETRAINED:
        found = registry.find_model_dir(where)
        return found if (found / "config.json").is_file() else None
    return Path(where).absolute() if Path(where).is_dir() else None


def _base_name(spec) -> str | None:
    """The base model as the config names it (a short name, its hub id, or the folder as the
    user gave it): never the path of an installed package, which means nothing elsewhere."""
    if not spec.pretrained:
        return None
    return HUB_NAMES.get(spec.checkpoint or spec.name, spec.checkpoint or spec.name)


def _members(exp):
    from morejax.train.setup import members

    vec = members(exp)
    return (vec[0], True) if vec else ([exp.seed], False)


# ----------------------------------------------------------------------------- export


def cmd_export(args) -> int:
    import jax

    from morejax import interop
    from morejax.train import checkpoints, config
    from morejax.train.evaluate import metric_of
    from morejax.train.setup import load_adapted, stack_members

    cfg = eval_config(args)  # the run as it was trained: its saved config by default
    exp = config.build(cfg)
    workdir, out = Path(args.workdir), Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} exists and is not empty: choose a new folder")
    seeds, vec = _members(exp)
    member = 0 if args.member is None else args.member
    if not 0 <= member < len(seeds) or (args.member is not None and not vec):
        raise ValueError(
            f"--member {args.member}: this run has {len(seeds)} member(s)"
            + ("" if vec else " (it is not vectorised; leave --member out)")
        )
    if args.format == "peft" and exp.adapter is not None and _is_more(exp):
        raise ValueError(
            "MoRe has no PEFT equivalent: export it with --format more (its own adapter "
            "file) or --format merged (full Hugging Face weights)"
        )
    a = load_adapted(exp)
    template = stack_members(a.adapters, a.n_members)
    metric, mode = metric_of(exp)
    ckpt = checkpoints.Checkpoints(workdir / "checkpoints", metric=metric, mode=mode)
    try:
        step = ckpt.resolve(args.checkpoint)
        adapters = ckpt.restore_adapters(step, template)
    finally:
        ckpt.close()
    if vec:
        adapters = jax.tree.map(lambda x: x[member], adapters)

    base, model_config, model_dir = a.base, a.loaded.model.config, _model_dir(exp.model)
    base_name = args.base_model or _base_name(exp.model)
    if exp.model.pretrained and model_dir is None and args.format != "merged":
        interop.warn_quantized(exp.model.checkpoint or exp.model.name)
    if args.format == "peft":
        interop.export_peft(
            base,
            adapters,
            model_config,
            out,
            base_model_name_or_path=base_name,
            svd_mode=args.svd_mode,
            initial=a.adapters[member],
            write_base=not exp.model.pretrained,
            tokenizer_from=model_dir,
        )
    elif args.format == "merged":
        interop.export_merged(
            base, adapters, model_config, out, tokenizer_from=model_dir, labels=class_names(exp)
        )
    else:
        interop.export_more(base, adapters, model_config, out, base_model_name_or_path=base_name)
    print(f"exported step {step} of {workdir} as {args.format} to {out}")
    return 0


def _is_more(exp) -> bool:
    from morejax.methods import MoRe

    methods = [exp.adapter, *(exp.rules or {}).values()]
    return any(isinstance(m, MoRe) for m in methods)


# ----------------------------------------------------------------------------- import


def describe(adapters) -> str:
    """One line: each distinct method and the kernels it adapts, e.g. for error messages."""
    from morejax.interop import flatten_adapters
    from morejax.transform import Adapter

    groups: dict[str, list[str]] = {}
    trained = []
    for path, a in flatten_adapters(adapters).items():
        if isinstance(a, Adapter):
            groups.setdefault(repr(a.method), []).append("/".join(path))
        else:
            trained.append("/".join(path))
    parts = [
        f"{m} on {len(v)} kernel(s) ({', '.join(v[:3])}{', ...' * (len(v) > 3)})"
        for m, v in groups.items()
    ]
    if trained:
        trained.sort()
        parts.append(f"trained leaves {trained[:4]}{' ...' * (len(trained) > 4)}")
    return "; ".join(parts) or "(nothing)"


def _same_method(a, b) -> bool:
    """Equal up to dropout (which changes training, not the adapter's function)."""
    if type(a) is not type(b):
        return False
    fields = [f.name for f in dataclasses.fields(a) if f.name != "dropout"]
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def _reconcile(imported, template, fill: dict, where: str):
    """The imported adapters in the shape of the config's (its methods, layouts, dtypes).

    Trained leaves the folder lacks come from ``fill`` (pretrained leaves) or stay as the
    config draws them; anything the config does not train is an error.
    """
    import jax.numpy as jnp

    from morejax import interop
    from morejax.paths import unflatten
    from morejax.transform import Adapter

    got, want = interop.flatten_adapters(imported), interop.flatten_adapters(template)
    extra = sorted("/".join(p) for p in got if p not in want)
    wrong = []
    for path, t in want.items():
        g = got.get(path)
        if isinstance(t, Adapter) and (
            not isinstance(g, Adapter) or not _same_method(g.method, t.method)
        ):
            wrong.append("/".join(path))
    if extra or wrong:
        raise ValueError(
            f"the adapter in {where} does not fit this config: it has "
            f"{describe(imported)}; the config has {describe(template)}"
            + (f"; not trained by the config: {extra[:6]}" if extra else "")
            + (f"; different or missing: {wrong[:6]}" if wrong else "")
            + ". Set --set adapter=... / targets=... / trainable=... to match the adapter"
        )
    out, kept = {}, []
    for path, t in want.items():
        g = got.get(path)
        if isinstance(t, Adapter):
            params = {k: jnp.asarray(v, t.params[k].dtype) for k, v in g.params.items()}
            out[path] = Adapter(params, t.method, t.layout)
        elif g is not None:
            out[path] = jnp.asarray(g, t.dtype)
        elif path in fill:
            out[path] = jnp.asarray(fill[path], t.dtype)
        else:
            out[path] = t
            kept.append("/".join(path))
    return unflatten(out), kept


def cmd_import(args) -> int:
    import jax
    import jax.numpy as jnp

    from morejax import interop
    from morejax.paths import unflatten
    from morejax.train import checkpoints, config, distributed, loop
    from morejax.train.evaluate import metric_of
    from morejax.train.inputs import task_kind
    from morejax.train.logger import say
    from morejax.train.mesh import make_mesh, replicated
    from morejax.train.optim import make_optimizer
    from morejax.train.setup import Setup, load_adapted
    from morejax.transform import Adapter

    cfg = load(args)
    config.resolve(cfg)
    resolved = config.to_json(cfg)
    exp = config.build(cfg)
    workdir, folder = Path(args.workdir), Path(args.adapter)
    if _members(exp)[1]:
        raise ValueError("import writes a single run: leave vmap_seeds / vmap_learning_rates out")
    if _steps(workdir):
        raise FileExistsError(f"{workdir} already holds checkpoints: import into a new --workdir")
    if (folder / interop.PEFT_CONFIG).is_file():
        read = interop.import_peft
    elif (folder / interop.MORE_CONFIG).is_file():
        read = interop.import_more
    else:
        raise FileNotFoundError(
            f"{folder} holds neither {interop.PEFT_CONFIG} (PEFT) nor {interop.MORE_CONFIG} "
            "(morejax MoRe export): point at the adapter folder"
        )
    # The model and the config's adapters first (no data): a misfit fails in seconds.
    a = load_adapted(exp)
    loaded, base, template = a.loaded, a.base, a.adapters[0]
    like = unflatten(interop.plain_params(base, template))
    model_config = loaded.model.config
    imported = read(folder, model_config, like)
    fill = {}
    model_dir = _model_dir(exp.model)
    if model_dir is not None:  # e.g. BERT's pooler when the adapter trained only the classifier
        missing = [
            p
            for p, a in interop.flatten_adapters(template).items()
            if p not in interop.flatten_adapters(imported) and not isinstance(a, Adapter)
        ]
        if missing:
            fill = interop.pretrained_leaves(model_dir, model_config, like, missing)
    adapters, kept = _reconcile(imported, template, fill, str(folder))
    if kept:
        say(f"note: the adapter holds no {kept}; they start as the config draws them")

    # A train state as `morejax train` builds it (the evaluation data is not needed), saved
    # as step 0 with the data position of a fresh run: `train` resumes from it.
    config.write_resolved(cfg, workdir)
    mesh = make_mesh(exp.mesh)
    lrs = [float(exp.optimizer.learning_rate)]
    s = Setup(mesh, task_kind(exp), loaded, base, template, [exp.seed], lrs, None, {})
    stream, steps = loop.training_data(exp, s)
    tx = make_optimizer(exp.optimizer, steps, adapters)
    state = {"adapters": adapters, "opt_state": tx.init(adapters), "step": jnp.zeros((), jnp.int32)}
    state = distributed.put(state, replicated(mesh, state))
    metric, mode = metric_of(exp)
    ckpt = checkpoints.Checkpoints(workdir / "checkpoints", metric=metric, mode=mode)
    try:
        ckpt.probe(state)
        meta = {"best": None, "best_step": None, "best_members": None, "skipped_steps": 0}
        data_state = checkpoints.encode_data_state(stream.get_state())
        ckpt.save(0, state, {**meta, "step": 0}, data_state, resolved)
        ckpt.wait()
    finally:
        ckpt.close()
    n = sum(x.size for x in jax.tree.leaves(adapters))
    print(
        f"imported {folder} ({n:,} params: {describe(adapters)}) as step 0 of "
        f"{workdir}; evaluate with: morejax eval --workdir {workdir}"
    )
    return 0


def class_names(exp) -> tuple[str, ...] | None:
    """The run's classes in head order: a file's sorted labels, or a GLUE task's names."""
    if exp.data is None or exp.model.head != "classification":
        return None
    if exp.data.kind == "text":
        return exp.data.classes
    if exp.data.kind == "glue":
        from morejax.data import glue

        return glue.spec(exp.data.task).label_names
    return None
