"""Training throughput of our SAE trainer (dense and sparse step) against SAELens's, on the same
data and machine.

``python -m sae_ortho.bench.bench_trainer`` trains SAEs of the same shape with every trainer on
batches drawn the same way from the same cached language-model activations (or random inputs with
``--random D``), alternating the trainers in one process (so a slower or busier moment of the
machine hits all of them), and prints milliseconds per step, tokens per second and their ratios.

- ours: :class:`sae_ortho.training.train.Stepper` (the loop of :func:`sae_ortho.training.train.train`,
  with the study's LM recipe), with ``kernel="dense"`` (every product over all latents) and
  ``kernel="sparse"`` (only the encoder's forward product dense; :mod:`sae_ortho.models.sparse`).
- SAELens: ``sae_lens.SAETrainer`` with its ``StandardTrainingSAE`` (ReLU + L1) or
  ``TopKTrainingSAE``, and for TopK also with ``use_sparse_activations=True`` (SAELens's own
  sparse decoder), Adam, no evaluation or logging.

Every trainer starts from the same weights; for ReLU SAEs the encoder bias is set so that the
initial L0 is ``--relu-l0`` (the study's SAEs train at L0 of about 30-40; a fresh ReLU SAE fires
half its latents, which is no steady state to time). ``--full-run STEPS`` also times whole
training runs of the notebook's configuration (:func:`sae_ortho.training.train.train`, ReLU and
TopK, from a fresh initialisation: the early dense steps of ``kernel="auto"`` included).
"""

from __future__ import annotations

import argparse
import statistics
import sys
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
from sae_ortho.training.train import Stepper, TrainConfig, train

K = 32  # TopK's k (the study's)
L1 = {"relu": 1.0}  # ours: the study's order of magnitude on unit-scaled activations
TARGET_SECONDS = 2.0  # each timed block runs about this long


def initial_sae(kind: str, d: int, n: int, sample: Callable[[int], Tensor], relu_l0: float) -> SAE:
    """The SAE every trainer starts from: random unit decoder rows, tied encoder; for ReLU the
    encoder bias that gives L0 = ``relu_l0`` on a data sample."""
    sae = SAE(SAEConfig(d, n, kind, K if kind == "topk" else None), generator=torch.Generator().manual_seed(0))
    if kind == "relu":
        with torch.no_grad():
            pre = sae.pre_acts(sample(1024))
            sae.b_enc.fill_(-float(pre.flatten().quantile(1 - relu_l0 / n)))
    return sae


