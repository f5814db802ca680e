"""Benchmarks: each prints ratios measured side by side in one run and records its table in
results/benchmarks.md (one section per benchmark, replaced on each run)."""

from __future__ import annotations

import datetime
import os
import platform
import re
import sys
from pathlib import Path

from morejax import points

RESULTS = Path(__file__).resolve().parents[1] / "results" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is rewritten by the command it names.\n"


def machine() -> str:
    return f"{points.cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(name: str, body: str, path: Path = RESULTS) -> Path:
    """Replaces section `name` of the report (or appends it), atomically."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    block = (
        f"<!-- {name} -->\n## {name}\n\n`{command}` on {stamp}; {machine()}.\n\n"
        f"{body.strip()}\n<!-- /{name} -->\n"
    )
    text = path.read_text() if path.is_file() else HEADER
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->\n", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text + "\n" + block
    points.write_text(path, text)
    return path
