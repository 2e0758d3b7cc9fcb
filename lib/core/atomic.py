"""The one atomic writer: every file the project writes appears complete or not at all.

A file is written under a temporary name next to its destination and renamed onto it only once it
is complete, so a kill, a full disk or an exception never leaves a half-written file that is later
trusted. The temporary name is unique and of this library's own pattern
(``<name>.lib-tmp-<pid>-<random hex>``) and is created exclusively, so no file a user owns is ever
overwritten or deleted; it is removed when the write fails.

- :func:`atomic_write`: text or bytes to a file.
- :func:`replacing`: a temporary path for writers that open the file themselves
  (``fig.savefig``, ``DataFrame.to_csv``, ``safetensors.torch.save_file``, ``torch.save``).

This module is the lowest layer: it imports nothing of the project.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_MARK = ".lib-tmp-"  # temporary files: <name>.lib-tmp-<pid>-<random hex>


def temp_path(path: Path, suffix: str = "") -> Path:
    """A fresh temporary name beside ``path`` (this process's id, a random part, then ``suffix``)."""
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{suffix}")


@contextmanager
def replacing(path: str | Path, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    Args:
        path: the destination; its folder is created if missing.
        suffix: appended to the temporary name, for writers that choose a format by extension
            (e.g. ``".png"`` for ``savefig``).

    On any exception inside the block the temporary file (if the writer created it) is removed and
    the destination is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: str | bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` through a temporary file and a rename.

    Args:
        fsync: flush the file to disk before the rename (checkpoints: survive a power loss).

    Returns:
        ``path``.
    """
    if not isinstance(data, (str, bytes)):
        raise TypeError(f"data must be str or bytes, got {type(data).__name__}")
    path = Path(path)
    # open(..., "xb") is exclusive: it fails rather than touch an existing file.
    with replacing(path) as tmp, open(tmp, "xb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return path
