"""Tests of sae_ortho.experiments.ablations: variants, training them as stacks over seeds, and the summary table."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest
import torch

from sae_ortho import metrics
from sae_ortho.core.reproducibility import setup
from sae_ortho.data.toy import ToyData, ToyDataConfig
from sae_ortho.experiments import ablations, sweep
from sae_ortho.experiments.ablations import Variant
from sae_ortho.ortho import OrthoConfig

F, D, N, SEEDS, STEPS, BATCH = 8, 8, 12, 2, 50, 32


# ------------------------------------------------------------------------------------------ variants


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"name": "", "group": "g"}, "name must be a non-empty str"),
        ({"name": "a", "group": ""}, "group must be a non-empty str"),
        ({"name": "t", "group": "base", "kind": "topk"}, "variant 't': kind='topk' needs k"),
    ],
)
def test_variant_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        Variant(**kw)


def test_variant_defaults():
    v = Variant("a", "g")
    assert (v.ortho_weight, v.kind, v.k, v.n_latents) == (0.0, "relu", None, None)
    assert v.ortho == OrthoConfig()
    assert Variant("t", "base", kind="topk", k=3).k == 3


def test_standard_variants():
    vs = ablations.standard_variants(0.1, weight_factors=[0.0, 0.1, 1.0, 10.0], n_latents=32, size_factors=[0.5, 1.5], k=4)
    names = [v.name for v in vs]
    assert len(set(names)) == len(names)
    by = {v.name: v for v in vs}
    assert by["vanilla"].ortho_weight == 0.0 and by["vanilla"].group == "reference"
    prop = by["proposal"]
    assert (prop.ortho_weight, prop.ortho, prop.group, prop.kind) == (0.1, OrthoConfig(), "reference", "relu")
    # every penalty variant changes one field of the proposal's configuration
    changed = {
        "mean |cos| over all": {"reduction": "mean_all"}, "one tied neighbour": {"tie_mode": "first"},
        "neighbours frozen": {"neighbour_grad": False}, "all latents": {"scope": "all"},
        "encoder rows": {"target": "encoder"}, "shape linear": {"shape": "linear"},
    }
    for name, fields in changed.items():
        assert by[name].ortho == dataclasses.replace(OrthoConfig(), **fields) and by[name].ortho_weight == 0.1
    # weights: 0 and the proposal's own weight are not repeated; names carry the factor
    assert sorted(v.ortho_weight for v in vs if v.group == "weight") == pytest.approx([0.01, 1.0])
    assert {"λ × 0.1", "λ × 10"} <= set(names)
    sizes = {v.name: (v.n_latents, v.ortho_weight) for v in vs if v.group == "size"}
    assert sizes == {"latents × 0.5, vanilla": (16, 0.0), "latents × 1.5, vanilla": (48, 0.0),
                     "latents × 0.5, proposal": (16, 0.1), "latents × 1.5, proposal": (48, 0.1)}
    base = [v for v in vs if v.group == "base"]
    assert [(v.kind, v.k, v.ortho_weight) for v in base] == [("topk", 4, 0.0), ("topk", 4, 0.1)]


def test_nn_cos_stats_known_answer():
    c = 0.92  # rows 0 and 1: |cos| 0.92 (a near-duplicate pair); rows 2 and 3: |cos| 0.8
    W = torch.tensor([[1.0, 0.0, 0.0], [-c, (1 - c**2) ** 0.5, 0.0], [0.0, 0.0, 2.0], [0.0, 0.6, 0.8]])
    nn = np.array([c, c, 0.8, 0.8])
    out = ablations.nn_cos_stats(W)
    assert out["nn_cos_mean"] == pytest.approx(nn.mean(), abs=1e-6)
    assert out["nn_cos_p95"] == pytest.approx(np.quantile(nn, 0.95), abs=1e-6)
    assert out["near_duplicates"] == 2


# -------------------------------------------------------------------------------------- run_variants


@pytest.fixture(scope="module")
def toy():
    data = ToyData(ToyDataConfig(n_features=F, d=D, p=0.15), generator=torch.Generator().manual_seed(0))
    setup(0, threads=1)
    x_eval = data.sample(128).x
    return data, x_eval


VARIANTS = [
    Variant("vanilla", "reference"),
    Variant("proposal", "reference", 0.1, OrthoConfig()),
    Variant("topk small", "base", 0.0, kind="topk", k=2, n_latents=10),
]
RARE = np.array([True, False, False, True, False, False, False, False])


@pytest.fixture(scope="module")
def result(toy):
    data, x_eval = toy
    setup(0, threads=1)
    seen = []

    def init(sae):
        seen.append((sae.cfg.n_models, sae.cfg.n_latents))

    def extra(single, i):
        assert not single.stacked
        return {"model_index": i, "w00": float(single.W_dec[0, 0].detach())}

    df, stacks = ablations.run_variants(
        VARIANTS, [data] * SEEDS, D, N, SEEDS, x_eval, true=data.directions, rare=RARE, steps=STEPS,
        batch_size=BATCH, lr=1e-2, l1=0.05, seed=1, init=init, extra=extra,
    )
    return df, stacks, seen


def test_run_variants_rows_and_columns(result):
    df, stacks, seen = result
    assert len(df) == len(VARIANTS) * SEEDS
    assert list(df.index) == list(range(len(df)))
    assert list(stacks) == [v.name for v in VARIANTS]
    assert seen == [(SEEDS, N), (SEEDS, N), (SEEDS, 10)]  # init ran once per variant, before training
    want = {"ortho_weight", "seed", "loss", "recon", "l0", "fvu", "dead", "mmcs", "mcc", "n_compositions",
            "alone", "in_combination", "missed", "rare_alone", "nn_cos_mean", "nn_cos_p95", "near_duplicates",
            "model_index", "w00", "variant", "group", "n_latents", "objective_vanilla", "objective_own",
            "weight_factor"}
    assert set(df.columns) == want
    for v in VARIANTS:
        rows = df[df.variant == v.name]
        assert list(rows.seed) == list(range(SEEDS)) and list(rows.model_index) == list(range(SEEDS))
        assert set(rows.group) == {v.group} and set(rows.ortho_weight) == {v.ortho_weight}
        assert set(rows.n_latents) == {v.n_latents or N}
        sae = stacks[v.name]
        assert (sae.cfg.n_models, sae.cfg.n_latents, sae.cfg.kind) == (SEEDS, v.n_latents or N, v.kind)
        assert list(rows.w00) == [float(sae.W_dec[i, 0, 0].detach()) for i in range(SEEDS)]
    assert not np.allclose(df.mmcs[df.variant == "vanilla"], df.mmcs[df.variant == "proposal"])


def test_run_variants_metrics_match_direct_computation(result, toy):
    df, stacks, _ = result
    data, x_eval = toy
    for v in VARIANTS:
        rows = df[df.variant == v.name].reset_index(drop=True)
        sae = stacks[v.name]
        gt = sweep.ground_truth_scores(sae, data.directions)
        for col in ("mmcs", "mcc", "n_compositions", "alone", "in_combination", "missed"):
            np.testing.assert_allclose(rows[col], gt[col], rtol=1e-12, err_msg=f"{v.name} {col}")
        rare_alone = [np.mean([s[f] == metrics.ALONE for f in np.flatnonzero(RARE)]) for s in gt.status]
        np.testing.assert_allclose(rows.rare_alone, rare_alone)
        with torch.no_grad():
            x = x_eval.expand(SEEDS, -1, -1)
            x_hat, codes = sae(x)
        recon = (x - x_hat).square().sum(-1).mean(-1).numpy()
        l1 = 0.05 if v.kind == "relu" else 0.0
        np.testing.assert_allclose(rows.recon, recon, rtol=1e-5)
        np.testing.assert_allclose(rows.loss, recon + l1 * codes.sum(-1).mean(-1).numpy(), rtol=1e-5)
        np.testing.assert_allclose(rows.l0, (codes > 0).float().sum(-1).mean(-1).numpy(), rtol=1e-6)
        resid = (x - x_hat).double().square().sum((1, 2))
        total = (x - x.mean(1, keepdim=True)).double().square().sum((1, 2))
        np.testing.assert_allclose(rows.fvu, (resid / total).numpy(), rtol=1e-4)
        for i in range(SEEDS):  # nearest-neighbour |cos| statistics from the full cosine matrix
            W = sae.W_dec[i].detach().double()
            c = ((W / W.norm(dim=1, keepdim=True)) @ (W / W.norm(dim=1, keepdim=True)).T).abs().numpy()
            np.fill_diagonal(c, -1.0)
            nn = c.max(1)
            assert rows.nn_cos_mean[i] == pytest.approx(nn.mean(), abs=1e-5)
            assert rows.nn_cos_p95[i] == pytest.approx(np.quantile(nn, 0.95), abs=1e-5)
            assert rows.near_duplicates[i] == int((nn > 0.9).sum())


def test_run_variants_trains_like_train_stack(toy):
    """One variant = sweep.train_stack with the variant's settings (same seed, same data stream)."""
    data, x_eval = toy
    v = Variant("proposal", "reference", 0.2, OrthoConfig(shape="linear"))
    setup(0, threads=1)
    _, stacks = ablations.run_variants([v], [data] * SEEDS, D, N, SEEDS, x_eval, steps=20, batch_size=BATCH,
                                       lr=1e-2, l1=0.05, seed=1)
    setup(1, threads=1)  # run_variants seeds each variant's data stream with its seed
    ref = sweep.train_stack(sweep.grid(SEEDS, ortho_weight=[0.2]), [data] * SEEDS, D, N, steps=20,
                            batch_size=BATCH, lr=1e-2, l1=0.05, ortho=OrthoConfig(shape="linear"), seed=1)
    for name, p in ref.named_parameters():
        assert torch.equal(getattr(stacks["proposal"], name), p), name


