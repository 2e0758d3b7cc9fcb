"""The sparse step trains the same SAEs as the dense one: a statistical check over seeds.

The two steps compute the same loss and gradients up to float rounding, so a run with each
follows the same trajectory until rounding differences grow; what must agree is what the study
reports. For each seed, an SAE is trained with ``kernel="dense"`` and with ``kernel="sparse"`` from
the same initialisation on the same batches, and scored on held-out inputs: FVE, L0, the fraction
of dead latents and the median nearest-neighbour |cos| of the decoder rows. The verdict per metric:

- **equal** when the bootstrap interval of the mean paired difference (sparse - dense) lies
  within ``± margin``, the margin being the seed-to-seed standard deviation of the dense runs (a
  difference smaller than what changing the seed does), with a floor for metrics that do not vary
  (TopK's L0 is k for every seed);
- **differs** when the interval lies outside it; **inconclusive** otherwise.

A positive control shows that the check can fail: the same comparison against dense runs with
half the learning rate (``control_lr_factor``) must come out "differs" on some metric.

    python -m sae_ortho.experiments.kernel_equivalence --tokens 600000 --out results/kernel_equivalence.md
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from sae_ortho import metrics
from sae_ortho.analysis import stats
from sae_ortho.core.atomic import atomic_write
from sae_ortho.core.reproducibility import setup
from sae_ortho.core.validation import check_choice, check_float, check_int
from sae_ortho.models.sae import SAE, SAE_KINDS, SAEConfig
from sae_ortho.training.recipe import lm_recipe
from sae_ortho.training.train import TrainConfig, train

METRICS = ("fve", "l0", "dead", "nn_cos")
EQUAL, DIFFERS, INCONCLUSIVE = "equal", "differs", "inconclusive"
FLOOR = {"fve": 1e-3, "l0": 0.05, "dead": 1e-3, "nn_cos": 1e-3}  # margins for metrics without seed spread


@dataclass(frozen=True)
class EquivalenceConfig:
    """One comparison: the SAE, its budget and the seeds.

    Attributes:
        kind, k: the SAE (``k`` for TopK).
        n_latents: dictionary size.
        tokens: training inputs per run (``tokens // batch_size`` steps of the study's recipe).
        batch_size, lr, l1_coeff: as in the study's LM runs (``l1_coeff`` for ReLU only).
        seeds: the seeds (pairs); at least 3.
        control_lr_factor: the positive control trains dense runs at this multiple of ``lr``.
    """

    kind: str = "topk"
    k: int | None = 32
    n_latents: int = 1024
    tokens: int = 600_000
    batch_size: int = 256
    lr: float = 1e-3
    l1_coeff: float = 1.0
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    control_lr_factor: float = 0.5

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, SAE_KINDS)
        if self.kind == "relu":
            object.__setattr__(self, "k", None)
        check_int("n_latents", self.n_latents, 2)
        check_int("batch_size", self.batch_size, 1)
        check_int("tokens", self.tokens, self.batch_size)
        check_float("lr", self.lr, 0.0, low_open=True)
        check_float("l1_coeff", self.l1_coeff, 0.0)
        check_float("control_lr_factor", self.control_lr_factor, 0.0, low_open=True)
        if len(set(self.seeds)) < 3:
            raise ValueError(f"seeds must hold at least 3 distinct seeds (pairs for an interval), got {self.seeds}")

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_size


def score(sae: SAE, x: Tensor) -> dict[str, float]:
    """FVE, L0, dead fraction (no firing on ``x``) and median nearest-neighbour |cos| on held-out ``x``."""
    with torch.no_grad():
        x_hat, codes = sae(x)
        return {"fve": 1 - float(metrics.fvu(x, x_hat)), "l0": float(metrics.l0(codes)),
                "dead": float(metrics.dead_fraction(codes)),
                "nn_cos": float(np.median(metrics.nn_abs_cos_distribution(sae.W_dec)))}


def run(cfg: EquivalenceConfig, sample: Callable[[int], Tensor], held_out: Tensor, d: int,
        arm: str, seed: int) -> dict[str, float]:
    """One trained SAE of an arm (``"dense"``, ``"sparse"`` or ``"control"``), scored."""
    torch.manual_seed(seed)  # the batches: the same for every arm of a seed
    sae = SAE(SAEConfig(d, cfg.n_latents, cfg.kind, cfg.k), generator=torch.Generator().manual_seed(seed))
    lr = cfg.lr * (cfg.control_lr_factor if arm == "control" else 1.0)
    tc = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=lr, l1_coeff=cfg.l1_coeff if cfg.kind == "relu" else 0.0,
                     log_every=cfg.steps, recipe=lm_recipe(cfg.kind, cfg.steps, d),
                     kernel="sparse" if arm == "sparse" else "dense")
    train(sae, sample, tc, progress=False)
    return score(sae, held_out)


def compare(cfg: EquivalenceConfig, sample: Callable[[int], Tensor], held_out: Tensor,
            arms: Sequence[str] = ("dense", "sparse", "control")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train every arm for every seed; returns (per-run scores, verdicts per arm and metric)."""
    d = held_out.shape[-1]
    runs = pd.DataFrame([{"arm": arm, "seed": s, **run(cfg, sample, held_out, d, arm, s)}
                         for s in cfg.seeds for arm in arms])
    return runs, verdicts(runs)


def verdicts(runs: pd.DataFrame) -> pd.DataFrame:
    """Per arm other than dense and per metric: the paired difference against dense, its interval,
    the margin (dense seed-to-seed sd, floored) and the verdict."""
    table = stats.compare(runs, "arm", "dense", list(METRICS))
    table = table[table["arm"] != "dense"].copy()
    sd = runs[runs["arm"] == "dense"][list(METRICS)].std(ddof=1)
    table["margin"] = [max(float(sd[m]), FLOOR[m]) for m in table["metric"]]
    table["verdict"] = [
        EQUAL if -mg <= lo and hi <= mg else DIFFERS if lo > mg or hi < -mg else INCONCLUSIVE
        for lo, hi, mg in zip(table["low"], table["high"], table["margin"])
    ]
    return table.reset_index(drop=True)[["arm", "metric", "n", "reference", "mean", "diff", "low", "high", "margin", "verdict"]]


def markdown(cfg: EquivalenceConfig, table: pd.DataFrame) -> str:
    lines = [(f"{cfg.kind}{'' if cfg.k is None else f' (k={cfg.k})'}, {cfg.n_latents} latents, {cfg.tokens:,} tokens "
              f"({cfg.steps} steps of {cfg.batch_size}), seeds {list(cfg.seeds)}:"), "",
             "| arm | metric | dense | this arm | paired diff [95% CI] | margin | verdict |", "|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['arm']} | {r['metric']} | {r['reference']:.4f} | {r['mean']:.4f} | "
                     f"{stats.fmt(r['diff'], r['low'], r['high'], 4, signed=True)} | {r['margin']:.4f} | {r['verdict']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sae_ortho.experiments.kernel_equivalence",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default="relu,topk")
    ap.add_argument("--n-latents", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=600_000)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--train-tokens", type=int, default=1_000_000, help="the activation cache to draw from")
    ap.add_argument("--held-out", type=int, default=8192, help="held-out activations scored")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write the tables (Markdown) to this file")
    a = ap.parse_args(argv)
    kinds = a.kinds.split(",")
    if any(k not in SAE_KINDS for k in kinds):
        ap.error(f"--kinds must be a comma-separated list of {SAE_KINDS}, got {a.kinds!r}")
    if a.out and not Path(a.out).parent.is_dir():
        ap.error(f"--out: the folder {Path(a.out).parent} does not exist")
    cfgs = [EquivalenceConfig(kind=k, n_latents=a.n_latents, tokens=a.tokens, seeds=tuple(range(a.seeds))) for k in kinds]
    setup(0, a.threads)
    from sae_ortho.data import lm_data
    from sae_ortho.data.activations import norm_scale

    data = lm_data.prepare(lm_data.LMDataConfig(layers=(a.layer,), train_tokens=a.train_tokens))
    store, held = data.train[a.layer], data.eval[a.layer]
    scale = norm_scale(store)
    held_out = held.load()[: a.held_out] * scale  # the first rows: the same set for every run
    parts = [(f"Activations: {data.lm.label}, block {a.layer}, unit-scaled; held-out: {a.held_out} eval activations; "
              f"the study's LM recipe; {a.threads} threads."), ""]
    for cfg in cfgs:
        _, table = compare(cfg, store.sampler(scale), held_out)
        text = markdown(cfg, table)
        print(text, flush=True)
        parts += [text, ""]
    if a.out:
        cmd = " ".join(sys.argv[1:] if argv is None else argv)
        atomic_write(Path(a.out), "# The sparse step against the dense step\n\nWritten by "
                     f"`python -m sae_ortho.experiments.kernel_equivalence {cmd}`.\n\n" + "\n".join(parts))


if __name__ == "__main__":
    main()
