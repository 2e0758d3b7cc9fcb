"""Tests of sae_ortho.training.train: determinism, checkpoint/resume, failure handling, per-model hyperparameters."""

from __future__ import annotations

import math

import pytest
import torch

from sae_ortho.core.reproducibility import setup
from sae_ortho.data.toy import ToyData, ToyDataConfig
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.ortho import OrthoConfig
from sae_ortho.training.checkpoint import load_checkpoint
from sae_ortho.training.train import TrainConfig, train
from tests.helpers import Interrupt

D, N = 4, 6


def _data():
    return ToyData(
        ToyDataConfig(n_features=5, d=D, embedding="random", p=0.3),
        generator=torch.Generator().manual_seed(0),
    )


def _sampler(data, n_models=None):
    """A sample function drawing from the global generator (as train() expects)."""
    if n_models is None:
        return lambda b: data.sample(b).x
    return lambda b: torch.stack([data.sample(b).x for _ in range(n_models)])


CFG = TrainConfig(steps=24, batch_size=32, lr=1e-2, l1_coeff=0.05, ortho_weight=0.1, log_every=4)


SAE_CFG = SAEConfig(d=D, n_latents=N)


def _run(cfg=CFG, sae_cfg=SAE_CFG, sample=None, folder=None, seed=0):
    setup(seed, threads=1)
    data = _data()
    sae = SAE(sae_cfg)
    res = train(sae, sample or _sampler(data, sae_cfg.n_models), cfg, checkpoint_dir=folder, progress=False)
    return sae, res


def test_same_seed_bit_identical():
    a, ra = _run()
    b, rb = _run()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    for k in ra.history:
        assert (ra.history[k] == rb.history[k]).all(), k
    c, _ = _run(seed=1)
    assert not torch.equal(a.W_dec, c.W_dec)


def test_training_changes_weights_and_keeps_unit_decoder():
    setup(0, threads=1)
    sae = SAE(SAEConfig(d=D, n_latents=N))
    w0 = sae.W_dec.detach().clone()
    res = train(sae, _sampler(_data()), CFG, progress=False)
    assert not torch.allclose(sae.W_dec, w0)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(N))
    assert res.resumed_from == 0
    assert res.history["step"].tolist() == [4, 8, 12, 16, 20, 24]
    assert res.history["loss"].shape == (6,)
    for k in ("loss", "recon", "l1", "ortho", "l0"):
        assert k in res.history
    assert (res.history["ortho"] > 0).all()


def test_loss_decreases_on_toy_data():
    cfg = TrainConfig(steps=200, batch_size=64, lr=1e-2, l1_coeff=0.01, log_every=10)
    _, res = _run(cfg)
    loss = res.history["loss"]
    assert loss[-5:].mean() < 0.5 * loss[:2].mean()


def test_resume_after_interrupt_is_bit_identical(tmp_path):
    cfg = TrainConfig(
        steps=20, batch_size=32, lr=1e-2, l1_coeff=0.05, ortho_weight=0.1, log_every=3, checkpoint_every=5
    )
    a, ra = _run(cfg)  # uninterrupted (no folder)

    setup(0, threads=1)
    data = _data()
    b = SAE(SAEConfig(d=D, n_latents=N))
    interrupted = Interrupt(_sampler(data), at=13)  # during step 12, after the step-10 checkpoint
    with pytest.raises(KeyboardInterrupt):
        train(b, interrupted, cfg, checkpoint_dir=tmp_path, progress=False)
    assert interrupted.calls == 13
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 10
    assert not torch.equal(b.W_dec, a.W_dec)

    # A fresh process would start with some other RNG state and a fresh model object.
    setup(123, threads=1)
    fresh = SAE(SAEConfig(d=D, n_latents=N))
    rb = train(fresh, _sampler(data), cfg, checkpoint_dir=tmp_path, progress=False)
    assert rb.resumed_from == 10
    for (name, pa), pb in zip(a.named_parameters(), fresh.parameters()):
        assert torch.equal(pa, pb), name
    for k in ra.history:  # the history survives the interruption too
        assert (ra.history[k] == rb.history[k]).all(), k
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no .tmp left

    # A finished run resumes to a no-op with the same weights.
    again = SAE(SAEConfig(d=D, n_latents=N))
    rc = train(again, _sampler(data), cfg, checkpoint_dir=tmp_path, progress=False)
    assert rc.resumed_from == 20
    assert torch.equal(again.W_dec, a.W_dec)


