"""The decoder-orthogonality penalty, as specified in the study brief.

For decoder rows ``W_dec: [n, d]`` and latent ``i``:

1. nearest neighbour ``j != i`` by **absolute** cosine; tied neighbours (within ``tie_tol``)
   contribute their **mean** |cos|, so all of them get gradient at the usual magnitude;
2. the penalty is averaged over latents **active in the batch**, but gradient flows into the rows
   of their neighbours too, active or not (a frozen inactive row can "block" a useful latent);
3. the penalty shape grows steeply as |cos| -> 1 (``neglog``: -log(1-c)); ``sigmoid`` is the
   flattening counter-example;
4. ``loss = reconstruction + sparsity + lambda_orth * penalty``; a negative lambda_orth rewards
   alignment (only with a bounded shape).

Everything works on a single matrix ``[n, d]`` or a stack ``[M, n, d]`` of independent models.
This module is pure math: it imports nothing from training, loading or plotting.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from sae_ortho.core.validation import (
    check_bool,
    check_choice,
    check_default,
    check_float,
    check_instance,
    check_int,
    check_tensor,
)

# Rows per block when building |cos| against all rows, so no n x n matrix is held at once.
DEFAULT_CHUNK = 4096
# Beyond 1 - _EPS the steep shapes continue along their tangent, so duplicated rows (|cos| = 1)
# still get a large, finite gradient instead of none (which a plain clamp would give).
_EPS = 1e-4


def _tangent_beyond(c: Tensor, f, df) -> Tensor:
    edge = torch.as_tensor(1 - _EPS, dtype=c.dtype)
    inner = f(torch.minimum(c, edge))
    return torch.where(c > edge, f(edge) + df(edge) * (c - edge), inner)


def _neglog(c: Tensor) -> Tensor:
    return _tangent_beyond(c, lambda u: -torch.log1p(-u), lambda u: 1 / (1 - u))


def _c2_over_1mc(c: Tensor) -> Tensor:
    return _tangent_beyond(c, lambda u: u.square() / (1 - u), lambda u: (2 * u - u.square()) / (1 - u).square())


def _sigmoid(c: Tensor) -> Tensor:
    # Flattens as c -> 1: the counter-example to a steep penalty.
    return torch.sigmoid(10.0 * (c - 0.5))


PENALTY_SHAPES: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": lambda c: c,
    "square": torch.square,
    "neglog": _neglog,
    "c2_over_1mc": _c2_over_1mc,
    "sigmoid": _sigmoid,
}
# Shapes that stay bounded as |cos| -> 1; only these may be used with a negative weight.
BOUNDED_SHAPES = ("linear", "square", "sigmoid")
TARGETS = ("decoder", "encoder")
SCOPES = ("active", "all")
REDUCTIONS = ("nearest", "mean_all")
TIE_MODES = ("mean", "first")
METHODS = ("chunked", "active", "naive", "cached", "ortsae", "certified")
EXACT_METHODS = ("chunked", "active", "naive")
# Methods that keep state between steps in a cache (see OrthoConfig.make_cache).
CACHE_METHODS = ("cached", "certified")
# OrthoConfig fields that only these methods use (the others must leave them at their defaults).
METHOD_OPTIONS = {
    "cache_k": CACHE_METHODS, "refresh_every": ("cached",), "ortsae_chunk": ("ortsae",), "check_rows": ("certified",),
}
# Half-precision matrices are scored in float32: the steep shapes' tangent edge 1 - 1e-4 rounds to
# 1 in float16 and bfloat16, where the penalty and its gradient would be infinite.
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def penalty_dtype(W: Tensor) -> Tensor:
    """``W`` in the precision the penalty is computed in: float32 for float16 / bfloat16 (the
    gradient flows back to ``W`` in its own dtype), ``W`` itself otherwise."""
    return W.float() if W.dtype in _LOW_PRECISION else W


# Candidates per latent when ``OrthoConfig.cache_k`` is not given. The certified method's margin
# (best minus the largest |cos| outside the candidates) grows with k, so its certificates last
# longer and fewer rows are searched again against all n: 256 re-searches about a third as many rows
# per step as 64 and costs less per step (results/bench_certified_k.txt). Its state takes 24 * n * k bytes.
DEFAULT_CACHE_K = {"cached": 8, "certified": 256}


@dataclass(frozen=True)
class OrthoConfig:
    """How the orthogonality penalty is computed. Defaults are the study's proposal.

    The weight lambda_orth is not part of this config: it is a training hyperparameter
    (``sae_ortho.training.train.TrainConfig.ortho_weight``, one value per stacked model).

    Attributes:
        shape: one of ``PENALTY_SHAPES``.
        target: ``"decoder"`` rows (the proposal) or ``"encoder"`` columns.
        scope: ``"active"`` (latents active in the batch) or ``"all"`` latents.
        neighbour_grad: let gradient flow into inactive neighbours' rows (the proposal).
        reduction: ``"nearest"`` neighbour or ``"mean_all"`` |cos| over all other latents.
        tie_mode: ``"mean"`` over tied nearest neighbours (the proposal) or ``"first"`` only.
        tie_tol: |cos| tolerance within which neighbours count as tied.
        method: how neighbours are found (``METHODS``; see :func:`nn_abs_cos`); ``"cached"``
            uses ``cache_k`` candidates (default ``DEFAULT_CACHE_K``) refreshed every ``refresh_every`` steps, ``"ortsae"``
            random chunks of ``ortsae_chunk`` rows (an approximation), ``"certified"`` ``cache_k``
            candidates with a certificate (exact at every step, see :class:`CertifiedCache`).
        chunk: rows per block of the exact search.
        check_rows: ``"certified"`` only: scored rows per step (a random sample) whose result is
            compared with the exact search, to measure the agreement (0: no check).

    An option of another method (``cache_k``, ``refresh_every``, ``ortsae_chunk``,
    ``check_rows``) must keep its default: a ValueError says so instead of ignoring it.
    """

    shape: str = "neglog"
    target: str = "decoder"
    scope: str = "active"
    neighbour_grad: bool = True
    reduction: str = "nearest"
    tie_mode: str = "mean"
    tie_tol: float = 1e-6
    method: str = "chunked"
    cache_k: int | None = None
    refresh_every: int = 100
    ortsae_chunk: int = 1024
    chunk: int = DEFAULT_CHUNK
    check_rows: int = 64

    def __post_init__(self) -> None:
        for name, allowed in (
            ("shape", tuple(PENALTY_SHAPES)),
            ("target", TARGETS),
            ("scope", SCOPES),
            ("reduction", REDUCTIONS),
            ("tie_mode", TIE_MODES),
            ("method", METHODS),
        ):
            check_choice(name, getattr(self, name), allowed)
        object.__setattr__(self, "neighbour_grad", check_bool("neighbour_grad", self.neighbour_grad))
        object.__setattr__(self, "tie_tol", check_float("tie_tol", self.tie_tol, 0.0, 1.0, high_open=True))
        if self.cache_k is None:
            object.__setattr__(self, "cache_k", DEFAULT_CACHE_K.get(self.method, DEFAULT_CACHE_K["cached"]))
        for name in ("cache_k", "refresh_every", "chunk"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), 1))
        object.__setattr__(self, "ortsae_chunk", check_int("ortsae_chunk", self.ortsae_chunk, 2))
        object.__setattr__(self, "check_rows", check_int("check_rows", self.check_rows, 0))
        # An option of another method must keep its default instead of being silently ignored.
        for name, methods in METHOD_OPTIONS.items():
            if self.method not in methods:
                default = next(f.default for f in dataclasses.fields(self) if f.name == name)
                if name == "cache_k":  # resolved above: the cached method's value
                    default = DEFAULT_CACHE_K["cached"]
                instead = " or ".join(f"method={m!r}" for m in methods)
                check_default(name, getattr(self, name), default, f"method={self.method!r}", instead)

    def make_cache(self) -> NeighbourCache | CertifiedCache | None:
        """A fresh neighbour cache for the methods in ``CACHE_METHODS`` (else None)."""
        if self.method == "cached":
            return NeighbourCache(self.cache_k, self.refresh_every, self.chunk)
        if self.method == "certified":
            return CertifiedCache(self.cache_k, self.chunk, self.check_rows)
        return None


class RowShard(Protocol):
    """How one search is split over the processes of a data-parallel job.

    Every process holds the same matrix; process ``rank`` of ``world`` searches its contiguous
    slice of the scored rows (:func:`shard_range`) and :meth:`gather` puts the slices together,
    so every process ends with the whole result. :class:`sae_ortho.training.distributed.Group` implements it.
    """

    rank: int
    world: int

    def gather(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """Each tensor ``[r, ...]`` (``r`` may differ between processes, the rest of the shape and
        the dtype may not) from every process, concatenated along dim 0 in rank order."""
        ...


def shard_range(m: int, shard: RowShard | None) -> tuple[int, int]:
    """The slice ``[lo, hi)`` of ``m`` rows that this process searches (all of them without a shard)."""
    if shard is None:
        return 0, m
    return shard.rank * m // shard.world, (shard.rank + 1) * m // shard.world


def _sharded(shard: RowShard | None) -> bool:
    return shard is not None and shard.world > 1


def _check_matrix(W: Tensor, name: str = "W_dec") -> Tensor:
    """Validate W and return its detached row norms (one pass over W serves both)."""
    if not isinstance(W, Tensor) or W.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2-D [n, d] (or stacked 3-D [M, n, d]) tensor")
    if W.shape[-2] < 2 or W.shape[-1] < 1:
        raise ValueError(f"{name} needs at least 2 rows and 1 column, got shape {tuple(W.shape)}")
    norms = W.detach().norm(dim=-1)  # a NaN or inf anywhere in a row makes its norm non-finite
    if not torch.isfinite(norms).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    if (norms == 0).any():
        bad = (norms == 0).nonzero()[:5].tolist()
        raise ValueError(f"{name} has rows of norm 0 (a dead row has no direction), e.g. at {bad}")
    return norms


def _abs_cos_block(Wn_rows: Tensor, Wn_cols: Tensor, row_idx: Tensor) -> Tensor:
    """|cos| of some rows against all rows, with each row's own entry set to -1.

    Wn_rows: [..., m, d], Wn_cols: [..., n, d] (unit rows), row_idx: [m] -> [..., m, n].
    """
    c = (Wn_rows @ Wn_cols.transpose(-1, -2)).abs()
    self_mask = torch.zeros(c.shape[-2:], dtype=torch.bool, device=c.device)
    self_mask[torch.arange(len(row_idx), device=c.device), row_idx] = True
    return c.masked_fill(self_mask, -1.0)


def _reduce_neighbours(c: Tensor, reduction: str, tie_mode: str, tie_tol: float) -> Tensor:
    """c: [..., m, n] |cos| with self entries = -1 -> [..., m] (autograd through the block)."""
    if reduction == "mean_all":
        n = c.shape[-1]
        return (c.clamp_min(0).sum(-1)) / (n - 1)
    if tie_mode == "first":
        return c.max(dim=-1).values
    best = c.detach().max(dim=-1, keepdim=True).values
    tied = (c.detach() >= best - tie_tol).to(c.dtype)
    return (c * tied).sum(-1) / tied.sum(-1)


def _tied_pairs(c: Tensor, tie_mode: str, tie_tol: float) -> tuple[Tensor, Tensor, Tensor]:
    """Chosen neighbours in a detached |cos| block c: [M, b, k] -> (model, row, column) indices."""
    if tie_mode == "first":
        best = c.argmax(dim=-1)  # [M, b]
        mm, rr = torch.meshgrid(
            torch.arange(c.shape[0], device=c.device), torch.arange(c.shape[1], device=c.device), indexing="ij"
        )
        return mm.flatten(), rr.flatten(), best.flatten()
    best = c.max(dim=-1, keepdim=True).values
    return (c >= best - tie_tol).nonzero(as_tuple=True)


def _recompute(
    W: Tensor, frozen: Tensor | None, rows: Tensor, mm: Tensor, rr: Tensor, cc: Tensor
) -> Tensor:
    """Differentiable mean |cos| over the chosen pairs. W: [M, n, d] -> [M, len(rows)].

    Only the chosen pairs (and their norms) enter the graph, so the backward pass costs
    O(pairs * d), and the gradient equals that of the dense computation (whose max/tie mask
    carries no gradient). Rows where ``frozen: [M, n]`` is True act without gradient.
    """
    # Row gathers on the flattened [M * n, d] view: index_select's backward is a plain index_add.
    n = W.shape[1]
    flat = W.reshape(-1, W.shape[-1])
    a, b = flat.index_select(0, mm * n + rows[rr]), flat.index_select(0, mm * n + cc)
    if frozen is not None:
        b = torch.where(frozen[mm, cc].unsqueeze(-1), b.detach(), b)
    vals = ((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).abs()
    shape = (W.shape[0], len(rows))
    total = vals.new_zeros(shape).index_put((mm, rr), vals, accumulate=True)
    count = vals.new_zeros(shape).index_put((mm, rr), torch.ones_like(vals), accumulate=True)
    return total / count.clamp_min(1.0)


class NeighbourCache:
    """Top-``k`` candidate neighbours of every row, refreshed exactly every ``refresh_every`` steps.

    Between refreshes the nearest neighbour is the exact max over the candidates only (cost
    O(m k d) for m scored rows); a refresh is the exact chunked search (O(n^2 d), never holding
    more than a [chunk, n] block). Exact whenever the true neighbour is among the candidates,
    which the benchmark measures as neighbour agreement.
    """

    def __init__(self, k: int = 8, refresh_every: int = 100, chunk: int = DEFAULT_CHUNK):
        k, refresh_every, chunk = (check_int(n, v, 1) for n, v in (("k", k), ("refresh_every", refresh_every), ("chunk", chunk)))
        self.k, self.refresh_every, self.chunk = k, refresh_every, chunk
        self.candidates: Tensor | None = None  # [M, n, k] long
        self.refreshed_at: int | None = None
        self.n_refreshes = 0
        # At each refresh: fraction of rows whose exact nearest neighbour was among the old
        # (stale) candidates, i.e. how exact the cache was just before it was renewed.
        self.stale_agreement: list[float] = []
        # ... and the largest amount by which a stale candidate max underestimated the exact max |cos|.
        self.stale_max_error: list[float] = []

    @torch.no_grad()
    def refresh(self, W: Tensor, step: int = 0, shard: RowShard | None = None) -> None:
        """Exact top-k |cos| neighbours of every row of W: [(M,) n, d] (rows split over ``shard``)."""
        W3 = W.detach().unsqueeze(0) if W.ndim == 2 else W.detach()
        n = W3.shape[-2]
        k = min(self.k, n - 1)
        Wn = W3 / W3.norm(dim=-1, keepdim=True)
        idx = torch.arange(n, device=W.device)
        lo, hi = shard_range(n, shard)
        blocks = [W3.new_empty(W3.shape[0], 0, k, dtype=torch.long)]
        for start in range(lo, hi, self.chunk):
            rows = idx[start : min(start + self.chunk, hi)]
            blocks.append(_abs_cos_block(Wn[:, rows], Wn, rows).topk(k, dim=-1).indices)
        new = torch.cat(blocks, dim=1)
        if _sharded(shard):
            new = _gather_rows(shard, new)
        if self.candidates is not None and self.candidates.shape[:2] == new.shape[:2]:
            hit = (self.candidates == new[..., :1]).any(-1)
            self.stale_agreement.append(float(hit.float().mean()))
            m_idx = torch.arange(Wn.shape[0], device=Wn.device)[:, None, None]
            stale = (Wn.unsqueeze(-2) * Wn[m_idx, self.candidates]).sum(-1).abs().amax(-1)
            exact = (Wn * Wn[m_idx[..., 0], new[..., 0]]).sum(-1).abs()
            self.stale_max_error.append(float((exact - stale).max()))
        self.candidates = new
        self.refreshed_at = step
        self.n_refreshes += 1

    def maybe_refresh(self, W: Tensor, step: int, shard: RowShard | None = None) -> None:
        n = W.shape[-2]
        stale = self.candidates is None or self.candidates.shape[1] != n
        if stale or self.refreshed_at is None or step - self.refreshed_at >= self.refresh_every:
            self.refresh(W, step, shard)

    def state_dict(self) -> dict:
        return {
            "candidates": self.candidates,
            "refreshed_at": self.refreshed_at,
            "n_refreshes": self.n_refreshes,
            "stale_agreement": list(self.stale_agreement),
            "stale_max_error": list(self.stale_max_error),
        }

    def load_state_dict(self, state: dict) -> None:
        self.candidates = state["candidates"]
        self.refreshed_at = state["refreshed_at"]
        self.n_refreshes = state["n_refreshes"]
        self.stale_agreement = list(state.get("stale_agreement", []))
        self.stale_max_error = list(state.get("stale_max_error", []))


def _gather_rows(shard: RowShard, t: Tensor) -> Tensor:
    """Gather ``t: [M, r, ...]`` along its row dim 1 from every process (rank order)."""
    return shard.gather([t.movedim(1, 0).contiguous()])[0].movedim(0, 1)


# Counters of CertifiedCache.stats (summed over searches).
CERTIFIED_STATS = (
    "searches", "full_refreshes", "rows_scored", "rows_certified", "rows_examined", "rows_researched",
    "pairs_evaluated", "rows_checked", "rows_agreed", "searches_disagreeing", "margin_sum", "margin_min", "margins",
)


class CertifiedCache:
    """Candidate neighbours with a certificate: exact at every step, not only after a refresh.

    For unit rows, ``| |cos(a', b')| - |cos(a, b)| | <= ||a' - a|| + ||b' - b||``. The cache keeps
    every row's path length ``L_j`` (the sum, over searches, of how far its unit row moved), so
    ``||w_j(t) - w_j(s)|| <= L_j(t) - L_j(s)``, and ``P``, the sum of the largest move of any row
    per search, so no row moved more than ``P(t) - P(s)`` since ``s``.

    Row ``i``, searched exactly at step ``a`` (its anchor), keeps as candidates the ``k`` rows of
    largest |cos| and ``out_i``, the largest |cos| outside them (the (k+1)-th): every row within
    the margin ``best - out_i`` of its best is a candidate. Each candidate keeps its last
    evaluated |cos| ``v`` (at step ``s``), so its |cos| now lies within
    ``v -+ (L_i(t) - L_i(s) + L_j(t) - L_j(s))``, known from scalars alone. At each search, for
    each scored row:

    1. its current best candidate is evaluated exactly (one dot product). If that value minus
       ``tie_tol`` exceeds a bound on every other candidate (kept per row from the last time the
       candidates were examined, grown by the movement since), it is the row's only nearest
       candidate; otherwise every candidate whose interval reaches the largest lower bound minus
       ``tie_tol`` is evaluated (with some headroom, so the row-level bound lasts a few steps)
       and the best and the tied ones are taken among them;
    2. the row is certified when ``best - tie_tol > out_i + (L_i(t) - L_i(a)) + (P(t) - P(a))``
       (plus a float-rounding slack): no row outside the candidates can be nearest or tied;
    3. rows that fail are searched exactly against all rows (chunked, split over ``shard``), which
       gives their result and renews their candidates and anchor: a refresh of just those rows,
       exactly when the accumulated movement could let an outside row overtake.

    So every result is the exact search's (ties included), and the work adapts to how fast the
    rows move. Movement is measured on the matrix each search is given, so the result is exact
    however the rows changed between calls. Every row is searched on the first call and whenever
    the shape changes (a new stage). ``check_rows`` scored rows per search (a random sample from
    a private generator) are also searched exactly and compared; :meth:`summary` reports that
    agreement next to the work done.
    """

    # Candidates examined in step 1 reach this many times the last step's largest row movement
    # below the best, so that the row-level bound then holds for a few steps.
    HEADROOM_STEPS = 8.0

    def __init__(self, k: int = 64, chunk: int = DEFAULT_CHUNK, check_rows: int = 64, seed: int = 0):
        for name, value in (("k", k), ("chunk", chunk)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(check_rows, bool) or not isinstance(check_rows, int) or check_rows < 0:
            raise ValueError(f"check_rows must be an int >= 0, got {check_rows!r}")
        self.k, self.chunk, self.check_rows = k, chunk, check_rows
        self._gen = torch.Generator().manual_seed(seed)
        # Rows are flattened over the stack (id m * n + i). prev [M, n, d]: unit rows at the last
        # search; path [M * n], pmax and rate (its last increment) [M], float64. Per candidate
        # [M * n, k]: cols (ascending), vals (last evaluated |cos|), stamp (L_i + L_j then). Per
        # row [M * n]: out (largest |cos| outside the candidates at the anchor, -1 if none),
        # anchor (L_i + P at the anchor), best (position of the best candidate), second (bound on
        # the other candidates, less L_i + P: add them back to get the bound now).
        self.state: dict[str, Tensor] | None = None
        self.stats: dict[str, float] = {key: 0 for key in CERTIFIED_STATS}
        self.stats["margin_min"] = float("inf")

    @staticmethod
    def slack(Wn: Tensor) -> float:
        """Float-rounding allowance of the certificate: a few times the worst-case rounding error
        of a |cos| of unit rows in this dtype (d unit round-offs), for the stored, the current
        and the reference values."""
        return 5.0 * Wn.shape[-1] * torch.finfo(Wn.dtype).eps

    @torch.no_grad()
    def observe(self, Wn: Tensor, shard: RowShard | None = None) -> bool:
        """Account for the movement of ``Wn: [M, n, d]`` (unit rows; kept, not copied) since the
        last call; search every row when there is no state for this shape. True if it did."""
        st = self.state
        if st is None or st["prev"].shape != Wn.shape or st["prev"].dtype != Wn.dtype or st["prev"].device != Wn.device:
            self._full(Wn, shard)
            return True
        step = torch.cat(
            [torch.linalg.vector_norm(Wn[:, s : s + self.chunk] - st["prev"][:, s : s + self.chunk], dim=-1)
             for s in range(0, Wn.shape[1], self.chunk)],
            dim=1,
        ).double()
        st["path"] += step.flatten()
        st["rate"] = step.amax(-1)
        st["pmax"] += st["rate"]
        st["prev"] = Wn
        return False

    def _full(self, Wn: Tensor, shard: RowShard | None) -> None:
        M, n, _ = Wn.shape
        k = min(self.k, n - 1)
        f64 = {"dtype": torch.float64, "device": Wn.device}
        long = {"dtype": torch.long, "device": Wn.device}
        self.state = {
            "prev": Wn, "path": torch.zeros(M * n, **f64), "pmax": torch.zeros(M, **f64), "rate": torch.zeros(M, **f64),
            "cols": torch.zeros(M * n, k, **long), "vals": torch.zeros(M * n, k, **f64),
            "stamp": torch.zeros(M * n, k, **f64), "out": torch.zeros(M * n, **f64), "anchor": torch.zeros(M * n, **f64),
            "best": torch.zeros(M * n, **long), "second": torch.zeros(M * n, **f64),
        }
        self._research(Wn, torch.arange(n, device=Wn.device), "mean", 0.0, shard)
        self.stats["full_refreshes"] += 1

    def _research(self, Wn: Tensor, urows: Tensor, tie_mode: str, tie_tol: float, shard: RowShard | None):
        """Search ``urows`` (sorted, unique) of every model exactly against all rows, renew their
        candidates and anchors, and return their chosen pairs (model, position in urows, column)."""
        st = self.state
        M, n, _ = Wn.shape
        k = st["cols"].shape[-1]
        lo, hi = shard_range(len(urows), shard)
        cols, vals, outs = [st["cols"].new_empty(M, 0, k)], [Wn.new_empty(M, 0, k)], [Wn.new_empty(M, 0)]
        pairs = [tuple(torch.empty(0, dtype=torch.long, device=Wn.device) for _ in range(3))]
        for s in range(lo, hi, self.chunk):
            r = urows[s : min(s + self.chunk, hi)]
            c = (Wn[:, r] @ Wn.transpose(-1, -2)).abs_()  # [M, b, n]
            c[:, torch.arange(len(r), device=c.device), r] = -1.0  # a row is not its own neighbour
            top = c.topk(min(k + 1, n - 1), dim=-1)
            out = top.values[..., k] if k < n - 1 else torch.full_like(top.values[..., 0], -1.0)
            mm, rr, cc = _tied_from_top(c, top, tie_mode, tie_tol)
            pairs.append((mm, rr + s, cc))
            # ascending columns: tie_mode "first" then picks the lowest index, as the exact search
            idx = top.indices[..., :k].sort(dim=-1).values
            cols.append(idx)
            vals.append(c.gather(-1, idx))
            outs.append(out)
        cols, vals, outs = torch.cat(cols, 1), torch.cat(vals, 1), torch.cat(outs, 1)
        pairs = tuple(torch.cat(p) for p in zip(*pairs))
        if _sharded(shard):
            cols, vals, outs = (_gather_rows(shard, t) for t in (cols, vals, outs))
            pairs = tuple(shard.gather(list(pairs)))
        fid = (torch.arange(M, device=Wn.device).unsqueeze(-1) * n + urows).flatten()
        cols, vals, outs = cols.reshape(len(fid), k), vals.reshape(len(fid), k).double(), outs.flatten().double()
        L, P = st["path"], st["pmax"].repeat_interleave(len(urows))
        Li = L[fid]
        best = vals.argmax(-1)
        others = vals.scatter(-1, best.unsqueeze(-1), float("-inf"))
        st["cols"][fid] = cols
        st["vals"][fid] = vals
        st["stamp"][fid] = Li.unsqueeze(-1) + L[(fid - urows.repeat(M)).unsqueeze(-1) + cols]
        st["out"][fid] = outs
        st["anchor"][fid] = Li + P
        st["best"][fid] = best
        st["second"][fid] = others.amax(-1) - Li - P
        margin = vals.amax(-1) - outs
        stats = self.stats
        stats["margin_sum"] += float(margin.sum())
        stats["margins"] += margin.numel()
        if margin.numel():
            stats["margin_min"] = min(stats["margin_min"], float(margin.min()))
        stats["rows_researched"] += len(fid)
        return pairs

    @torch.no_grad()
    def search(self, Wn: Tensor, rows: Tensor, tie_mode: str, tie_tol: float, shard: RowShard | None = None):
        """Chosen neighbour pairs (model, position in rows, column) of ``rows`` in ``Wn: [M, n, d]``
        (unit rows, a fresh tensor that the caller does not modify), exactly those of the exact
        search."""
        M, n, _ = Wn.shape
        self.observe(Wn, shard)
        st = self.state
        m, dev = len(rows), Wn.device
        tol = tie_tol + self.slack(Wn)
        pm = torch.arange(M, device=dev).repeat_interleave(m)  # model of each (model, position)
        fid = pm * n + rows.repeat(M)  # flat row id of each (model, position)
        L = st["path"]
        Li, P = L[fid], st["pmax"][pm]
        # 1. the best candidate, evaluated; the row-level bound on the others
        bpos = st["best"][fid]
        jb = st["cols"][fid, bpos]
        v = _abs_dots(Wn, fid, pm * n + jb)
        st["vals"][fid, bpos] = v.double()
        st["stamp"][fid, bpos] = Li + L[pm * n + jb]
        quick = v.double() - tol > st["second"][fid] + Li + P
        best = v.clone()
        q = (~quick).nonzero().flatten()  # rows whose candidates must be examined
        ties = self._examine(Wn, q, fid, pm, Li, P, tie_mode, tie_tol, tol, best) if len(q) else None
        # 2. the certificate against every row outside the candidates
        ok = best.double() - tol > st["out"][fid] + Li + P - st["anchor"][fid]
        sure = (quick & ok).nonzero().flatten()
        pairs = [(pm[sure], sure - pm[sure] * m, jb[sure])]
        if ties is not None:
            tq, tj = ties
            keep = ok[tq]
            pairs.append((pm[tq[keep]], tq[keep] - pm[tq[keep]] * m, tj[keep]))
        # 3. rows that fail: searched exactly against all rows
        fail = (~ok).nonzero().flatten()
        if len(fail):
            fm, fr = pm[fail], fail - pm[fail] * m
            urows = rows[fr].unique()
            um, uu, uc = self._research(Wn, urows, tie_mode, tie_tol, shard)
            # pairs of each failed (model, position): those of (model, its row in urows)
            key = um * len(urows) + uu
            order = key.argsort(stable=True)
            counts = torch.bincount(key, minlength=M * len(urows))
            starts = counts.cumsum(0) - counts
            fkey = fm * len(urows) + torch.searchsorted(urows, rows[fr])
            n_each = counts[fkey]
            which = torch.repeat_interleave(torch.arange(len(fm), device=dev), n_each)
            offset = torch.arange(len(which), device=dev) - torch.repeat_interleave(n_each.cumsum(0) - n_each, n_each)
            pairs.append((fm[which], fr[which], uc[order[starts[fkey[which]] + offset]]))
        out = tuple(torch.cat(p) for p in zip(*pairs))
        stats = self.stats
        stats["searches"] += 1
        stats["rows_scored"] += M * m
        stats["rows_certified"] += int(ok.sum())
        stats["rows_examined"] += len(q)
        if self.check_rows:
            self._check(Wn, rows, out, tie_mode, tie_tol)
        return out

    def _examine(self, Wn, q, fid, pm, Li, P, tie_mode, tie_tol, tol, best):
        """Step 1 for the (model, position)s ``q`` whose row-level bound failed: evaluate every
        candidate that could be nearest or tied; update ``best`` in place and the rows' state.
        Returns the chosen (model, position) and column of each chosen pair."""
        st = self.state
        n = Wn.shape[1]
        f = fid[q]
        cols = st["cols"][f]  # [Q, k]
        moved = Li[q].unsqueeze(-1) + st["path"][(pm[q] * n).unsqueeze(-1) + cols] - st["stamp"][f]
        vals = st["vals"][f]
        ub = vals + moved
        floor = (vals - moved).amax(-1, keepdim=True) - tol - self.HEADROOM_STEPS * st["rate"][pm[q]].unsqueeze(-1)
        qq, kk = (ub >= floor).nonzero(as_tuple=True)  # ordered by (row, candidate)
        jj = cols[qq, kk]
        c = _abs_dots(Wn, f[qq], pm[q[qq]] * n + jj)
        st["vals"][f[qq], kk] = c.double()
        st["stamp"][f[qq], kk] = Li[q[qq]] + st["path"][pm[q[qq]] * n + jj]
        top = torch.full((len(q),), -2.0, dtype=c.dtype, device=c.device).scatter_reduce_(0, qq, c, "amax")
        at_max = (c == top[qq]).nonzero().flatten()
        first = torch.ones(len(at_max), dtype=torch.bool, device=c.device)
        first[1:] = qq[at_max[1:]] != qq[at_max[:-1]]
        lead = at_max[first]  # per row, its first maximum (candidates are in ascending column order)
        st["best"][f] = kk[lead]
        ub[qq, kk] = c.double()
        ub[torch.arange(len(q), device=c.device), kk[lead]] = float("-inf")
        st["second"][f] = ub.amax(-1) - Li[q] - P[q]
        best[q] = top
        self.stats["pairs_evaluated"] += len(qq)
        chosen = lead if tie_mode == "first" else (c >= top[qq] - tie_tol).nonzero().flatten()
        return q[qq[chosen]], jj[chosen]

    def _check(self, Wn: Tensor, rows: Tensor, pairs: tuple[Tensor, Tensor, Tensor], tie_mode: str, tie_tol: float) -> None:
        """Compare the result for a random sample of the scored rows with the exact search."""
        M, m = Wn.shape[0], len(rows)
        sample = torch.randperm(m, generator=self._gen)[: self.check_rows].to(Wn.device)
        where = torch.full((m,), -1, dtype=torch.long, device=Wn.device)
        where[sample] = torch.arange(len(sample), device=Wn.device)
        mm, rr, cc = pairs
        pos = where[rr]
        sel = pos >= 0
        got = _pair_means(Wn, rows[sample], mm[sel], pos[sel], cc[sel])
        want = _pair_means(Wn, rows[sample], *_search_chunked(Wn, rows[sample], tie_mode, tie_tol, self.chunk))
        agreed = int(((got - want).abs() <= 1e-6).sum())
        self.stats["rows_checked"] += M * len(sample)
        self.stats["rows_agreed"] += agreed
        self.stats["searches_disagreeing"] += int(agreed < M * len(sample))

    def summary(self) -> dict[str, float]:
        """What the certificate cost and how exact it was, over all searches so far."""
        s = self.stats
        scored = max(s["rows_scored"], 1)
        return {
            "k": self.k,
            "searches": int(s["searches"]),
            "full_refreshes": int(s["full_refreshes"]),
            "certified_fraction": s["rows_certified"] / scored,
            "researched_per_search": s["rows_researched"] / max(s["searches"], 1),
            "researched_fraction": s["rows_researched"] / scored,
            "examined_fraction": s["rows_examined"] / scored,
            "evaluated_per_row": (s["pairs_evaluated"] + s["rows_scored"]) / scored,
            "mean_margin": s["margin_sum"] / s["margins"] if s["margins"] else float("nan"),
            "min_margin": s["margin_min"],
            "rows_checked": int(s["rows_checked"]),
            "agreement": s["rows_agreed"] / s["rows_checked"] if s["rows_checked"] else float("nan"),
            "searches_disagreeing": int(s["searches_disagreeing"]),
        }

    def state_dict(self) -> dict:
        return {
            "state": None if self.state is None else dict(self.state),
            "stats": dict(self.stats),
            "generator": self._gen.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.state = None if state["state"] is None else dict(state["state"])
        self.stats = dict(state["stats"])
        self._gen.set_state(state["generator"])


def _tied_from_top(c: Tensor, top, tie_mode: str, tie_tol: float) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_tied_pairs` of the block ``c: [M, b, n]`` from its top values (``torch.topk``): the
    same pairs, read from the few top entries unless more rows tie than it holds."""
    vals, idx = top
    if tie_mode == "first":  # argmax: the lowest column among the maxima
        at = vals == vals[..., :1]
        if bool(at[..., -1].any()) and vals.shape[-1] < c.shape[-1]:
            return _tied_pairs(c, tie_mode, tie_tol)
        col = torch.where(at, idx, c.shape[-1]).amin(-1)
        mm, rr = torch.meshgrid(
            torch.arange(c.shape[0], device=c.device), torch.arange(c.shape[1], device=c.device), indexing="ij"
        )
        return mm.flatten(), rr.flatten(), col.flatten()
    tied = vals >= vals[..., :1] - tie_tol
    if bool(tied[..., -1].any()) and vals.shape[-1] < c.shape[-1]:  # ties may go beyond the top
        return _tied_pairs(c, tie_mode, tie_tol)
    mm, rr, kk = tied.nonzero(as_tuple=True)
    cc = idx[mm, rr, kk]
    order = (mm * c.shape[1] + rr) * c.shape[-1] + cc  # the order of _tied_pairs: (model, row, column)
    perm = order.argsort()
    return mm[perm], rr[perm], cc[perm]


