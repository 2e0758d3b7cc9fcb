"""Trained SAEs on disk: train once per configuration, reload afterwards.

:func:`train_or_load` keys a run by everything that determines it (SAE and training
configuration, the data's key, the seed and the input scale). A finished run is a folder in the
SAELens on-disk format (``sae/cfg.json`` + ``sae/sae_weights.safetensors``, the input scale folded
into the weights so the SAE works on raw activations) plus ``history.json``; an unfinished one holds
the trainer's checkpoint and resumes from it. Both are written to a temporary name and renamed.

:func:`train_lm_sae` is the shared entry point of notebooks 02-04 for SAEs on cached
language-model activations (:class:`LMSAESpec` describes one).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import Tensor

from sae_ortho.core.atomic import atomic_write, replacing
from sae_ortho.core.validation import (
    canonical_json,
    check_callable,
    check_float,
    check_instance,
    check_int,
    check_output_dir,
    check_str,
)
from sae_ortho.data.activations import norm_scale
from sae_ortho.data.lm_data import LMData
from sae_ortho.experiments import store
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.models.saelens_io import load_sae_lens, save_sae_lens
from sae_ortho.ortho import OrthoConfig
from sae_ortho.training.recipe import Recipe, lm_recipe
from sae_ortho.training.train import TrainConfig, train


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"name must be a plain non-empty folder name, got {name!r}")

SNAPSHOTS = "snapshots.safetensors"  # parameters during training (TrainConfig.snapshot_steps)


def load_snapshots(folder: str | Path) -> dict[int, dict[str, Tensor]]:
    """``{step: {parameter: tensor}}`` saved by :func:`train_or_load` in a finished run's folder
    ({} if none), in training units (the run's inputs were multiplied by its ``scale``), float32.

    In a stored run (:func:`train_lm_sae`), a snapshot at the last step is not kept twice: it is
    the SAE itself, read back from ``sae/`` and brought to training units here."""
    folder = Path(folder)
    path = folder / SNAPSHOTS
    out: dict[int, dict[str, Tensor]] = {}
    if path.exists():
        for i, (key, v) in enumerate(sorted(safetensors.torch.load_file(str(path)).items())):
            step, name = key.split("/", 1)
            out.setdefault(int(step), {})[name] = store.perturb(v, i).float()
    manifest = folder / store.MANIFEST
    if manifest.exists() and out:
        info = store.verify(folder).get("info", {})
        final = info.get("final_snapshot_step")
        if final is not None:
            sae, _ = load_sae_lens(folder / "sae")
            s = float(info["scale"])
            w = {k: store.perturb(v.detach(), 100 + i) for i, (k, v) in enumerate(sorted(sae.state_dict().items()))}
            out[int(final)] = {"W_enc": w["W_enc"] / s, "b_enc": w["b_enc"], "W_dec": w["W_dec"] * s,
                               "b_dec": w["b_dec"] * s}
    return dict(sorted(out.items()))


def run_key(name: str, sae_cfg: SAEConfig, cfg: TrainConfig, data_key: str, seed: int, scale: float) -> str:
    """Folder name of a run: ``name`` and a short hash of everything that determines it.

    The hash is canonical (:func:`sae_ortho.core.validation.canonical`): ``scale=1`` and ``1.0``, ``seed=0`` and
    ``np.int64(0)``, ``ortho_weight=0`` and ``0.0``, ``lr=(x,)`` and ``x`` name the same run."""
    _check_name(name)
    check_instance("sae_cfg", sae_cfg, SAEConfig)
    check_instance("cfg", cfg, TrainConfig)
    check_str("data_key", data_key)
    seed = check_int("seed", seed, 0)
    scale = check_float("scale", scale, 0.0, low_open=True)
    blob = canonical_json(
        {"fingerprint": cfg.fingerprint(SAE(sae_cfg, torch.Generator())), "data": data_key, "seed": seed, "scale": scale}
    )
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def train_or_load(
    name: str,
    sae_cfg: SAEConfig,
    cfg: TrainConfig,
    sample: Callable[[int], Tensor],
    data_key: str,
    root: str | Path,
    seed: int = 0,
    scale: float = 1.0,
    metadata: dict | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> tuple[SAE, dict[str, np.ndarray]]:
    """Train a single SAE on ``scale * x`` (or load the finished run) and return it in raw units.

    Args:
        name: readable prefix of the run folder.
        sample: ``batch -> [batch, d]`` raw-unit inputs drawn with the global torch generator.
        data_key: identifies the training data (e.g. the activation cache key).
        seed: seeds the decoder initialisation and the data stream.
        scale: inputs are multiplied by it in training (e.g. :func:`sae_ortho.data.activations.norm_scale`).
        metadata: stored in the SAELens ``cfg.json`` (model, hook, dataset ...).
        device: where to train; the returned SAE is on the CPU.

    Returns:
        The SAE with the scale folded in, and its training history (name -> array).
    """
    check_instance("sae_cfg", sae_cfg, SAEConfig)
    if sae_cfg.n_models is not None:
        raise ValueError("train_or_load trains a single SAE; got n_models set")
    scale = check_float("scale", scale, 0.0, low_open=True)
    check_callable("sample", sample)
    # Every location is checked before any training (not when the first checkpoint is due).
    folder = check_output_dir("root", root) / run_key(name, sae_cfg, cfg, data_key, seed, scale)
    check_output_dir("the run folder", folder)
    done = folder / "history.json"
    if not done.exists():
        # A private RNG stream: the run's data depend on its seed only, and the caller's random
        # state is the same whether the run was trained now or loaded from disk.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sae = SAE(sae_cfg, generator=torch.Generator().manual_seed(seed)).to(device)
            result = train(
                sae, lambda b: sample(b).to(device) * scale, cfg, checkpoint_dir=folder, progress=progress,
                desc=name,
            )
        save_sae_lens(sae.cpu(), folder / "sae", hook_name=(metadata or {}).get("hook_name", data_key), input_scale=scale,
                      metadata=metadata, training={"sae": sae_cfg, "train": cfg, "seed": seed})
        if result.snapshots:  # parameters in training units (inputs times ``scale``)
            flat = {f"{step}/{k}": v.contiguous() for step, sd in result.snapshots.items() for k, v in sd.items()}
            with replacing(folder / SNAPSHOTS) as tmp:
                safetensors.torch.save_file(flat, str(tmp))
        history = {k: np.asarray(v).tolist() for k, v in result.history.items()}
        atomic_write(done, json.dumps(history))  # written last: its presence marks a finished run
        (folder / "checkpoint.pt").unlink(missing_ok=True)
    sae, _ = load_sae_lens(folder / "sae")
    try:
        history = {k: np.asarray(v) for k, v in json.loads(done.read_text()).items()}
    except (ValueError, AttributeError) as e:
        raise ValueError(
            f"{done} is damaged ({e}); delete the run folder {folder} to train the run again"
        ) from e
    return sae, history


@dataclass(frozen=True)
class LMSAESpec:
    """An SAE to train on cached language-model activations; validated on construction.

    Attributes:
        name: readable run name (the folder also carries a hash of everything below).
        kind, k: ``"relu"`` (L1) or ``"topk"`` with ``k``.
        n_latents: dictionary size.
        tokens: training activations drawn (with replacement) from the cache.
        batch_size, lr, l1_coeff: training hyperparameters (``l1_coeff`` ignored for TopK).
        ortho_weight, ortho: lambda_orth and how the penalty is computed.
        recipe: the optimisation recipe; None means the study's language-model recipe
            (:func:`sae_ortho.training.recipe.lm_recipe`, which depends on the kind, the steps and d).
        snapshots: decoder snapshots kept at evenly spaced steps (for the cross-seed match
            against training tokens); 0 for none.
        kernel: how each step is computed (:class:`sae_ortho.training.train.TrainConfig`);
            ``"dense"``, the reference, keeps the keys of runs stored before the sparse step.
    """

    name: str
    kind: str = "relu"
    k: int | None = None
    n_latents: int = 2048
    tokens: int = 500_000
    batch_size: int = 1024
    lr: float = 1e-3
    l1_coeff: float = 1.5
    ortho_weight: float = 0.0
    ortho: OrthoConfig = field(default_factory=OrthoConfig)
    recipe: Recipe | None = None
    snapshots: int = 4
    kernel: str = "dense"

    def __post_init__(self) -> None:
        _check_name(self.name)
        for pname in ("tokens", "batch_size"):
            object.__setattr__(self, pname, check_int(pname, getattr(self, pname), 1))
        for pname, low, low_open in (("lr", 0.0, True), ("l1_coeff", 0.0, False), ("ortho_weight", None, False)):
            object.__setattr__(self, pname, check_float(pname, getattr(self, pname), low, low_open=low_open))
        object.__setattr__(self, "snapshots", check_int("snapshots", self.snapshots, 0))
        if self.recipe is not None:
            check_instance("recipe", self.recipe, Recipe)
        self.configs(2)  # validates kind, k, n_latents, lr, l1_coeff, ortho_weight, recipe

    @property
    def steps(self) -> int:
        return math.ceil(self.tokens / self.batch_size)

    def configs(self, d: int) -> tuple[SAEConfig, TrainConfig]:
        sae_cfg = SAEConfig(d, self.n_latents, kind=self.kind, k=self.k)
        l1 = self.l1_coeff if self.kind == "relu" else 0.0
        steps = self.steps
        every = max(1, steps // self.snapshots) if self.snapshots else 0
        cfg = TrainConfig(
            steps, self.batch_size, self.lr, l1, self.ortho_weight, self.ortho,
            log_every=max(1, steps // 100),
            checkpoint_every=max(1, steps // 10),  # an interrupted run resumes, losing < 10%
            recipe=self.recipe if self.recipe is not None else lm_recipe(self.kind, steps, d),
            snapshot_steps=tuple(sorted({min(steps, every * i) for i in range(1, self.snapshots + 1)})) if every else (),
            kernel=self.kernel,
        )
        return sae_cfg, cfg

    def initial_decoder(self, d: int, seed: int) -> Tensor:
        """[n_latents, d] decoder rows of this spec's run with ``seed`` before training (the
        initialisation :func:`train_or_load` draws), to measure how far training moved them."""
        return SAE(self.configs(d)[0], generator=torch.Generator().manual_seed(seed)).W_dec.detach()


def _lm_run(data: LMData, layer: int, spec: LMSAESpec, seed: int, root: str | Path | None):
    if layer not in data.train:
        raise ValueError(f"layer {layer} was not harvested; available: {sorted(data.train)}")
    acts = data.train[layer]
    sae_cfg, cfg = spec.configs(acts.d)
    return acts, sae_cfg, cfg, (Path(root) if root is not None else None), f"{spec.name}-L{layer}-s{seed}"


def _store_spec(name: str, sae_cfg: SAEConfig, cfg: TrainConfig, data_key: str, seed: int, scale: float) -> dict:
    return {"run_key": run_key(name, sae_cfg, cfg, data_key, seed, scale)}


def lm_run_folder(data: LMData, layer: int, spec: LMSAESpec, seed: int = 0, root: str | Path | None = None) -> Path:
    """The folder of :func:`train_lm_sae`'s run (its ``sae/`` subfolder is the SAELens format):
    in the study's store (:mod:`sae_ortho.experiments.store`) unless ``root`` is given."""
    acts, sae_cfg, cfg, root, name = _lm_run(data, layer, spec, seed, root)
    scale = norm_scale(acts)
    if root is None:
        return store.folder_of(f"lm/{name}", _store_spec(name, sae_cfg, cfg, acts.meta["key"], seed, scale))
    return root / run_key(name, sae_cfg, cfg, acts.meta["key"], seed, scale)


