"""Planning a run for a TPU slice without a TPU: the config's own steps compiled ahead of time
for a TPU topology (libtpu, from shapes alone), memory per chip against the chip's HBM, FLOPs,
a roofline step time and the run's chip-hours. Every figure except the compiler's memory
verdict is an estimate: nothing runs on a chip.

The programs are the ones training builds (`setup.shapes`, `loop.optimizer`,
`loop.initial_state`, `loop.member_step_of`, `step.compile_train_step`), lowered from
`jax.ShapeDtypeStruct`s instead of arrays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

import morejax
from morejax import paths
from morejax.train.config import Experiment, Mesh
from morejax.train.inputs import BATCH_KEYS
from morejax.train.loop import (
    check_batch_split,
    initial_state,
    member_step_of,
    optimizer,
    total_steps,
)
from morejax.train.mesh import base_sharding, make_mesh, resolve_sharding, state_sharding
from morejax.train.setup import Shapes, shapes, sharding_of
from morejax.train.step import compile_eval_step, compile_train_step, make_forward

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """Published per-chip figures (one JAX device per chip: v4 and v5p run as megacore)."""

    name: str
    hbm_bytes: float
    peak_bf16: float  # FLOP/s
    hbm_bandwidth: float  # bytes/s
    source: str


# Google Cloud's TPU pages, read 2026-12: "GB" there is taken as 1e9 bytes, "GiB" as 2**30.
CHIPS = {
    "v4": Chip(
        "v4", 32 * GiB, 275e12, 1200e9, "cloud.google.com/tpu/docs/v4: 32 GiB HBM2, 1200 GBps"
    ),
    "v5e": Chip("v5e", 16e9, 197e12, 819e9, "cloud.google.com/tpu/docs/v5e: 16 GB HBM2, 819 GBps"),
    "v5p": Chip(
        "v5p", 95e9, 459e12, 2765e9, "cloud.google.com/tpu/docs/v5p: 95 GB HBM2e, 2765 GBps"
    ),
    "v6e": Chip("v6e", 32e9, 918e12, 1638e9, "cloud.google.com/tpu/docs/v6e: 32 GB HBM, 1638 GBps"),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "trillium": "v6e"}
# Slice names (accelerator types): v5e / v6e count chips, v4 / v5p count TensorCores (2 a chip).
SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16"}
SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4"}

# Published training-set sizes of the paper recipes' data (records; the reasoning mixtures'
# sizes are the nominal ones of their names). `--examples` gives another.
GLUE_TRAIN = {  # tensorflow.org/datasets/community_catalog/huggingface/glue
    "cola": 8551,
    "sst2": 67349,
    "mrpc": 3668,
    "qqp": 363846,
    "stsb": 5749,
    "mnli": 392702,
    "qnli": 104743,
    "rte": 2490,
    "wnli": 635,
}
REASONING_TRAIN = {"commonsense_170k": 170_000, "math_10k": 10_000}


def parse_topology(text: str) -> tuple[str, str]:
    """(chip name, libtpu topology) of `v5e:2x4` or of a slice name such as `v5e-8`."""
    text = text.strip().lower()
    m = re.fullmatch(r"([a-z0-9]+)(?::(\d+(?:x\d+){1,2})|-(\d+))", text)
    chip = ALIASES.get(m.group(1), m.group(1)) if m else None
    if chip not in CHIPS:
        raise ValueError(
            f"unknown TPU topology {text!r}: give CHIP:SHAPE (v5e:2x4, v4:2x2x1) or a slice "
            f"name (v5e-8, v4-8); chips {', '.join(CHIPS)}"
        )
    if m.group(2):
        return chip, f"{chip}:{m.group(2)}"
    n = int(m.group(3))
    three_d = chip in ("v4", "v5p")
    shape = (SHAPES_3D if three_d else SHAPES_2D).get(n // 2 if three_d else n)
    if shape is None or (three_d and n % 2):
        raise ValueError(f"no known shape for {text!r}: give the topology, e.g. {chip}:2x2")
    return chip, f"{chip}:{shape}"


@contextlib.contextmanager
def quiet_stderr():
    """libtpu's start-up warnings on a machine without TPUs (TPU_ACCELERATOR_TYPE,
    TPU_WORKER_HOSTNAMES) are written to file descriptor 2: keep them out of the output."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@functools.cache
