"""Tests of sae_ortho.training.recipe and its use by the trainer: schedules, b_dec init, clipping, dead-latent
remedies (resampling, AuxK), free decoder norms, snapshots and exact resume with the recipe on."""

from __future__ import annotations

import pytest
import torch

from sae_ortho.analysis.geometry import geometric_median
from sae_ortho.core.reproducibility import setup
from sae_ortho.data.toy import ToyData, ToyDataConfig
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.training.recipe import Recipe, aux_k_loss, resample_dead
from sae_ortho.training.train import Stepper, TrainConfig, train
from tests.helpers import Interrupt

D, N = 6, 10


def _sample(n_models=None, seed=0):
    data = ToyData(ToyDataConfig(n_features=8, d=D, embedding="random", p=0.3), generator=torch.Generator().manual_seed(seed))
    if n_models is None:
        return lambda b: data.sample(b).x + 3.0  # an offset, so b_dec init matters
    return lambda b: torch.stack([data.sample(b).x + 3.0 for _ in range(n_models)])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"decay_steps": 1.5}, "decay_steps"),
        ({"grad_clip": -1.0}, "grad_clip"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"grad_clip": float("nan")}, "grad_clip"),
        ({"resample_every": 0}, "resample_every"),
        ({"resample_every": 10, "dead_steps": 20}, "dead_steps"),
        ({"aux_k": 0}, "aux_k"),
        ({"aux_coeff": 0.0}, "aux_coeff"),
        ({"b_dec_init": "median"}, "b_dec_init"),
        ({"decoder_norm": "unitnorm"}, "decoder_norm"),
        ({"init_decoder_norm": 0.1}, "init_decoder_norm"),
        ({"dead_steps": True}, "dead_steps"),
        ({"b_dec_init_samples": 0}, "b_dec_init_samples"),
    ],
)
def test_bad_recipe_names_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Recipe(**kwargs)


def test_schedules_must_fit_into_training():
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(steps=100, recipe=Recipe(warmup_steps=80, decay_steps=30))
    with pytest.raises(ValueError, match="l1_warmup_steps"):
        TrainConfig(steps=100, recipe=Recipe(l1_warmup_steps=101))
    with pytest.raises(TypeError, match="recipe"):
        TrainConfig(steps=100, recipe={"warmup_steps": 1})
    with pytest.raises(ValueError, match="snapshot_steps"):
        TrainConfig(steps=100, snapshot_steps=(0, 50))


@pytest.mark.parametrize(
    ("kind", "recipe", "match"),
    [
        ("topk", Recipe(resample_every=100, dead_steps=50), "resample_every"),
        ("relu", Recipe(aux_k=3), "aux_k"),
        ("topk", Recipe(decoder_norm="free"), "decoder_norm"),
        ("topk", Recipe(l1_warmup_steps=10), "l1_warmup_steps=10 has no effect with kind='topk'"),
    ],
)
def test_recipe_checked_against_the_sae_kind_before_training(kind, recipe, match):
    sae = SAE(SAEConfig(D, N, kind=kind, k=2 if kind == "topk" else None))
    with pytest.raises(ValueError, match=match):
        train(sae, _sample(), TrainConfig(steps=200, recipe=recipe), progress=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"aux_coeff": 0.5}, r"^aux_coeff=0.5 has no effect with aux_k=None \(no AuxK loss\); .* 0.03125 or use aux_k$"),
        ({"b_dec_init_samples": 512}, r"^b_dec_init_samples=512 has no effect with b_dec_init='zeros'"),
    ],
)
def test_an_option_of_a_remedy_that_is_off_is_refused(kwargs, match):
    """It would be silently ignored (Recipe(aux_coeff=0.5) used to train without AuxK)."""
    with pytest.raises(ValueError, match=match):
        Recipe(**kwargs)
    Recipe(aux_k=4, aux_coeff=0.5)
    Recipe(b_dec_init="mean", b_dec_init_samples=512)


@pytest.mark.parametrize("resample_every", [10, 20])
def test_resampling_scheduled_after_the_last_step_is_refused(resample_every):
    """Resampling runs after steps k * resample_every < steps: none would happen."""
    with pytest.raises(ValueError, match=rf"^resample_every={resample_every} must be < steps=10: no resampling"):
        TrainConfig(steps=10, recipe=Recipe(resample_every=resample_every, dead_steps=5))
    TrainConfig(steps=resample_every + 1, recipe=Recipe(resample_every=resample_every, dead_steps=5))


