"""Save and load our :class:`lib.sae.SAE` in the SAELens on-disk format.

A folder holds ``cfg.json`` and ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``,
``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``), loadable with
``sae_lens.SAE.load_from_disk(folder)`` (format of SAELens 6.x: ``architecture`` "standard" for
our ReLU SAE, "topk" with ``k``; ``apply_b_dec_to_input`` true and no activation normalisation, so
SAELens computes exactly our ``encode`` and ``decode``).

SAEs trained on scaled inputs ``x_train = s * x`` are saved with ``s`` folded into the weights, so
the saved SAE works on raw activations: with ``W_enc' = s W_enc``, ``b_dec' = b_dec / s``,
``W_dec' = W_dec / s`` and ``b_enc`` unchanged,
``encode'(x) = act((x - b_dec / s) s W_enc + b_enc) = encode(s x)`` (same codes) and
``decode'(c) = (c W_dec + b_dec) / s`` (the reconstruction in raw units). Decoder rows then have
norm ``1 / s`` instead of 1.

This module does not import sae_lens (a slow import); the tests load our folders with it.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import secrets
import shutil
from pathlib import Path

import safetensors.torch
import torch

from lib.sae import SAE, SAEConfig

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# Our kind <-> SAELens architecture.
ARCHITECTURES = {"relu": "standard", "topk": "topk"}
# SAELens treats a config without a >= 6 version as a pre-6.0 config and rewrites it.
SAE_LENS_FORMAT_VERSION = "6.54.12"


def _sae_lens_version() -> str:
    try:
        return importlib.metadata.version("sae_lens")
    except importlib.metadata.PackageNotFoundError:
        return SAE_LENS_FORMAT_VERSION


def save_sae_lens(
    sae: SAE, folder: str | Path, input_scale: float = 1.0, metadata: dict | None = None
) -> Path:
    """Write ``sae`` as a SAELens folder; returns the folder.

    Args:
        sae: a single (not stacked) SAE.
        folder: destination; replaced atomically if it exists (written to a temporary sibling,
            then renamed).
        input_scale: ``s`` if the SAE was trained on ``s * x``; folded into the weights.
        metadata: SAELens metadata to record, e.g. ``model_name``, ``hook_name``
            (``"blocks.{layer}.hook_resid_post"``), ``context_size``, ``dataset_path``; must be
            JSON-serialisable. ``input_scale`` is recorded as ``input_scale_folded``.
    """
    if sae.stacked:
        raise ValueError(
            f"sae is a stack of {sae.cfg.n_models} models; select one first (sae.select(i))"
        )
    ok_type = isinstance(input_scale, (int, float)) and not isinstance(input_scale, bool)
    if not ok_type or not math.isfinite(input_scale) or input_scale <= 0:
        raise ValueError(f"input_scale must be a finite number > 0, got {input_scale!r}")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    s = float(input_scale)
    with torch.no_grad():
        weights = {
            "W_enc": sae.W_enc.detach() * s,
            "b_enc": sae.b_enc.detach().clone(),
            "W_dec": sae.W_dec.detach() / s,
            "b_dec": sae.b_dec.detach() / s,
        }
    weights = {k: v.cpu().contiguous() for k, v in weights.items()}
    dtype = str(sae.W_enc.dtype).removeprefix("torch.")
    version = _sae_lens_version()
    meta = {"sae_lens_version": version, "sae_lens_training_version": version, **(metadata or {})}
    meta["input_scale_folded"] = s
    cfg = {
        "architecture": ARCHITECTURES[sae.cfg.kind],
        "d_in": sae.cfg.d,
        "d_sae": sae.cfg.n_latents,
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": meta,
    }
    if sae.cfg.kind == "topk":
        cfg |= {"k": sae.cfg.k, "rescale_acts_by_decoder_norm": False}
    try:
        text = json.dumps(cfg, indent=1)
    except TypeError as e:
        raise ValueError(f"metadata must be JSON-serialisable: {e}") from e

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        tmp.mkdir()
        safetensors.torch.save_file(weights, str(tmp / WEIGHTS_FILE))
        (tmp / CFG_FILE).write_text(text)
        if folder.exists():  # rename cannot replace a non-empty folder: move it aside first
            old = folder.with_name(f"{folder.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_sae_lens(folder: str | Path) -> tuple[SAE, dict]:
    """Load a SAELens folder of architecture "standard" or "topk" as our SAE.

    Returns:
        ``(sae, cfg)``: the SAE in the units of the saved weights (raw activations when saved by
        :func:`save_sae_lens`), float32, and the cfg.json dict.

    Raises:
        FileNotFoundError: a missing file. ValueError: an unknown architecture, an unsupported
        option, or tensors with wrong names or shapes.
    """
    folder = Path(folder)
    for name in (CFG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing (a SAELens folder holds {CFG_FILE} and {WEIGHTS_FILE})")
    cfg = json.loads((folder / CFG_FILE).read_text())
    arch = cfg.get("architecture")
    kinds = {v: k for k, v in ARCHITECTURES.items()}
    if arch not in kinds:
        raise ValueError(f"{folder / CFG_FILE}: architecture must be one of {tuple(kinds)}, got {arch!r}")
    for key, ok in (("normalize_activations", "none"), ("reshape_activations", "none")):
        if cfg.get(key, "none") != ok:
            raise ValueError(f"{folder / CFG_FILE}: {key}={cfg[key]!r} is not supported (only {ok!r})")
    if cfg.get("rescale_acts_by_decoder_norm", False):
        raise ValueError(f"{folder / CFG_FILE}: rescale_acts_by_decoder_norm=true is not supported")
    try:
        d, n = int(cfg["d_in"]), int(cfg["d_sae"])
        k = int(cfg["k"]) if arch == "topk" else None
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{folder / CFG_FILE}: needs integer d_in, d_sae (and k for topk): {e!r}") from e

    weights = safetensors.torch.load_file(str(folder / WEIGHTS_FILE))
    shapes = {"W_enc": (d, n), "b_enc": (n,), "W_dec": (n, d), "b_dec": (d,)}
    if set(weights) != set(shapes):
        raise ValueError(f"{folder / WEIGHTS_FILE}: tensors must be exactly {sorted(shapes)}, got {sorted(weights)}")
    for name, shape in shapes.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(
                f"{folder / WEIGHTS_FILE}: {name} must have shape {list(shape)} (d_in={d}, d_sae={n}), "
                f"got {list(weights[name].shape)}"
            )
    w = {key: t.to(torch.float32) for key, t in weights.items()}
    if not cfg.get("apply_b_dec_to_input", True):
        # SAELens encodes x @ W_enc + b_enc; ours subtracts b_dec first, so add it back into b_enc
        w["b_enc"] = w["b_enc"] + w["b_dec"] @ w["W_enc"]
    sae = SAE(SAEConfig(d, n, kinds[arch], k), generator=torch.Generator())  # init overwritten
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(w[name])
    return sae, cfg
