"""The training loop every notebook uses.

``loss = ||x - x_hat||^2 + l1_coeff * sum(codes) + ortho_weight * ortho_penalty`` per model
(squared error summed over the input dimension, everything averaged over the batch; the L1 term is
dropped for TopK SAEs). Stacked SAEs train side by side with per-model ``lr``, ``l1_coeff`` and
``ortho_weight``: one Adam with unit step size, then each model's update is scaled by its own
learning rate, which is exactly Adam with per-model learning rates.

Decoder rows are kept at unit norm (the gradient's component along each row is removed before the
step and rows are renormalised after it, as in dictionary_learning), unless the recipe frees them.
The recipe (:class:`sae_ortho.training.recipe.Recipe`: b_dec from the data, learning-rate warm-up and decay, L1
warm-up, gradient clipping, dead-latent resampling or AuxK, free decoder norms with a norm-weighted
L1) is off by default.

Checkpoints (model, optimiser, step, history and the global RNG state that drives the data) are
versioned, hash-checked files (:mod:`sae_ortho.training.checkpoint`) written to a temporary file and renamed, so
an interrupted run never leaves a checkpoint that is later trusted and a damaged one is refused by
name; ``train`` resumes from one when its (canonical) configuration matches and refuses otherwise.
Every argument, the checkpoint folder included, is checked before the first step. A non-finite
loss or gradient stops training at once, and a checkpoint is never written with non-finite weights
or optimiser state. float16 / bfloat16 SAEs train with the orthogonality penalty computed in
float32 (:func:`sae_ortho.ortho.penalty_dtype`; in half precision its steep shapes overflow).

When torch.distributed runs with several processes (``torchrun``), ``train`` is data-parallel
(see :mod:`sae_ortho.training.distributed`): ``batch_size`` is the global batch, every process trains on its
slice, gradients are averaged, and rank 0 writes the checkpoints.
"""

from __future__ import annotations

import json
import signal
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from sae_ortho.analysis.geometry import geometric_median
from sae_ortho.core.validation import (
    ParameterTypeError,
    canonical,
    canonical_json,
    check_bool,
    check_callable,
    check_choice,
    check_default,
    check_float,
    check_instance,
    check_int,
    check_numbers,
    check_output_dir,
    check_str,
    check_tensor,
)
from sae_ortho.models.sae import SAE
from sae_ortho.models.sparse import Entries, decode_entries, encode_at
from sae_ortho.ortho import (
    BOUNDED_SHAPES,
    CertifiedCache,
    NeighbourCache,
    OrthoConfig,
    ortho_penalty,
    penalty_dtype,
)
from sae_ortho.training import distributed
from sae_ortho.training.checkpoint import load_checkpoint, save_checkpoint
from sae_ortho.training.distributed import CollectiveError, Group
from sae_ortho.training.recipe import Recipe, aux_k_loss, aux_k_residual_loss, resample_dead
from sae_ortho.training.runlog import RunLog, held_out_metrics

PerModel = float | tuple[float, ...]
# OrthoConfig fields added after runs were first keyed by their fingerprint: left out of it at
# their default, so existing run folders and checkpoints stay valid.
_LATER_ORTHO_FIELDS = {"check_rows": 64}


_L1_DEFAULT = 0.1  # TrainConfig.l1_coeff's default

KERNELS = ("dense", "sparse", "auto")
# kernel="auto": the sparse step while at most this fraction of the batch's codes is active
# (measured: ``python -m sae_ortho.bench.bench_trainer --density``, results/bench_trainer.md), on
# a CPU only; on other devices the dense step until measured there.
SPARSE_MAX_DENSITY = 0.1

# Per-model hyperparameters: the lower bound (None: unbounded) and whether it is excluded.
_PER_MODEL_BOUNDS = {"lr": (0.0, True), "l1_coeff": (0.0, False), "ortho_weight": (None, False)}


def _per_model_values(name: str, value: PerModel) -> PerModel:
    """A per-model hyperparameter checked and normalised: a float, or a tuple of floats."""
    low, low_open = _PER_MODEL_BOUNDS[name]
    if isinstance(value, (tuple, list, np.ndarray, Tensor)):
        return check_numbers(name, value, low, low_open=low_open)
    return check_float(name, value, low, low_open=low_open)


