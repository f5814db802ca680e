"""Every notebook under notebooks/ (jupytext percent `.py`) runs in CI on its reduced setting.

The first code cell is tagged `parameters` and sets `REDUCED` and `FIGURES_DIR`;
`experiments/make_figures.py` puts a cell after it (REDUCED = True, figures into a temporary
folder) and executes the notebook with nbclient on a kernel of this interpreter. Each notebook
must have saved at least one PNG.
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))

pytest.importorskip("jupytext", reason="pip install -e '.[notebooks]'")
pytest.importorskip("nbclient")


def test_there_are_notebooks():
    names = {p.stem for p in NOTEBOOKS}
    assert {"more_anatomy", "more_ablation", "glue_table"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_reduced(path, tmp_path, shared_data):
    from experiments.make_figures import execute

    figures = tmp_path / "figures"
    execute(path, reduced=True, figures=str(figures), timeout=300)
    assert sorted(figures.glob("*.png")), f"{path.name} saved no figure into FIGURES_DIR"
