"""Ablations of the orthogonality loss: named variants, trained as stacks over seeds.

A :class:`Variant` is one design choice (penalty configuration, weight, base SAE, dictionary
size). :func:`run_variants` trains every variant as one stack of ``n_seeds`` SAEs on the same data
and returns one table row per trained SAE, so the notebooks only choose variants and plot;
:func:`run_lm_variants` does the same on cached language-model activations (one run per seed,
shared through :func:`sae_ortho.experiments.runs.train_lm_sae`). Every variant sees the same data stream and starts
from the same initialisation for a given seed, so variants are compared seed by seed:
:func:`comparison` gives each variant's paired difference from a reference with a bootstrap
interval, and :func:`verdict` says "better" / "worse" only when that interval excludes zero
(:mod:`sae_ortho.analysis.stats`). A variant can be trained at several penalty weights at once
(``Variant.weight_factors``, paired by seed) and compared at its best weight (:func:`best_weight`).
:func:`summary` gives "mean ± std" per variant with the change against the reference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from sae_ortho import metrics
from sae_ortho.analysis import convergence, lm_eval, objective, stats
from sae_ortho.core.validation import (
    check_choice,
    check_columns,
    check_float,
    check_instance,
    check_int,
    check_numbers,
    check_str,
    check_tensor,
)
from sae_ortho.data.lm_data import LMData
from sae_ortho.experiments import sweep
from sae_ortho.experiments.runs import LMSAESpec, train_lm_sae
from sae_ortho.models.sae import SAE, SAE_KINDS
from sae_ortho.ortho import OrthoConfig


@dataclass(frozen=True)
class Variant:
    """One ablation setting.

    Attributes:
        name: label in tables and figures.
        group: the design choice it belongs to (e.g. ``"shape"``).
        ortho_weight: lambda_orth (0 = no penalty).
        ortho: how the penalty is computed.
        kind, k: base SAE (``"relu"`` with L1, or ``"topk"`` with ``k``).
        n_latents: dictionary size, or None for the run's default.
        weight_factors: train at ``ortho_weight * f`` for each factor f (one stack, paired by
            seed) to tune the weight of this variant; () trains at ``ortho_weight`` only.
    """

    name: str
    group: str
    ortho_weight: float = 0.0
    ortho: OrthoConfig = field(default_factory=OrthoConfig)
    kind: str = "relu"
    k: int | None = None
    n_latents: int | None = None
    weight_factors: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        check_str("name", self.name)
        check_str("group", self.group)
        object.__setattr__(self, "ortho_weight", check_float("ortho_weight", self.ortho_weight))
        check_instance("ortho", self.ortho, OrthoConfig)
        check_choice("kind", self.kind, SAE_KINDS)
        if self.kind == "topk" and self.k is None:
            raise ValueError(f"variant {self.name!r}: kind='topk' needs k")
        object.__setattr__(self, "k", check_int("k", self.k, 1, optional=True))
        if self.kind != "topk" and self.k is not None:
            raise ValueError(f"variant {self.name!r}: k is only used with kind='topk', got k={self.k!r}")
        object.__setattr__(self, "n_latents", check_int("n_latents", self.n_latents, 1, optional=True))
        if self.weight_factors:
            if self.ortho_weight == 0:
                raise ValueError(f"variant {self.name!r}: weight_factors need a non-zero ortho_weight to scale")
            if not isinstance(self.weight_factors, tuple) or not all(
                isinstance(f, (int, float)) and not isinstance(f, bool) and np.isfinite(f) and f > 0
                for f in self.weight_factors
            ) or len(set(self.weight_factors)) != len(self.weight_factors):
                raise ValueError(f"variant {self.name!r}: weight_factors must be a tuple of distinct positive numbers, "
                                 f"got {self.weight_factors!r}")

    @property
    def weights(self) -> list[float]:
        """The penalty weights this variant is trained at."""
        return [self.ortho_weight * f for f in self.weight_factors] or [self.ortho_weight]


def standard_variants(
    ortho_weight: float, weight_factors: Sequence[float], n_latents: int, size_factors: Sequence[float], k: int
) -> list[Variant]:
    """The ablation grid of the study brief (Q11) around the proposal.

    The proposal is ``Variant("proposal", ...)``: nearest neighbour by |cos| of decoder rows,
    ties -> mean, active latents with gradient into their neighbours, -log(1 - |cos|). Weights and
    sizes are given as factors of the proposal's, so that variants of runs at different scales
    (toy data, language model) carry the same names.
    """
    w = check_float("ortho_weight", ortho_weight)
    weight_factors = check_numbers("weight_factors", weight_factors, nonempty=False)
    size_factors = check_numbers("size_factors", size_factors, 0.0, low_open=True, nonempty=False)
    n_latents, k = check_int("n_latents", n_latents, 1), check_int("k", k, 1)
    prop = OrthoConfig()
    out = [
        Variant("vanilla", "reference"),
        Variant("proposal", "reference", w, prop),
        Variant("mean |cos| over all", "reduction", w, dataclasses.replace(prop, reduction="mean_all")),
        Variant("one tied neighbour", "ties", w, dataclasses.replace(prop, tie_mode="first")),
        Variant("neighbours frozen", "scope", w, dataclasses.replace(prop, neighbour_grad=False)),
        Variant("all latents", "scope", w, dataclasses.replace(prop, scope="all")),
    ]
    out += [
        Variant(f"shape {s}", "shape", w, dataclasses.replace(prop, shape=s))
        for s in ("linear", "square", "sigmoid", "c2_over_1mc")
    ]
    out.append(Variant("encoder rows", "target", w, dataclasses.replace(prop, target="encoder")))
    out += [Variant(f"λ × {f:g}", "weight", f * w, prop) for f in weight_factors if f not in (0, 1)]
    sizes = {f: max(2, round(f * n_latents)) for f in size_factors}
    out += [Variant(f"latents × {f:g}, vanilla", "size", 0.0, n_latents=n) for f, n in sizes.items()]
    out += [Variant(f"latents × {f:g}, proposal", "size", w, prop, n_latents=n) for f, n in sizes.items()]
    out += [
        Variant("TopK vanilla", "base", 0.0, kind="topk", k=k),
        Variant("TopK proposal", "base", w, prop, kind="topk", k=k),
    ]
    return out


def with_tuning(
    variants: Sequence[Variant], factors: Sequence[float], tune: Sequence[str], reference: str = "proposal",
    weight_group: str = "weight",
) -> list[Variant]:
    """The variants named in ``tune`` (and ``reference``) trained at several penalty weights, so
    they can be compared at their best weight (:func:`best_weight`).

    Each tuned variant gets ``weight_factors = factors`` (1 always included). The reference also
    gets the factors of the ``weight_group`` variants (``"λ × f"``, see :func:`standard_variants`),
    which are then dropped: their runs are the reference's factors (:func:`weight_rows`).

    Raises:
        ValueError: a name in ``tune`` that is not a variant, or a factor that is not positive.
    """
    names = {v.name for v in variants}
    missing = [t for t in [*tune, reference] if t not in names]
    if missing:
        raise ValueError(f"not variants: {missing}")
    if not factors or any(not f > 0 for f in factors):
        raise ValueError(f"factors must be positive numbers, got {list(factors)}")
    base = tuple(sorted({float(f) for f in factors} | {1.0}))
    weight_factors = [v.ortho_weight / ref.ortho_weight for ref in variants if ref.name == reference
                      for v in variants if v.group == weight_group]
    out = []
    for v in variants:
        if v.group == weight_group:
            continue
        if v.name == reference:
            v = dataclasses.replace(v, weight_factors=tuple(sorted(set(base) | {round(f, 12) for f in weight_factors})))
        elif v.name in tune:
            v = dataclasses.replace(v, weight_factors=base)
        out.append(v)
    return out


def weight_rows(df: pd.DataFrame, reference: str = "proposal") -> pd.DataFrame:
    """The reference's rows at every weight it was trained at, as variants ``"λ × f"`` (group
    ``"weight"``), for a weight sweep compared with ``"λ × 1"``."""
    rows = df[df.variant == reference]
    return rows.assign(variant=[f"λ × {f:g}" for f in rows.weight_factor], group="weight")


def nn_cos_stats(W_dec: Tensor) -> dict[str, float]:
    """Summary of the nearest-neighbour |cos| distribution of decoder rows ``[n, d]``."""
    c = metrics.nn_abs_cos_distribution(W_dec)
    return {"nn_cos_mean": float(c.mean()), "nn_cos_p95": float(np.quantile(c, 0.95)), "near_duplicates": int((c > 0.9).sum())}


def _slug(name: str) -> str:
    """A variant name as a folder name of the store."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_") or "variant"