def train_lm_sae(
    data: LMData,
    layer: int,
    spec: LMSAESpec,
    seed: int = 0,
    sample: Callable[[int], Tensor] | None = None,
    root: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    keep_snapshots: bool = True,
) -> tuple[SAE, dict[str, np.ndarray]]:
    """Train (or load) ``spec`` on the cached training activations of ``layer``.

    Inputs are scaled to mean squared norm d (:func:`sae_ortho.data.activations.norm_scale`); the returned
    SAE works on raw activations. The run is shared by every notebook that asks for the same
    spec, data and seed: in the study's store (:mod:`sae_ortho.experiments.store`, ``results/saes/lm``), or under ``root``.

    Args:
        sample: a sampler of that layer's store, to avoid reloading the data for every run.
        keep_snapshots: keep the spec's intermediate snapshots in the store when the run is trained
            (they cost 3x the SAE's size; False where no notebook reads them).
    """
    acts, sae_cfg, cfg, root, name = _lm_run(data, layer, spec, seed, root)
    meta = {
        "model_name": data.lm.name,
        "hook_name": f"blocks.{layer}.hook_resid_post",
        "context_size": data.cfg.context,
        "dataset_path": data.corpus.name,
        "stand_in": data.lm.stand_in,
    }
    scale, data_key = norm_scale(acts), acts.meta["key"]
    if root is not None:
        return train_or_load(
            name, sae_cfg, cfg, sample or acts.sampler(), data_key, root, seed=seed,
            scale=scale, metadata=meta, device=device, progress=progress,
        )

    def produce(folder: Path):
        # trained (resumably, with checkpoints) outside the repository, then kept in half precision
        work = store.WORK / "lm"
        sae, history = train_or_load(
            name, sae_cfg, cfg, sample or acts.sampler(), data_key, work, seed=seed,
            scale=scale, metadata=meta, device=device, progress=progress,
        )
        src = work / run_key(name, sae_cfg, cfg, data_key, seed, scale)
        save_sae_lens(sae.half(), folder / "sae", hook_name=meta["hook_name"], metadata={**meta, "training_input_scale": scale},
                      training={"sae": sae_cfg, "train": cfg, "seed": seed})
        snaps = load_snapshots(src)
        final = cfg.steps if cfg.steps in snaps else None
        flat = {f"{step}/{k}": v.half().contiguous() for step, sd in snaps.items() if step != final
                for k, v in sd.items()}
        if flat and keep_snapshots:
            safetensors.torch.save_file(flat, str(folder / SNAPSHOTS))
        info = {"scale": scale, "final_snapshot_step": final, "tokens": cfg.steps * cfg.batch_size,
                "layer": layer, "stored_dtype": "float16", "seed": seed, "data_key": data_key,
                "lm_spec": spec, "run_name": name}
        return history, info

    run = store.fetch(f"lm/{name}", _store_spec(name, sae_cfg, cfg, data_key, seed, scale), produce)
    sae, _ = load_sae_lens(run.folder / "sae")
    with torch.no_grad():
        for i, (_, p) in enumerate(sorted(sae.named_parameters())):
            p.copy_(store.perturb(p.detach(), 200 + i))
    return sae, run.history


