"""The store of trained SAEs (sae_ortho.experiments.store): train once, load after; never train in require mode;
damaged or foreign files refused with the file and the fix named; retrain replaces atomically and
reports; the perturbation hook; and the committed store verifies."""

from __future__ import annotations

import json

import pytest
import torch

from sae_ortho.data import toy
from sae_ortho.experiments import store, sweep


@pytest.fixture
def tmp_store(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "STORE", tmp_path / "saes")
    monkeypatch.setattr(store, "REPORT", tmp_path / "report.jsonl")
    monkeypatch.delenv(store.MODE_VAR, raising=False)
    monkeypatch.delenv(store.PERTURB_VAR, raising=False)
    return tmp_path / "saes"


def _produce(calls):
    def produce(folder):
        calls.append(folder)
        (folder / "w.bin").write_bytes(b"weights")
        return {"step": [1, 2], "loss": [0.5, 0.25]}, {"seconds": 1.0}
    return produce


def test_trains_once_then_loads(tmp_store):
    calls = []
    a = store.fetch("x/run", {"lr": 1e-3}, _produce(calls))
    b = store.fetch("x/run", {"lr": 0.001}, _produce(calls))  # the same spec, canonically
    assert len(calls) == 1 and a.folder == b.folder and a.folder.parent == tmp_store / "x"
    assert list(b.history["loss"]) == [0.5, 0.25] and b.info["seconds"] == 1.0
    m = b.manifest
    assert m["spec"] == {"lr": 0.001} and set(m["files"]) == {"w.bin", store.HISTORY}
    assert m["trained"]["cpu"]["machine"] and "commit" in m["trained"]
    c = store.fetch("x/run", {"lr": 2e-3}, _produce(calls))  # another parameter: another run
    assert len(calls) == 2 and c.folder != a.folder


def test_require_mode_never_trains(tmp_store, monkeypatch):
    monkeypatch.setenv(store.MODE_VAR, "require")
    with pytest.raises(store.StoreError, match=r"no stored run 'x/run'.*make study"):
        store.fetch("x/run", {"a": 1}, _produce([]))
    monkeypatch.setenv(store.MODE_VAR, "sometimes")
    with pytest.raises(ValueError, match="SAE_STUDY_STORE must be one of"):
        store.fetch("x/run", {"a": 1}, _produce([]))


def test_damage_is_refused_naming_file_and_fix(tmp_store):
    run = store.fetch("r", {"a": 1}, _produce([]))
    (run.folder / "w.bin").write_bytes(b"other")
    with pytest.raises(store.StoreError, match=r"w.bin does not match the sha256.*git checkout"):
        store.fetch("r", {"a": 1}, _produce([]))
    (run.folder / "w.bin").write_bytes(b"weights")
    (run.folder / "notes.txt").write_text("mine")
    with pytest.raises(store.StoreError, match=r"files its manifest does not list: \['notes.txt'\]"):
        store.verify(run.folder)
    (run.folder / "notes.txt").unlink()
    (run.folder / store.MANIFEST).write_text("{not json")
    with pytest.raises(store.StoreError, match="manifest.json is not valid JSON"):
        store.verify(run.folder)
    (run.folder / store.MANIFEST).write_text(json.dumps({"format": 99}))
    with pytest.raises(store.StoreError, match="version-1 store manifest"):
        store.verify(run.folder)
    (tmp_store / "stray.bin").write_bytes(b"?")
    with pytest.raises(store.StoreError):
        store.verify_all()


def test_retrain_replaces_and_reports(tmp_store, monkeypatch):
    calls = []
    first = store.fetch("r", {"a": 1}, _produce(calls))
    monkeypatch.setenv(store.MODE_VAR, "retrain")
    store.fetch("r", {"a": 1}, _produce(calls))
    report = [json.loads(x) for x in store.REPORT.read_text().splitlines()]
    assert len(calls) == 2 and report[-1]["changed"] == []

    def other(folder):
        (folder / "w.bin").write_bytes(b"new weights")
        return {"loss": [1.0]}, {}

    again = store.fetch("r", {"a": 1}, other)
    assert again.folder == first.folder and (again.folder / "w.bin").read_bytes() == b"new weights"
    report = [json.loads(x) for x in store.REPORT.read_text().splitlines()]
    assert report[-1]["changed"] == ["w.bin"]
    assert not list(tmp_store.glob("*.tmp"))


def test_failed_training_leaves_nothing(tmp_store):
    def boom(folder):
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        store.fetch("r", {"a": 1}, boom)
    assert not any(tmp_store.rglob("*.bin"))


def test_stack_loaded_equals_trained_and_leaves_rng_where_training_does(tmp_store, monkeypatch):
    data = toy.ToyData(toy.ToyDataConfig(n_features=6, d=6), generator=torch.Generator().manual_seed(0))
    rows = sweep.grid(2, l1=[0.05, 0.1])
    kw = {"steps": 30, "snapshot_steps": [15], "store": "s", "key": {"p": 1}}
    torch.manual_seed(1)
    plain, plain_res = sweep.fit_stack(rows, [data] * 4, 6, 6, steps=30, snapshot_steps=[15])
    after_plain = torch.get_rng_state()
    torch.manual_seed(1)
    fresh, _ = sweep.fit_stack(rows, [data] * 4, 6, 6, **kw)
    assert torch.equal(torch.get_rng_state(), after_plain)
    torch.manual_seed(1)
    loaded, res2 = sweep.fit_stack(rows, [data] * 4, 6, 6, **kw)
    assert torch.equal(torch.get_rng_state(), after_plain)
    assert torch.equal(fresh.W_dec, loaded.W_dec) and torch.equal(fresh.W_dec, plain.W_dec)
    assert torch.equal(res2.snapshots[15]["W_dec"], plain_res.snapshots[15]["W_dec"])
    torch.manual_seed(2)  # another data stream is another run
    monkeypatch.setenv(store.MODE_VAR, "require")
    with pytest.raises(store.StoreError):
        sweep.fit_stack(rows, [data] * 4, 6, 6, **kw)
    with pytest.raises(ValueError, match="needs key="):
        sweep.fit_stack(rows, [data] * 4, 6, 6, steps=30, store="s")
    with pytest.raises(ValueError, match="key has no effect without store"):
        sweep.fit_stack(rows, [data] * 4, 6, 6, steps=30, key={"p": 1})


def test_perturb(monkeypatch):
    t = torch.randn(100, 10)
    monkeypatch.delenv(store.PERTURB_VAR, raising=False)
    assert store.perturb(t) is t
    monkeypatch.setenv(store.PERTURB_VAR, "1e-6")
    p = store.perturb(t)
    rel = ((p - t).abs() / t.abs().clamp_min(1e-30)).max()
    assert 0 < rel < 1e-5 and torch.equal(p, store.perturb(t))


def test_params_keeps_plain_values_only():
    ns = {"seed": 0, "lr": [1e-3], "device": "cuda", "torch": torch, "In": ["x"], "_": 3, "f": len}
    assert store.params(ns) == {"seed": 0, "lr": [1e-3]}


@pytest.mark.real_store
def test_committed_store_verifies():
    runs = store.verify_all()
    assert store.size_bytes() < 150 * 2**20, f"the committed store is {store.size_bytes() / 2**20:.0f} MiB"
    for folder in runs:
        assert json.loads((folder / store.MANIFEST).read_text())["trained"]["cpu"]["vendor"]
