"""sae_ortho.data.lm on a tiny randomly initialised GPT-NeoX saved to a temporary folder (no downloads)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from sae_ortho.data import lm
from tests.helpers import tiny_gpt_neox


def test_load_local_folder(tiny):
    assert (tiny.d_model, tiny.n_layers, tiny.max_context) == (32, 3, 64)
    assert not tiny.stand_in and tiny.requested.endswith(tiny.name)
    assert tiny.label == tiny.name
    assert not tiny.model.training
    assert next(tiny.model.parameters()).dtype == torch.float32
    assert tiny.tokenizer.pad_token is not None
    assert len(lm.blocks(tiny.model)) == 3


def test_labels():
    kw = {"model": None, "tokenizer": None, "revision": None, "d_model": 1, "n_layers": 1, "max_context": 1}
    real = lm.LoadedModel(name=lm.PYTHIA_70M, requested=lm.PYTHIA_70M, stand_in=False, **kw)
    assert real.label == "Pythia-70M-deduped"
    stand_in = lm.LoadedModel(name=lm.STAND_IN, requested=lm.PYTHIA_70M, stand_in=True, **kw)
    assert "stand-in for Pythia-70M-deduped" in stand_in.label and "SmolLM2" in stand_in.label


def test_residual_stream_matches_hidden_states(tiny, tokens):
    with torch.no_grad():
        hidden = tiny.model(tokens, output_hidden_states=True).hidden_states
    got = lm.residual_stream(tiny, tokens, [1, 0])
    assert list(got) == [1, 0]  # in the order asked for
    for layer in (0, 1):
        assert got[layer].shape == (3, 12, 32)
        torch.testing.assert_close(got[layer], hidden[layer + 1], rtol=0, atol=0)


def test_residual_stream_stops_at_deepest_layer(tiny, tokens):
    calls = [0, 0, 0]
    stack = lm.blocks(tiny.model)
    hooks = [
        stack[i].register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1)) for i in range(3)
    ]
    head = tiny.model.get_output_embeddings().register_forward_hook(lambda *a: calls.append("head"))
    try:
        lm.residual_stream(tiny, tokens, [0, 1])
    finally:
        for h in [*hooks, head]:
            h.remove()
    assert calls == [1, 1, 0]


def test_full_forward(tiny, tokens):
    with torch.no_grad():
        ref = tiny.model.gpt_neox(tokens).last_hidden_state
    torch.testing.assert_close(lm.full_forward(tiny, tokens), ref)


@pytest.mark.parametrize("layers", [[3], [-1], [0, 5], [], [1.0]])
def test_layer_out_of_range(tiny, tokens, layers):
    with pytest.raises(ValueError, match=r"layer"):
        lm.residual_stream(tiny, tokens, layers)


def test_context_too_long(tiny):
    long = torch.zeros(1, 65, dtype=torch.long)
    with pytest.raises(ValueError, match=r"ctx must be an int in \[1, max_context=64\]"):
        lm.residual_stream(tiny, long, [0])
    with pytest.raises(ValueError, match="max_context=64"):
        lm.ce_losses(tiny, long, 0)
    with pytest.raises(ValueError, match=r"tokens must be a LongTensor \[batch, ctx\]"):
        lm.residual_stream(tiny, torch.zeros(4, dtype=torch.long), [0])


def test_unknown_architecture(tmp_path):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8))
    with pytest.raises(ValueError, match="unsupported architecture 'GPT2LMHeadModel'"):
        lm.blocks(gpt2)
    # load_model refuses it at once, not at the first harvest
    folder = tiny_gpt_neox(tmp_path / "neox")
    gpt2.save_pretrained(tmp_path / "gpt2")
    PreTrainedTokenizerFast.from_pretrained(folder).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="unsupported architecture"):
        lm.load_model(str(tmp_path / "gpt2"), fallback=False)


def test_ce_losses(tiny, tokens):
    with torch.no_grad():
        ref = tiny.model(tokens, labels=tokens).loss.item()
    # LayerNorm ignores scaling and constant shifts, so the test splice adds a fixed random direction.
    direction = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(2))
    for layer in (0, 1, 2):
        out = lm.ce_losses(tiny, tokens, layer, {"identity": lambda x: x, "shifted": lambda x: x + direction})
        assert list(out) == ["clean", "zero", "identity", "shifted"]
        assert out["clean"] == pytest.approx(ref, abs=1e-5)
        assert out["identity"] == pytest.approx(out["clean"], abs=1e-5)
        assert abs(out["zero"] - out["clean"]) > 1e-3
        assert abs(out["shifted"] - out["clean"]) > 1e-4


def test_ce_losses_chunk_and_skip_first(tiny, tokens):
    splice = {"noise": lambda x: x + torch.randn(x.shape, generator=torch.Generator().manual_seed(1))}
    a = lm.ce_losses(tiny, tokens, 1, splice, chunk=5)
    b = lm.ce_losses(tiny, tokens, 1, splice, chunk=1000)
    assert a == pytest.approx(b, abs=1e-5)
    c = lm.ce_losses(tiny, tokens, 1, splice, skip_first=False)
    assert c["clean"] == pytest.approx(a["clean"], abs=1e-6)
    assert abs(c["noise"] - a["noise"]) > 1e-5  # position 0 was replaced too


def test_ce_losses_keeps_first_position_clean(tiny, tokens):
    seen = {}

    def spy(x):
        seen["in"] = x.clone()
        x.zero_()  # in place: must not corrupt the clean residual used by later interventions
        return x + 1.0

    out = lm.ce_losses(tiny, tokens, 1, {"spy": spy, "identity": lambda x: x})
    assert out["identity"] == pytest.approx(out["clean"], abs=1e-5)
    torch.testing.assert_close(seen["in"], lm.residual_stream(tiny, tokens, [1])[1])


def test_ce_losses_errors(tiny, tokens):
    with pytest.raises(ValueError, match="reserved name 'zero'"):
        lm.ce_losses(tiny, tokens, 0, {"zero": lambda x: x})
    with pytest.raises(ValueError, match=r"splice 'bad' must return a tensor of shape \(3, 12, 32\)"):
        lm.ce_losses(tiny, tokens, 0, {"bad": lambda x: x[:, 1:]})
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        lm.ce_losses(tiny, tokens, 0, chunk=0)
    with pytest.raises(ValueError, match=r"layer must be an int in \[0, n_layers=3\)"):
        lm.ce_losses(tiny, tokens, 3)
    with pytest.raises(ValueError, match="ctx >= 2"):
        lm.ce_losses(tiny, tokens[:, :1], 0)


def test_ce_loss_recovered():
    assert lm.ce_loss_recovered(clean=2.0, zero=10.0, spliced=2.0) == 1.0
    assert lm.ce_loss_recovered(clean=2.0, zero=10.0, spliced=10.0) == 0.0
    assert lm.ce_loss_recovered(clean=2.0, zero=10.0, spliced=4.0) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="must differ"):
        lm.ce_loss_recovered(2.0, 2.0, 3.0)


def test_no_fallback_offline_names_the_model(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not lm.hub_reachable()
    with pytest.raises(OSError, match="name='no-such-org/no-such-model'.*fallback=True"):
        lm.load_model("no-such-org/no-such-model", fallback=False, cache_dir=tmp_path)