def topology_devices(topology: str) -> tuple:
    """The devices of a TPU topology, from libtpu on any machine."""
    if importlib.util.find_spec("libtpu") is None:
        raise ImportError("compiling for TPU needs libtpu: pip install -e '.[tpu]'")
    from jax.experimental import topologies

    # Another process holding libtpu's lock (any JAX program here) must not stop a compile.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    # v4 slices run one device per chip (megacore), as a v4 TPU VM does.
    extra = {"chip_config_name": "megacore"} if topology.startswith("v4:") else {}
    with quiet_stderr():
        try:
            topo = topologies.get_topology_desc(topology_name=topology, platform="tpu", **extra)
        except Exception as e:
            raise ValueError(f"libtpu does not know topology {topology!r}: {e}") from None
    return tuple(topo.devices)


OOM = re.compile(
    r"required for HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)"
)
UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def out_of_memory(error: Exception) -> tuple[float, float] | None:
    """(bytes required, bytes available) from the TPU compiler's out-of-memory error."""
    m = OOM.search(str(error))
    if m is None:
        return None
    return float(m.group(1)) * UNITS[m.group(2)], float(m.group(3)) * UNITS[m.group(4)]


@functools.cache
def usable_hbm(topology: str) -> float | None:
    """The HBM per chip that the compiler lets a program use (a 1 TiB program is refused
    with that figure); None when the refusal does not say."""
    device = topology_devices(topology)[0]
    huge = jax.ShapeDtypeStruct((2**38,), jnp.float32, sharding=SingleDeviceSharding(device))
    try:
        jax.jit(lambda x: x + 1).lower(huge).compile()
    except Exception as e:  # noqa: BLE001 - the refusal is the measurement
        found = out_of_memory(e)
        return found[1] if found else None
    return None


# ----------------------------------------------------------------------------- programs


@dataclasses.dataclass
class Program:
    """One compiled program: per-chip bytes (the compiler's), XLA's cost, collectives."""

    name: str
    compile_s: float
    fits: bool
    peak_bytes: float  # arguments + outputs - aliased + temporaries (or what OOM said)
    argument_bytes: float = 0.0
    temp_bytes: float = 0.0
    output_bytes: float = 0.0
    alias_bytes: float = 0.0
    arguments: dict = dataclasses.field(default_factory=dict)  # group -> bytes per chip
    flops: float = 0.0  # per chip, as XLA counts (a loop body once)
    bytes_accessed: float = 0.0
    collectives: dict = dataclasses.field(default_factory=dict)  # op -> bytes per chip
    note: str = ""


def placed(tree, shardings):
    """Shapes that carry their shardings, for lowering."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def per_chip_bytes(tree, shardings) -> float:
    """Bytes of one chip's shards of the leaves with a sharding (TPU tile padding not counted)."""
    total = 0
    for x, s in zip(jax.tree.leaves(tree), shardings):
        if s is not None:
            total += math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize  # keys have one too
    return float(total)


def compile_program(name: str, lowered_fn, groups: dict) -> Program:
    """Compile a lowered program; an out-of-memory refusal is a result, not an error."""
    t0 = time.time()
    lowered = lowered_fn()
    with tempfile.TemporaryDirectory() as dump:
        try:
            compiled = lowered.compile(compiler_options=dump_options(dump))
        except Exception as e:
            found = out_of_memory(e)
            if found is None:
                raise
            return Program(name, time.time() - t0, False, found[0], note="the compiler refused it")
        seconds = time.time() - t0
        collectives = collective_bytes(before_collective_fusion(dump) or compiled.as_text())
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    # An argument the program does not use (a key without dropout) has no sharding: None.
    flat_args = jax.tree.leaves(compiled.input_shardings[0], is_leaf=lambda x: x is None)
    if len(flat_args) != len(jax.tree.leaves(list(groups.values()))):
        raise AssertionError(f"{name}: the argument groups do not cover the arguments")
    arguments, i = {}, 0
    for group, tree in groups.items():  # in argument order
        n = len(jax.tree.leaves(tree))
        arguments[group] = per_chip_bytes(tree, flat_args[i : i + n])
        i += n
    # As the compiler counts against the HBM it allows (the program's code is not in it).
    peak = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
    )
    return Program(
        name,
        seconds,
        True,
        float(peak),
        float(mem.argument_size_in_bytes),
        float(mem.temp_size_in_bytes),
        float(mem.output_size_in_bytes),
        float(mem.alias_size_in_bytes),
        arguments,
        float(cost.get("flops", 0.0)),
        float(cost.get("bytes accessed", 0.0)),
        collectives,
    )


