"""On-disk cache of language-model activations (residual stream at one layer).

Harvesting activations is the expensive step of the LM notebooks, so each (model, layer, tokens)
combination is computed once and stored as

    <root>/<spec.key()>/meta.json
    <root>/<spec.key()>/acts_00000.safetensors   tensor "acts": [rows, d] in the cache dtype
    ...

Rows are tokens in order (sequence-major, position-minor). A cache is written into
``<root>/<key>.tmp-<pid>-<random>`` and renamed to its final name only once complete, so an
interrupted harvest never leaves a folder that is later trusted. Opening a cache checks that its
meta matches the requested spec exactly and that the shards hash to the recorded content hash: a
mismatch is an error naming the folder to delete, never a silent reuse.

This module does not load models: :func:`harvest` takes a ``forward`` callable
(``tokens [b, ctx] -> {layer: [b, ctx, d]}``) that the caller builds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import inspect
import json
import math
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import Tensor
from tqdm import tqdm

from sae_ortho.core.perturb import perturb
from sae_ortho.core.validation import (
    check_bool,
    check_callable,
    check_float,
    check_int,
    check_output_dir,
    check_tensor,
)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
META_FILE = "meta.json"
SHARD_BYTES = 256 * 2**20  # target shard size; module-level so tests can make shards tiny
_DISK_MARGIN = 1.1  # ask for 10% more free space than the shards need ...
_DISK_SLACK = 64 * 2**20  # ... plus this much for meta files and the file system
_TMP_RE = re.compile(r"^(?P<key>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")
# Fields every spec of one harvest must share (they all come from the same forward passes).
_SHARED = ("model", "revision", "context", "n_tokens", "dtype", "corpus", "drop_first")


class CacheError(ValueError):
    """A cache folder that does not match its spec or whose files are damaged."""


@dataclass(frozen=True)
class CacheSpec:
    """Everything that determines a cache's activations (validated on construction).

    Attributes:
        model: the model actually used (e.g. a Hugging Face id).
        revision: the model revision (commit), or None.
        layer: residual-stream layer (>= 0).
        context: tokens per sequence.
        n_tokens: tokens requested; ``n_seq = ceil(n_tokens / context)`` sequences are run and
            ``n_seq * (context - drop_first)`` rows kept.
        dtype: storage dtype, one of ``DTYPES``.
        corpus: corpus name and split, e.g. ``"python-docs/train"``.
        drop_first: drop position 0. The first token is an attention sink: its residual norm is
            many times that of the others, so it would dominate the reconstruction loss and the
            input normalisation while carrying no information about the text.
    """

    model: str
    revision: str | None
    layer: int
    context: int
    n_tokens: int
    dtype: str = "float16"
    corpus: str = ""
    drop_first: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty str, got {self.model!r}")
        if self.revision is not None and not isinstance(self.revision, str):
            raise TypeError(f"revision must be a str or None, got {self.revision!r}")
        object.__setattr__(self, "drop_first", check_bool("drop_first", self.drop_first))
        for name, low in (("layer", 0), ("context", 1 + self.drop_first), ("n_tokens", 1)):
            object.__setattr__(self, name, check_int(name, getattr(self, name), low))
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.corpus, str):
            raise TypeError(f"corpus must be a str, got {self.corpus!r}")

    @property
    def n_seq(self) -> int:
        """Sequences run through the model."""
        return -(-self.n_tokens // self.context)

    @property
    def n_rows(self) -> int:
        """Rows stored (tokens kept)."""
        return self.n_seq * (self.context - self.drop_first)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Stable folder name: a readable slug plus a short hash of all fields."""
        blob = json.dumps(self.to_dict(), sort_keys=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
        model = re.sub(r"[^A-Za-z0-9._-]+", "-", self.model).strip("-")[-48:]
        return f"{model}_L{self.layer}_ctx{self.context}_n{self.n_tokens}_{self.dtype}_{digest}"


class ActivationStore:
    """An opened, verified cache folder.

    Attributes:
        path: the cache folder.
        meta: the contents of meta.json.
        n: rows; d: activation dimension.
    """

    def __init__(self, path: Path, meta: dict):
        self.path, self.meta = path, meta
        self.n, self.d = int(meta["n"]), int(meta["d"])

    def __repr__(self) -> str:
        return f"ActivationStore({self.path.name!r}, n={self.n}, d={self.d})"

    def load(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """All rows, [n, d], in ``dtype``."""
        # (perturbed only in the perturbation test, sae_ortho.core.perturb)
        return perturb(torch.cat([self._shard(s["file"]).to(dtype) for s in self.meta["shards"]]), salt=7)

    def sampler(
        self, scale: float = 1.0, device: str | torch.device = "cpu", in_memory: bool | None = None,
        held_out: int = 0,
    ) -> Callable[[int], Tensor]:
        """A ``sample(batch) -> [batch, d]`` float32 function for :func:`sae_ortho.training.train.train`.

        Rows are drawn uniformly with replacement using the *global* torch generator, so a
        checkpointed run resumes on the same data. Each batch is converted to float32 and
        multiplied by ``scale``.

        Args:
            in_memory: hold all rows in memory on ``device`` (the default on an accelerator), or
                (False, the default on the CPU) stream them from the memory-mapped shards, so a
                cache larger than memory works and only the rows drawn are read. Both give the
                same rows for the same random state, bit for bit.
            held_out: never draw the last ``held_out`` rows (the text at the end of the cache), so
                :meth:`tail` can evaluate on rows that training did not see.
        """
        scale = check_float("scale", scale, 0.0, low_open=True)
        held_out = check_int("held_out", held_out, 0, self.n - 1)
        n_draw = self.n - held_out
        in_memory = None if in_memory is None else check_bool("in_memory", in_memory)
        if in_memory is None:
            in_memory = torch.device(device).type != "cpu"
        if in_memory:
            data = self.load(DTYPES[self.meta["dtype"]]).to(device)

            def sample(batch: int) -> Tensor:
                # indices come from the CPU generator: that is the state train() checkpoints
                idx = torch.randint(n_draw, (batch,))
                return data[idx.to(data.device)].float() * scale

            return sample
        shards = [self._mmap(s["file"]) for s in self.meta["shards"]]
        starts = np.cumsum([0] + [len(m) for m in shards])

        def sample_streamed(batch: int) -> Tensor:
            idx = torch.randint(n_draw, (batch,)).numpy()
            which = np.searchsorted(starts, idx, side="right") - 1
            out = np.empty((batch, self.d), dtype=shards[0].dtype)
            for s in np.unique(which):
                sel = which == s
                out[sel] = shards[s][idx[sel] - starts[s]]
            return torch.from_numpy(out).to(device).float() * scale

        return sample_streamed

    def tail(self, rows: int, scale: float = 1.0) -> Tensor:
        """The last ``rows`` rows, float32 [rows, d], times ``scale`` (held out by ``sampler(held_out=rows)``)."""
        rows = check_int("rows", rows, 1, self.n)
        scale = check_float("scale", scale, 0.0, low_open=True)
        if self.meta["dtype"] == "bfloat16":  # cannot be memory-mapped
            return self.load()[-rows:] * scale
        parts, need = [], rows
        for m in reversed([self._mmap(s["file"]) for s in self.meta["shards"]]):
            take = min(need, len(m))
            parts.insert(0, np.asarray(m[len(m) - take :]))
            need -= take
            if not need:
                break
        return torch.from_numpy(np.concatenate(parts)).float() * scale

    def _mmap(self, name: str) -> np.ndarray:
        """A read-only memory map of one shard's [rows, d] array (safetensors layout: an 8-byte
        header length, a JSON header, then the raw little-endian data)."""
        path = self.path / name
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        info = header["acts"]
        dtype = {"F16": np.float16, "BF16": None, "F32": np.float32}[info["dtype"]]
        if dtype is None:
            raise CacheError(f"{path}: bfloat16 shards cannot be memory-mapped; use sampler(in_memory=True)")
        start = info["data_offsets"][0]
        rows, d = info["shape"]
        return np.memmap(path, dtype=dtype, mode="r", offset=8 + n + start, shape=(rows, d))

    def _shard(self, name: str) -> Tensor:
        return safetensors.torch.load_file(str(self.path / name))["acts"]


def norm_scale(store: ActivationStore) -> float:
    """Factor ``s`` with ``mean ||s x||^2 = d`` over the cache (the SAELens / dictionary_learning
    input normalisation), from the rms norm recorded in meta."""
    rms = float(store.meta["rms_norm"])
    if not rms > 0:
        raise ValueError(f"cache {store.path} has rms_norm={rms}; cannot normalise all-zero activations")
    return math.sqrt(store.d) / rms


def open_cache(spec: CacheSpec, root: str | Path = "cache/activations") -> ActivationStore | None:
    """The verified cache for ``spec`` under ``root``, or None if there is none.

    Raises:
        CacheError: the folder exists but its meta does not match ``spec``, or a file is missing
            or does not hash to the recorded value (the message names the folder to delete).
    """
    path = Path(root) / spec.key()
    if not path.exists():
        return None
    hint = f"; delete the folder {path} to rebuild it"
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError) as e:
        raise CacheError(f"cache {path}: cannot read {META_FILE} ({e}){hint}") from e
    want = spec.to_dict()
    got = {k: meta.get(k) for k in want}
    if got != want:
        diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
        raise CacheError(f"cache {path}: meta does not match the spec (field: (meta, spec)) {diff}{hint}")
    try:
        shards = meta["shards"]
        rows = sum(int(s["rows"]) for s in shards)
        if rows != meta["n"] or rows != spec.n_rows:
            raise CacheError(f"cache {path}: {rows} rows in shards, meta n={meta['n']}, spec {spec.n_rows}{hint}")
        total = hashlib.sha256()
        for s in shards:
            one = hashlib.sha256()
            with open(path / s["file"], "rb") as f:
                while block := f.read(2**24):
                    one.update(block)
                    total.update(block)
            if one.hexdigest() != s["sha256"]:
                raise CacheError(f"cache {path}: shard {s['file']} is corrupted (hash mismatch){hint}")
        if total.hexdigest() != meta["content_sha256"]:
            raise CacheError(f"cache {path}: content hash mismatch{hint}")
    except (OSError, KeyError, TypeError) as e:
        raise CacheError(f"cache {path}: missing or unreadable file or meta field ({e!r}){hint}") from e
    return ActivationStore(path, meta)


def harvest(
    specs: Sequence[CacheSpec],
    tokens: Tensor,
    forward: Callable[..., dict[int, Tensor]],
    root: str | Path = "cache/activations",
    batch_size: int = 32,
    progress: bool = True,
) -> dict[int, ActivationStore]:
    """Make sure a cache exists for every spec; compute the missing ones in one pass over tokens.

    Args:
        specs: one per layer; they must agree on every field except ``layer``.
        tokens: [n_seq_available, context] token ids; the first ``spec.n_seq`` rows are used.
        forward: ``forward(tokens [b, context]) -> {layer: [b, context, d]}``, all layers from one
            model pass (extra layers are ignored). If it accepts a keyword ``layers``, it is called
            with ``layers=`` the missing layers (sorted), so it can stop at the deepest of them.
        root: folder holding the caches.
        batch_size: sequences per forward call.
        progress: show a tqdm bar (tokens/s in the postfix).

    Returns:
        layer -> opened store, for every spec.

    Raises:
        ValueError: inconsistent specs, wrong token shape, or forward output of the wrong shape.
        CacheError: an existing cache does not match or is damaged (see :func:`open_cache`).
        OSError: not enough free disk space under ``root`` (checked after the first batch, which
            gives ``d``, and before anything is written).
        FloatingPointError: non-finite activations (after the cast to the cache dtype).
    In every error case nothing is left behind.
    """
    progress = check_bool("progress", progress)
    spec0 = _check_specs(specs)
    batch_size = check_int("batch_size", batch_size, 1)
    check_callable("forward", forward)
    check_tensor("tokens", tokens, finite=False)
    if tokens.ndim != 2 or tokens.shape[1] != spec0.context or tokens.shape[0] < spec0.n_seq:
        raise ValueError(
            f"tokens must have shape [n_seq >= {spec0.n_seq}, context={spec0.context}] "
            f"(n_tokens={spec0.n_tokens}), got {tuple(tokens.shape)}"
        )
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex:
        raise ValueError(f"tokens must hold integer ids, got dtype {tokens.dtype}")
    root = check_output_dir("root", root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root)
    stores = {s.layer: open_cache(s, root) for s in specs}
    missing = [s for s in specs if stores[s.layer] is None]
    if missing:
        for s, store in _compute(missing, tokens[: spec0.n_seq], forward, root, batch_size, progress).items():
            stores[s.layer] = store
    return stores  # type: ignore[return-value]  (every entry is set)


def _check_specs(specs: Sequence[CacheSpec]) -> CacheSpec:
    if not specs or not all(isinstance(s, CacheSpec) for s in specs):
        raise ValueError(f"specs must be a non-empty sequence of CacheSpec, got {specs!r}")
    layers = [s.layer for s in specs]
    if len(set(layers)) != len(layers):
        raise ValueError(f"specs must have distinct layers, got {layers}")
    for s in specs[1:]:
        for f in _SHARED:
            if getattr(s, f) != getattr(specs[0], f):
                raise ValueError(
                    f"specs must agree on {_SHARED}; {f} differs: {getattr(specs[0], f)!r} (layer "
                    f"{specs[0].layer}) vs {getattr(s, f)!r} (layer {s.layer})"
                )
    return specs[0]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or an odd pid): not ours to judge
    return True


