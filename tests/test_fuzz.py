"""Property-based tests (hypothesis) of every config class and the public metric / penalty functions.

For each config class, random *valid* values construct and run on tiny sizes (an SAE encodes, a
penalty is computed and differentiated, a training run finishes and resumes to a no-op, toy data
sample), and random *invalid* values of one field (wrong type: bools, strings, None, floats for
ints; out of range: NaN, inf, below or above the bounds; unknown choices) raise ``ValueError`` or
``TypeError`` with a message that names the field. The metric and penalty functions are fuzzed
the same way, with properties of their results (ranges, agreement of the exact neighbour methods)
on valid input and the documented errors on invalid or degenerate input.

Settings (few examples, derandomised, no deadline) come from the "ci" profile in conftest.py.
"""

from __future__ import annotations

import math
import re
import tempfile

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sae_ortho import metrics
from sae_ortho.analysis import decompose, geometry, optimum
from sae_ortho.analysis.summed import SummedConfig, SummedData
from sae_ortho.core.validation import ParameterTypeError
from sae_ortho.data.activations import CacheSpec
from sae_ortho.data.lm_data import LMDataConfig
from sae_ortho.data.toy import ToyData, ToyDataConfig
from sae_ortho.experiments import sweep
from sae_ortho.experiments.ablations import Variant
from sae_ortho.experiments.runs import LMSAESpec
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.ortho import (
    BOUNDED_SHAPES,
    EXACT_METHODS,
    METHODS,
    PENALTY_SHAPES,
    REDUCTIONS,
    SCOPES,
    TARGETS,
    TIE_MODES,
    NeighbourCache,
    OrthoConfig,
    nearest_neighbour_abs_cos,
    nn_abs_cos,
    ortho_penalty,
)
from sae_ortho.training import recipe
from sae_ortho.training.recipe import Recipe
from sae_ortho.training.train import TrainConfig, train

ERRORS = (ValueError, TypeError)

# ---------------------------------------------------------------------------------- invalid values
# A float that is not an int, and numpy variants that must be refused (np.bool_ is not a number).
_ODD = st.sampled_from([1.5, 2.0, np.float64(3.0), np.bool_(True), [1], (2,), {}, b"1", 1j])


def bad_int(low: int | None = None, high: int | None = None, optional: bool = False):
    """Values an int field in [low, high] must refuse."""
    options = [st.booleans(), st.text(max_size=3), _ODD, st.floats(allow_nan=True, allow_infinity=True)]
    if not optional:
        options.append(st.none())
    if low is not None:
        options.append(st.integers(max_value=low - 1, min_value=low - 10**6))
    if high is not None:
        options.append(st.integers(min_value=high + 1, max_value=high + 10**6))
    return st.one_of(options)


def bad_float(
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    finite: bool = True,
    sequences: bool = True,
):
    """Values a number field in the interval must refuse (``sequences``: also a 1-list, which a
    per-model hyperparameter accepts)."""
    odd = [np.bool_(False), 1j] + ([[0.1]] if sequences else [])
    options = [st.booleans(), st.text(max_size=3), st.just(float("nan")), st.sampled_from(odd)]
    if finite:
        options.append(st.sampled_from([math.inf, -math.inf]))
    if not optional:
        options.append(st.none())
    if low is not None:
        options.append(st.floats(max_value=low, exclude_max=not low_open, allow_nan=False, min_value=low - 1e6))
    if high is not None:
        options.append(st.floats(min_value=high, exclude_min=not high_open, allow_nan=False, max_value=high + 1e6))
    return st.one_of(options)


def bad_bool():
    return st.sampled_from([0, 1, "no", "yes", "", None, 1.0, np.int64(1), "True"])


def bad_choice(allowed):
    return st.one_of(st.text(max_size=8).filter(lambda s: s not in allowed), st.none(), st.integers(), st.booleans())


def bad_str(optional: bool = False):
    options = [st.integers(), st.booleans(), st.just(b"bytes")] + ([] if optional else [st.none()])
    return st.one_of(options)


def assert_refused(cls, base: dict, field: str, value) -> None:
    """Constructing ``cls(**base, field=value)`` raises ValueError or TypeError naming ``field``."""
    with pytest.raises(ERRORS) as info:
        cls(**{**base, field: value})
    assert re.search(rf"(?<![A-Za-z_]){re.escape(field)}(?![A-Za-z_])", str(info.value)), (field, value, info.value)