# The TPU compiler then splits each collective over the computations it overlaps with (every
# piece printed as the whole gather), so collectives are counted in the HLO just before.
FUSION_PASS = "async-collective-fusion"


def dump_options(folder: str) -> dict:
    return {"xla_dump_to": folder, "xla_dump_hlo_pass_re": FUSION_PASS}


def before_collective_fusion(folder: str) -> str | None:
    """The program's HLO as it was before the collective fusion pass (None: no such pass)."""
    found = sorted(Path(folder).glob(f"*before_{FUSION_PASS}.txt"))
    return found[0].read_text() if found else None


COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_OP = re.compile(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_ARRAY = re.compile(r"\b(pred|[subf]\d+|bf16|f8e\w+)\[([\d,]*)\]")


def collective_bytes(hlo: str) -> dict:
    """Bytes each kind of collective produces per chip in HLO text (a loop body counted
    once). An async `-start` returns (operands, results, ...): its results count."""
    out = dict.fromkeys(COLLECTIVES, 0.0)
    for line in hlo.splitlines():
        m = _OP.search(line)
        if m is None:
            continue
        arrays = [
            math.prod(int(d) for d in dims.split(",") if d) * _itemsize(dtype)
            for dtype, dims in _ARRAY.findall(m.group(1))
        ]
        if not arrays:
            continue
        if m.group(3) and m.group(1).startswith("(") and m.group(2) != "all-reduce":
            arrays = [max(arrays)]  # (operand, result, contexts...): the result is the largest
        out[m.group(2)] += float(sum(arrays))
    return out


def _itemsize(dtype: str) -> int:
    if dtype == "pred" or dtype.startswith("f8"):
        return 1
    return max(1, int(re.sub(r"\D", "", dtype)) // 8)


def train_batch(exp: Experiment, kind: str, n_members: int | None) -> dict:
    """A training batch's shapes: (members,) micro-batches x rows x max_len."""
    lead = (n_members,) if n_members else ()
    rows = (*lead, exp.micro_batches, exp.batch_size // exp.micro_batches)
    return batch_shapes(exp, kind, rows)


def batch_shapes(exp: Experiment, kind: str, rows: tuple) -> dict:
    """Padded batches at `data.max_len` (a packed run's rows are at most these)."""
    length = exp.data.max_len
    out = {}
    for key in BATCH_KEYS[kind]:
        per_row = () if key in ("labels", "valid") else (length,)
        dtype = jnp.float32 if key == "labels" and kind == "regression" else jnp.int32
        out[key] = jax.ShapeDtypeStruct((*rows, *per_row), dtype)
    return out


def train_program(exp: Experiment, sh: Shapes, mesh, sharding: str, steps: int) -> Program:
    vec = sh.n_members is not None
    tx, shape = optimizer(exp, steps, sh.member)
    state, keys = jax.eval_shape(
        lambda a: initial_state(exp, tx, a, sh.seeds, sh.lrs, vec), sh.adapters
    )
    _, member_step = member_step_of(exp, sh.kind, sh.model, sh.family, tx, shape)
    step = compile_train_step(member_step, mesh, state, sh.base, vec, sharding)
    batch = train_batch(exp, sh.kind, sh.n_members)
    groups = {
        "adapters": state["adapters"],
        "optimizer": (state["opt_state"], state["step"], keys),
        "base": sh.base,
        "batch": batch,
    }
    return compile_program("train", lambda: step.lower(state, keys, sh.base, batch), groups)


def eval_program(exp: Experiment, sh: Shapes, mesh, sharding: str) -> Program:
    vec = sh.n_members is not None
    step = compile_eval_step(make_forward(sh.model, sh.family), sh.kind, vec)
    rows = math.ceil(exp.data.eval_batch_size / mesh.shape["data"]) * mesh.shape["data"]
    batch = batch_shapes(exp, sh.kind, (rows,))
    adapters = placed(sh.adapters, state_sharding(mesh, sh.adapters, sharding))
    base = placed(sh.base, base_sharding(mesh, sh.base, sharding))
    batch = placed(batch, jax.tree.map(lambda _: NamedSharding(mesh, P("data")), batch))
    groups = {"adapters": adapters, "base": base, "batch": batch}
    return compile_program("eval", lambda: step.lower(adapters, base, batch), groups)


def generate_program(exp: Experiment, sh: Shapes, mesh, sharding: str) -> Program:
    """Greedy generation as evaluation runs it: one member, `eval_batch_size` prompts of
    `data.max_len` tokens, `data.generate_tokens` new ones."""
    from morejax.models import generate

    rep = NamedSharding(mesh, P())
    params = {
        "base": placed(sh.base, base_sharding(mesh, sh.base, sharding)),
        "adapters": placed(sh.member, state_sharding(mesh, sh.member, sharding)),
    }
    rows, length = exp.data.eval_batch_size, exp.data.max_len
    ids = jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=rep)
    key = jax.eval_shape(lambda: jax.random.key(0))
    scalars = [
        jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep),
        jax.ShapeDtypeStruct((4,), jnp.int32, sharding=rep),
        jax.ShapeDtypeStruct((), jnp.int32, sharding=rep),
        jax.ShapeDtypeStruct((), jnp.float32, sharding=rep),
        jax.ShapeDtypeStruct((), jnp.int32, sharding=rep),
        jax.ShapeDtypeStruct((), jnp.float32, sharding=rep),
    ]

    def lower():
        return generate._generate.lower(
            params,
            ids,
            ids,
            *scalars,
            apply_fn=generate.adapted_apply_fn(sh.model),
            init_cache=generate.llama_callables(sh.model)[1],
            max_new_tokens=int(exp.data.generate_tokens),
            greedy=True,
        )

    groups = {"adapters": params["adapters"], "base": params["base"], "batch": (ids, ids)}
    return compile_program("generate", lower, {**groups, "other": scalars})


SVD_METHODS = (morejax.PiSSA, morejax.MiLoRA, morejax.MoReMinor)


def init_program(sh: Shapes, device) -> Program | None:
    """The SVD initialisation of the largest adapted matrix on one chip, as setup runs it
    (kernel by kernel); None when no method needs one."""
    from morejax.transform import is_adapter

    base = {paths.path_str(k): x for k, x in jax.tree_util.tree_flatten_with_path(sh.base)[0]}
    found = []
    for kp, a in jax.tree_util.tree_flatten_with_path(sh.member, is_leaf=is_adapter)[0]:
        if is_adapter(a) and isinstance(a.method, SVD_METHODS):
            kernel = base[paths.path_str(kp)]
            cut = a.layout.stack + a.layout.n_in
            matrix = (math.prod(kernel.shape[a.layout.stack : cut]), math.prod(kernel.shape[cut:]))
            found.append((math.prod(matrix), matrix, kernel.dtype, a.method))
    if not found:
        return None
    _, matrix, dtype, method = max(found, key=lambda f: f[0])
    one = SingleDeviceSharding(device)
    key = jax.eval_shape(lambda: jax.random.key(0))
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=one)
    kernel = jax.ShapeDtypeStruct(matrix, dtype, sharding=one)
    program = compile_program(
        "svd init", lambda: jax.jit(method.init).lower(key, kernel), {"base": kernel, "other": key}
    )
    program.note = f"largest adapted matrix {matrix[0]}x{matrix[1]}, on one chip"
    return program


