"""Hyperparameter sweeps of many small SAEs, trained as one stacked model.

A sweep is a table with one row per model (grid axes and a seed); the rows are trained together
as a stacked :class:`sae_ortho.models.sae.SAE` (models along the leading dimension, per-model learning rate,
L1 and orthogonality weight), then evaluated into more columns of the same table.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import safetensors.torch
import torch
from torch import Tensor

from sae_ortho import metrics
from sae_ortho.analysis.objective import objective_terms
from sae_ortho.analysis.optimum import Optimum
from sae_ortho.core.validation import (
    ParameterTypeError,
    canonical,
    check_bool,
    check_callable,
    check_columns,
    check_float,
    check_instance,
    check_int,
    check_numbers,
    check_tensor,
    is_number,
)
from sae_ortho.data import toy
from sae_ortho.data.toy import SphereData, ToyData, stack_sampler
from sae_ortho.experiments import store as st
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.ortho import OrthoConfig
from sae_ortho.training.train import TrainConfig, TrainResult, train


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


# Words that mark a column name as a hyperparameter (in any case, as a part of a name such as
# "l1_coef" or "lambda_ortho"), with the per-model column meant.
_HYPERPARAMETER_WORDS = {
    "l1": "l1", "lr": "lr", "learning": "lr", "lambda": "ortho_weight", "lam": "ortho_weight",
    "ortho": "ortho_weight", "orth": "ortho_weight", "orthogonality": "ortho_weight",
}


def _check_hyperparameter_columns(rows: pd.DataFrame) -> None:
    """Refuse columns that would silently have no effect on training: misspelt hyperparameters
    (another case, another name, a name containing one, such as ``L1``, ``l1_coef`` or
    ``lambda_ortho``). Other columns (labels such as ``rho`` or ``cond``) are allowed."""
    for col in rows.columns:
        if not isinstance(col, str) or col in PER_MODEL_COLUMNS:
            continue
        low = col.lower()
        close = difflib.get_close_matches(low, PER_MODEL_COLUMNS, n=1, cutoff=0.8)
        words = [_HYPERPARAMETER_WORDS[w] for w in re.split(r"[^a-z0-9]+", low) if w in _HYPERPARAMETER_WORDS]
        if low in _NOT_PER_MODEL or close or words:
            meant = _NOT_PER_MODEL.get(low) or (close[0] if close else None) or (words[0] if words else None)
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
        return st.perturb(as_sampler(source)(n), salt=8)  # (perturbed only in the perturbation test)
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
    store: str | None = None,
    key: Any = None,
) -> SAE:
    """Train one SAE per row of ``rows``, all at once.

    Columns ``lr``, ``l1`` and ``ortho_weight`` of ``rows``, where present, set that model's value;
    otherwise the keyword argument applies to every model. ``l1`` applies to ReLU SAEs only (a
    TopK stack trains without an L1 term, whatever ``l1``: one value serves the ReLU and TopK
    stacks of a mixed sweep). Any other column whose name looks like a hyperparameter (``L1``,
    ``l1_coef``, ``lambda_ortho`` ...) is refused; label columns (``rho``, ``cond`` ...) are kept.

    Args:
        sample: ``sample(batch) -> x: [len(rows), batch, d]``, or one data set per row.
        seed: seed of the decoder initialisation.
        init: edits the freshly initialised SAE in place before training (e.g. a constructed
            starting point from :mod:`sae_ortho.data.constructions`).
        paired: models with the same ``seed`` column share their initialisation, and models with
            the same seed and the same data set share every batch (common random numbers), so
            conditions can be compared seed by seed. Seed ``s`` then starts from, and sees the data
            of, model ``s`` of an unpaired stack of ``[data] * n_seeds``. Needs a ``seed`` column
            and one data set per row.
        init_scheme: :attr:`sae_ortho.models.sae.SAEConfig.init` (``"tied"`` or ``"independent"`` encoder) of
            every model; a column ``init`` of ``rows`` sets it per model instead (all schemes start
            from the same decoders for the same seed).
        store, key: keep the trained stack in the study's store (see :func:`fit_stack`).
    """
    return fit_stack(
        rows, sample, d, n_latents, kind=kind, k=k, steps=steps, batch_size=batch_size, lr=lr, l1=l1,
        ortho_weight=ortho_weight, ortho=ortho, seed=seed, device=device, progress=progress, init=init,
        paired=paired, init_scheme=init_scheme, store=store, key=key,
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
    store: str | None = None,
    key: Any = None,
) -> tuple[SAE, TrainResult]:
    """:func:`train_stack`, also returning the training history and parameter snapshots.

    Args:
        snapshot_steps: steps after which a copy of the stack's parameters is kept
            (``TrainResult.snapshots``); with the default constant learning rate, the snapshot at
            step s is the model a run of s steps would end with.
        log_every: steps between history records (default: steps // 10).
        store: name of the run in the study's store (:mod:`sae_ortho.experiments.store`): trained once, then loaded
            (with the global RNG left where training would leave it). None: train, store nothing.
        key: with ``store``, what else determines the run beyond the arguments and the data sets'
            configurations (e.g. a notebook's parameters, from which given directions and ``init``
            are computed); required then, as a sampler callable or ``init`` cannot be hashed.
    """
    kwargs = {
        "kind": kind, "k": k, "steps": steps, "batch_size": batch_size, "lr": lr, "l1": l1, "ortho_weight": ortho_weight, "ortho": ortho,
        "seed": seed, "device": device, "progress": progress, "init": init, "paired": paired, "init_scheme": init_scheme,
        "snapshot_steps": snapshot_steps, "log_every": log_every,
    }
    if store is None:
        if key is not None:
            raise ValueError("key has no effect without store (the name of the run in the study's store)")
        return _fit_stack(rows, sample, d, n_latents, **kwargs)
    return _stored_stack(store, key, rows, sample, d, n_latents, **kwargs)


STACK_FILE = "stack.safetensors"
_RNG = "_rng_after"  # the global RNG state training left, restored when a stored stack is loaded
_RNG_BEFORE = "_rng_before"  # the state training started from (for a replay)


def _data_identity(sample: Source) -> list:
    if callable(sample):
        return ["callable"]
    out, seen = [], {}
    for ds in sample:
        if id(ds) not in seen:
            seen[id(ds)] = len(seen)
            cfg = getattr(ds, "cfg", None)
            out.append({"class": type(ds).__name__, "cfg": canonical(cfg) if cfg is not None else getattr(ds, "d", None)})
    return [out, [seen[id(ds)] for ds in sample]]


def _stored_stack(name: str, key: Any, rows: pd.DataFrame, sample: Source, d: int, n_latents: int, **kw):

    check_instance("rows", rows, pd.DataFrame)
    if key is None:
        raise ValueError(f"store={name!r} needs key= (what determines the data and init beyond the arguments, "
                         "e.g. the notebook's parameters)")
    spec = {
        "fn": "fit_stack", "rows": {str(c): [canonical(v) for v in rows[c]] for c in rows.columns},
        "d": d, "n_latents": n_latents,
        **{k: v for k, v in kw.items() if k not in ("device", "progress", "init")},
        "ortho": kw["ortho"] or OrthoConfig(), "init": kw["init"] is not None, "data": _data_identity(sample),
        "rng": hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest(), "key": key,
    }

    rng_before = torch.get_rng_state()

    def produce(folder):
        sae, res = _fit_stack(rows, sample, d, n_latents, **kw)
        tensors = {k: v.contiguous() for k, v in sae.state_dict().items()}
        # what a replay of this run needs beyond the spec (replay_stack below): the RNG state and the data
        tensors[_RNG_BEFORE] = rng_before
        replay = {"replayable": not callable(sample) and kw["init"] is None, "data": []}
        if replay["replayable"]:
            distinct = list({id(ds): ds for ds in sample}.values())
            for i, ds in enumerate(distinct):
                replay["data"].append({"class": type(ds).__name__, "fast_sampler": bool(getattr(ds, "fast_sampler", False)),
                                       "cfg": canonical(getattr(ds, "cfg", None)), "d": getattr(ds, "d", None)})
                if hasattr(ds, "directions"):
                    tensors[f"_data/{i}/directions"] = ds.directions.contiguous()
            replay["index"] = [[id(ds) for ds in distinct].index(id(ds)) for ds in sample]
        for step, sd in res.snapshots.items():
            tensors.update({f"snap/{step}/{k}": v.contiguous() for k, v in sd.items()})
        tensors[_RNG] = torch.get_rng_state()
        safetensors.torch.save_file(tensors, str(folder / STACK_FILE), metadata={"replay": json.dumps(replay)})
        info = {"resumed_from": res.resumed_from, "stale_agreement": res.stale_agreement,
                "stale_max_error": res.stale_max_error, "certified": res.certified, "world_size": res.world_size}
        return res.history, info

    run = st.fetch(name, spec, produce)
    tensors = safetensors.torch.load_file(str(run.folder / STACK_FILE))
    torch.set_rng_state(tensors.pop(_RNG))
    tensors = {k: v for k, v in tensors.items() if not k.startswith(("_data/", _RNG_BEFORE))}
    state = {k: st.perturb(v, i) for i, (k, v) in enumerate(sorted(tensors.items()))}
    m = len(rows)
    schemes = {str(v) for v in rows["init"]} if "init" in rows else {kw["init_scheme"]}
    scheme = schemes.pop() if len(schemes) == 1 else "tied"  # as _fit_stack's stack config records it
    sae = SAE(SAEConfig(d=d, n_latents=n_latents, kind=kw["kind"], k=kw["k"], n_models=m, init=scheme),
              generator=torch.Generator())
    sae.load_state_dict({k: v for k, v in state.items() if not k.startswith("snap/")})
    snapshots: dict[int, dict[str, Tensor]] = {}
    for k, v in state.items():
        if k.startswith("snap/"):
            _, step, pname = k.split("/", 2)
            snapshots.setdefault(int(step), {})[pname] = v
    info = run.info
    result = TrainResult(
        history=run.history, resumed_from=info.get("resumed_from", 0),
        stale_agreement=list(np.atleast_1d(info.get("stale_agreement") or [])),
        stale_max_error=list(np.atleast_1d(info.get("stale_max_error") or [])),
        snapshots=dict(sorted(snapshots.items())), certified=info.get("certified") or {},
        world_size=info.get("world_size", 1),
    )
    return sae, result


def _fit_stack(
    rows: pd.DataFrame,
    sample: Source,
    d: int,
    n_latents: int,
    *,
    kind: str,
    k: int | None,
    steps: int,
    batch_size: int,
    lr: float,
    l1: float,
    ortho_weight: float,
    ortho: OrthoConfig | None,
    seed: int,
    device: str,
    progress: bool,
    init: Callable[[SAE], None] | None,
    paired: bool,
    init_scheme: str,
    snapshot_steps: Sequence[int],
    log_every: int | None,
) -> tuple[SAE, TrainResult]:
    progress = check_bool("progress", progress)
    paired = check_bool("paired", paired)
    check_instance("rows", rows, pd.DataFrame)
    m = len(rows)
    if m == 0:
        raise ValueError("rows is empty: nothing to train")
    _check_hyperparameter_columns(rows)
    if kind == "topk" and "l1" in rows:
        raise ValueError(
            "rows has an 'l1' column but kind='topk': a TopK SAE trains without an L1 term, so the "
            "column would have no effect; drop it (or use kind='relu')"
        )
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
        # TopK SAEs have no L1 term: l1 is shared with the ReLU stacks of a mixed sweep (sae_ortho.experiments.ablations)
        l1_coeff=_column_or(rows, "l1", l1) if kind == "relu" else 0.0,
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
        x = st.perturb(torch.stack([cache[id(ds)][0] for ds in datasets]), salt=9)  # (the perturbation test)
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
    """Each stacked model against its objective's optimum (:mod:`sae_ortho.analysis.optimum`, 2-D toy data).

    Args:
        x: [S, 2] the evaluation samples the optima were computed on (shared by all models).
        optima: one :class:`sae_ortho.analysis.optimum.Optimum` per model (of the objective with that model's
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
        reports: also the detector's :class:`sae_ortho.metrics.CompositionReport` (column ``report``).
        detector: keyword arguments for :func:`sae_ortho.metrics.detect_compositions`.

    Returns:
        One row per model: mmcs, mcc, (mcc_composed), n_compositions, alone, in_combination,
        missed (fractions of true features) and ``status`` (per-feature list).
    """
    signed = check_bool("signed", signed)
    reports = check_bool("reports", reports)
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
    """Per stacked model: compositions by what latents fire on (:func:`sae_ortho.metrics.activation_compositions`
    on the codes of ``x: [S, d]`` with ground-truth ``coeffs: [S, F]``) and the agreement with the
    geometric detector (:func:`sae_ortho.metrics.detector_agreement`, decoder rows vs ``true: [F, d]``;
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


def stored_stack(folder) -> tuple[SAE, dict]:
    """The stack of a stored :func:`fit_stack` run (``folder`` in the store) and its manifest."""
    from pathlib import Path


    folder = Path(folder)
    manifest = st.verify(folder)
    spec = manifest["spec"]
    tensors = safetensors.torch.load_file(str(folder / STACK_FILE))
    state = {k: v for k, v in tensors.items() if not k.startswith(("_", "snap/"))}
    m = len(next(iter(spec["rows"].values())))
    sae = SAE(SAEConfig(d=spec["d"], n_latents=spec["n_latents"], kind=spec["kind"], k=spec["k"], n_models=m),
              generator=torch.Generator())
    sae.load_state_dict(state)
    return sae, manifest


def replay_stack(folder) -> SAE:
    """Train the stored :func:`fit_stack` run in ``folder`` again from scratch, from its manifest,
    its recorded starting RNG state and data (for the retrain check); refuses a run that cannot be
    replayed (a sampler callable or a constructed ``init``)."""
    from pathlib import Path


    folder = Path(folder)
    spec = st.verify(folder)["spec"]
    with safetensors.safe_open(str(folder / STACK_FILE), "pt") as f:
        replay = json.loads((f.metadata() or {}).get("replay", "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith("_")}  # noqa: SIM118
    if not replay.get("replayable"):
        raise ValueError(f"{folder} cannot be replayed: it was trained from a sampler callable or a constructed init")
    datasets = []
    for i, ds in enumerate(replay["data"]):
        if ds["class"] == "ToyData":
            cfg = toy.ToyDataConfig(**{**ds["cfg"], "embedding": "given"})
            datasets.append(ToyData(cfg, directions=tensors[f"_data/{i}/directions"], fast_sampler=ds["fast_sampler"]))
        elif ds["class"] == "SphereData":
            datasets.append(SphereData(int(ds["d"])))
        else:
            raise ValueError(f"{folder}: data of class {ds['class']} cannot be replayed")
    sample = [datasets[i] for i in np.atleast_1d(replay["index"])]
    rows = pd.DataFrame({c: np.atleast_1d(v) for c, v in spec["rows"].items()})
    ortho = spec["ortho"]
    ortho = OrthoConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ortho.items()})
    torch.set_rng_state(tensors[_RNG_BEFORE])
    sae, _ = _fit_stack(
        rows, sample, spec["d"], spec["n_latents"], kind=spec["kind"], k=spec["k"], steps=spec["steps"],
        batch_size=spec["batch_size"], lr=spec["lr"], l1=spec["l1"], ortho_weight=spec["ortho_weight"], ortho=ortho,
        seed=spec["seed"], device="cpu", progress=False, init=None, paired=spec["paired"],
        init_scheme=spec["init_scheme"], snapshot_steps=[int(s) for s in np.atleast_1d(spec["snapshot_steps"] or [])],
        log_every=spec["log_every"],
    )
    return sae
