"""Shared test settings.

Tests run torch with ONE intra-op thread (``setup(seed, threads=1)`` in the tests, and this
fixture for tests that never call ``setup``): the workloads here are tiny tensors, and on the 2-core
machine OpenMP with 2 threads slows small ops down by an order of magnitude whenever another
process is busy on the other core. Bitwise-reproducibility checks compare runs made with the same
thread count, so they are unaffected.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings

# Property-based tests (tests/test_fuzz.py): reproducible in CI (derandomize: the same examples on
# every run), no example database written into the checkout, no deadline (the machine is shared,
# so wall-clock limits would flake), few examples per test to keep the suite fast.
settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# A longer, random search for local use: pytest tests/test_fuzz.py --hypothesis-profile=thorough
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=500, derandomize=False)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny randomly initialised GPT-NeoX saved with save_pretrained and loaded through sae_ortho.data.lm."""
    from sae_ortho.data import lm  # imported here: most test modules never need transformers
    from tests.helpers import tiny_gpt_neox

    folder = tiny_gpt_neox(tmp_path_factory.mktemp("tiny-neox"), n_layers=3, d_model=32)
    return lm.load_model(str(folder), fallback=False)


@pytest.fixture(scope="module")
def tokens(tiny) -> torch.Tensor:
    """[3, 12] random token ids of the tiny model's vocabulary."""
    return torch.randint(0, len(tiny.tokenizer), (3, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _private_store(request, tmp_path_factory, monkeypatch):
    """Tests train into a private store, never into the committed one (results/saes), and see the
    store modes unset; tests marked ``real_store`` read the committed store."""
    from sae_ortho.experiments import store

    monkeypatch.delenv(store.PERTURB_VAR, raising=False)
    if request.node.get_closest_marker("real_store"):
        return
    monkeypatch.delenv(store.MODE_VAR, raising=False)
    root = tmp_path_factory.mktemp("store")
    monkeypatch.setattr(store, "STORE", root / "saes")
    monkeypatch.setattr(store, "WORK", root / "work")
    monkeypatch.setattr(store, "REPORT", root / "report.jsonl")
