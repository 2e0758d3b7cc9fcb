"""Absorption, leaning and parent/child compositions on constructed cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sae_ortho.analysis import hierarchy_readout as hr

# Features 0 (parent) -> 1, 2 (children), 3 -> 4, 5; feature 6 has no relatives.
PARENTS = {0: [1, 2], 3: [4, 5]}


def _features(d: int = 16) -> torch.Tensor:
    return torch.eye(d)[:7]  # orthonormal: cos(child, parent) = 0


def test_ancestors():
    assert hr.ancestors({0: [1, 2], 1: [3]}) == {1: {0}, 2: {0}, 3: {1, 0}}


def _acts(n: int, child: np.ndarray) -> torch.Tensor:
    """Parent 0 fires in every sample; child 1 fires where ``child`` is True; parent 3 never."""
    acts = torch.zeros(n, 7)
    acts[:, 0] = 1.0
    acts[torch.as_tensor(child), 1] = 1.0
    return acts


def test_absorption_of_a_parent_latent_suppressed_when_a_child_fires():
    F = _features()
    W = F.clone()  # latent i is exactly feature i
    child = np.arange(200) % 2 == 0
    acts = _acts(200, child)
    codes = acts.clone()
    codes[torch.as_tensor(child), 0] = 0.0  # the parent latent is silent whenever the child fires
    rep = hr.absorption(W, F, PARENTS, [(acts, codes)])
    i = list(rep.parent).index(0)
    assert rep.recall_alone[i] == 1.0 and rep.recall_with_child[i] == 0.0
    assert rep.absorption[i] == 1.0
    assert math.isnan(rep.absorption[list(rep.parent).index(3)])  # parent 3 never fires: undefined
    assert rep.mean_absorption() == 1.0 and rep.scored == 1


def test_no_absorption_when_the_parent_latent_always_fires():
    F = _features()
    child = np.arange(200) % 2 == 0
    acts = _acts(200, child)
    rep = hr.absorption(F.clone(), F, PARENTS, [(acts[:100], acts[:100]), (acts[100:], acts[100:])])
    assert rep.absorption[list(rep.parent).index(0)] == 0.0
    assert rep.absorbed_fraction() == 0.0


def test_partial_absorption_and_min_samples():
    F = _features()
    child = np.arange(400) % 2 == 0
    acts = _acts(400, child)
    codes = acts.clone()
    off = torch.as_tensor(np.flatnonzero(child)[:50])  # silent in 50 of the 200 child samples
    codes[off, 0] = 0.0
    rep = hr.absorption(F.clone(), F, PARENTS, [(acts, codes)])
    assert rep.absorption[list(rep.parent).index(0)] == pytest.approx(0.25)
    rep = hr.absorption(F.clone(), F, PARENTS, [(acts, codes)], min_samples=1000)
    assert rep.scored == 0 and math.isnan(rep.mean_absorption())


def test_unmatched_parent_is_not_scored():
    F = _features()
    W = F.clone()
    W[0] = torch.ones(16)  # no latent is close to feature 0 any more
    acts = _acts(100, np.arange(100) % 2 == 0)
    rep = hr.absorption(W, F, PARENTS, [(acts, acts)])
    assert rep.match_cos[list(rep.parent).index(0)] < 0.5
    assert rep.scored == 0 and rep.matched_fraction == 0.5


def test_lean_exact_parent_latent_is_zero_and_parent_plus_child_leans():
    F = _features()
    W = F.clone()
    assert hr.lean(W, F, PARENTS).child_on_parent == pytest.approx(0.0)
    W[1] = torch.nn.functional.normalize(F[1] + 0.5 * F[0], dim=0)  # child 1's latent absorbed its parent
    rep = hr.lean(W, F, PARENTS)
    want = 0.5 / math.sqrt(1.25) / 4  # one of the four edges leans by cos = 0.5 / |(1, 0.5)|
    assert rep.child_on_parent == pytest.approx(want)
    assert rep.parent_on_child == pytest.approx(0.0)
    assert rep.control == pytest.approx(0.0, abs=1e-12)
    assert rep.n_edges == 4


def test_compositions_classify_parent_child_unrelated_and_atoms():
    F = _features()
    W = torch.zeros(5, 16)
    W[0] = F[0]  # exactly the parent: an atom
    W[1] = torch.nn.functional.normalize(F[0] + F[1], dim=0)  # parent + child
    W[2] = torch.nn.functional.normalize(F[3] + F[5], dim=0)  # parent + child of the other tree
    W[3] = torch.nn.functional.normalize(F[1] + F[6], dim=0)  # unrelated pair
    W[4] = torch.nn.functional.normalize(torch.ones(16), dim=0)  # nothing
    c = hr.compositions(W, F, PARENTS)
    assert (c.atoms, c.parent_child, c.unrelated, c.other, c.n_latents) == (1, 2, 1, 1, 5)
    assert c.fraction("parent_child") == 0.4


def test_absorption_needs_a_hierarchy():
    with pytest.raises(ValueError, match="parents"):
        hr.AbsorptionCounter(torch.eye(3), torch.eye(3), {})