# ----------------------------------------------------------------------------- speed and cost


def model_flops(exp: Experiment, sh: Shapes) -> float:
    """FLOPs of one training step on the whole slice by formula: forward 2·T·(frozen matmul
    weights + adapter weights) + attention 4·T·L·width·layers; backward the same again through
    the activations, plus 2·T·trainable for the trainable weights' gradients (T tokens)."""
    tokens = exp.batch_size * exp.data.max_len * (sh.n_members or 1)
    flat = jax.tree_util.tree_flatten_with_path(sh.base)[0]
    frozen = sum(x.size for kp, x in flat if paths.path_str(kp).endswith("kernel"))
    cfg = sh.model.config
    if getattr(cfg, "tie_embeddings", False):  # the embedding is also the output layer
        frozen += cfg.vocab_size * cfg.hidden_size
    trainable = sum(x.size for x in jax.tree.leaves(sh.member))
    width = cfg.num_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_heads)
    attention = 4 * tokens * exp.data.max_len * width * cfg.num_layers
    forward = 2 * tokens * (frozen + trainable) + attention
    return float(2 * forward + 2 * tokens * trainable)


@dataclasses.dataclass
class Speed:
    """The training step's estimated time on the chip (a roofline: no communication)."""

    xla_flops: float  # per chip per step, XLA's count (loop bodies times their trips)
    model_flops: float  # per chip per step, by formula
    compute_s: float
    memory_s: float
    step_s: float
    tokens_per_step: int
    tokens_per_s: float
    steps: int
    chip_hours: float