def test_run_variant_result_does_not_depend_on_preceding_variants(toy):
    data, x_eval = toy
    prop = Variant("proposal", "reference", 0.1, OrthoConfig())
    kw = {"steps": 20, "batch_size": BATCH, "lr": 1e-2, "l1": 0.05, "seed": 1}
    setup(0, threads=1)
    _, alone = ablations.run_variants([prop], [data] * SEEDS, D, N, SEEDS, x_eval, **kw)
    setup(0, threads=1)
    _, after = ablations.run_variants([Variant("vanilla", "reference"), prop], [data] * SEEDS, D, N, SEEDS,
                                      x_eval, **kw)
    assert torch.equal(alone["proposal"].W_dec, after["proposal"].W_dec)


def test_run_variants_errors(toy):
    data, x_eval = toy
    kw = {"steps": 1, "batch_size": 4}
    with pytest.raises(ValueError, match="variants is empty"):
        ablations.run_variants([], [data] * SEEDS, D, N, SEEDS, x_eval, **kw)
    with pytest.raises(ValueError, match="variant names must be unique"):
        ablations.run_variants([Variant("a", "g"), Variant("a", "h")], [data] * SEEDS, D, N, SEEDS, x_eval, **kw)


# ------------------------------------------------------------------------------------------- summary


