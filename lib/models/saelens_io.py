"""Save and load our :class:`sae_ortho.models.sae.SAE` in the SAELens on-disk format.

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

Writing never deletes or overwrites what it did not write: the files go into a fresh temporary
folder first, then only ``cfg.json`` and ``sae_weights.safetensors`` are moved into the destination
(other files there are left alone; an SAE folder not written by :func:`save_sae_lens` is refused).
``cfg.json`` records the sha256 of the weights file (``metadata.weights_sha256``), so
:func:`load_sae_lens` refuses damaged weights, or weights and config of two different saves.
Loading reads ``cfg.json`` by type (booleans must be JSON ``true`` / ``false``, sizes JSON
integers: a string ``"false"`` or a ``4.7`` is refused, naming the file and the field) and refuses
weights with NaN or inf, naming the tensor.

This module does not import sae_lens (a slow import); the tests load our folders with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from sae_ortho.core.validation import (
    canonical,
    check_float,
    check_instance,
    check_output_dir,
    check_str,
    is_int,
)
from sae_ortho.models.sae import SAE, SAEConfig

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
    sae: SAE,
    folder: str | Path,
    *,
    hook_name: str,
    input_scale: float = 1.0,
    metadata: dict | None = None,
    training: Any = None,
) -> Path:
    """Write ``sae`` as a SAELens folder; returns the folder.

    Args:
        sae: a single (not stacked) SAE.
        folder: destination folder, created if missing. If it exists, only the two SAELens files
            are replaced (each atomically, weights first); other files in it are kept. An
            existing ``cfg.json`` that :func:`save_sae_lens` did not write is refused.
        hook_name: where the inputs came from, the hook SAELens attaches the SAE to
            (``"blocks.{layer}.hook_resid_post"``); required, a non-empty string (SAELens skips an SAE
            without one: "No hook found for None"). For data that no model produced, name it
            (e.g. ``"toy"``): SAELens loads such an SAE but cannot attach it to a model.
        input_scale: ``s`` if the SAE was trained on ``s * x``; folded into the weights.
        metadata: further SAELens metadata, e.g. ``model_name``, ``context_size``,
            ``dataset_path``; must be JSON-serialisable. A ``hook_name`` in it must equal the
            argument. ``input_scale`` is recorded as ``input_scale_folded``.
        training: the training hyperparameters (e.g. the
            :class:`~sae_ortho.training.train.TrainConfig`, or a dict), recorded as
            ``metadata["training_config"]`` so the file says how the SAE was made.

    Raises:
        ValueError: a stacked SAE, a bad scale, hook name or metadata, ``folder`` is a file or
            holds an SAE this function did not write (nothing is written then).
        OSError: a write failed (e.g. a full disk); no temporary folder is left behind and an
            existing save in ``folder`` is unchanged unless the failure came between the two renames
            (then ``load_sae_lens`` refuses the mixed folder by its weights hash).
    """
    check_instance("sae", sae, SAE)
    if sae.stacked:
        raise ValueError(
            f"sae is a stack of {sae.cfg.n_models} models; select one first (sae.select(i))"
        )
    s = check_float("input_scale", input_scale, 0.0, low_open=True)
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    if training is not None and not (isinstance(training, dict) or dataclasses.is_dataclass(training)):
        raise ValueError(f"training must be a config dataclass, a dict or None, got {type(training).__name__}")
    metadata = {**(metadata or {}), "hook_name": _check_hook(hook_name, metadata or {})}
    if training is not None:
        metadata["training_config"] = canonical(training)
    folder = check_save_folder(folder)
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
    blob = safetensors.torch.save(weights)
    meta = {"sae_lens_version": version, "sae_lens_training_version": version, **metadata}
    meta["input_scale_folded"] = s
    meta["weights_sha256"] = hashlib.sha256(blob).hexdigest()
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

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        tmp.mkdir()
        for name, data in ((WEIGHTS_FILE, blob), (CFG_FILE, text.encode())):
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if folder.exists():  # move only our own files in; whatever else is there stays
            for name in (WEIGHTS_FILE, CFG_FILE):  # cfg last: it names the weights' hash
                os.replace(tmp / name, folder / name)
            tmp.rmdir()
        else:
            os.replace(tmp, folder)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(e.errno, f"could not write the SAE to {folder} ({e.strerror or e}); nothing was replaced") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _check_hook(hook_name, metadata: dict) -> str:
    """SAELens attaches an SAE at ``hook_name``: a non-empty string, the same as the metadata's."""
    try:
        check_str("hook_name", hook_name)
    except ValueError as e:
        raise ValueError(f"{e} (the hook SAELens attaches the SAE to, e.g. 'blocks.3.hook_resid_post')") from None
    if "hook_name" in metadata and metadata["hook_name"] != hook_name:
        raise ValueError(
            f"metadata['hook_name']={metadata['hook_name']!r} differs from hook_name={hook_name!r}; give it once"
        )
    return hook_name