def replay_lm_run(folder: str | Path, cache_root: str | Path | None = None) -> SAE:
    """Train the stored language-model SAE in ``folder`` again from scratch (for the retrain check):
    same spec, seed and cached activations (``cache_root``, default ``cache/activations``, must hold
    the run's activation cache: notebook 02 harvests it). Returned in raw units, rounded to the
    stored half precision, as the store keeps it."""
    import tempfile

    from sae_ortho.data.activations import META_FILE, ActivationStore

    folder = Path(folder)
    manifest = store.verify(folder)
    info = manifest["info"]
    path = Path(cache_root or store.CACHE / "activations") / info["data_key"]
    if not (path / META_FILE).exists():
        raise ValueError(f"{folder} needs the activation cache {path}; run notebook 02 (or `make nbval`) to harvest it")
    acts = ActivationStore(path, json.loads((path / META_FILE).read_text()))
    raw = dict(info["lm_spec"])
    if raw.get("recipe") is not None:
        raise ValueError(f"{folder} was trained with a custom recipe; replay supports the default LM recipe only")
    ortho = OrthoConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.pop("ortho").items()})
    spec = LMSAESpec(**{**raw, "ortho": ortho, "recipe": None})
    sae_cfg, cfg = spec.configs(acts.d)
    seed, scale = int(info["seed"]), norm_scale(acts)
    want = manifest["spec"]["run_key"]
    got = run_key(info["run_name"], sae_cfg, cfg, info["data_key"], seed, scale)
    if got != want:
        raise ValueError(f"{folder}: the rebuilt spec has run key {got}, the stored run {want}; cannot replay it")
    with tempfile.TemporaryDirectory() as tmp:
        sae, _ = train_or_load(info["run_name"], sae_cfg, cfg, acts.sampler(), info["data_key"], tmp, seed=seed,
                               scale=scale, progress=False)
    return sae.half().float()