def _per_model(name: str, value: PerModel, n_models: int | None) -> Tensor:
    """The values of a per-model hyperparameter as a tensor [n_models] (a scalar tensor for a
    single SAE)."""
    value = _per_model_values(name, value)
    values = value if isinstance(value, tuple) else (value,)
    m = 1 if n_models is None else n_models
    if len(values) not in (1, m):
        raise ValueError(f"{name} needs 1 value or one per model (n_models={m}), got {len(values)}")
    t = torch.tensor(values, dtype=torch.float32).expand(m).clone()
    return t if n_models is not None else t[0]


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run (of a single SAE or a stack).

    Attributes:
        steps: optimiser steps.
        batch_size: inputs per step (per model); in a data-parallel job the global batch,
            divided evenly over the processes.
        lr: Adam learning rate, one value or one per stacked model.
        l1_coeff: L1 coefficient (ReLU SAEs), one value or one per model; >= 0. TopK SAEs have no
            L1 term: leave it at its default (or 0) for them.
        ortho_weight: lambda_orth, one value or one per model; negative rewards alignment and
            needs a bounded penalty shape.
        ortho: how the orthogonality penalty is computed.
        log_every: steps between history records.
        checkpoint_every: steps between checkpoints (0: only at the end, when a folder is given).
        stage_size: 0 trains every latent from the start. m > 0 grows the dictionary in stages of
            m latents (the incremental "batch approach"): stage s trains latents
            [s*m, (s+1)*m) with the earlier ones frozen and the later ones switched off, and the
            orthogonality penalty scores the new active latents against all latents so far,
            O(m^2 + m n) per step. Steps are split evenly over the stages.
        recipe: warm-up, decay, clipping, b_dec init, dead-latent remedies, decoder norms
            (:class:`sae_ortho.training.recipe.Recipe`; all off by default).
        snapshot_steps: steps after which a copy of the model's parameters is kept in the result
            (e.g. to follow cross-seed agreement and FVE against training tokens).
        kernel: how a step is computed. ``"dense"``: every product over all latents (the
            reference). ``"sparse"``: only the encoder's forward product is dense, everything
            after it runs over the active codes (:mod:`sae_ortho.models.sparse`; same loss and
            gradients up to rounding, several times fewer multiply-adds at low L0). ``"auto"``:
            sparse on a CPU in the steps where at most ``SPARSE_MAX_DENSITY`` of the codes are
            active, dense otherwise (early ReLU steps, other devices).
    """

    steps: int = 2000
    batch_size: int = 512
    lr: PerModel = 3e-3
    l1_coeff: PerModel = _L1_DEFAULT
    ortho_weight: PerModel = 0.0
    ortho: OrthoConfig = field(default_factory=OrthoConfig)
    log_every: int = 50
    checkpoint_every: int = 0
    stage_size: int = 0
    recipe: Recipe = field(default_factory=Recipe)
    snapshot_steps: tuple[int, ...] = ()
    kernel: str = "dense"

    def __post_init__(self) -> None:
        def put(name: str, value) -> None:
            object.__setattr__(self, name, value)

        for name in ("steps", "batch_size", "log_every"):
            put(name, check_int(name, getattr(self, name), 1))
        for name in ("checkpoint_every", "stage_size"):
            put(name, check_int(name, getattr(self, name), 0))
        for name in _PER_MODEL_BOUNDS:
            put(name, _per_model_values(name, getattr(self, name)))
        check_instance("ortho", self.ortho, OrthoConfig)
        check_instance("recipe", self.recipe, Recipe)
        check_choice("kernel", self.kernel, KERNELS)
        self.recipe.check_steps(self.steps)
        snaps = self.snapshot_steps
        if isinstance(snaps, (str, bytes)) or not isinstance(snaps, (tuple, list)):
            raise ParameterTypeError(f"snapshot_steps must be a tuple of ints in [1, steps={self.steps}], got {snaps!r}")
        put("snapshot_steps", tuple(check_int(f"snapshot_steps[{i}]", s, 1, self.steps) for i, s in enumerate(snaps)))
        weights = self.ortho_weight if isinstance(self.ortho_weight, tuple) else (self.ortho_weight,)
        if min(weights) < 0 and self.ortho.shape not in BOUNDED_SHAPES:
            raise ValueError(
                f"a negative ortho_weight needs a bounded ortho.shape {BOUNDED_SHAPES}; "
                f"shape={self.ortho.shape!r} would reward alignment without bound"
            )
        if self.stage_size == 1 and any(w != 0 for w in weights):
            raise ValueError(
                "stage_size=1 leaves the first stage's only latent without a neighbour for the "
                "orthogonality penalty; use stage_size >= 2 (or 0 for no stages)"
            )

    def check_kind(self, kind: str) -> None:
        """Options that have no effect for the SAE ``kind`` must keep their defaults (called by the
        trainer before any training, where the kind is known).

        Raises:
            ValueError: a TopK SAE with an ``l1_coeff`` other than its default (or 0), or a recipe
                option of the other kind (:meth:`sae_ortho.training.recipe.Recipe.check_kind`).
        """
        self.recipe.check_kind(kind)
        if kind == "topk":
            values = self.l1_coeff if isinstance(self.l1_coeff, tuple) else (self.l1_coeff,)
            if any(v not in (0.0, _L1_DEFAULT) for v in values):  # 0: "no L1", also what it is
                shown = values[0] if len(values) == 1 else values  # (x,) is x (a stack's sweep passes tuples)
                check_default("l1_coeff", shown, _L1_DEFAULT, "kind='topk' (TopK SAEs have no L1 term)", "kind='relu'")

    def fingerprint(self, sae: SAE) -> str:
        """A string that identifies the run, stored in checkpoints to refuse a mismatched resume.

        Canonical: configurations that train the same run give the same string (``0`` and
        ``0.0``, ``(x,)`` and ``x`` are the same value; see :func:`sae_ortho.core.validation.canonical`).
        Fields added later are left out at their default, so older checkpoints stay resumable.
        """
        train = canonical(self)
        for name, default in _LATER_ORTHO_FIELDS.items():
            if train["ortho"][name] == canonical(default):
                del train["ortho"][name]
        if train["kernel"] == "dense":  # added later: runs keyed before it keep their fingerprint
            del train["kernel"]
        return canonical_json({"train": train, "sae": sae.cfg.key_fields()})


@dataclass
class TrainResult:
    """history: name -> [n_records, (M,)] arrays (step, loss, recon, l1, ortho, l0, dead, and aux /
    resampled when the recipe uses them; in a data-parallel job averaged over the processes: the
    global batch's values); stale_agreement: for the cached method, the agreement of the stale
    candidates at each refresh; certified: for the certified method,
    :meth:`sae_ortho.ortho.CertifiedCache.summary` (work done and measured agreement); world_size: the
    number of processes that trained."""

    history: dict[str, np.ndarray]
    resumed_from: int = 0
    stale_agreement: list[float] = field(default_factory=list)  # cached method: see NeighbourCache
    stale_max_error: list[float] = field(default_factory=list)
    snapshots: dict[int, dict[str, Tensor]] = field(default_factory=dict)  # step -> copy of the state_dict
    certified: dict[str, float] = field(default_factory=dict)
    world_size: int = 1


def n_stages(cfg: TrainConfig, n_latents: int) -> int:
    """Number of dictionary stages (1 without stages)."""
    return -(-n_latents // cfg.stage_size) if cfg.stage_size else 1


def stage_bounds(cfg: TrainConfig, n_latents: int, step: int) -> tuple[int, int]:
    """Latents ``[start, end)`` trained at ``step`` (``(0, n_latents)`` without stages)."""
    if not cfg.stage_size:
        return 0, n_latents
    stages = n_stages(cfg, n_latents)
    stage = min(step * stages // cfg.steps, stages - 1)
    return stage * cfg.stage_size, min((stage + 1) * cfg.stage_size, n_latents)


def loss_terms(
    sae: SAE,
    x: Tensor,
    cfg: TrainConfig,
    l1: Tensor,
    ortho_w: Tensor,
    cache: NeighbourCache | CertifiedCache | None = None,
    stage: tuple[int, int] | None = None,
    dead: Tensor | None = None,
    group: Group | None = None,
) -> dict[str, Tensor]:
    """Loss and its components, each [(M,)], for inputs ``x: [(M,) batch, d]``.

    ``stage = (start, end)`` switches latents >= end off and scores only latents in
    [start, end) with the orthogonality penalty (against all latents < end). ``dead: [(M,) n]``
    (bool) enables the AuxK loss when the recipe asks for it. ``fired`` ([(M,) n] bool, latents
    active in the batch) is returned for the trainer's dead-latent tracking. With ``group`` (a
    data-parallel job, ``x`` this process's slice) the active latents are the union over the
    processes (the global batch's), and the penalty's neighbour search is split over them.
    """
    n = sae.cfg.n_latents
    start, end = stage or (0, n)
    sae._check_input(x)
    pre = sae.pre_acts(x)
    sparse = _sparse_entries(sae, pre, cfg.kernel, end)
    if sparse is not None:
        recon, sparsity, l0, active, residual = _sparse_terms(sae, x, pre, *sparse, cfg.recipe.decoder_norm)
    else:
        codes = sae.activate(pre)
        if end < n:
            codes = codes * (torch.arange(n, device=codes.device) < end).to(codes.dtype)
        x_hat = sae.decode(codes)
        residual = x - x_hat
        recon = residual.square().sum(-1).mean(-1)
        if cfg.recipe.decoder_norm == "free":  # SAELens: L1 weighted by the decoder row norms
            sparsity = (codes * sae.W_dec.norm(dim=-1).unsqueeze(-2)).sum(-1).mean(-1)
        else:
            sparsity = codes.sum(-1).mean(-1)
        fired = codes.detach() > 0  # one pass over [batch, n] serves L0 and the active set
        l0 = fired.float().sum(-1).mean(-1)
        active = fired.any(dim=-2)
    loss = recon + (l1 * sparsity if sae.cfg.kind == "relu" else 0.0)
    if group is not None:
        active = group.any_(active)
    use_ortho = bool((ortho_w != 0).any())
    if use_ortho:
        scored = active & (torch.arange(n, device=codes.device) >= start) if start > 0 else active
        pen = ortho_penalty(
            sae.W_dec, None, cfg.ortho, cache=cache, limit=end if end < n else None, active=scored,
            shard=group, W_enc=sae.W_enc,
        )
    else:
        pen = torch.zeros_like(recon)
    loss = loss + ortho_w * pen
    terms = {"loss": loss, "recon": recon, "l1": sparsity, "ortho": pen, "l0": l0}
    if cfg.recipe.aux_k is not None and dead is not None:
        if bool(dead.any()):
            aux_args = (sae.W_dec, residual.detach(), dead, cfg.recipe.aux_k, cfg.recipe.aux_coeff)
            if sparse is not None:
                aux = _sparse_aux_k_loss(sae, x, pre, *aux_args)
            else:
                aux = aux_k_loss(pre, *aux_args)
            terms["loss"] = loss + aux
        else:  # no dead latent: the AuxK term is 0 (skip its top-k and decode)
            aux = torch.zeros_like(recon)
        terms["aux"] = aux
    terms["fired"] = active
    return terms


def _sparse_entries(sae: SAE, pre: Tensor, kernel: str, end: int) -> tuple[Entries, Tensor] | None:
    """The active entries of the batch and their pre-activations when the step runs sparse (the
    ``kernel`` option), else None. Latents ``>= end`` (not yet added in staged training) are off."""
    if kernel == "dense" or (kernel == "auto" and pre.device.type != "cpu"):
        return None
    with torch.no_grad():
        p = pre.detach()
        if end < sae.cfg.n_latents and sae.cfg.kind == "relu":
            p = p.clone()
            p[..., end:] = float("-inf")
        if kernel == "auto":
            n = sae.cfg.n_latents
            density = sae.cfg.k / n if sae.cfg.kind == "topk" else float((p > 0).sum()) / p.numel()
            if density > SPARSE_MAX_DENSITY:
                return None
        if sae.cfg.kind == "relu":
            return Entries.positive(p)
        entries, values = Entries.topk(p, sae.cfg.k)  # as the dense step: the top k, then latents >= end off
        if end < sae.cfg.n_latents:
            values = values.masked_fill(entries.latent(sae.cfg.n_latents) >= end, float("-inf"))
        return entries, values


def _per_model_sum(values: Tensor, entries: Entries, batch: int, stacked: bool) -> Tensor:
    """[(M,)] the sum of per-entry ``values`` ([E]) over each model's entries, divided by ``batch``."""
    models = entries.n_rows // batch
    total = values.new_zeros(models).index_add(0, entries.rows // batch, values)
    return (total if stacked else total[0]) / batch


def _sparse_terms(sae: SAE, x: Tensor, pre: Tensor, entries: Entries, values: Tensor, decoder_norm: str):
    """Reconstruction, sparsity, L0, active latents and residual of the sparse step (see
    :mod:`sae_ortho.models.sparse`); the same quantities as the dense step, up to rounding."""
    acts = torch.relu(encode_at(x, sae.W_enc, sae.b_enc, sae.b_dec, values, entries))
    x_hat = decode_entries(acts, sae.W_dec, entries) + sae.b_dec.unsqueeze(-2)
    residual = x - x_hat
    recon = residual.square().sum(-1).mean(-1)
    batch, stacked = x.shape[-2], sae.stacked
    if decoder_norm == "free":  # SAELens: L1 weighted by the decoder row norms
        weighted = acts * sae.W_dec.norm(dim=-1).reshape(-1)[entries.cols]
        sparsity = _per_model_sum(weighted, entries, batch, stacked)
    else:
        sparsity = _per_model_sum(acts, entries, batch, stacked)
    on = acts.detach() > 0
    l0 = _per_model_sum(on.to(x.dtype), entries, batch, stacked)
    active = torch.bincount(entries.cols[on], minlength=entries.n_cols).reshape(sae.b_enc.shape) > 0
    return recon, sparsity, l0, active, residual


def _sparse_aux_k_loss(sae: SAE, x: Tensor, pre: Tensor, W_dec: Tensor, residual: Tensor, dead: Tensor,
                       aux_k: int, coeff: float) -> Tensor:
    """:func:`sae_ortho.training.recipe.aux_k_loss` over the dead latents' entries only."""
    k = min(aux_k, pre.shape[-1])
    with torch.no_grad():
        masked = pre.detach().masked_fill(~dead.unsqueeze(-2), float("-inf"))
    entries, values = Entries.topk(masked, k)
    raw = encode_at(x, sae.W_enc, sae.b_enc, sae.b_dec, values, entries)
    raw = torch.where(torch.isfinite(values), raw, torch.zeros_like(raw))  # fewer dead latents than k
    return aux_k_residual_loss(decode_entries(raw, W_dec, entries), residual, dead, aux_k, coeff)


def _frozen_slices(sae: SAE, start: int, end: int) -> list[tuple[Tensor, Tensor]]:
    """Views and copies of the parameters of latents outside [start, end) (incremental training:
    frozen below ``start``, not yet added from ``end``)."""
    views = []
    for lo, hi in ((0, start), (end, sae.cfg.n_latents)):
        if hi > lo:
            views += [sae.W_enc[..., lo:hi], sae.b_enc[..., lo:hi], sae.W_dec[..., lo:hi, :]]
    return [(v, v.detach().clone()) for v in views]


@torch.no_grad()
def _restore(frozen: list[tuple[Tensor, Tensor]]) -> None:
    for view, saved in frozen:
        view.copy_(saved)


def _clip_per_model(params: list[Tensor], max_norm: float, stacked: bool, norms: list[Tensor] | None = None) -> None:
    """Clip each model's gradient to global norm ``max_norm`` (one norm per model of a stack).

    ``norms``: the gradients' norms if known (a single SAE: what ``clip_grad_norm_`` computes
    first, so the result is the same to the bit)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    if not stacked:
        if norms is None:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        else:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, torch.linalg.vector_norm(torch.stack(norms)))
        return
    sq = sum(g.reshape(g.shape[0], -1).square().sum(-1) for g in grads)  # [M]
    factor = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(factor.reshape(-1, *([1] * (g.ndim - 1))))


class Stepper:
    """One optimiser step of the shared loop, used by :func:`train` and the benchmark.

    Holds the optimiser, the per-model hyperparameter tensors, the neighbour cache and the
    dead-latent counters (steps since each latent last fired). With ``group`` (a data-parallel
    job) each call gets the global batch and trains on this process's slice of it, averages the
    gradients over the processes, and returns the loss terms of the global batch.
    """

    def __init__(self, sae: SAE, cfg: TrainConfig, group: Group | None = None):
        check_instance("sae", sae, SAE)
        check_instance("cfg", cfg, TrainConfig)
        self.sae, self.cfg, self.group = sae, cfg, group
        cfg.check_kind(sae.cfg.kind)
        stages = n_stages(cfg, sae.cfg.n_latents)
        if cfg.steps < stages:
            raise ValueError(
                f"steps={cfg.steps} is fewer than the {stages} stages of stage_size={cfg.stage_size}; "
                "later stages would never train"
            )
        m = sae.cfg.n_models
        device = sae.W_dec.device
        self.lr = _per_model("lr", cfg.lr, m).to(device)
        self.l1 = _per_model("l1_coeff", cfg.l1_coeff, m).to(device)
        self.ortho_w = _per_model("ortho_weight", cfg.ortho_weight, m).to(device)
        if cfg.kernel != "dense" and not sae.W_enc.is_contiguous():
            # The tied initialisation leaves W_enc in [n, d] storage order (a transposed clone);
            # fused Adam then copies it to and from a contiguous buffer at every step. Same values,
            # contiguous storage (the dense step keeps the storage it has: its products, and so
            # the stored runs' bits, depend on it).
            with torch.no_grad():
                sae.W_enc.data = sae.W_enc.data.contiguous()
        # fused: one pass over the parameters per step instead of one per Adam operation
        self.opt = torch.optim.Adam(sae.parameters(), lr=1.0 if m is not None else float(self.lr), fused=True)
        self.cache = cfg.ortho.make_cache() if bool((self.ortho_w != 0).any()) else None
        named = list(sae.named_parameters())
        self.names, self.params = [name for name, _ in named], [p for _, p in named]
        lead = () if m is None else (m,)
        self.since_fired = torch.zeros(*lead, sae.cfg.n_latents, dtype=torch.long, device=device)

    def ortho_rows(self) -> Tensor:
        """The matrix whose rows the penalty compares: decoder rows or encoder columns (in the
        penalty's precision, :func:`sae_ortho.ortho.penalty_dtype`)."""
        sae = self.sae
        return penalty_dtype(sae.W_dec if self.cfg.ortho.target == "decoder" else sae.W_enc.transpose(-1, -2))

    def dead(self) -> Tensor:
        """[(M,) n] bool: latents that have not fired for ``recipe.dead_steps`` steps."""
        return self.since_fired >= self.cfg.recipe.dead_steps

    def state_dict(self) -> dict:
        return {"since_fired": self.since_fired.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.since_fired.copy_(state["since_fired"])

    def __call__(self, x: Tensor, step: int) -> dict[str, Tensor]:
        sae, cfg, recipe = self.sae, self.cfg, self.cfg.recipe
        x = check_tensor("the sampled batch x", x, finite=False).to(sae.W_dec.device)
        if x.ndim >= 2 and x.shape[-2] < cfg.batch_size:
            raise ValueError(
                f"the sampled batch x has {x.shape[-2]} row(s) (shape {tuple(x.shape)}), fewer than batch_size="
                f"{cfg.batch_size}: sample(batch_size) must return batch_size rows (use a smaller batch_size "
                "or more data)"
            )
        group = self.group
        local = x if group is None else group.slice(x)
        stage = stage_bounds(cfg, sae.cfg.n_latents, step)
        if isinstance(self.cache, NeighbourCache):  # candidates among the latents that exist in this stage
            self.cache.maybe_refresh(self.ortho_rows()[..., : stage[1], :], step, shard=group)
        l1_f = recipe.l1_factor(step)
        l1 = self.l1 if l1_f == 1.0 else self.l1 * l1_f
        dead = self.dead() if recipe.aux_k is not None else None
        terms = loss_terms(sae, local, cfg, l1, self.ortho_w, cache=self.cache, stage=stage, dead=dead, group=group)
        fired = terms.pop("fired")
        report = terms if group is None else self._global(terms)
        if not torch.isfinite(report["loss"]).all():
            bad = (~torch.isfinite(report["loss"].reshape(-1))).nonzero().flatten().tolist()
            raise FloatingPointError(f"non-finite loss at step {step} (models {bad[:10]}); last checkpoint kept")
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].sum().backward()
        if group is not None:
            for p in self.params:  # every process must join the average, with or without a gradient
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            group.mean_([p.grad for p in self.params])
        unit = recipe.decoder_norm == "unit"
        if unit:
            sae.remove_parallel_decoder_grad()
        norms = self._check_gradients(step)
        if recipe.grad_clip is not None:
            _clip_per_model(self.params, recipe.grad_clip, sae.stacked, norms)
        frozen = _frozen_slices(sae, *stage)
        lr_f = recipe.lr_factor(step, cfg.steps)
        if sae.cfg.n_models is not None:
            lr = self.lr if lr_f == 1.0 else self.lr * lr_f
            before = [p.detach().clone() for p in self.params]
            self.opt.step()
            with torch.no_grad():
                for p, p0 in zip(self.params, before):
                    scale = lr.reshape(-1, *([1] * (p.ndim - 1)))
                    p.copy_(p0 + scale * (p - p0))
        else:
            self.opt.param_groups[0]["lr"] = float(self.lr) * lr_f
            self.opt.step()
        if unit:
            sae.normalize_decoder()
        _restore(frozen)  # after renormalising, which could move a frozen unit row by an ulp
        with torch.no_grad():
            self.since_fired.add_(1).masked_fill_(fired, 0)
        report["dead"] = self.dead().float().mean(-1)
        if recipe.resample_every is not None:
            done = torch.zeros_like(self.since_fired, dtype=torch.bool)
            if (step + 1) % recipe.resample_every == 0 and step + 1 < cfg.steps:
                # from the global batch: the same on every process of a data-parallel job
                done = resample_dead(sae, x, self.dead(), self.opt)
                self.since_fired.masked_fill_(done, 0)
            report["resampled"] = done.float().sum(-1)
        return report

    def _check_gradients(self, step: int) -> list[Tensor]:
        """Refuse a step with a NaN or inf gradient (it would make the weights non-finite).

        Returns the gradients' norms (one pass over each; gradient clipping reuses them). Only a
        non-finite norm, which a finite gradient can also give by overflow, leads to the exact
        element-wise test."""
        grads = [(name, p.grad) for name, p in zip(self.names, self.params) if p.grad is not None]
        norms = [torch.linalg.vector_norm(g) for _, g in grads]  # as clip_grad_norm_ computes them
        if not grads or bool(torch.isfinite(torch.stack(norms)).all()):
            return norms
        if bool(torch.stack([torch.isfinite(g).all() for _, g in grads]).all()):
            return norms
        names = [name for name, g in grads if not bool(torch.isfinite(g).all())]
        where = ""
        if self.sae.stacked:
            bad = torch.zeros(self.sae.cfg.n_models, dtype=torch.bool, device=grads[0][1].device)
            for _, g in grads:
                bad |= ~torch.isfinite(g.reshape(g.shape[0], -1)).all(-1)
            where = f", models {bad.nonzero().flatten().tolist()[:10]}"
        raise FloatingPointError(
            f"non-finite gradient at step {step} (parameters {names}{where}, dtype {self.params[0].dtype}); "
            "last checkpoint kept"
        )

    def _global(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """The loss terms of the global batch: every term is a mean over equal-size slices."""
        names = list(terms)
        stacked = torch.stack([terms[k].detach() for k in names])
        self.group.mean_([stacked])
        return dict(zip(names, stacked))

    @torch.no_grad()
    def init_from_data(self, sample: Callable[[int], Tensor]) -> None:
        """Before the first step: ``b_dec`` from a data sample and free-norm decoder rows, as the
        recipe says (nothing with the default recipe)."""
        sae, recipe = self.sae, self.cfg.recipe
        if recipe.init_decoder_norm is not None:
            sae.W_dec.mul_(recipe.init_decoder_norm / sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            sae.W_enc.copy_(sae.W_dec.transpose(-1, -2))
        if recipe.b_dec_init == "zeros":
            return
        x = sample(recipe.b_dec_init_samples).to(sae.W_dec.device).float()  # [(M,) S, d]
        centre = x.mean(-2) if recipe.b_dec_init == "mean" else geometric_median(x)
        sae.b_dec.copy_(centre)


def _numpy(t: Tensor) -> np.ndarray:
    """A copy of ``t`` as a numpy array (float16 / bfloat16 as float32: numpy has no bfloat16)."""
    t = t.detach().cpu()
    return (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t).numpy().copy()


def _to(obj, device: torch.device):
    """obj with every tensor inside (dicts, lists, tuples) moved to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def train(
    sae: SAE,
    sample: Callable[[int], Tensor],
    cfg: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    desc: str = "train",
    group: Group | None = None,
    *,
    log: RunLog | str | Path | None = None,
    eval_data: Tensor | None = None,
    eval_every: int = 0,
    data_id: str | None = None,
) -> TrainResult:
    """Train ``sae`` in place on batches from ``sample(batch_size) -> x: [(M,) batch, d]``.

    Args:
        sae: the (possibly stacked) SAE.
        sample: draws a batch; it should use the global torch generator (saved in checkpoints),
            so a resumed run sees the same data as an uninterrupted one. In a data-parallel job it
            draws the global batch, the same on every process (same seed), and each process
            trains on its slice.
        cfg: hyperparameters.
        checkpoint_dir: where ``checkpoint.pt`` lives; resumed from if present and matching. In
            a data-parallel job rank 0 writes it and every process reads it, so it must be a
            folder that every process sees (any folder on one machine).
        progress: show a tqdm bar (rank 0 only in a data-parallel job).
        group: the data-parallel job; by default the running torch.distributed job if it has
            more than one process (:func:`sae_ortho.training.distributed.current`), else none.
        log: a :class:`~sae_ortho.training.runlog.RunLog` or the path of a JSONL file: every
            ``cfg.log_every`` steps the loss terms, every ``eval_every`` steps the held-out
            metrics (rank 0 only).
        eval_data: [N, d] held-out inputs in training units (N >= 2); every ``eval_every`` steps
            and at the end :func:`~sae_ortho.training.runlog.held_out_metrics` (FVE, L0, dead)
            go to the log and to ``TrainResult.history`` (keys ``eval_*``, steps in ``eval_step``).
        data_id: identifies the training data (e.g. a cache key, or the generator and its seed);
            stored in the checkpoint, and a resume on other data is refused.

    A checkpointed run on one process writes a checkpoint when it receives SIGINT or SIGTERM and
    raises :class:`TrainingInterrupted`; running it again resumes. A resume checks the
    configuration field by field (the error names the fields that differ) and the data's
    identity; ``cfg.steps`` may be raised (the run continues to the new end; schedules that count
    from the end move with it), ``log_every`` and ``checkpoint_every`` changed.

    Raises:
        FloatingPointError: a non-finite loss or gradient, naming the step (a checkpoint is never
            written with non-finite weights); the last checkpoint is kept.
        TypeError: ``cfg`` is not a :class:`TrainConfig` (e.g. a dict).
        TrainingInterrupted: SIGINT or SIGTERM; the checkpoint of the step reached is written.
        ValueError: a sampled batch with fewer rows than ``batch_size``, an option without effect
            for the SAE's kind (:meth:`TrainConfig.check_kind`), a checkpoint in
            ``checkpoint_dir`` from a different configuration or data, or
            ``checkpoint_dir`` is a file (checked before training), a batch that does not divide
            over the processes, or processes seeded differently.
        sae_ortho.training.checkpoint.CheckpointError: a damaged, truncated or other-version checkpoint (a
            ``ValueError``; the message names the file).
        OSError: a checkpoint could not be written (e.g. a full disk); the previous one is kept.
        sae_ortho.training.distributed.CollectiveError: another process stopped (or the network failed); the
            message names the step and the last checkpoint, from which a new run resumes.
    """
    check_instance("cfg", cfg, TrainConfig)
    check_callable("sample", sample)
    check_bool("progress", progress)
    check_str("desc", desc, empty=True)
    group = group if group is not None else distributed.current()
    world = 1 if group is None else group.world
    if cfg.batch_size % world:
        raise ValueError(
            f"batch_size={cfg.batch_size} is the global batch and must divide evenly over the {world} processes"
        )
    stepper = Stepper(sae, cfg, group)
    opt, cache = stepper.opt, stepper.cache
    # The output folder is checked before any training, not when the first checkpoint is due.
    ckpt = None if checkpoint_dir is None else check_output_dir("checkpoint_dir", checkpoint_dir) / "checkpoint.pt"
    if ckpt is not None and ckpt.is_dir():
        raise ValueError(f"checkpoint_dir holds a folder named {ckpt.name}: {ckpt}; move it away or pass another folder")
    fingerprint = cfg.fingerprint(sae)
    data_id = check_str("data_id", data_id, optional=True)
    eval_every = check_int("eval_every", eval_every, 0)
    if eval_data is not None:
        check_tensor("eval_data", eval_data, 2)
        if eval_data.shape[-1] != sae.cfg.d or len(eval_data) < 2:
            raise ValueError(f"eval_data must have shape [N >= 2, {sae.cfg.d}], got {tuple(eval_data.shape)}")
    elif eval_every:
        raise ValueError("eval_every needs eval_data (held-out inputs [N, d])")
    history: dict[str, list[np.ndarray]] = {}
    snapshots: dict[int, dict[str, Tensor]] = {}
    start = 0
    if ckpt is not None and ckpt.exists():
        state = load_checkpoint(ckpt)
        _check_resume(ckpt, state, fingerprint, cfg, data_id)
        sae.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        history, start = state["history"], state["step"]
        snapshots = state.get("snapshots", {})
        if cache is not None and state.get("cache") is not None:
            cache.load_state_dict(_to(state["cache"], sae.W_dec.device))
        if state.get("stepper") is not None:
            stepper.load_state_dict(state["stepper"])
        written_by = state.get("world_size", 1)
        if written_by != world and (group is None or group.rank == 0):
            # The data stream (global batches from the shared generator) does not depend on the
            # number of processes, so the run continues as it would have; only the float
            # rounding of the gradient average differs.
            warnings.warn(
                f"resuming {ckpt} (step {start}), written by {written_by} process(es), with {world}: "
                "the same global batches follow; results agree with an uninterrupted run to float "
                "rounding, not bit for bit",
                stacklevel=2,
            )
    else:
        stepper.init_from_data(sample)
    if group is not None:
        _start_together(group, sae, start, ckpt)

    def checkpoint(step: int) -> None:
        if ckpt is None:
            return
        if group is not None:
            same = group.agree(torch.cat([distributed.fingerprint(p) for p in sae.parameters()]))
            if not same:
                raise RuntimeError(f"the parameters differ between processes at step {step}; not writing {ckpt}")
            if group.rank != 0:
                return
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(
            ckpt,
            {
                "fingerprint": fingerprint,
                "model": sae.state_dict(),
                "optimizer": opt.state_dict(),
                "rng": torch.get_rng_state(),
                "history": history,
                "step": step,
                "cache": None if cache is None else cache.state_dict(),
                "stepper": stepper.state_dict(),
                "snapshots": snapshots,
                "world_size": world,
                "data": data_id,
            },
            finite=("model", "optimizer"),
        )

    snap_at = set(cfg.snapshot_steps)
    show = progress and (group is None or group.rank == 0)
    runlog = None
    if log is not None and (group is None or group.rank == 0):
        runlog = log if isinstance(log, RunLog) else RunLog(log)
        runlog.resume(start)
    eval_at = set(range(eval_every, cfg.steps + 1, eval_every)) | {cfg.steps} if eval_data is not None else set()

    def evaluate(step: int) -> None:
        metrics = held_out_metrics(sae, eval_data)
        for k, v in {"eval_step": np.asarray(step), **{k: _numpy(v) for k, v in metrics.items()}}.items():
            history.setdefault(k, []).append(v)
        if runlog is not None:
            runlog.write({"step": step, **metrics, "eval_rows": len(eval_data)})

    # refresh interval: tqdm's default, or TQDM_MININTERVAL from the environment (the Makefile sets 30 s)
    bar = tqdm(range(start, cfg.steps), desc=desc, disable=not show, initial=start, total=cfg.steps)
    saved = start if ckpt is not None and ckpt.exists() else None
    step = start
    # SIGINT / SIGTERM: finish the step, write a checkpoint, stop (one process with a checkpoint:
    # several processes would have to agree on the step, so a job keeps its periodic checkpoints).
    stop: list[int] = []
    handlers = _catch_signals(stop) if ckpt is not None and group is None else {}
    try:
        for step in bar:
            terms = stepper(sample(cfg.batch_size), step)
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                rec = {k: _numpy(v) for k, v in terms.items()}
                rec["step"] = np.asarray(step + 1)
                for k, v in rec.items():
                    history.setdefault(k, []).append(v)
                if runlog is not None:
                    runlog.write({"step": step + 1, **{k: v for k, v in rec.items() if k != "step"}})
                if show:
                    bar.set_postfix(loss=f"{float(terms['loss'].detach().mean()):.4g}", refresh=False)
            if step + 1 in eval_at:
                evaluate(step + 1)
            if step + 1 in snap_at:
                snapshots[step + 1] = {k: v.detach().cpu().clone() for k, v in sae.state_dict().items()}
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
                checkpoint(step + 1)
                saved = step + 1
            if stop and step + 1 < cfg.steps:
                checkpoint(step + 1)
                raise TrainingInterrupted(stop[0], step + 1, ckpt)
        if ckpt is not None and start < cfg.steps:
            checkpoint(cfg.steps)
    except CollectiveError as e:
        kept = f"The checkpoint of step {saved} in {ckpt.parent} is kept" if saved is not None else "No checkpoint was written"
        raise CollectiveError(f"training stopped at step {step}: {e}. {kept}; run the same command again to resume") from e
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if runlog is not None and not isinstance(log, RunLog):
            runlog.close()
    return TrainResult(
        {k: np.stack(v) for k, v in history.items()},
        resumed_from=start,
        stale_agreement=list(cache.stale_agreement) if isinstance(cache, NeighbourCache) else [],
        stale_max_error=list(cache.stale_max_error) if isinstance(cache, NeighbourCache) else [],
        snapshots=snapshots,
        certified=cache.summary() if isinstance(cache, CertifiedCache) else {},
        world_size=world,
    )


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT or SIGTERM after writing the checkpoint of ``step``."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(
            f"training stopped by {signal.Signals(signum).name} at step {step}; checkpoint written to "
            f"{checkpoint}: run the same command (or call) again to resume"
        )


def _catch_signals(stop: list[int]) -> dict:
    """Record SIGINT / SIGTERM in ``stop`` instead of dying; returns the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # signal handlers can only be set from the main thread
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda s, _frame: stop.append(s))
    return previous


def _leaf_differences(a: object, b: object, path: str = "") -> list[str]:
    """Dotted paths of the leaves where two JSON trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _leaf_differences(a.get(k), b.get(k), f"{path}.{k}".lstrip("."))]
    return [] if a == b else [f"{path} ({a!r} in the checkpoint, {b!r} now)"]


_MAY_CHANGE_ON_RESUME = ("train.steps ", "train.log_every ", "train.checkpoint_every ")


def _check_resume(ckpt: Path, state: dict, fingerprint: str, cfg: TrainConfig, data_id: str | None) -> None:
    """Refuse a resume with another configuration (naming the fields) or other data; allow more steps."""
    saved = state.get("fingerprint")
    if saved != fingerprint:
        try:
            diff = _leaf_differences(json.loads(saved), json.loads(fingerprint))
        except (TypeError, ValueError):
            diff = ["(the checkpoint does not record its fields)"]
        # How long to train and how often to log or checkpoint may change; nothing else.
        diff = [d for d in diff if not d.startswith(_MAY_CHANGE_ON_RESUME)]
        if diff:
            raise ValueError(
                f"checkpoint {ckpt} is from a different configuration: {'; '.join(diff)}. Use the "
                "checkpoint's values, another folder, or remove the checkpoint to start again"
            )
    if state["step"] > cfg.steps:
        raise ValueError(f"checkpoint {ckpt} is at step {state['step']}, beyond steps={cfg.steps}; steps may only be raised")
    if data_id is not None and state.get("data") is not None and state["data"] != data_id:
        raise ValueError(
            f"checkpoint {ckpt} was trained on data {state['data']!r}, not {data_id!r}: resuming would continue "
            "on other data; pass the same data (and seed), or another folder"
        )


def _start_together(group: Group, sae: SAE, start: int, ckpt: Path | None) -> None:
    """Check that every process resumes from the same step and draws the same data, and give
    every process rank 0's parameters (as DistributedDataParallel does)."""
    if not group.agree(torch.tensor([start], dtype=torch.long)):
        raise ValueError(
            f"the processes resume from different steps (this one from {start}): the checkpoint folder "
            f"{None if ckpt is None else ckpt.parent} must be one that every process sees"
        )
    if not group.agree(distributed.rng_fingerprint()):
        raise ValueError(
            "the global torch generator differs between processes: seed every process the same "
            "(sae_ortho.core.reproducibility.setup(seed)), so that all draw the same global batch"
        )
    group.broadcast_(list(sae.parameters()))