def run_variants(
    variants: Sequence[Variant],
    sample: sweep.Source,
    d: int,
    n_latents: int,
    n_seeds: int,
    x_eval: Tensor,
    *,
    true: Tensor | None = None,
    rare: np.ndarray | None = None,
    coeffs: Tensor | None = None,
    steps: int,
    batch_size: int,
    lr: float = 3e-3,
    l1: float | Sequence[float] = 0.1,
    seed: int = 0,
    device: str = "cpu",
    init: Callable[[SAE], None] | None = None,
    extra: Callable[[SAE, int], dict] | None = None,
    reference_penalty: tuple[float, OrthoConfig] | None = None,
    desc: str = "variants",
    store: str | None = None,
    key: Any = None,
) -> tuple[pd.DataFrame, dict[str, SAE]]:
    """Train each variant as a stack of ``n_seeds`` SAEs and evaluate every model.

    Args:
        sample: ``batch -> [n_seeds, batch, d]`` or a sequence of ``n_seeds`` toy data sets
            (needed for several weights or L1 coefficients, which are trained paired by seed).
        x_eval: [S, d] fixed evaluation inputs (shared by all models).
        true: [F, d] ground-truth directions (toy data): adds MMCS, MCC, composition counts
            and the fraction of features learnt alone.
        rare: [F] bool mask of rare features: adds ``rare_alone``.
        coeffs: [S, F] ground-truth coefficients of ``x_eval`` (with ``true``): adds the
            activation-based composition count ``n_compositions_act`` and ``detector_agree``, the
            fraction of latents on which it agrees with the geometric detector.
        l1: one L1 coefficient, or several (a sweep for frontier comparisons; column ``l1``).
        init: constructed starting point applied to every stack before training.
        extra: ``extra(single_sae, model_index) -> dict`` of more columns per model.
        reference_penalty: ``(lambda_orth, config)`` of the penalised objective every model is
            scored on (``objective_penalised``, e.g. the proposal's); default: none.
        store, key: keep each variant's stack in the study's store as ``{store}/{variant}``
            (:func:`sae_ortho.experiments.sweep.fit_stack`).

    Returns:
        One row per trained model (variant, group, seed, weight, metrics, and the objectives on
        ``x_eval``: ``objective_vanilla``, ``objective_own`` = the variant's own training
        objective) and the trained stacks by name.
    """
    if not variants:
        raise ValueError("variants is empty")
    for i, v in enumerate(variants):
        check_instance(f"variants[{i}]", v, Variant)
    n_seeds = check_int("n_seeds", n_seeds, 1)
    seed = check_int("seed", seed, 0)
    x_eval = check_tensor("x_eval", x_eval, 2)
    if true is not None:
        true = check_tensor("true", true, 2)
    if rare is not None:
        rare = np.asarray(rare)
        if rare.dtype != bool or true is None or rare.shape != (true.shape[0],):
            raise ValueError(f"rare must be a bool mask with one entry per true feature (needs true), got {rare.dtype} {rare.shape}")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")
    l1s = [float(v) for v in np.atleast_1d(np.asarray(l1, dtype=float))]
    if not l1s:
        raise ValueError("l1 is empty")
    rows, stacks = [], {}
    for v in tqdm(variants, desc=desc):
        torch.manual_seed(seed)  # every variant sees the same data stream, whatever the order
        # an L1 sweep applies to ReLU variants; a TopK stack has no L1 term (it would train copies)
        axes = {"ortho_weight": v.weights} | ({"l1": l1s} if len(l1s) > 1 and v.kind == "relu" else {})
        grid = sweep.grid(n_seeds, **axes)
        paired = len(grid) > n_seeds
        if paired and callable(sample):
            raise ValueError(f"variant {v.name!r}: several weights or L1 values need one data set per seed, not a sampler")
        source = [list(sample)[s] for s in grid.seed] if paired else sample
        l1_models = grid.l1.to_numpy() if "l1" in grid else l1s[0]
        sae = sweep.train_stack(
            grid, source, d=d, n_latents=v.n_latents or n_latents, kind=v.kind, k=v.k,
            steps=steps, batch_size=batch_size, lr=lr, l1=l1s[0], ortho=v.ortho, seed=seed,
            device=device, init=init, paired=paired,
            store=None if store is None else f"{store}/{_slug(v.name)}", key=None if store is None else key,
        )
        stacks[v.name] = sae
        l1_eval = l1_models if v.kind == "relu" else 0.0
        table = pd.concat([grid, sweep.evaluate_stack(sae, x_eval, l1_eval)], axis=1)
        own = objective.objective_terms(sae, x_eval, l1_eval, grid.ortho_weight.to_numpy(), v.ortho)
        table["objective_vanilla"], table["objective_own"] = own["vanilla"], own["penalised"]
        if reference_penalty is not None:
            ref = objective.objective_terms(sae, x_eval, l1_eval, reference_penalty[0], reference_penalty[1])
            table["objective_penalised"] = ref["penalised"]
        if true is not None:
            gt = sweep.ground_truth_scores(sae, true)
            if rare is not None:
                gt["rare_alone"] = [float(np.mean(np.asarray(s)[rare] == metrics.ALONE)) for s in gt.status]
            if coeffs is not None:
                gt = pd.concat([gt, sweep.activation_scores(sae, x_eval, coeffs, true)], axis=1)
            table = pd.concat([table, gt.drop(columns="status")], axis=1)
        per_model = []
        for i in range(len(grid)):
            row = nn_cos_stats(sae.W_dec[i].detach())
            if extra is not None:
                row.update(extra(sae.select(i), i))
            per_model.append(row)
        table = pd.concat([table, pd.DataFrame(per_model)], axis=1)
        factors = v.weight_factors or (1.0,)
        table["weight_factor"] = np.repeat(factors, len(grid) // len(factors))
        rows.append(table.assign(variant=v.name, group=v.group, n_latents=v.n_latents or n_latents))
    return pd.concat(rows, ignore_index=True), stacks


def best_weight(df: pd.DataFrame, metric: str, higher_is_better: bool = True) -> pd.DataFrame:
    """For every variant trained at several weights, only the rows of the weight whose mean
    ``metric`` over seeds is best (the weight is chosen on the same seeds it is then compared on,
    the same for every tuned variant). Adds ``best_of``: the number of weights chosen from."""
    out = []
    for _, g in df.groupby("variant", sort=False):
        means = g.groupby("weight_factor")[metric].mean()
        best = means.idxmax() if higher_is_better else means.idxmin()
        out.append(g[g.weight_factor == best].assign(best_of=len(means)))
    return pd.concat(out, ignore_index=True)


def summary(df: pd.DataFrame, cols: Sequence[str], reference: str = "proposal", digits: int = 3) -> pd.DataFrame:
    """Per variant: ``mean ± std`` over seeds of ``cols``, and the mean change against ``reference``.

    Raises:
        ValueError: ``reference`` is not a variant of ``df``.
    """
    cols = [cols] if isinstance(cols, str) else list(cols)
    check_columns("df", df, ["group", "variant", *cols])
    if reference not in set(df.variant):
        raise ValueError(f"reference {reference!r} is not a variant in the table")
    g = df.groupby(["group", "variant"], sort=False)[list(cols)]
    mean, std = g.mean(), g.std(ddof=0)
    ref = mean.xs(reference, level="variant").iloc[0]
    out = pd.DataFrame(index=mean.index)
    for c in cols:
        out[c] = [f"{m:.{digits}g} ± {s:.1g}" for m, s in zip(mean[c], std[c])]
        out[f"Δ{c}"] = (mean[c] - ref[c]).round(digits)
    return out


def run_lm_variants(
    variants: Sequence[Variant],
    data: LMData,
    layer: int,
    n_seeds: int,
    base: LMSAESpec,
    x_eval: Tensor,
    ce_tokens: Tensor | None = None,
    seed: int = 0,
    device: str = "cpu",
    shared: dict[str, LMSAESpec] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Train each variant ``n_seeds`` times on cached language-model activations and evaluate.

    Args:
        base: the shared training settings; each variant replaces its penalty, weight, kind and
            (if set) dictionary size.
        shared: variant name -> the spec of runs trained elsewhere (e.g. notebook 02's vanilla,
            orthogonality and TopK SAEs) that the variant must use instead, so they are reused;
            refused unless that spec trains the variant (same kind, k, penalty and weight).
        x_eval: [N, d] held-out activations of ``layer``.
        ce_tokens: [n_seq, ctx] held-out tokens: adds CE loss recovered for the first seed of
            every variant (one spliced pass each), or None to skip.

    Returns:
        One row per trained SAE (variant, group, seed, L0, FVE, dead, dense, nearest-neighbour
        |cos| stats, its convergence gates' values and ``gates_pass``), and the CE table (None without ``ce_tokens``).
    """
    if not variants:
        raise ValueError("variants is empty")
    for i, v in enumerate(variants):
        check_instance(f"variants[{i}]", v, Variant)
    n_seeds = check_int("n_seeds", n_seeds, 1)
    seed = check_int("seed", seed, 0)
    check_instance("base", base, LMSAESpec)
    if layer not in data.train:
        raise ValueError(f"layer {layer!r} was not harvested; available: {sorted(data.train)}")
    shared = dict(shared or {})
    for name, spec in shared.items():
        check_instance(f"shared[{name!r}]", spec, LMSAESpec)
        v = next((v for v in variants if v.name == name), None)
        if v is None:
            raise ValueError(f"shared names {name!r}, which is not one of the variants {[v.name for v in variants]}")
        same = (spec.kind == v.kind and spec.k == v.k and float(spec.ortho_weight) == float(v.ortho_weight)
                and (v.ortho_weight == 0 or spec.ortho == v.ortho)
                and spec.n_latents == (v.n_latents or base.n_latents))
        if not same:
            raise ValueError(f"shared[{name!r}] does not train variant {name!r}: {spec} vs {v}")
    sample = data.train[layer].sampler()  # loaded once, shared by every run
    rows, first = [], {}
    for v in tqdm(variants, desc="LM variants"):
        spec = shared.get(v.name) or dataclasses.replace(
            base, name=f"abl-{base.name}", kind=v.kind, k=v.k, ortho_weight=v.ortho_weight, ortho=v.ortho,
            n_latents=v.n_latents or base.n_latents,
        )
        for s in range(n_seeds):
            sae, hist = train_lm_sae(data, layer, spec, seed + s, sample, device=device,
                                     keep_snapshots=v.name in shared)
            if s == 0:
                first[v.name] = sae
            gates = convergence.training_gates(hist, sae.W_dec.detach(), spec.initial_decoder(data.train[layer].d, seed + s))
            verdicts = [g.passed for g in gates]
            rows.append({
                "variant": v.name, "group": v.group, "seed": s, "n_latents": spec.n_latents,
                **lm_eval.activation_metrics(sae, x_eval), **nn_cos_stats(sae.W_dec.detach()),
                **{g.name: g.value for g in gates},
                "gates_pass": False if False in verdicts else (None if None in verdicts else True),
            })
    ce = None if ce_tokens is None else lm_eval.ce_table(data.lm, ce_tokens, layer, first)
    return pd.DataFrame(rows), ce


def comparison(
    df: pd.DataFrame,
    cols: Sequence[str],
    higher_is_better: dict[str, bool],
    reference: str = "proposal",
    digits: int = 3,
    by: Sequence[str] = (),
    ci_digits: int = 2,
) -> pd.DataFrame:
    """Per variant, for each column: the mean over seeds, the paired difference from ``reference``
    with its bootstrap 95% interval, and the verdict from that interval (:func:`sae_ortho.analysis.stats.compare`).

    Args:
        digits: significant digits of the mean.
        ci_digits: decimals of the difference and its interval (two by default: a bootstrap
            interval's third decimal moves with the last bits of the inputs, so printing it makes a
            checked output depend on the CPU).

    Returns:
        The long table of :func:`sae_ortho.analysis.stats.compare` with a ``text`` column,
        ``"mean (Δ +diff [low, high])"``.

    Raises:
        ValueError: ``reference`` is not a variant of ``df``, or a variant has two rows per seed
            (select one weight first, :func:`best_weight`).
    """
    if reference not in set(df.variant):
        raise ValueError(f"reference {reference!r} is not a variant in the table")
    out = stats.compare(df, "variant", reference, list(cols), higher_is_better, by=by)
    out["text"] = [
        f"{r['mean']:.{digits}g}" + ("" if r.variant == reference else
                                     f" (Δ {stats.fmt(r['diff'], r['low'], r['high'], ci_digits, signed=True)})")
        for _, r in out.iterrows()
    ]
    return out


def verdict(df: pd.DataFrame, col: str, higher_is_better: bool, reference: str = "proposal") -> pd.Series:
    """Per variant, how it compares with ``reference`` on ``col``: "better", "worse" or "no
    detectable difference", from the bootstrap 95% interval of the paired (same seed) difference
    of means; "n/a" with fewer than 2 seeds. The reference itself is "the reference"."""
    if reference not in set(df.variant):
        raise ValueError(f"reference {reference!r} is not a variant in the table")
    out = stats.compare(df, "variant", reference, col, {col: higher_is_better})
    return pd.Series(out.verdict.to_numpy(), index=pd.Index(out.variant, name="variant"))