def ours(sae0: SAE, kernel: str, sample: Callable[[int], Tensor], batch: int) -> Callable[[int], float]:
    """A timer: ``run(steps)`` -> seconds per step of our trainer (sampling included)."""
    sae = SAE(sae0.cfg)
    sae.load_state_dict(sae0.state_dict())
    steps_total = 10**6  # the recipe's schedule: mid-run (no warm-up, no decay in the timed steps)
    cfg = TrainConfig(steps=steps_total, batch_size=batch, lr=1e-4, l1_coeff=L1.get(sae.cfg.kind, 0.0),
                      recipe=lm_recipe(sae.cfg.kind, steps_total, sae.cfg.d), kernel=kernel)
    stepper = Stepper(sae, cfg)
    at = [steps_total // 2]

    def run(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            stepper(sample(batch), at[0])
            at[0] += 1
        return (time.perf_counter() - start) / steps

    return run


def saelens(sae0: SAE, sparse: bool, sample: Callable[[int], Tensor], batch: int) -> Callable[[int], float]:
    """A timer for SAELens's SAETrainer from the same initial weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sae_lens import (
            StandardTrainingSAE,
            StandardTrainingSAEConfig,
            TopKTrainingSAE,
            TopKTrainingSAEConfig,
        )
        from sae_lens.config import LoggingConfig, SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer

    class Batches(Iterator[Tensor]):
        def __next__(self) -> Tensor:
            return sample(batch)

    d, n = sae0.cfg.d, sae0.cfg.n_latents
    if sae0.cfg.kind == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=n, k=K, device="cpu", use_sparse_activations=sparse))
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=n, l1_coefficient=L1["relu"], device="cpu"))
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(getattr(sae0, name))

    def run(steps: int) -> float:
        cfg = SAETrainerConfig(
            total_training_samples=steps * batch, train_batch_size_samples=batch, lr=1e-4, lr_end=1e-4, device="cpu",
            logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
        )
        trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=Batches(), save_checkpoint_fn=lambda path: None)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit()
        return (time.perf_counter() - start) / steps

    return run


def trainers(kind: str) -> list[str]:
    return ["SAELens"] + (["SAELens sparse"] if kind == "topk" else []) + ["ours dense", "ours sparse"]


def time_config(kind: str, n: int, batch: int, sample, d: int, rounds: int, relu_l0: float) -> dict[str, float | str]:
    """Median seconds per step of every trainer at one shape, alternating the trainers (a message
    for a trainer that fails to train)."""
    sae0 = initial_sae(kind, d, n, sample, relu_l0)
    timers = {}
    for name in trainers(kind):
        if name.startswith("SAELens"):
            timers[name] = saelens(sae0, name.endswith("sparse"), sample, batch)
        else:
            timers[name] = ours(sae0, name.split()[1], sample, batch)
    steps, failed = {}, {}
    for name, run in timers.items():  # warm-up, and the steps that fill TARGET_SECONDS
        try:
            run(2)
        except Exception as e:  # noqa: BLE001 (a peer that cannot train here is reported, not fatal)
            failed[name] = f"fails: {type(e).__name__}"
            continue
        steps[name] = max(3, min(200, round(TARGET_SECONDS / run(2))))
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, n_steps in steps.items():
            times[name].append(timers[name](n_steps))
    return {name: statistics.median(times[name]) if name in times else failed[name] for name in timers}


def full_runs(sample, d: int, n: int, batch: int, steps: int) -> list[str]:
    """Whole training runs of the notebook's configuration, dense against auto, same seed."""
    lines = ["| kind | kernel | seconds | tokens / s | final L0 | final recon |", "|---|---|---|---|---|---|"]
    ratios = []
    for kind in ("relu", "topk"):
        secs = {}
        for kernel in ("dense", "auto"):
            torch.manual_seed(0)
            sae = SAE(SAEConfig(d, n, kind, K if kind == "topk" else None), generator=torch.Generator().manual_seed(0))
            cfg = TrainConfig(steps=steps, batch_size=batch, lr=1e-3, l1_coeff=L1.get(kind, 0.0), log_every=steps,
                              recipe=lm_recipe(kind, steps, d), kernel=kernel)
            start = time.perf_counter()
            res = train(sae, sample, cfg, progress=False)
            secs[kernel] = time.perf_counter() - start
            lines.append(f"| {kind} | {kernel} | {secs[kernel]:.1f} | {steps * batch / secs[kernel]:,.0f} | "
                         f"{float(res.history['l0'][-1]):.1f} | {float(res.history['recon'][-1]):.4f} |")
        ratios.append(f"{kind}: auto / dense throughput {secs['dense'] / secs['auto']:.2f}x")
    return lines + [""] + ratios


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sae_ortho.bench.bench_trainer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default="relu,topk", help="comma-separated: relu, topk")
    ap.add_argument("--n-latents", default="1024", help="comma-separated dictionary sizes")
    ap.add_argument("--batch", default="256", help="comma-separated batch sizes")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    ap.add_argument("--relu-l0", default="32", help="comma-separated initial L0s of the ReLU SAEs (several: where "
                    "the sparse step stops paying)")
    ap.add_argument("--full-run", type=int, default=0, metavar="STEPS",
                    help="also time whole runs of STEPS steps at the first size and batch (dense vs auto)")
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--train-tokens", type=int, default=1_000_000, help="the activation cache to draw from")
    ap.add_argument("--random", type=int, default=0, metavar="D", help="random inputs of dimension D instead")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="also write the tables (Markdown) to this file")
    a = ap.parse_args(argv)
    if a.out and not Path(a.out).parent.is_dir():
        ap.error(f"--out: the folder {Path(a.out).parent} does not exist")
    kinds = a.kinds.split(",")
    if not kinds or any(k not in ("relu", "topk") for k in kinds):
        ap.error(f"--kinds must be a comma-separated list of relu, topk; got {a.kinds!r}")
    try:
        sizes, batches = _ints(a.n_latents), _ints(a.batch)
    except ValueError:
        ap.error(f"--n-latents and --batch must be comma-separated integers, got {a.n_latents!r}, {a.batch!r}")
    for flag, values in (("n-latents", sizes), ("batch", batches)):
        if min(values) <= K:
            ap.error(f"--{flag} values must be > {K}, got {values}")
    for flag in ("rounds", "threads", "train_tokens"):
        if getattr(a, flag) <= 0:
            ap.error(f"--{flag.replace('_', '-')} must be > 0, got {getattr(a, flag)}")
    if a.random < 0 or a.full_run < 0:
        ap.error("--random and --full-run must be >= 0")
    try:
        relu_l0s = [float(v) for v in a.relu_l0.split(",")]
    except ValueError:
        ap.error(f"--relu-l0 must be comma-separated numbers, got {a.relu_l0!r}")
    if not all(0 < v < min(sizes) for v in relu_l0s):
        ap.error(f"--relu-l0 values must be in (0, {min(sizes)}), got {relu_l0s}")
    setup(0, a.threads)
    if a.random:
        d, label = a.random, f"random Gaussian inputs, d={a.random}"

        def sample(b: int) -> Tensor:
            return torch.randn(b, d)
    else:
        from sae_ortho.data import lm_data
        from sae_ortho.data.activations import norm_scale

        data = lm_data.prepare(lm_data.LMDataConfig(layers=(a.layer,), train_tokens=a.train_tokens))
        store = data.train[a.layer]
        sample, d = store.sampler(norm_scale(store)), store.d
        label = f"{data.lm.label}, block {a.layer} activations (d={d}, streamed from the cache)"
    lines = [(f"{label}; TopK k={K}, ReLU + L1 from the L0 shown; {a.rounds} alternating rounds of about "
              f"{TARGET_SECONDS:g} s per trainer (median); {a.threads} threads; {_cpu()}"), "",
             "| kind | latents | L0 | batch | trainer | ms / step | tokens / s | vs SAELens | vs ours dense |",
             "|---|---|---|---|---|---|---|---|---|"]
    for kind in kinds:
        for n in sizes:
            for l0 in relu_l0s if kind == "relu" else [K]:
                for batch in batches:
                    med = time_config(kind, n, batch, sample, d, a.rounds, l0)
                    for name, sec in med.items():
                        head = f"| {kind} | {n} | {l0:g} | {batch} | {name} |"
                        if isinstance(sec, str):  # the trainer failed
                            row = f"{head} {sec} | | | |"
                        else:
                            row = (f"{head} {sec * 1e3:.1f} | {batch / sec:,.0f} | {med['SAELens'] / sec:.2f}x | "
                                   f"{med['ours dense'] / sec:.2f}x |")
                        lines.append(row)
                        print(row, flush=True)
    if a.full_run:
        lines += ["", f"Whole runs: {a.full_run} steps, {sizes[0]} latents, batch {batches[0]}, the study's recipe:", ""]
        lines += full_runs(sample, d, sizes[0], batches[0], a.full_run)
    text = "\n".join(lines)
    print(text)
    if a.out:
        out = atomic_write(Path(a.out), "# Trainer throughput: ours (dense and sparse step) vs SAELens\n\n"
                           f"Written by `python -m sae_ortho.bench.bench_trainer {' '.join(sys.argv[1:] if argv is None else argv)}`.\n\n{text}\n")
        print(f"written to {out}")


def _cpu() -> str:
    from sae_ortho.core.numerics import cpu_info

    info = cpu_info()
    return f"{info.get('model_name', 'unknown CPU')} ({info.get('vendor', '?')})"


if __name__ == "__main__":
    main()