def check_save_folder(folder: str | Path) -> Path:
    """The destination of :func:`save_sae_lens`, checked before any work (e.g. before training).

    Raises:
        ValueError: ``folder`` is a file, lies under a file, or holds an SAE (or a file or folder
            named like one of the SAELens files) that :func:`save_sae_lens` did not write.
        PermissionError: the folder cannot be written.
    """
    folder = check_output_dir("folder", folder)
    _check_replaceable(folder)
    return folder


def _check_replaceable(folder: Path) -> None:
    """An existing SAELens file in ``folder`` may only be replaced if :func:`save_sae_lens` wrote it."""
    cfg_file, w_file = folder / CFG_FILE, folder / WEIGHTS_FILE
    for f in (cfg_file, w_file):
        if f.exists() and not f.is_file():
            raise ValueError(f"folder {folder} holds a folder named {f.name}; move it away or pass another folder")
    if not cfg_file.exists():
        if w_file.exists():
            raise ValueError(
                f"folder {folder} holds a {WEIGHTS_FILE} without {CFG_FILE}, not written by save_sae_lens; "
                "it is not replaced: move it away or pass another folder"
            )
        return
    try:
        ours = "input_scale_folded" in json.loads(cfg_file.read_text()).get("metadata", {})
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise ValueError(
            f"folder {folder} holds an SAE ({CFG_FILE}) that save_sae_lens did not write; it is not "
            "replaced: move it away or pass another folder"
        )


_MISSING = object()
# What a cfg.json field must hold, by kind: (test, description).
_JSON_KINDS = {
    "bool": (lambda v: isinstance(v, bool), "a JSON boolean (true or false)"),
    "size": (lambda v: is_int(v) and v >= 1, "a JSON integer >= 1"),
}


def _cfg_field(cfg: dict, key: str, kind: str, file: Path, default=_MISSING):
    """``cfg[key]`` (or ``default`` when absent), which must be of ``kind`` (``_JSON_KINDS``): a
    string ``"false"`` is not a boolean and ``4.7`` is not a size. A wrong value is a damaged file,
    so a ValueError naming the file and the field."""
    if key not in cfg:
        if default is _MISSING:
            raise ValueError(f"{file}: the field {key} is missing")
        return default
    ok, what = _JSON_KINDS[kind]
    if not ok(cfg[key]):
        raise ValueError(f"{file}: {key} must be {what}, got {json.dumps(cfg[key])}")
    return cfg[key]


