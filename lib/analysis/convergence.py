"""Convergence gates: is a trained SAE a result, or still (a perturbation of) its initialisation?

A dictionary can reach a high fraction of variance explained while its decoder rows are still
near their random initialisation (random unit vectors in a few hundred dimensions are nearly
orthogonal, and a ReLU encoder on top of them already reconstructs most of the variance of a
residual stream dominated by a few directions). Every number about features on a language model
therefore comes with these gates:

- **near-init**: the fraction of decoder rows with cos >= 0.7 to their own initial row (goal
  <= 0.05);
- **loss plateau**: the relative change of the training loss over the last 20% of steps;
- **L0 / dead stable**: the relative change of L0 and the change of the dead fraction over the
  last 20% of steps;
- **cross-seed match flattening**: the gain of the cross-seed match fraction over the last
  quarter of training (snapshots at several token counts; a curve still rising means longer
  training would change the answer).

A gate that cannot be computed (too few logged steps, no snapshots) says so (``passed=None``)
instead of passing. Pure math on arrays: nothing here trains or loads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sae_ortho.core.validation import check_bool

NEAR_INIT_COS = 0.7  # a decoder row this close to its initial row has not moved
NEAR_INIT_MAX = 0.05
TAIL = 0.2  # the last 20% of training
MIN_TAIL_RECORDS = 6
PLATEAU_MAX = 0.02  # relative change of the loss over the tail
L0_STABLE_MAX = 0.05  # relative change of L0 over the tail
DEAD_STABLE_MAX = 0.01  # absolute change of the dead fraction over the tail
MATCH_FLAT_MAX = 0.02  # absolute gain of the cross-seed match over the last quarter of tokens


@dataclass(frozen=True)
class Gate:
    """One convergence check: ``passed`` is None when it could not be computed (``note`` says why)."""

    name: str
    value: float | None
    limit: str
    passed: bool | None
    note: str = ""

    def __str__(self) -> str:
        if self.passed is None:
            return f"{self.name}: not computable ({self.note})"
        verdict = "pass" if self.passed else "FAIL"
        return f"{self.name} = {self.value:.3g} (goal {self.limit}): {verdict}"


def near_init_fraction(W_dec: Tensor, W_init: Tensor, threshold: float = NEAR_INIT_COS) -> float:
    """Fraction of rows of ``W_dec: [n, d]`` with cos >= ``threshold`` to the same row of ``W_init``."""
    if W_dec.shape != W_init.shape or W_dec.ndim != 2:
        raise ValueError(f"W_dec and W_init must be [n, d] of the same shape, got {tuple(W_dec.shape)} and "
                         f"{tuple(W_init.shape)}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    a, b = W_dec.detach().double(), W_init.detach().double()
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)
    return float((cos >= threshold - 1e-12).double().mean())


def tail_change(steps: np.ndarray, values: np.ndarray, tail: float = TAIL, relative: bool = True,
                min_records: int = MIN_TAIL_RECORDS) -> float | None:
    """Change of ``values`` over the last ``tail`` of training: mean of the last third of the tail
    minus mean of its first third (relative to the tail's mean when ``relative``); None when fewer
    than ``min_records`` records fall into the tail.

    steps, values: [n_records] (one model).
    """
    relative = check_bool("relative", relative)
    steps, values = np.asarray(steps, float), np.asarray(values, float)
    if steps.shape != values.shape or steps.ndim != 1:
        raise ValueError(f"steps and values must be 1-D of the same length, got {steps.shape} and {values.shape}")
    if not 0 < tail < 1:
        raise ValueError(f"tail must be in (0, 1), got {tail!r}")
    if len(steps) == 0:
        return None
    in_tail = steps > steps.max() * (1 - tail)
    v = values[in_tail]
    if len(v) < min_records or not np.isfinite(v).all():
        return None
    third = max(1, len(v) // 3)
    change = v[-third:].mean() - v[:third].mean()
    if not relative:
        return float(change)
    scale = abs(v.mean())
    return float(change / scale) if scale > 0 else 0.0


def _tail_gate(name, history, key, limit, relative, model):
    if key not in history or "step" not in history:
        return Gate(name, None, f"|change| <= {limit:g}", None, f"history has no {key!r}")
    values = np.asarray(history[key], float)
    if values.ndim == 2:
        values = values[:, model]
    change = tail_change(np.asarray(history["step"]), values, relative=relative)
    if change is None:
        n = len(values)
        return Gate(name, None, f"|change| <= {limit:g}", None,
                    f"only {n} records logged, fewer than {MIN_TAIL_RECORDS} in the last {TAIL:.0%}")
    return Gate(name, change, f"|change| <= {limit:g}", abs(change) <= limit)


def training_gates(history: Mapping[str, np.ndarray], W_dec: Tensor, W_init: Tensor, model: int = 0) -> list[Gate]:
    """The per-run gates: near-init, loss plateau, L0 and dead fraction stable over the tail.

    Args:
        history: :class:`sae_ortho.training.train.TrainResult` history (``[n_records]`` or ``[n_records, M]``).
        W_dec, W_init: [n, d] trained and initial decoder rows (one model).
        model: which model of a stacked history.
    """
    near = near_init_fraction(W_dec, W_init)
    return [
        Gate("near-init fraction", near, f"<= {NEAR_INIT_MAX:g}", near <= NEAR_INIT_MAX),
        _tail_gate("loss change, last 20%", history, "loss", PLATEAU_MAX, True, model),
        _tail_gate("L0 change, last 20%", history, "l0", L0_STABLE_MAX, True, model),
        _tail_gate("dead change, last 20%", history, "dead", DEAD_STABLE_MAX, False, model),
    ]


def match_flattening(tokens: Sequence[float], match: Sequence[float]) -> Gate:
    """Gate on a cross-seed match curve (``match[i]`` at ``tokens[i]``, increasing tokens): the
    gain over the last quarter of training tokens must be at most ``MATCH_FLAT_MAX``."""
    t, m = np.asarray(tokens, float), np.asarray(match, float)
    name, limit = "cross-seed match gain, last 25% of tokens", f"<= {MATCH_FLAT_MAX:g}"
    if len(t) < 2 or t.shape != m.shape:
        return Gate(name, None, limit, None, f"needs >= 2 snapshots, got {len(t)}")
    if np.any(np.diff(t) <= 0):
        raise ValueError("tokens must increase")
    cut = t[-1] * 0.75
    earlier = np.nonzero(t <= cut + 1e-9)[0]
    if len(earlier) == 0:
        return Gate(name, None, limit, None, "no snapshot at or before 75% of the tokens")
    gain = float(m[-1] - m[earlier[-1]])
    return Gate(name, gain, limit, gain <= MATCH_FLAT_MAX)


def gate_table(gates: Mapping[str, Sequence[Gate]]):
    """``{run: gates}`` -> a DataFrame with one row per run and a value column per gate, plus
    ``all_pass`` (False if any gate failed, None if one could not be computed)."""
    import pandas as pd

    rows = []
    for run, gs in gates.items():
        row = {"run": run}
        for g in gs:
            row[g.name] = g.value
        verdicts = [g.passed for g in gs]
        row["all_pass"] = False if False in verdicts else (None if None in verdicts else True)
        rows.append(row)
    return pd.DataFrame(rows).set_index("run")


def random_unit_rows(n: int, d: int, seed: int) -> Tensor:
    """[n, d] random unit vectors: the random-dictionary reference of the same shape."""
    w = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return w / w.norm(dim=-1, keepdim=True)
