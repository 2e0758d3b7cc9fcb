"""Tests of sae_ortho.data.lm_data: tiny GPT-NeoX + the offline pydoc-topics corpus -> cached residual streams."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from sae_ortho.data import corpus, lm, lm_data
from sae_ortho.data.lm_data import LMDataConfig
from tests.helpers import tiny_gpt_neox

CTX, TRAIN, EVAL = 16, 2000, 500


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_gpt_neox(tmp_path_factory.mktemp("models") / "neox", n_layers=3, d_model=32)


@pytest.fixture
def cfg(model_dir) -> LMDataConfig:
    return LMDataConfig(model=str(model_dir), layers=(0, 2), context=CTX, train_tokens=TRAIN, eval_tokens=EVAL,
                        corpus="pydoc-topics", dtype="float16", batch_size=32, fallback=False)


class ForwardSpy:
    """Wraps lm.residual_stream, recording the layers of every call (or refusing to run)."""

    def __init__(self, refuse: bool = False):
        self.calls: list[tuple[int, ...]] = []
        self.refuse = refuse
        self.real = lm.residual_stream

    def __call__(self, model, tokens, layers):
        if self.refuse:
            raise AssertionError("the model must not run")
        self.calls.append(tuple(layers))
        return self.real(model, tokens, layers)


# ------------------------------------------------------------------------------------------ config


def test_config_defaults_are_valid():
    c = LMDataConfig()
    assert c.model == lm.PYTHIA_70M and c.layers == (3,) and c.corpus == "python-docs" and c.dtype == "float16"


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"layers": ()}, "layers must be a non-empty tuple of distinct ints >= 0"),
        ({"layers": (-1,)}, "layers must be a non-empty tuple of distinct ints >= 0"),
        ({"layers": (0, 1.0)}, "layers must be a non-empty tuple of distinct ints >= 0"),
        # refused on construction: prepare() used to refuse it only after loading the model and corpus
        ({"layers": (3, 3)}, r"layers must be a non-empty tuple of distinct ints >= 0, got \(3, 3\)"),
        ({"context": 0}, "context must be a positive int"),
        ({"context": True}, "context must be a positive int"),
        ({"context": 16.0}, "context must be a positive int"),
        ({"context": 1}, r"context must be >= 2 \(position 0 is dropped\)"),
        ({"train_tokens": 0}, "train_tokens must be a positive int"),
        ({"eval_tokens": -5}, "eval_tokens must be a positive int"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"corpus": "wikipedia"}, r"corpus must be one of \('python-docs', 'kjv-bible', 'pydoc-topics'\)"),
        ({"dtype": "int8"}, r"dtype must be one of \('float16', 'bfloat16', 'float32'\)"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        LMDataConfig(**kw)


def test_config_rejects_bool_layer():
    with pytest.raises(ValueError, match="layers"):
        LMDataConfig(layers=(True,))


# ----------------------------------------------------------------------------------------- prepare


def test_prepare_harvests_both_layers_and_splits(cfg, tmp_path):
    data = lm_data.prepare(cfg, root=tmp_path, progress=False)
    assert data.cfg == cfg and data.lm.name == "neox" and not data.lm.stand_in
    assert data.corpus.name == "pydoc-topics"
    assert set(data.train) == set(data.eval) == {0, 2}
    n_train, n_eval = math.ceil(TRAIN / CTX), math.ceil(EVAL / CTX)  # 125 and 32 contexts
    assert data.eval_tokens.shape == (n_eval, CTX) and data.eval_tokens.dtype == torch.long
    for layer in (0, 2):
        assert (data.train[layer].n, data.train[layer].d) == (n_train * (CTX - 1), 32)
        assert (data.eval[layer].n, data.eval[layer].d) == (n_eval * (CTX - 1), 32)
    assert isinstance(data.harvest_tokens_per_s, float) and data.harvest_tokens_per_s > 0
    # four cache folders, keyed by layer and split, with what went into them
    folders = sorted((tmp_path / "activations").iterdir())
    assert len(folders) == 4
    metas = [json.loads((f / "meta.json").read_text()) for f in folders]
    assert sorted((m["layer"], m["corpus"].rsplit("/", 1)[0]) for m in metas) == [
        (0, "pydoc-topics/eval"), (0, "pydoc-topics/train"), (2, "pydoc-topics/eval"), (2, "pydoc-topics/train")
    ]
    # the token ids' hash is part of the key: same text -> same suffix for both layers of a split
    suffix = {(m["corpus"].split("/")[1], m["corpus"].rsplit("/", 1)[1]) for m in metas}
    assert len(suffix) == 2 and all(s.startswith("tokens-") for _, s in suffix)
    assert all(m["model"] == "neox" and m["context"] == CTX and m["dtype"] == "float16" and m["drop_first"]
               for m in metas)


def test_prepare_stores_the_residual_stream_without_position_zero(cfg, tmp_path):
    data = lm_data.prepare(cfg, root=tmp_path, progress=False)
    train_tokens = corpus.tokenize(data.lm.tokenizer, data.corpus.train, CTX, TRAIN)
    assert not torch.equal(train_tokens[: len(data.eval_tokens)], data.eval_tokens)  # held-out text
    for split, tokens in (("train", train_tokens), ("eval", data.eval_tokens)):
        ref = lm.residual_stream(data.lm, tokens, [0, 2])
        for layer in (0, 2):
            stored = getattr(data, split)[layer].load()
            want = ref[layer][:, 1:].reshape(-1, 32)
            torch.testing.assert_close(stored, want, rtol=2e-3, atol=2e-3, msg=f"{split} layer {layer}")
            # the rows are positions 1..ctx-1, not 0..ctx-2
            assert not torch.allclose(stored, ref[layer][:, :-1].reshape(-1, 32), rtol=2e-3, atol=2e-3)
    assert data.train[0].meta["dtype"] == "float16"


def test_second_prepare_reuses_the_cache(cfg, tmp_path, monkeypatch):
    spy = ForwardSpy()
    monkeypatch.setattr(lm, "residual_stream", spy)
    first = lm_data.prepare(cfg, root=tmp_path, progress=False)
    assert spy.calls == [(0, 2)] * (4 + 1)  # 125 train contexts in batches of 32, then 32 eval contexts
    monkeypatch.setattr(lm, "residual_stream", ForwardSpy(refuse=True))
    again = lm_data.prepare(cfg, root=tmp_path, progress=False)
    assert again.harvest_tokens_per_s is None
    for split in ("train", "eval"):
        for layer in (0, 2):
            a, b = getattr(first, split)[layer], getattr(again, split)[layer]
            assert a.path == b.path and torch.equal(a.load(), b.load())
    assert torch.equal(first.eval_tokens, again.eval_tokens)


def test_prepare_harvests_only_missing_layers(cfg, tmp_path, monkeypatch):
    lm_data.prepare(dataclasses.replace(cfg, layers=(2,)), root=tmp_path, progress=False)
    spy = ForwardSpy()
    monkeypatch.setattr(lm, "residual_stream", spy)
    data = lm_data.prepare(cfg, root=tmp_path, progress=False)
    assert set(spy.calls) == {(0,)}  # layer 2 came from the cache
    assert data.harvest_tokens_per_s is not None and set(data.train) == {0, 2}


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"layers": (0, 3)}, r"layer must be an int in \[0, n_layers=3\) for neox, got 3"),
        ({"context": 65}, r"ctx must be an int in \[1, max_context=64\] for neox, got 65"),
    ],
)
def test_prepare_checks_the_model_before_harvesting(cfg, tmp_path, monkeypatch, kw, match):
    monkeypatch.setattr(lm, "residual_stream", ForwardSpy(refuse=True))
    with pytest.raises(ValueError, match=match):
        lm_data.prepare(dataclasses.replace(cfg, **kw), root=tmp_path / "root", progress=False)
    assert not (tmp_path / "root" / "activations").exists()


def test_prepare_corpus_too_small(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(lm, "residual_stream", ForwardSpy(refuse=True))
    with pytest.raises(ValueError, match=r"fewer than the \d+ needed for n_tokens=10000000"):
        lm_data.prepare(dataclasses.replace(cfg, train_tokens=10_000_000), root=tmp_path / "root", progress=False)
    assert not (tmp_path / "root" / "activations").exists()


# ------------------------------------------------------------------------------ samplers, throughput


@pytest.fixture
def data(cfg, tmp_path):
    return lm_data.prepare(dataclasses.replace(cfg, layers=(1,)), root=tmp_path, progress=False)


def test_stacked_sampler(data):
    store = data.train[1]
    rows = store.load(torch.float16)
    sample = lm_data.stacked_sampler(store, 3, scale=0.5)
    torch.manual_seed(0)
    a = sample(4)
    b = sample(4)
    assert a.shape == (3, 4, 32) and a.dtype == torch.float32
    assert not torch.equal(a, b)
    torch.manual_seed(0)
    idx = torch.randint(store.n, (12,))  # the global generator draws the rows, 4 per model in turn
    assert torch.equal(a, (rows[idx].float() * 0.5).view(3, 4, 32))
    assert not torch.equal(a[0], a[1])  # independent rows per model
    torch.manual_seed(0)
    assert torch.equal(sample(4), a)
    single = lm_data.stacked_sampler(store, None, scale=2.0)
    torch.manual_seed(1)
    x = single(5)
    torch.manual_seed(1)
    assert x.shape == (5, 32) and torch.equal(x, rows[torch.randint(store.n, (5,))].float() * 2.0)
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        lm_data.stacked_sampler(store, 2, scale=0.0)


def test_throughput(data, monkeypatch):
    spy = ForwardSpy()
    monkeypatch.setattr(lm, "residual_stream", spy)
    out = lm_data.throughput(data.lm, data.eval_tokens[:4], layer=1, repeats=2)
    assert set(out) == {"harvest", "full forward"}
    assert all(math.isfinite(v) and v > 0 for v in out.values())
    assert spy.calls == [(1,)] * 3  # warm-up and two timed passes, stopped at the layer
