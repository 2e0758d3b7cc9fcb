"""Notebooks 03 and 04 reuse notebook 02's activation cache and SAEs: their shared language-model
parameters must have notebook 02's defaults, or the reuse silently stops (and the numbers change)."""

from __future__ import annotations

import ast
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# parameters that identify the activation cache and the shared SAE runs
SHARED = ("model", "layer", "other_layer", "context", "corpus", "train_tokens", "sae_tokens", "eval_tokens", "n_latents",
          "batch_size", "lr", "l1_coeff")


def parameters(name: str) -> dict[str, object]:
    nb = jupytext.read(NOTEBOOKS / name)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    out = {}
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = ast.literal_eval(node.value)
    return out


@pytest.mark.parametrize("name", ["03_negative_orthogonality_combinatorics.py", "04_ablations.py"])
def test_shared_lm_parameters_match_notebook_02(name):
    ref, other = parameters("02_pythia70m_training.py"), parameters(name)
    shared = [p for p in SHARED if p in other]
    assert {"model", "layer", "train_tokens", "eval_tokens"} <= set(shared)
    diff = {p: (other[p], ref[p]) for p in shared if other[p] != ref[p]}
    assert not diff, f"{name} differs from notebook 02 in {diff} (value here, value in 02)"
