"""Which JAX backends a process starts, decided before the first one starts."""

from __future__ import annotations

import importlib.util
import os

CUDA_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin")


def skip_absent_tpu() -> None:
    """libtpu (the `tpu` extra: `morejax plan` compiles for TPUs with it on any machine) makes
    every JAX process try to start a TPU runtime, which on a machine without TPU chips prints
    errors to stderr before JAX falls back to the CPU. There, the CPU is named outright. Left
    alone: a chosen JAX_PLATFORMS, a machine with TPU chips, one with a CUDA plugin (JAX picks
    among GPU and CPU), and a process whose backends already started."""
    if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
        return
    if any(importlib.util.find_spec(name) is not None for name in CUDA_PLUGINS):
        return
    try:
        from jax._src import hardware_utils, xla_bridge
    except ImportError:  # JAX moved them: keep its default
        return
    if xla_bridge.backends_are_initialized():
        return
    if hardware_utils.num_available_tpu_chips_and_device_id()[0] == 0:
        import jax

        jax.config.update("jax_platforms", "cpu")


skip_absent_tpu()