def test_lm_recipe_of_one_step_does_not_schedule_resampling():
    from sae_ortho.training.recipe import lm_recipe

    assert lm_recipe("relu", 1, D).resample_every is None
    TrainConfig(steps=1, recipe=lm_recipe("relu", 1, D))
    assert lm_recipe("relu", 100, D).resample_every == 20


def test_lr_and_l1_schedules():
    r = Recipe(warmup_steps=4, decay_steps=5, l1_warmup_steps=10)
    lr = [r.lr_factor(s, 20) for s in range(20)]
    assert lr[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lr[4:15] == [1.0] * 11
    assert lr[15:] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert [r.l1_factor(s) for s in (0, 4, 9, 10, 50)] == pytest.approx([0.1, 0.5, 1.0, 1.0, 1.0])
    off = Recipe()
    assert all(off.lr_factor(s, 20) == 1.0 and off.l1_factor(s) == 1.0 for s in range(20))


def test_geometric_median_minimises_the_sum_of_distances_and_resists_outliers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g)
    x[:20] += 100.0  # 10% outliers drag the mean, not the median
    m = geometric_median(x)

    def cost(c):
        return (x - c).norm(dim=-1).sum()

    for _ in range(20):
        assert cost(m) <= cost(m + 0.05 * torch.randn(3, generator=g)) + 1e-4
    assert m.norm() < 2.0 < x.mean(0).norm()
    stacked = geometric_median(torch.stack([x, x + 1]))
    torch.testing.assert_close(stacked[0], m)
    torch.testing.assert_close(stacked[1], m + 1, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="shape"):
        geometric_median(torch.zeros(0, 3))


@pytest.mark.parametrize("how", ["mean", "geometric_median"])
def test_b_dec_initialised_from_the_data(how):
    setup(0, threads=1)
    sae = SAE(SAEConfig(D, N))
    cfg = TrainConfig(steps=1, batch_size=8, lr=1e-12, recipe=Recipe(b_dec_init=how, b_dec_init_samples=512))
    sample = _sample()
    torch.manual_seed(5)
    ref = sample(512)
    want = ref.mean(0) if how == "mean" else geometric_median(ref)
    torch.manual_seed(5)
    train(sae, sample, cfg, progress=False)
    torch.testing.assert_close(sae.b_dec.detach(), want, atol=1e-4, rtol=0)


def test_gradient_clipping_per_model_of_a_stack():
    """Clipping a stack clips every model by its own norm: the stack equals its models trained alone."""
    recipe = Recipe(grad_clip=0.05)
    cfg = TrainConfig(steps=30, batch_size=16, lr=1e-2, l1_coeff=0.05, recipe=recipe)
    setup(0, threads=1)
    stack = SAE(SAEConfig(D, N, n_models=2), generator=torch.Generator().manual_seed(1))
    singles = [stack.select(i) for i in range(2)]
    xs = _sample(2)(16 * 30).view(2, 30, 16, D)
    it = iter(range(30))
    train(stack, lambda b: xs[:, next(it)], cfg, progress=False)
    for i, single in enumerate(singles):
        it_i = iter(range(30))
        train(single, lambda b, i=i, it_i=it_i: xs[i, next(it_i)], cfg, progress=False)
        torch.testing.assert_close(stack.W_dec[i], single.W_dec, atol=2e-5, rtol=0)
    # and clipping is active: the same run without it ends elsewhere
    setup(0, threads=1)
    free = SAE(SAEConfig(D, N, n_models=2), generator=torch.Generator().manual_seed(1))
    it = iter(range(30))
    train(free, lambda b: xs[:, next(it)], TrainConfig(steps=30, batch_size=16, lr=1e-2, l1_coeff=0.05), progress=False)
    assert not torch.allclose(free.W_dec, stack.W_dec, atol=1e-3)


def test_clip_bounds_the_update_norm():
    setup(0, threads=1)
    sae = SAE(SAEConfig(D, N))
    stepper = Stepper(sae, TrainConfig(steps=1, batch_size=64, l1_coeff=0.0, recipe=Recipe(grad_clip=1e-3)))
    x = 100 * torch.randn(64, D)
    stepper(x, 0)
    norm = torch.sqrt(sum(p.grad.square().sum() for p in sae.parameters()))
    assert norm <= 1e-3 * 1.0001


