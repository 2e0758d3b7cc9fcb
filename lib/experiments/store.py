"""The study's store of trained SAEs: trained once, committed, loaded by every notebook and by CI.

Every SAE a notebook reports on lives in a folder of the repository (``results/saes/``), one folder
per run::

    results/saes/<name>-<key>/
        manifest.json        the spec, a sha256 of every file, what the training took
        history.jsonl        the training history, one JSON record per logged step
        ...                  the weights: ``sae/`` in the SAELens format (single SAEs) or
                             ``stack.safetensors`` (a stack of small SAEs)

``key`` is a hash of the run's spec (everything that determines the run: configuration, data
identity, seeds, the notebook's parameters), so a changed parameter names another folder and a
stale run is never read. What a run *is* stays with the caller (:func:`sae_ortho.experiments.sweep.fit_stack`,
:func:`sae_ortho.experiments.runs.train_or_load`, :mod:`sae_ortho.experiments.synthbench_runs`); the store only decides whether to
train, writes the folder atomically (temporary name, then rename) and checks it before use.

What happens when a run is asked for is set by ``SAE_STUDY_STORE``:

- ``train`` (default; ``make study``): load a stored run, train and store a missing one;
- ``retrain`` (``make study RETRAIN=1``): train every run again, replace the stored folder through
  a temporary name and a rename, and record whether its weights changed (:data:`REPORT`);
- ``require`` (``make test``): never train; a missing run is a :class:`StoreError` naming the run
  and the command that makes it.

``SAE_STUDY_PERTURB`` (a relative size such as ``1e-6``) multiplies every tensor loaded from the
store by ``1 + eps * N(0, 1)`` (:func:`perturb`): what another CPU's arithmetic does to the
inputs of the analysis; the perturbation test re-runs the notebooks so and checks that no checked
output moves.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_ortho.core.numerics import cpu_info, same_cpu_family  # noqa: F401  (store.cpu_info: the manifests' CPU)
from sae_ortho.core.paths import CACHE, ROOT
from sae_ortho.core.perturb import PERTURB_VAR, perturb  # noqa: F401  (store.perturb: the readers' hook)
from sae_ortho.core.validation import canonical, canonical_json

STORE = ROOT / "results" / "saes"
WORK = CACHE / "store-work"  # unfinished runs (checkpoints), outside the repository
MODE_VAR = "SAE_STUDY_STORE"
MODES = ("train", "retrain", "require")
MANIFEST = "manifest.json"
HISTORY = "history.jsonl"
FORMAT = 1
REPORT = CACHE / "store-retrain-report.jsonl"  # one line per retrained run: changed or identical
MAKE_HINT = (
    "run 'make study' (trains what is missing from the store, then renders), or for one notebook "
    "'make notebooks/<NN_name>.render'"
)


class StoreError(ValueError):
    """A stored run is missing (in ``require`` mode), damaged, or its folder holds unknown files."""


def mode() -> str:
    """The store mode from ``SAE_STUDY_STORE`` (default ``train``)."""
    value = os.environ.get(MODE_VAR, "train") or "train"
    if value not in MODES:
        raise ValueError(f"{MODE_VAR} must be one of {MODES}, got {value!r}")
    return value


def key_of(name: str, spec: Any) -> str:
    """16 hex digits of the sha256 of the canonical spec (and the run's name)."""
    return hashlib.sha256(canonical_json({"name": name, "spec": spec}).encode()).hexdigest()[:16]


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    parts = name.split("/")
    if any(not p or p.startswith(".") or "\\" in p for p in parts):
        raise ValueError(f"name must be folder names joined by '/', none empty or starting with '.', got {name!r}")
    return name


def folder_of(name: str, spec: Any, root: Path | None = None) -> Path:
    """Where the run ``name`` with ``spec`` is stored."""
    return (root or STORE) / f"{_check_name(name)}-{key_of(name, spec)}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def write_history(path: Path, history: dict[str, Any]) -> None:
    """``history``: name -> array with one entry per record (first axis). Written as JSON lines."""
    arrays = {k: np.asarray(v) for k, v in history.items()}
    lengths = {len(v) for v in arrays.values()} if arrays else {0}
    if len(lengths) != 1:
        raise ValueError(f"history columns differ in length: { {k: len(v) for k, v in arrays.items()} }")
    with open(path, "w") as f:
        f.writelines(json.dumps({k: v[i].tolist() for k, v in arrays.items()}) + "\n" for i in range(lengths.pop()))


def read_history(path: Path) -> dict[str, np.ndarray]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return {}
    return {k: np.asarray([r[k] for r in rows]) for k in rows[0]}


@dataclass(frozen=True)
class Run:
    """A verified stored run: its folder, manifest and history."""

    folder: Path
    manifest: dict
    history: dict[str, np.ndarray]

    @property
    def info(self) -> dict:
        return self.manifest.get("info", {})


def verify(folder: Path) -> dict:
    """The manifest of ``folder`` after checking it: every listed file present with its sha256,
    no other file. Raises :class:`StoreError` naming the file and the fix."""
    folder = Path(folder)
    path = folder / MANIFEST
    fix = f"restore it with 'git checkout -- {_rel(folder)}' or retrain it with 'make study RETRAIN=1'"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise StoreError(f"{_rel(path)} is missing: {_rel(folder)} is not a finished stored run; {fix}") from e
    except ValueError as e:
        raise StoreError(f"{_rel(path)} is not valid JSON ({e}); {fix}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise StoreError(f"{_rel(path)} is not a version-{FORMAT} store manifest with a 'files' table; {fix}")
    listed = set(manifest["files"])
    present = set(_files(folder)) - {MANIFEST}
    unknown, missing = sorted(present - listed), sorted(listed - present)
    if unknown:
        raise StoreError(f"{_rel(folder)} holds files its manifest does not list: {unknown}; move them out of the store")
    if missing:
        raise StoreError(f"{_rel(folder)} misses files its manifest lists: {missing}; {fix}")
    for name, digest in manifest["files"].items():
        if sha256_file(folder / name) != digest:
            raise StoreError(f"{_rel(folder / name)} does not match the sha256 in its manifest; {fix}")
    return manifest


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def fetch(
    name: str,
    spec: Any,
    produce: Callable[[Path], tuple[dict[str, Any], dict[str, Any]]],
    root: Path | None = None,
) -> Run:
    """The stored run ``name`` with ``spec``, trained by ``produce`` when the mode asks for it.

    Args:
        name: readable name, folders joined by "/" (e.g. ``"01/q1"``).
        spec: everything that determines the run (canonicalised into the key and the manifest).
        produce: ``produce(folder) -> (history, info)``: train and write the run's weight files
            into the (empty, temporary) ``folder``; ``history``: name -> one entry per record;
            ``info``: JSON facts to keep in the manifest (e.g. training seconds).
        root: the store (default :data:`STORE`).

    Returns:
        The verified run (read back from the store, so a fresh and a loaded run read the same bytes).
    """
    spec = canonical(spec)
    folder = folder_of(name, spec, root)
    m = mode()
    if folder.exists() and m != "retrain":
        manifest = verify(folder)
        return Run(folder, manifest, read_history(folder / HISTORY))
    if m == "require":
        raise StoreError(
            f"no stored run {name!r} with key {key_of(name, spec)} ({_rel(folder)}): 'make test' never trains, and "
            f"the committed store has no run for these parameters; {MAKE_HINT}"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():  # our own leftover of an interrupted write (the .tmp name is the store's)
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        t0 = time.perf_counter()
        history, info = produce(tmp)
        seconds = time.perf_counter() - t0
        write_history(tmp / HISTORY, history)
        files = {f: sha256_file(tmp / f) for f in _files(tmp)}
        manifest = {
            "format": FORMAT, "name": name, "key": key_of(name, spec), "spec": spec, "files": files,
            "info": canonical(info),
            "trained": {
                "seconds": round(seconds, 1), "cpu": cpu_info(), "threads": torch.get_num_threads(),
                "torch": torch.__version__, "commit": _commit(),
                "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        if folder.exists():  # retrain: report, then replace through a rename
            old = json.loads((folder / MANIFEST).read_text()).get("files", {})
            weights = {f: d for f, d in files.items() if f != HISTORY}
            changed = sorted(f for f in set(weights) | set(old) if f != HISTORY and weights.get(f) != old.get(f))
            REPORT.parent.mkdir(parents=True, exist_ok=True)
            with open(REPORT, "a") as f:
                f.write(json.dumps({"run": _rel(folder), "changed": changed}) + "\n")
            trash = folder.with_name(folder.name + ".old.tmp")
            os.replace(folder, trash)
            os.replace(tmp, folder)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Run(folder, verify(folder), read_history(folder / HISTORY))


def size_bytes(root: Path | None = None) -> int:
    root = root or STORE
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def verify_all(root: Path | None = None) -> list[Path]:
    """Verify every run folder of the store; anything else in it (but a README) is an error."""
    root = root or STORE
    runs = []
    if not root.exists():
        return runs
    for manifest in sorted(root.rglob(MANIFEST)):
        verify(manifest.parent)
        runs.append(manifest.parent)
    known = {r.resolve() for r in runs}
    for p in root.rglob("*"):
        if p.is_file() and p.name != "README.md" and not any(q in known for q in p.resolve().parents):
            raise StoreError(f"{_rel(p)} is in the store but in no run folder with a manifest; move it out of {_rel(root)}")
    return runs


def _main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m sae_ortho.experiments.store", description=__doc__.split("\n\n")[0])
    ap.add_argument("--verify", action="store_true", help="check every stored run against its manifest")
    ap.add_argument("--report", action="store_true", help="print and clear the RETRAIN report (which runs changed)")
    args = ap.parse_args(argv)
    if args.verify:
        runs = verify_all()
        print(f"{len(runs)} stored runs verified, {size_bytes() / 2**20:.1f} MiB")
    if args.report:
        lines = [json.loads(x) for x in REPORT.read_text().splitlines()] if REPORT.exists() else []
        changed = [r for r in lines if r["changed"]]
        print(f"retrained {len(lines)} stored runs: {len(changed)} changed, {len(lines) - len(changed)} identical")
        for r in changed:
            print(f"  changed: {r['run']} ({', '.join(r['changed'])})")
        REPORT.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())


_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython"}


def params(namespace: dict, exclude: tuple[str, ...] = ("device", "threads")) -> dict:
    """A notebook's parameters from its ``globals()`` right after the parameters cell: every public
    value of a plain type (numbers, strings, lists, dicts), without ``exclude`` (settings that
    change where or how fast a run trains, not what it is). Used as the ``key`` of stored runs:
    a changed parameter names other runs."""
    plain = (bool, int, float, str, list, tuple, dict, type(None))
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and k not in _IPYTHON_NAMES and k not in exclude and isinstance(v, plain)}
