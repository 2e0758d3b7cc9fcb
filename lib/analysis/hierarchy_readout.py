"""How an SAE represents a ground-truth feature hierarchy: absorption and parent/child compositions.

Given the true feature directions, the hierarchy (parent feature -> child features; a child only
fires when its parent does) and an SAE's decoder and codes:

- **Absorption** (Chanin et al. 2024, "A is for absorption"): the latent that represents a parent
  feature stops firing when a child fires, and the child's latent carries the parent's direction
  instead. Per parent feature p with its matched latent (the latent whose decoder row has the
  highest cosine with p): ``recall_alone = P(latent fires | p fires, no child of p fires)``,
  ``recall_with_child = P(latent fires | p fires, a child fires)`` and
  ``absorption = 1 - recall_with_child / recall_alone`` (clipped to [0, 1]).
- **Leaning (hedging)**: how far a child's latent points towards its parent beyond what the child
  direction itself does, ``cos(latent_c, p) - cos(c, p)``, and the same for the parent's latent
  towards each child; the same statistic over unrelated feature pairs is the control.
- **Parent/child compositions**: latents whose decoder row is no single feature but a non-negative
  combination of a feature and one of its ancestors or descendants (by
  :func:`sae_ortho.metrics.detect_compositions`), against compositions of unrelated features.

Pure math on arrays: nothing here trains, loads or plots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sae_ortho import metrics


def _pairs(parents: dict[int, list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(parent [E], child [E]) of every parent -> child edge."""
    p = [k for k, kids in parents.items() for _ in kids]
    c = [c for kids in parents.values() for c in kids]
    return np.asarray(p, dtype=np.int64), np.asarray(c, dtype=np.int64)


def ancestors(parents: dict[int, list[int]]) -> dict[int, set[int]]:
    """Feature -> the set of its ancestors (features with no parent are absent)."""
    up = {c: p for p, kids in parents.items() for c in kids}
    out: dict[int, set[int]] = {}
    for f in up:
        chain, g = set(), f
        while g in up:
            g = up[g]
            chain.add(g)
        out[f] = chain
    return out


