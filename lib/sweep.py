"""Hyperparameter sweeps of many small SAEs, trained as one stacked model.

A sweep is a table with one row per model (grid axes and a seed); the rows are trained together
as a stacked :class:`lib.sae.SAE` (models along the leading dimension, per-model learning rate,
L1 and orthogonality weight), then evaluated into more columns of the same table.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from lib import metrics
from lib.objective import objective_terms
from lib.optimum import Optimum
from lib.ortho import OrthoConfig
from lib.sae import SAE, SAEConfig
from lib.toy import SphereData, ToyData, stack_sampler
from lib.train import TrainConfig, TrainResult, train
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
    paired: bool = False,
    init_scheme: str = "tied",
) -> SAE:
    """Train one SAE per row of ``rows``, all at once.

    Columns ``lr``, ``l1`` and ``ortho_weight`` of ``rows``, where present, set that model's value;
    otherwise the keyword argument applies to every model.

    Args:
        sample: ``sample(batch) -> x: [len(rows), batch, d]``, or one data set per row.
        seed: seed of the decoder initialisation.
        init: edits the freshly initialised SAE in place before training (e.g. a constructed
            starting point from :mod:`lib.constructions`).
        paired: models with the same ``seed`` column share their initialisation, and models with
            the same seed and the same data set share every batch (common random numbers), so
            conditions can be compared seed by seed. Seed ``s`` then starts from, and sees the data
            of, model ``s`` of an unpaired stack of ``[data] * n_seeds``. Needs a ``seed`` column
            and one data set per row.
        init_scheme: :attr:`lib.sae.SAEConfig.init` (``"tied"`` or ``"independent"`` encoder) of
            every model; a column ``init`` of ``rows`` sets it per model instead (all schemes start
            from the same decoders for the same seed).
    """
    return fit_stack(
        rows, sample, d, n_latents, kind=kind, k=k, steps=steps, batch_size=batch_size, lr=lr, l1=l1,
        ortho_weight=ortho_weight, ortho=ortho, seed=seed, device=device, progress=progress, init=init,
        paired=paired, init_scheme=init_scheme,
    )[0]


def _paired(rows: pd.DataFrame, sample: Source) -> tuple[Callable[[int], Tensor], list[int]]:
    """(sampler sharing batches per (data set, seed), index of each model's seed among the sorted
    distinct seeds)."""
    if "seed" not in rows:
        raise ValueError("paired=True needs a 'seed' column in rows")
    if callable(sample):
        raise TypeError("paired=True needs one data set per row, not a sampler callable")
    datasets = list(sample)
    if len(datasets) != len(rows):
        raise ValueError(f"need one data set per row: {len(datasets)} data sets for {len(rows)} rows")
    seeds = [int(s) for s in rows["seed"]]
    order = list(dict.fromkeys(id(ds) for ds in datasets))  # data sets in order of first appearance
    by_id = {id(ds): ds for ds in datasets}
    keys = [(i, s) for i in order for s in sorted({s for ds, s in zip(datasets, seeds) if id(ds) == i})]
    pos = {key: j for j, key in enumerate(keys)}
    idx = torch.tensor([pos[(id(ds), s)] for ds, s in zip(datasets, seeds)])
    unique = [by_id[i] for i, _ in keys]
    distinct = sorted(set(seeds))
    return (lambda batch: stack_sampler(unique, batch)[idx]), [distinct.index(s) for s in seeds]


def fit_stack(
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
    paired: bool = False,
    init_scheme: str = "tied",
    snapshot_steps: Sequence[int] = (),
    log_every: int | None = None,
) -> tuple[SAE, TrainResult]:
    """:func:`train_stack`, also returning the training history and parameter snapshots.

    Args:
        snapshot_steps: steps after which a copy of the stack's parameters is kept
            (``TrainResult.snapshots``); with the default constant learning rate, the snapshot at
            step s is the model a run of s steps would end with.
        log_every: steps between history records (default: steps // 10).
    """
    check_instance("rows", rows, pd.DataFrame)
    m = len(rows)
    if m == 0:
        raise ValueError("rows is empty: nothing to train")
    _check_hyperparameter_columns(rows)
    seed = check_int("seed", seed, 0)
    if init is not None:
        check_callable("init", init)
    schemes = [str(v) for v in rows["init"]] if "init" in rows else [init_scheme] * m
    # the stack's config records one scheme; with an "init" column each model follows its row
    stack_scheme = schemes[0] if len(set(schemes)) == 1 else "tied"
    sae_cfg = SAEConfig(d=d, n_latents=n_latents, kind=kind, k=k, n_models=m, init=stack_scheme)
    cfg = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=_column_or(rows, "lr", lr),
        l1_coeff=_column_or(rows, "l1", l1),
        ortho_weight=_column_or(rows, "ortho_weight", ortho_weight),
        ortho=ortho or OrthoConfig(),
        log_every=log_every or max(1, steps // 10),
        snapshot_steps=tuple(int(s) for s in snapshot_steps),
    )
    if paired:
        sampler, index = _paired(rows, sample)
        n_base = max(index) + 1
    else:
        sampler, index, n_base = as_sampler(sample), list(range(m)), m
    if not paired and len(set(schemes)) == 1:
        sae = SAE(sae_cfg, generator=torch.Generator().manual_seed(seed))
    else:
        # every scheme's initial stack from the same seed (so the decoders agree), then model i
        # takes row index[i] of its scheme's stack
        bases = {
            s: SAE(SAEConfig(d=d, n_latents=n_latents, kind=kind, k=k, n_models=n_base, init=s),
                   generator=torch.Generator().manual_seed(seed))
            for s in dict.fromkeys(schemes)
        }
        sae = SAE(sae_cfg, generator=torch.Generator())  # parameters replaced below
        with torch.no_grad():
            for name, p in sae.named_parameters():
                for s, base in bases.items():
                    rows_s = [i for i in range(m) if schemes[i] == s]
                    p[rows_s] = getattr(base, name)[[index[i] for i in rows_s]]
    if init is not None:
        init(sae)
    sae = sae.to(device)
    result = train(sae, sampler, cfg, progress=progress)
    return sae.cpu(), result


def eval_batches(datasets: Sequence[ToyData], n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Fixed evaluation inputs and their ground-truth coefficients, one set per *distinct* data
    set (models on the same data set are evaluated on the same samples, as pairing needs). Every
    data set draws from the same ``seed``, so data sets that differ only in their embedding get the
    same coefficients; the global RNG stream is left where it was.

    Returns:
        ``x: [M, n, d]`` and ``coeffs: [M, n, F]`` (one entry per model, shared where the data set is).
    """
    state = torch.get_rng_state()
    try:
        cache: dict[int, tuple[Tensor, Tensor]] = {}
        for ds in datasets:
            if id(ds) not in cache:
                torch.manual_seed(seed)
                cache[id(ds)] = tuple(ds.sample(n))
        x = torch.stack([cache[id(ds)][0] for ds in datasets])
        c = torch.stack([cache[id(ds)][1] for ds in datasets])
        return x, c
    finally:
        torch.set_rng_state(state)


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


def at_step(sae: SAE, snapshot: dict[str, Tensor]) -> SAE:
    """A copy of the stack ``sae`` with the parameters of a snapshot (``TrainResult.snapshots[step]``)."""
    out = SAE(sae.cfg, generator=torch.Generator())  # init overwritten
    out.load_state_dict(snapshot)
    return out


def subset(sae: SAE, index: Sequence[int]) -> SAE:
    """A stack of the models ``index`` of ``sae`` (copied parameters)."""
    index = [int(i) for i in index]
    if not index:
        raise ValueError("index is empty")
    out = SAE(dataclasses.replace(sae.cfg, n_models=len(index)), generator=torch.Generator())  # init overwritten
    out.load_state_dict({k: v[index].clone() for k, v in sae.state_dict().items()})
    return out


def optimum_scores(
    sae: SAE,
    x: Tensor,
    optima: Sequence[Optimum],
    l1: Sequence[float] | float,
    ortho_weight: Sequence[float] | float = 0.0,
    ortho: OrthoConfig | None = None,
) -> pd.DataFrame:
    """Each stacked model against its objective's optimum (:mod:`lib.optimum`, 2-D toy data).

    Args:
        x: [S, 2] the evaluation samples the optima were computed on (shared by all models).
        optima: one :class:`lib.optimum.Optimum` per model (of the objective with that model's
            ``l1`` and ``ortho_weight``).

    Returns:
        One row per model: ``objective`` (vanilla, or penalised with ``ortho_weight``), ``gap``
        (relative excess over the optimum's loss) and ``angle_err`` (Hungarian-matched angle in
        degrees between the decoder rows and the optimum's).
    """
    m = sae.cfg.n_models
    if len(optima) != m:
        raise ValueError(f"need one optimum per model: {len(optima)} for {m} models")
    obj = objective_terms(sae, x, l1, ortho_weight, ortho)["penalised"]
    best = np.array([o.loss for o in optima])
    return pd.DataFrame({
        "objective": obj,
        "gap": (obj - best) / best,
        "angle_err": [metrics.matched_angle_error(sae.W_dec[i].detach(), o.decoder) for i, o in enumerate(optima)],
    })


def ground_truth_scores(
    sae: SAE, true: Tensor | Sequence[Tensor], composed: Tensor | None = None, signed: bool = False,
    reports: bool = False, **detector: float,
) -> pd.DataFrame:
    """Recovery of ground-truth directions by each stacked model's decoder.

    Args:
        true: [F, d] true directions shared by all models, or one [F, d] per model.
        composed: optional [C, d] composed directions; adds ``mcc_composed``.
        signed: also the signed scores ``mmcs_signed``, ``mcc_signed`` (and
            ``mcc_composed_signed``), which tell a feature from its antipode.
        reports: also the detector's :class:`lib.metrics.CompositionReport` (column ``report``).
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
        if reports:
            row["report"] = rep
        if composed is not None:
            row["mcc_composed"] = metrics.mcc(W, composed)
        if signed:
            row["mmcs_signed"] = metrics.mmcs(W, trues[i], signed=True)
            row["mcc_signed"] = metrics.mcc(W, trues[i], signed=True)
            if composed is not None:
                row["mcc_composed_signed"] = metrics.mcc(W, composed, signed=True)
        out.append(row)
    return pd.DataFrame(out)


@torch.no_grad()
def activation_scores(
    sae: SAE, x: Tensor, coeffs: Tensor, true: Tensor, reports: Sequence[metrics.CompositionReport] | None = None,
    **detector,
) -> pd.DataFrame:
    """Per stacked model: compositions by what latents fire on (:func:`lib.metrics.activation_compositions`
    on the codes of ``x: [S, d]`` with ground-truth ``coeffs: [S, F]``) and the agreement with the
    geometric detector (:func:`lib.metrics.detector_agreement`, decoder rows vs ``true: [F, d]``;
    ``reports``: the geometric reports per model, if already computed).

    Returns:
        One row per model: ``n_compositions_act`` and ``n_mergers_act`` (latents by activation),
        ``detector_agree`` (fraction of latents both detectors classify alike as composition or not),
        ``compositions_both`` (latents both call compositions) and ``geometric_as_merger``
        (geometric compositions that fire on each part alone).
    """
    out = []
    for i in range(sae.cfg.n_models):  # one model at a time: [S, n] codes, not [M, S, n]
        single = sae.select(i)
        act = metrics.activation_compositions(single.encode(x), coeffs, **detector)
        geo = reports[i] if reports is not None else metrics.detect_compositions(single.W_dec.detach(), true)
        agree = metrics.detector_agreement(geo, act)
        out.append({"n_compositions_act": act.n_compositions, "n_mergers_act": act.n_mergers,
                    "detector_agree": agree["agree"], "compositions_both": agree["both"],
                    "geometric_as_merger": agree["geometric_as_merger"]})
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
