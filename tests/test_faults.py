"""Fault injection: kill -9 during training, during a checkpoint write and during a cache write;
corrupted checkpoint, cfg.json, safetensors and meta.json files; a full disk; output locations
that cannot be written. In every case: a resume is bit-identical, no partial file is trusted, a
damaged file is refused with a message naming it, nothing a user owns is deleted, and a bad
location is refused before any work is done.

A full disk is simulated with RLIMIT_FSIZE (writes beyond the limit fail with EFBIG, as they would
with ENOSPC), the kills with SIGKILL on a child process that stops at a known point.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sae_ortho.data import activations
from sae_ortho.experiments import runs
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.models.saelens_io import load_sae_lens, save_sae_lens
from sae_ortho.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sae_ortho.training.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
D, N = 4, 6
CFG = TrainConfig(steps=20, batch_size=16, lr=1e-2, l1_coeff=0.05, ortho_weight=0.1, log_every=3, checkpoint_every=5)


def sample(b):
    return torch.randn(b, D)  # the global generator, which checkpoints carry


class Counting:
    """A sampler that counts its calls (0 calls: nothing was trained)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, b):
        self.calls += 1
        return sample(b)


def fresh_sae(seed=0):
    return SAE(SAEConfig(D, N), generator=torch.Generator().manual_seed(seed))


def uninterrupted():
    torch.manual_seed(0)
    sae = fresh_sae()
    res = train(sae, sample, CFG, progress=False)
    return sae, res


def assert_same(a: SAE, b: SAE) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