def best_latents(W_dec: Tensor, features: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """For each true feature, the latent whose decoder row has the highest (signed) cosine with it.

    W_dec: [n_latents, d], features: [n_features, d] -> (latent [n_features], cos [n_features]).
    Signed, because codes are non-negative: a row along -f cannot represent f.
    """
    c = metrics.cosine_matrix(features, W_dec)
    best = c.max(dim=1)
    return best.indices.numpy(), best.values.numpy()


def parent_child_firing(feature_acts: Tensor, parents: dict[int, list[int]]) -> tuple[Tensor, Tensor]:
    """Which parent features fire, and whether any of their children does.

    feature_acts: [b, n_features] true activations -> ``(parent_on, child_on)``, both [b, P] bool,
    with parents in sorted order (as :class:`AbsorptionCounter` expects). Depends on the data only,
    so it can be computed once and reused for every SAE.
    """
    order = sorted(parents)
    pos = {p: i for i, p in enumerate(order)}
    child = torch.as_tensor([c for p in order for c in parents[p]])
    child_of = torch.as_tensor([pos[p] for p in order for _ in parents[p]])
    feature_acts = feature_acts.cpu()
    parent_on = feature_acts[:, torch.as_tensor(order)] > 0
    child_on = torch.zeros(parent_on.shape, dtype=torch.float32)
    child_on.index_add_(1, child_of, (feature_acts[:, child] > 0).float())
    return parent_on, child_on > 0


class AbsorptionCounter:
    """Accumulates, over batches, how each parent feature's latent fires with and without children.

    Args:
        W_dec: [n_latents, d] decoder rows of the SAE.
        features: [n_features, d] true feature directions.
        parents: parent feature -> its child features.
        match_tol: a parent counts as represented when its best latent's cosine is at least this.
    """

    def __init__(self, W_dec: Tensor, features: Tensor, parents: dict[int, list[int]], match_tol: float = 0.5):
        if not parents:
            raise ValueError("parents is empty: the model has no hierarchy")
        if not 0 < match_tol <= 1:
            raise ValueError(f"match_tol must be in (0, 1], got {match_tol!r}")
        self.parents = parents
        self.parent = np.asarray(sorted(parents), dtype=np.int64)
        latent, cos = best_latents(W_dec, features)
        self.latent, self.match_cos = latent[self.parent], cos[self.parent]
        self.match_tol = match_tol
        self._l = torch.as_tensor(self.latent)
        z = np.zeros(len(self.parent))
        self.n_alone, self.n_with_child, self.fired_alone, self.fired_with_child = z.copy(), z.copy(), z.copy(), z.copy()

    @torch.no_grad()
    def add_batch(self, feature_acts: Tensor, codes: Tensor) -> None:
        """feature_acts: [b, n_features] true activations; codes: [b, n_latents] SAE codes."""
        self.add_firing(*parent_child_firing(feature_acts, self.parents), codes)

    @torch.no_grad()
    def add_firing(self, parent_on: Tensor, child_on: Tensor, codes: Tensor) -> None:
        """Like :meth:`add_batch` with the batch's :func:`parent_child_firing` precomputed."""
        fired = codes.cpu()[:, self._l] > 0
        alone, with_child = parent_on & ~child_on, parent_on & child_on
        self.n_alone += alone.sum(0).numpy()
        self.n_with_child += with_child.sum(0).numpy()
        self.fired_alone += (alone & fired).sum(0).numpy()
        self.fired_with_child += (with_child & fired).sum(0).numpy()

    def compute(self, min_samples: int = 20) -> AbsorptionReport:
        """Per-parent recalls and absorption; parents seen fewer than ``min_samples`` times alone or
        with a child, or without a matched latent, get NaN absorption."""
        with np.errstate(invalid="ignore", divide="ignore"):
            r_alone = self.fired_alone / self.n_alone
            r_child = self.fired_with_child / self.n_with_child
            absorb = np.clip(1 - r_child / r_alone, 0.0, 1.0)
        ok = (self.n_alone >= min_samples) & (self.n_with_child >= min_samples) & (self.match_cos >= self.match_tol)
        ok &= r_alone > 0
        absorb = np.where(ok, absorb, np.nan)
        return AbsorptionReport(self.parent, self.latent, self.match_cos, r_alone, r_child,
                                self.n_alone, self.n_with_child, absorb, self.match_tol)


@dataclass
class AbsorptionReport:
    """Result of :class:`AbsorptionCounter` (one entry per parent feature)."""

    parent: np.ndarray
    latent: np.ndarray
    match_cos: np.ndarray
    recall_alone: np.ndarray
    recall_with_child: np.ndarray
    n_alone: np.ndarray
    n_with_child: np.ndarray
    absorption: np.ndarray  # NaN where undefined (see AbsorptionCounter.compute)
    match_tol: float

    @property
    def matched_fraction(self) -> float:
        """Fraction of parent features with a latent of cosine >= match_tol."""
        return float((self.match_cos >= self.match_tol).mean())

    @property
    def scored(self) -> int:
        """Parents with a defined absorption score."""
        return int(np.isfinite(self.absorption).sum())

    def mean_absorption(self) -> float:
        """Mean absorption over the scored parents (NaN if none)."""
        return float(np.nanmean(self.absorption)) if self.scored else float("nan")

    def absorbed_fraction(self, threshold: float = 0.5) -> float:
        """Fraction of scored parents whose latent loses at least ``threshold`` of its recall when a
        child fires (NaN if none scored)."""
        a = self.absorption[np.isfinite(self.absorption)]
        return float((a >= threshold).mean()) if a.size else float("nan")


def absorption(
    W_dec: Tensor, features: Tensor, parents: dict[int, list[int]], batches, match_tol: float = 0.5,
    min_samples: int = 20,
) -> AbsorptionReport:
    """:class:`AbsorptionCounter` over ``batches`` of ``(feature_acts [b, n_features], codes [b, n])``."""
    counter = AbsorptionCounter(W_dec, features, parents, match_tol)
    for feats, codes in batches:
        counter.add_batch(feats, codes)
    return counter.compute(min_samples)


@dataclass
class LeanReport:
    """Mean leaning of matched latents along the hierarchy (see the module docstring).

    Attributes:
        child_on_parent: mean over edges of cos(latent of child, parent) - cos(child, parent).
        parent_on_child: mean over edges of cos(latent of parent, child) - cos(parent, child).
        control: the first statistic over unrelated (feature, feature) pairs.
        n_edges: edges whose child and parent latents both match (cos >= match_tol).
    """

    child_on_parent: float
    parent_on_child: float
    control: float
    n_edges: int


def lean(
    W_dec: Tensor, features: Tensor, parents: dict[int, list[int]], match_tol: float = 0.5, seed: int = 0
) -> LeanReport:
    """How far matched latents lean towards their parent / children (hedging and the decoder side
    of absorption), with an unrelated-pair control. W_dec: [n, d], features: [n_features, d]."""
    p, c = _pairs(parents)
    latent, cos = best_latents(W_dec, features)
    Wn = torch.nn.functional.normalize(torch.as_tensor(W_dec).detach().double(), dim=1)
    Fn = torch.nn.functional.normalize(torch.as_tensor(features).detach().double(), dim=1)
    ok = (cos[p] >= match_tol) & (cos[c] >= match_tol)
    p, c = p[ok], c[ok]
    if p.size == 0:
        return LeanReport(float("nan"), float("nan"), float("nan"), 0)

    def leaning(a: np.ndarray, b: np.ndarray) -> float:
        """mean cos(latent of a, b) - cos(a, b)"""
        la = torch.as_tensor(latent[a])
        return float(((Wn[la] * Fn[b]).sum(1) - (Fn[a] * Fn[b]).sum(1)).mean())

    related = {(int(x), int(y)) for x, y in zip(*_pairs(parents))}
    related |= {(y, x) for x, y in related}
    rng = np.random.default_rng(seed)
    matched = np.flatnonzero(cos >= match_tol)
    a = rng.choice(matched, size=4 * p.size) if matched.size > 1 else matched
    b = rng.choice(np.arange(features.shape[0]), size=a.size)
    keep = np.array([x != y and (int(x), int(y)) not in related for x, y in zip(a, b)], dtype=bool)
    control = leaning(a[keep], b[keep]) if keep.any() else float("nan")
    return LeanReport(leaning(c, p), leaning(p, c), control, int(p.size))


@dataclass
class CompositionCounts:
    """Latents by how they relate to the hierarchy.

    Attributes:
        atoms: latents within ``atom_tol`` of a single feature.
        parent_child: compositions whose parts include a feature and one of its ancestors.
        unrelated: compositions of features with no ancestor relation.
        other: neither.
        n_latents: all latents.
    """

    atoms: int
    parent_child: int
    unrelated: int
    other: int
    n_latents: int

    def fraction(self, name: str) -> float:
        return getattr(self, name) / self.n_latents


def compositions(
    W_dec: Tensor,
    features: Tensor,
    parents: dict[int, list[int]],
    atom_tol: float = 0.9,
    fit_tol: float = 0.9,
    min_share: float = 0.15,
    max_parts: int = 2,
) -> CompositionCounts:
    """Count atoms, parent/child compositions and unrelated compositions among the latents.

    W_dec: [n_latents, d], features: [n_features, d]. Compositions are found by
    :func:`sae_ortho.metrics.detect_compositions` (non-negative fits by 2..``max_parts`` features).
    """
    rep = metrics.detect_compositions(
        W_dec, features, atom_tol=atom_tol, fit_tol=fit_tol, max_parts=max_parts, min_share=min_share
    )
    anc = ancestors(parents)
    atoms = pc = unrel = other = 0
    for kind, parts in zip(rep.latent_kind, rep.latent_parts):
        if kind == metrics.ATOM:
            atoms += 1
        elif kind == metrics.COMPOSITION:
            hit = any(b in anc.get(a, ()) or a in anc.get(b, ()) for i, a in enumerate(parts) for b in parts[i + 1:])
            pc += hit
            unrel += not hit
        else:
            other += 1
    return CompositionCounts(atoms, pc, unrel, other, len(rep.latent_kind))
