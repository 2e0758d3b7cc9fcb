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


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny randomly initialised GPT-NeoX saved with save_pretrained and loaded through lib.lm."""
    from lib import lm  # imported here: most test modules never need transformers

    folder = lm.tiny_gpt_neox(tmp_path_factory.mktemp("tiny-neox"), n_layers=3, d_model=32)
    return lm.load_model(str(folder), fallback=False)


@pytest.fixture(scope="module")
def tokens(tiny) -> torch.Tensor:
    """[3, 12] random token ids of the tiny model's vocabulary."""
    return torch.randint(0, len(tiny.tokenizer), (3, 12), generator=torch.Generator().manual_seed(0))