def test_resume_stacked_bit_identical(tmp_path):
    cfg = TrainConfig(
        steps=12,
        batch_size=16,
        lr=(1e-2, 3e-3),
        l1_coeff=(0.05, 0.1),
        ortho_weight=(0.0, 0.2),
        log_every=2,
        checkpoint_every=4,
    )
    sae_cfg = SAEConfig(d=D, n_latents=N, n_models=2)
    a, _ = _run(cfg, sae_cfg)
    setup(0, threads=1)
    data = _data()
    b = SAE(sae_cfg)
    with pytest.raises(KeyboardInterrupt):
        train(b, Interrupt(_sampler(data, 2), at=7), cfg, checkpoint_dir=tmp_path, progress=False)
    fresh = SAE(sae_cfg)
    assert train(fresh, _sampler(data, 2), cfg, checkpoint_dir=tmp_path, progress=False).resumed_from == 4
    for pa, pb in zip(a.parameters(), fresh.parameters()):
        assert torch.equal(pa, pb)


def test_checkpoint_from_other_config_refused(tmp_path):
    _run(CFG, folder=tmp_path)
    assert (tmp_path / "checkpoint.pt").exists()
    other = TrainConfig(steps=24, batch_size=32, lr=2e-2, l1_coeff=0.05, ortho_weight=0.1, log_every=4)
    with pytest.raises(ValueError, match="different configuration"):
        _run(other, folder=tmp_path)
    with pytest.raises(ValueError, match="different configuration"):
        _run(CFG, sae_cfg=SAEConfig(d=D, n_latents=N + 1), folder=tmp_path)


