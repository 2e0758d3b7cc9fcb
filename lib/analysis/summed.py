"""Synthetic data whose ground truth is a dictionary of atoms plus sums of some of them (study Q10).

Take the decoder rows of a trained vanilla SAE as *atoms*; choose pairs and triples of them as
*sums*. Every ground-truth feature fires independently: an atom alone with ``p_atom`` (``p_part``
for atoms that belong to a sum), a sum, as one unit, with ``p_sum``; when a sum fires, all its
parts get the same amplitude. So an input is

    x = sum_{firing atoms a} amp_a * atom_a + sum_{firing sums s} amp_s * sum_{a in s} atom_a,

and how often the parts of a sum co-occur outside the sum is set by ``p_part`` vs ``p_sum``.

:func:`summed_status` says, per ground-truth feature, whether a learned dictionary has it alone, only
as a combination, or not at all; :func:`sum_detection` asks whether the decomposition test of
:mod:`sae_ortho.analysis.decompose` tells the learned sum latents from the atom latents.
Sampling uses the global torch generator (training resumes it from checkpoints); the choice of
sums uses ``SummedConfig.seed`` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from sae_ortho.analysis.decompose import (
    Decomposition,
    decompose_rows,
    is_combination,
    precision_recall,
    unit_rows,
)
from sae_ortho.core.validation import (
    check_bool,
    check_choice,
    check_float,
    check_instance,
    check_int,
    check_probability,
)

AMPLITUDES = ("uniform", "constant")
ATOM, PAIR, TRIPLE = "atom", "pair", "triple"
# Per-feature status (see summed_status).
ALONE, AS_COMBINATION, MISSED = "alone", "as combination", "missed"
# How a feature that is not alone is still represented.
SPLIT, INSIDE = "split over latents", "inside a combination latent"
_KIND = {1: ATOM, 2: PAIR, 3: TRIPLE}
# Above this many candidate sets, sets are drawn by rejection instead of from an enumerated list.
_ENUMERATE_MAX = 200_000


def _check_int(name: str, value: int, low: int) -> int:
    return check_int(name, value, low)


@dataclass(frozen=True)
class SummedConfig:
    """Configuration of :class:`SummedData`; validated on construction.

    Attributes:
        n_pairs, n_triples: number of sums of 2 and of 3 atoms.
        p_atom: firing probability of each atom on its own.
        p_sum: firing probability of each sum as one unit (all parts, one shared amplitude).
        p_part: firing probability on its own of an atom that is part of a sum; None means
            ``p_atom``. ``p_part = 0`` makes the parts co-occur perfectly (they only ever fire
            together), so the data give no reason to split the sum.
        amplitude: ``"uniform"`` U[0, 1) per firing event, or ``"constant"`` 1.
        disjoint: sums use distinct atoms (each atom is part of at most one sum); otherwise sums
            are drawn independently (distinct sets, atoms may be shared).
        seed: seed of the choice of sums (not of the sampling).
    """

    n_pairs: int = 16
    n_triples: int = 0
    p_atom: float = 0.01
    p_sum: float = 0.01
    p_part: float | None = None
    amplitude: str = "uniform"
    disjoint: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_pairs", "n_triples", "seed"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), 0))
        for name in ("p_atom", "p_sum", "p_part"):
            object.__setattr__(self, name, check_probability(name, getattr(self, name), optional=name == "p_part"))
        check_choice("amplitude", self.amplitude, AMPLITUDES)
        object.__setattr__(self, "disjoint", check_bool("disjoint", self.disjoint))


class SummedBatch(NamedTuple):
    """x: [batch, d] inputs; coeffs: [batch, n_features] amplitude of each ground-truth feature
    (atoms, then sums; as :class:`sae_ortho.data.toy.ToyBatch`, so :func:`sae_ortho.data.toy.stack_sampler` accepts it)."""

    x: Tensor
    coeffs: Tensor


def _choose_sums(n_atoms: int, cfg: SummedConfig) -> list[tuple[int, ...]]:
    """The atom indices of each sum (pairs, then triples), deterministic in ``cfg.seed``."""
    rng = np.random.default_rng(cfg.seed)
    sizes = [2] * cfg.n_pairs + [3] * cfg.n_triples
    if cfg.disjoint:
        need = sum(sizes)
        if need > n_atoms:
            raise ValueError(
                f"disjoint sums need 2 * n_pairs + 3 * n_triples = {need} atoms, but only {n_atoms} "
                "were given; use fewer sums, more atoms or disjoint=False"
            )
        perm = rng.permutation(n_atoms)
        starts = np.cumsum([0, *sizes])
        return [tuple(sorted(int(a) for a in perm[s : s + k])) for s, k in zip(starts, sizes)]
    sums: list[tuple[int, ...]] = []
    for k, count in ((2, cfg.n_pairs), (3, cfg.n_triples)):
        available = math.comb(n_atoms, k)
        if count > available:
            raise ValueError(f"{count} distinct sums of {k} atoms need more than {n_atoms} atoms")
        if available <= _ENUMERATE_MAX:
            sets = np.array(list(combinations(range(n_atoms), k)))
            sums += [tuple(int(a) for a in s) for s in sets[rng.choice(available, count, replace=False)]]
        else:  # collisions are rare: count <= C(n, k) and C(n, k) is large
            chosen: dict[tuple[int, ...], None] = {}  # a set that keeps the drawing order
            while len(chosen) < count:
                chosen[tuple(sorted(int(a) for a in rng.choice(n_atoms, k, replace=False)))] = None
            sums += list(chosen)
    return sums


class SummedData:
    """Atoms plus sums of atoms as ground-truth features.

    Args:
        atoms: [n_atoms, d] atom directions (e.g. a vanilla SAE's decoder rows); normalised here.
        cfg: the configuration.

    Ground-truth features are numbered atoms first (``0..n_atoms-1``), then the sums.
    """

    def __init__(self, atoms: Tensor, cfg: SummedConfig):
        check_instance("cfg", cfg, SummedConfig)
        self.cfg = cfg
        self._atoms = unit_rows("atoms", atoms).float()
        n = self._atoms.shape[0]
        sums = _choose_sums(n, cfg)
        self._parts: list[tuple[int, ...]] = [(i,) for i in range(n)] + sums
        # membership[s, a] = 1 when atom a is part of sum s: [n_sums, n_atoms]
        self._membership = torch.zeros(len(sums), n)
        for s, p in enumerate(sums):
            self._membership[s, list(p)] = 1.0
        # The same as (sum, atom) index pairs: scatter-adding is far cheaper than a dense
        # [batch, n_sums] @ [n_sums, n_atoms] product at LM sizes.
        self._pair_sum = torch.tensor([s for s, p in enumerate(sums) for _ in p], dtype=torch.long)
        self._pair_atom = torch.tensor([a for p in sums for a in p], dtype=torch.long)
        raw = self._membership @ self._atoms  # unnormalised sums: what the data add
        norms = raw.norm(dim=1, keepdim=True)
        if (norms < 1e-3).any():  # e.g. two antipodal atoms: their sum is no direction
            s = int(torch.nonzero(norms[:, 0] < 1e-3)[0])
            raise ValueError(
                f"the sum of atoms {sums[s]} (almost) cancels to zero; choose another seed or atoms"
            )
        self._directions = torch.cat([self._atoms, raw / norms])
        in_sum = self._membership.sum(0) > 0
        p_part = cfg.p_atom if cfg.p_part is None else cfg.p_part
        self.probs = torch.cat(
            [
                torch.where(in_sum, torch.tensor(p_part), torch.tensor(cfg.p_atom)),
                torch.full((len(sums),), float(cfg.p_sum)),
            ]
        )  # [n_features] firing probability of each ground-truth feature as its own event

    @property
    def atoms(self) -> Tensor:
        """[n_atoms, d] unit atom directions."""
        return self._atoms

    @property
    def directions(self) -> Tensor:
        """[n_atoms + n_sums, d] unit directions of every ground-truth feature (atoms, then sums)."""
        return self._directions

    @property
    def parts(self) -> list[tuple[int, ...]]:
        """Atom indices of each ground-truth feature (``(i,)`` for atom i)."""
        return list(self._parts)

    @property
    def is_sum(self) -> np.ndarray:
        """[n_features] bool: True for the sums."""
        return np.array([len(p) > 1 for p in self._parts], dtype=bool)

    @property
    def kinds(self) -> list[str]:
        """[n_features] ``"atom"``, ``"pair"`` or ``"triple"``."""
        return [_KIND[len(p)] for p in self._parts]

    @property
    def n_atoms(self) -> int:
        return self._atoms.shape[0]

    @property
    def n_features(self) -> int:
        return len(self._parts)

    @property
    def d(self) -> int:
        return self._atoms.shape[1]

    def sample_coeffs(self, batch: int) -> Tensor:
        """[batch, n_features] amplitude of every ground-truth feature event (0 when not firing)."""
        batch = _check_int("batch", batch, 1)
        fired = torch.rand(batch, self.n_features) < self.probs
        if self.cfg.amplitude == "uniform":
            return fired * torch.rand(batch, self.n_features)
        return fired.float()

    def sample(self, batch: int) -> SummedBatch:
        """A batch of inputs and the amplitude of every ground-truth feature event.

        Returns ``SummedBatch(x [batch, d], coeffs [batch, n_features])``; ``x`` is
        ``coeffs[:, atoms] @ atoms + coeffs[:, sums] @ (unnormalised sums)``.
        """
        coeffs = self.sample_coeffs(batch)
        return SummedBatch(self._per_atom(coeffs) @ self._atoms, coeffs)

    def _per_atom(self, coeffs: Tensor) -> Tensor:
        """[batch, n_features] feature amplitudes -> [batch, n_atoms] each atom's total amplitude:
        its own event plus every firing sum it belongs to."""
        per_atom = coeffs[:, : self.n_atoms].clone()
        return per_atom.index_add_(1, self._pair_atom, coeffs[:, self.n_atoms + self._pair_sum])

    def stats(self, n: int, seed: int = 0) -> pd.DataFrame:
        """Empirical firing statistics on ``n`` samples drawn from their own seed (the global RNG
        stream, i.e. the training data, is left where it was).

        Returns one row per ground-truth feature: kind, parts, p (its firing probability as an
        event), rate (empirical event rate), all_parts_rate (fraction of samples in which every
        part has non-zero amplitude in x, for any reason) and p_all_parts (its exact value).
        """
        n = _check_int("n", n, 1)
        seed = _check_int("seed", seed, 0)
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            coeffs = self.sample_coeffs(n)  # the same draws as sample(n), without x
        finally:
            torch.set_rng_state(state)
        on = (coeffs > 0).float()  # [n, n_features] event fired
        atom_on = self._per_atom(on) > 0  # [n, n_atoms]
        all_parts = np.empty(self.n_features)
        all_parts[: self.n_atoms] = atom_on.double().mean(0).numpy()
        for k in (2, 3):  # sums of k atoms, all parts active at once
            feats = [f for f, p in enumerate(self._parts) if len(p) == k]
            if feats:
                idx = torch.tensor([self._parts[f] for f in feats])  # [n_k, k]
                all_parts[feats] = atom_on[:, idx].all(-1).double().mean(0).numpy()
        rate = on.double().mean(0).numpy()
        p = self.probs.double().numpy()
        member = self._membership.numpy().astype(bool)
        rows = [
            {
                "feature": f,
                "kind": _KIND[len(parts)],
                "parts": parts,
                "p": p[f],
                "rate": float(rate[f]),
                "all_parts_rate": float(all_parts[f]),
                "p_all_parts": _p_all_active(parts, p[: self.n_atoms], p[self.n_atoms :], member),
            }
            for f, parts in enumerate(self._parts)
        ]
        return pd.DataFrame(rows)


def _p_all_active(parts: tuple[int, ...], p_atom: np.ndarray, p_sum: np.ndarray, member: np.ndarray) -> float:
    """Exact P(every atom in ``parts`` is active), events independent.

    An atom is active when its own event or a sum containing it fires. Enumerate the firing
    pattern of the sums touching ``parts`` (few: each atom is in few sums), then the parts not
    covered must fire on their own.
    """
    touching = np.flatnonzero(member[:, list(parts)].any(1))
    if len(touching) > 16:
        raise ValueError(f"too many sums ({len(touching)}) share atoms with {parts} to enumerate")
    total = 0.0
    for mask in range(2 ** len(touching)):
        on = [s for i, s in enumerate(touching) if mask >> i & 1]
        prob = np.prod([p_sum[s] if (mask >> i & 1) else 1 - p_sum[s] for i, s in enumerate(touching)])
        covered = member[on].any(0) if on else np.zeros(member.shape[1], dtype=bool)
        prob *= np.prod([p_atom[a] for a in parts if not covered[a]])
        total += prob
    return float(total)


# --- what a learned dictionary makes of the ground truth -------------------------------------------


def _major(dec: Decomposition, min_share: float) -> tuple[int, ...]:
    """Support rows carrying >= min_share of the coefficient mass."""
    return tuple(s for s, w in zip(dec.support, dec.shares) if w >= min_share)


def _cos(a: Tensor, b: Tensor) -> np.ndarray:
    """Signed cosine of unit rows a: [m, d], b: [n, d] -> [m, n]."""
    return (a.double() @ b.double().T).numpy()


def summed_status(
    learned: Tensor,
    data: SummedData,
    atom_tol: float = 0.9,
    fit_tol: float = 0.9,
    margin: float = 0.05,
    min_share: float = 0.15,
    max_terms: int = 3,
    n_candidates: int = 10,
) -> pd.DataFrame:
    """How a learned dictionary represents each ground-truth feature (atoms and sums).

    Status of feature f with unit direction v_f (cosines are signed: codes are non-negative):

    - ``"alone"``: some latent has cos >= ``atom_tol`` with v_f.
    - ``"as combination"``: not alone, but represented through several latents or inside one:
      route ``"split over latents"`` when v_f is a combination of >= 2 learned latents
      (:func:`sae_ortho.analysis.decompose.is_combination` of v_f decomposed into the latents; for a sum this is
      typically its parts' latents, column ``via_parts``), else route ``"inside a combination
      latent"`` when some latent is a combination of atoms (decomposed into the ground-truth
      atoms) whose major terms include every part of f (an atom learnt only inside sum latents).
    - ``"missed"``: neither.

    Args:
        learned: [n_latents, d] learned directions (decoder rows).
        data: the ground truth.
        atom_tol, fit_tol, margin, min_share: thresholds (see :func:`sae_ortho.analysis.decompose.is_combination`).

    Returns:
        One row per ground-truth feature: feature, kind, parts, best_cos, best_latent, fit_cos
        (of v_f decomposed into the latents), status, route (``""`` unless as combination),
        latents (the latents involved: the match, the major terms of the split, or the latents
        containing f) and via_parts (the split's major latents are alone-matches of exactly f's
        parts; False otherwise).
    """
    check_instance("data", data, SummedData)
    L = unit_rows("learned", learned)
    if L.shape[1] != data.d:
        raise ValueError(f"learned has d = {L.shape[1]} but the data have d = {data.d}")
    atom_tol = check_float("atom_tol", atom_tol, 0.0, 1.0, low_open=True)
    fit_tol = check_float("fit_tol", fit_tol, 0.0, 1.0, low_open=True)
    c = _cos(data.directions, L)  # [n_features, n_latents]
    best_latent, best_cos = c.argmax(1), c.max(1)
    split = decompose_rows(data.directions, L, max_terms, n_candidates=n_candidates)
    # Latent j "contains" atom a when it is a combination of atoms with a among its major terms.
    contains: list[set[int]] = [set() for _ in range(data.n_atoms)]
    for j, dec in enumerate(decompose_rows(L, data.atoms, max_terms, n_candidates=n_candidates)):
        if is_combination(dec, fit_tol, margin, min_share):
            for a in _major(dec, min_share):
                contains[a].add(j)
    atom_match = _cos(data.atoms, L) >= atom_tol  # [n_atoms, n_latents]
    rows = []
    for f, parts in enumerate(data.parts):
        status, route, latents, via_parts = MISSED, "", (), False
        if best_cos[f] >= atom_tol:
            status, latents = ALONE, (int(best_latent[f]),)
        elif is_combination(split[f], fit_tol, margin, min_share):
            status, route, latents = AS_COMBINATION, SPLIT, _major(split[f], min_share)
            covered = {a for j in latents for a in parts if atom_match[a, j]}
            via_parts = len(parts) > 1 and covered == set(parts) and all(
                atom_match[list(parts), j].any() for j in latents
            )
        else:
            inside = set.intersection(*(contains[a] for a in parts))
            if inside:
                status, route, latents = AS_COMBINATION, INSIDE, tuple(sorted(inside))
        rows.append(
            {
                "feature": f,
                "kind": _KIND[len(parts)],
                "parts": parts,
                "best_cos": float(best_cos[f]),
                "best_latent": int(best_latent[f]),
                "fit_cos": split[f].cos,
                "status": status,
                "route": route,
                "latents": latents,
                "via_parts": via_parts,
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class SumDetection:
    """Result of :func:`sum_detection`.

    Attributes:
        latents: one row per learned latent matched to a ground-truth feature: latent, feature,
            match_cos, kind, is_sum (truth), predicted (the test says "sum"), fit_cos, single_cos,
            support (other latents in the fit).
        directions: the same test on the ground-truth directions against the atoms: feature,
            kind, is_sum, predicted, fit_cos, single_cos, support (atoms).
        precision, recall: of the test on the matched latents (nan where undefined, see
            :func:`sae_ortho.analysis.decompose.precision_recall`).
        directions_precision, directions_recall: of the test on the ground-truth directions (an
            upper bound: what a perfect dictionary would allow).
    """

    latents: pd.DataFrame
    directions: pd.DataFrame
    precision: float
    recall: float
    directions_precision: float
    directions_recall: float

    def summary(self) -> dict[str, float]:
        """Scalars for one row of a results table."""
        t = self.latents
        return {
            "precision": self.precision,
            "recall": self.recall,
            "n_matched": len(t),
            "n_matched_sums": int(t["is_sum"].sum()),
            "n_predicted_sums": int(t["predicted"].sum()),
            "directions_precision": self.directions_precision,
            "directions_recall": self.directions_recall,
        }


def sum_detection(
    learned: Tensor,
    data: SummedData,
    atom_tol: float = 0.9,
    fit_tol: float = 0.9,
    margin: float = 0.05,
    min_share: float = 0.15,
    max_terms: int = 3,
    n_candidates: int = 10,
) -> SumDetection:
    """Can the decomposition test tell a learned sum latent from a learned atom latent?

    Every latent whose best ground-truth match has cos >= ``atom_tol`` is matched to that feature
    (several latents may match one feature). The test predicts "sum" for a matched latent when it
    is a combination (:func:`sae_ortho.analysis.decompose.is_combination`) of the *other* learned latents; truth
    is "its matched feature is a sum". So a sum latent is only detectable when the SAE also learnt
    latents for its parts. The same test on the ground-truth directions, each decomposed into the
    atoms (an atom not into itself), is reported as an upper bound.
    """
    check_instance("data", data, SummedData)
    L = unit_rows("learned", learned)
    if L.shape[1] != data.d:
        raise ValueError(f"learned has d = {L.shape[1]} but the data have d = {data.d}")
    atom_tol = check_float("atom_tol", atom_tol, 0.0, 1.0, low_open=True)
    kinds, is_sum = data.kinds, data.is_sum
    c = _cos(L, data.directions)  # [n_latents, n_features]
    feature, match_cos = c.argmax(1), c.max(1)
    matched = np.flatnonzero(match_cos >= atom_tol)
    rows = []
    if L.shape[0] > 1 and len(matched):
        decs = decompose_rows(L, L, max_terms, exclude_self=True, n_candidates=n_candidates)
        for j in matched:
            f = int(feature[j])
            rows.append(
                {
                    "latent": int(j),
                    "feature": f,
                    "match_cos": float(match_cos[j]),
                    "kind": kinds[f],
                    "is_sum": bool(is_sum[f]),
                    "predicted": is_combination(decs[j], fit_tol, margin, min_share),
                    "fit_cos": decs[j].cos,
                    "single_cos": decs[j].single_cos,
                    "support": decs[j].support,
                }
            )
    columns = ["latent", "feature", "match_cos", "kind", "is_sum", "predicted"]
    latents = pd.DataFrame(rows, columns=[*columns, "fit_cos", "single_cos", "support"])
    precision, recall = precision_recall(
        latents["predicted"].to_numpy(bool), latents["is_sum"].to_numpy(bool)
    )

    # Ground-truth directions into the atoms: the atoms are rows 0..n_atoms-1 of directions.
    atoms_only = data.directions[: data.n_atoms]
    gt_rows = []
    if data.n_atoms > 1:
        decs_atoms = decompose_rows(
            atoms_only, atoms_only, max_terms, exclude_self=True, n_candidates=n_candidates
        )
    else:  # a lone atom has nothing to be decomposed into
        decs_atoms = [Decomposition((), np.zeros(0), 0.0, -1.0)]
    decs_sums = (
        decompose_rows(data.directions[data.n_atoms :], atoms_only, max_terms, n_candidates=n_candidates)
        if is_sum.any()
        else []
    )
    for f, dec in enumerate(decs_atoms + decs_sums):
        gt_rows.append(
            {
                "feature": f,
                "kind": kinds[f],
                "is_sum": bool(is_sum[f]),
                "predicted": is_combination(dec, fit_tol, margin, min_share),
                "fit_cos": dec.cos,
                "single_cos": dec.single_cos,
                "support": dec.support,
            }
        )
    directions = pd.DataFrame(gt_rows)
    d_precision, d_recall = precision_recall(
        directions["predicted"].to_numpy(bool), directions["is_sum"].to_numpy(bool)
    )
    return SumDetection(latents, directions, precision, recall, d_precision, d_recall)
