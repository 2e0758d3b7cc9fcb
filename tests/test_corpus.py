"""sae_ortho.data.corpus: tokenisation into rows, and the always-available pydoc-topics corpus (no downloads)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from sae_ortho.data.corpus import CORPORA, load_corpus, tokenize
from tests.helpers import tiny_gpt_neox


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return AutoTokenizer.from_pretrained(tiny_gpt_neox(tmp_path_factory.mktemp("tiny-neox")))


def test_tokenize_shapes_and_eos(tok):
    docs = ["the quick brown fox", "jumps over the lazy dog", "a sparse autoencoder"]
    rows = tokenize(tok, docs, ctx=3, n_tokens=7)
    assert rows.shape == (3, 3) and rows.dtype.is_floating_point is False
    ids = [tok(d, add_special_tokens=False)["input_ids"] for d in docs]
    eos = tok.eos_token_id
    expected = ids[0] + [eos] + ids[1] + [eos] + ids[2]
    assert rows.flatten().tolist() == expected[:9]
    assert rows.flatten().tolist().count(eos) == 1  # separators between documents, not before the first


def test_tokenize_stops_early(tok):
    calls = []

    class Counting:
        eos_token_id = tok.eos_token_id

        def __call__(self, text, **kw):
            calls.append(text)
            return tok(text, **kw)

    rows = tokenize(Counting(), ["the quick brown fox"] * 100, ctx=4, n_tokens=8)
    assert rows.shape == (2, 4)
    assert len(calls) == 2  # 4 + 1 + 4 tokens are enough


def test_tokenize_errors(tok):
    with pytest.raises(ValueError, match="holds no text"):
        tokenize(tok, [], ctx=4, n_tokens=4)
    with pytest.raises(ValueError, match="holds no text"):
        tokenize(tok, ["", "  "], ctx=4, n_tokens=4)
    docs = ["the quick brown fox", "jumps over the lazy dog"]
    have = sum(len(tok(d, add_special_tokens=False)["input_ids"]) for d in docs) + 1  # + EOS
    assert have < 12
    with pytest.raises(ValueError, match=rf"only {have} tokens, fewer than the 12 needed for n_tokens=10"):
        tokenize(tok, docs, ctx=4, n_tokens=10)
    with pytest.raises(ValueError, match="ctx must be a positive int"):
        tokenize(tok, ["the"], ctx=0, n_tokens=4)
    with pytest.raises(ValueError, match="n_tokens must be a positive int"):
        tokenize(tok, ["the"], ctx=4, n_tokens=-1)


def test_pydoc_topics_offline(tmp_path):
    c = load_corpus("pydoc-topics", cache_dir=tmp_path)
    assert c.name == "pydoc-topics" and "PSF" in c.licence and "pydoc_data" in c.source
    assert len(c.train) > 50 and 1 <= len(c.eval) < len(c.train)
    assert not set(c.train) & set(c.eval)
    assert load_corpus("pydoc-topics", cache_dir=tmp_path) == c  # deterministic split
    assert len(load_corpus("pydoc-topics", cache_dir=tmp_path, eval_fraction=0.0).eval) == 0


def test_load_corpus_errors(tmp_path):
    with pytest.raises(
        ValueError, match=r"name must be one of \('python-docs', 'kjv-bible', 'pydoc-topics'\)"
    ):
        load_corpus("wikipedia", cache_dir=tmp_path)
    assert CORPORA == ("python-docs", "kjv-bible", "pydoc-topics")
    with pytest.raises(TypeError, match="eval_fraction must be a number"):
        load_corpus("pydoc-topics", cache_dir=tmp_path, eval_fraction="0.1")
    with pytest.raises(ValueError, match=r"eval_fraction must be in \[0, 1\)"):
        load_corpus("pydoc-topics", cache_dir=tmp_path, eval_fraction=1.0)


def test_fallback_chain(monkeypatch, tmp_path, capsys):
    from sae_ortho.data import corpus

    real = corpus._documents

    def offline(name, cache_dir):
        if name != "pydoc-topics":
            raise OSError("no network")
        return real(name, cache_dir)

    monkeypatch.setattr(corpus, "_documents", offline)
    c = load_corpus("python-docs", cache_dir=tmp_path)
    assert c.name == "pydoc-topics"
    out = capsys.readouterr().out
    assert "'python-docs' could not be obtained" in out and "'kjv-bible' could not be obtained" in out
    with pytest.raises(OSError, match="corpus 'kjv-bible' could not be obtained: no network"):
        load_corpus("kjv-bible", cache_dir=tmp_path, fallback=False)
