"""Tests of sae_ortho.data.activations: the on-disk activation cache, with a fake (deterministic) forward."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import namedtuple

import pytest
import torch

from sae_ortho.data import activations
from sae_ortho.data.activations import ActivationStore, CacheError, CacheSpec, harvest, norm_scale, open_cache

D = 6


def fake_acts(tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """[b, ctx] -> [b, ctx, D]: token id, position, layer, then smooth functions of them."""
    b, ctx = tokens.shape
    t = tokens.float()
    pos = torch.arange(ctx, dtype=torch.float32).expand(b, ctx)
    extra = [torch.sin(0.1 * (j + 1) * t + layer) for j in range(D - 3)]
    return torch.stack([t, pos, torch.full_like(t, layer), *extra], dim=-1)


class Forward:
    """Fake forward taking ``layers=``; records each call's layers; can fail on a given call."""

    def __init__(self, fail_at: int | None = None, nan_at: int | None = None):
        self.calls: list[tuple[int, ...]] = []
        self.fail_at, self.nan_at = fail_at, nan_at

    def __call__(self, tokens, layers):
        self.calls.append(layers)
        if len(self.calls) == self.fail_at:
            raise RuntimeError("forward died")
        out = {layer: fake_acts(tokens, layer) for layer in layers}
        if len(self.calls) == self.nan_at:
            out[layers[-1]][0, 3, 4] = float("nan")
        return out


def spec(layer: int = 1, **kw) -> CacheSpec:
    args = {"model": "org/tiny-model", "revision": "abc123", "layer": layer, "context": 8, "n_tokens": 50,
            "dtype": "float32", "corpus": "toy/train"}
    return CacheSpec(**(args | kw))


def tokens(n_seq: int = 10, ctx: int = 8) -> torch.Tensor:
    return torch.arange(n_seq * ctx).reshape(n_seq, ctx) * 7 % 1000


def expected(tok: torch.Tensor, s: CacheSpec) -> torch.Tensor:
    return fake_acts(tok[: s.n_seq], s.layer)[:, int(s.drop_first):].reshape(-1, D)


def entries(root) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_spec_validation_and_key():
    s = spec()
    assert s.key() == spec().key()  # stable
    assert s.n_seq == 7 and s.n_rows == 7 * 7
    assert len({s.key(), spec(layer=2).key(), spec(revision=None).key(), spec(corpus="x").key(),
                spec(drop_first=False).key(), spec(dtype="float16").key()}) == 6
    assert s.key().startswith("org-tiny-model_L1_ctx8_n50_float32_")
    assert "/" not in s.key()
    for name, value in (("layer", -1), ("context", 1), ("n_tokens", 0), ("dtype", "int8"), ("model", ""),
                        ("layer", True)):
        with pytest.raises(ValueError, match=name):
            spec(**{name: value})
    with pytest.raises(TypeError, match="drop_first"):
        spec(drop_first=1)


def test_harvest_roundtrip_and_reopen(tmp_path, monkeypatch):
    monkeypatch.setattr(activations, "SHARD_BYTES", 20 * D * 4)  # 20 rows per shard: several shards
    tok = tokens()
    specs = [spec(1), spec(3)]
    stores = harvest(specs, tok, Forward(), root=tmp_path, batch_size=3, progress=False)
    assert set(stores) == {1, 3}
    for s in specs:
        store = stores[s.layer]
        assert (store.n, store.d) == (49, D)
        assert len(store.meta["shards"]) == 3
        torch.testing.assert_close(store.load(), expected(tok, s), rtol=0, atol=0)
        again = open_cache(s, tmp_path)
        assert isinstance(again, ActivationStore) and again.path == tmp_path / s.key()
        torch.testing.assert_close(again.load(), store.load(), rtol=0, atol=0)
        meta = again.meta
        assert {k: meta[k] for k in s.to_dict()} == s.to_dict()
        assert meta["versions"]["torch"] == torch.__version__
        # norm_scale: mean squared norm of s*x equals d
        x = store.load() * norm_scale(store)
        assert abs(float(x.double().square().sum(-1).mean()) - D) < 1e-5
    assert entries(tmp_path) == sorted(s.key() for s in specs)  # no tmp leftovers
    assert open_cache(spec(2), tmp_path) is None


def test_float16_storage(tmp_path):
    s = spec(dtype="float16")
    store = harvest([s], tokens(), Forward(), root=tmp_path, progress=False)[1]
    assert store.load(torch.float16).dtype == torch.float16
    torch.testing.assert_close(store.load(), expected(tokens(), s).half().float(), rtol=0, atol=0)


