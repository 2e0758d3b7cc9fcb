"""Evaluation of SAEs trained on language-model activations.

- :func:`activation_metrics`: L0, fraction of variance explained, dead and dense latents on held-out
  activations;
- :func:`ce_table`: next-token cross-entropy of the model clean, with the residual zero-ablated,
  and with each SAE's reconstruction spliced in, plus the fraction of CE loss recovered.

SAEs are expected in raw activation units (an input scale used in training folded into the
weights, as :func:`sae_ortho.experiments.runs.train_or_load` returns them).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import scipy.stats
import torch
from torch import Tensor

from sae_ortho.analysis.geometry import geometric_median
from sae_ortho.core.validation import check_instance, check_int, check_tensor
from sae_ortho.data import lm
from sae_ortho.models.sae import SAE, SAEConfig

# A latent firing on more than this fraction of tokens is "dense" (it behaves like a bias).
DENSE_FRACTION = 0.1


@torch.no_grad()
def activation_metrics(sae: SAE, x: Tensor, batch: int = 8192) -> dict[str, float]:
    """Metrics of a single SAE on held-out activations.

    Args:
        sae: an un-stacked SAE.
        x: [N, d] activations.

    Returns:
        l0 (mean active latents per token), fve (fraction of variance explained, 1 - FVU),
        fvu_dim (the unexplained fraction per input dimension, averaged over dimensions: a few
        high-variance directions of a residual stream dominate FVE, and each dimension counts
        equally here), dead (fraction of latents that never fire on x), dense (fraction firing on
        more than ``DENSE_FRACTION`` of tokens), mse (squared error per token).
    """
    check_instance("sae", sae, SAE)
    if sae.stacked:
        raise ValueError("activation_metrics needs a single SAE; use sae.select(i) for a stack")
    check_tensor("x", x)
    if x.ndim != 2 or x.shape[1] != sae.cfg.d:
        raise ValueError(f"x must have shape [N, {sae.cfg.d}], got {tuple(x.shape)}")
    if len(x) < 2:
        raise ValueError(f"x must hold N >= 2 rows to have a variance, got {tuple(x.shape)}")
    batch = check_int("batch", batch, 1)
    fires = torch.zeros(sae.cfg.n_latents)
    sq_err_dim = torch.zeros(sae.cfg.d, dtype=torch.float64)
    l0_sum, n = 0.0, 0
    for start in range(0, len(x), batch):
        xb = x[start : start + batch].to(sae.W_dec.device, torch.float32)
        x_hat, codes = sae(xb)
        active = codes > 0
        fires += active.sum(0).cpu()
        l0_sum += active.sum().item()
        sq_err_dim += (xb - x_hat).double().square().sum(0).cpu()
        n += len(xb)
    xs = x.double()
    var_dim = (xs - xs.mean(0)).square().sum(0)
    sq_err = sq_err_dim.sum().item()
    if not var_dim.sum().item() > 100 * torch.finfo(torch.float32).eps ** 2 * xs.square().sum().item():
        raise ValueError("x has no variance over its rows: the fraction of variance explained is undefined")
    freq = fires / n
    return {
        "l0": l0_sum / n,
        "fve": 1 - sq_err / var_dim.sum().item(),
        "fvu_dim": (sq_err_dim / var_dim.clamp_min(1e-30)).mean().item(),
        "dead": (freq == 0).float().mean().item(),
        "dense": (freq > DENSE_FRACTION).float().mean().item(),
        "mse": sq_err / n,
    }


def splice(sae: SAE):
    """The residual -> SAE reconstruction map for :func:`sae_ortho.data.lm.ce_losses`."""

    def fn(resid: Tensor) -> Tensor:
        shape = resid.shape
        x_hat, _ = sae(resid.reshape(-1, shape[-1]).to(sae.W_dec.device, torch.float32))
        return x_hat.reshape(shape).to(resid)

    return fn


def ce_table(model: lm.LoadedModel, tokens: Tensor, layer: int, saes: Mapping[str, SAE]) -> pd.DataFrame:
    """CE loss clean / zero-ablated / spliced per SAE, and the fraction recovered.

    Args:
        tokens: [n_seq, ctx] held-out tokens.
        saes: name -> single SAE.

    Returns:
        One row per SAE: clean, zero, spliced (nats), ce_recovered, ce_increase (spliced - clean).
    """
    if not saes:
        raise ValueError("saes is empty: name at least one SAE to splice in")
    losses = lm.ce_losses(model, tokens, layer, {name: splice(s) for name, s in saes.items()})
    rows = [
        {
            "sae": name,
            "clean": losses["clean"],
            "zero": losses["zero"],
            "spliced": losses[name],
            "ce_recovered": lm.ce_loss_recovered(losses["clean"], losses["zero"], losses[name]),
            "ce_increase": losses[name] - losses["clean"],
        }
        for name in saes
    ]
    return pd.DataFrame(rows).set_index("sae")



def random_init_sae(cfg: SAEConfig, x: Tensor, seed: int) -> SAE:
    """The untrained reference of the same shape: a random decoder (unit rows), the tied encoder,
    and b_dec at the geometric median of ``x: [N, d]`` (where the training recipe starts)."""
    if cfg.n_models is not None:
        raise ValueError("random_init_sae builds a single SAE; got n_models set")
    sae = SAE(cfg, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.b_dec.copy_(geometric_median(x[:8192].float()))
    return sae


def paired_table(a: pd.DataFrame, b: pd.DataFrame, cols: list[str], confidence: float = 0.95,
                 seed: int = 0) -> pd.DataFrame:
    """Paired differences ``a - b`` per column over the rows both share (e.g. seeds): mean, the
    t-interval at ``confidence`` (few seeds: a bootstrap interval of 3 values would just be their
    range), the number of pairs, and whether the interval excludes 0."""
    del seed  # the t-interval needs no resampling; kept for a uniform signature
    common = a.index.intersection(b.index)
    if len(common) < 2:
        raise ValueError(f"need at least 2 paired rows, got {len(common)}")
    rows = []
    for c in cols:
        d = (a.loc[common, c].astype(float) - b.loc[common, c].astype(float)).to_numpy()
        n, mean = len(d), float(d.mean())
        half = float(scipy.stats.t.ppf((1 + confidence) / 2, n - 1) * d.std(ddof=1) / np.sqrt(n))
        rows.append({"metric": c, "diff": mean, "low": mean - half, "high": mean + half, "n": n,
                     "excludes_0": bool(mean - half > 0 or mean + half < 0)})
    return pd.DataFrame(rows).set_index("metric")
