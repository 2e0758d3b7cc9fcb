"""The trainer's checkpoint file: a versioned, hash-checked container for a training state.

A checkpoint is one file::

    sae_ortho.training.checkpoint\\n                                 magic line
    {"version": 2, "sha256": "...", "bytes": N}\\n    JSON header
    <N bytes>                                        the state, serialised by torch.save

:func:`load_checkpoint` checks the magic line, the format version, the payload's length and its
sha256 *before* anything is unpickled, then unpickles with ``torch.load(weights_only=True)``
(tensors, numbers, strings and containers only: no code runs from the file). A file that fails
any check raises :class:`CheckpointError` naming the file and what to do. numpy arrays in the
state (the training history) are stored as tensors and come back as the same arrays.

:func:`save_checkpoint` writes to a temporary file in the same folder, flushes it to disk and
renames it over the old checkpoint, so an interrupted or failed write (a kill, a full disk) leaves
the previous checkpoint intact and no partial file that is later trusted. The temporary file has a
unique name of this module's own pattern (``<name>.lib-tmp-<pid>-<random>``) and is created
exclusively, so no file a user owns is ever overwritten or deleted; one left by a killed writer is
removed by the next successful write. With ``finite``, a state whose tensors hold NaN or inf is
refused before anything is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_ortho.core.atomic import TMP_MARK, temp_path

MAGIC = b"sae_ortho.training.checkpoint\n"
FORMAT_VERSION = 2
_ARRAY = "__numpy_array__"
_TMP = TMP_MARK  # temporary files: <name>.lib-tmp-<pid>-<random hex> (sae_ortho.core.atomic)


class CheckpointError(ValueError):
    """A checkpoint file that is damaged, truncated, of another format or of another version."""


def _pack(obj: Any) -> Any:
    """numpy arrays -> tagged tensors (torch.load(weights_only=True) refuses numpy objects)."""
    if isinstance(obj, np.ndarray):
        return {_ARRAY: torch.from_numpy(np.array(obj, copy=True))}
    if isinstance(obj, dict):
        return {k: _pack(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_pack(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_pack(v) for v in obj)
    return obj


def _unpack(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY}:
            return obj[_ARRAY].numpy()
        return {k: _unpack(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_unpack(v) for v in obj)
    return obj


def _tensors(obj: Any, where: str) -> Iterator[tuple[str, torch.Tensor | np.ndarray]]:
    """Every tensor and numpy array inside ``obj`` (dicts, lists, tuples), with its path."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        yield where, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{where}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{where}/{i}")


def check_finite(path: str | Path, state: dict, keys: Sequence[str]) -> None:
    """Refuse to write a checkpoint whose floating tensors under ``state[key]`` (for each of
    ``keys`` present) hold NaN or inf.

    Raises:
        FloatingPointError: naming the checkpoint and the first non-finite tensor.
    """
    for key in keys:
        for where, t in _tensors(state.get(key), key):
            t = torch.as_tensor(t)
            if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
                raise FloatingPointError(
                    f"not writing the checkpoint {path}: {where} contains non-finite values (NaN or inf); "
                    "the previous checkpoint is kept"
                )


def _remove_stale_temporaries(path: Path) -> None:
    """Remove temporary files of ``path`` left by writers that were killed (their process is gone)."""
    for tmp in path.parent.glob(f"{path.name}{_TMP}*"):
        try:
            pid = int(tmp.name[len(path.name) + len(_TMP) :].split("-")[0])
            os.kill(pid, 0)  # raises ProcessLookupError when no such process runs
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, OSError):  # not of our pattern, or a process of another user: leave it
            continue


def save_checkpoint(path: str | Path, state: dict, finite: Sequence[str] = ()) -> None:
    """Write ``state`` (tensors, numbers, strings, numpy arrays, containers) to ``path`` atomically.

    Args:
        finite: keys of ``state`` (e.g. ``"model"``) whose tensors must all be finite, checked
            before anything is written.

    Raises:
        FloatingPointError: a tensor under ``finite`` holds NaN or inf; nothing is written.
        OSError: the file could not be written (e.g. no space left); the message names it, the
            previous checkpoint (if any) is kept and no temporary file is left behind.
    """
    path = Path(path)
    check_finite(path, state, finite)
    buf = io.BytesIO()
    torch.save(_pack(state), buf)
    payload = buf.getvalue()
    header = json.dumps({"version": FORMAT_VERSION, "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)})
    # A name of our own pattern, created exclusively ("x"): never a file the user owns.
    tmp = temp_path(path)
    created = False
    try:
        with open(tmp, "xb") as f:
            created = True
            f.write(MAGIC)
            f.write(header.encode() + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if created:
            tmp.unlink(missing_ok=True)
        raise OSError(
            e.errno, f"could not write the checkpoint {path} ({e.strerror or e}); the previous checkpoint is kept"
        ) from e
    except BaseException:
        if created:
            tmp.unlink(missing_ok=True)
        raise
    _remove_stale_temporaries(path)


def load_checkpoint(path: str | Path) -> dict:
    """The state saved by :func:`save_checkpoint`, after checking the file is complete and intact.

    Raises:
        CheckpointError: not a checkpoint of this format, another format version, truncated, or
            its content does not hash to the recorded sha256 (the message names the file).
        OSError: the file cannot be read.
    """
    path = Path(path)
    hint = "delete it to start the run afresh, or pass another checkpoint folder"
    with open(path, "rb") as f:
        magic = f.read(len(MAGIC))
        if magic != MAGIC:
            old = " (it looks like a checkpoint of an older version of this library)" if magic.startswith(b"PK") else ""
            raise CheckpointError(f"{path} is not a checkpoint written by sae_ortho.training.checkpoint{old}; {hint}")
        line = f.readline(4096)
        try:
            header = json.loads(line)
            version, digest, size = header["version"], header["sha256"], int(header["bytes"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path} has a damaged header ({e}); {hint}") from e
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{path} has format version {version!r}; this library reads version {FORMAT_VERSION}; {hint}")
        payload = f.read(size + 1)
    if len(payload) != size:
        raise CheckpointError(f"{path} is truncated ({len(payload)} of {size} bytes; an interrupted copy?); {hint}")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"{path} is corrupted (its content does not match the recorded sha256); {hint}")
    try:
        state = torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as e:  # intact bytes that still do not unpickle: a foreign or hand-made payload
        raise CheckpointError(f"{path} holds a state that cannot be loaded safely ({type(e).__name__}: {e}); {hint}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a training state; {hint}")
    return _unpack(state)
