"""The run's programs compiled for a TPU topology from shapes: training's own train, eval and
generate steps and the SVD initialisation, each with the compiler's memory per chip, XLA's
FLOPs and the bytes its collectives move. A `ProgramCache` keeps those by the lowered
program's text, so a program already compiled (PiSSA's and MiLoRA's train steps are one) is
not compiled again."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import math
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

import morejax
from morejax import paths, points
from morejax.train.config import Experiment
from morejax.train.inputs import BATCH_KEYS
from morejax.train.loop import initial_state, member_step_of, optimizer
from morejax.train.mesh import base_sharding, state_sharding
from morejax.train.plan_chips import out_of_memory
from morejax.train.setup import Shapes
from morejax.train.step import compile_eval_step, compile_train_step, make_forward


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
    fingerprint: str = ""  # of the lowered program and its target (see ProgramCache)
    cached: bool = False  # measured when this program was compiled before


@dataclasses.dataclass
class Lowering:
    """A program, ready to lower and compile."""

    name: str
    lower: Callable[[], jax.stages.Lowered]
    groups: dict  # argument group -> its shapes, in argument order
    note: str = ""


class ProgramCache:
    """Compiled programs' measurements in a folder, one JSON per program, keyed by the lowered
    program's text, the target, the argument groups and the jax/libtpu versions: a compile is
    deterministic in those, so a hit is the measurement a compile would give."""

    def __init__(self, folder, target: str):
        self.folder = Path(folder)
        self.target = target

    def fingerprint(self, lowered, groups: dict) -> str:
        h = hashlib.sha256()
        counts = {group: len(jax.tree.leaves(tree)) for group, tree in groups.items()}
        versions = [jax.__version__, _version("jaxlib"), _version("libtpu")]
        h.update(repr((self.target, counts, versions, FUSION_PASS)).encode())
        h.update(lowered.as_text().encode())
        return h.hexdigest()[:20]

    def get(self, fingerprint: str) -> Program | None:
        found = points.read_json(self.folder / f"{fingerprint}.json")
        try:
            return Program(**{**found, "cached": True})
        except TypeError:  # absent, or written by a version with other fields: compile
            return None

    def put(self, program: Program) -> None:
        points.write_json(self.folder / f"{program.fingerprint}.json", dataclasses.asdict(program))


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


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


def compile_program(lowering: Lowering, cache: ProgramCache | None = None) -> Program:
    """Lower and compile (or find in `cache`); an out-of-memory refusal is a result.
    `compile_s` counts the lowering too."""
    t0 = time.time()
    lowered = lowering.lower()
    if cache is None:
        return _compile(lowering, lowered, t0)
    fingerprint = cache.fingerprint(lowered, lowering.groups)
    found = cache.get(fingerprint)
    if found is None:
        found = _compile(lowering, lowered, t0)
        found.fingerprint = fingerprint
        cache.put(found)
    return found


def _compile(lowering: Lowering, lowered, t0: float) -> Program:
    name, groups = lowering.name, lowering.groups
    with tempfile.TemporaryDirectory() as dump:
        try:
            compiled = lowered.compile(compiler_options=dump_options(dump))
        except Exception as e:
            found = out_of_memory(e)
            if found is None:
                raise
            note = "; ".join(filter(None, [lowering.note, "the compiler refused it"]))
            return Program(name, time.time() - t0, False, found[0], note=note)
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
        lowering.note,
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


def train_program(exp: Experiment, sh: Shapes, mesh, sharding: str, steps: int) -> Lowering:
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
    return Lowering("train", lambda: step.lower(state, keys, sh.base, batch), groups)


def eval_program(exp: Experiment, sh: Shapes, mesh, sharding: str) -> Lowering:
    vec = sh.n_members is not None
    step = compile_eval_step(make_forward(sh.model, sh.family), sh.kind, vec)
    rows = math.ceil(exp.data.eval_batch_size / mesh.shape["data"]) * mesh.shape["data"]
    batch = batch_shapes(exp, sh.kind, (rows,))
    adapters = placed(sh.adapters, state_sharding(mesh, sh.adapters, sharding))
    base = placed(sh.base, base_sharding(mesh, sh.base, sharding))
    batch = placed(batch, jax.tree.map(lambda _: NamedSharding(mesh, P("data")), batch))
    groups = {"adapters": adapters, "base": base, "batch": batch}
    return Lowering("eval", lambda: step.lower(adapters, base, batch), groups)


def generate_program(exp: Experiment, sh: Shapes, mesh, sharding: str) -> Lowering:
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
    return Lowering("generate", lower, {**groups, "other": scalars})


SVD_METHODS = (morejax.PiSSA, morejax.MiLoRA, morejax.MoReMinor)


def init_program(sh: Shapes, device) -> Lowering | None:
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
    return Lowering(
        "svd init",
        lambda: jax.jit(method.init).lower(key, kernel),
        {"base": kernel, "other": key},
        f"largest adapted matrix {matrix[0]}x{matrix[1]}, on one chip",
    )
