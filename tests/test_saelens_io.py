"""Tests of sae_ortho.models.saelens_io: round trips, loading with SAELens itself, scale folding, errors."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from sae_ortho.core.reproducibility import setup
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.models.saelens_io import load_sae_lens, save_sae_lens
from sae_ortho.training.train import TrainConfig

KINDS = [("relu", None), ("topk", 3)]


def make_sae(kind: str, k: int | None, d: int = 5, n: int = 12) -> SAE:
    """An SAE with non-trivial biases (so the bias algebra is exercised)."""
    sae = SAE(SAEConfig(d, n, kind, k), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        sae.b_enc.copy_(0.1 * torch.randn(n))
        sae.b_dec.copy_(torch.randn(d))
        sae.W_enc.add_(0.2 * torch.randn(d, n))
    return sae


@pytest.mark.parametrize("kind,k", KINDS)
def test_round_trip(tmp_path, kind, k):
    setup(0, threads=1)
    sae = make_sae(kind, k)
    folder = save_sae_lens(sae, tmp_path / "sae", hook_name="blocks.0.hook_resid_post",
                           metadata={"model_name": "tiny", "context_size": 8})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no temporary folder left
    weights = safetensors.torch.load_file(str(folder / "sae_weights.safetensors"))
    assert {n: tuple(t.shape) for n, t in weights.items()} == {
        "W_enc": (5, 12), "b_enc": (12,), "W_dec": (12, 5), "b_dec": (5,)
    }
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == ("standard" if kind == "relu" else "topk")
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (5, 12, "float32")
    assert cfg["metadata"]["model_name"] == "tiny" and cfg["metadata"]["input_scale_folded"] == 1.0
    loaded, cfg2 = load_sae_lens(folder)
    assert cfg2 == cfg and loaded.cfg == sae.cfg
    for name, p in sae.named_parameters():
        assert torch.equal(getattr(loaded, name), p), name
    x = torch.randn(20, 5)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], sae(x)[0])
    # saving again over the folder replaces it
    save_sae_lens(make_sae(kind, k, n=7), folder, hook_name="blocks.0.hook_resid_post")
    assert load_sae_lens(folder)[0].cfg.n_latents == 7


def test_input_scale_folding_algebra(tmp_path):
    """Saved with scale s, the SAE on raw x gives the same codes as the original on s*x and the
    reconstruction divided by s."""
    setup(0, threads=1)
    s = 3.7
    for kind, k in KINDS:
        sae = make_sae(kind, k)
        loaded, _ = load_sae_lens(save_sae_lens(sae, tmp_path / kind, hook_name="blocks.0.hook_resid_post", input_scale=s))
        x = torch.randn(30, 5) * 4
        with torch.no_grad():
            torch.testing.assert_close(loaded.encode(x), sae.encode(s * x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(loaded(x)[0], sae(s * x)[0] / s, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(loaded.W_dec.norm(dim=-1), torch.full((12,), 1 / s))


@pytest.mark.parametrize("kind,k", KINDS)
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_sae_lens_loads_our_folder(tmp_path, kind, k, scale):
    sae_lens = pytest.importorskip("sae_lens")
    setup(0, threads=1)
    ours = make_sae(kind, k)
    meta = {"model_name": "tiny", "context_size": 8, "dataset_path": "toy/train"}
    folder = save_sae_lens(ours, tmp_path / "sae", hook_name="blocks.2.hook_resid_post", input_scale=scale, metadata=meta)
    theirs = sae_lens.SAE.load_from_disk(folder)
    assert theirs.cfg.architecture() == ("standard" if kind == "relu" else "topk")
    assert theirs.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    assert theirs.cfg.metadata.model_name == "tiny"
    # our extra key survives: SAELens read the config as 6.x, not through its pre-6.0 rewrite
    assert theirs.cfg.metadata.input_scale_folded == scale
    x = torch.randn(40, 5) * 3
    with torch.no_grad():
        codes = ours.encode(scale * x)
        torch.testing.assert_close(theirs.encode(x), codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs.decode(codes), ours.decode(codes) / scale, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs(x), ours(scale * x)[0] / scale, atol=1e-5, rtol=1e-5)


def test_save_errors(tmp_path):
    stacked = SAE(SAEConfig(4, 6, n_models=2))
    with pytest.raises(ValueError, match=r"select one first \(sae.select\(i\)\)"):
        save_sae_lens(stacked, tmp_path / "a", hook_name="blocks.0.hook_resid_post")
    save_sae_lens(stacked.select(1), tmp_path / "a", hook_name="blocks.0.hook_resid_post")
    sae = make_sae("relu", None)
    for bad in (0.0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="input_scale"):
            save_sae_lens(sae, tmp_path / "b", hook_name="blocks.0.hook_resid_post", input_scale=bad)
    with pytest.raises(ValueError, match="JSON"):
        save_sae_lens(sae, tmp_path / "b", hook_name="blocks.0.hook_resid_post", metadata={"x": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_load_errors(tmp_path):
    sae = make_sae("topk", 3)
    folder = save_sae_lens(sae, tmp_path / "sae", hook_name="blocks.0.hook_resid_post")
    cfg_file, w_file = folder / "cfg.json", folder / "sae_weights.safetensors"
    cfg, weights = json.loads(cfg_file.read_text()), safetensors.torch.load_file(str(w_file))
    # the weights are rewritten below: drop their recorded hash (as in a folder SAELens wrote)
    # so that the checks of names and shapes are reached (tests/test_faults.py covers the hash)
    del cfg["metadata"]["weights_sha256"]

    def write(cfg_over=None, weights_new=None):
        cfg_file.write_text(json.dumps(cfg | (cfg_over or {})))
        safetensors.torch.save_file(weights_new or weights, str(w_file))

    write({"architecture": "jumprelu"})
    with pytest.raises(ValueError, match="architecture must be one of"):
        load_sae_lens(folder)
    write({"normalize_activations": "layer_norm"})
    with pytest.raises(ValueError, match="normalize_activations"):
        load_sae_lens(folder)
    write({"k": None})
    with pytest.raises(ValueError, match="cfg.json: k must be a JSON integer >= 1, got null"):
        load_sae_lens(folder)
    write(weights_new=weights | {"extra": torch.zeros(2)})
    with pytest.raises(ValueError, match="tensors must be exactly"):
        load_sae_lens(folder)
    write(weights_new=weights | {"W_dec": torch.zeros(12, 4)})
    with pytest.raises(ValueError, match=r"W_dec must have shape \[12, 5\]"):
        load_sae_lens(folder)
    write()
    load_sae_lens(folder)
    w_file.unlink()
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors is missing"):
        load_sae_lens(folder)


def test_load_without_b_dec_on_input(tmp_path):
    """apply_b_dec_to_input=false (SAELens encodes x @ W_enc + b_enc) is folded into b_enc."""
    setup(0, threads=1)
    sae = make_sae("relu", None)
    folder = save_sae_lens(sae, tmp_path / "sae", hook_name="blocks.0.hook_resid_post")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps(cfg | {"apply_b_dec_to_input": False}))
    loaded, _ = load_sae_lens(folder)
    x = torch.randn(10, 5)
    with torch.no_grad():
        want = torch.relu(x @ sae.W_enc + sae.b_enc)
        torch.testing.assert_close(loaded.encode(x), want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [
        ("apply_b_dec_to_input", "false", "boolean"),  # a truthy string: used to read as true
        ("apply_b_dec_to_input", 0, "boolean"),
        ("rescale_acts_by_decoder_norm", "no", "boolean"),
        ("d_in", 4.7, "integer"),  # used to become 4
        ("d_in", 5.0, "integer"),
        ("d_in", True, "integer"),
        ("d_sae", "12", "integer"),
        ("k", 3.0, "integer"),
    ],
)
def test_load_reads_cfg_json_by_type(tmp_path, field, value, kind):
    folder = save_sae_lens(make_sae("topk", 3), tmp_path / "sae", hook_name="blocks.0.hook_resid_post")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps(cfg | {field: value}))
    with pytest.raises(ValueError, match=rf"sae/cfg\.json: {field} must be a JSON {kind}.*, got {json.dumps(value)}$"):
        load_sae_lens(folder)


@pytest.mark.parametrize("name", ["W_enc", "b_enc", "W_dec", "b_dec"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_load_refuses_non_finite_weights_naming_the_tensor(tmp_path, name, value):
    folder = save_sae_lens(make_sae("relu", None), tmp_path / "sae", hook_name="blocks.0.hook_resid_post")
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["metadata"]["weights_sha256"]  # as in a folder SAELens wrote (the hash is tested elsewhere)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    weights = safetensors.torch.load_file(str(folder / "sae_weights.safetensors"))
    weights[name].view(-1)[0] = value
    safetensors.torch.save_file(weights, str(folder / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match=rf"tensor {name} contains non-finite values"):
        load_sae_lens(folder)


def test_every_sae_names_its_hook_and_training(tmp_path):
    """SAELens skips an SAE without a hook_name ("No hook found for None"): it is a required argument."""
    sae = make_sae("relu", None)
    with pytest.raises(TypeError, match="hook_name"):
        save_sae_lens(sae, tmp_path / "a", metadata={"model_name": "m"})
    for bad in (None, "", 3):
        with pytest.raises(ValueError, match=r"hook_name must be a non-empty str"):
            save_sae_lens(sae, tmp_path / "a", hook_name=bad)
    with pytest.raises(ValueError, match=r"differs from hook_name='blocks.1.hook_resid_post'"):
        save_sae_lens(sae, tmp_path / "a", hook_name="blocks.1.hook_resid_post", metadata={"hook_name": "blocks.2.x"})
    with pytest.raises(ValueError, match="training must be a config dataclass, a dict or None"):
        save_sae_lens(sae, tmp_path / "a", hook_name="toy", training="lr=3e-4")
    assert not (tmp_path / "a").exists()  # refused before anything is written
    train_cfg = TrainConfig(steps=7, batch_size=3)
    folder = save_sae_lens(sae, tmp_path / "a", hook_name="blocks.1.hook_resid_post", metadata={"model_name": "m"},
                           training={"sae": sae.cfg, "train": train_cfg})
    meta = json.loads((folder / "cfg.json").read_text())["metadata"]
    assert meta["hook_name"] == "blocks.1.hook_resid_post"
    assert meta["training_config"]["train"]["steps"] == 7
    assert meta["training_config"]["train"]["lr"] == train_cfg.lr
    assert meta["training_config"]["sae"]["n_latents"] == sae.cfg.n_latents
