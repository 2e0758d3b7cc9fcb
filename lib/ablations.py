"""Ablations of the orthogonality loss: named variants, trained as stacks over seeds.

A :class:`Variant` is one design choice (penalty configuration, weight, base SAE, dictionary
size). :func:`run_variants` trains every variant as one stack of ``n_seeds`` SAEs on the same data
and returns one table row per trained SAE, so the notebooks only choose variants and plot;
:func:`run_lm_variants` does the same on cached language-model activations (one run per seed,
shared through :func:`lib.runs.train_lm_sae`). :func:`summary` turns that table into "mean ± std" per variant with the change against a
reference variant, and :func:`verdict` says whether a change exceeds the spread over seeds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from lib import lm_eval, metrics, sweep
from lib.lm_data import LMData
from lib.ortho import OrthoConfig
from lib.runs import LMSAESpec, train_lm_sae
from lib.sae import SAE, SAE_KINDS
from lib.validation import (
    check_bool,
    check_choice,
    check_columns,
    check_float,
    check_instance,
    check_int,
    check_numbers,
    check_str,
    check_tensor,
)


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
    """

    name: str
    group: str
    ortho_weight: float = 0.0
    ortho: OrthoConfig = field(default_factory=OrthoConfig)
    kind: str = "relu"
    k: int | None = None
    n_latents: int | None = None

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


def nn_cos_stats(W_dec: Tensor) -> dict[str, float]:
    """Summary of the nearest-neighbour |cos| distribution of decoder rows ``[n, d]``."""
    c = metrics.nn_abs_cos_distribution(W_dec)
    return {"nn_cos_mean": float(c.mean()), "nn_cos_p95": float(np.quantile(c, 0.95)), "near_duplicates": int((c > 0.9).sum())}


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
    steps: int,
    batch_size: int,
    lr: float = 3e-3,
    l1: float = 0.1,
    seed: int = 0,
    device: str = "cpu",
    init: Callable[[SAE], None] | None = None,
    extra: Callable[[SAE, int], dict] | None = None,
    desc: str = "variants",
) -> tuple[pd.DataFrame, dict[str, SAE]]:
    """Train each variant as a stack of ``n_seeds`` SAEs and evaluate every model.

    Args:
        sample: ``batch -> [n_seeds, batch, d]`` or a sequence of ``n_seeds`` toy data sets.
        x_eval: [S, d] fixed evaluation inputs (shared by all models).
        true: [F, d] ground-truth directions (toy data): adds MMCS, MCC, composition counts
            and the fraction of features learnt alone.
        rare: [F] bool mask of rare features: adds ``rare_alone``.
        init: constructed starting point applied to every stack before training.
        extra: ``extra(single_sae, model_index) -> dict`` of more columns per model.

    Returns:
        One row per trained model (variant, group, seed, metrics) and the trained stacks by name.
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
    rows, stacks = [], {}
    for v in tqdm(variants, desc=desc):
        torch.manual_seed(seed)  # every variant sees the same data stream, whatever the order
        grid = sweep.grid(n_seeds, ortho_weight=[v.ortho_weight])
        sae = sweep.train_stack(
            grid, sample, d=d, n_latents=v.n_latents or n_latents, kind=v.kind, k=v.k,
            steps=steps, batch_size=batch_size, lr=lr, l1=l1, ortho=v.ortho, seed=seed,
            device=device, init=init,
        )
        stacks[v.name] = sae
        table = pd.concat([grid, sweep.evaluate_stack(sae, x_eval, l1 if v.kind == "relu" else 0.0)], axis=1)
        if true is not None:
            gt = sweep.ground_truth_scores(sae, true)
            if rare is not None:
                gt["rare_alone"] = [float(np.mean(np.asarray(s)[rare] == metrics.ALONE)) for s in gt.status]
            table = pd.concat([table, gt.drop(columns="status")], axis=1)
        per_model = []
        for i in range(n_seeds):
            row = nn_cos_stats(sae.W_dec[i].detach())
            if extra is not None:
                row.update(extra(sae.select(i), i))
            per_model.append(row)
        table = pd.concat([table, pd.DataFrame(per_model)], axis=1)
        rows.append(table.assign(variant=v.name, group=v.group, n_latents=v.n_latents or n_latents))
    return pd.concat(rows, ignore_index=True), stacks


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
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Train each variant ``n_seeds`` times on cached language-model activations and evaluate.

    Args:
        base: the shared training settings; each variant replaces its penalty, weight, kind and
            (if set) dictionary size.
        x_eval: [N, d] held-out activations of ``layer``.
        ce_tokens: [n_seq, ctx] held-out tokens: adds CE loss recovered for the first seed of
            every variant (one spliced pass each), or None to skip.

    Returns:
        One row per trained SAE (variant, group, seed, L0, FVE, dead, dense, nearest-neighbour
        |cos| stats), and the CE table (None without ``ce_tokens``).
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
    sample = data.train[layer].sampler()  # loaded once, shared by every run
    rows, first = [], {}
    for v in tqdm(variants, desc="LM variants"):
        spec = dataclasses.replace(
            base, name=f"abl-{base.name}", kind=v.kind, k=v.k, ortho_weight=v.ortho_weight, ortho=v.ortho,
            n_latents=v.n_latents or base.n_latents,
        )
        for s in range(n_seeds):
            sae, _ = train_lm_sae(data, layer, spec, seed + s, sample, device=device)
            if s == 0:
                first[v.name] = sae
            rows.append({
                "variant": v.name, "group": v.group, "seed": s, "n_latents": spec.n_latents,
                **lm_eval.activation_metrics(sae, x_eval), **nn_cos_stats(sae.W_dec.detach()),
            })
    ce = None if ce_tokens is None else lm_eval.ce_table(data.lm, ce_tokens, layer, first)
    return pd.DataFrame(rows), ce


def verdict(df: pd.DataFrame, col: str, higher_is_better: bool, reference: str = "proposal") -> pd.Series:
    """Per variant, how it compares with ``reference`` on ``col``: "better", "worse" or "same".

    A difference counts when the means differ by more than the larger of the two standard
    deviations over seeds plus 1% of the reference mean's magnitude; otherwise "same" (not
    distinguishable at this number of seeds). With fewer than 2 seeds there is no spread to
    compare with: every verdict is "n/a".
    """
    check_columns("df", df, ["variant", col])
    check_bool("higher_is_better", higher_is_better)
    g = df.groupby("variant", sort=False)[col]
    if g.size().min() < 2:
        return pd.Series("n/a", index=g.size().index)
    mean, std = g.mean(), g.std(ddof=0).fillna(0.0)
    if reference not in mean:
        raise ValueError(f"reference {reference!r} is not a variant in the table")
    diff = mean - mean[reference]
    tol = np.maximum(std, std[reference]) + 0.01 * abs(mean[reference])
    sign = np.sign(diff) * (1 if higher_is_better else -1)
    return pd.Series(np.where(diff.abs() <= tol, "same", np.where(sign > 0, "better", "worse")), index=mean.index)
