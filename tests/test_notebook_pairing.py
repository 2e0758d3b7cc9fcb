"""Every notebooks/NN_*.py (jupytext percent source) has a committed .ipynb with the same cells."""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SOURCES = sorted(p for p in NOTEBOOKS.glob("*.py") if re.fullmatch(r"\d\d_.*\.py", p.name))


def cells(path: Path) -> list[tuple[str, str]]:
    """(cell_type, stripped source) of each cell; metadata (jupytext's included) is ignored."""
    nb = jupytext.read(path)
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_jupytext_config_exists():
    toml = NOTEBOOKS / "jupytext.toml"
    assert toml.is_file()
    text = toml.read_text()
    assert "ipynb" in text and "py:percent" in text


@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_notebook_paired(source):
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.is_file(), f"{ipynb.name} is missing: run `jupytext --to ipynb --update {source.name}`"
    assert cells(ipynb) == cells(source), f"{ipynb.name} is out of sync with {source.name}"


def test_pairing_check_detects_drift(tmp_path):
    # The comparison itself: equal for a fresh pair, unequal after the .py changes.
    py = tmp_path / "01_demo.py"
    py.write_text("# %% [markdown]\n# # Title\n\n# %%\nx = 1\nprint(x)\n\n# %%\ny = 2\n")
    jupytext.write(jupytext.read(py), tmp_path / "01_demo.ipynb")
    assert cells(py) == cells(tmp_path / "01_demo.ipynb")
    assert [t for t, _ in cells(py)] == ["markdown", "code", "code"]
    py.write_text(py.read_text().replace("y = 2", "y = 3"))
    assert cells(py) != cells(tmp_path / "01_demo.ipynb")