def test_only_missing_layers_are_computed(tmp_path):
    tok = tokens()
    fwd = Forward()
    harvest([spec(1), spec(3)], tok, fwd, root=tmp_path, batch_size=4, progress=False)
    assert fwd.calls == [(1, 3)] * 2  # 7 sequences in batches of 4: one pass, both layers
    hash3 = open_cache(spec(3), tmp_path).meta["content_sha256"]
    fwd = Forward()
    stores = harvest([spec(3), spec(2), spec(1)], tok, fwd, root=tmp_path, batch_size=4, progress=False)
    assert fwd.calls == [(2,)] * 2
    assert set(stores) == {1, 2, 3} and stores[3].meta["content_sha256"] == hash3
    torch.testing.assert_close(stores[2].load(), expected(tok, spec(2)), rtol=0, atol=0)
    fwd = Forward()
    harvest([spec(1), spec(2)], tok, fwd, root=tmp_path, progress=False)
    assert fwd.calls == []


def test_forward_without_layers_keyword(tmp_path):
    """A plain forward(tokens) may return more layers than needed; the extras are ignored."""
    tok = tokens()
    calls = []

    def forward(t):
        calls.append(t.shape)
        return {layer: fake_acts(t, layer) for layer in range(4)}

    stores = harvest([spec(2)], tok, forward, root=tmp_path, batch_size=7, progress=False)
    assert calls == [(7, 8)] and entries(tmp_path) == [spec(2).key()]
    torch.testing.assert_close(stores[2].load(), expected(tok, spec(2)), rtol=0, atol=0)


def test_bad_forward_output(tmp_path):
    with pytest.raises(ValueError, match="layer 3"):
        harvest([spec(3)], tokens(), lambda t: {1: fake_acts(t, 1)}, root=tmp_path, progress=False)
    with pytest.raises(ValueError, match="layer 1"):
        harvest([spec(1)], tokens(), lambda t: {1: fake_acts(t, 1)[:, :4]}, root=tmp_path, progress=False)
    assert entries(tmp_path) == []


def test_spec_agreement_and_token_shape(tmp_path):
    with pytest.raises(ValueError, match="context differs"):
        harvest([spec(1), spec(2, context=16)], tokens(), Forward(), root=tmp_path)
    with pytest.raises(ValueError, match="distinct layers"):
        harvest([spec(1), spec(1)], tokens(), Forward(), root=tmp_path)
    with pytest.raises(ValueError, match=r"n_seq >= 7, context=8.*\(6, 8\)"):
        harvest([spec(1)], tokens(6), Forward(), root=tmp_path)
    with pytest.raises(ValueError, match=r"\(10, 4\)"):
        harvest([spec(1)], tokens(10, 4), Forward(), root=tmp_path)
    assert entries(tmp_path) == []


def test_mismatched_meta_and_corrupted_shard_are_errors(tmp_path):
    s = spec(1)
    harvest([s], tokens(), Forward(), root=tmp_path, progress=False)
    folder = tmp_path / s.key()
    meta_file = folder / "meta.json"
    good = meta_file.read_text()
    meta_file.write_text(json.dumps(json.loads(good) | {"layer": 5}))
    with pytest.raises(CacheError, match=f"layer.*delete the folder {folder}"):
        open_cache(s, tmp_path)
    with pytest.raises(CacheError):  # harvest never reuses it silently either
        harvest([s], tokens(), Forward(), root=tmp_path, progress=False)
    meta_file.write_text(good)
    shard = folder / "acts_00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=f"acts_00000.safetensors is corrupted.*{folder}"):
        open_cache(s, tmp_path)
    shard.unlink()
    with pytest.raises(CacheError, match="missing or unreadable"):
        open_cache(s, tmp_path)


def test_interrupted_harvest_leaves_nothing_and_rerun_completes(tmp_path):
    tok = tokens()
    with pytest.raises(RuntimeError, match="forward died"):
        harvest([spec(1), spec(2)], tok, Forward(fail_at=3), root=tmp_path, batch_size=2, progress=False)
    assert entries(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):  # also for interrupts (BaseException)
        harvest([spec(1)], tok, lambda t: (_ for _ in ()).throw(KeyboardInterrupt), root=tmp_path)
    assert entries(tmp_path) == []
    stores = harvest([spec(1), spec(2)], tok, Forward(), root=tmp_path, batch_size=2, progress=False)
    torch.testing.assert_close(stores[2].load(), expected(tok, spec(2)), rtol=0, atol=0)


