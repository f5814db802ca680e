"""TPU chips and slices as the plan knows them: each chip's published HBM, peak FLOP/s and
bandwidth, slice names to libtpu topologies, the topology's devices from libtpu on any machine,
and the HBM the TPU compiler lets a program use."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import os
import re
import sys
import tempfile

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

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
