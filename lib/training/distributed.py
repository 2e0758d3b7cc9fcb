"""Data-parallel SAE training on several processes (torch.distributed), launched with torchrun.

    torchrun --standalone --nproc_per_node=N -m sae_ortho.training.train_sae ...

:func:`sae_ortho.training.train.train` switches to this mode when torch.distributed is initialised with more
than one process (:func:`init` does it from the environment torchrun sets). The semantics are
those of ``DistributedDataParallel``, written out for the SAE trainer:

- every process holds the whole SAE (rank 0's parameters are broadcast at the start) and the same
  global torch generator (the same seed; checked), draws the same global batch of
  ``TrainConfig.batch_size`` rows and trains on its slice ``[rank * b, (rank + 1) * b)`` with
  ``b = batch_size / world``. The data stream is therefore the same for any number of processes;
- every loss term is a batch mean, so the average of the slices' gradients is the global batch's
  gradient (up to float rounding); gradients are averaged over the processes after the backward
  pass. The orthogonality penalty's active set is the union (OR) of the slices' active sets, as
  in one process, and its nearest-neighbour search is split over the processes
  (:class:`Group` is a :class:`sae_ortho.ortho.RowShard`);
- the projection of the decoder gradient, Adam and the decoder renormalisation then run on
  identical gradients, so the parameters stay identical everywhere (checked at each checkpoint).

Backends: ``nccl`` for GPUs, ``gloo`` for CPUs. A collective that fails (another process died,
the network failed or the timeout passed) raises :class:`CollectiveError` on the survivors.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

BACKENDS = ("nccl", "gloo")
# Environment variables torchrun sets for every worker.
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class CollectiveError(RuntimeError):
    """A collective operation failed: another process stopped, or the network or timeout failed."""


@dataclass(frozen=True)
class Group:
    """The processes of one data-parallel job (the default process group).

    Attributes:
        rank, world: this process's index and the number of processes.
        device: where collective buffers live (the process's GPU for nccl, the CPU for gloo).
    """

    rank: int
    world: int
    device: torch.device

    @contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        try:
            yield
        except RuntimeError as e:  # torch.distributed.DistError and its subclasses included
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CollectiveError(
                f"process {self.rank} of {self.world}: {what} failed ({type(e).__name__}: {first}); "
                "another process has probably stopped (see its own error), or the network failed, "
                "or the collective timeout passed"
            ) from e

    def slice(self, x: Tensor) -> Tensor:
        """This process's rows of a global batch ``x: [(M,) batch, d]`` (batch divisible by world)."""
        b = x.shape[-2] // self.world
        return x[..., self.rank * b : (self.rank + 1) * b, :]

    def gather(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """Each tensor ``[r, ...]`` from every process (``r`` may differ), concatenated along dim
        0 in rank order. Two collectives whatever the number of tensors: their row counts, then
        all their bytes packed into one buffer."""
        home = tensors[0].device if tensors else self.device
        flat = [t.contiguous() for t in tensors]
        row_bytes = [math.prod(t.shape[1:]) * t.element_size() for t in flat]
        counts = torch.tensor([t.shape[0] for t in flat], dtype=torch.long, device=self.device)
        every = [torch.empty_like(counts) for _ in range(self.world)]
        with self._collective("gathering row counts"):
            dist.all_gather(every, counts)
        every = torch.stack(every).cpu()  # [world, tensors]
        sizes = (every * torch.tensor(row_bytes)).sum(1)
        buf = torch.zeros(int(sizes.max()), dtype=torch.uint8, device=self.device)
        mine = [t.reshape(-1).view(torch.uint8).to(self.device) for t in flat if t.numel()]
        if mine:
            packed = torch.cat(mine)
            buf[: len(packed)] = packed
        out = [torch.empty_like(buf) for _ in range(self.world)]
        with self._collective("gathering search results"):
            dist.all_gather(out, buf)
        parts: list[list[Tensor]] = [[] for _ in flat]
        for r in range(self.world):
            offset = 0
            for i, t in enumerate(flat):
                nbytes = int(every[r, i]) * row_bytes[i]
                # a copy: the dtype view needs an aligned start
                chunk = out[r][offset : offset + nbytes].clone()
                parts[i].append(chunk.view(t.dtype).reshape(int(every[r, i]), *t.shape[1:]))
                offset += nbytes
        return [torch.cat(p).to(home) for p in parts]

    def mean_(self, tensors: Sequence[Tensor]) -> None:
        """Average each tensor over the processes, in place."""
        with self._collective("averaging gradients"):
            moved = [(t, t.to(self.device)) for t in tensors]
            works = [dist.all_reduce(buf, op=dist.ReduceOp.SUM, async_op=True) for _, buf in moved]
            for w in works:
                w.wait()
        for t, buf in moved:
            buf.div_(self.world)
            if buf is not t:
                t.copy_(buf)

    def any_(self, mask: Tensor) -> Tensor:
        """Element-wise OR of a bool tensor over the processes."""
        buf = mask.to(device=self.device, dtype=torch.uint8)
        with self._collective("combining the active latents"):
            dist.all_reduce(buf, op=dist.ReduceOp.MAX)
        return buf.bool().to(mask.device)

    def broadcast_(self, tensors: Sequence[Tensor], src: int = 0) -> None:
        """Overwrite each tensor with process ``src``'s, in place."""
        with self._collective("broadcasting parameters"):
            for t in tensors:
                buf = t.data.to(self.device)
                dist.broadcast(buf, src)
                if buf is not t.data:
                    t.data.copy_(buf)

    def agree(self, values: Tensor) -> bool:
        """Whether ``values`` (a small float64 or int64 vector) is the same on every process."""
        lo, hi = values.to(self.device).clone(), values.to(self.device).clone()
        with self._collective("comparing state across processes"):
            dist.all_reduce(lo, op=dist.ReduceOp.MIN)
            dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        return bool(torch.equal(lo, hi))


def fingerprint(t: Tensor) -> Tensor:
    """A float64 [2] summary (sum and sum of squares) of a tensor, to compare across processes."""
    d = t.detach().double()
    return torch.stack([d.sum(), d.square().sum()])


def rng_fingerprint() -> Tensor:
    """An int64 [1] hash of the global torch generator's state."""
    digest = hashlib.sha256(torch.get_rng_state().numpy().tobytes()).digest()
    return torch.tensor([int.from_bytes(digest[:7], "little")], dtype=torch.long)


def current() -> Group | None:
    """The running job's group, or None when torch.distributed is not initialised or has one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return Group(dist.get_rank(), dist.get_world_size(), device)


def init(backend: str | None = None, timeout_s: float = 600.0) -> Group | None:
    """Initialise torch.distributed from the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and return the group.

    Returns None for a plain single-process run (no ``WORLD_SIZE`` in the environment) and for a
    job of one process. With ``nccl`` each process uses GPU ``LOCAL_RANK``.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default nccl when CUDA is available, else gloo.
        timeout_s: how long a collective waits for the other processes before failing.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"timeout_s must be a number > 0, got {timeout_s!r}")
    if dist.is_available() and dist.is_initialized():
        return current()
    if "WORLD_SIZE" not in os.environ:
        return None
    missing = [k for k in ENV if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE is set but not {missing}: start the job with torchrun")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("backend 'nccl' needs CUDA GPUs; use 'gloo' on CPUs")
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return current()


def shutdown() -> None:
    """Leave the job (destroy the process group) if one is running."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
