"""Your own activations from a file: ``.npy``, ``.pt``, ``.safetensors`` or a Hugging Face ``datasets`` folder.

    x = load_activations("acts.npy")         # [N, d] float32

Each holds one ``[N, d]`` array: a ``.pt`` file a tensor (or a dict with one), a ``.safetensors``
file one tensor (or one named ``acts`` / ``activations``), a ``datasets`` folder
(``Dataset.save_to_disk``) one column of length-d lists (or one named ``acts`` / ``activations``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

SUFFIXES = (".npy", ".pt", ".safetensors")
NAMES = ("acts", "activations")  # the key or column read when a file holds several


def is_activations_file(path: str | Path) -> bool:
    """Whether ``path`` is one of the formats :func:`load_activations` reads (by name, not content)."""
    path = Path(path)
    if path.is_dir():
        return (path / "dataset_info.json").is_file()
    return path.suffix in SUFFIXES and path.is_file()


def _one(what: str, items: dict) -> object:
    if len(items) == 1:
        return next(iter(items.values()))
    for name in NAMES:
        if name in items:
            return items[name]
    raise ValueError(f"{what} holds {sorted(items)}: keep one array, or name it one of {NAMES}")


def load_activations(path: str | Path) -> Tensor:
    """The ``[N, d]`` activations in ``path`` as float32 on the CPU.

    Raises:
        ValueError: an unknown format, several arrays without one named ``acts`` / ``activations``,
            not two dimensions, fewer than 2 rows, or non-finite values.
    """
    path = Path(path)
    if path.is_dir() and (path / "dataset_info.json").is_file():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            raise ValueError(f"{path} is a DatasetDict with splits {list(ds)}: save the one split to train on")
        column = _one(f"dataset {path}", {c: c for c in ds.column_names})
        x = torch.as_tensor(np.asarray(ds.with_format("numpy")[column]))
    elif path.suffix == ".npy":
        x = torch.from_numpy(np.load(path, allow_pickle=False))
    elif path.suffix == ".pt":
        obj = torch.load(path, map_location="cpu", weights_only=True)
        x = _one(str(path), obj) if isinstance(obj, dict) else obj
        if not isinstance(x, Tensor):
            raise ValueError(f"{path} holds a {type(x).__name__}, not a tensor")
    elif path.suffix == ".safetensors":
        import safetensors.torch

        x = _one(str(path), safetensors.torch.load_file(str(path)))
    else:
        raise ValueError(
            f"{path}: activations must be a {', '.join(SUFFIXES)} file or a Hugging Face datasets folder "
            "(Dataset.save_to_disk)"
        )
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{path} must hold activations [N >= 2, d], got shape {tuple(x.shape)}")
    x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{path} holds NaN or inf values")
    return x