def load_sae_lens(folder: str | Path) -> tuple[SAE, dict]:
    """Load a SAELens folder of architecture "standard" or "topk" as our SAE.

    Returns:
        ``(sae, cfg)``: the SAE in the units of the saved weights (raw activations when saved by
        :func:`save_sae_lens`), float32, and the cfg.json dict.

    Raises:
        FileNotFoundError: a missing file. ValueError: a damaged ``cfg.json`` or weights file
        (unreadable, or not matching the weights hash recorded by :func:`save_sae_lens`), an
        unknown architecture, an unsupported option, a field of the wrong JSON type (a string
        ``"false"`` for a boolean, ``4.7`` for an integer; the message names the file and the
        field), or tensors with wrong names, shapes or dtypes, or with NaN or inf values.
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"folder must be a path (str or Path), got {type(folder).__name__}")
    folder = Path(folder)
    for name in (CFG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing (a SAELens folder holds {CFG_FILE} and {WEIGHTS_FILE})")
    try:
        cfg = json.loads((folder / CFG_FILE).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{folder / CFG_FILE} is not valid JSON ({e}); the file is damaged: save the SAE again") from e
    is_object = isinstance(cfg, dict) and isinstance(cfg.get("metadata", {}), dict)
    if not is_object:  # the file's content is wrong, not an argument's type: a ValueError
        raise ValueError(f"{folder / CFG_FILE} must hold a JSON object with a metadata object, got {type(cfg).__name__}")
    arch = cfg.get("architecture")
    kinds = {v: k for k, v in ARCHITECTURES.items()}
    if arch not in kinds:
        raise ValueError(f"{folder / CFG_FILE}: architecture must be one of {tuple(kinds)}, got {arch!r}")
    for key, ok in (("normalize_activations", "none"), ("reshape_activations", "none")):
        if cfg.get(key, "none") != ok:
            raise ValueError(f"{folder / CFG_FILE}: {key}={cfg[key]!r} is not supported (only {ok!r})")
    if _cfg_field(cfg, "rescale_acts_by_decoder_norm", "bool", folder / CFG_FILE, False):
        raise ValueError(f"{folder / CFG_FILE}: rescale_acts_by_decoder_norm=true is not supported")
    apply_b_dec = _cfg_field(cfg, "apply_b_dec_to_input", "bool", folder / CFG_FILE, True)
    d, n = (_cfg_field(cfg, key, "size", folder / CFG_FILE) for key in ("d_in", "d_sae"))
    k = _cfg_field(cfg, "k", "size", folder / CFG_FILE) if arch == "topk" else None
    try:
        sae_cfg = SAEConfig(d, n, kinds[arch], k)
    except ValueError as e:
        raise ValueError(f"{folder / CFG_FILE}: {e}") from e

    blob = (folder / WEIGHTS_FILE).read_bytes()
    want = cfg.get("metadata", {}).get("weights_sha256")
    if want is not None and hashlib.sha256(blob).hexdigest() != want:
        raise ValueError(
            f"{folder / WEIGHTS_FILE} does not match the sha256 recorded in {CFG_FILE} (damaged, or the "
            "files of two different saves, e.g. an interrupted save); save the SAE again"
        )
    try:
        weights = safetensors.torch.load(blob)
    except Exception as e:  # safetensors raises its own SafetensorError for any malformed file
        raise ValueError(f"{folder / WEIGHTS_FILE} is not a readable safetensors file ({e}); save the SAE again") from e
    shapes = {"W_enc": (d, n), "b_enc": (n,), "W_dec": (n, d), "b_dec": (d,)}
    if set(weights) != set(shapes):
        raise ValueError(f"{folder / WEIGHTS_FILE}: tensors must be exactly {sorted(shapes)}, got {sorted(weights)}")
    for name, shape in shapes.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(
                f"{folder / WEIGHTS_FILE}: {name} must have shape {list(shape)} (d_in={d}, d_sae={n}), "
                f"got {list(weights[name].shape)}"
            )
    for name, t in sorted(weights.items()):
        if not t.is_floating_point():
            raise ValueError(f"{folder / WEIGHTS_FILE}: tensor {name} must have a floating dtype, got {t.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(
                f"{folder / WEIGHTS_FILE}: tensor {name} contains non-finite values (NaN or inf); the SAE is "
                "unusable: save it again from a finite model"
            )
    w = {key: t.to(torch.float32) for key, t in weights.items()}
    if not apply_b_dec:
        # SAELens encodes x @ W_enc + b_enc; ours subtracts b_dec first, so add it back into b_enc
        w["b_enc"] = w["b_enc"] + w["b_dec"] @ w["W_enc"]
    sae = SAE(sae_cfg, generator=torch.Generator())  # init overwritten
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(w[name])
    return sae, cfg
