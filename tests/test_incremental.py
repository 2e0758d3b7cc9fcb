"""Tests of incremental ("batch approach") training in sae_ortho.training.train and of resuming with a cached search.

With ``TrainConfig.stage_size = m`` the dictionary grows in stages of m latents: during stage s the
latents < s*m are frozen, those >= (s+1)*m are switched off, and the penalty scores the stage's
active latents against every latent so far.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sae_ortho.core.reproducibility import setup
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.ortho import PENALTY_SHAPES, OrthoConfig
from sae_ortho.training.checkpoint import load_checkpoint
from sae_ortho.training.train import Stepper, TrainConfig, stage_bounds, train
from tests.helpers import Interrupt

D, N, M = 3, 6, 3  # input dim, latents, stage size: two stages


def _sample(b):
    """Gaussian inputs from the global generator (as train() expects: it is checkpointed)."""
    return torch.randn(b, D)


def _sample_stacked(b):
    return torch.randn(2, b, D)


def _latent_params(sae, lo, hi):
    """Copies of the parameters that belong to latents [lo, hi)."""
    return {
        "W_enc": sae.W_enc[..., lo:hi].detach().clone(),
        "b_enc": sae.b_enc[..., lo:hi].detach().clone(),
        "W_dec": sae.W_dec[..., lo:hi, :].detach().clone(),
    }


def _assert_same(a, b, what):
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} changed"


def _assert_moved(a, b, what):
    for k in ("W_enc", "W_dec"):
        assert (a[k] - b[k]).abs().max() > 1e-4, f"{what}: {k} did not move"


def _ref_nn(W, rows):
    """Mean |cos| over the nearest neighbours (tie_tol 1e-6) of each row in rows, by loops."""
    out = []
    for i in rows:
        vals = [
            abs(float(W[i] @ W[j]) / float(W[i].norm() * W[j].norm())) for j in range(W.shape[0]) if j != i
        ]
        tied = [v for v in vals if v >= max(vals) - 1e-6]
        out.append(sum(tied) / len(tied))
    return torch.tensor(out, dtype=torch.float64)


@pytest.fixture(autouse=True)
def _setup():
    setup(0, threads=1)


# --- stage_bounds ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,m,steps",
    [(6, 3, 12), (6, 3, 11), (7, 3, 10), (6, 6, 5), (6, 10, 4), (10, 1, 25), (5, 2, 3), (9, 4, 100)],
)
def test_stage_bounds_even_split(n, m, steps):
    cfg = TrainConfig(steps=steps, stage_size=m)
    n_stages = math.ceil(n / m)
    bounds = [stage_bounds(cfg, n, s) for s in range(steps)]
    want = [(s * m, min((s + 1) * m, n)) for s in range(n_stages)]
    # stages in order, each one a contiguous run of steps, all of them used
    runs = [bounds[0]] + [b for prev, b in itertools.pairwise(bounds) if b != prev]
    assert runs == want
    counts = [bounds.count(b) for b in want]
    assert sum(counts) == steps
    assert set(counts) <= {steps // n_stages, -(-steps // n_stages)}  # even: sizes differ by <= 1
    assert bounds[0] == (0, min(m, n)) and bounds[-1][1] == n


def test_stage_bounds_without_stages_and_bad_stage_size():
    cfg = TrainConfig(steps=5)
    assert [stage_bounds(cfg, 7, s) for s in range(5)] == [(0, 7)] * 5
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="stage_size"):
            TrainConfig(stage_size=bad)


# --- training in stages -----------------------------------------------------------------------------


@pytest.mark.parametrize("n_models", [None, 2])
@pytest.mark.parametrize("method", ["chunked", "cached"])
def test_stepper_stages_freeze_and_switch_off(n_models, method):
    steps = 8
    cfg = TrainConfig(
        steps=steps,
        batch_size=32,
        lr=1e-2,
        l1_coeff=0.05,
        ortho_weight=0.5,
        stage_size=M,
        ortho=OrthoConfig(method=method, **({"cache_k": 2, "refresh_every": 3} if method == "cached" else {})),
    )
    sae = SAE(SAEConfig(d=D, n_latents=N, n_models=n_models))
    init = _latent_params(sae, 0, N)
    stepper = Stepper(sae, cfg)
    captured = []
    decode = sae.decode
    sae.decode = lambda codes: (captured.append(codes.detach().clone()), decode(codes))[1]
    sample = _sample if n_models is None else _sample_stacked
    scope_gap = limit_gap = 0.0
    for step in range(steps):
        start, end = stage_bounds(cfg, N, step)
        assert (start, end) == ((0, M) if step < steps // 2 else (M, N))
        before = {k: v.clone() for k, v in _latent_params(sae, 0, N).items()}
        W_before = sae.W_dec.detach().double().clone()
        terms = stepper(sample(32), step)
        codes = captured[-1]
        assert torch.all(codes[..., end:] == 0), f"step {step}: latents >= {end} are not switched off"
        assert (codes[..., start:end] > 0).any()
        after = _latent_params(sae, 0, N)
        _assert_same(
            {k: v[..., :start] if k != "W_dec" else v[..., :start, :] for k, v in after.items()},
            {k: v[..., :start] if k != "W_dec" else v[..., :start, :] for k, v in before.items()},
            f"step {step}: frozen latents < {start}",
        )
        _assert_same(
            {k: v[..., end:] if k != "W_dec" else v[..., end:, :] for k, v in after.items()},
            {k: v[..., end:] if k != "W_dec" else v[..., end:, :] for k, v in before.items()},
            f"step {step}: latents >= {end} before their stage",
        )
        if method == "cached":  # candidates only among the latents that exist so far
            cand = stepper.cache.candidates
            assert cand.shape == (1 if n_models is None else n_models, end, 2)
            assert int(cand.max()) < end
        if n_models is None:
            # the penalty scores this stage's active latents against all latents < end
            active = [i for i in range(start, end) if bool((codes[:, i] > 0).any())]
            f = PENALTY_SHAPES["neglog"]
            want = f(_ref_nn(W_before[:end], active)).mean()
            assert terms["ortho"].item() == pytest.approx(want.item(), abs=1e-5)
            # guards: scoring the earlier latents too, or comparing with all N rows, would differ
            if start > 0:
                every = [i for i in range(end) if bool((codes[:, i] > 0).any())]
                scope_gap = max(scope_gap, abs(f(_ref_nn(W_before[:end], every)).mean() - want).item())
            if end < N:
                limit_gap = max(limit_gap, abs(f(_ref_nn(W_before, active)).mean() - want).item())
        if step == steps // 2 - 1:
            stage0 = _latent_params(sae, 0, N)
    final = _latent_params(sae, 0, N)
    lo = {k: (v[..., :M] if k != "W_dec" else v[..., :M, :]) for k, v in stage0.items()}
    _assert_same(
        lo, {k: (v[..., :M] if k != "W_dec" else v[..., :M, :]) for k, v in final.items()}, "stage 1"
    )
    hi = {k: (v[..., M:] if k != "W_dec" else v[..., M:, :]) for k, v in stage0.items()}
    _assert_same(hi, {k: (v[..., M:] if k != "W_dec" else v[..., M:, :]) for k, v in init.items()}, "stage 0")
    _assert_moved(stage0, init, "stage 0 latents")
    _assert_moved(final, stage0, "stage 1 latents")
    if n_models is None:
        assert scope_gap > 1e-3 and limit_gap > 1e-3


def _train(cfg, folder=None, sample=_sample, seed=0):
    setup(seed, threads=1)
    sae = SAE(SAEConfig(d=D, n_latents=N))
    res = train(sae, sample, cfg, checkpoint_dir=folder, progress=False)
    return sae, res


@pytest.mark.parametrize("method", ["chunked", "cached"])
def test_train_in_two_stages_via_checkpoint(tmp_path, method):
    """Stop after stage 0 (a checkpoint), resume for stage 1: stage-0 latents keep their weights."""
    steps = 12
    cfg = TrainConfig(
        steps=steps,
        batch_size=32,
        lr=1e-2,
        l1_coeff=0.05,
        ortho_weight=0.5,
        stage_size=M,
        log_every=2,
        checkpoint_every=steps // 2,
        ortho=OrthoConfig(method=method, **({"cache_k": 2, "refresh_every": 4} if method == "cached" else {})),
    )
    full, res_full = _train(cfg)  # uninterrupted

    setup(0, threads=1)
    sae = SAE(SAEConfig(d=D, n_latents=N))
    init = _latent_params(sae, 0, N)
    with pytest.raises(KeyboardInterrupt):  # during the first step of stage 1
        train(sae, Interrupt(_sample, at=steps // 2 + 1), cfg, checkpoint_dir=tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == steps // 2
    stage0 = SAE(SAEConfig(d=D, n_latents=N))
    stage0.load_state_dict(state["model"])
    after0 = _latent_params(stage0, 0, N)
    _assert_same(_latent_params(stage0, M, N), _latent_params(sae, M, N), "checkpoint")
    _assert_same(
        _latent_params(stage0, M, N),
        {k: v[..., M:] if k != "W_dec" else v[M:] for k, v in init.items()},
        "latents of stage 1 during stage 0",
    )
    _assert_moved(after0, init, "stage 0 latents")

    setup(123, threads=1)  # a fresh process: other RNG state, fresh model
    resumed = SAE(SAEConfig(d=D, n_latents=N))
    res = train(resumed, _sample, cfg, checkpoint_dir=tmp_path, progress=False)
    assert res.resumed_from == steps // 2
    _assert_same(
        _latent_params(resumed, 0, M), _latent_params(stage0, 0, M), "stage-0 latents during stage 1"
    )
    _assert_moved(_latent_params(resumed, 0, N), after0, "stage 1 latents")
    for (name, a), b in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    assert (res_full.history["ortho"] > 0).all()
    for k in res_full.history:
        assert (res_full.history[k] == res.history[k]).all(), k


@pytest.mark.parametrize("stage_size", [0, M])
def test_cached_resume_is_bit_identical(tmp_path, stage_size):
    cfg = TrainConfig(
        steps=20,
        batch_size=32,
        lr=1e-2,
        l1_coeff=0.05,
        ortho_weight=0.3,
        log_every=3,
        checkpoint_every=7,
        stage_size=stage_size,
        ortho=OrthoConfig(method="cached", cache_k=2, refresh_every=4),
    )
    a, ra = _train(cfg, folder=tmp_path / "a")  # uninterrupted

    setup(0, threads=1)
    b = SAE(SAEConfig(d=D, n_latents=N))
    with pytest.raises(KeyboardInterrupt):  # during step 12; the last checkpoint is at step 7
        train(b, Interrupt(_sample, at=13), cfg, checkpoint_dir=tmp_path / "b", progress=False)
    state = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert state["step"] == 7
    assert state["cache"]["refreshed_at"] == 4  # mid-cycle: the next refresh is due at step 8
    assert state["cache"]["candidates"] is not None

    setup(123, threads=1)
    fresh = SAE(SAEConfig(d=D, n_latents=N))
    rb = train(fresh, _sample, cfg, checkpoint_dir=tmp_path / "b", progress=False)
    assert rb.resumed_from == 7
    for (name, pa), pb in zip(a.named_parameters(), fresh.parameters()):
        assert torch.equal(pa, pb), name
    for k in ra.history:
        assert (ra.history[k] == rb.history[k]).all(), k
    # the cache itself resumed: same candidates and the same refresh schedule
    ca = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["cache"]
    cb = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["cache"]
    assert torch.equal(ca["candidates"], cb["candidates"])
    assert (ca["refreshed_at"], ca["n_refreshes"]) == (cb["refreshed_at"], cb["n_refreshes"])
    n_refreshes = 5 if stage_size == 0 else 6  # steps 0, 4, 8, 12, 16 (+ 10: the stage grew)
    assert ca["n_refreshes"] == n_refreshes
