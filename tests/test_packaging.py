"""The repository installs as a package: a wheel built from pyproject.toml (non-editable) holds every
sub-package and data file, imports as ``sae_ortho`` from outside the repository and runs the
README's quick start; its declared dependencies cover every third-party import of lib/ and are
satisfied by the pinned environment (requirements.txt).

Offline: the wheel is installed without its dependencies into a fresh folder, and the pinned
environment provides them.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# import name -> distribution name, where they differ
DISTRIBUTION = {"sae_lens": "sae-lens", "sklearn": "scikit-learn"}



def readme_quick_start() -> str:
    """The first Python block of the README's quick start (the one a new user copies)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick start"):]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


# After the README's block: the installed copy is the one imported, with its data file, and the
# SAE it saved loads back.
CHECKS = """
import importlib.resources, sys
import sae_ortho
from sae_ortho.models.saelens_io import load_sae_lens
assert importlib.resources.files("sae_ortho.core").joinpath("numerics.env").is_file()
back, _ = load_sae_lens("runs/quickstart/sae")
assert back.cfg.n_latents == sae.cfg.n_latents
print(sae_ortho.__file__)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the package's sources (the build leaves nothing in the repository)."""
    src = tmp_path_factory.mktemp("src")
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copytree(ROOT / "lib", src / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
                   check=True, capture_output=True, text=True, timeout=300)
    (found,) = out.glob("*.whl")
    return found


def _lib_modules() -> set[str]:
    return {".".join(("sae_ortho", *p.relative_to(ROOT / "lib").with_suffix("").parts)).removesuffix(".__init__")
            for p in (ROOT / "lib").rglob("*.py")}


def test_wheel_holds_every_module_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {n.removesuffix(".py").replace("/", ".").removesuffix(".__init__") for n in names if n.endswith(".py")}
    assert _lib_modules() <= modules, sorted(_lib_modules() - modules)
    assert "sae_ortho/core/numerics.env" in names


def test_installed_wheel_runs_the_readme_quick_start_from_outside_the_repository(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", readme_quick_start() + CHECKS], check=False, cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert Path(out.stdout.strip().splitlines()[-1]).is_relative_to(site)  # the installed copy, not lib/


def _third_party_imports() -> set[str]:
    stdlib = set(sys.stdlib_module_names)
    found = set()
    for path in (ROOT / "lib").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            found |= {t for t in tops if t not in stdlib and t not in ("sae_ortho", "__future__")}
    return found


def test_every_third_party_import_is_a_declared_dependency():
    extras = [r for group in PYPROJECT["project"].get("optional-dependencies", {}).values() for r in group]
    declared = {Requirement(r).name.lower() for r in PYPROJECT["project"]["dependencies"] + extras}
    missing = {m for m in _third_party_imports() if DISTRIBUTION.get(m, m).lower().replace("_", "-") not in declared}
    assert not missing, f"imported in lib/ but not declared in pyproject.toml's dependencies: {sorted(missing)}"
    assert "tabulate" in declared  # pandas' to_markdown needs it (an optional pandas dependency)


def test_pinned_environment_satisfies_the_declared_ranges():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[req.name.lower()] = next(iter(req.specifier)).version
    for text in PYPROJECT["project"]["dependencies"]:
        req = Requirement(text)
        assert req.name.lower() in pins, f"{req.name} is declared but not pinned in requirements.txt"
        pinned = pins[req.name.lower()]
        assert req.specifier.contains(pinned, prereleases=True), f"{req.name}=={pinned} is outside {req.specifier}"
        installed = importlib.metadata.version(req.name).split("+")[0]
        assert req.specifier.contains(installed, prereleases=True), f"installed {req.name} {installed} outside {req.specifier}"