def test_nan_raises_with_step_and_keeps_checkpoint(tmp_path):
    cfg = TrainConfig(steps=20, batch_size=16, lr=1e-2, log_every=5, checkpoint_every=4)
    setup(0, threads=1)
    data = _data()
    calls = {"n": 0}

    def sample(b):
        calls["n"] += 1
        x = data.sample(b).x
        if calls["n"] == 11:  # the batch of step 10 (0-based)
            x[3, 1] = float("nan")
        return x

    sae = SAE(SAEConfig(d=D, n_latents=N))
    with pytest.raises(FloatingPointError, match=r"step 10\b"):
        train(sae, sample, cfg, checkpoint_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 8
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    restored = SAE(SAEConfig(d=D, n_latents=N))
    restored.load_state_dict(state["model"])


def test_stacked_per_model_hyperparameters_match_single_runs():
    """A stack of 2 with per-model lr, l1 and ortho weight trains like 2 separate single runs.

    Not bit-exact (the stack takes an Adam step with lr=1 and rescales the update, which rounds
    differently from Adam with the model's lr), so compared to a tight tolerance.
    """
    lrs, l1s, ows = (1e-2, 2e-3), (0.05, 0.2), (0.0, 0.3)
    steps, batch = 30, 32
    setup(0, threads=1)
    data = _data()
    stack = SAE(SAEConfig(d=D, n_latents=N, n_models=2))
    singles = [stack.select(i) for i in range(2)]

    def same_batch_twice(b):
        x = data.sample(b).x
        return torch.stack([x, x])

    cfg = TrainConfig(steps=steps, batch_size=batch, lr=lrs, l1_coeff=l1s, ortho_weight=ows, log_every=10)
    setup(0, threads=1)
    train(stack, same_batch_twice, cfg, progress=False)
    for i, single in enumerate(singles):
        setup(0, threads=1)
        w0 = single.W_dec.detach().clone()
        cfg_i = TrainConfig(
            steps=steps, batch_size=batch, lr=lrs[i], l1_coeff=l1s[i], ortho_weight=ows[i], log_every=10
        )
        train(single, _sampler(data), cfg_i, progress=False)
        assert (single.W_dec - w0).abs().max() > 1e-2  # it did move
        for name, p in single.named_parameters():
            torch.testing.assert_close(getattr(stack, name)[i], p, rtol=0, atol=1e-6, msg=name)


def test_stacked_tiny_lr_barely_moves():
    setup(0, threads=1)
    data = _data()
    stack = SAE(SAEConfig(d=D, n_latents=N, n_models=2))
    before = {name: p.detach().clone() for name, p in stack.named_parameters()}
    cfg = TrainConfig(steps=20, batch_size=32, lr=(1e-12, 1e-2), l1_coeff=0.05, ortho_weight=0.1, log_every=5)
    train(stack, _sampler(data, 2), cfg, progress=False)
    for name, p in stack.named_parameters():
        assert (p[0] - before[name][0]).abs().max() < 1e-6, name  # only rounding from renormalising W_dec
    assert (stack.W_dec[1] - before["W_dec"][1]).abs().max() > 1e-2
    assert (stack.W_enc[1] - before["W_enc"][1]).abs().max() > 1e-2
    assert (stack.b_dec[1] - before["b_dec"][1]).abs().max() > 1e-3


def test_topk_training_runs():
    sae, res = _run(
        TrainConfig(steps=10, batch_size=16, log_every=5),
        sae_cfg=SAEConfig(d=D, n_latents=N, kind="topk", k=2),
    )
    assert (res.history["l0"] <= 2).all()
    assert torch.isfinite(sae.W_dec).all()


def test_per_model_length_mismatch_in_train():
    sae = SAE(SAEConfig(d=D, n_latents=N, n_models=2))
    for kw, name in (
        ({"lr": (1e-3, 1e-3, 1e-3)}, "lr"),
        ({"l1_coeff": (0.1, 0.2, 0.3)}, "l1_coeff"),
        ({"ortho_weight": (0.0, 0.1, 0.2)}, "ortho_weight"),
    ):
        with pytest.raises(ValueError, match=f"{name} needs 1 value or one per model"):
            train(sae, lambda b: torch.zeros(2, b, D), TrainConfig(steps=1, **kw), progress=False)
    single = SAE(SAEConfig(d=D, n_latents=N))
    with pytest.raises(ValueError, match="lr needs 1 value"):
        train(single, lambda b: torch.zeros(b, D), TrainConfig(steps=1, lr=(1e-3, 2e-3)), progress=False)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": -1}, "batch_size"),
        ({"log_every": 0}, "log_every"),
        ({"checkpoint_every": -1}, "checkpoint_every"),
        ({"lr": -1.0}, "lr"),
        ({"lr": 0.0}, "lr"),
        ({"lr": (1e-3, -1e-3)}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"l1_coeff": -0.1}, "l1_coeff"),
        ({"ortho_weight": math.inf}, "ortho_weight"),
        ({"ortho_weight": -0.1}, "ortho_weight"),  # default shape neglog is unbounded
        ({"ortho_weight": (0.1, -0.1), "ortho": OrthoConfig(shape="c2_over_1mc")}, "ortho_weight"),
        ({"lr": ()}, "lr"),
    ],
)
def test_bad_train_config(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_negative_ortho_weight_allowed_with_bounded_shape():
    TrainConfig(ortho_weight=-0.1, ortho=OrthoConfig(shape="sigmoid"))
    TrainConfig(ortho_weight=(0.1, -0.1), ortho=OrthoConfig(shape="square"))


# ------------------------------------------------------------------------------- issue 26 checks
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_with_the_orthogonality_loss_trains_and_checkpoints_finite_weights(tmp_path, dtype):
    """The penalty is computed in float32: in half precision its gradient used to be NaN (float16: a
    NaN checkpoint "kept"; bfloat16: a TypeError when the history was recorded at step 49)."""
    setup(0, threads=1)
    sae = SAE(SAEConfig(d=D, n_latents=N)).to(dtype)
    cfg = TrainConfig(steps=60, batch_size=8, ortho_weight=0.1, checkpoint_every=20)
    res = train(sae, lambda b: torch.randn(b, D, dtype=dtype), cfg, checkpoint_dir=tmp_path, progress=False)
    assert res.history["loss"].dtype.kind == "f" and len(res.history["loss"]) == 2  # steps 50 and 60
    assert all(torch.isfinite(p).all() and p.dtype == dtype for p in sae.parameters())
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 60 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_non_finite_gradient_stops_training_and_keeps_the_last_checkpoint(tmp_path):
    setup(0, threads=1)
    sae = SAE(SAEConfig(d=D, n_latents=N))
    calls = {"n": 0}

    def poison(g):  # a finite loss whose gradient is NaN, from step 6 on
        calls["n"] += 1
        return g * float("nan") if calls["n"] > 6 else g

    sae.W_dec.register_hook(poison)
    cfg = TrainConfig(steps=12, batch_size=8, checkpoint_every=4)
    with pytest.raises(FloatingPointError, match=r"^non-finite gradient at step 6 \(parameters \['W_dec'\].*last checkpoint kept"):
        train(sae, _sampler(_data()), cfg, checkpoint_dir=tmp_path, progress=False)
    assert torch.isfinite(sae.W_dec).all()  # the step was not taken
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_non_finite_gradient_of_a_stack_names_the_model():
    sae = SAE(SAEConfig(d=D, n_latents=N, n_models=3))
    sae.b_enc.register_hook(lambda g: g.index_fill(0, torch.tensor([1]), float("inf")))
    with pytest.raises(FloatingPointError, match=r"parameters \['b_enc'\], models \[1\]"):
        train(sae, _sampler(_data(), 3), TrainConfig(steps=2, batch_size=8), progress=False)


def test_train_refuses_a_dict_for_its_config():
    with pytest.raises(TypeError, match=r"^cfg must be a TrainConfig, got dict \{'steps': 3\}$"):
        train(SAE(SAE_CFG), _sampler(_data()), {"steps": 3}, progress=False)


@pytest.mark.parametrize("n_models", [None, 2])
def test_a_batch_with_fewer_rows_than_the_batch_size_is_refused(n_models):
    """A 1-row batch at batch_size 4 used to train silently."""
    lead = () if n_models is None else (n_models,)
    sae = SAE(SAEConfig(d=D, n_latents=N, n_models=n_models))
    with pytest.raises(ValueError, match=r"^the sampled batch x has 1 row\(s\) .* fewer than batch_size=4"):
        train(sae, lambda b: torch.randn(*lead, 1, D), TrainConfig(steps=2, batch_size=4), progress=False)