def hand_table() -> pd.DataFrame:
    rows = [
        ("reference", "proposal", 0, 1.0, 0.5), ("reference", "proposal", 1, 3.0, 0.5),
        ("reference", "vanilla", 0, 2.0, 1.0), ("reference", "vanilla", 1, 2.0, 0.0),
        ("weight", "λ=1", 0, 10.0, 0.25), ("weight", "λ=1", 1, 20.0, 0.75),
    ]
    return pd.DataFrame(rows, columns=["group", "variant", "seed", "x", "y"])


def test_summary_known_answer():
    s = ablations.summary(hand_table(), ["x", "y"])
    assert list(s.index) == [("reference", "proposal"), ("reference", "vanilla"), ("weight", "λ=1")]
    assert list(s.columns) == ["x", "Δx", "y", "Δy"]
    assert list(s.x) == ["2 ± 1", "2 ± 0", "15 ± 5"]  # population std (ddof=0)
    assert list(s.y) == ["0.5 ± 0", "0.5 ± 0.5", "0.5 ± 0.2"]
    assert list(s["Δx"]) == [0.0, 0.0, 13.0]
    assert list(s["Δy"]) == [0.0, 0.0, 0.0]
    v = ablations.summary(hand_table(), ["x"], reference="vanilla")
    assert list(v["Δx"]) == [0.0, 0.0, 13.0]
    w = ablations.summary(hand_table(), ["x"], reference="λ=1")
    assert list(w["Δx"]) == [-13.0, -13.0, 0.0]


