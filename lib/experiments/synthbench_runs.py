"""Training and scoring SAEs on SynthSAEBench (:mod:`sae_ortho.data.synthbench`): this project's SAEs and
SAELens's own trainers side by side, on the same cached samples.

- :func:`train_ours`: this project's ReLU+L1 and TopK SAEs (with or without the orthogonality
  loss), trained as stacks; a seed is the same initialisation in every stack (paired seeds).
- :func:`train_peer` / :class:`PeerJob`: SAELens's standard L1, BatchTopK and Matryoshka BatchTopK
  through ``SyntheticSAERunner``, optionally in a second process (the second CPU core).
- :class:`Scorer`: SAELens's evaluator, this project's metrics beside it, the hierarchy readout
  (:mod:`sae_ortho.analysis.hierarchy_readout`) and the convergence gates (:mod:`sae_ortho.analysis.convergence`).
- :func:`l1_throughput`: both trainers' samples/s side by side.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

import numpy as np
import safetensors.torch
import torch
from torch import Tensor, nn
from tqdm import tqdm

from sae_ortho.core.validation import check_float, check_int
from sae_ortho.data.synthbench import (
    BenchConfig,
    BenchData,
    HiddenSampler,
    SAELensView,
    evaluate,
    hierarchy_parents,
    prepare,
)
from sae_ortho.experiments import store as st


def check_sweep(cfg: BenchConfig, **sweeps) -> None:
    """Validate sweep values before any long work, naming the parameter.

    Keyword arguments ending in ``ks`` hold k values (ints in [1, width]); ``ortho_weights`` holds
    lambda_orth values (finite, >= 0, including 0); the others hold L1 coefficients (> 0).
    """
    for name, values in sweeps.items():
        values = list(values)
        if not values:
            raise ValueError(f"{name} is empty")
        for v in values:
            if name.endswith("ks"):
                if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= cfg.width:
                    raise ValueError(f"{name}: every k must be an int in [1, width={cfg.width}], got {v!r}")
            elif name == "ortho_weights":
                check_float(name, v, 0.0, None, low_open=False)
            else:
                check_float(name, v, 0.0, None, low_open=True)
        if name == "ortho_weights" and 0 not in values:
            raise ValueError(f"ortho_weights must include 0 (the baseline), got {values}")
        if len(set(values)) != len(values):
            raise ValueError(f"{name} has repeated values: {values}")


# --------------------------------------------------------------------------------------------
# This project's SAEs, trained as stacks on the run's samples


@dataclass(frozen=True)
class OurSpec:
    """One of this project's SAEs: ``kind`` "relu" (L1 coefficient ``sparsity``) or "topk"
    (k = ``sparsity``), orthogonality weight, and the seed of its initialisation."""

    kind: str
    sparsity: float
    ortho_weight: float
    seed: int


@dataclass
class TrainedSAE:
    """A trained SAE (ours or a SAELens peer) with what the convergence checks need.

    Attributes:
        name: the method ("L1", "TopK", "SAELens L1", ...).
        sparsity: its L1 coefficient or k.
        ortho_weight: lambda_orth (0 for peers).
        seed: initialisation seed.
        sae: the trained model (``W_dec``, ``encode``, ``decode``) on the CPU.
        W_init: [n, d] decoder rows at initialisation.
        losses: [n_records] training loss in step order.
        seconds: wall time of the training it was part of.
        samples_per_second: training samples per second per model.
    """

    name: str
    sparsity: float
    ortho_weight: float
    seed: int
    sae: nn.Module
    W_init: Tensor
    losses: list
    seconds: float
    samples_per_second: float


def _seeded_init(sae, seeds: list[int]) -> None:
    """Model i of the stack starts where a single SAE built with ``Generator().manual_seed(seeds[i])``
    starts, so a seed means the same initialisation in every stack (paired comparisons)."""
    from sae_ortho.models.sae import SAE, SAEConfig

    c = sae.cfg
    with torch.no_grad():
        for i, s in enumerate(seeds):
            one = SAE(SAEConfig(c.d, c.n_latents, c.kind, c.k), generator=torch.Generator().manual_seed(s))
            for name, p in one.named_parameters():
                getattr(sae, name)[i].copy_(p)


def _train_stack(sae, data: BenchData, specs: list[OurSpec], ortho, device: str, progress: bool,
                 recipe: dict | None, desc: str):
    """The one place this project's SAEs are trained (``recipe``: extra TrainConfig fields, or
    ``"lm"``: the study's training recipe, :func:`sae_ortho.training.recipe.lm_recipe` for the stack's kind)."""
    from sae_ortho.training.recipe import lm_recipe

    if isinstance(recipe, str):
        if recipe != "lm":
            raise ValueError(f"recipe must be a dict of TrainConfig fields, 'lm' or None, got {recipe!r}")
        recipe = {"recipe": lm_recipe(sae.cfg.kind, data.cfg.steps, data.cfg.hidden_dim)}
    from sae_ortho.training.train import TrainConfig, train

    cfg = data.cfg
    tc = TrainConfig(
        steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
        l1_coeff=tuple(float(s.sparsity) if s.kind == "relu" else 0.0 for s in specs),
        ortho_weight=tuple(float(s.ortho_weight) for s in specs), ortho=ortho,
        log_every=max(1, cfg.steps // 100),
    )
    if recipe:
        tc = dataclasses.replace(tc, **recipe)
    sampler = HiddenSampler(data.model, data.train_source(), n_models=len(specs), device=device)
    t0 = time.perf_counter()
    result = train(sae.to(device), sampler, tc, progress=progress, desc=desc)
    return result, time.perf_counter() - t0


def train_ours(
    data: BenchData,
    specs: list[OurSpec],
    ortho=None,
    device: str = "cpu",
    progress: bool = True,
    recipe: dict | str | None = "lm",
    store: bool = True,
) -> list[TrainedSAE]:
    """Train this project's SAEs on the run's training samples, as few stacks as possible.

    ReLU SAEs form one stack (per-model L1 coefficient and orthogonality weight); TopK SAEs one
    stack per k. Every model sees the same samples in the same order; a seed gives the same
    initialisation in every stack. ``ortho``: the penalty (default: the study's proposal).
    ``recipe``: ``"lm"`` (default) trains with the study's recipe (:func:`sae_ortho.training.recipe.lm_recipe`:
    warm-up, decay, L1 warm-up, clipping, b_dec at the geometric median, resampling or AuxK), as
    SAELens's runner trains its peers with its own; None: the plain loop; a dict: TrainConfig fields.
    ``store``: keep each trained stack in the study's store (:mod:`sae_ortho.experiments.store`) and load it from there.
    """
    from sae_ortho.models.sae import SAE, SAEConfig
    from sae_ortho.ortho import OrthoConfig

    ortho = ortho or OrthoConfig()
    cfg = data.cfg
    groups: dict[tuple, list[OurSpec]] = {}
    for s in specs:
        if s.kind not in ("relu", "topk"):
            raise ValueError(f"kind must be 'relu' or 'topk', got {s.kind!r}")
        groups.setdefault((s.kind, s.sparsity if s.kind == "topk" else None), []).append(s)
    out = []
    for (kind, k), group in tqdm(groups.items(), desc="our SAE stacks", disable=not progress):
        sae = SAE(SAEConfig(cfg.hidden_dim, cfg.width, kind=kind, k=None if k is None else int(k), n_models=len(group)),
                  generator=torch.Generator().manual_seed(0))
        _seeded_init(sae, [s.seed for s in group])
        w0 = sae.W_dec.detach().clone()
        desc = f"{kind}" + (f" k={k}" if k else "") + f" x{len(group)}"

        def produce(folder, sae=sae, group=group, desc=desc):
            result, seconds = _train_stack(sae, data, group, ortho, device, False, recipe, desc=desc)
            safetensors.torch.save_file({n: v.detach().cpu().contiguous() for n, v in sae.state_dict().items()},
                                        str(folder / STACK_FILE))
            return {"loss": result.history["loss"]}, {"seconds": seconds}

        name = f"05/ours-{kind}" + (f"-k{k}" if k else "")
        spec = {"bench": cfg, "data_seed": data.data_seed, "specs": group, "ortho": ortho,
                "recipe": recipe if recipe != "lm" else "lm"}
        if store:
            run = st.fetch(name, spec, produce)
            state = safetensors.torch.load_file(str(run.folder / STACK_FILE))
            sae.load_state_dict({n: st.perturb(v, i) for i, (n, v) in enumerate(sorted(state.items()))})
            losses, seconds = np.asarray(run.history["loss"]), float(run.info["seconds"])
        else:
            history, info = produce_in_memory(produce)
            losses, seconds = np.asarray(history["loss"]), info["seconds"]
        sae = sae.cpu()
        for i, s in enumerate(group):
            out.append(TrainedSAE(
                "L1" if kind == "relu" else "TopK", s.sparsity, s.ortho_weight, s.seed, sae.select(i), w0[i],
                [float(v) for v in losses[:, i]], seconds, len(group) * cfg.samples / seconds,
            ))
    return out


STACK_FILE = "stack.safetensors"
PEER_FILE = "peer.safetensors"


def produce_in_memory(produce):
    """Run a store ``produce`` function without keeping its files (training without the store)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        return produce(Path(tmp))


