"""JAX's persistent compilation cache, on by default for training runs.

Packed and bucketed batches compile one step per shape (~3 s each for MiniLM on 2 CPU
cores, a dozen shapes per SST-2 run); sweeps, seeds and reruns of the same config compile
the same programs again. With the cache, a second run loads them from disk instead.

`MOREJAX_COMPILE_CACHE` chooses the directory; `off` (or `0`, empty) disables it. The
default is `$XDG_CACHE_HOME/morejax/xla` (`~/.cache/morejax/xla`). JAX keys entries by
the program, the JAX/XLA version and the flags, so a stale entry is never used.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV = "MOREJAX_COMPILE_CACHE"
OFF = ("", "0", "off", "false", "no", "none")


def cache_dir() -> Path | None:
    """The directory the environment asks for; None when disabled."""
    value = os.environ.get(ENV)
    if value is None:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "morejax" / "xla"
    if value.strip().lower() in OFF:
        return None
    return Path(value).expanduser()


def enable() -> Path | None:
    """Point JAX at the cache directory (call before the first compile: JAX reads the
    setting once). Returns the directory, or None when disabled or not writable."""
    where = cache_dir()
    if where is None:
        return None
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: train without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", str(where))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        # Small programs (initialisers, casts) recompile faster than they load.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return where
