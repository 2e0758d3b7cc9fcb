"""Command line: train one SAE on cached activations or toy data, on one process or on many.

    python -m sae_ortho.training.train_sae --data toy --n-latents 4096 --steps 2000 --out runs/toy
    torchrun --standalone --nproc_per_node=8 -m sae_ortho.training.train_sae \\
        --data cache/activations/<key> --n-latents 100000 --batch-size 8192 --steps 100000 \\
        --ortho-weight 0.01 --ortho-method certified --checkpoint-every 1000 --out runs/big

``--data`` is ``toy`` (random sparse features, :mod:`sae_ortho.data.toy`), your own ``[N, d]`` activations (a ``.npy``, ``.pt`` or ``.safetensors`` file or a ``datasets`` folder, :mod:`sae_ortho.data.tensor_files`; scaled the same way, the last rows held out), or a cache folder written by
:mod:`sae_ortho.data.activations` (verified before use; inputs scaled so that ``mean ||x||^2 = d``; the rows
drawn are read from the memory-mapped shards unless ``--data-in-memory``). Under
torchrun every process trains on its slice of each global batch of ``--batch-size`` inputs and
gradients are averaged (:mod:`sae_ortho.training.distributed`; nccl on GPUs, each process on GPU
``LOCAL_RANK``; gloo on CPUs). Rank 0 writes ``<out>/checkpoint.pt`` every
``--checkpoint-every`` steps and at the end the SAE in the SAELens format (``<out>/sae``, in raw
activation units), ``<out>/log.jsonl`` (loss terms and held-out metrics as the run goes, :mod:`sae_ortho.training.runlog`) and ``<out>/summary.json`` (final loss terms, throughput, the certified cache's
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

from sae_ortho.core.atomic import atomic_write
from sae_ortho.core.reproducibility import setup
from sae_ortho.data.tensor_files import SUFFIXES, is_activations_file, load_activations
from sae_ortho.models.sae import SAE, SAE_KINDS, SAEConfig
from sae_ortho.ortho import DEFAULT_CACHE_K, METHODS, PENALTY_SHAPES, OrthoConfig
from sae_ortho.training import distributed
from sae_ortho.training.train import KERNELS, TrainConfig, TrainingInterrupted, train

DEVICES = ("auto", "cpu", "cuda")
L1_DEFAULT = 1e-3  # --l1-coeff of ReLU SAEs
# Ortho flags used only by some methods: flag -> (methods, default).
METHOD_FLAGS = {"cache_k": (("cached", "certified"), None), "refresh_every": (("cached",), 100),
                "check_rows": (("certified",), 64)}
EVAL_ROWS = 4096  # --eval-rows
TOY_DEFAULTS = {"toy_features": 1024, "toy_d": 128, "toy_p": 0.01}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sae_ortho.training.train_sae", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="'toy', a cache folder written by sae_ortho.data.activations, or your "
                   "own [N, d] activations: a .npy, .pt or .safetensors file or a Hugging Face datasets folder")
    p.add_argument("--hook-name", default=None, help="--data <a file>: where the activations came from, recorded for "
                   "SAELens (e.g. blocks.3.hook_resid_post); required there")
    p.add_argument("--out", required=True, help="run folder: checkpoint, final SAE, summary")
    p.add_argument("--n-latents", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=4096, help="global batch (split over the processes)")
    p.add_argument("--kind", default="relu", help=f"one of {SAE_KINDS}")
    p.add_argument("--k", type=int, default=None, help="active latents per input for --kind topk")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--l1-coeff", type=float, default=None, help=f"ReLU SAEs (default {L1_DEFAULT})")
    p.add_argument("--ortho-weight", type=float, default=0.0, help="lambda_orth (0: no penalty)")
    p.add_argument("--ortho-method", default="certified", help=f"one of {METHODS}")
    p.add_argument("--ortho-shape", default="neglog", help=f"one of {tuple(PENALTY_SHAPES)}")
    p.add_argument("--cache-k", type=int, default=None,
                   help=f"candidates per latent (cached, certified; default by method: {DEFAULT_CACHE_K})")
    p.add_argument("--refresh-every", type=int, default=None,
                   help=f"cached: steps between refreshes (default {METHOD_FLAGS['refresh_every'][1]})")
    p.add_argument("--check-rows", type=int, default=None,
                   help=f"certified: rows checked against the exact search per step (default {METHOD_FLAGS['check_rows'][1]})")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=50, help="steps between the loss records in <out>/log.jsonl")
    p.add_argument("--eval-every", type=int, default=500,
                   help="steps between the held-out FVE / L0 / dead records in <out>/log.jsonl (0: none)")
    p.add_argument("--eval-rows", type=int, default=None,
                   help=f"held-out inputs: fresh toy samples, or the last rows of the cache, never drawn in training "
                        f"(default {EVAL_ROWS}, at most a tenth of the cache)")
    p.add_argument("--wandb-project", default=None, help="also log to this wandb project (wandb must be installed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kernel", default="auto", help=f"one of {KERNELS}: how a step is computed "
                   "(sparse: over the active codes only; auto: sparse on a CPU once the codes are sparse)")
    p.add_argument("--device", default="auto", help=f"one of {DEVICES}; auto: this process's GPU if any")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: cores / processes)")
    p.add_argument("--timeout-s", type=float, default=600.0, help="how long a collective waits for the others")
    p.add_argument("--toy-features", type=int, default=None, help=f"toy data: ground-truth features (default {TOY_DEFAULTS['toy_features']})")
    p.add_argument("--toy-d", type=int, default=None, help=f"toy data: input dimension (default {TOY_DEFAULTS['toy_d']})")
    p.add_argument("--toy-p", type=float, default=None,
                   help=f"toy data: firing probability of each feature (default {TOY_DEFAULTS['toy_p']})")
    p.add_argument("--data-in-memory", action="store_true",
                   help="hold the whole activation cache on the device (default: stream the drawn rows from the "
                        "memory-mapped shards, for caches of any size)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check(a: argparse.Namespace) -> None:
    """Every flag validated before any work, the output folder included; errors name the flag.
    Fills in the defaults of the flags that depend on others (see :func:`check_unused`)."""
    for flag, allowed in (("kind", SAE_KINDS), ("kernel", KERNELS), ("ortho_method", METHODS), ("ortho_shape", tuple(PENALTY_SHAPES)),
                          ("device", DEVICES)):
        if getattr(a, flag) not in allowed:
            raise SystemExit(f"{_flag(flag)} must be one of {', '.join(allowed)}, got {getattr(a, flag)!r}")
    check_unused(a)
    for flag in ("n_latents", "steps", "batch_size", "cache_k", "refresh_every", "log_every", "toy_features", "toy_d",
                 "eval_rows"):
        if getattr(a, flag) is not None and getattr(a, flag) <= 0:
            raise SystemExit(f"{_flag(flag)} must be a positive integer, got {getattr(a, flag)}")
    for flag in ("checkpoint_every", "check_rows", "seed", "eval_every"):
        if getattr(a, flag) is not None and getattr(a, flag) < 0:
            raise SystemExit(f"{_flag(flag)} must be an integer >= 0, got {getattr(a, flag)}")
    if a.kind == "topk" and (a.k is None or not 1 <= a.k <= a.n_latents):
        raise SystemExit(f"--k must be an integer in [1, --n-latents] for --kind topk, got {a.k}")
    if not (math.isfinite(a.lr) and a.lr > 0):
        raise SystemExit(f"--lr must be a finite number > 0, got {a.lr}")
    if a.l1_coeff is not None and not (math.isfinite(a.l1_coeff) and a.l1_coeff >= 0):
        raise SystemExit(f"--l1-coeff must be a finite number >= 0, got {a.l1_coeff}")
    if not math.isfinite(a.ortho_weight):
        raise SystemExit(f"--ortho-weight must be a finite number, got {a.ortho_weight}")
    if a.toy_p is not None and not (0 < a.toy_p <= 1):
        raise SystemExit(f"--toy-p must be in (0, 1], got {a.toy_p}")
    if a.threads is not None and a.threads <= 0:
        raise SystemExit(f"--threads must be a positive integer, got {a.threads}")
    if not (math.isfinite(a.timeout_s) and a.timeout_s > 0):
        raise SystemExit(f"--timeout-s must be a number > 0, got {a.timeout_s}")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is available")
    if a.data != "toy" and not (Path(a.data) / "meta.json").is_file() and not is_activations_file(a.data):
        raise SystemExit(f"--data must be 'toy', a cache folder written by sae_ortho.data.activations (with meta.json), "
                         f"or a {', '.join(SUFFIXES)} file or Hugging Face datasets folder of [N, d] activations; got {a.data!r}")
    if _is_file_data(a) and not a.hook_name:
        raise SystemExit("--hook-name is required with --data <a file>: the hook SAELens attaches the SAE to "
                         "(e.g. blocks.3.hook_resid_post), recorded in cfg.json")
    check_out(a.out)


def check_unused(a: argparse.Namespace) -> None:
    """A flag that has no effect with the other flags (``--k`` or ``--l1-coeff`` for the other
    kind, ``--cache-k`` with a method without a cache, a toy option with a cache folder ...) is an
    error, not ignored; the defaults of the flags that apply are filled in."""
    unused = []
    if a.kind != "topk" and a.k is not None:
        unused.append(("k", "--kind topk"))
    if a.kind != "relu" and a.l1_coeff is not None:
        unused.append(("l1_coeff", "--kind relu (TopK SAEs have no L1 term)"))
    for name, (methods, _) in METHOD_FLAGS.items():
        if a.ortho_method not in methods and getattr(a, name) is not None:
            unused.append((name, "--ortho-method " + " or ".join(methods)))
    if a.eval_every == 0 and a.eval_rows is not None:
        unused.append(("eval_rows", "--eval-every > 0"))
    if a.data != "toy":
        unused += [(name, "--data toy") for name in TOY_DEFAULTS if getattr(a, name) is not None]
    if a.data_in_memory and (a.data == "toy" or _is_file_data(a)):
        unused.append(("data_in_memory", "--data <an activation cache> (a file is always read into memory)"))
    if a.hook_name is not None and not _is_file_data(a):
        unused.append(("hook_name", "--data <a file> (a cache records its hook; toy data has none)"))
    for name, needs in unused:
        raise SystemExit(f"{_flag(name)} only applies to {needs}, which this run does not use")
    if a.kind == "relu" and a.l1_coeff is None:
        a.l1_coeff = L1_DEFAULT
    for name, (methods, default) in METHOD_FLAGS.items():
        if a.ortho_method in methods and getattr(a, name) is None:
            setattr(a, name, default)
    if a.data == "toy":
        for name, default in TOY_DEFAULTS.items():
            if getattr(a, name) is None:
                setattr(a, name, default)


def check_out(folder: str) -> None:
    """The run folder and everything written there at the end (the SAE, the summary), checked
    before any training."""
    from sae_ortho.core.validation import check_output_dir
    from sae_ortho.models.saelens_io import check_save_folder

    out = Path(folder)
    try:
        check_output_dir("--out", out)
        check_save_folder(out / "sae")
    except (ValueError, OSError) as e:  # OSError: PermissionError, a folder that cannot be written
        raise SystemExit(str(e) if str(e).startswith("--out") else f"--out {folder!r}: {e}") from None
    if out.is_dir() and any(out.iterdir()) and not (out / "checkpoint.pt").exists():
        raise SystemExit(f"--out {folder!r} is not empty and holds no checkpoint to resume from; choose another folder")
    for name in ("checkpoint.pt", "summary.json"):
        if (out / name).exists() and not (out / name).is_file():
            raise SystemExit(f"--out {folder!r} holds a folder named {name}; move it away or choose another folder")


def _is_file_data(a: argparse.Namespace) -> bool:
    return a.data != "toy" and not (Path(a.data) / "meta.json").is_file()


def open_activations(folder: str):
    """The verified activation cache in ``folder`` and its input scale."""
    from sae_ortho.data import activations  # the toy path does not need safetensors

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
        from sae_ortho.data import toy

        data = toy.ToyData(
            toy.ToyDataConfig(a.toy_features, a.toy_d, embedding="random", p=a.toy_p),
            generator=torch.Generator().manual_seed(a.seed),
        )
        d, scale, metadata = a.toy_d, 1.0, {"dataset_path": "toy", "hook_name": "toy"}
        sample = lambda b: data.sample(b).x.to(device)
        held_out = None
        if a.eval_every:  # fresh samples from the same features, from a stream of their own
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(a.seed + 1)
                held_out = data.sample(a.eval_rows or EVAL_ROWS).x
        data_id = f"toy features={a.toy_features} d={a.toy_d} p={a.toy_p} seed={a.seed}"
    elif _is_file_data(a):
        try:
            x = load_activations(a.data)
        except ValueError as e:
            raise SystemExit(f"--data: {e}") from None
        if a.eval_rows is not None and a.eval_rows >= len(x):
            raise SystemExit(f"--eval-rows {a.eval_rows} must be below the file's {len(x)} rows")
        rows = (a.eval_rows or max(2, min(EVAL_ROWS, len(x) // 10))) if a.eval_every else 0
        n_train = len(x) - rows
        d = x.shape[1]
        scale = math.sqrt(d / float(x[:n_train].double().square().sum(1).mean()))  # mean ||s x||^2 = d
        train_x = x[:n_train].to(device)
        sample = lambda b: train_x[torch.randint(n_train, (b,)).to(device)] * scale
        held_out = x[n_train:] * scale if rows else None
        metadata = {"dataset_path": str(Path(a.data).resolve().name), "hook_name": a.hook_name}
        data_id = f"{Path(a.data).name}: {len(x)} x {d}, sum {float(x.double().sum()):.17g}, last {rows} rows held out"
    else:
        store, scale, metadata = open_activations(a.data)
        if a.eval_rows is not None and a.eval_rows >= store.n:
            raise SystemExit(f"--eval-rows {a.eval_rows} must be below the cache's {store.n} rows")
        rows = (a.eval_rows or max(2, min(EVAL_ROWS, store.n // 10))) if a.eval_every else 0
        d, sample = store.d, store.sampler(scale, device, in_memory=a.data_in_memory, held_out=rows)
        held_out = store.tail(rows, scale) if rows else None
        data_id = f"activation cache {Path(a.data).name}, last {rows} rows held out"
    sae_cfg = SAEConfig(d=d, n_latents=a.n_latents, kind=a.kind, k=a.k if a.kind == "topk" else None)
    options = {name: getattr(a, name) for name, (methods, _) in METHOD_FLAGS.items() if a.ortho_method in methods}
    ortho = OrthoConfig(shape=a.ortho_shape, method=a.ortho_method, **options)
    try:
        # TopK: no L1 term (0, as sae_ortho.experiments.runs records it)
        cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, l1_coeff=a.l1_coeff if a.kind == "relu" else 0.0,
                          ortho_weight=a.ortho_weight, ortho=ortho, log_every=a.log_every,
                          checkpoint_every=a.checkpoint_every, kernel=a.kernel)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    sae = SAE(sae_cfg, generator=torch.Generator().manual_seed(a.seed)).to(device)
    out = Path(a.out)
    t0 = time.perf_counter()
    log = None
    if rank == 0:
        from sae_ortho.training.runlog import RunLog

        log = RunLog(out / "log.jsonl", wandb_project=a.wandb_project, config=vars(a))
    try:
        res = train(sae, sample, cfg, checkpoint_dir=out, progress=not a.no_progress, desc=f"train x{world}", group=group,
                    log=log, eval_data=held_out, eval_every=a.eval_every, data_id=data_id)
    except TrainingInterrupted as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    except ValueError as e:  # a resume with another configuration or data: the message names what differs
        raise SystemExit(f"error: {e}") from None
    finally:
        if log is not None:
            log.close()
    seconds = time.perf_counter() - t0
    if rank != 0:
        return
    from sae_ortho.models.saelens_io import save_sae_lens

    save_sae_lens(sae.cpu(), out / "sae", hook_name=metadata["hook_name"], input_scale=scale, metadata=metadata,
                  training={"sae": sae_cfg, "train": cfg, "seed": a.seed})
    steps_run = a.steps - res.resumed_from
    last = {k: float(v[-1].mean()) for k, v in res.history.items() if k != "step"}
    summary = {
        "world_size": world, "device": str(device), "threads_per_process": torch.get_num_threads(),
        "steps": a.steps, "resumed_from": res.resumed_from, "batch_size": a.batch_size,
        "seconds": seconds, "steps_per_s": steps_run / seconds if steps_run else None,
        "inputs_per_s": steps_run * a.batch_size / seconds if steps_run else None,
        "final": last, "certified": res.certified, "args": vars(a),
    }
    atomic_write(out / "summary.json", json.dumps(summary, indent=1))
    rate = f", {summary['inputs_per_s']:.0f} inputs/s" if steps_run else " (already finished)"
    print(f"trained {a.steps} steps on {world} process(es){rate}; wrote {out / 'sae'} and {out / 'summary.json'}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