def test_non_finite_activations(tmp_path):
    with pytest.raises(FloatingPointError, match=r"layer 2, batch 1 \(sequences 3:6\)"):
        harvest([spec(1), spec(2)], tokens(), Forward(nan_at=2), root=tmp_path, batch_size=3, progress=False)
    assert entries(tmp_path) == []
    # finite in float32 but beyond float16's range: the message says so
    with pytest.raises(FloatingPointError, match="overflow"):
        harvest([spec(1, dtype="float16")], tokens(), lambda t: {1: fake_acts(t, 1) * 1e6},
                root=tmp_path, progress=False)
    assert entries(tmp_path) == []


def test_disk_space_check(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(OSError, match=rf"under {tmp_path}: .*needs about \d+ bytes.*1000 bytes"):
        harvest([spec(1)], tokens(), Forward(), root=tmp_path, progress=False)
    assert entries(tmp_path) == []


def test_drop_first_removes_exactly_position_zero(tmp_path):
    tok = tokens()
    kept = harvest([spec(1, drop_first=False)], tok, Forward(), root=tmp_path, progress=False)[1].load()
    dropped = harvest([spec(1)], tok, Forward(), root=tmp_path, progress=False)[1].load()
    assert kept.shape == (7 * 8, D) and dropped.shape == (7 * 7, D)
    pos_kept = kept[:, 1].reshape(7, 8)
    torch.testing.assert_close(pos_kept, torch.arange(8.0).expand(7, 8))  # token order
    torch.testing.assert_close(dropped, kept.reshape(7, 8, D)[:, 1:].reshape(-1, D), rtol=0, atol=0)


def test_sampler_uses_global_generator(tmp_path):
    store = harvest([spec(1)], tokens(), Forward(), root=tmp_path, progress=False)[1]
    data = store.load()
    sample = store.sampler(scale=0.5)
    torch.manual_seed(0)
    a = sample(16)
    b = sample(16)
    torch.manual_seed(0)
    assert torch.equal(sample(16), a) and not torch.equal(a, b)
    assert a.dtype == torch.float32 and a.shape == (16, D)
    torch.manual_seed(0)
    idx = torch.randint(store.n, (16,))
    torch.testing.assert_close(a, data[idx] * 0.5, rtol=0, atol=0)
    with pytest.raises(ValueError, match="scale"):
        store.sampler(scale=0.0)


def test_stale_tmp_folders(tmp_path):
    """Leftover tmp folders are ignored; those of a dead process are removed."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    key = spec(1).key()
    dead = tmp_path / f"{key}.tmp-{child.pid}-0123abcd"
    live = tmp_path / f"{key}.tmp-{os.getpid()}-89abcdef"
    for p in (dead, live):
        p.mkdir()
        (p / "meta.json").write_text("{}")
    assert open_cache(spec(1), tmp_path) is None
    harvest([spec(1)], tokens(), Forward(), root=tmp_path, progress=False)
    assert entries(tmp_path) == sorted([key, live.name])


def test_streamed_sampler_equals_the_in_memory_one(tmp_path, monkeypatch):
    """Memory-mapped shards give the same rows as the loaded cache for the same random state."""
    monkeypatch.setattr(activations, "SHARD_BYTES", 64 * 8 * 2)  # many tiny shards
    spec = activations.CacheSpec(model="m", revision=None, layer=0, context=8, n_tokens=8 * 40,
                                 dtype="float16", corpus="c", drop_first=False)
    tokens = torch.arange(8 * 40).view(40, 8)

    def forward(t, layers=(0,)):
        g = torch.Generator().manual_seed(int(t[0, 0]))
        return {0: torch.randn(*t.shape, 8, generator=g)}

    store = activations.harvest([spec], tokens, forward, root=tmp_path, batch_size=4, progress=False)[0]
    assert len(store.meta["shards"]) > 3
    mem, streamed = store.sampler(2.0, in_memory=True), store.sampler(2.0, in_memory=False)
    torch.manual_seed(0)
    a = [mem(37) for _ in range(5)]
    torch.manual_seed(0)
    b = [streamed(37) for _ in range(5)]
    for x, y in zip(a, b):
        assert x.dtype == y.dtype == torch.float32
        assert torch.equal(x, y)
    with pytest.raises(TypeError, match="in_memory"):
        store.sampler(in_memory="yes")
    # held out: the last rows (over several shards) are never drawn, and tail() returns them
    held = 100
    tail = store.tail(held, scale=2.0)
    assert torch.equal(tail, store.load()[-held:] * 2.0)
    for in_memory in (True, False):
        drawn = store.sampler(2.0, in_memory=in_memory, held_out=held)(5000)
        assert not (drawn.unsqueeze(1) == tail.unsqueeze(0)).all(-1).any()
    with pytest.raises(ValueError, match="held_out"):
        store.sampler(held_out=store.n)