@torch.no_grad()
def _abs_dots(Wn: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``|<r_a, r_b>|`` for index pairs into the rows ``r`` of ``Wn: [M, n, d]`` flattened to
    [M * n, d], as one sampled dense-dense product (torch.sparse.sampled_addmm): it reads each row
    once instead of gathering a [pairs, d] copy per side, several times faster on CPU."""
    flat = Wn.reshape(-1, Wn.shape[-1])
    if len(a) == 0:
        return flat.new_empty(0)
    R = flat.shape[0]
    key = a * R + b
    # CSR wants rows, then columns, in ascending order; the certified search's pairs already are
    order = None if bool((key[1:] >= key[:-1]).all()) else key.argsort()
    a_s, b_s = (a, b) if order is None else (a[order], b[order])
    crow = torch.searchsorted(a_s, torch.arange(R + 1, device=a.device))
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(
            crow, b_s, flat.new_zeros(len(a)), size=(R, R), check_invariants=False
        )
        got = torch.sparse.sampled_addmm(pattern, flat, flat.T, beta=0.0).values()
    if order is None:
        return got.abs()
    out = torch.empty_like(got)
    out[order] = got.abs()
    return out


@torch.no_grad()
def _pair_means(Wn: Tensor, rows: Tensor, mm: Tensor, rr: Tensor, cc: Tensor) -> Tensor:
    """Mean |cos| of unit rows over the chosen pairs, [M, len(rows)] (no gradient)."""
    n = Wn.shape[1]
    vals = _abs_dots(Wn, mm * n + rows[rr], mm * n + cc)
    shape = (Wn.shape[0], len(rows))
    total = vals.new_zeros(shape).index_put((mm, rr), vals, accumulate=True)
    count = vals.new_zeros(shape).index_put((mm, rr), torch.ones_like(vals), accumulate=True)
    return total / count.clamp_min(1.0)


def _check_rows(rows: Tensor | None, n: int, device: torch.device) -> Tensor:
    if rows is None:
        return torch.arange(n, device=device)
    rows = torch.as_tensor(rows, device=device)
    if rows.dtype == torch.bool or rows.is_floating_point() or rows.is_complex():
        raise ValueError(f"rows must be integer indices (not a mask or floats), got dtype {rows.dtype}")
    rows = rows.long()
    if rows.ndim != 1:
        raise ValueError(f"rows must be a 1-D index tensor, got shape {tuple(rows.shape)}")
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise IndexError(f"rows must index into [0, {n}), got min {rows.min()} max {rows.max()}")
    return rows


def _check_frozen(frozen: Tensor, shape: tuple[int, int], single: bool) -> Tensor:
    """frozen: bool [n] or [M, n] -> [M, n] (M = 1 for a single matrix)."""
    check_tensor("frozen", frozen, (1, 2), finite=False)
    if frozen.dtype != torch.bool:
        raise ValueError(f"frozen must be a bool mask, got dtype {frozen.dtype}")
    f3 = frozen.unsqueeze(0) if frozen.ndim == 1 else frozen
    if f3.shape[-1] != shape[1] or (f3.shape[0] != shape[0] and frozen.ndim != 1):
        want = f"[{shape[1]}]" if single else f"[{shape[1]}] or [{shape[0]}, {shape[1]}]"
        raise ValueError(f"frozen must have shape {want}, got {tuple(frozen.shape)}")
    return f3.expand(shape[0], -1) if frozen.ndim == 1 else f3


def nn_abs_cos(
    W: Tensor,
    rows: Tensor | None = None,
    tie_tol: float = 1e-6,
    *,
    reduction: str = "nearest",
    tie_mode: str = "mean",
    frozen: Tensor | None = None,
    chunk: int = DEFAULT_CHUNK,
    method: str = "chunked",
    cache: NeighbourCache | CertifiedCache | None = None,
    ortsae_chunk: int = 1024,
    generator: torch.Generator | None = None,
    shard: RowShard | None = None,
) -> Tensor:
    """Nearest-neighbour |cos| (or a variant) for a single or stacked matrix.

    Methods (see ``METHODS``); the first three are exact and agree to float rounding:

    - ``"chunked"``: search the neighbours without gradient in [chunk, n] blocks, then recompute
      only the chosen pairs with gradient. Memory O(chunk * n), backward O(m d). The default.
    - ``"active"``: the scored rows against all rows as one [m, n] block, autograd through it.
    - ``"naive"``: the full [n, n] Gram matrix with autograd (the O(n^2) baseline).
    - ``"cached"``: exact max over the candidates of ``cache`` (refreshed by the caller).
    - ``"certified"``: candidates of a :class:`CertifiedCache` with a certificate, so exact at
      every call; rows whose certificate fails are searched exactly.
    - ``"ortsae"``: nearest neighbour within random chunks of ``ortsae_chunk`` rows, a new random
      partition per call (OrtSAE, Korznikov et al. 2025). An approximation, labelled as such.

    Args:
        W: [n, d] or [M, n, d] rows are latent directions.
        rows: 1-D indices of the rows to score (all when None), shared across the stack.
        tie_tol, reduction, tie_mode: see :class:`OrthoConfig`.
        frozen: optional bool [n] or [M, n]; rows where True act as neighbours without gradient.
        chunk: rows per search block for ``"chunked"`` (and ``"mean_all"``).
        shard: split the exact search of ``"chunked"`` (and the searches of ``"certified"``)
            over the processes of a data-parallel job: each searches its slice of the rows, the
            chosen pairs are gathered, and every process returns the whole result, the same as
            without a shard, with gradient w.r.t. every row as in one process.

    Returns:
        [m] or [M, m] values, differentiable w.r.t. every row of ``W`` that is not frozen.
    """
    norms = _check_matrix(W)
    check_choice("method", method, METHODS)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("tie_mode", tie_mode, TIE_MODES)
    tie_tol = check_float("tie_tol", tie_tol, 0.0, 1.0, high_open=True)
    chunk = check_int("chunk", chunk, 1)
    ortsae_chunk = check_int("ortsae_chunk", ortsae_chunk, 2)
    check_instance("cache", cache, (NeighbourCache, CertifiedCache), optional=True)
    check_instance("generator", generator, torch.Generator, optional=True)
    n = W.shape[-2]
    rows = _check_rows(rows, n, W.device)
    squeeze = W.ndim == 2
    W3 = W.unsqueeze(0) if squeeze else W
    frozen3 = None if frozen is None else _check_frozen(frozen, W3.shape[:2], squeeze)
    # The neighbour search needs no gradient: detached rows and their norms.
    Wd, norms3 = W3.detach(), (norms.unsqueeze(0) if squeeze else norms)
    if len(rows) == 0:
        out = W3.new_zeros(W3.shape[0], 0)
    elif reduction == "mean_all" or method in ("active", "naive"):
        Wn = W3 / W3.norm(dim=-1, keepdim=True)
        Wn_cols = Wn if frozen3 is None else torch.where(frozen3.unsqueeze(-1), Wn.detach(), Wn)
        if method == "naive" and reduction == "nearest":
            full = _abs_cos_block(Wn, Wn_cols, torch.arange(n, device=W.device))[:, rows]
            out = _reduce_neighbours(full, reduction, tie_mode, tie_tol)
        else:
            step = len(rows) if method in ("active", "naive") else chunk
            out = torch.cat(
                [
                    _reduce_neighbours(
                        _abs_cos_block(Wn[:, rows[s : s + step]], Wn_cols, rows[s : s + step]),
                        reduction, tie_mode, tie_tol,
                    )
                    for s in range(0, len(rows), step)
                ],
                dim=-1,
            )
    elif method == "chunked":
        Wn = Wd / norms3.unsqueeze(-1)
        out = _recompute(W3, frozen3, rows, *_search_chunked(Wn, rows, tie_mode, tie_tol, chunk, shard))
    elif method == "certified":
        if not isinstance(cache, CertifiedCache):
            raise ValueError("method='certified' needs a CertifiedCache (OrthoConfig(method='certified').make_cache())")
        Wn = Wd / norms3.unsqueeze(-1)
        out = _recompute(W3, frozen3, rows, *cache.search(Wn, rows, tie_mode, tie_tol, shard))
    elif method == "cached":
        if not isinstance(cache, NeighbourCache) or cache.candidates is None:
            raise ValueError("method='cached' needs a NeighbourCache that has been refreshed")
        if cache.candidates.shape[:2] != W3.shape[:2]:
            raise ValueError(f"cache holds {tuple(cache.candidates.shape[:2])} rows, W has {tuple(W3.shape[:2])}")
        out = _recompute(
            W3, frozen3, rows, *_search_cached(Wd, norms3, rows, cache.candidates, tie_mode, tie_tol, chunk)
        )
    else:
        # The chunk search maps each row to one output position: score unique rows, then expand.
        uniq, inv = rows.unique(return_inverse=True)
        out = _recompute(
            W3, frozen3, uniq, *_search_random_chunks(Wd, norms3, uniq, ortsae_chunk, tie_mode, tie_tol, generator)
        )[:, inv]
    return out[0] if squeeze else out


@torch.no_grad()
def _search_chunked(Wn: Tensor, rows: Tensor, tie_mode: str, tie_tol: float, chunk: int, shard: RowShard | None = None):
    lo, hi = shard_range(len(rows), shard)
    parts = [tuple(torch.empty(0, dtype=torch.long, device=Wn.device) for _ in range(3))]
    for s in range(lo, hi, chunk):
        r = rows[s : min(s + chunk, hi)]
        mm, rr, cc = _tied_pairs(_abs_cos_block(Wn[:, r], Wn, r), tie_mode, tie_tol)
        parts.append((mm, rr + s, cc))
    pairs = [torch.cat(p) for p in zip(*parts)]
    return tuple(shard.gather(pairs)) if _sharded(shard) else tuple(pairs)


@torch.no_grad()
def _search_cached(
    W: Tensor, norms: Tensor, rows: Tensor, candidates: Tensor, tie_mode: str, tie_tol: float, block: int
):
    """Best of the k candidates of each row, in blocks of rows (no [m, k, d] temporary beyond a block).

    W: [M, n, d] detached, norms: [M, n], candidates: [M, n, k]."""
    M, n, d = W.shape
    offset = (torch.arange(M, device=W.device) * n)[:, None, None]
    flat, flat_norms = W.reshape(-1, d), norms.reshape(-1)
    parts = []
    for s in range(0, len(rows), block):
        r = rows[s : s + block]
        cand = candidates[:, r]  # [M, b, k]
        lin = (cand + offset).flatten()
        gathered = flat.index_select(0, lin).view(*cand.shape, d)  # [M, b, k, d]
        dots = (gathered @ W[:, r].unsqueeze(-1)).squeeze(-1)  # [M, b, k]
        c = (dots / (norms[:, r].unsqueeze(-1) * flat_norms.index_select(0, lin).view(cand.shape))).abs()
        mm, rr, kk = _tied_pairs(c, tie_mode, tie_tol)
        parts.append((mm, rr + s, cand[mm, rr, kk]))
    return tuple(torch.cat(p) for p in zip(*parts))


@torch.no_grad()
def _search_random_chunks(
    W: Tensor, norms: Tensor, rows: Tensor, size: int, tie_mode: str, tie_tol: float,
    generator: torch.Generator | None,
):
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"ortsae_chunk must be an int >= 2, got {size!r}")
    n = W.shape[1]
    groups = list(torch.randperm(n, generator=generator).to(W.device).split(size))
    if len(groups) > 1 and len(groups[-1]) < 2:  # a row alone in its chunk has no neighbour
        last = groups.pop()
        groups[-1] = torch.cat([groups[-1], last])
    pos = torch.full((n,), -1, dtype=torch.long, device=W.device)
    pos[rows] = torch.arange(len(rows), device=W.device)
    parts = []
    for members in groups:
        if (pos[members] < 0).all():
            continue
        local = torch.arange(len(members), device=W.device)
        Wn = W[:, members] / norms[:, members].unsqueeze(-1)
        mm, rr, cc = _tied_pairs(_abs_cos_block(Wn, Wn, local), tie_mode, tie_tol)
        keep = pos[members[rr]] >= 0
        parts.append((mm[keep], pos[members[rr[keep]]], members[cc[keep]]))
    return tuple(torch.cat(p) for p in zip(*parts))


def nearest_neighbour_abs_cos(W_dec: Tensor, rows: Tensor | None = None, tie_tol: float = 1e-6) -> Tensor:
    """For each requested row, the mean |cos| over its nearest neighbours (public contract).

    Args:
        W_dec: [n_latents, d], rows are latent directions.
        rows: 1-D indices of rows to score; all rows when None.
        tie_tol: neighbours within this |cos| of the best count as tied and are averaged.

    Returns:
        [len(rows)] tensor, differentiable w.r.t. every row of ``W_dec``. Exact for every n; the
        search never holds more than a [chunk, n] block of cosines, and only the chosen pairs are
        kept for the backward pass.
    """
    if not isinstance(W_dec, Tensor) or W_dec.ndim != 2:
        raise ValueError("W_dec must be a 2-D tensor [n_latents, d]")
    return nn_abs_cos(W_dec, rows, tie_tol)


def ortho_penalty(
    W_dec: Tensor,
    codes: Tensor | None = None,
    cfg: OrthoConfig | None = None,
    cache: NeighbourCache | CertifiedCache | None = None,
    *,
    W_enc: Tensor | None = None,
    limit: int | None = None,
    active: Tensor | None = None,
    shard: RowShard | None = None,
) -> Tensor:
    """Mean penalty over the scored latents, per model: the term to add as ``lambda_orth * penalty``.

    The one call for any training loop (dictionary_learning's, sparsify's, your own)::

        pen = ortho_penalty(sae.W_dec, codes)        # W_dec [n, d] rows, codes [batch, n]
        loss = mse + l1_coeff * sparsity + lambda_orth * pen

    Args:
        W_dec: [(M,) n, d] decoder rows (one model, or a stack of M independent models).
        codes: [(M,) batch, n] the batch's latent activations (only which latents are > 0 is used),
            or None when ``active`` is given.
        cfg: how to compute it (default ``OrthoConfig()``, the study's proposal, exact).
        cache: the neighbour cache, required for the ``CACHE_METHODS`` (make it once with
            ``cfg.make_cache()`` and pass the same one every step; ``"cached"``: refreshed by the
            caller with ``cache.maybe_refresh``).
        W_enc: [(M,) d, n]; needed only for ``cfg.target == "encoder"``.
        limit: score only latents ``< limit`` and compare them with rows ``< limit`` (the
            incremental approach: latents not yet added do not exist).
        active: optional bool [(M,) n], latents active in the batch, if the caller has it already
            (saves a pass over the codes); derived from ``codes`` otherwise. In a data-parallel
            job it must be the union over the processes' batches (the same on every process).
        shard: split the neighbour search over processes (see :func:`nn_abs_cos`).

    Returns:
        [M] (stacked) or scalar penalty, not yet multiplied by lambda_orth. A model with no
        active latent in the batch gets 0. float16 / bfloat16 matrices are scored in float32
        (:func:`penalty_dtype`), so the result is float32 for them.
    """
    cfg = OrthoConfig() if cfg is None else cfg
    check_instance("cfg", cfg, OrthoConfig)
    check_tensor("W_dec", W_dec, (2, 3), finite=False)
    if cfg.target == "encoder":
        if W_enc is None:
            raise ValueError("ortho_penalty with cfg.target='encoder' needs W_enc= ([(M,) d, n])")
        check_tensor("W_enc", W_enc, W_dec.ndim, finite=False)
    if codes is None and active is None:
        raise ValueError("ortho_penalty needs the batch's codes or its active set (active=)")
    if codes is not None:
        check_tensor("codes", codes, W_dec.ndim, finite=False)
        if codes.shape[-1] != W_dec.shape[-2]:
            raise ValueError(
                f"codes has {codes.shape[-1]} latents in its last dimension but W_dec has {W_dec.shape[-2]} "
                "rows: pass codes [(M,) batch, n] and W_dec [(M,) n, d]"
            )
    check_instance("cache", cache, (NeighbourCache, CertifiedCache), optional=True)
    limit = check_int("limit", limit, 1, W_dec.shape[-2], optional=True)
    W = penalty_dtype(W_dec if cfg.target == "decoder" else W_enc.transpose(-1, -2))
    if active is None:
        active = codes.detach().amax(dim=-2) > 0  # [(M,) n]
    if limit is not None:
        W, active = W[..., :limit, :], active[..., :limit]
    frozen = None if cfg.neighbour_grad else ~active
    kw = {
        "tie_tol": cfg.tie_tol, "reduction": cfg.reduction, "tie_mode": cfg.tie_mode, "frozen": frozen,
        "chunk": cfg.chunk, "method": cfg.method, "cache": cache, "ortsae_chunk": cfg.ortsae_chunk,
        "shard": shard,
    }
    if W.ndim == 2 and cfg.scope == "active":
        # One model: score only the active rows (the point of the active-set methods).
        rows = active.nonzero().flatten()
        if len(rows) == 0:
            return W.sum() * 0.0
        return PENALTY_SHAPES[cfg.shape](nn_abs_cos(W, rows, **kw)).mean()
    pen = PENALTY_SHAPES[cfg.shape](nn_abs_cos(W, **kw))
    weight = active.to(pen.dtype) if cfg.scope == "active" else torch.ones_like(pen)
    return (pen * weight).sum(-1) / weight.sum(-1).clamp_min(1.0)
