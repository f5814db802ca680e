"""Where offline data lives: `../shared/data` beside the project the user runs in.

The project root is found from the current folder (it, or its nearest parent holding
`pyproject.toml` or `configs/`), never from where morejax is installed: an installed
package sits in a virtual environment, far from the user's data.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# A shared data subfolder a variable points elsewhere (the user's own copy).
OVERRIDES = {"glue": "MOREJAX_GLUE_DIR", "llm-adapters": "MOREJAX_LLM_ADAPTERS_DIR"}


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The current folder (or `start`), or its nearest parent that holds `pyproject.toml` or
    `configs/`; the folder itself when none does."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() or (folder / "configs").is_dir():
            return folder
    return here


def shared_data(*parts: str) -> Path:
    """A path under the shared data folder: $MOREJAX_SHARED_DATA, else `../shared/data`
    beside the project root; `glue` and `llm-adapters` follow their own variables first."""
    if parts and os.environ.get(OVERRIDES.get(parts[0], "")):
        return Path(os.environ[OVERRIDES[parts[0]]]).joinpath(*parts[1:])
    base = os.environ.get("MOREJAX_SHARED_DATA")
    base = Path(base) if base else project_root().parent / "shared" / "data"
    return base.joinpath(*parts)


_HASHES: dict[tuple[str, int, int, int], str] = {}  # (path, inode, size, mtime_ns) -> sha256


def sha256(path: Path) -> str:
    """A data file's content hash, once per file version in this process (MNLI, QQP and
    users' files: hundreds of MB), for the fingerprints that say when to prepare again."""
    st = path.stat()
    key = (os.fspath(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]
