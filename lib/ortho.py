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

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lib.validation import check_bool, check_choice, check_float, check_instance, check_int, check_tensor

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
METHODS = ("chunked", "active", "naive", "cached", "ortsae")
EXACT_METHODS = ("chunked", "active", "naive")


@dataclass(frozen=True)
class OrthoConfig:
    """How the orthogonality penalty is computed. Defaults are the study's proposal.

    The weight lambda_orth is not part of this config: it is a training hyperparameter
    (``lib.train.TrainConfig.ortho_weight``, one value per stacked model).

    Attributes:
        shape: one of ``PENALTY_SHAPES``.
        target: ``"decoder"`` rows (the proposal) or ``"encoder"`` columns.
        scope: ``"active"`` (latents active in the batch) or ``"all"`` latents.
        neighbour_grad: let gradient flow into inactive neighbours' rows (the proposal).
        reduction: ``"nearest"`` neighbour or ``"mean_all"`` |cos| over all other latents.
        tie_mode: ``"mean"`` over tied nearest neighbours (the proposal) or ``"first"`` only.
        tie_tol: |cos| tolerance within which neighbours count as tied.
        method: how neighbours are found (``METHODS``; see :func:`nn_abs_cos`); ``"cached"``
            uses ``cache_k`` candidates refreshed every ``refresh_every`` steps, ``"ortsae"``
            random chunks of ``ortsae_chunk`` rows (an approximation).
        chunk: rows per block of the exact search.
    """

    shape: str = "neglog"
    target: str = "decoder"
    scope: str = "active"
    neighbour_grad: bool = True
    reduction: str = "nearest"
    tie_mode: str = "mean"
    tie_tol: float = 1e-6
    method: str = "chunked"
    cache_k: int = 8
    refresh_every: int = 100
    ortsae_chunk: int = 1024
    chunk: int = DEFAULT_CHUNK

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
        for name in ("cache_k", "refresh_every", "chunk"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), 1))
        object.__setattr__(self, "ortsae_chunk", check_int("ortsae_chunk", self.ortsae_chunk, 2))

    def make_cache(self) -> NeighbourCache | None:
        """A fresh neighbour cache for ``method == "cached"`` (else None)."""
        if self.method != "cached":
            return None
        return NeighbourCache(self.cache_k, self.refresh_every, self.chunk)


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
    def refresh(self, W: Tensor, step: int = 0) -> None:
        """Exact top-k |cos| neighbours of every row of W: [(M,) n, d]."""
        W3 = W.detach().unsqueeze(0) if W.ndim == 2 else W.detach()
        n = W3.shape[-2]
        k = min(self.k, n - 1)
        Wn = W3 / W3.norm(dim=-1, keepdim=True)
        idx = torch.arange(n, device=W.device)
        blocks = []
        for start in range(0, n, self.chunk):
            rows = idx[start : start + self.chunk]
            blocks.append(_abs_cos_block(Wn[:, rows], Wn, rows).topk(k, dim=-1).indices)
        new = torch.cat(blocks, dim=1)
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

    def maybe_refresh(self, W: Tensor, step: int) -> None:
        n = W.shape[-2]
        stale = self.candidates is None or self.candidates.shape[1] != n
        if stale or self.refreshed_at is None or step - self.refreshed_at >= self.refresh_every:
            self.refresh(W, step)

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
    cache: NeighbourCache | None = None,
    ortsae_chunk: int = 1024,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Nearest-neighbour |cos| (or a variant) for a single or stacked matrix.

    Methods (see ``METHODS``); the first three are exact and agree to float rounding:

    - ``"chunked"``: search the neighbours without gradient in [chunk, n] blocks, then recompute
      only the chosen pairs with gradient. Memory O(chunk * n), backward O(m d). The default.
    - ``"active"``: the scored rows against all rows as one [m, n] block, autograd through it.
    - ``"naive"``: the full [n, n] Gram matrix with autograd (the O(n^2) baseline).
    - ``"cached"``: exact max over the candidates of ``cache`` (refreshed by the caller).
    - ``"ortsae"``: nearest neighbour within random chunks of ``ortsae_chunk`` rows, a new random
      partition per call (OrtSAE, Korznikov et al. 2025). An approximation, labelled as such.

    Args:
        W: [n, d] or [M, n, d] rows are latent directions.
        rows: 1-D indices of the rows to score (all when None), shared across the stack.
        tie_tol, reduction, tie_mode: see :class:`OrthoConfig`.
        frozen: optional bool [n] or [M, n]; rows where True act as neighbours without gradient.
        chunk: rows per search block for ``"chunked"`` (and ``"mean_all"``).

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
    check_instance("cache", cache, NeighbourCache, optional=True)
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
        out = _recompute(W3, frozen3, rows, *_search_chunked(Wn, rows, tie_mode, tie_tol, chunk))
    elif method == "cached":
        if cache is None or cache.candidates is None:
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
def _search_chunked(Wn: Tensor, rows: Tensor, tie_mode: str, tie_tol: float, chunk: int):
    parts = []
    for s in range(0, len(rows), chunk):
        mm, rr, cc = _tied_pairs(_abs_cos_block(Wn[:, rows[s : s + chunk]], Wn, rows[s : s + chunk]), tie_mode, tie_tol)
        parts.append((mm, rr + s, cc))
    return tuple(torch.cat(p) for p in zip(*parts))


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
    W_enc: Tensor,
    W_dec: Tensor,
    codes: Tensor,
    cfg: OrthoConfig,
    cache: NeighbourCache | None = None,
    limit: int | None = None,
    active: Tensor | None = None,
) -> Tensor:
    """Mean penalty over the scored latents, per model.

    Args:
        W_enc: [(M,) d, n]; W_dec: [(M,) n, d]; codes: [(M,) batch, n] (the batch's activations).
        cfg: how to compute it.
        cache: the neighbour cache, required for ``cfg.method == "cached"`` (refreshed by caller).
        limit: score only latents ``< limit`` and compare them with rows ``< limit`` (the
            incremental approach: latents not yet added do not exist).
        active: optional bool [(M,) n], latents active in the batch, if the caller has it already
            (saves a pass over the codes); derived from ``codes`` otherwise.

    Returns:
        [M] (stacked) or scalar penalty, not yet multiplied by lambda_orth. A model with no
        active latent in the batch gets 0.
    """
    check_instance("cfg", cfg, OrthoConfig)
    check_tensor("W_enc", W_enc, (2, 3), finite=False)
    check_tensor("W_dec", W_dec, (2, 3), finite=False)
    check_tensor("codes", codes, W_dec.ndim, finite=False)
    check_instance("cache", cache, NeighbourCache, optional=True)
    limit = check_int("limit", limit, 1, W_dec.shape[-2], optional=True)
    W = W_dec if cfg.target == "decoder" else W_enc.transpose(-1, -2)
    if active is None:
        active = codes.detach().amax(dim=-2) > 0  # [(M,) n]
    if limit is not None:
        W, active = W[..., :limit, :], active[..., :limit]
    frozen = None if cfg.neighbour_grad else ~active
    kw = {
        "tie_tol": cfg.tie_tol, "reduction": cfg.reduction, "tie_mode": cfg.tie_mode, "frozen": frozen,
        "chunk": cfg.chunk, "method": cfg.method, "cache": cache, "ortsae_chunk": cfg.ortsae_chunk,
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
