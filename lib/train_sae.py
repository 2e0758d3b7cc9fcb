"""Command line: train one SAE on cached activations or toy data, on one process or on many.

    python -m lib.train_sae --data toy --n-latents 4096 --steps 2000 --out runs/toy
    torchrun --standalone --nproc_per_node=8 -m lib.train_sae \\
        --data cache/activations/<key> --n-latents 100000 --batch-size 8192 --steps 100000 \\
        --ortho-weight 0.01 --ortho-method certified --checkpoint-every 1000 --out runs/big

``--data`` is ``toy`` (random sparse features, :mod:`lib.toy`) or a cache folder written by
:mod:`lib.activations` (verified before use; inputs scaled so that ``mean ||x||^2 = d``; the rows
drawn are read from the memory-mapped shards unless ``--data-in-memory``). Under
torchrun every process trains on its slice of each global batch of ``--batch-size`` inputs and
gradients are averaged (:mod:`lib.distributed`; nccl on GPUs, each process on GPU
``LOCAL_RANK``; gloo on CPUs). Rank 0 writes ``<out>/checkpoint.pt`` every
``--checkpoint-every`` steps and at the end the SAE in the SAELens format (``<out>/sae``, in raw
activation units) and ``<out>/summary.json`` (final loss terms, throughput, the certified cache's
report). Running the same command again resumes from the checkpoint, also on another number of
processes (the same global batches follow).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from lib import distributed
from lib.ortho import METHODS, PENALTY_SHAPES, OrthoConfig
from lib.reproducibility import setup
from lib.sae import SAE, SAE_KINDS, SAEConfig
from lib.train import TrainConfig, train

DEVICES = ("auto", "cpu", "cuda")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lib.train_sae", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="'toy' or a cache folder written by lib.activations")
    p.add_argument("--out", required=True, help="run folder: checkpoint, final SAE, summary")
    p.add_argument("--n-latents", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=4096, help="global batch (split over the processes)")
    p.add_argument("--kind", default="relu", help=f"one of {SAE_KINDS}")
    p.add_argument("--k", type=int, default=None, help="active latents per input for --kind topk")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--l1-coeff", type=float, default=1e-3, help="ReLU SAEs")
    p.add_argument("--ortho-weight", type=float, default=0.0, help="lambda_orth (0: no penalty)")
    p.add_argument("--ortho-method", default="certified", help=f"one of {METHODS}")
    p.add_argument("--ortho-shape", default="neglog", help=f"one of {tuple(PENALTY_SHAPES)}")
    p.add_argument("--cache-k", type=int, default=64, help="candidates per latent (cached, certified)")
    p.add_argument("--refresh-every", type=int, default=100, help="cached: steps between refreshes")
    p.add_argument("--check-rows", type=int, default=64, help="certified: rows checked against the exact search per step")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help=f"one of {DEVICES}; auto: this process's GPU if any")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: cores / processes)")
    p.add_argument("--timeout-s", type=float, default=600.0, help="how long a collective waits for the others")
    p.add_argument("--toy-features", type=int, default=1024, help="toy data: ground-truth features")
    p.add_argument("--toy-d", type=int, default=128, help="toy data: input dimension")
    p.add_argument("--toy-p", type=float, default=0.01, help="toy data: firing probability of each feature")
    p.add_argument("--data-in-memory", action="store_true",
                   help="hold the whole activation cache on the device (default: stream the drawn rows from the "
                        "memory-mapped shards, for caches of any size)")
    p.add_argument("--no-progress", action="store_true")
    return p


def check(a: argparse.Namespace) -> None:
    """Every flag validated before any work; errors name the flag."""
    for flag in ("n_latents", "steps", "batch_size", "cache_k", "refresh_every", "log_every", "toy_features", "toy_d"):
        if getattr(a, flag) <= 0:
            raise SystemExit(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(a, flag)}")
    for flag in ("checkpoint_every", "check_rows", "seed"):
        if getattr(a, flag) < 0:
            raise SystemExit(f"--{flag.replace('_', '-')} must be an integer >= 0, got {getattr(a, flag)}")
    for flag, allowed in (("kind", SAE_KINDS), ("ortho_method", METHODS), ("ortho_shape", tuple(PENALTY_SHAPES)),
                          ("device", DEVICES)):
        if getattr(a, flag) not in allowed:
            raise SystemExit(f"--{flag.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(a, flag)!r}")
    if a.kind == "topk" and (a.k is None or not 1 <= a.k <= a.n_latents):
        raise SystemExit(f"--k must be an integer in [1, --n-latents] for --kind topk, got {a.k}")
    if not (math.isfinite(a.lr) and a.lr > 0):
        raise SystemExit(f"--lr must be a finite number > 0, got {a.lr}")
    if not (math.isfinite(a.l1_coeff) and a.l1_coeff >= 0):
        raise SystemExit(f"--l1-coeff must be a finite number >= 0, got {a.l1_coeff}")
    if not math.isfinite(a.ortho_weight):
        raise SystemExit(f"--ortho-weight must be a finite number, got {a.ortho_weight}")
    if not (0 < a.toy_p <= 1):
        raise SystemExit(f"--toy-p must be in (0, 1], got {a.toy_p}")
    if a.threads is not None and a.threads <= 0:
        raise SystemExit(f"--threads must be a positive integer, got {a.threads}")
    if not (math.isfinite(a.timeout_s) and a.timeout_s > 0):
        raise SystemExit(f"--timeout-s must be a number > 0, got {a.timeout_s}")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is available")
    if a.data != "toy" and not (Path(a.data) / "meta.json").is_file():
        raise SystemExit(f"--data must be 'toy' or a cache folder written by lib.activations (with meta.json), got {a.data!r}")
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {a.out!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "checkpoint.pt").exists():
        raise SystemExit(f"--out {a.out!r} is not empty and holds no checkpoint to resume from; choose another folder")


def open_activations(folder: str):
    """The verified activation cache in ``folder`` and its input scale."""
    from lib import activations  # the toy path does not need safetensors

    path = Path(folder)
    meta = json.loads((path / activations.META_FILE).read_text())
    fields = [f.name for f in dataclasses.fields(activations.CacheSpec)]
    try:
        spec = activations.CacheSpec(**{k: meta[k] for k in fields})
    except (KeyError, TypeError, ValueError) as e:
        raise SystemExit(f"--data {folder!r}: meta.json is not an activation cache's ({e})") from e
    if spec.key() != path.name:
        raise SystemExit(f"--data {folder!r}: the folder must keep the name the cache was written under ({spec.key()})")
    store = activations.open_cache(spec, root=path.parent)
    return store, activations.norm_scale(store), {"dataset_path": str(path), "model_name": spec.model,
                                                  "hook_name": f"blocks.{spec.layer}.hook_resid_post"}


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    check(a)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    setup(a.seed, a.threads or max(1, (os.cpu_count() or 1) // local_world))
    group = distributed.init("gloo" if a.device == "cpu" else None, timeout_s=a.timeout_s)
    try:
        run(a, group)
    except distributed.CollectiveError as e:
        raise SystemExit(f"error: {e}") from None
    finally:
        distributed.shutdown()


def run(a: argparse.Namespace, group: distributed.Group | None) -> None:
    rank, world = (0, 1) if group is None else (group.rank, group.world)
    if a.batch_size % world:
        raise SystemExit(f"--batch-size {a.batch_size} must divide evenly over the {world} processes")
    if a.device == "auto":
        device = group.device if group is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device("cuda", torch.cuda.current_device()) if a.device == "cuda" else torch.device("cpu")
    if a.data == "toy":
        from lib import toy

        data = toy.ToyData(
            toy.ToyDataConfig(a.toy_features, a.toy_d, embedding="random", p=a.toy_p),
            generator=torch.Generator().manual_seed(a.seed),
        )
        d, scale, metadata = a.toy_d, 1.0, {"dataset_path": "toy"}
        sample = lambda b: data.sample(b).x.to(device)
    else:
        store, scale, metadata = open_activations(a.data)
        d, sample = store.d, store.sampler(scale, device, in_memory=a.data_in_memory)
    sae_cfg = SAEConfig(d=d, n_latents=a.n_latents, kind=a.kind, k=a.k if a.kind == "topk" else None)
    ortho = OrthoConfig(shape=a.ortho_shape, method=a.ortho_method, cache_k=a.cache_k,
                        refresh_every=a.refresh_every, check_rows=a.check_rows)
    try:
        cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, l1_coeff=a.l1_coeff,
                          ortho_weight=a.ortho_weight, ortho=ortho, log_every=a.log_every,
                          checkpoint_every=a.checkpoint_every)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    sae = SAE(sae_cfg, generator=torch.Generator().manual_seed(a.seed)).to(device)
    out = Path(a.out)
    t0 = time.perf_counter()
    res = train(sae, sample, cfg, checkpoint_dir=out, progress=not a.no_progress, desc=f"train x{world}", group=group)
    seconds = time.perf_counter() - t0
    if rank != 0:
        return
    from lib.saelens_io import save_sae_lens

    save_sae_lens(sae.cpu(), out / "sae", input_scale=scale, metadata=metadata)
    steps_run = a.steps - res.resumed_from
    last = {k: float(v[-1].mean()) for k, v in res.history.items() if k != "step"}
    summary = {
        "world_size": world, "device": str(device), "threads_per_process": torch.get_num_threads(),
        "steps": a.steps, "resumed_from": res.resumed_from, "batch_size": a.batch_size,
        "seconds": seconds, "steps_per_s": steps_run / seconds if steps_run else None,
        "inputs_per_s": steps_run * a.batch_size / seconds if steps_run else None,
        "final": last, "certified": res.certified, "args": vars(a),
    }
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out / "summary.json")
    rate = f", {summary['inputs_per_s']:.0f} inputs/s" if steps_run else " (already finished)"
    print(f"trained {a.steps} steps on {world} process(es){rate}; wrote {out / 'sae'} and {out / 'summary.json'}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