def test_summary_matches_arithmetic_on_run_table(result):
    df = result[0]
    cols = ["mmcs", "fvu", "nn_cos_mean"]
    s = ablations.summary(df, cols, reference="vanilla", digits=4)
    assert [v for _, v in s.index] == [v.name for v in VARIANTS]
    ref = {c: df[df.variant == "vanilla"][c].to_numpy(dtype=float).mean() for c in cols}
    for v in VARIANTS:
        vals = {c: df[df.variant == v.name][c].to_numpy(dtype=float) for c in cols}
        row = s.loc[(v.group, v.name)]
        for c in cols:
            assert row[c] == f"{vals[c].mean():.4g} ± {vals[c].std():.1g}"
            assert row[f"Δ{c}"] == pytest.approx(round(vals[c].mean() - ref[c], 4), abs=1e-12)


def test_summary_unknown_reference():
    with pytest.raises(ValueError, match="reference 'nope' is not a variant in the table"):
        ablations.summary(hand_table(), ["x"], reference="nope")


# --------------------------------------------------------------- paired verdicts and weight tuning


def paired_table() -> pd.DataFrame:
    """Five seeds; "up" is the proposal + 0.1 on every seed (+ tiny noise), "noisy" the proposal
    + 0 on average with a spread of 0.3 across seeds."""
    base = np.array([0.5, 0.9, 0.2, 0.7, 0.4])
    rows = []
    for name, values in (("proposal", base), ("up", base + 0.1 + np.array([1, -1, 0, 1, -1]) * 1e-3),
                         ("noisy", base + np.array([0.3, -0.3, 0.2, -0.2, 0.0]))):
        rows += [{"group": "g", "variant": name, "seed": s, "x": v} for s, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_verdict_from_paired_interval():
    v = ablations.verdict(paired_table(), "x", True)
    assert v["proposal"] == "the reference"
    assert v["up"] == "better"  # a small but consistent paired difference is detected
    assert v["noisy"] == "no detectable difference"
    assert ablations.verdict(paired_table(), "x", False)["up"] == "worse"
    with pytest.raises(ValueError, match="reference 'nope'"):
        ablations.verdict(paired_table(), "x", True, reference="nope")
    one = paired_table()[lambda d: d.seed == 0]
    assert set(ablations.verdict(one, "x", True).drop("proposal")) == {"n/a (fewer than 2 seeds)"}


def test_comparison_text():
    out = ablations.comparison(paired_table(), ["x"], {"x": True}, digits=2).set_index("variant")
    assert out.loc["proposal", "text"] == "0.54"
    assert out.loc["up", "text"].startswith("0.64 (Δ +0.10 [")
    assert out.loc["up", "verdict"] == "better"
    three = ablations.comparison(paired_table(), ["x"], {"x": True}, ci_digits=3).set_index("variant")
    assert re.match(r"0\.64 \(Δ \+0\.\d{3} \[-?0\.\d{3}, -?0\.\d{3}\]\)$", three.loc["up", "text"])


def test_weight_factors_train_paired_and_best_weight(toy):
    data, x_eval = toy
    with pytest.raises(ValueError, match="non-zero ortho_weight"):
        Variant("v", "g", 0.0, weight_factors=(1.0, 2.0))
    with pytest.raises(ValueError, match="distinct positive"):
        Variant("v", "g", 0.1, weight_factors=(1.0, -2.0))
    tuned = Variant("proposal", "reference", 0.1, OrthoConfig(), weight_factors=(0.5, 1.0, 3.0))
    assert tuned.weights == pytest.approx([0.05, 0.1, 0.3])
    kw = {"steps": 20, "batch_size": BATCH, "lr": 1e-2, "l1": 0.05, "seed": 1}
    setup(0, threads=1)
    df, stacks = ablations.run_variants([tuned], [data] * SEEDS, D, N, SEEDS, x_eval, true=data.directions, **kw)
    assert len(df) == 3 * SEEDS and sorted(set(df.weight_factor)) == [0.5, 1.0, 3.0]
    # the factor-1 models are the untuned variant's run (same seed: same data, same init)
    setup(0, threads=1)
    _, plain = ablations.run_variants([Variant("proposal", "reference", 0.1, OrthoConfig())], [data] * SEEDS, D, N,
                                      SEEDS, x_eval, **kw)
    at1 = list(df.index[df.weight_factor == 1.0])
    torch.testing.assert_close(stacks["proposal"].W_dec[at1], plain["proposal"].W_dec, atol=1e-5, rtol=0)
    best = ablations.best_weight(df, "mmcs")
    means = df.groupby("weight_factor").mmcs.mean()
    assert set(best.weight_factor) == {means.idxmax()} and set(best.best_of) == {3} and len(best) == SEEDS
    assert set(ablations.best_weight(df, "mmcs", higher_is_better=False).weight_factor) == {means.idxmin()}
    with pytest.raises(ValueError, match="one data set per seed"):
        ablations.run_variants([tuned], lambda b: torch.stack([data.sample(b).x] * SEEDS), D, N, SEEDS, x_eval, **kw)


def test_run_variants_objectives_and_activation_scores(toy):
    from sae_ortho.analysis import objective

    data, _ = toy
    setup(0, threads=1)
    batch = data.sample(600)
    prop = Variant("proposal", "reference", 0.1, OrthoConfig())
    df, stacks = ablations.run_variants(
        [Variant("vanilla", "reference"), prop], [data] * SEEDS, D, N, SEEDS, batch.x, true=data.directions,
        coeffs=batch.coeffs, steps=20, batch_size=BATCH, lr=1e-2, l1=[0.05, 0.2], seed=1,
        reference_penalty=(0.1, OrthoConfig()),
    )
    assert len(df) == 2 * 2 * SEEDS and set(df.l1) == {0.05, 0.2}
    np.testing.assert_allclose(df.objective_vanilla, df.loss, rtol=1e-6)  # the same objective
    v = df[df.variant == "vanilla"]
    np.testing.assert_allclose(v.objective_own, v.objective_vanilla, rtol=1e-6)  # no penalty of its own
    p = df[df.variant == "proposal"].reset_index(drop=True)
    want = objective.objective_terms(stacks["proposal"], batch.x, p.l1.to_numpy(), 0.1, OrthoConfig())
    np.testing.assert_allclose(p.objective_own, want["penalised"], rtol=1e-6)
    np.testing.assert_allclose(p.objective_penalised, p.objective_own, rtol=1e-6)
    assert {"n_compositions_act", "detector_agree", "compositions_both"} <= set(df.columns)
    assert df.detector_agree.between(0, 1).all()


def test_with_tuning_and_weight_rows():
    vs = ablations.standard_variants(0.1, weight_factors=[0.1, 10.0], n_latents=8, size_factors=[2.0], k=2)
    out = ablations.with_tuning(vs, [0.3, 3.0], tune=["shape linear", "mean |cos| over all"])
    by = {v.name: v for v in out}
    assert not any(v.group == "weight" for v in out)  # the weight sweep is the proposal's factors now
    assert by["proposal"].weight_factors == (0.1, 0.3, 1.0, 3.0, 10.0)
    assert by["shape linear"].weight_factors == (0.3, 1.0, 3.0)
    assert by["mean |cos| over all"].weights == pytest.approx([0.03, 0.1, 0.3])
    assert by["shape square"].weight_factors == () and by["vanilla"].weight_factors == ()
    with pytest.raises(ValueError, match="not variants"):
        ablations.with_tuning(vs, [0.3], tune=["nope"])
    df = pd.DataFrame({"variant": ["proposal"] * 3 + ["vanilla"], "weight_factor": [0.1, 1.0, 10.0, 1.0],
                       "seed": [0, 0, 0, 0], "group": "reference"})
    w = ablations.weight_rows(df)
    assert list(w.variant) == ["λ × 0.1", "λ × 1", "λ × 10"] and set(w.group) == {"weight"}
