"""Trained SAEs on disk: train once per configuration, reload afterwards.

:func:`train_or_load` keys a run by everything that determines it (SAE and training
configuration, the data's key, the seed and the input scale). A finished run is a folder in the
SAELens on-disk format (``sae/cfg.json`` + ``sae/sae_weights.safetensors``, the input scale folded
into the weights so the SAE works on raw activations) plus ``history.json``; an unfinished one holds
the trainer's checkpoint and resumes from it. Both are written to a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lib.sae import SAE, SAEConfig
from lib.saelens_io import load_sae_lens, save_sae_lens
from lib.train import TrainConfig, train


def run_key(name: str, sae_cfg: SAEConfig, cfg: TrainConfig, data_key: str, seed: int, scale: float) -> str:
    """Folder name of a run: ``name`` and a short hash of everything that determines it."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"name must be a plain non-empty folder name, got {name!r}")
    blob = json.dumps(
        {"fingerprint": cfg.fingerprint(SAE(sae_cfg, torch.Generator())), "data": data_key, "seed": seed, "scale": scale},
        sort_keys=True,
    )
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def train_or_load(
    name: str,
    sae_cfg: SAEConfig,
    cfg: TrainConfig,
    sample: Callable[[int], Tensor],
    data_key: str,
    root: str | Path,
    seed: int = 0,
    scale: float = 1.0,
    metadata: dict | None = None,
    progress: bool = True,
) -> tuple[SAE, dict[str, np.ndarray]]:
    """Train a single SAE on ``scale * x`` (or load the finished run) and return it in raw units.

    Args:
        name: readable prefix of the run folder.
        sample: ``batch -> [batch, d]`` raw-unit inputs drawn with the global torch generator.
        data_key: identifies the training data (e.g. the activation cache key).
        seed: seeds the decoder initialisation and the data stream.
        scale: inputs are multiplied by it in training (e.g. :func:`lib.activations.norm_scale`).
        metadata: stored in the SAELens ``cfg.json`` (model, hook, dataset ...).

    Returns:
        The SAE with the scale folded in, and its training history (name -> array).
    """
    if sae_cfg.n_models is not None:
        raise ValueError("train_or_load trains a single SAE; got n_models set")
    if not (isinstance(scale, (int, float)) and np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    folder = Path(root) / run_key(name, sae_cfg, cfg, data_key, seed, scale)
    done = folder / "history.json"
    if not done.exists():
        torch.manual_seed(seed)  # the data stream of this run depends on its seed only
        sae = SAE(sae_cfg, generator=torch.Generator().manual_seed(seed))
        result = train(sae, lambda b: sample(b) * scale, cfg, checkpoint_dir=folder, progress=progress, desc=name)
        save_sae_lens(sae, folder / "sae", input_scale=scale, metadata=metadata)
        history = {k: np.asarray(v).tolist() for k, v in result.history.items()}
        tmp = done.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(history))
        os.replace(tmp, done)  # written last: its presence marks a finished run
        (folder / "checkpoint.pt").unlink(missing_ok=True)
    sae, _ = load_sae_lens(folder / "sae")
    history = {k: np.asarray(v) for k, v in json.loads(done.read_text()).items()}
    return sae, history