def test_aux_k_loss_reaches_only_dead_latents():
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(5, N, generator=g, requires_grad=True)
    W = torch.randn(N, D, generator=g)
    resid = torch.randn(5, D, generator=g)
    dead = torch.zeros(N, dtype=torch.bool)
    assert float(aux_k_loss(pre.detach(), W, resid, dead, 3, 1.0)) == 0.0
    dead[[1, 4, 7]] = True
    loss = aux_k_loss(pre, W, resid, dead, 2, 0.5)
    loss.backward()
    assert (pre.grad[:, ~dead] == 0).all() and (pre.grad[:, dead] != 0).any()
    # by hand: the top 2 dead pre-activations (raw values) reconstruct the residual; scale min(3/2, 1)
    acts = torch.zeros(5, N)
    p = pre.detach().masked_fill(~dead, float("-inf"))
    v, i = p.topk(2, dim=-1)
    acts.scatter_(-1, i, v)
    want = 0.5 * (acts @ W - resid).square().sum(-1).mean()
    torch.testing.assert_close(loss.detach(), want)
    # few dead latents: the loss is scaled down by n_dead / aux_k
    small = aux_k_loss(pre.detach(), W, resid, dead, 6, 1.0)
    acts = torch.zeros(5, N)
    v, i = p.topk(6, dim=-1)
    acts.scatter_(-1, i, torch.where(torch.isfinite(v), v, torch.zeros_like(v)))
    torch.testing.assert_close(small, 0.5 * (acts @ W - resid).square().sum(-1).mean())


def test_topk_with_aux_k_revives_dead_latents():
    """A TopK SAE with half its latents pushed dead: AuxK gives them gradient, plain TopK does not."""
    def run(aux_k):
        setup(0, threads=1)
        sae = SAE(SAEConfig(D, N, kind="topk", k=2), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            sae.b_enc[5:] = -50.0  # never in the top k
        enc0 = sae.W_enc.detach().clone()
        recipe = Recipe(aux_k=aux_k, dead_steps=5)
        res = train(sae, _sample(), TrainConfig(steps=40, batch_size=32, lr=1e-2, recipe=recipe, log_every=5),
                    progress=False)
        return (sae.W_enc.detach() - enc0)[:, 5:].abs().max(), res.history

    moved, hist = run(N)  # every dead latent takes part
    assert moved > 1e-3 and "aux" in hist and (hist["aux"][-1] > 0)
    still, hist0 = run(None)
    assert still == 0 and "aux" not in hist0
    assert hist0["dead"][-1] >= 0.5  # the five pushed-down latents stay dead without AuxK


def test_resample_dead_reinitialises_only_dead_latents():
    setup(0, threads=1)
    sae = SAE(SAEConfig(D, N))
    opt = torch.optim.Adam(sae.parameters())
    x = torch.randn(32, D)
    sae(x)[0].square().sum().backward()
    opt.step()
    before = {k: v.detach().clone() for k, v in sae.named_parameters()}
    dead = torch.zeros(N, dtype=torch.bool)
    dead[[2, 6]] = True
    done = resample_dead(sae, x, dead, opt)
    assert done.tolist() == dead.tolist()
    alive = ~dead
    assert torch.equal(sae.W_dec[alive], before["W_dec"][alive])
    assert torch.equal(sae.W_enc[:, alive], before["W_enc"][:, alive])
    torch.testing.assert_close(sae.W_dec[dead].norm(dim=-1), torch.ones(2))
    assert (sae.b_enc[dead] == 0).all()
    # each new direction is one of the batch's inputs (minus b_dec), normalised
    cand = (x - sae.b_dec) / (x - sae.b_dec).norm(dim=-1, keepdim=True)
    for row in sae.W_dec[dead].detach():
        assert (cand @ row).max() > 1 - 1e-5
    for p in (sae.W_dec, sae.W_enc):
        st = opt.state[p]
        rows = st["exp_avg"][dead] if p is sae.W_dec else st["exp_avg"][:, dead]
        assert (rows == 0).all()


def test_training_with_resampling_counts_and_revives():
    setup(0, threads=1)
    sae = SAE(SAEConfig(D, N))
    with torch.no_grad():
        sae.b_enc[:4] = -100.0  # dead from the start
    recipe = Recipe(resample_every=10, dead_steps=10)
    res = train(sae, _sample(), TrainConfig(steps=35, batch_size=32, lr=1e-3, l1_coeff=0.01, recipe=recipe, log_every=1),
                progress=False)
    assert res.history["resampled"][9] >= 4  # at step 10: the four never-fired latents (and any other dead one)
    assert res.history["resampled"].sum() == res.history["resampled"][[9, 19, 29]].sum()  # only every 10 steps
    assert (sae.b_enc[:4] > -100).all()


def test_free_decoder_norms_and_norm_weighted_l1():
    setup(0, threads=1)
    sae = SAE(SAEConfig(D, N))
    recipe = Recipe(decoder_norm="free", init_decoder_norm=0.1)
    res = train(sae, _sample(), TrainConfig(steps=30, batch_size=32, lr=1e-2, l1_coeff=0.1, recipe=recipe, log_every=30),
                progress=False)
    norms = sae.W_dec.detach().norm(dim=-1)
    assert not torch.allclose(norms, torch.ones(N))
    x = _sample()(64)
    codes = sae.encode(x)
    want = (codes * norms).sum(-1).mean()
    assert res.history["l1"].shape == (1,)
    # norm-weighted L1 as the loss sees it (on a fresh batch: same definition)
    from sae_ortho.training.train import loss_terms
    terms = loss_terms(sae, x, TrainConfig(steps=30, recipe=recipe), torch.tensor(0.1), torch.tensor(0.0))
    torch.testing.assert_close(terms["l1"], want)


def test_init_decoder_norm_ties_encoder():
    setup(0, threads=1)
    sae = SAE(SAEConfig(D, N))
    stepper = Stepper(sae, TrainConfig(steps=5, recipe=Recipe(decoder_norm="free", init_decoder_norm=0.1)))
    stepper.init_from_data(_sample())
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.full((N,), 0.1))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)


