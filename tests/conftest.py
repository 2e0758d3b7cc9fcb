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
