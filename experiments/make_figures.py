"""Execute the notebooks (jupytext `.py` files) and so regenerate their figures.

    python experiments/make_figures.py                                  # all, full setting
    python experiments/make_figures.py notebooks/more_anatomy.py        # one
    python experiments/make_figures.py --reduced --figures /tmp/figs    # the CI setting

A cell overriding `REDUCED` / `FIGURES_DIR` goes right after each notebook's `parameters`
cell; the kernel is this interpreter (a kernelspec in a temporary folder), so the venv that
runs the command is the one the notebook sees. Executed copies go to `--executed` if given
(never committed: `notebooks/*.ipynb` is ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "morejax-this-python"


def kernelspec_dir() -> Path:
    """A JUPYTER_PATH folder whose kernelspec starts `sys.executable`."""
    root = Path(tempfile.mkdtemp(prefix="morejax-kernel-"))
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "morejax", "language": "python"})
    )
    return root


def with_parameters(nb, reduced: bool | None, figures: str | None):
    """The notebook with an override cell after its `parameters`-tagged cell."""
    import nbformat

    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    if not tagged:
        raise ValueError('the first code cell must be tagged parameters (# %% tags=["parameters"])')
    lines = []
    if reduced is not None:
        lines.append(f"REDUCED = {reduced!r}")
    if figures is not None:
        lines.append(f"FIGURES_DIR = {figures!r}")
    if lines:
        nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell("\n".join(lines) + "\n"))
    return nb


def execute(path: Path, *, reduced=None, figures=None, executed: Path | None = None, timeout=3600):
    """Run one notebook from the repository root; returns the executed notebook."""
    import jupytext
    import nbclient
    import nbformat

    nb = with_parameters(jupytext.read(path), reduced, figures)
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(kernelspec_dir())
    try:
        client = nbclient.NotebookClient(
            nb, kernel_name=KERNEL, timeout=timeout, resources={"metadata": {"path": str(ROOT)}}
        )
        client.execute()
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old
    if executed is not None:
        executed.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, executed / (path.stem + ".ipynb"))
    return nb


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebooks", nargs="*", help="default: notebooks/*.py")
    p.add_argument("--reduced", action="store_true", help="the CI setting (REDUCED = True)")
    p.add_argument("--figures", help="FIGURES_DIR (default: the notebook's, results/figures)")
    p.add_argument("--executed", type=Path, help="also write the executed .ipynb here")
    args = p.parse_args(argv)
    paths = [Path(x).resolve() for x in args.notebooks] or sorted((ROOT / "notebooks").glob("*.py"))
    for path in paths:
        t0 = time.time()
        execute(path, reduced=True if args.reduced else None, figures=args.figures,
                executed=args.executed)  # fmt: skip
        print(f"{path.relative_to(ROOT)}: executed in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