def speed(exp: Experiment, sh: Shapes, chip: Chip, train: Program, chips: int, steps: int):
    # XLA counts a loop body once: the micro-batch loop runs it micro_batches times.
    trips = exp.micro_batches if exp.micro_batches > 1 else 1
    xla = train.flops * trips
    formula = model_flops(exp, sh) / chips
    compute_s = max(xla, formula) / chip.peak_bf16
    memory_s = train.bytes_accessed * trips / chip.hbm_bandwidth
    step_s = max(compute_s, memory_s)
    tokens = exp.batch_size * exp.data.max_len * (sh.n_members or 1)
    return Speed(
        xla,
        formula,
        compute_s,
        memory_s,
        step_s,
        tokens,
        tokens / step_s,
        steps,
        steps * step_s * chips / 3600,
    )


def run_steps(exp: Experiment, examples: int | None) -> tuple[int, str]:
    """(optimizer steps of the whole run, how they were counted)."""
    if exp.steps:
        return int(exp.steps), f"steps={exp.steps}"
    n = examples
    if n is None:
        table = GLUE_TRAIN if exp.data.kind == "glue" else REASONING_TRAIN
        n = table.get(exp.data.task)
    if n is None:
        raise ValueError(
            f"how many training examples has {exp.data.task!r}? pass --examples N "
            "(or set steps) to count the run's steps"
        )
    if exp.data.train_limit:
        n = min(n, exp.data.train_limit)
    return total_steps(exp, n), f"{exp.epochs:g} epochs x {n:,} examples / {exp.batch_size}"


# ----------------------------------------------------------------------------- the plan


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
) -> Plan:
    """Compile the config's programs for `topology` (`v5e:2x4`, `v5e-8`) and estimate.

    When a program does not fit, up to `search` other settings (mesh shape, micro-batches,
    remat, batch size) have their train step compiled, and the cheapest that fits (in
    estimated chip-hours) is the suggestion. `progress(text)` hears what compiles.
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
    sh, mesh, sharding, compiled = compile_all(exp, devices, steps, programs, say, topo)
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
        out.searched = search_fits(exp, devices, chip, hbm, steps, search, say, topo)
        fitting = [c for c in out.searched if c.fits]
        if fitting:
            out.suggestion = min(fitting, key=lambda c: c.chip_hours)
    return out


def model_bytes(params, base_dtype: str) -> float:
    """The model's bytes with its floating leaves in `base_dtype`."""
    itemsize = jnp.dtype(base_dtype).itemsize
    return float(
        sum(
            x.size * (itemsize if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype.itemsize)
            for x in jax.tree.leaves(params)
        )
    )


def compile_all(exp, devices, steps, programs, say, topo):
    mesh = make_mesh(exp.mesh, devices)
    check_batch_split(exp, mesh.shape["data"])
    sh = shapes(exp)
    base = float(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(sh.base)))
    sharding = resolve_sharding(sharding_of(exp), mesh, base, usable_hbm(topo))
    out = []
    for name in programs:
        if name == "generate" and not (
            sh.kind == "lm" and (exp.data.generate_sets or exp.data.exact_match)
        ):
            continue
        say(f"compiling {name} for {topo} ...")
        if name == "train":
            out.append(train_program(exp, sh, mesh, sharding, steps))
        elif name == "eval":
            out.append(eval_program(exp, sh, mesh, sharding))
        elif name == "generate":
            out.append(generate_program(exp, sh, mesh, sharding))
        else:
            program = init_program(sh, devices[0])
            if program is not None:
                out.append(program)
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


