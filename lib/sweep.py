"""Hyperparameter sweeps of many small SAEs, trained as one stacked model.

A sweep is a table with one row per model (grid axes and a seed); the rows are trained together
as a stacked :class:`lib.sae.SAE` (models along the leading dimension, per-model learning rate,
L1 and orthogonality weight), then evaluated into more columns of the same table.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from lib import metrics
from lib.ortho import OrthoConfig
from lib.sae import SAE, SAEConfig
from lib.toy import SphereData, ToyData, stack_sampler
from lib.train import TrainConfig, train


def grid(n_seeds: int, **axes: Sequence) -> pd.DataFrame:
    """The product of the ``axes`` values and ``seed = 0..n_seeds-1``: one row per model."""
    if not isinstance(n_seeds, int) or n_seeds <= 0:
        raise ValueError(f"n_seeds must be a positive int, got {n_seeds!r}")
    for name, values in axes.items():
        if len(values) == 0:
            raise ValueError(f"grid axis {name!r} is empty")
    names = [*axes, "seed"]
    rows = itertools.product(*axes.values(), range(n_seeds))
    return pd.DataFrame(list(rows), columns=names)


def _column_or(rows: pd.DataFrame, name: str, default: float) -> tuple[float, ...]:
    if name in rows:
        return tuple(float(v) for v in rows[name])
    return (float(default),)


Source = Callable[[int], Tensor] | Sequence[ToyData | SphereData]


def as_sampler(source: Source) -> Callable[[int], Tensor]:
    """A stacked sampler ``batch -> x: [M, batch, d]`` from a callable or one data set per model."""
    if callable(source):
        return source
    datasets = list(source)
    if not datasets:
        raise ValueError("need at least one data set (one per model)")
    return lambda batch: stack_sampler(datasets, batch)


def eval_inputs(source: Source, n: int, seed: int) -> Tensor:
    """A fixed evaluation set ``[M, n, d]`` drawn from its own seed, leaving the global RNG stream
    (the training data) exactly where it was."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        return as_sampler(source)(n)
    finally:
        torch.set_rng_state(state)


def train_stack(
    rows: pd.DataFrame,
    sample: Source,
    d: int,
    n_latents: int,
    *,
    kind: str = "relu",
    k: int | None = None,
    steps: int = 2000,
    batch_size: int = 512,
    lr: float = 3e-3,
    l1: float = 0.1,
    ortho_weight: float = 0.0,
    ortho: OrthoConfig | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    init: Callable[[SAE], None] | None = None,
) -> SAE:
    """Train one SAE per row of ``rows``, all at once.

    Columns ``lr``, ``l1`` and ``ortho_weight`` of ``rows``, where present, set that model's value;
    otherwise the keyword argument applies to every model.

    Args:
        sample: ``sample(batch) -> x: [len(rows), batch, d]``, or one data set per row.
        seed: seed of the decoder initialisation.
        init: edits the freshly initialised SAE in place before training (e.g. a constructed
            starting point from :mod:`lib.constructions`).
    """
    m = len(rows)
    if m == 0:
        raise ValueError("rows is empty: nothing to train")
    sae_cfg = SAEConfig(d=d, n_latents=n_latents, kind=kind, k=k, n_models=m)
    cfg = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=_column_or(rows, "lr", lr),
        l1_coeff=_column_or(rows, "l1", l1),
        ortho_weight=_column_or(rows, "ortho_weight", ortho_weight),
        ortho=ortho or OrthoConfig(),
        log_every=max(1, steps // 10),
    )
    sae = SAE(sae_cfg, generator=torch.Generator().manual_seed(seed))
    if init is not None:
        init(sae)
    sae = sae.to(device)
    train(sae, as_sampler(sample), cfg, progress=progress)
    return sae.cpu()


@torch.no_grad()
def evaluate_stack(sae: SAE, x: Tensor, l1: Sequence[float] | float = 0.0) -> pd.DataFrame:
    """Objective and model-only metrics of each stacked model on fixed inputs.

    Args:
        x: [M, S, d] (one evaluation set per model) or [S, d] shared by all models.
        l1: per-model (or one) L1 coefficient for the ``loss`` column.

    Returns:
        One row per model: loss (recon + l1 * L1), recon, l0, fvu, dead.
    """
    m = sae.cfg.n_models
    if x.ndim == 2:
        x = x.expand(m, -1, -1)
    x_hat, codes = sae(x)
    recon = (x - x_hat).square().sum(-1).mean(-1)
    l1_t = torch.tensor(np.asarray(l1, dtype=np.float32)).expand(m)
    return pd.DataFrame(
        {
            "loss": (recon + l1_t * codes.sum(-1).mean(-1)).numpy(),
            "recon": recon.numpy(),
            "l0": metrics.l0(codes).numpy(),
            "fvu": metrics.fvu(x, x_hat).numpy(),
            "dead": metrics.dead_fraction(codes).numpy(),
        }
    )


def ground_truth_scores(
    sae: SAE, true: Tensor | Sequence[Tensor], composed: Tensor | None = None, **detector: float
) -> pd.DataFrame:
    """Recovery of ground-truth directions by each stacked model's decoder.

    Args:
        true: [F, d] true directions shared by all models, or one [F, d] per model.
        composed: optional [C, d] composed directions; adds ``mcc_composed``.
        detector: keyword arguments for :func:`lib.metrics.detect_compositions`.

    Returns:
        One row per model: mmcs, mcc, (mcc_composed), n_compositions, alone, in_combination,
        missed (fractions of true features) and ``status`` (per-feature list).
    """
    m = sae.cfg.n_models
    trues = [true] * m if isinstance(true, Tensor) else list(true)
    out = []
    for i in range(m):
        W = sae.W_dec[i].detach()
        rep = metrics.detect_compositions(W, trues[i], **detector)
        row = {
            "mmcs": metrics.mmcs(W, trues[i]),
            "mcc": metrics.mcc(W, trues[i]),
            "n_compositions": rep.n_compositions,
            "alone": rep.fraction(metrics.ALONE),
            "in_combination": rep.fraction(metrics.IN_COMBINATION),
            "missed": rep.fraction(metrics.MISSED),
            "status": rep.feature_status,
        }
        if composed is not None:
            row["mcc_composed"] = metrics.mcc(W, composed)
        out.append(row)
    return pd.DataFrame(out)


def mean_std(df: pd.DataFrame, by: Sequence[str], cols: Sequence[str], digits: int = 3) -> pd.DataFrame:
    """``mean ± std`` over seeds of ``cols`` for each group of ``by``, as strings for printing."""
    g = df.groupby(list(by), sort=False)[list(cols)]
    mean, std = g.mean(), g.std(ddof=0)
    out = mean.astype(object)
    for c in cols:
        out[c] = [f"{m:.{digits}g} ± {s:.1g}" for m, s in zip(mean[c], std[c])]
    return out


def seeds_matrix(df: pd.DataFrame, x: str, value: str, where: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pivot to ``(x_values, [n_seeds, n_x])`` for plotting mean and spread over seeds."""
    if where:
        mask = np.ones(len(df), dtype=bool)
        for k, v in where.items():
            mask &= (df[k] == v).to_numpy()
        df = df[mask]
    table = df.pivot_table(index="seed", columns=x, values=value, aggfunc="mean")
    return table.columns.to_numpy(), table.to_numpy()