# ------------------------------------------------------------------------------ invalid config fields
INVALID = {
    SAEConfig: (
        {"d": 4, "n_latents": 6},
        {
            "d": bad_int(1),
            "n_latents": bad_int(1),
            "kind": bad_choice(("relu", "topk")),
            "k": bad_int(1, 6, optional=True).filter(lambda v: v is not None),
            "n_models": bad_int(1, optional=True),
            "init": bad_choice(("tied", "independent")),
        },
    ),
    OrthoConfig: (
        {},
        {
            "shape": bad_choice(tuple(PENALTY_SHAPES)),
            "target": bad_choice(TARGETS),
            "scope": bad_choice(SCOPES),
            "neighbour_grad": bad_bool(),
            "reduction": bad_choice(REDUCTIONS),
            "tie_mode": bad_choice(TIE_MODES),
            "tie_tol": bad_float(0.0, 1.0, high_open=True),
            "method": bad_choice(METHODS),
            "cache_k": st.one_of(bad_int(1), st.integers(9, 99)),  # the latter: no cache with the default method
            "refresh_every": st.one_of(bad_int(1), st.integers(1, 99)),  # the latter: not "cached"
            "ortsae_chunk": st.one_of(bad_int(2), st.integers(2, 1023)),  # the latter: not "ortsae"
            "chunk": bad_int(1),
            "check_rows": st.one_of(bad_int(0), st.integers(0, 63)),  # the latter: not "certified"
        },
    ),
    Recipe: (
        {},
        {
            "warmup_steps": bad_int(0),
            "decay_steps": bad_int(0),
            "l1_warmup_steps": bad_int(0),
            "grad_clip": bad_float(0.0, low_open=True, optional=True),
            "b_dec_init": bad_choice(recipe.B_DEC_INITS),
            "b_dec_init_samples": st.one_of(bad_int(1), st.integers(1, 8191)),  # the latter: b_dec_init="zeros"
            "dead_steps": bad_int(1),
            "resample_every": bad_int(1, optional=True),
            "aux_k": bad_int(1, optional=True),
            "aux_coeff": st.one_of(bad_float(0.0, low_open=True), st.floats(0.04, 1.0)),  # the latter: no aux_k
            "decoder_norm": bad_choice(recipe.DECODER_NORMS),
            "init_decoder_norm": bad_float(0.0, low_open=True, optional=True),
        },
    ),
    TrainConfig: (
        {"steps": 10},
        {
            "steps": bad_int(1),
            "batch_size": bad_int(1),
            "lr": st.one_of(
                bad_float(0.0, low_open=True, sequences=False), st.just(()),
                st.tuples(st.just(1e-3), bad_float(0.0, low_open=True, sequences=False)),
            ),
            "l1_coeff": st.one_of(
                bad_float(0.0, sequences=False), st.just(()), st.lists(bad_float(0.0, sequences=False), min_size=1, max_size=2)
            ),
            "ortho_weight": st.one_of(
                st.booleans(), st.text(max_size=2), st.none(), st.sampled_from([math.nan, math.inf, ()]),
                st.floats(max_value=-1e-3, min_value=-10),  # negative with the unbounded default shape
            ),
            "ortho": st.sampled_from(["chunked", None, {}, 0.1, Recipe()]),
            "log_every": bad_int(1),
            "checkpoint_every": bad_int(0),
            "stage_size": bad_int(0),
            "recipe": st.sampled_from([None, "default", {}, OrthoConfig()]),
            "snapshot_steps": st.one_of(
                st.sampled_from([5, "5", None, (0,), (11,), (True,), (2.0,)]),
                st.tuples(st.integers(min_value=11, max_value=100)),
            ),
            "kernel": bad_choice(("dense", "sparse", "auto")),
        },
    ),
    ToyDataConfig: (
        {"n_features": 4, "d": 4},
        {
            "n_features": bad_int(1),
            "d": bad_int(1),
            "embedding": bad_choice(("orthogonal", "random", "given")),
            "firing": bad_choice(("uniform", "zipf")),
            "p": bad_float(0.0, 1.0),
            "p_max": bad_float(0.0, 1.0),
            "p_min": bad_float(0.0, 1.0),
            "zipf_exponent": bad_float(0.0, low_open=True),
            "structure": bad_choice(("independent", "copula", "exclusive_sets")),
            "rho": st.one_of(bad_float(0.0, 1.0, high_open=True), st.floats(0.01, 0.99)),  # the latter: no copula
            "block_size": st.one_of(bad_int(1), st.integers(3, 9)),  # the latter: no copula
            "set_size": st.one_of(bad_int(1), st.integers(3, 9)),  # the latter: no exclusive sets
            "p_set": bad_float(0.0, 1.0),
            "amplitude": bad_choice(("uniform", "shared", "constant")),
            "p_single": bad_float(0.0, 1.0),
        },
    ),
    SummedConfig: (
        {},
        {
            "n_pairs": bad_int(0),
            "n_triples": bad_int(0),
            "p_atom": bad_float(0.0, 1.0),
            "p_sum": bad_float(0.0, 1.0),
            "p_part": bad_float(0.0, 1.0, optional=True),
            "amplitude": bad_choice(("uniform", "constant")),
            "disjoint": bad_bool(),
            "seed": bad_int(0),
        },
    ),
    CacheSpec: (
        {"model": "m", "revision": None, "layer": 0, "context": 4, "n_tokens": 8},
        {
            "model": st.one_of(bad_str(), st.just("")),
            "revision": bad_str(optional=True),
            "layer": bad_int(0),
            "context": bad_int(2),  # drop_first needs 2 positions
            "n_tokens": bad_int(1),
            "dtype": bad_choice(("float16", "bfloat16", "float32")),
            "corpus": bad_str(),
            "drop_first": bad_bool(),
        },
    ),
    LMDataConfig: (
        {},
        {
            "model": st.one_of(bad_str(), st.just("")),
            "revision": bad_str(optional=True),
            "layers": st.sampled_from([(), (-1,), (1.0,), (True,), "3", None, 3, (3, 3), (1, 2, 1)]),
            "context": bad_int(2),
            "train_tokens": bad_int(1),
            "eval_tokens": bad_int(1),
            "corpus": bad_choice(("python-docs", "kjv-bible", "pydoc-topics")),
            "dtype": bad_choice(("float16", "bfloat16", "float32")),
            "batch_size": bad_int(1),
            "device": st.one_of(bad_str(), st.just("")),
            "fallback": bad_bool(),
        },
    ),
    LMSAESpec: (
        {"name": "run"},
        {
            "name": st.sampled_from(["", "a/b", ".hidden", None, 3]),
            "kind": bad_choice(("relu", "topk")),
            "n_latents": bad_int(1),
            "tokens": bad_int(1),
            "batch_size": bad_int(1),
            "lr": bad_float(0.0, low_open=True),
            "l1_coeff": bad_float(0.0),
            "ortho": st.sampled_from(["chunked", None, 1.0]),
            "recipe": st.sampled_from(["default", {"warmup_steps": 1}, 3]),
            "snapshots": bad_int(0),
            "kernel": bad_choice(("dense", "sparse", "auto")),
        },
    ),
    Variant: (
        {"name": "v", "group": "g"},
        {
            "name": st.one_of(bad_str(), st.just("")),
            "group": st.one_of(bad_str(), st.just("")),
            "ortho_weight": bad_float(),
            "ortho": st.sampled_from(["chunked", None, 1.0]),
            "kind": bad_choice(("relu", "topk")),
            "k": st.sampled_from([0, -1, 2.5, True, "3"]),
            "n_latents": bad_int(1, optional=True),
            "weight_factors": st.sampled_from([(0.0,), (-1.0,), [1.0, 2.0], (1.0, 1.0), ("a",), (True,)]),
        },
    ),
}