# --------------------------------------------------------------------------------------------
# SAELens's own trainers as peers, through SyntheticSAERunner


PEER_ARCHITECTURES = {"standard": "SAELens L1", "batchtopk": "SAELens BatchTopK",
                      "matryoshka_batchtopk": "SAELens Matryoshka"}


@dataclass(frozen=True)
class PeerSpec:
    """A SAELens SAE: architecture (``PEER_ARCHITECTURES``), L1 coefficient or k, seed."""

    architecture: str
    sparsity: float
    seed: int


def peer_config(architecture: str, cfg: BenchConfig, sparsity: float, device: str = "cpu"):
    """SAELens training config of a peer SAE. ``sparsity`` is the L1 coefficient for ``"standard"``
    and k for the BatchTopK variants; Matryoshka levels at width/32, width/8, width/2 (the SAELens
    tutorial's 128, 512, 2048 of 4096) and the full width."""
    from sae_lens import (
        BatchTopKTrainingSAEConfig,
        MatryoshkaBatchTopKTrainingSAEConfig,
        StandardTrainingSAEConfig,
    )

    common = {"d_in": cfg.hidden_dim, "d_sae": cfg.width, "device": device}
    if architecture == "standard":
        check_float("sparsity (L1 coefficient)", sparsity, 0.0, None, low_open=True)
        return StandardTrainingSAEConfig(**common, l1_coefficient=float(sparsity))
    if architecture not in PEER_ARCHITECTURES:
        raise ValueError(f"architecture must be one of {tuple(PEER_ARCHITECTURES)}, got {architecture!r}")
    if isinstance(sparsity, bool) or not (isinstance(sparsity, (int, float)) and 0 < sparsity <= cfg.width):
        raise ValueError(f"k (sparsity) must be in (0, width={cfg.width}], got {sparsity!r}")
    if architecture == "batchtopk":
        return BatchTopKTrainingSAEConfig(**common, k=float(sparsity))
    widths = sorted({max(1, cfg.width // 32), max(1, cfg.width // 8), max(1, cfg.width // 2), cfg.width})
    return MatryoshkaBatchTopKTrainingSAEConfig(**common, k=float(sparsity), matryoshka_widths=widths)


# SAELens's runner counts a latent dead after ``dead_feature_window`` steps without firing (default
# 1000 of the published 195K steps). At the CPU scale (~1000 steps) that window is the whole run, so
# AuxK never sees a dead latent; the windows are scaled to 10% / 20% of the run instead (as
# sae_ortho.training.recipe.lm_recipe's dead window), and kept at SAELens's defaults for runs long enough for them.
def peer_windows(steps: int) -> dict[str, int]:
    """SAELens's dead-feature and feature-sampling windows (steps) for a run of ``steps`` steps."""
    check_int("steps", steps, 1)
    dead = min(1000, max(1, steps // 10))
    return {"dead_feature_window": dead, "feature_sampling_window": min(2000, max(dead, steps // 5))}


def _recording(cls, every: int):
    """A subclass of SAELens training SAE ``cls`` that records its training loss every ``every``
    steps (SyntheticSAERunner keeps no loss history without wandb)."""

    class Recording(cls):
        def training_forward_pass(self, step_input):
            out = super().training_forward_pass(step_input)
            self._steps = getattr(self, "_steps", 0) + 1
            if self._steps % every == 0:
                self.loss_log.append(float(out.loss.detach()))
            return out

    Recording.__name__ = f"Recording{cls.__name__}"
    return Recording


def train_peer(spec: PeerSpec, data: BenchData, device: str = "cpu", store: bool = True) -> TrainedSAE:
    """Train one SAELens SAE with ``SyntheticSAERunner`` on the run's training samples.

    The runner gets the locally built model with its activation generator replaced by the run's
    samples (:meth:`BenchData.train_source`), so the peer sees the same samples, batch size, lr and
    number of steps as this project's SAEs. Its own final evaluation is switched off: every SAE is
    scored by :class:`Scorer` on the same evaluation samples. ``spec.seed`` seeds its initialisation.
    ``store``: keep the trained SAE in the study's store (:mod:`sae_ortho.experiments.store`) and load it from there.
    """
    from sae_lens import LoggingConfig
    from sae_lens.registry import get_sae_training_class
    from sae_lens.synthetic import SyntheticSAERunner, SyntheticSAERunnerConfig

    cfg = data.cfg
    sae_cfg = peer_config(spec.architecture, cfg, spec.sparsity, device=device)
    runner_cfg = SyntheticSAERunnerConfig(
        synthetic_model=cfg.sae_lens_config(), sae=sae_cfg, training_samples=cfg.samples,
        batch_size=cfg.batch_size, lr=cfg.lr, device=device, eval_frequency=0, run_final_eval=False,
        **peer_windows(cfg.steps),
        checkpoint_path=None, output_path=None, logger=LoggingConfig(log_to_wandb=False),
    )
    model = _with_generator(data.model, data.train_source(dense=False))
    cls, _ = get_sae_training_class(spec.architecture)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        sae = _recording(cls, max(1, cfg.steps // 100))(sae_cfg)
        after_init = torch.get_rng_state()  # training continues this stream
    sae.loss_log = []
    w0 = sae.W_dec.detach().clone().cpu()

    def produce(folder):
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(after_init)
            runner = SyntheticSAERunner(runner_cfg, override_synthetic_model=model, override_sae=sae)
            t0 = time.perf_counter()
            trained = runner.run().sae
            seconds = time.perf_counter() - t0
        safetensors.torch.save_file({n: v.detach().cpu().contiguous() for n, v in trained.state_dict().items()},
                                    str(folder / PEER_FILE))
        return {"loss": list(trained.loss_log)}, {"seconds": seconds}

    if store:
        run = st.fetch(f"05/peer-{spec.architecture}", {"bench": cfg, "data_seed": data.data_seed, "spec": spec,
                                                        "windows": peer_windows(cfg.steps)},
                       produce)
        state = safetensors.torch.load_file(str(run.folder / PEER_FILE))
        sae.load_state_dict({n: st.perturb(v, i) for i, (n, v) in enumerate(sorted(state.items()))})
        losses, seconds = [float(v) for v in run.history.get("loss", [])], float(run.info["seconds"])
    else:
        history, info = produce_in_memory(produce)
        losses, seconds = history["loss"], info["seconds"]
    trained = sae.cpu().eval()
    trained.requires_grad_(False)
    return TrainedSAE(PEER_ARCHITECTURES[spec.architecture], float(spec.sparsity), 0.0, spec.seed, trained, w0,
                      losses, seconds, cfg.samples / seconds)


def _with_generator(model, source: nn.Module):
    """A shallow copy of a SyntheticModel whose activation generator is ``source``."""
    clone = object.__new__(type(model))
    clone.__dict__.update(model.__dict__)
    clone._modules = dict(model._modules)
    clone._modules["activation_generator"] = source
    return clone


# --------------------------------------------------------------------------------------------
# Scoring: SAELens's evaluator, this project's metrics beside it, hierarchy readout, convergence


class Scorer:
    """Every number of a trained SAE on the run's evaluation samples: ``Scorer(data, parents)(run)``.

    SAELens's ``eval_sae_on_synthetic_data`` (keys as in :func:`sae_ortho.data.synthbench.evaluate`); beside
    it this project's ``our_mcc`` (:func:`sae_ortho.metrics.mcc`), ``our_l0`` and ``our_fve`` (1 - FVU);
    the hierarchy readout (:mod:`sae_ortho.analysis.hierarchy_readout`: absorption, leaning, parent/child
    compositions); convergence (:mod:`sae_ortho.analysis.convergence`: loss plateau over the last 20%, movement of
    the decoder rows from their initialisation); and training throughput. What depends on the
    samples alone (hidden activations, which parents and children fire) is computed once here.
    """

    def __init__(self, data: BenchData, parents: dict[int, list[int]], batch_size: int = 4096):
        from sae_ortho.analysis import hierarchy_readout as hr

        self.data, self.parents, self.batch_size = data, parents, batch_size
        self.device = data.model.feature_dict.feature_vectors.device
        self.features = data.model.feature_dict.feature_vectors.detach().cpu().float()
        self.batches = []  # (x [b, d] on the data's device, parent_on [b, P], child_on [b, P])
        src = data.eval_source()
        done = 0
        with torch.no_grad():
            while done < data.n_eval:
                b = min(batch_size, data.n_eval - done)
                feats = src.sample(b)
                firing = hr.parent_child_firing(feats, parents) if parents else (None, None)
                self.batches.append((data.model.feature_dict(feats), *firing))
                done += b

    def __call__(self, run: TrainedSAE) -> dict:
        from sae_ortho import metrics
        from sae_ortho.analysis import convergence
        from sae_ortho.analysis import hierarchy_readout as hr
        from sae_ortho.models.sae import SAE

        model = (SAELensView(run.sae) if isinstance(run.sae, SAE) else run.sae).to(self.device)
        out = {"method": run.name, "sparsity": run.sparsity, "ortho_weight": run.ortho_weight, "seed": run.seed}
        out.update(evaluate(model, self.data, self.batch_size))
        W = model.W_dec.detach().cpu().float()
        F, parents = self.features, self.parents
        out["our_mcc"] = metrics.mcc(W, F)
        counter = hr.AbsorptionCounter(W, F, parents) if parents else None
        xs, x_hats, active, n = [], [], 0.0, 0
        with torch.no_grad():
            for x, parent_on, child_on in self.batches:
                codes = model.encode(x)
                if counter is not None:
                    counter.add_firing(parent_on, child_on, codes)
                xs.append(x.cpu())
                x_hats.append(model.decode(codes).cpu())
                active += float(metrics.l0(codes)) * x.shape[0]
                n += x.shape[0]
        out["our_l0"] = active / n
        out["our_fve"] = 1.0 - float(metrics.fvu(torch.cat(xs).double(), torch.cat(x_hats).double()))
        if counter is not None:
            rep = counter.compute()
            lean = hr.lean(W, F, parents)
            comp = hr.compositions(W, F, parents)
            out.update({
                "absorption": rep.mean_absorption(), "absorbed_fraction": rep.absorbed_fraction(),
                "parents_matched": rep.matched_fraction, "parents_scored": rep.scored,
                "lean_child_on_parent": lean.child_on_parent, "lean_parent_on_child": lean.parent_on_child,
                "lean_control": lean.control, "atoms": comp.fraction("atoms"),
                "parent_child_compositions": comp.fraction("parent_child"),
                "unrelated_compositions": comp.fraction("unrelated"),
            })
        model.cpu()
        losses = np.asarray(run.losses, dtype=float)
        change = convergence.tail_change(np.arange(1, len(losses) + 1), losses) if len(losses) >= 10 else None
        # relative drop of the loss over the last 20% of training (> 0: still improving)
        out["plateau"] = float("nan") if change is None else -change
        w0 = torch.as_tensor(run.W_init).double()
        cos0 = torch.nn.functional.cosine_similarity(W.double(), w0, dim=-1)
        out.update({"cos_to_init": float(cos0.mean()), "near_init": convergence.near_init_fraction(W, w0),
                    "seconds": run.seconds, "samples_per_second": run.samples_per_second})
        return out


# --------------------------------------------------------------------------------------------
# Running the peers in a second process (the second CPU core), trained and scored there


def _peer_worker(cfg: BenchConfig, n_eval: int, data_seed: int, root: str, max_cache_gb: float,
                 specs: list[PeerSpec], device: str, threads: int) -> list[dict]:
    from sae_ortho.core.reproducibility import setup

    setup(0, threads)
    data = prepare(cfg, n_eval, data_seed, root, device=device, max_cache_gb=max_cache_gb, progress=False)
    score = Scorer(data, hierarchy_parents(data.model))
    out = []
    for spec in specs:
        run = train_peer(spec, data, device=device)
        out.append({"spec": spec, "state": run.sae.state_dict(), "sae_cfg": run.sae.cfg.to_dict(),
                    "W_init": run.W_init, "losses": run.losses, "seconds": run.seconds, "score": score(run)})
    return out


class PeerJob:
    """SAELens peers trained and scored in a separate (spawned) process, or in this one.

    ``PeerJob(specs, data, background=True)`` starts at once; :meth:`result` waits and returns
    ``(runs, scores)``: the trained peers (as :class:`TrainedSAE`) and their :class:`Scorer` rows.
    Both processes run one torch thread; on two cores they then train side by side.
    """

    def __init__(self, specs: list[PeerSpec], data: BenchData, device: str = "cpu", background: bool = True,
                 threads: int = 1, max_cache_gb: float = 4.0):
        for s in specs:
            peer_config(s.architecture, data.cfg, s.sparsity)  # bad specs fail here, not in the worker
        self._args = (data.cfg, data.n_eval, data.data_seed, str(data.root), max_cache_gb, list(specs), device, threads)
        self._future = None
        if background:
            import concurrent.futures
            import multiprocessing

            self._pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            # The worker's output would interleave with this process's: switch its progress bars off
            # (tqdm reads TQDM_DISABLE when imported; the spawned process copies the environment
            # when it starts, which submit() does).
            old = os.environ.get("TQDM_DISABLE")
            os.environ["TQDM_DISABLE"] = "1"
            try:
                self._future = self._pool.submit(_peer_worker, *self._args)
            finally:
                if old is None:
                    del os.environ["TQDM_DISABLE"]
                else:
                    os.environ["TQDM_DISABLE"] = old

    def result(self) -> tuple[list[TrainedSAE], list[dict]]:
        if self._future is None:
            rows = _peer_worker(*self._args)
        else:
            rows = self._future.result()
            self._pool.shutdown()
        from sae_lens.registry import get_sae_training_class

        runs, scores = [], []
        for r in rows:
            spec = r["spec"]
            cls, cfg_cls = get_sae_training_class(spec.architecture)
            sae = cls(cfg_cls.from_dict({**r["sae_cfg"], "device": "cpu"}))
            sae.load_state_dict(r["state"])
            sae.eval().requires_grad_(False)
            runs.append(TrainedSAE(PEER_ARCHITECTURES[spec.architecture], float(spec.sparsity), 0.0, spec.seed, sae,
                                   r["W_init"], r["losses"], r["seconds"], self._args[0].samples / r["seconds"]))
            scores.append(r["score"])
        return runs, scores


def l1_throughput(data: BenchData, our_l1: float, their_l1: float, steps: int = 200, reps: int = 2) -> dict:
    """Training samples/s of one of this project's ReLU+L1 SAEs and of SAELens's standard SAE,
    trained back to back in this process on the same first ``steps`` batches, ``reps`` times
    alternately; the median of each (a side-by-side benchmark under the same conditions)."""
    import statistics

    check_int("steps", steps, 1)
    short = dataclasses.replace(data, cfg=dataclasses.replace(data.cfg, samples=steps * data.cfg.batch_size))
    ours, theirs = [], []
    for _ in range(reps):
        ours.append(train_ours(short, [OurSpec("relu", our_l1, 0.0, 0)], progress=False, store=False)[0].samples_per_second)
        theirs.append(train_peer(PeerSpec("standard", their_l1, 0), short, store=False).samples_per_second)
    return {"ours": statistics.median(ours), "saelens": statistics.median(theirs), "steps": steps, "reps": reps}