@contextlib.contextmanager
def disk_full(limit_bytes: int):
    """Files cannot grow beyond ``limit_bytes`` while inside (a full disk, as the writer sees it)."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)


# ------------------------------------------------------------------------------------- kill -9
CHILD = textwrap.dedent(
    """
    import sys, time, torch
    torch.set_num_threads(1)
    from sae_ortho.training import checkpoint
    from sae_ortho.models.sae import SAE, SAEConfig
    from sae_ortho.training.train import TrainConfig, train

    where, folder = sys.argv[1], sys.argv[2]
    cfg = TrainConfig(steps=20, batch_size=16, lr=1e-2, l1_coeff=0.05, ortho_weight=0.1, log_every=3,
                      checkpoint_every=5)
    calls = 0

    def sample(b):
        global calls
        calls += 1
        if where == "step" and calls == 13:  # during step 12, after the step-10 checkpoint
            print("READY", flush=True)
            time.sleep(600)
        return torch.randn(b, 4)

    if where == "write":  # stop halfway through writing the step-10 checkpoint
        real_open, saves = open, [0]

        class Half:
            def __init__(self, f):
                self.f = f
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                self.f.close()
            def write(self, data):
                if len(data) > 1000:  # the payload, not the magic line or the header
                    self.f.write(data[: len(data) // 2])
                    self.f.flush()
                    print("READY", flush=True)
                    time.sleep(600)
                return self.f.write(data)
            def __getattr__(self, name):
                return getattr(self.f, name)

        def opener(path, mode="r", *a, **k):
            f = real_open(path, mode, *a, **k)
            if "w" in mode or "x" in mode:
                saves[0] += 1
                if saves[0] == 2:
                    return Half(f)
            return f

        checkpoint.open = opener
    torch.manual_seed(0)
    sae = SAE(SAEConfig(4, 6), generator=torch.Generator().manual_seed(0))
    train(sae, sample, cfg, checkpoint_dir=folder, progress=False)
    print("FINISHED", flush=True)
    """
)


def kill_when_ready(args: list[str]) -> None:
    """Run the child with ``args``; SIGKILL it as soon as it prints READY."""
    proc = subprocess.Popen(
        [sys.executable, "-c", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "READY", (line, proc.stderr.read() if proc.poll() is not None else "")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(("where", "last_good"), [("step", 10), ("write", 5)])
def test_kill_9_during_training_resumes_bit_identically(tmp_path, where, last_good):
    (tmp_path / "checkpoint.pt.tmp").write_text("the user's own file")  # a name the writer must not take
    kill_when_ready([CHILD, where, str(tmp_path)])
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "checkpoint.pt.tmp")
    temporaries = [name for name in left if name.startswith("checkpoint.pt.lib-tmp-")]
    assert left == ["checkpoint.pt", *temporaries] and len(temporaries) == (where == "write")
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == last_good  # the partial write is not it
    if where == "write":  # the half-written file is never trusted, not even when renamed by hand
        torn = tmp_path / "torn.pt"
        os.link(tmp_path / temporaries[0], torn)  # a copy: the next write must remove the killed one's file
        with pytest.raises(CheckpointError, match=r"torn\.pt is truncated"):
            load_checkpoint(torn)
        torn.unlink()

    torch.manual_seed(123)  # a fresh process: another RNG state, another model object
    resumed = fresh_sae(seed=5)
    res = train(resumed, sample, CFG, checkpoint_dir=tmp_path, progress=False)
    assert res.resumed_from == last_good
    ref, ref_res = uninterrupted()
    assert_same(ref, resumed)
    for k in ref_res.history:
        assert (ref_res.history[k] == res.history[k]).all(), k
    # the killed writer's temporary file is gone, the user's file of the same old name is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "checkpoint.pt.tmp"]
    assert (tmp_path / "checkpoint.pt.tmp").read_text() == "the user's own file"


CACHE_CHILD = textwrap.dedent(
    """
    import sys, time, torch
    from sae_ortho.data import activations
    activations.SHARD_BYTES = 96
    root = sys.argv[1]
    table = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    calls = [0]

    def forward(tokens):
        calls[0] += 1
        if calls[0] == 3:  # two batches (several shards) are on disk in the temporary folder
            print("READY", flush=True)
            time.sleep(600)
        return {0: table[tokens]}

    spec = activations.CacheSpec("toy", None, 0, 4, 48)
    activations.harvest([spec], torch.arange(48).view(12, 4) % 50, forward, root=root, batch_size=3,
                        progress=False)
    """
)


def test_kill_9_during_a_cache_write_leaves_nothing_trusted(tmp_path, monkeypatch):
    monkeypatch.setattr(activations, "SHARD_BYTES", 96)
    spec = activations.CacheSpec("toy", None, 0, 4, 48)
    root = tmp_path / "killed"
    kill_when_ready([CACHE_CHILD, str(root)])
    tmps = [p for p in root.iterdir() if ".tmp-" in p.name]
    assert len(tmps) == 1 and any(tmps[0].iterdir())  # shards written before the kill
    assert activations.open_cache(spec, root) is None  # the partial folder is not a cache

    table = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    tokens = torch.arange(48).view(12, 4) % 50
    store = activations.harvest([spec], tokens, lambda t: {0: table[t]}, root=root, batch_size=3, progress=False)[0]
    assert sorted(p.name for p in root.iterdir()) == [spec.key()]  # the stale temporary folder is gone
    clean = activations.harvest(
        [spec], tokens, lambda t: {0: table[t]}, root=tmp_path / "clean", batch_size=3, progress=False
    )[0]
    assert store.meta["content_sha256"] == clean.meta["content_sha256"]
    assert torch.equal(store.load(), clean.load())


# ------------------------------------------------------------------------------ damaged checkpoints
def _checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    train(fresh_sae(), sample, TrainConfig(steps=5, batch_size=8), checkpoint_dir=tmp_path, progress=False)
    return tmp_path / "checkpoint.pt"


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x10
    return bytes(out)


DAMAGE = {
    "truncated": (lambda b: b[: len(b) * 2 // 3], "is truncated"),
    "bit flip in the payload": (lambda b: _flip(b, len(b) - 200), "is corrupted"),
    "bit flip in the weights": (lambda b: _flip(b, len(b) // 2), "is corrupted"),
    "damaged header": (lambda b: b.replace(b'"sha256"', b'"sha2xx"', 1), "has a damaged header"),
    "other version": (lambda b: b.replace(b'"version": 2', b'"version": 9', 1), "has format version 9"),
    "not a checkpoint": (lambda b: b"hello", "is not a checkpoint written by sae_ortho.training.checkpoint"),
    "empty": (lambda b: b"", "is not a checkpoint written by sae_ortho.training.checkpoint"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_is_refused_naming_the_file_before_training(tmp_path, damage):
    ck = _checkpoint(tmp_path)
    fn, message = DAMAGE[damage]
    ck.write_bytes(fn(ck.read_bytes()))
    counting = Counting()
    with pytest.raises(CheckpointError, match=rf"{ck}.*{message}.*delete it"):
        train(fresh_sae(), counting, TrainConfig(steps=5, batch_size=8), checkpoint_dir=tmp_path, progress=False)
    assert counting.calls == 0
    assert isinstance(CheckpointError("x"), ValueError)


def test_checkpoint_of_the_previous_format_is_refused(tmp_path):
    """A plain torch.save file (the format before the version and hash) names the older version."""
    torch.save({"fingerprint": "x", "model": fresh_sae().state_dict()}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="older version of this library"):
        train(fresh_sae(), sample, TrainConfig(steps=5, batch_size=8), checkpoint_dir=tmp_path, progress=False)


def test_checkpoint_round_trip_keeps_numpy_arrays_and_refuses_pickled_code(tmp_path):
    import numpy as np

    state = {"a": np.arange(3, dtype=np.float32), "h": {"loss": [np.float32(1.5) * np.ones(2)]}, "t": torch.ones(2)}
    save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["a"].dtype == np.float32 and (back["a"] == state["a"]).all()
    assert (back["h"]["loss"][0] == state["h"]["loss"][0]).all() and torch.equal(back["t"], state["t"])
    # An intact (hash-matching) file that unpickles arbitrary objects is refused by weights_only.
    save_checkpoint(tmp_path / "evil.pt", {"obj": Counting()})
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(tmp_path / "evil.pt")


def test_a_users_files_named_like_a_temporary_file_are_kept(tmp_path):
    """A fixed temporary name (checkpoint.pt.tmp) used to be overwritten and deleted."""
    for name in ("checkpoint.pt.tmp", ".checkpoint.pt.tmp", "checkpoint.pt.lib-tmp-notes"):
        (tmp_path / name).write_text("mine")
    train(fresh_sae(), sample, CFG, checkpoint_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".checkpoint.pt.tmp", "checkpoint.pt", "checkpoint.pt.lib-tmp-notes", "checkpoint.pt.tmp"]
    assert all((tmp_path / n).read_text() == "mine" for n in (".checkpoint.pt.tmp", "checkpoint.pt.tmp"))


def test_a_state_with_non_finite_weights_is_never_written(tmp_path):
    ck = _checkpoint(tmp_path)
    before = ck.read_bytes()
    state = load_checkpoint(ck)
    state["model"]["W_dec"][2, 1] = float("nan")
    with pytest.raises(FloatingPointError, match=rf"^not writing the checkpoint {ck}: model/W_dec contains non-finite"):
        save_checkpoint(ck, state, finite=("model", "optimizer"))
    state = load_checkpoint(ck)
    state["optimizer"]["state"][0]["exp_avg"].view(-1)[0] = float("inf")
    with pytest.raises(FloatingPointError, match=r": optimizer/state/0/exp_avg contains non-finite"):
        save_checkpoint(ck, state, finite=("model", "optimizer"))
    assert ck.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_folder_named_checkpoint_pt_is_refused(tmp_path):
    (tmp_path / "checkpoint.pt").mkdir()
    with pytest.raises(ValueError, match="holds a folder named checkpoint.pt"):
        train(fresh_sae(), sample, CFG, checkpoint_dir=tmp_path, progress=False)


# ------------------------------------------------------------------------------- output locations
def test_output_locations_are_checked_before_any_training(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for bad in (a_file, a_file / "sub"):
        counting = Counting()
        with pytest.raises(ValueError, match="checkpoint_dir must be a folder"):
            train(fresh_sae(), counting, CFG, checkpoint_dir=bad, progress=False)
        assert counting.calls == 0
        counting = Counting()
        with pytest.raises(ValueError, match="root must be a folder"):
            runs.train_or_load("run", SAEConfig(D, N), CFG, counting, "key", root=bad, progress=False)
        assert counting.calls == 0
    assert a_file.read_text() == "mine"
    with pytest.raises(ValueError, match="folder must be a folder"):
        save_sae_lens(fresh_sae(), a_file, hook_name="blocks.0.hook_resid_post")
    assert a_file.read_text() == "mine"


# -------------------------------------------------------------------------------------- SAE folders
def test_save_sae_lens_keeps_the_users_files_and_refuses_foreign_saes(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "plots").mkdir()
    save_sae_lens(fresh_sae(), folder, hook_name="blocks.0.hook_resid_post")
    save_sae_lens(fresh_sae(1), folder, hook_name="blocks.0.hook_resid_post")  # saving again replaces only our own files
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "notes.txt", "plots", "sae_weights.safetensors"]
    assert (folder / "notes.txt").read_text() == "mine"
    assert_same(load_sae_lens(folder)[0], fresh_sae(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left

    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": 4, "d_sae": 6}))
    with pytest.raises(ValueError, match="holds an SAE .cfg.json. that save_sae_lens did not write"):
        save_sae_lens(fresh_sae(), foreign, hook_name="blocks.0.hook_resid_post")
    assert sorted(p.name for p in foreign.iterdir()) == ["cfg.json"]


def _saved(tmp_path) -> Path:
    return save_sae_lens(fresh_sae(), tmp_path / "sae", hook_name="blocks.0.hook_resid_post")


CFG_DAMAGE = {
    "not JSON": (lambda t: t[:-3], "cfg.json is not valid JSON"),
    "not an object": (lambda t: "[1, 2]", "cfg.json must hold a JSON object"),
    "no d_in": (lambda t: t.replace('"d_in"', '"d_inn"'), "cfg.json: the field d_in is missing"),
    "bad d_in": (lambda t: t.replace('"d_in": 4', '"d_in": -4'), "cfg.json: d_in must be a JSON integer >= 1, got -4"),
    "fractional d_in": (lambda t: t.replace('"d_in": 4', '"d_in": 4.7'), "cfg.json: d_in must be a JSON integer"),
    "string boolean": (lambda t: t.replace('"apply_b_dec_to_input": true', '"apply_b_dec_to_input": "false"'),
                       r"cfg.json: apply_b_dec_to_input must be a JSON boolean \(true or false\), got \"false\""),
    "bad architecture": (lambda t: t.replace('"standard"', '"jumprelu"'), "architecture must be one of"),
}


@pytest.mark.parametrize("damage", list(CFG_DAMAGE))
def test_damaged_cfg_json_is_refused_naming_the_file(tmp_path, damage):
    folder = _saved(tmp_path)
    fn, message = CFG_DAMAGE[damage]
    (folder / "cfg.json").write_text(fn((folder / "cfg.json").read_text()))
    with pytest.raises(ValueError, match=rf"{folder}.*{message}"):
        load_sae_lens(folder)


def test_damaged_or_mixed_weights_are_refused_naming_the_file(tmp_path):
    folder = _saved(tmp_path)
    w = folder / "sae_weights.safetensors"
    good = w.read_bytes()
    for bad in (good[:-16], _flip(good, len(good) - 8), b""):
        w.write_bytes(bad)
        with pytest.raises(ValueError, match=rf"{w} does not match the sha256 recorded in cfg.json"):
            load_sae_lens(folder)
    # Without a recorded hash (a folder SAELens wrote), an unreadable file is still named.
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["metadata"]["weights_sha256"]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    w.write_bytes(good[:-16])
    with pytest.raises(ValueError, match=rf"{w} is not a readable safetensors file"):
        load_sae_lens(folder)


def test_a_save_interrupted_between_its_two_renames_is_refused(tmp_path, monkeypatch):
    """The new weights are in place, the old cfg.json still names the old weights' hash."""
    folder = _saved(tmp_path)
    real, calls = os.replace, []

    def fail_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # e.g. Ctrl-C between the renames
        return real(src, dst)

    monkeypatch.setattr("sae_ortho.models.saelens_io.os.replace", fail_second)
    with pytest.raises(KeyboardInterrupt):
        save_sae_lens(fresh_sae(7), folder, hook_name="blocks.0.hook_resid_post")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="the files of two different saves"):
        load_sae_lens(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # the temporary folder was removed


# ----------------------------------------------------------------------------------- activation cache
def test_damaged_meta_json_and_shards_are_refused_naming_the_folder(tmp_path):
    spec = activations.CacheSpec("toy", None, 0, 4, 16)
    tokens = torch.zeros(4, 4, dtype=torch.long)

    def forward(t):
        return {0: torch.ones(*t.shape, 3)}

    store = activations.harvest([spec], tokens, forward, root=tmp_path, progress=False)[0]
    meta = store.path / "meta.json"
    text = meta.read_text()
    for bad, message in (
        (text[:-5], "cannot read meta.json"),
        (text.replace('"sha256"', '"sha"'), "missing or unreadable file or meta field"),
        (text.replace('"layer": 0', '"layer": 1'), "meta does not match the spec"),
    ):
        meta.write_text(bad)
        with pytest.raises(activations.CacheError, match=rf"{store.path}.*{message}.*delete the folder"):
            activations.open_cache(spec, tmp_path)
    meta.write_text(text)
    shard = store.path / store.meta["shards"][0]["file"]
    shard.write_bytes(_flip(shard.read_bytes(), len(shard.read_bytes()) - 3))
    with pytest.raises(activations.CacheError, match="is corrupted .hash mismatch."):
        activations.harvest([spec], tokens, forward, root=tmp_path, progress=False)


# ----------------------------------------------------------------------------------------- full disk
def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path):
    ck = _checkpoint(tmp_path)
    before = ck.read_bytes()
    cfg = TrainConfig(steps=10, batch_size=8, checkpoint_every=5)
    torch.manual_seed(0)
    other = tmp_path / "other" / "checkpoint.pt"
    with disk_full(len(before) // 2), pytest.raises(OSError, match=rf"could not write the checkpoint {other}.*kept"):
        train(fresh_sae(), sample, cfg, checkpoint_dir=other.parent, progress=False)
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == []  # no partial file
    with disk_full(len(before) // 2), pytest.raises(OSError, match="previous checkpoint is kept"):
        save_checkpoint(ck, load_checkpoint(ck))
    assert ck.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "other"]


def test_full_disk_while_saving_an_sae_leaves_the_old_save(tmp_path):
    folder = save_sae_lens(fresh_sae(), tmp_path / "sae", hook_name="blocks.0.hook_resid_post")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with disk_full(64), pytest.raises(OSError, match=rf"could not write the SAE to {folder}.*nothing was replaced"):
        save_sae_lens(fresh_sae(3), folder, hook_name="blocks.0.hook_resid_post")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]
    assert_same(load_sae_lens(folder)[0], fresh_sae())


def test_full_disk_while_harvesting_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(activations, "SHARD_BYTES", 96)
    spec = activations.CacheSpec("toy", None, 0, 4, 48)
    with disk_full(200), pytest.raises(OSError):
        activations.harvest(
            [spec], torch.zeros(12, 4, dtype=torch.long), lambda t: {0: torch.rand(*t.shape, 3)}, root=tmp_path,
            progress=False,
        )
    assert list(tmp_path.iterdir()) == []


def test_full_disk_at_the_end_of_train_or_load_then_a_rerun_finishes(tmp_path, monkeypatch):
    cfg = TrainConfig(steps=6, batch_size=8, checkpoint_every=3)
    real = save_sae_lens

    def full(*a, **k):
        with disk_full(64):
            return real(*a, **k)

    monkeypatch.setattr(runs, "save_sae_lens", full)
    with pytest.raises(OSError, match="could not write the SAE"):
        runs.train_or_load("run", SAEConfig(D, N), cfg, sample, "key", root=tmp_path, progress=False)
    (run,) = tmp_path.iterdir()
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]  # the finished training is kept
    monkeypatch.undo()
    counting = Counting()
    sae, history = runs.train_or_load("run", SAEConfig(D, N), cfg, counting, "key", root=tmp_path, progress=False)
    assert counting.calls == 0  # resumed at the last step: nothing retrained
    assert sorted(p.name for p in run.iterdir()) == ["history.json", "sae"]
    clean, clean_history = runs.train_or_load("run", SAEConfig(D, N), cfg, sample, "key", root=tmp_path / "clean", progress=False)
    assert_same(sae, clean)
    assert (history["loss"] == clean_history["loss"]).all()
