"""Shared test fixtures: the offline data copy and small helpers.

Under CI (`CI=true`) a missing input is a failure, not a skip: every test must run there.
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MOREJAX_SHARED_DATA", ROOT.parent / "shared" / "data"))
# Tests compile afresh (hermetic, and no shared cache between xdist workers); the cache
# has its own test, tests/test_train.py::test_a_rerun_loads_its_programs_from_the_cache.
os.environ.setdefault("MOREJAX_COMPILE_CACHE", "off")
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip locally; fail under CI, where every input must be present."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing input is a failure)")
    pytest.skip(reason)


@pytest.fixture
def shared_data() -> Path:
    """The real-data copy beside the checkout; tests needing it skip locally when absent."""
    if not SHARED_DATA.is_dir():
        missing(f"real data not found at {SHARED_DATA} (set MOREJAX_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def hf():
    """transformers (the `interop` extra), quiet, with torch's generator seeded."""
    try:
        import torch
        import transformers
    except ImportError as e:
        missing(f"this test needs the `interop` extra (torch, transformers): {e}")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    return transformers


def pytest_terminal_summary(terminalreporter):
    """The skip count on its own line, so CI logs show at a glance that it is zero."""
    skipped = len(terminalreporter.stats.get("skipped", []))
    terminalreporter.write_line(f"skipped tests: {skipped}")
