"""The single setup function every notebook and script calls first."""

from __future__ import annotations

import os
import random
import warnings

import numpy as np
import torch

from sae_ortho.core import numerics
from sae_ortho.core.validation import check_int


class NumericsWarning(RuntimeWarning):
    """The CPU numerics are not the pinned ones (see :mod:`sae_ortho.core.numerics`)."""


def check_numerics(threads: int | None = None) -> list[str]:
    """Warn loudly (or raise, with ``SAE_STUDY_STRICT_NUMERICS=1``) when the CPU numerics are not
    pinned; returns the list of problems ([] when pinned). ``threads``: the run's thread count
    (see :func:`sae_ortho.core.numerics.problems`)."""
    issues = numerics.problems(threads)
    if issues:
        if numerics.strict():
            raise RuntimeError(
                "CPU numerics are not pinned, so results can differ from the committed ones in the last bits "
                "and training runs drift apart:\n  - " + "\n  - ".join(issues) + "\nRun through the Makefile "
                "(make study / make test), or start Python with the variables of `python -m sae_ortho.core.numerics --env`."
            )
        # a library user running unpinned gets one line, once per process
        global _warned
        if not _warned:
            _warned = True
            warnings.warn(
                f"CPU numerics not pinned ({issues[0]}; {len(issues)} in all: `python -m sae_ortho.core.numerics --check`): "
                "results agree with the committed ones statistically, not to the bit",
                NumericsWarning, stacklevel=3,
            )
    return issues


_warned = False


def setup(seed: int = 0, threads: int = 2) -> torch.Generator:
    """Fix every seed and the thread count so the same parameters give the same numbers.

    torch CPU results are bit-identical only for the same thread count and the same kernels, so
    the thread count is part of the reproducibility contract, and the kernels are pinned by
    :mod:`sae_ortho.core.numerics` (checked here: a loud warning, or an error in strict mode, when they are not).

    Args:
        seed: seed for python, numpy and torch (global generators).
        threads: intra-op threads for torch.

    Returns:
        A fresh ``torch.Generator`` seeded with ``seed``, for code that wants its own stream.

    Raises:
        TypeError: a seed or thread count that is not an int (``True`` is not a seed).
        ValueError: a negative seed or fewer than one thread.
    """
    seed = check_int("seed", seed, 0)
    threads = check_int("threads", threads, 1)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    check_numerics(threads)
    return torch.Generator().manual_seed(seed)
