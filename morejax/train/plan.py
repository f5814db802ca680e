"""Planning a run for a TPU slice without a TPU: the config's own steps compiled ahead of time
for a TPU topology (libtpu, from shapes alone), memory per chip against the chip's HBM, FLOPs,
a roofline step time and the run's chip-hours. Every figure except the compiler's memory
verdict is an estimate: nothing runs on a chip.

The programs are the ones training builds (`setup.shapes`, `loop.optimizer`,
`loop.initial_state`, `loop.member_step_of`, `step.compile_train_step`), lowered from
`jax.ShapeDtypeStruct`s instead of arrays.

Here: the plan and the search for a setting that fits. `plan_chips`: TPU chips, slices and
libtpu's devices; `plan_programs`: the programs compiled and measured; `plan_cost`: FLOPs,
roofline time and chip-hours; `plan_report`: the plan printed.
"""

from __future__ import annotations

import dataclasses
import math

import jax

from morejax.train.config import Experiment, Mesh
from morejax.train.loop import check_batch_split
from morejax.train.mesh import make_mesh, resolve_sharding
from morejax.train.plan_chips import CHIPS, parse_topology, topology_devices, usable_hbm
from morejax.train.plan_cost import Speed, model_bytes, run_steps, speed
from morejax.train.plan_programs import (
    ProgramCache,
    compile_program,
    eval_program,
    generate_program,
    init_program,
    train_program,
)
from morejax.train.setup import shapes, sharding_of

PROGRAMS = ("train", "eval", "generate", "init")


@dataclasses.dataclass
class Candidate:
    """A setting tried because the config did not fit: its train step, compiled."""

    change: str  # the --set arguments that make it
    fits: bool
    peak_bytes: float
    step_s: float | None
    chip_hours: float | None


@dataclasses.dataclass
class Plan:
    config: str
    topology: str
    chip: str
    device_kind: str
    chips: int
    mesh: dict
    sharding: str
    hbm_bytes: float  # per chip, the compiler's limit
    chip_facts: dict
    programs: list
    fits: bool
    speed: Speed | None
    steps_from: str
    load_bytes: float  # the whole model in base_dtype: `setup` holds it on one chip first
    searched: list = dataclasses.field(default_factory=list)
    suggestion: Candidate | None = None


def plan(
    exp: Experiment,
    topology: str,
    *,
    programs=PROGRAMS,
    examples: int | None = None,
    search: int = 6,
    progress=None,
    cache=None,
) -> Plan:
    """Compile the config's programs for `topology` (`v5e:2x4`, `v5e-8`) and estimate.

    When a program does not fit, up to `search` other settings (mesh shape, micro-batches,
    remat, batch size) have their train step compiled, and the cheapest that fits (in
    estimated chip-hours) is the suggestion. `progress(text)` hears what compiles. With a
    `cache` folder, a program compiled before for this topology is not compiled again.
    """
    say = progress or (lambda text: None)
    unknown = sorted(set(programs) - set(PROGRAMS))
    if unknown:
        raise ValueError(f"unknown programs {unknown}; choose from {', '.join(PROGRAMS)}")
    if not exp.data.max_len:
        raise ValueError("set data.max_len: the plan compiles batches of that length")
    chip_name, topo = parse_topology(topology)
    chip = CHIPS[chip_name]
    devices = topology_devices(topo)
    hbm = usable_hbm(topo) or chip.hbm_bytes
    steps, steps_from = run_steps(exp, examples)
    target = Target(devices, topo, say, ProgramCache(cache, topo) if cache else None)
    sh, mesh, sharding, compiled = compile_all(exp, target, steps, programs)
    fits = all(p.fits and p.peak_bytes <= hbm for p in compiled)
    train = next((p for p in compiled if p.name == "train"), None)
    fast = (
        speed(exp, sh, chip, train, len(mesh.devices.flat), steps) if train and train.fits else None
    )
    out = Plan(
        exp.name,
        topo,
        chip_name,
        devices[0].device_kind,
        len(devices),
        dict(mesh.shape),
        sharding,
        hbm,
        dataclasses.asdict(chip),
        compiled,
        fits,
        fast,
        steps_from,
        model_bytes(sh.params, exp.base_dtype),
    )
    if not fits and search > 0:
        out.searched = search_fits(exp, target, chip, hbm, steps, search)
        fitting = [c for c in out.searched if c.fits]
        if fitting:
            out.suggestion = min(fitting, key=lambda c: c.chip_hours)
    return out


