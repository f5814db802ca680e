"""Disk faults in words: a checkpoint folder probed before a run, and the OS error behind a
failed write (orbax and tensorstore wrap it) named on one line."""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
from pathlib import Path


def one_line(e: BaseException) -> str:
    """An exception on one short line (tensorstore's can span pages)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def os_error(e: BaseException) -> OSError | None:
    """The OSError behind an orbax / tensorstore failure, if any (errno kept)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return e
        e = e.__cause__ or e.__context__
    return None


OS_MESSAGES = {
    "no space left": errno.ENOSPC,
    "disk quota exceeded": errno.EDQUOT,
    "read-only file system": errno.EROFS,
    "permission denied": errno.EACCES,
    "not a directory": errno.ENOTDIR,
}


def errno_of(e: BaseException) -> int | None:
    """From an OSError in the chain, tensorstore's `os_error_code='28'`, or the message."""
    found = os_error(e)
    if found is not None:
        return found.errno
    text = str(e)
    if code := re.search(r"os_error_code='?(\d+)", text):
        return int(code.group(1))
    return next((n for m, n in OS_MESSAGES.items() if m in text.lower()), None)


def probe_writable(directory: str | Path, need_bytes: int = 0) -> None:
    """Create `directory`, write and remove a small file there, and check the free space.

    Raises OSError naming the folder and the reason (read-only, full, no permission, a
    file in the way) at the start of a run instead of at its first checkpoint.
    """
    directory = Path(directory)
    fix = "fix the folder or use another --workdir"
    if directory.exists() and not directory.is_dir():
        raise OSError(errno.ENOTDIR, f"checkpoint folder {directory} is a file; {fix}")
    probe = directory / f".probe-{socket.gethostname()}-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
        free = shutil.disk_usage(directory).free
    except OSError as e:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
        raise OSError(
            e.errno, f"cannot write checkpoints to {directory}: {e.strerror or e}; {fix}"
        ) from e
    if need_bytes and free < need_bytes:
        raise OSError(
            errno.ENOSPC,
            f"cannot write checkpoints to {directory}: {free / 2**20:.1f} MiB free, a checkpoint "
            f"needs about {need_bytes / 2**20:.1f} MiB; free some space or use another --workdir",
        )