def _remove_stale_tmp(root: Path) -> None:
    """Remove temporary folders whose writing process is gone (same-host pids)."""
    for p in root.iterdir():
        m = _TMP_RE.match(p.name)
        if m and p.is_dir() and not _pid_alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0], "torch": torch.__version__}
    for pkg in ("transformers", "safetensors"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


class _Writer:
    """Accumulates one layer's rows in a tmp folder: shards, hashes and norm statistics."""

    def __init__(self, spec: CacheSpec, root: Path, d: int):
        self.spec, self.d = spec, d
        self.final = root / spec.key()
        self.tmp = root / f"{spec.key()}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        self.tmp.mkdir()
        self.buf: list[Tensor] = []
        self.buf_rows = 0
        self.shards: list[dict] = []
        self.total = hashlib.sha256()
        self.norm_sum = self.sq_norm_sum = 0.0
        self.rows = 0
        self.shard_rows = max(1, SHARD_BYTES // (d * DTYPES[spec.dtype].itemsize))

    def add(self, rows: Tensor) -> None:
        """rows: [r, d] in the cache dtype."""
        sq = rows.double().square().sum(-1)
        self.norm_sum += float(sq.sqrt().sum())
        self.sq_norm_sum += float(sq.sum())
        self.rows += rows.shape[0]
        self.buf.append(rows)
        self.buf_rows += rows.shape[0]
        while self.buf_rows >= self.shard_rows:
            self._flush(self.shard_rows)

    def _flush(self, n: int) -> None:
        data = torch.cat(self.buf)
        self.buf = [data[n:]] if data.shape[0] > n else []
        self.buf_rows = data.shape[0] - n
        blob = safetensors.torch.save({"acts": data[:n].contiguous()})
        name = f"acts_{len(self.shards):05d}.safetensors"
        (self.tmp / name).write_bytes(blob)
        self.total.update(blob)
        self.shards.append({"file": name, "rows": n, "sha256": hashlib.sha256(blob).hexdigest()})

    def finish(self) -> ActivationStore:
        if self.buf_rows:
            self._flush(self.buf_rows)
        meta = {
            **self.spec.to_dict(),
            "key": self.spec.key(),
            "n": self.rows,
            "d": self.d,
            "shards": self.shards,
            "mean_norm": self.norm_sum / self.rows,
            "rms_norm": math.sqrt(self.sq_norm_sum / self.rows),
            "content_sha256": self.total.hexdigest(),
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (self.tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        try:
            os.replace(self.tmp, self.final)
        except OSError:
            if not (self.final / META_FILE).exists():
                raise
            # a concurrent harvest finished the same cache first: keep its folder
            shutil.rmtree(self.tmp, ignore_errors=True)
            store = open_cache(self.spec, self.final.parent)
            assert store is not None
            return store
        return ActivationStore(self.final, meta)


def _call_forward(forward: Callable[..., dict[int, Tensor]], batch: Tensor, layers: list[int]) -> dict:
    try:
        takes_layers = "layers" in inspect.signature(forward).parameters
    except (TypeError, ValueError):  # builtins without a signature
        takes_layers = False
    with torch.no_grad():
        return forward(batch, layers=tuple(layers)) if takes_layers else forward(batch)


def _compute(
    specs: list[CacheSpec],
    tokens: Tensor,
    forward: Callable[..., dict[int, Tensor]],
    root: Path,
    batch_size: int,
    progress: bool,
) -> dict[CacheSpec, ActivationStore]:
    """Run ``forward`` over tokens [n_seq, context] once and write a cache per spec."""
    spec0 = specs[0]
    layers = sorted(s.layer for s in specs)
    dtype, start = DTYPES[spec0.dtype], int(spec0.drop_first)
    writers: dict[int, _Writer] = {}
    bar = tqdm(total=tokens.numel(), desc="harvest", unit="tok", unit_scale=True, disable=not progress)
    t0 = time.perf_counter()
    try:
        for i, lo in enumerate(range(0, tokens.shape[0], batch_size)):
            batch = tokens[lo : lo + batch_size]
            out = _call_forward(forward, batch, layers)
            for layer in layers:
                acts = out.get(layer) if isinstance(out, dict) else None
                if acts is None or acts.ndim != 3 or acts.shape[:2] != batch.shape:
                    got = tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__
                    keys = sorted(out) if isinstance(out, dict) else type(out).__name__
                    raise ValueError(
                        f"forward must return {{layer: [b={batch.shape[0]}, context={batch.shape[1]}, d]}} "
                        f"for layers {layers}; layer {layer}: got {got} (keys {keys})"
                    )
                rows = acts[:, start:].detach().to("cpu", dtype).reshape(-1, acts.shape[-1])
                if not torch.isfinite(rows).all():
                    overflow = dtype != torch.float32 and bool(torch.isfinite(acts[:, start:]).all())
                    raise FloatingPointError(
                        f"non-finite activations at layer {layer}, batch {i} (sequences {lo}:{lo + len(batch)})"
                        + (f"; finite before the cast to {spec0.dtype}: overflow, use float32" if overflow else "")
                    )
                if layer not in writers:
                    if not writers:
                        _check_disk(root, specs, rows.shape[1])
                    writers[layer] = _Writer(next(s for s in specs if s.layer == layer), root, rows.shape[1])
                if rows.shape[1] != writers[layer].d:
                    raise ValueError(f"forward changed d for layer {layer}: {writers[layer].d} -> {rows.shape[1]}")
                writers[layer].add(rows)
            bar.update(batch.numel())
            bar.set_postfix(tok_s=f"{bar.n / max(time.perf_counter() - t0, 1e-9):.3g}", refresh=False)
        return {w.spec: w.finish() for w in writers.values()}
    except BaseException:
        for w in writers.values():
            shutil.rmtree(w.tmp, ignore_errors=True)
        raise
    finally:
        bar.close()


def _check_disk(root: Path, specs: Sequence[CacheSpec], d: int) -> None:
    need = sum(s.n_rows * d * DTYPES[s.dtype].itemsize for s in specs)
    need = int(need * _DISK_MARGIN) + _DISK_SLACK
    free = shutil.disk_usage(root).free
    if free < need:
        raise OSError(
            f"not enough free disk space under {root}: the harvest needs about {need} bytes "
            f"({need / 2**30:.2f} GiB, with margin), {free} bytes ({free / 2**30:.2f} GiB) are free"
        )
