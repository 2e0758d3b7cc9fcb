"""The library's layering: sub-packages import only from the layers below them, no import cycles,
and the public contract (``sae_ortho.ortho.nearest_neighbour_abs_cos``, ``sae_ortho.metrics.mmcs``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / "lib"
NAME = "sae_ortho"
# Lowest first; the order documented in lib/__init__.py.
LAYERS = ["core", "reporting", "models", "ortho", "metrics", "data", "analysis", "training", "experiments", "bench"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(LIB).with_suffix("").parts
    return ".".join((NAME, *(parts[:-1] if parts[-1] == "__init__" else parts)))


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported sae_ortho module, imported at module level?) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == NAME:
            if node.module == NAME:  # from sae_ortho import metrics, ortho
                out += [(f"{NAME}.{a.name}", id(node) in top) for a in node.names]
            else:
                # from sae_ortho.data import toy: the module toy if it is one, else the package
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    is_module = (LIB / Path(*sub.split(".")[1:])).with_suffix(".py").exists() or (
                        LIB / Path(*sub.split(".")[1:]) / "__init__.py").exists()
                    out.append((sub if is_module else node.module, id(node) in top))
        elif isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names if a.name.split(".")[0] == NAME]
    return out


MODULES = {_module_name(p): p for p in sorted(LIB.rglob("*.py"))}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_package_is_a_declared_layer():
    found = {_layer(m) for m in MODULES if _layer(m)}
    assert found == set(LAYERS), f"undeclared or missing layers: {found ^ set(LAYERS)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers_only(module):
    mine = LAYERS.index(_layer(module)) if _layer(module) else None
    for target, _ in _imports(MODULES[module]):
        theirs = _layer(target)
        if mine is None or theirs is None or theirs == _layer(module):
            continue
        assert LAYERS.index(theirs) < mine, f"{module} imports {target}: {theirs} is not below {_layer(module)}"


def test_no_import_cycles_between_modules():
    graph = {m: {t for t, top in _imports(p) if top and t in MODULES and t != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(t):], t]))
            if t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_public_contract_names():
    from sae_ortho.metrics import mmcs
    from sae_ortho.ortho import nearest_neighbour_abs_cos

    assert callable(mmcs) and callable(nearest_neighbour_abs_cos)


def test_toy_data_does_not_import_sae_lens():
    """sae_lens costs seconds to import; only the toy generators that use it load it."""
    code = "import sys, sae_ortho.data.toy; print('sae_lens' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
