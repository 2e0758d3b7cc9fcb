"""Training throughput of our SAE trainer against SAELens's, on the same data and machine.

``python -m sae_ortho.bench.bench_trainer`` trains a ReLU + L1 SAE of the same shape with both trainers on
batches drawn the same way from the same cached language-model activations (or from random
inputs with ``--random``), alternating the two in one process, and prints tokens per second and
their ratio. Ours: :class:`sae_ortho.training.train.Stepper` (the loop of :func:`sae_ortho.training.train.train`, with the
study's LM recipe). SAELens: ``sae_lens.SAETrainer`` with a ``StandardTrainingSAE`` (its own L1
weighting by decoder norms, Adam, no evaluation or logging).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from sae_ortho.core.atomic import atomic_write
from sae_ortho.core.reproducibility import setup
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.training.recipe import lm_recipe
from sae_ortho.training.train import Stepper, TrainConfig


def ours(sample: Callable[[int], Tensor], d: int, n: int, batch: int, steps: int, l1: float, lr: float) -> float:
    """Seconds per step of our trainer (sampling included)."""
    sae = SAE(SAEConfig(d, n))
    stepper = Stepper(sae, TrainConfig(steps=max(steps, 20), batch_size=batch, lr=lr, l1_coeff=l1,
                                       recipe=lm_recipe("relu", max(steps, 20), d)))
    stepper(sample(batch), 0)  # warm-up
    start = time.perf_counter()
    for i in range(steps):
        stepper(sample(batch), i + 1)
    return (time.perf_counter() - start) / steps


def saelens(sample: Callable[[int], Tensor], d: int, n: int, batch: int, steps: int, l1: float, lr: float) -> float:
    """Seconds per step of SAELens's SAETrainer (sampling included)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig
        from sae_lens.config import LoggingConfig, SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer

    class Batches(Iterator[Tensor]):
        def __next__(self) -> Tensor:
            return sample(batch)

    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=n, l1_coefficient=l1, device="cpu"))

    def run(n_steps: int) -> float:
        cfg = SAETrainerConfig(
            total_training_samples=n_steps * batch, train_batch_size_samples=batch, lr=lr, lr_end=lr / 10, device="cpu",
            logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
        )
        trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=Batches(), save_checkpoint_fn=lambda path: None)
        start = time.perf_counter()
        trainer.fit()
        return time.perf_counter() - start

    run(1)  # warm-up
    return run(steps) / steps


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sae_ortho.bench.bench_trainer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-latents", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=100, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--train-tokens", type=int, default=1_000_000, help="the activation cache to draw from")
    ap.add_argument("--random", type=int, default=0, metavar="D", help="random inputs of dimension D instead")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="also write the table (Markdown) to this file")
    a = ap.parse_args(argv)
    if a.out and not Path(a.out).parent.is_dir():
        ap.error(f"--out: the folder {Path(a.out).parent} does not exist")
    for flag in ("n_latents", "batch", "steps", "rounds", "threads", "train_tokens"):
        if getattr(a, flag) <= 0:
            ap.error(f"--{flag.replace('_', '-')} must be > 0, got {getattr(a, flag)}")
    if a.random < 0:
        ap.error(f"--random must be >= 0, got {a.random}")
    setup(0, a.threads)
    if a.random:
        d, label = a.random, f"random Gaussian inputs, d={a.random}"

        def sample(b: int) -> Tensor:
            return torch.randn(b, d)
    else:
        from sae_ortho.data import lm_data

        data = lm_data.prepare(lm_data.LMDataConfig(layers=(a.layer,), train_tokens=a.train_tokens))
        store = data.train[a.layer]
        from sae_ortho.data.activations import norm_scale

        sample, d = store.sampler(norm_scale(store)), store.d
        label = f"{data.lm.label}, block {a.layer} activations (streamed from the cache)"
    times: dict[str, list[float]] = {"ours": [], "SAELens": []}
    for _ in range(a.rounds):
        times["ours"].append(ours(sample, d, a.n_latents, a.batch, a.steps, 1.0, 1e-3))
        times["SAELens"].append(saelens(sample, d, a.n_latents, a.batch, a.steps, 1.0, 1e-3))
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [(f"{label}; {a.n_latents} latents, batch {a.batch}, {a.steps} steps x {a.rounds} alternating rounds, "
             f"{a.threads} threads"), "", "| trainer | ms / step | tokens / s |", "|---|---|---|"]
    lines += [f"| {k} | {v * 1e3:.1f} | {a.batch / v:,.0f} |" for k, v in med.items()]
    lines += ["", f"ours / SAELens throughput: {med['SAELens'] / med['ours']:.2f}x"]
    text = "\n".join(lines)
    print(text)
    if a.out:
        out = atomic_write(Path(a.out), f"# Trainer throughput: ours vs SAELens\n\nWritten by `python -m sae_ortho.bench.bench_trainer --out "
                       f"{Path(a.out).name}`.\n\n{text}\n")
        print(f"written to {out}")


if __name__ == "__main__":
    main()
