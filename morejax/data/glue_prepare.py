"""Preparing GLUE for TensorFlow Datasets, offline first.

Preparing has two routes:

* offline: the stock TFDS GLUE builder is run on a local folder in the official
  GLUE zip layout (``SST-2/train.tsv`` ...; ``glue_local`` checks it first). Only the
  download step differs: a subclass hands ``Glue._split_generators`` a stand-in download
  manager that returns the local folder. That is the whole patch; parsing, features, split
  names and file layout are TFDS's own, so ``tfds.data_source`` reads the
  result as if TFDS had downloaded it.
* online: TFDS downloads and prepares as usual. Tried only when asked
  (``download=True``) or when a quick connect to the download host succeeds
  and ``MOREJAX_OFFLINE`` is unset, so nothing sits in TFDS's retry loop.

Prepared data lives in ``data_dir`` (``$TFDS_DATA_DIR`` or
``~/tensorflow_datasets``) and is reused: SST-2 takes ~10 s to prepare once.
Data prepared from a local folder carries a fingerprint of its source files
(``morejax_source.json``: name, size, SHA-256 per file), so a later call with a
``local_dir`` holding other files prepares again instead of silently reusing a
different data set (a 20-row slice standing in for the real one).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from morejax.data.glue_local import (
    SOURCE_RECORD,
    check_folder,
    find_task_dir,
    layout,
    recorded_fingerprint,
    source_fingerprint,
    stale_reason,
)
from morejax.data.glue_tasks import TaskSpec, spec, tfds_config, tfds_modules

__all__ = ["default_data_dir", "is_prepared", "prepare", "quiet_tfds"]


def default_data_dir() -> Path:
    return Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def _say(msg: str) -> None:
    print(f"morejax.data.glue: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
    """TFDS's own preparation chatter (stdout banners, absl warnings about folders it is about
    to create, progress bars) hidden, unless MOREJAX_DEBUG (`--debug`) asks for it: our
    `_say` lines say what is prepared, from where, and how long it took."""
    if os.environ.get("MOREJAX_DEBUG", "").strip() not in ("", "0"):
        yield
        return
    from absl import logging as absl_logging

    tfds, _ = tfds_modules()
    tfds.display_progress_bar(False)
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        absl_logging.set_verbosity(verbosity)


@functools.cache
def _local_builder_cls():
    tfds, tfds_glue = tfds_modules()

    class LocalGlue(tfds_glue.Glue, skip_registration=True):
        """TFDS's GLUE builder with its download step served from a local folder."""

        name = "glue"  # same dataset name, folders and file names as the stock builder

        def __init__(self, *, local_downloads, **kwargs):
            self._local_downloads = local_downloads
            super().__init__(**kwargs)

        def _split_generators(self, dl_manager):
            return super()._split_generators(self._local_downloads)

    return LocalGlue


class _LocalDownloads:
    """Stands in for the DownloadManager inside ``Glue._split_generators`` only.

    The GLUE builder calls ``download_and_extract(zip_url)`` and joins the
    config's folder name ('SST-2') to the result; MRPC calls ``download`` with
    a dict of three files. Anything else is a TFDS change this must learn about.
    """

    def __init__(self, extracted_root: str, mrpc_files: dict[str, str] | None = None):
        self._root = extracted_root
        self._mrpc_files = mrpc_files

    def download_and_extract(self, url):
        return self._root

    def download(self, urls):
        if self._mrpc_files is None or not isinstance(urls, Mapping):
            raise NotImplementedError(f"local GLUE preparation cannot download {urls!r}")
        return {k: self._mrpc_files[k] for k in urls}

    def __getattr__(self, name):  # only reached for attributes not defined above
        raise AttributeError(f"local GLUE preparation does not provide dl_manager.{name}")


def _builder(s: TaskSpec, data_dir: Path, **kwargs):
    tfds, _ = tfds_modules()
    return tfds.builder(s.tfds_name, data_dir=os.fspath(data_dir), **kwargs)


def is_prepared(task: str, *, data_dir=None) -> bool:
    s = spec(task)
    data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
    return _builder(s, data_dir).is_prepared()


@contextlib.contextmanager
def _extracted_root(s: TaskSpec, task_dir: Path) -> Iterator[str]:
    """A folder F with F/<official folder name> == task_dir, as the builder expects."""
    if task_dir.name == s.folder:
        yield os.fspath(task_dir.parent)
        return
    with tempfile.TemporaryDirectory(prefix="morejax-glue-") as tmp:
        os.symlink(task_dir.resolve(), Path(tmp) / s.folder, target_is_directory=True)
        yield tmp


