"""Hyperparameter sweeps of many small SAEs, trained as one stacked model.

A sweep is a table with one row per model (grid axes and a seed); the rows are trained together
as a stacked :class:`lib.sae.SAE` (models along the leading dimension, per-model learning rate,
L1 and orthogonality weight), then evaluated into more columns of the same table.
"""

from __future__ import annotations

import difflib
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
from lib.validation import (
    ParameterTypeError,
    check_callable,
    check_columns,
    check_float,
    check_instance,
    check_int,
    check_numbers,
    check_tensor,
    is_number,
)


def grid(n_seeds: int, **axes: Sequence) -> pd.DataFrame:
    """The product of the ``axes`` values and ``seed = 0..n_seeds-1``: one row per model.

    Each axis is a list (or tuple, array) of values; a single value or a string is an error (a
    string would otherwise be split into characters)."""
    n_seeds = check_int("n_seeds", n_seeds, 1)
    if "seed" in axes:
        raise ValueError("grid axis 'seed' is reserved: the seeds are 0..n_seeds-1")
    for name, values in axes.items():
        if isinstance(values, (str, bytes, dict)) or not isinstance(values, (Sequence, np.ndarray, pd.Index, pd.Series)):
            raise ParameterTypeError(f"grid axis {name} must be a list of values, got {values!r}")
        if len(values) == 0:
            raise ValueError(f"grid axis {name!r} is empty")
    names = [*axes, "seed"]
    rows = itertools.product(*axes.values(), range(n_seeds))
    return pd.DataFrame(list(rows), columns=names)


# Columns of a sweep table that set a per-model hyperparameter in train_stack.
PER_MODEL_COLUMNS = ("lr", "l1", "ortho_weight")
# Column names that look like a hyperparameter but would be ignored: the name of the same setting
# elsewhere, or a setting that is shared by the whole stack.
_NOT_PER_MODEL = {
    "l1_coeff": "l1", "lambda": "ortho_weight", "ortho": "ortho_weight", "lambda_orth": "ortho_weight",
    "learning_rate": "lr", "steps": None, "batch_size": None, "kind": None, "k": None,
    "d": None, "n_latents": None, "n_models": None,
}


def _check_hyperparameter_columns(rows: pd.DataFrame) -> None:
    """Refuse columns that would silently have no effect on training (misspelt hyperparameters)."""
    for col in rows.columns:
        if not isinstance(col, str) or col in PER_MODEL_COLUMNS:
            continue
        close = difflib.get_close_matches(col, PER_MODEL_COLUMNS, n=1, cutoff=0.8)
        if col in _NOT_PER_MODEL or close:
            meant = _NOT_PER_MODEL.get(col) or (close[0] if close else None)
            hint = f"; did you mean {meant!r}?" if meant else " (it is shared by every model: pass it as a keyword)"
            raise ValueError(
                f"rows has a column {col!r} that train_stack would ignore: the per-model columns are "
                f"{PER_MODEL_COLUMNS}{hint}"
            )


def _column_or(rows: pd.DataFrame, name: str, default: float) -> tuple[float, ...]:
    if name in rows:
        values = []
        for i, v in enumerate(rows[name]):
            if not is_number(v):
                raise ParameterTypeError(f"column {name!r} of rows must hold numbers, got {v!r} in row {i}")
            values.append(float(v))
        return tuple(values)
    return (float(default),)


Source = Callable[[int], Tensor] | Sequence[ToyData | SphereData]


def as_sampler(source: Source) -> Callable[[int], Tensor]:
    """A stacked sampler ``batch -> x: [M, batch, d]`` from a callable or one data set per model."""
    if callable(source):
        return source
    if isinstance(source, (str, bytes)) or not isinstance(source, Sequence):
        raise ParameterTypeError(
            f"sample must be a sampler batch -> [M, batch, d] or a list of data sets (one per model), got {source!r}"
        )
    datasets = list(source)
    if not datasets:
        raise ValueError("need at least one data set (one per model)")
    return lambda batch: stack_sampler(datasets, batch)


def eval_inputs(source: Source, n: int, seed: int) -> Tensor:
    """A fixed evaluation set ``[M, n, d]`` drawn from its own seed, leaving the global RNG stream
    (the training data) exactly where it was."""
    n = check_int("n", n, 1)
    seed = check_int("seed", seed, 0)
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
    check_instance("rows", rows, pd.DataFrame)
    m = len(rows)
    if m == 0:
        raise ValueError("rows is empty: nothing to train")
    _check_hyperparameter_columns(rows)
    seed = check_int("seed", seed, 0)
    if init is not None:
        check_callable("init", init)
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
    check_instance("sae", sae, SAE)
    if not sae.stacked:
        raise ValueError("evaluate_stack needs a stacked SAE (cfg.n_models set)")
    m = sae.cfg.n_models
    x = check_tensor("x", x, (2, 3))
    if x.ndim == 2:
        x = x.expand(m, -1, -1)
    l1s = (check_float("l1", l1, 0.0),) if is_number(l1) else check_numbers("l1", l1, 0.0)
    if len(l1s) not in (1, m):
        raise ValueError(f"l1 needs 1 value or one per model (n_models={m}), got {len(l1s)}")
    x_hat, codes = sae(x)
    recon = (x - x_hat).square().sum(-1).mean(-1)
    l1_t = torch.tensor(np.asarray(l1s, dtype=np.float32)).expand(m)
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
    check_instance("sae", sae, SAE)
    if not sae.stacked:
        raise ValueError("ground_truth_scores needs a stacked SAE (cfg.n_models set)")
    m = sae.cfg.n_models
    trues = [true] * m if isinstance(true, Tensor) else list(true)
    if len(trues) != m:
        raise ValueError(f"true must be one [F, d] tensor or one per model (n_models={m}), got {len(trues)}")
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
    by, cols = ([c] if isinstance(c, str) else list(c) for c in (by, cols))
    check_columns("df", df, [*by, *cols])
    digits = check_int("digits", digits, 1)
    g = df.groupby(list(by), sort=False)[list(cols)]
    mean, std = g.mean(), g.std(ddof=0)
    out = mean.astype(object)
    for c in cols:
        out[c] = [f"{m:.{digits}g} ± {s:.1g}" for m, s in zip(mean[c], std[c])]
    return out


def seeds_matrix(df: pd.DataFrame, x: str, value: str, where: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pivot to ``(x_values, [n_seeds, n_x])`` for plotting mean and spread over seeds."""
    check_columns("df", df, ["seed", x, value, *(where or {})])
    if where:
        mask = np.ones(len(df), dtype=bool)
        for k, v in where.items():
            mask &= (df[k] == v).to_numpy()
        df = df[mask]
    table = df.pivot_table(index="seed", columns=x, values=value, aggfunc="mean")
    return table.columns.to_numpy(), table.to_numpy()
