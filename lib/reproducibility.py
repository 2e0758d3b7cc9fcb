"""The single setup function every notebook and script calls first."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def setup(seed: int = 0, threads: int = 2) -> torch.Generator:
    """Fix every seed and the thread count so the same parameters give the same numbers.

    torch CPU results are bit-identical only for the same thread count and instruction set,
    so the thread count is part of the reproducibility contract.

    Args:
        seed: seed for python, numpy and torch (global generators).
        threads: intra-op threads for torch.

    Returns:
        A fresh ``torch.Generator`` seeded with ``seed``, for code that wants its own stream.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)