@dataclasses.dataclass
class Target:
    """What programs compile for, and where they say so and are kept."""

    devices: tuple
    topology: str
    say: object
    cache: ProgramCache | None


def compile_all(exp, target: Target, steps, programs):
    mesh = make_mesh(exp.mesh, target.devices)
    check_batch_split(exp, mesh.shape["data"])
    sh = shapes(exp)
    base = float(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(sh.base)))
    sharding = resolve_sharding(sharding_of(exp), mesh, base, usable_hbm(target.topology))
    out = []
    for name in programs:
        if name == "generate" and not (
            sh.kind == "lm" and (exp.data.generate_sets or exp.data.exact_match)
        ):
            continue
        if name == "train":
            lowering = train_program(exp, sh, mesh, sharding, steps)
        elif name == "eval":
            lowering = eval_program(exp, sh, mesh, sharding)
        elif name == "generate":
            lowering = generate_program(exp, sh, mesh, sharding)
        else:
            lowering = init_program(sh, target.devices[0])
        if lowering is not None:
            target.say(f"compiling {name} for {target.topology} ...")
            out.append(compile_program(lowering, target.cache))
    return sh, mesh, sharding, out


def variants(exp: Experiment, chips: int) -> list[list[tuple[str, Experiment]]]:
    """Settings that need less memory per chip, by kind, each kind's least costly first:
    another sharding of the same mesh, the base over more chips, more micro-batches,
    rematerialisation, half the batch."""
    mesh = exp.mesh or Mesh()
    model = max(1, mesh.model)
    data = mesh.data if mesh.data > 0 else chips // model
    kinds = [[]]
    for sharding in ("fsdp", "megatron", "largest"):
        if sharding != mesh.sharding:
            new = dataclasses.replace(mesh, sharding=sharding)
            kinds[0].append((f"--set mesh.sharding={sharding}", dataclasses.replace(exp, mesh=new)))
    shapes_ = []
    for m in range(model + 1, chips + 1):
        d = chips // m
        if chips % m == 0 and exp.batch_size % (exp.micro_batches * d) == 0:
            change = f"--set mesh.data={d} --set mesh.model={m}"
            new = dataclasses.replace(mesh, data=d, model=m)
            shapes_.append((change, dataclasses.replace(exp, mesh=new)))
    kinds.append(shapes_)
    micro = []
    for k in (2, 4, 8):
        n = exp.micro_batches * k
        if exp.batch_size % (n * data) == 0:
            micro.append((f"--set micro_batches={n}", dataclasses.replace(exp, micro_batches=n)))
    kinds.append(micro)
    overrides = dict(exp.model.overrides or {})
    if overrides.get("remat", "none") == "none":
        remat = []
        for policy in ("dots", "full"):
            model_ = dataclasses.replace(exp.model, overrides={**overrides, "remat": policy})
            change = f"--set \"model.overrides['remat']='{policy}'\""
            remat.append((change, dataclasses.replace(exp, model=model_)))
        kinds.append(remat)
    half = exp.batch_size // 2
    if half and half % (exp.micro_batches * data) == 0:
        kinds.append([(f"--set batch_size={half}", dataclasses.replace(exp, batch_size=half))])
    return kinds


def search_fits(exp, target: Target, chip, hbm, steps_of_exp, limit) -> list[Candidate]:
    """Compile the train step of up to `limit` variants; within a kind, stop at the first
    that fits (the later ones only cost more)."""
    out = []
    for kind in variants(exp, len(target.devices)):
        for change, variant in kind:
            if len(out) >= limit:
                return out
            steps = steps_of_exp
            if variant.batch_size != exp.batch_size and not exp.steps:
                steps = math.ceil(steps_of_exp * exp.batch_size / variant.batch_size)
            target.say(f"trying {change} ...")
            sh, mesh, _, (train,) = compile_all(variant, target, steps, ("train",))
            fits = train.fits and train.peak_bytes <= hbm
            fast = speed(variant, sh, chip, train, len(mesh.devices.flat), steps) if fits else None
            out.append(
                Candidate(
                    change,
                    fits,
                    train.peak_bytes,
                    fast.step_s if fast else None,
                    fast.chip_hours if fast else None,
                )
            )
            if fits:
                break
    return out
