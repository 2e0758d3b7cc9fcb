"""The recipe study: which training recipe makes SAEs on language-model activations converge at
the study's default budget, measured on the cached activations notebook 02 uses.

Each recipe trains the same ReLU (or TopK) SAE with two seeds; at evenly spaced snapshots it
records, on held-out activations, FVE, the per-dimension FVU, L0, dead latents, the near-init
fraction (decoder rows with cos >= 0.7 to their own initial row) and the cross-seed agreement
(one-to-one Hungarian match of decoder and encoder, Paulo & Belrose 2025, and the many-to-one
decoder match). The recipes go from the plain loop the first version of notebook 02 used (batch
1024, no schedule) to the SAELens / dictionary_learning recipe of :func:`sae_ortho.training.recipe.lm_recipe`,
with variants of it (higher learning rate, no resampling, free decoder norms).

``python -m sae_ortho.experiments.recipe_study`` writes ``results/recipe_study.csv`` (one row per recipe, seed and
snapshot) and ``results/recipe_study.md``; notebook 02 plots them next to its own SAEs. Runs are
cached like every LM run (``sae_ortho.experiments.runs``), so the recipe that notebook 02 uses is trained once.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence

import pandas as pd
import torch

from sae_ortho import metrics
from sae_ortho.analysis import lm_eval
from sae_ortho.analysis.convergence import near_init_fraction
from sae_ortho.core import paths
from sae_ortho.core.atomic import atomic_write, replacing
from sae_ortho.core.reproducibility import setup
from sae_ortho.core.validation import check_bool
from sae_ortho.data import lm_data
from sae_ortho.data.activations import norm_scale
from sae_ortho.experiments import runs
from sae_ortho.models.sae import SAE
from sae_ortho.training.recipe import Recipe, lm_recipe

STUDY_CSV = "recipe_study.csv"
STUDY_MD = "recipe_study.md"
DEFAULT = "LM recipe (default)"


def recipes(kind_k: int, steps_256: int, d: int) -> dict[str, dict]:
    """Name -> keyword overrides of :class:`sae_ortho.experiments.runs.LMSAESpec` (``recipe=None`` is the default
    LM recipe). ``steps_256`` is the step count at batch 256, for recipes built from the default."""
    default = lm_recipe("relu", steps_256, d)
    return {
        DEFAULT: {"batch_size": 256, "recipe": None},
        "TopK, LM recipe with AuxK (default)": {"batch_size": 256, "kind": "topk", "k": kind_k, "recipe": None},
        "plain, batch 1024 (first version)": {"batch_size": 1024, "recipe": Recipe()},
        "plain, batch 256": {"batch_size": 256, "recipe": Recipe()},
        "LM recipe, lr 3e-3": {"batch_size": 256, "recipe": None, "lr": 3e-3},
        "LM recipe, L1 x 0.5": {"batch_size": 256, "recipe": None, "l1_scale": 0.5},
        "LM recipe, L1 x 2": {"batch_size": 256, "recipe": None, "l1_scale": 2.0},
        "LM recipe, free decoder norms (SAELens)": {
            "batch_size": 256,
            "recipe": dataclasses.replace(default, decoder_norm="free", init_decoder_norm=0.1),
        },
        "LM recipe, no resampling": {"batch_size": 256, "recipe": dataclasses.replace(default, resample_every=None)},
        "plain + b_dec median, batch 256": {"batch_size": 256, "recipe": Recipe(b_dec_init="geometric_median")},
        "TopK, plain": {"batch_size": 256, "kind": "topk", "k": kind_k, "recipe": Recipe()},
    }


def _snapshot_sae(spec: runs.LMSAESpec, d: int, state: dict[str, torch.Tensor]) -> SAE:
    sae = SAE(spec.configs(d)[0], generator=torch.Generator())
    sae.load_state_dict(state)
    return sae


def run_study(
    data: lm_data.LMData,
    layer: int,
    base: dict,
    names: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1),
    eval_rows: int = 16_384,
    device: str = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """Train every recipe (or ``names``) with ``seeds`` and measure it at each snapshot.

    Args:
        base: LMSAESpec keywords shared by all recipes (n_latents, tokens, lr, l1_coeff, k ...).

    Returns:
        One row per recipe, seed and snapshot: tokens, fve, fvu_dim, l0, dead, near_init, and for
        the first seed the cross-seed ``shared`` (one-to-one, encoder and decoder) and ``match``
        (many-to-one, decoder) fractions with the second seed.
    """
    progress = check_bool("progress", progress)
    if len(seeds) < 2:
        raise ValueError(f"seeds needs at least 2 seeds (cross-seed agreement), got {list(seeds)}")
    store, ev = data.train[layer], data.eval[layer]
    d = store.d
    scale = norm_scale(store)
    x_eval = ev.load()[:eval_rows] * scale  # training units, like the snapshots
    table = recipes(base.get("k", 32), max(20, -(-base["tokens"] // 256)), d)
    names = list(table) if names is None else list(names)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}; choose from {list(table)}")
    sample = store.sampler()
    rows = []
    for name in names:
        kw = {**base, **table[name]}
        kw["l1_coeff"] = kw["l1_coeff"] * kw.pop("l1_scale", 1.0)
        if kw.get("kind", "relu") == "relu":
            kw.pop("k", None)
        # the default recipes share their runs with notebook 02 (same name, spec and seeds)
        run_name = {DEFAULT: "vanilla", "TopK, LM recipe with AuxK (default)": "topk"}.get(name, "recipe")
        spec = runs.LMSAESpec(name=run_name, **kw)
        snaps = {}
        for s in seeds:
            start = time.perf_counter()
            runs.train_lm_sae(data, layer, spec, seed=s, sample=sample, device=device, progress=progress)
            seconds = time.perf_counter() - start
            snaps[s] = runs.load_snapshots(runs.lm_run_folder(data, layer, spec, s))
            init = spec.initial_decoder(d, s)
            for step, state in snaps[s].items():
                sae = _snapshot_sae(spec, d, state)
                m = lm_eval.activation_metrics(sae, x_eval)
                rows.append({
                    "recipe": name, "seed": s, "step": step, "tokens": step * spec.batch_size,
                    "fve": m["fve"], "fvu_dim": m["fvu_dim"], "l0": m["l0"], "dead": m["dead"],
                    "near_init": near_init_fraction(state["W_dec"], init), "train_seconds": seconds,
                })
        a, b = seeds[0], seeds[1]
        for step in snaps[a]:
            sa, sb = snaps[a][step], snaps[b][step]
            shared = metrics.shared_fraction(sa["W_dec"], sb["W_dec"], sa["W_enc"].T, sb["W_enc"].T)
            match = (metrics.match_fraction(sa["W_dec"], sb["W_dec"]) + metrics.match_fraction(sb["W_dec"], sa["W_dec"])) / 2
            for r in rows:
                if r["recipe"] == name and r["seed"] == a and r["step"] == step:
                    r["shared"], r["match"] = shared, match
    return pd.DataFrame(rows)


def random_reference(n_latents: int, d: int, seeds: Sequence[int] = (0, 1)) -> dict[str, float]:
    """Cross-seed agreement of two random dictionaries of the same shape (the floor)."""
    a, b = (SAE(runs.LMSAESpec("r", n_latents=n_latents).configs(d)[0], generator=torch.Generator().manual_seed(s))
            for s in seeds[:2])
    return {
        "shared": metrics.shared_fraction(a.W_dec.detach(), b.W_dec.detach(), a.W_enc.detach().T, b.W_enc.detach().T),
        "match": metrics.match_fraction(a.W_dec.detach(), b.W_dec.detach()),
    }


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """The last snapshot of every recipe: mean over seeds of the metrics, and the cross-seed
    agreement."""
    last = df[df.step == df.groupby("recipe").step.transform("max")]
    cols = ["fve", "fvu_dim", "l0", "dead", "near_init", "train_seconds"]
    out = last.groupby("recipe", sort=False)[cols].mean()
    out["tokens"] = last.groupby("recipe", sort=False).tokens.first()
    pairs = last.dropna(subset=["shared"]).set_index("recipe")
    out["shared"], out["match"] = pairs["shared"], pairs["match"]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sae_ortho.experiments.recipe_study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--other-layer", type=int, default=1, help="also harvested (notebook 02 uses both)")
    ap.add_argument("--train-tokens", type=int, default=1_000_000, help="tokens harvested (notebook 02's cache)")
    ap.add_argument("--sae-tokens", type=int, default=600_000, help="tokens drawn per SAE (notebook 02's default)")
    ap.add_argument("--eval-tokens", type=int, default=32_768)
    ap.add_argument("--n-latents", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--l1-coeff", type=float, default=0.7)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--recipes", nargs="*", default=None, help="names (default: all; see recipes())")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    for flag in ("train_tokens", "sae_tokens", "eval_tokens", "n_latents", "k", "threads"):
        if getattr(a, flag) <= 0:
            ap.error(f"--{flag.replace('_', '-')} must be > 0, got {getattr(a, flag)}")
    if not (a.lr > 0 and a.l1_coeff >= 0):
        ap.error("--lr must be > 0 and --l1-coeff >= 0")
    setup(0, a.threads)
    data = lm_data.prepare(lm_data.LMDataConfig(
        layers=tuple(dict.fromkeys((a.layer, a.other_layer))), train_tokens=a.train_tokens,
        eval_tokens=a.eval_tokens, device=a.device,
    ))
    base = {"n_latents": a.n_latents, "tokens": a.sae_tokens, "lr": a.lr, "l1_coeff": a.l1_coeff, "k": a.k}
    df = run_study(data, a.layer, base, a.recipes, device=a.device)
    ref = random_reference(a.n_latents, data.train[a.layer].d)
    df["model"] = data.lm.label
    paths.RESULTS.mkdir(parents=True, exist_ok=True)
    with replacing(paths.RESULTS / STUDY_CSV) as tmp:
        df.to_csv(tmp, index=False)
    table = summary(df)
    text = (
        f"# Recipe study ({data.lm.label}, block {a.layer}, {a.n_latents} latents, "
        f"{a.sae_tokens:,} training tokens per SAE drawn from {a.train_tokens:,} harvested, 2 seeds)\n\n"
        f"Written by `python -m sae_ortho.experiments.recipe_study`; last snapshot of each recipe, mean over seeds; "
        f"`shared` / `match`: cross-seed agreement (random dictionaries of the same shape: "
        f"shared {ref['shared']:.3f}, match {ref['match']:.3f}).\n\n"
        + table.round(4).to_markdown() + "\n"
    )
    atomic_write(paths.RESULTS / STUDY_MD, text)
    print(text)


if __name__ == "__main__":
    main()
