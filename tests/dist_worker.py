"""One process of the multi-process tests (tests/test_distributed.py), started once per rank with
the environment torchrun would set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

    python -m tests.dist_worker '{"jobs": [...], "out": "result.pt", "timeout_s": 20}'

Each job either trains (``"train"``) or runs the sharded searches on fixed matrices
(``"search"``); rank 0 saves every job's result to ``out``. The same functions give the
single-process reference in the tests (with ``group=None``).
"""

from __future__ import annotations

import json
import os
import sys

import torch

from sae_ortho.core.reproducibility import setup
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.ortho import METHOD_OPTIONS, CertifiedCache, NeighbourCache, OrthoConfig, nn_abs_cos
from sae_ortho.training import distributed
from sae_ortho.training.train import TrainConfig, train

D, N = 8, 12


class SparseData:
    """x = relu(z - 0.8) @ directions, z standard normal: 10 sparse non-negative features in D dims
    (drawn from the global generator, as train() expects; sae_ortho.data.toy is slower to import)."""

    def __init__(self):
        self.directions = torch.nn.functional.normalize(torch.randn(10, D, generator=torch.Generator().manual_seed(0)), dim=-1)

    def sample(self, b: int) -> torch.Tensor:
        return torch.relu(torch.randn(b, 10) - 0.8) @ self.directions


def train_job(job: dict, group=None) -> dict:
    """Train a tiny SAE on toy data; returns its parameters and the run's record."""
    setup(job.get("seed", 0), threads=1)
    data = SparseData()
    n_models = job.get("n_models")
    kind = job.get("sae_kind", "relu")
    sae = SAE(SAEConfig(d=D, n_latents=N, n_models=n_models, kind=kind, k=3 if kind == "topk" else None))
    calls = {"n": 0}
    crash = job.get("crash")  # [rank, call]: that rank dies abruptly when drawing that batch

    def sample(b):
        calls["n"] += 1
        if crash and group is not None and group.rank == crash[0] and calls["n"] == crash[1]:
            os._exit(3)
        if n_models is None:
            return data.sample(b)
        return torch.stack([data.sample(b) for _ in range(n_models)])

    method = job.get("method", "chunked")
    options = {"cache_k": job.get("cache_k", 3), "refresh_every": 5, "check_rows": 4}
    ortho = OrthoConfig(method=method, chunk=job.get("chunk", 5),
                        **{name: v for name, v in options.items() if method in METHOD_OPTIONS[name]})
    cfg = TrainConfig(steps=job.get("steps", 24), batch_size=job.get("batch", 32), lr=1e-2,
                      l1_coeff=0.05 if kind == "relu" else 0.0, ortho_weight=0.1, ortho=ortho, log_every=4,
                      checkpoint_every=job.get("checkpoint_every", 0), kernel=job.get("kernel", "dense"))
    res = train(sae, sample, cfg, checkpoint_dir=job.get("folder"), progress=False, group=group)
    return {"params": {k: v.detach().clone() for k, v in sae.state_dict().items()}, "history": res.history,
            "resumed_from": res.resumed_from, "world_size": res.world_size, "certified": res.certified}


def search_job(job: dict, group=None) -> dict:
    """Values, gradients and chosen pairs of the (sharded) searches on fixed random matrices."""
    out = {}
    g = torch.Generator().manual_seed(5)
    for name, W in (("single", torch.randn(40, 6, generator=g)), ("stacked", torch.randn(3, 40, 6, generator=g))):
        W[..., 7, :] = W[..., 3, :]  # a duplicated row: a tie
        rows = torch.randperm(40, generator=g)[:29]
        for chunk in (4, 64):
            w = W.clone().requires_grad_(True)
            v = nn_abs_cos(w, rows, chunk=chunk, shard=group)
            (v.square() * torch.arange(1, v.shape[-1] + 1)).sum().backward()
            out[f"chunked-{name}-{chunk}"] = (v.detach(), w.grad)
        cached = NeighbourCache(3, chunk=4)
        cached.refresh(W, shard=group)
        out[f"cached-{name}"] = cached.candidates
        cert = CertifiedCache(4, chunk=4, check_rows=5)
        vals, walk = [], W.clone()
        for t in range(12):  # rows drift (some far), so certificates fail and rows are re-searched
            walk = walk + (0.3 if t % 5 == 4 else 0.02) * torch.randn(walk.shape, generator=g)
            vals.append(nn_abs_cos(walk, rows, method="certified", cache=cert, shard=group))
        out[f"certified-{name}"] = (torch.stack(vals), cert.state_dict()["state"], cert.summary())
    return out


def main() -> None:
    args = json.loads(sys.argv[1])
    group = distributed.init("gloo", timeout_s=args.get("timeout_s", 20))
    results = {}
    for job in args["jobs"]:
        run = train_job if job["kind"] == "train" else search_job
        results[job["name"]] = run(job, group)
    if group is None or group.rank == 0:
        torch.save(results, args["out"])
    distributed.shutdown()


if __name__ == "__main__":
    main()