def test_snapshots_copy_the_decoder_at_the_requested_steps():
    setup(0, threads=1)
    sae = SAE(SAEConfig(D, N))
    res = train(sae, _sample(), TrainConfig(steps=20, batch_size=16, snapshot_steps=(5, 20)), progress=False)
    assert sorted(res.snapshots) == [5, 20]
    assert set(res.snapshots[20]) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    assert torch.equal(res.snapshots[20]["W_dec"], sae.W_dec.detach())
    assert not torch.equal(res.snapshots[5]["W_dec"], res.snapshots[20]["W_dec"])


FULL = Recipe(warmup_steps=5, decay_steps=10, l1_warmup_steps=8, grad_clip=1.0, b_dec_init="geometric_median",
              b_dec_init_samples=256, resample_every=12, dead_steps=6)


def test_resume_with_the_full_recipe_is_bit_identical(tmp_path):
    cfg = TrainConfig(steps=40, batch_size=32, lr=5e-3, l1_coeff=0.05, ortho_weight=0.01, recipe=FULL,
                      checkpoint_every=7, log_every=1, snapshot_steps=(10, 40))

    def fresh():
        setup(0, threads=1)
        s = SAE(SAEConfig(D, N))
        with torch.no_grad():
            s.b_enc[:3] = -100.0  # something for the resampler to do
        return s

    ref = fresh()
    ref_res = train(ref, _sample(), cfg, progress=False)
    sae = fresh()
    with pytest.raises(KeyboardInterrupt):  # call 1 draws the b_dec sample, then 25 batches
        train(sae, Interrupt(_sample(), 1 + 26), cfg, checkpoint_dir=tmp_path, progress=False)
    sae2 = fresh()
    res = train(sae2, _sample(), cfg, checkpoint_dir=tmp_path, progress=False)
    assert res.resumed_from == 21
    for (name, a), b in zip(ref.named_parameters(), sae2.parameters()):
        assert torch.equal(a, b), name
    for k in ref_res.history:
        assert (ref_res.history[k] == res.history[k]).all(), k
    assert torch.equal(ref_res.snapshots[10]["W_dec"], res.snapshots[10]["W_dec"])