def _prepare_local(s: TaskSpec, data_dir: Path, task_dir: Path, final: Path) -> Path:
    """Validate, prepare into a temporary sibling of ``final``, record the source
    fingerprint there and only then swap it in, so a failure keeps the old data."""
    counts, mrpc = check_folder(s, task_dir)
    fingerprint = source_fingerprint(s, task_dir)
    sizes = " / ".join(f"{k} {v:,}" for k, v in counts.items())
    _say(f"preparing {s.tfds_name} from {task_dir} into {data_dir} (ArrayRecord): {sizes}")
    t0 = time.perf_counter()
    tfds, _ = tfds_modules()
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".morejax-preparing-", dir=final.parent) as tmp:
        with _extracted_root(s, task_dir) as root:
            local = _local_builder_cls()(
                local_downloads=_LocalDownloads(root, mrpc),
                config=s.name,
                data_dir=tmp,
                file_format="array_record",
            )
            local.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False)
            )
        got = {k: v.num_examples for k, v in local.info.splits.items()}
        if got != counts:
            _say(f"warning: expected split sizes {counts}, TFDS wrote {got}")
        built = Path(os.fspath(local.data_path))
        record = {"task": s.name, "source": os.fspath(task_dir.resolve()), "files": fingerprint}
        (built / SOURCE_RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
        if final.exists():
            trash = Path(tmp) / "replaced"  # removed with tmp once the new data is in place
            os.replace(final, trash)
            try:
                os.replace(built, final)
            except BaseException:
                os.replace(trash, final)
                raise
        else:
            try:
                os.replace(built, final)
            except OSError:
                if recorded_fingerprint(final) != fingerprint:
                    raise
                # Another process prepared the same files meanwhile: theirs stays.
    _say(f"prepared {s.tfds_name} in {time.perf_counter() - t0:.1f} s")
    return final


# --------------------------------------------------------------------------- network


def _offline_reason(s: TaskSpec, timeout: float = 1.5) -> str | None:
    """Why downloading cannot work now, or None; bounded so it never hangs."""
    if os.environ.get("MOREJAX_OFFLINE", "").strip() not in ("", "0"):
        return "MOREJAX_OFFLINE is set"
    url = tfds_config(s).data_url or "https://dl.fbaipublicfiles.com/"
    host = url.split("://", 1)[-1].split("/", 1)[0]
    result: list[str | None] = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(f"cannot reach {host}: {e}")

    t = threading.Thread(target=probe, daemon=True)  # DNS lookups ignore socket timeouts
    t.start()
    t.join(timeout + 0.5)
    return result[0] if result else f"no answer from {host} within {timeout + 0.5:.1f} s"


# --------------------------------------------------------------------------- public API


def prepare(task: str, *, data_dir=None, local_dir=None, download: bool | None = None) -> Path:
    """Make ``tfds.data_source('glue/<task>')`` readable from ``data_dir``.

    Prepares from ``local_dir`` (the task's folder in the official GLUE layout,
    or a GLUE root holding it; default ``$MOREJAX_GLUE_DIR``), else downloads
    through TFDS if ``download`` is True, or None and the network answers.
    Fails fast with the expected layout when neither is possible. Prepared data
    is reused, unless a ``local_dir`` is given whose files differ from those it
    was prepared from (or it records none): then it is prepared again and
    replaced. Returns the prepared dataset's folder.
    """
    with quiet_tfds():
        return _prepare(task, data_dir=data_dir, local_dir=local_dir, download=download)


def _prepare(task: str, *, data_dir, local_dir, download: bool | None) -> Path:
    s = spec(task)
    data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
    tfds, _ = tfds_modules()
    builder = _builder(s, data_dir)
    data_path = Path(os.fspath(builder.data_path))
    local_dir = local_dir or os.environ.get("MOREJAX_GLUE_DIR") or None
    if builder.is_prepared():
        fmt = builder.info.file_format
        if fmt is not None and getattr(fmt, "value", fmt) != "array_record":
            raise ValueError(
                f"{s.tfds_name} in {data_dir} was prepared as {fmt}, but random access needs "
                "ArrayRecord; prepare it into another data_dir or delete "
                f"{builder.data_path}"
            )
        if local_dir is None:
            return data_path
        if not Path(local_dir).expanduser().is_dir():
            raise FileNotFoundError(f"{s.tfds_name}: local folder {local_dir} does not exist")
        try:
            task_dir = find_task_dir(s, local_dir)
            why = stale_reason(s, data_path, task_dir)
        except FileNotFoundError:  # e.g. a GLUE root without this task: keep what is there
            _say(f"using {s.tfds_name} prepared in {data_dir}: {local_dir} does not hold its files")
            return data_path
        if why is None:
            return data_path
        _say(f"{s.tfds_name} in {data_dir} is prepared again: {why}")
        return _prepare_local(s, data_dir, task_dir, data_path)

    if local_dir is not None:
        return _prepare_local(s, data_dir, find_task_dir(s, local_dir), data_path)
    dl_config = tfds.download.DownloadConfig(try_download_gcs=False)

    reason = None if download else _offline_reason(s)
    if download is False or reason is not None:
        why = "download=False" if download is False else reason
        url = tfds_config(s).data_url
        source = (
            f"The GLUE zip {url} unpacks to that layout."
            if url
            else "These are the Microsoft Research Paraphrase Corpus files plus GLUE's dev ids."
        )
        raise FileNotFoundError(
            f"{s.tfds_name} is not prepared in {data_dir} and will not be downloaded ({why}).\n"
            f"Pass local_dir= (or set MOREJAX_GLUE_DIR) to a folder in the official GLUE layout:\n"
            f"  {layout(s.name)}\n{source} Or, with network access, pass download=True."
        )
    _say(f"downloading and preparing {s.tfds_name} into {data_dir} with TFDS")
    builder = _builder(s, data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=dl_config)
    return Path(os.fspath(builder.data_path))
