"""Where the project reads and writes: the one definition of each location.

- ``CACHE``: downloaded models and text, activation caches, trained SAEs (git-ignored).
- ``FIGURES`` and ``RESULTS``: where notebooks and benchmarks *write* figures and result tables;
  the project's ``figures/`` and ``results/`` unless ``SAE_STUDY_OUTPUT`` names another root (the
  test target of the Makefile points it at a temporary folder, so validating the notebooks leaves
  the committed files untouched).
- ``COMMITTED_RESULTS``: the project's own ``results/``, for reading committed inputs (e.g. the
  benchmark table that notebook 04 plots) wherever the outputs go.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # lib/core/paths.py -> the repository
OUTPUT_VAR = "SAE_STUDY_OUTPUT"
OUTPUT_ROOT = Path(os.environ[OUTPUT_VAR]) if os.environ.get(OUTPUT_VAR) else ROOT
CACHE = ROOT / "cache"
FIGURES = OUTPUT_ROOT / "figures"
RESULTS = OUTPUT_ROOT / "results"
COMMITTED_RESULTS = ROOT / "results"