def search_fits(exp, devices, chip, hbm, steps_of_exp, limit, say, topo) -> list[Candidate]:
    """Compile the train step of up to `limit` variants; within a kind, stop at the first
    that fits (the later ones only cost more)."""
    out = []
    for kind in variants(exp, len(devices)):
        for change, variant in kind:
            if len(out) >= limit:
                return out
            steps = steps_of_exp
            if variant.batch_size != exp.batch_size and not exp.steps:
                steps = math.ceil(steps_of_exp * exp.batch_size / variant.batch_size)
            say(f"trying {change} ...")
            sh, mesh, _, (train,) = compile_all(variant, devices, steps, ("train",), say, topo)
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


# ----------------------------------------------------------------------------- the report


def size(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def flop(n: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} FLOP"


def hours(h: float) -> str:
    return f"{h:,.2f}" if h >= 1 else f"{h:.2g}"


def seconds(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def report(p: Plan) -> str:
    """The plan for a person: every figure that was not measured on a chip says so."""
    chip = p.chip_facts
    lines = [
        f"plan for {p.config} on {p.topology} ({p.chips} x {p.device_kind}), mesh data "
        f"{p.mesh['data']} x model {p.mesh['model']}, sharding {p.sharding}: compiled here for "
        "the chip, never run on it, so every time and cost below is estimated",
        f"HBM per chip: {size(p.hbm_bytes)} that the compiler allows ({chip['source']}; "
        f"peak bf16 {chip['peak_bf16'] / 1e12:g} TFLOP/s)",
        "",
        f"{'program':<9} {'compile':>8}  {'fits':<4} {'peak/chip':>10}   arguments per chip"
        f" {'':<46} {'temporaries':>11}",
    ]
    for prog in p.programs:
        args = ", ".join(f"{k} {size(v)}" for k, v in prog.arguments.items()) or prog.note
        lines.append(
            f"{prog.name:<9} {prog.compile_s:>6.1f} s  {'yes' if prog.fits else 'NO':<4} "
            f"{size(prog.peak_bytes):>10}   {args:<65} "
            f"{size(prog.temp_bytes) if prog.fits else '-':>11}"
        )
        if prog.note and prog.arguments:
            lines.append(f"{'':<9} {prog.note}")
    lines.append("")
    s = p.speed
    if s is not None:
        bound = "compute" if s.compute_s >= s.memory_s else "HBM"
        lines += [
            f"train step, per chip: {flop(s.xla_flops)} (XLA's count), {flop(s.model_flops)} "
            f"(model-FLOPs formula)",
            f"estimated step time (roofline, {bound}-bound): {seconds(s.step_s)} (compute "
            f"{seconds(s.compute_s)}, HBM {seconds(s.memory_s)}); estimated "
            f"{s.tokens_per_s:,.0f} tokens/s ({s.tokens_per_step:,} tokens a step)",
            f"estimated run: {s.steps:,} steps ({p.steps_from}) x {seconds(s.step_s)} = "
            f"{hours(s.chip_hours)} chip-hours on {p.chips} chips",
        ]
    train = next((x for x in p.programs if x.name == "train" and x.fits), None)
    if train is not None:
        moved = ", ".join(f"{k} {size(v)}" for k, v in train.collectives.items() if v)
        lines.append(f"collectives per chip per train step (compiled HLO): {moved or 'none'}")
    if p.load_bytes > p.hbm_bytes:
        lines.append(
            f"warning: setup holds the whole model on one chip before sharding it (at least "
            f"{size(p.load_bytes)} in base_dtype > {size(p.hbm_bytes)}): `morejax train` runs out "
            "of memory there before its first step"
        )
    if p.fits:
        lines.append("fits: yes")
        return "\n".join(lines)
    worst = max(p.programs, key=lambda x: x.peak_bytes)
    lines.append(
        f"fits: NO ({worst.name} needs {size(worst.peak_bytes)} per chip, "
        f"{size(p.hbm_bytes)} allowed)"
    )
    for c in p.searched:
        verdict = f"fits, estimated {hours(c.chip_hours)} chip-hours" if c.fits else "does not fit"
        lines.append(f"  tried {c.change}: train {size(c.peak_bytes)} per chip, {verdict}")
    if p.suggestion is not None:
        lines.append(f"cheapest setting that fits (estimated): {p.suggestion.change}")
    elif p.searched:
        lines.append("none of the settings tried fits: plan a larger slice")
    return "\n".join(lines)