@pytest.mark.parametrize("cls", list(INVALID), ids=lambda c: c.__name__)
@given(data=st.data())
def test_invalid_config_field_is_refused_naming_it(cls, data):
    base, fields = INVALID[cls]
    field = data.draw(st.sampled_from(sorted(fields)), label="field")
    value = data.draw(fields[field], label="value")
    assert_refused(cls, base, field, value)


@pytest.mark.parametrize("cls", list(INVALID), ids=lambda c: c.__name__)
def test_every_field_of_every_config_is_fuzzed(cls):
    """The table above must cover each field of each config (except free-form names and k of
    LMSAESpec, whose k is checked through SAEConfig)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    skip = {LMSAESpec: {"k", "ortho_weight"}}.get(cls, set())
    assert names - skip == set(INVALID[cls][1]), names ^ set(INVALID[cls][1])


# ------------------------------------------------------------------ numpy scalars and canonical values
@given(
    d=st.integers(1, 6), n=st.integers(1, 9), lr=st.floats(1e-5, 1.0), w=st.floats(0.0, 1.0),
    steps=st.integers(1, 50),
)
def test_numpy_scalars_are_numbers_and_fingerprints_are_canonical(d, n, lr, w, steps):
    a = TrainConfig(steps=steps, lr=lr, ortho_weight=w)
    b = TrainConfig(steps=np.int64(steps), lr=np.float64(lr), ortho_weight=(w,))
    sae_a, sae_b = SAE(SAEConfig(d, n)), SAE(SAEConfig(np.int32(d), np.int64(n)))
    assert a.fingerprint(sae_a) == b.fingerprint(sae_b)
    assert isinstance(b.steps, int) and not isinstance(b.steps, np.integer)
    if float(w).is_integer():  # 0 and 0.0 (and 1 and 1.0) are the same configuration
        assert TrainConfig(steps=steps, ortho_weight=int(w)).fingerprint(sae_a) == TrainConfig(
            steps=steps, ortho_weight=float(w)
        ).fingerprint(sae_a)


def test_type_errors_are_also_value_errors():
    """Code written against the earlier ValueError for every bad argument keeps working."""
    with pytest.raises(TypeError) as info:
        SAEConfig(d=True, n_latents=3)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ParameterTypeError)


# ------------------------------------------------------------------------------- valid configs: run
@st.composite
def sae_configs(draw, n_models=True):
    d, n = draw(st.integers(1, 5)), draw(st.integers(2, 8))
    kind = draw(st.sampled_from(("relu", "topk")))
    k = draw(st.integers(1, n)) if kind == "topk" else None
    m = draw(st.one_of(st.none(), st.integers(1, 3))) if n_models else None
    return SAEConfig(d, n, kind, k, m)


@given(cfg=sae_configs(), batch=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_valid_sae_configs_encode_and_decode(cfg, batch, seed):
    g = torch.Generator().manual_seed(seed)
    sae = SAE(cfg, generator=g)
    lead = () if cfg.n_models is None else (cfg.n_models,)
    x = torch.randn(*lead, batch, cfg.d, generator=g)
    x_hat, codes = sae(x)
    assert x_hat.shape == x.shape and codes.shape == (*lead, batch, cfg.n_latents)
    assert (codes >= 0).all() and torch.isfinite(x_hat).all()
    if cfg.kind == "topk":
        assert ((codes > 0).sum(-1) <= cfg.k).all()


@st.composite
def ortho_configs(draw):
    return OrthoConfig(
        shape=draw(st.sampled_from(tuple(PENALTY_SHAPES))),
        target=draw(st.sampled_from(TARGETS)),
        scope=draw(st.sampled_from(SCOPES)),
        neighbour_grad=draw(st.booleans()),
        reduction=draw(st.sampled_from(REDUCTIONS)),
        tie_mode=draw(st.sampled_from(TIE_MODES)),
        tie_tol=draw(st.one_of(st.just(0.0), st.floats(0.0, 0.5))),
        chunk=draw(st.integers(1, 6)),
        **draw(method_options()),
    )


@st.composite
def method_options(draw):
    """A method and the options it uses (the others must keep their defaults)."""
    method = draw(st.sampled_from(METHODS))
    kw = {"method": method}
    if method in ("cached", "certified"):
        kw["cache_k"] = draw(st.integers(1, 4))
    if method == "cached":
        kw["refresh_every"] = draw(st.integers(1, 5))
    if method == "ortsae":
        kw["ortsae_chunk"] = draw(st.integers(2, 6))
    if method == "certified":
        kw["check_rows"] = draw(st.integers(0, 8))
    return kw


def random_rows(seed: int, n: int, d: int, lead=(), duplicate: bool = False, antipodal: bool = False) -> torch.Tensor:
    """[*lead, n, d] random rows, optionally with row 1 a copy (or the negation) of row 0: ties
    and |cos| = 1 are the edge cases of the neighbour search."""
    W = torch.randn(*lead, n, d, generator=torch.Generator().manual_seed(seed))
    if duplicate and n > 2:
        W[..., 1, :] = W[..., 0, :] * (-1.0 if antipodal else 2.0)
    return W


@given(
    cfg=ortho_configs(), n=st.integers(2, 8), d=st.integers(1, 4), stacked=st.booleans(), seed=st.integers(0, 2**16),
    duplicate=st.booleans(), antipodal=st.booleans(),
)
def test_valid_ortho_configs_give_a_finite_differentiable_penalty(cfg, n, d, stacked, seed, duplicate, antipodal):
    lead = (2,) if stacked else ()
    W_dec = random_rows(seed, n, d, lead, duplicate, antipodal).requires_grad_(True)
    W_enc = W_dec.detach().transpose(-1, -2).clone().requires_grad_(True)
    codes = torch.relu(torch.randn(*lead, 5, n, generator=torch.Generator().manual_seed(seed + 1)))
    cache = cfg.make_cache()
    if isinstance(cache, NeighbourCache):  # the certified cache needs no refresh: its first call searches all
        cache.refresh(W_dec if cfg.target == "decoder" else W_enc.transpose(-1, -2), 0)
    pen = ortho_penalty(W_dec, codes, cfg, cache=cache, W_enc=W_enc)
    assert pen.shape == lead and torch.isfinite(pen).all() and (pen >= 0).all()
    pen.sum().backward()
    for p in (W_dec, W_enc):
        assert p.grad is None or torch.isfinite(p.grad).all()


@st.composite
def training_setups(draw):
    sae_cfg = draw(sae_configs())
    kind, n = sae_cfg.kind, sae_cfg.n_latents
    steps = draw(st.integers(1, 6))
    warm = draw(st.integers(0, steps))
    dead = draw(st.integers(1, 4))
    free = kind == "relu" and draw(st.booleans())
    b_dec_init = draw(st.sampled_from(recipe.B_DEC_INITS))
    aux_k = draw(st.one_of(st.none(), st.integers(1, n))) if kind == "topk" else None
    # options of a remedy that is off keep their defaults (they would have no effect)
    resample = st.one_of(st.none(), st.integers(dead, steps - 1)) if dead < steps else st.none()
    rec = Recipe(
        warmup_steps=warm,
        decay_steps=draw(st.integers(0, steps - warm)),
        l1_warmup_steps=draw(st.integers(0, steps)) if kind == "relu" else 0,
        grad_clip=draw(st.one_of(st.none(), st.floats(0.1, 10.0))),
        b_dec_init=b_dec_init,
        b_dec_init_samples=draw(st.integers(1, 16)) if b_dec_init != "zeros" else 8192,
        dead_steps=dead,
        resample_every=draw(resample) if kind == "relu" else None,
        aux_k=aux_k,
        aux_coeff=draw(st.floats(1e-3, 1.0)) if aux_k is not None else 1 / 32,
        decoder_norm="free" if free else "unit",
        init_decoder_norm=draw(st.one_of(st.none(), st.floats(0.05, 2.0))) if free else None,
    )
    ortho = draw(ortho_configs())
    m = sae_cfg.n_models
    weight = st.floats(-0.1 if ortho.shape in BOUNDED_SHAPES else 0.0, 0.1)
    per_model = (lambda s: st.one_of(s, st.tuples(*[s] * m))) if m else (lambda s: s)
    stage_max = n if steps >= 2 else 0  # a stage needs a step
    stage = draw(st.one_of(st.just(0), st.integers(2, max(2, stage_max)))) if stage_max >= 2 else 0
    if stage and -(-n // stage) > steps:
        stage = 0
    cfg = TrainConfig(
        steps=steps,
        batch_size=draw(st.integers(1, 8)),
        lr=draw(per_model(st.floats(1e-4, 1e-2))),
        l1_coeff=draw(per_model(st.floats(0.0, 0.5) if kind == "relu" else st.sampled_from([0.0, 0.1]))),
        ortho_weight=draw(per_model(weight)),
        ortho=ortho,
        log_every=draw(st.integers(1, 3)),
        checkpoint_every=draw(st.integers(0, 3)),
        stage_size=stage,
        recipe=rec,
        snapshot_steps=tuple(draw(st.sets(st.integers(1, steps), max_size=2))),
    )
    return sae_cfg, cfg


@given(setup_=training_setups(), seed=st.integers(0, 2**16))
def test_valid_training_configs_train_and_resume_to_the_same_weights(setup_, seed):
    sae_cfg, cfg = setup_
    lead = () if sae_cfg.n_models is None else (sae_cfg.n_models,)

    def sample(b):
        return torch.randn(*lead, b, sae_cfg.d)  # the global generator, as train() expects

    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(seed)
        sae = SAE(sae_cfg, generator=torch.Generator().manual_seed(seed))
        res = train(sae, sample, cfg, checkpoint_dir=folder, progress=False)
        assert np.isfinite(res.history["loss"]).all()
        assert res.history["step"][-1] == cfg.steps
        assert sorted(res.snapshots) == sorted(cfg.snapshot_steps)
        if cfg.recipe.decoder_norm == "unit":
            torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(*lead, sae_cfg.n_latents))
        again = SAE(sae_cfg, generator=torch.Generator().manual_seed(seed + 1))
        assert train(again, sample, cfg, checkpoint_dir=folder, progress=False).resumed_from == cfg.steps
        for a, b in zip(sae.parameters(), again.parameters()):
            assert torch.equal(a, b)


@st.composite
def toy_configs(draw):
    """Valid ToyDataConfigs: only the parameters the chosen options use are set."""
    structure = draw(st.sampled_from(("independent", "copula", "exclusive_sets")))
    kw = {"structure": structure, "amplitude": draw(st.sampled_from(("uniform", "shared", "constant")))}
    if structure == "exclusive_sets":
        set_size = draw(st.integers(1, 3))
        f = set_size * draw(st.integers(1, 3))
        kw |= {"set_size": set_size, "p_set": draw(st.floats(0.0, 1.0))}
    else:
        f = draw(st.integers(1, 6))
        firing = draw(st.sampled_from(("uniform", "zipf")))
        kw["firing"] = firing
        if firing == "uniform":
            kw["p"] = draw(st.floats(0.0, 1.0))
        else:
            p_min = draw(st.floats(0.001, 0.4))
            kw |= {"p_min": p_min, "p_max": draw(st.floats(p_min + 1e-3, 1.0)), "zipf_exponent": draw(st.floats(0.1, 3.0))}
        if structure == "copula":
            block_size = draw(st.integers(1, 4))  # blocks of one feature have nothing to correlate
            kw |= {"rho": draw(st.floats(0.0, 0.9)) if block_size > 1 else 0.0, "block_size": block_size}
    embedding = draw(st.sampled_from(("orthogonal", "random")))
    d = draw(st.integers(f, f + 2)) if embedding == "orthogonal" else draw(st.integers(1, 6))
    return ToyDataConfig(f, d, embedding=embedding, p_single=draw(st.floats(0.0, 1.0)), **kw)


@given(cfg=toy_configs(), batch=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_valid_toy_configs_sample(cfg, batch, seed):
    torch.manual_seed(seed)
    data = ToyData(cfg, generator=torch.Generator().manual_seed(seed))
    x, coeffs = data.sample(batch)
    assert x.shape == (batch, cfg.d) and coeffs.shape == (batch, cfg.n_features)
    assert torch.isfinite(x).all() and (coeffs >= 0).all() and (coeffs <= 1).all()
    if cfg.structure == "exclusive_sets" and cfg.p_single == 0:
        assert ((coeffs > 0).reshape(batch, -1, cfg.set_size).sum(-1) <= 1).all()


@given(
    n_pairs=st.integers(0, 3), n_triples=st.integers(0, 2), p=st.floats(0.0, 1.0), disjoint=st.booleans(),
    p_part=st.one_of(st.none(), st.floats(0.0, 1.0)), amplitude=st.sampled_from(("uniform", "constant")),
    seed=st.integers(0, 100),
)
def test_valid_summed_configs_sample(n_pairs, n_triples, p, disjoint, p_part, amplitude, seed):
    cfg = SummedConfig(n_pairs, n_triples, p, p, p_part, amplitude, disjoint, seed)
    atoms = torch.eye(12)  # orthogonal atoms: no sum cancels
    data = SummedData(atoms, cfg)
    x, coeffs = data.sample(8)
    assert x.shape == (8, 12) and coeffs.shape == (8, 12 + n_pairs + n_triples)
    assert torch.isfinite(x).all() and (coeffs >= 0).all()


@given(
    layer=st.integers(0, 40), context=st.integers(2, 64), n_tokens=st.integers(1, 10**6),
    dtype=st.sampled_from(("float16", "bfloat16", "float32")), drop_first=st.booleans(),
    revision=st.one_of(st.none(), st.text(min_size=1, max_size=8)),
)
def test_valid_cache_specs_have_a_stable_key(layer, context, n_tokens, dtype, drop_first, revision):
    spec = CacheSpec("org/model", revision, layer, context, n_tokens, dtype, "corpus/train", drop_first)
    again = CacheSpec("org/model", revision, np.int64(layer), context, n_tokens, dtype, "corpus/train", drop_first)
    assert spec.key() == again.key() and f"_L{layer}_" in spec.key()
    assert spec.n_rows == -(-n_tokens // context) * (context - drop_first)


@given(
    layers=st.lists(st.integers(0, 12), min_size=1, max_size=3, unique=True), context=st.integers(2, 512),
    tokens=st.integers(1, 10**6), dtype=st.sampled_from(("float16", "bfloat16", "float32")), fallback=st.booleans(),
)
def test_valid_lm_data_configs_construct(layers, context, tokens, dtype, fallback):
    cfg = LMDataConfig(layers=tuple(layers), context=context, train_tokens=tokens, dtype=dtype, fallback=fallback)
    assert cfg.layers == tuple(layers)


@given(
    kind=st.sampled_from(("relu", "topk")), n=st.integers(1, 64), tokens=st.integers(1, 10**6),
    batch=st.integers(1, 4096), lr=st.floats(1e-6, 1.0), l1=st.floats(0.0, 10.0), w=st.floats(0.0, 10.0),
    d=st.integers(1, 64), data=st.data(),
)
def test_valid_lm_sae_specs_give_consistent_configs(kind, n, tokens, batch, lr, l1, w, d, data):
    k = data.draw(st.integers(1, n)) if kind == "topk" else None
    spec = LMSAESpec("run", kind, k, n, tokens, batch, lr, l1, w)
    sae_cfg, cfg = spec.configs(d)
    assert (sae_cfg.d, sae_cfg.n_latents, sae_cfg.kind, sae_cfg.k) == (d, n, kind, k)
    assert cfg.steps == spec.steps == math.ceil(tokens / batch) and cfg.batch_size == batch
    assert Variant("v", "g", w, OrthoConfig(), kind, k, n).k == k


# --------------------------------------------------------------------------- neighbour |cos| functions
@given(
    n=st.integers(2, 9), d=st.integers(1, 4), stacked=st.booleans(), seed=st.integers(0, 2**16),
    duplicate=st.booleans(), antipodal=st.booleans(), reduction=st.sampled_from(REDUCTIONS),
    tie_mode=st.sampled_from(TIE_MODES), tie_tol=st.floats(0.0, 0.1), chunk=st.integers(1, 5), data=st.data(),
)
def test_exact_neighbour_methods_agree(n, d, stacked, seed, duplicate, antipodal, reduction, tie_mode, tie_tol, chunk, data):
    W = random_rows(seed, n, d, (3,) if stacked else (), duplicate, antipodal)
    rows = data.draw(st.one_of(st.none(), st.lists(st.integers(0, n - 1), max_size=n).map(lambda r: torch.tensor(r, dtype=torch.long))))
    kw = {"reduction": reduction, "tie_mode": tie_mode, "tie_tol": tie_tol, "chunk": chunk}
    out = {m: nn_abs_cos(W, rows, method=m, **kw) for m in EXACT_METHODS}
    for m in EXACT_METHODS:
        torch.testing.assert_close(out[m], out["chunked"], atol=1e-5, rtol=1e-5)
    v = out["chunked"]
    assert ((v >= -1e-6) & (v <= 1 + 1e-5)).all()
    if not stacked and reduction == "nearest" and tie_mode == "mean":
        torch.testing.assert_close(nearest_neighbour_abs_cos(W, rows, tie_tol), v)


_NN_BAD = {
    "tie_tol": bad_float(0.0, 1.0, high_open=True),
    "reduction": bad_choice(REDUCTIONS),
    "tie_mode": bad_choice(TIE_MODES),
    "method": bad_choice(METHODS),
    "chunk": bad_int(1),
    "ortsae_chunk": bad_int(2),
    "frozen": st.sampled_from([torch.zeros(4), torch.zeros(3, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool), "all"]),
    "cache": st.sampled_from(["cache", 3, {}]),
}


@given(data=st.data())
def test_nn_abs_cos_refuses_bad_arguments_naming_them(data):
    name = data.draw(st.sampled_from(sorted(_NN_BAD)))
    value = data.draw(_NN_BAD[name])
    with pytest.raises(ERRORS, match=rf"\b{name}\b"):
        nn_abs_cos(random_rows(0, 4, 3), **{name: value})


@given(
    W=st.sampled_from(["W", None, torch.zeros(4), torch.zeros(2, 2, 2, 2), torch.zeros(1, 3)]),
    special=st.sampled_from([math.nan, math.inf, 0.0]),
)
def test_nn_abs_cos_refuses_bad_matrices(W, special):
    with pytest.raises(ERRORS):
        nn_abs_cos(W)
    bad = random_rows(1, 4, 3)
    bad[2] = special  # a NaN / inf entry, or a zero row (no direction)
    with pytest.raises(ValueError, match="non-finite|norm 0"):
        nn_abs_cos(bad)


# ------------------------------------------------------------------------------------------ metrics
@given(
    b=st.integers(2, 12), n=st.integers(1, 8), d=st.integers(1, 5), stacked=st.booleans(), seed=st.integers(0, 2**16),
    sparsity=st.floats(0.0, 1.0),
)
def test_model_metrics_on_valid_inputs(b, n, d, stacked, seed, sparsity):
    g = torch.Generator().manual_seed(seed)
    lead = (2,) if stacked else ()
    codes = torch.rand(*lead, b, n, generator=g) * (torch.rand(*lead, b, n, generator=g) < sparsity)
    l0, dead = metrics.l0(codes), metrics.dead_fraction(codes)
    assert ((l0 >= 0) & (l0 <= n)).all() and ((dead >= 0) & (dead <= 1)).all()
    x = torch.randn(*lead, b, d, generator=g)
    assert (metrics.fvu(x, x) == 0).all()
    torch.testing.assert_close(metrics.fvu(x, x.mean(-2, keepdim=True).expand_as(x)), torch.ones(lead), atol=1e-5, rtol=1e-5)
    assert (metrics.fvu(x, torch.zeros_like(x)) >= 1 - 1e-6).all()


@given(
    n_l=st.integers(1, 7), n_t=st.integers(1, 5), d=st.integers(1, 5), seed=st.integers(0, 2**16),
    thr=st.floats(0.01, 1.0), numpy_in=st.booleans(),
)
def test_ground_truth_metrics_on_valid_inputs(n_l, n_t, d, seed, thr, numpy_in):
    learned, true = random_rows(seed, n_l, d), random_rows(seed + 1, n_t, d)
    if numpy_in:
        learned, true = learned.numpy(), true.numpy()
    for value in (metrics.mmcs(learned, true), metrics.mcc(learned, true), metrics.match_fraction(learned, true, thr)):
        assert 0 <= value <= 1 + 1e-9
    best, idx = metrics.feature_recovery(learned, true)
    assert best.shape == idx.shape == (n_t,) and (idx < n_l).all()
    rep = metrics.detect_compositions(learned, true)
    assert len(rep.latent_kind) == n_l and len(rep.feature_status) == n_t
    assert 0 <= metrics.matched_angle_error(learned, true) <= 180
    peaks = metrics.histogram_peaks(metrics.nn_abs_cos_distribution(learned)) if n_l >= 2 else []
    assert all(0 <= p <= 1 for p in peaks)


@given(
    b=st.integers(2, 8), d=st.integers(1, 4), stacked=st.booleans(), value=st.floats(-1e3, 1e3),
    case=st.sampled_from(["constant", "nan_codes", "zero_row", "shape", "type"]),
)
def test_metrics_refuse_degenerate_input(b, d, stacked, value, case):
    lead = (2,) if stacked else ()
    x = torch.full((*lead, b, d), value)
    if case == "constant":  # no variance: FVU undefined (it used to return ~1e13)
        with pytest.raises(ValueError, match="no variance"):
            metrics.fvu(x, torch.zeros_like(x))
    elif case == "nan_codes":
        codes = torch.rand(*lead, b, 3)
        codes[..., 0, 0] = math.nan
        for fn in (metrics.l0, metrics.dead_fraction):
            with pytest.raises(ValueError, match="codes contains non-finite"):
                fn(codes)
    elif case == "zero_row":
        learned = random_rows(0, 3, d)
        learned[1] = 0
        for fn in (metrics.mmcs, metrics.mcc, metrics.feature_recovery, metrics.detect_compositions):
            with pytest.raises(ValueError, match="learned has rows of norm 0"):
                fn(learned, random_rows(1, 2, d))
    elif case == "shape":
        with pytest.raises(ValueError, match="x_hat"):
            metrics.fvu(torch.randn(*lead, b, d), torch.randn(d))
        with pytest.raises(ValueError, match="codes"):
            metrics.l0(torch.rand(3))
    else:
        with pytest.raises(TypeError):
            metrics.l0("codes")
        with pytest.raises(TypeError):
            metrics.mmcs([[1.0, 0.0]], torch.eye(2))


_METRIC_BAD = {
    ("match_fraction", "threshold"): bad_float(0.0, 1.0, low_open=True),
    ("histogram_peaks", "bins"): bad_int(3),
    ("histogram_peaks", "prominence"): bad_float(0.0, 1.0),
    ("detect_compositions", "atom_tol"): bad_float(0.0, 1.0, low_open=True),
    ("detect_compositions", "fit_tol"): bad_float(0.0, 1.0, low_open=True),
    ("detect_compositions", "max_parts"): bad_int(2),
    ("detect_compositions", "n_candidates"): bad_int(2),
    ("detect_compositions", "min_share"): bad_float(0.0, 1.0, high_open=True),
}


@given(data=st.data())
def test_metric_parameters_are_checked(data):
    fn, name = data.draw(st.sampled_from(sorted(_METRIC_BAD)))
    value = data.draw(_METRIC_BAD[fn, name])
    args = (np.random.default_rng(0).random(50),) if fn == "histogram_peaks" else (random_rows(0, 4, 3), random_rows(1, 3, 3))
    with pytest.raises(ERRORS, match=rf"\b{name}\b"):
        getattr(metrics, fn)(*args, **{name: value})


# ------------------------------------------------------------------ recipe, decomposition, optimum
@given(s=st.integers(1, 20), d=st.integers(1, 4), seed=st.integers(0, 2**16), lead=st.sampled_from([(), (2,)]))
def test_geometric_median_is_no_worse_than_the_mean(s, d, seed, lead):
    x = torch.randn(*lead, s, d, generator=torch.Generator().manual_seed(seed))
    m = geometry.geometric_median(x)
    assert m.shape == (*lead, d) and torch.isfinite(m).all()

    def cost(c):
        return (x - c.unsqueeze(-2)).norm(dim=-1).sum(-1)

    assert (cost(m) <= cost(x.mean(-2)) * (1 + 1e-4) + 1e-5).all()


@given(
    name=st.sampled_from(["iters", "tol", "x"]), data=st.data(),
)
def test_geometric_median_refuses_bad_arguments(name, data):
    bad = {"iters": bad_int(1), "tol": bad_float(0.0), "x": st.sampled_from([torch.full((3, 2), math.nan), "x", torch.zeros(3)])}
    kw = {"x": torch.randn(5, 2), name: data.draw(bad[name])}
    with pytest.raises(ERRORS, match=rf"\b{name}\b"):
        geometry.geometric_median(**kw)


@given(
    b=st.integers(1, 6), n=st.integers(1, 8), d=st.integers(1, 4), aux_k=st.integers(1, 10),
    coeff=st.floats(1e-3, 1.0), seed=st.integers(0, 2**16), p_dead=st.floats(0.0, 1.0),
)
def test_aux_k_loss_is_finite_and_zero_without_dead_latents(b, n, d, aux_k, coeff, seed, p_dead):
    g = torch.Generator().manual_seed(seed)
    pre, W = torch.randn(b, n, generator=g), torch.randn(n, d, generator=g)
    resid = torch.randn(b, d, generator=g)
    dead = torch.rand(n, generator=g) < p_dead
    loss = recipe.aux_k_loss(pre, W, resid, dead, aux_k, coeff)
    assert torch.isfinite(loss) and loss >= 0
    if not dead.any():
        assert loss == 0


@given(
    m=st.integers(1, 5), n=st.integers(1, 7), d=st.integers(1, 4), max_terms=st.integers(1, 3),
    n_candidates=st.integers(1, 6), seed=st.integers(0, 2**16), exclude_self=st.booleans(),
)
def test_decompositions_are_non_negative_and_bounded(m, n, d, max_terms, n_candidates, seed, exclude_self):
    rows, dictionary = random_rows(seed, m, d), random_rows(seed + 1, n, d)
    if exclude_self:
        dictionary = torch.cat([rows, dictionary])
    for dec in decompose.decompose_rows(rows, dictionary, max_terms, exclude_self, n_candidates):
        assert len(dec.support) <= max_terms and (dec.coef > 0).all()
        assert -1 - 1e-9 <= dec.cos <= 1 + 1e-9 and -1 - 1e-9 <= dec.single_cos <= 1 + 1e-9
        decompose.is_combination(dec)
    frac, mask = decompose.combination_fraction(dictionary, max_terms=max_terms, n_candidates=n_candidates) if len(
        dictionary
    ) > 1 else (0.0, np.zeros(1, bool))
    assert 0 <= frac <= 1 and mask.dtype == bool


@given(p=st.lists(st.booleans(), max_size=8), data=st.data())
def test_precision_recall_in_unit_interval_or_nan(p, data):
    t = data.draw(st.lists(st.booleans(), min_size=len(p), max_size=len(p)))
    for v in decompose.precision_recall(np.array(p, bool), np.array(t, bool)):
        assert math.isnan(v) or 0 <= v <= 1
    with pytest.raises(ValueError):
        decompose.precision_recall(np.array(p + [True]), np.array(t))


@given(s=st.integers(1, 10), n=st.integers(1, 4), l1=st.floats(0.0, 2.0), seed=st.integers(0, 2**16))
def test_best_code_loss_is_finite_and_at_most_the_zero_code(s, n, l1, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(s, 2, generator=g)
    theta = torch.rand(n, generator=g) * 2 * math.pi
    D = torch.stack([theta.cos(), theta.sin()], -1)
    loss = optimum.best_code_loss(x, D, torch.zeros(2), l1)
    assert torch.isfinite(loss) and loss <= x.square().sum(-1).mean() + 1e-5  # c = 0 is always allowed


# ------------------------------------------------------------------------------------------ sweeps
@given(
    col=st.sampled_from(["l1_coeff", "learning_rate", "lambda", "ortho_weights", "l1s", "steps", "k",
                         "L1", "LR", "l1_coef", "lambda_ortho", "Ortho_Weight", "orth-lambda"]),
    data=st.data(),
)
def test_train_stack_refuses_columns_it_would_ignore(col, data):
    rows = sweep.grid(1, **{col: [0.1, 0.2]})
    with pytest.raises(ValueError, match=rf"column '{col}'"):
        sweep.train_stack(rows, lambda b: torch.randn(2, b, 3), 3, 4, steps=1, batch_size=2)


def test_train_stack_refuses_an_l1_column_for_topk():
    """A TopK SAE has no L1 term: a per-model l1 column would train identical copies."""
    rows = sweep.grid(1, l1=[0.1, 0.2])
    with pytest.raises(ValueError, match="'l1' column but kind='topk'"):
        sweep.train_stack(rows, lambda b: torch.randn(2, b, 3), 3, 4, kind="topk", k=2, steps=1, batch_size=2)


@given(axis=st.one_of(st.floats(), st.text(min_size=1, max_size=4), st.integers(), st.none()))
def test_grid_axes_must_be_lists(axis):
    with pytest.raises(ERRORS, match="grid axis lr"):
        sweep.grid(2, lr=axis)


@given(labels=st.lists(st.sampled_from(["rho", "amplitude", "exp", "seed_label"]), min_size=1, max_size=2, unique=True))
def test_train_stack_accepts_label_columns(labels):
    rows = pd.DataFrame({**{c: [0, 1] for c in labels}, "l1": [0.1, 0.2]})
    sae = sweep.train_stack(rows, lambda b: torch.randn(2, b, 3), 3, 4, steps=1, batch_size=2)
    assert sae.cfg.n_models == 2


# ------------------------------------------------------------------------------- public booleans
def _boolean_calls():
    """One call per public boolean parameter, each with the value under test (``v``)."""
    from sae_ortho.analysis import convergence, stats
    from sae_ortho.data import corpus, lm, lm_data, toy
    from sae_ortho.data.activations import harvest

    eye = torch.eye(3)
    stack = SAE(SAEConfig(3, 4, n_models=1))
    return {
        "metrics.mmcs(signed)": ("signed", lambda v: metrics.mmcs(-eye, eye, signed=v)),
        "metrics.mcc(signed)": ("signed", lambda v: metrics.mcc(-eye, eye, signed=v)),
        "sweep.train_stack(paired)": ("paired", lambda v: sweep.train_stack(
            sweep.grid(1, l1=[0.1]), [toy.SphereData(3)], 3, 4, steps=1, batch_size=2, paired=v)),
        "sweep.train_stack(progress)": ("progress", lambda v: sweep.train_stack(
            sweep.grid(1, l1=[0.1]), [toy.SphereData(3)], 3, 4, steps=1, batch_size=2, progress=v)),
        "sweep.ground_truth_scores(signed)": ("signed", lambda v: sweep.ground_truth_scores(stack, eye, signed=v)),
        "sweep.ground_truth_scores(reports)": ("reports", lambda v: sweep.ground_truth_scores(stack, eye, reports=v)),
        "toy.ToyData(fast_sampler)": ("fast_sampler", lambda v: toy.ToyData(ToyDataConfig(4, 4), fast_sampler=v)),
        "stats.fmt(signed)": ("signed", lambda v: stats.fmt(0.5, 0.1, 0.9, signed=v)),
        "stats.verdict(higher_is_better)": ("higher_is_better", lambda v: stats.verdict(0.1, 0.2, higher_is_better=v)),
        "convergence.tail_change(relative)": ("relative", lambda v: convergence.tail_change(
            np.arange(10.0), np.ones(10), relative=v)),
        "corpus.load_corpus(fallback)": ("fallback", lambda v: corpus.load_corpus(fallback=v)),
        "lm.load_model(fallback)": ("fallback", lambda v: lm.load_model(fallback=v)),
        "lm_data.prepare(progress)": ("progress", lambda v: lm_data.prepare(LMDataConfig(), progress=v)),
        "activations.harvest(progress)": ("progress", lambda v: harvest(
            [CacheSpec("m", None, 0, 4, 8)], torch.zeros(2, 4, dtype=torch.long), lambda t: {}, progress=v)),
        "train(progress)": ("progress", lambda v: train(SAE(SAEConfig(3, 4)), lambda b: torch.randn(b, 3),
                                                        TrainConfig(steps=1, batch_size=2), progress=v)),
    }


@pytest.mark.parametrize("call", list(_boolean_calls()))
@pytest.mark.parametrize("value", ["no", "false", 0, 1, None])
def test_public_booleans_refuse_truthy_values(call, value):
    """A string such as "no" is truthy: it used to switch the option on (mmcs(-I, I, signed="no") gave 0)."""
    name, fn = _boolean_calls()[call]
    with pytest.raises(ParameterTypeError, match=rf"^{name} must be a bool \(True or False\), got {re.escape(repr(value))}$"):
        fn(value)


def test_lm_data_config_refuses_repeated_layers():
    """Refused on construction, not after loading the model and the corpus."""
    with pytest.raises(ValueError, match=r"^layers must be a non-empty tuple of distinct ints >= 0, got \(3, 3\)$"):
        LMDataConfig(layers=(3, 3))


@given(l1=st.one_of(st.floats(0.01, 10.0).filter(lambda v: v != 0.1), st.tuples(st.just(0.1), st.floats(0.2, 1.0))))
def test_an_l1_coefficient_for_a_topk_sae_is_refused_before_training(l1):
    calls = []

    def sample(b):
        calls.append(b)
        return torch.randn(*(() if isinstance(l1, float) else (2,)), b, 3)

    m = None if isinstance(l1, float) else 2
    with pytest.raises(ValueError, match=r"^l1_coeff=.* has no effect with kind='topk'"):
        train(SAE(SAEConfig(3, 4, "topk", 2, n_models=m)), sample, TrainConfig(steps=2, batch_size=2, l1_coeff=l1),
              progress=False)
    assert calls == []  # nothing was trained


def test_topk_trains_with_the_default_or_no_l1_coefficient():
    for l1 in (0.1, 0.0, (0.0, 0.1)):
        m = 2 if isinstance(l1, tuple) else None
        lead = () if m is None else (m,)
        train(SAE(SAEConfig(3, 4, "topk", 2, n_models=m)), lambda b, lead=lead: torch.randn(*lead, b, 3),
              TrainConfig(steps=2, batch_size=2, l1_coeff=l1), progress=False)
