"""SynthSAEBench (Chanin & Garriga-Alonso 2026): a ground-truth benchmark built with SAELens.

SAELens ships the generator (``sae_lens.synthetic.SyntheticModel``: Zipfian firing, hierarchies
with mutually exclusive children, low-rank correlated firing, orthogonalised feature vectors) and
the evaluator (``eval_sae_on_synthetic_data``: MCC, uniqueness, per-latent precision / recall / F1
against the true features, explained variance, L0, dead latents, shrinkage). This module

- describes the benchmark as a validated :class:`BenchConfig`: :data:`SYNTHSAEBENCH_16K` is the
  published SynthSAEBench-16k model and protocol, :func:`scaled` a proportionally smaller one with
  the same structure for CPUs;
- builds the model from its config (the published copy lives on the Hugging Face hub; building it
  locally with the same config and seed gives the same construction) and keeps it on disk;
- generates training and evaluation samples once and caches them on disk (sparse feature
  activations in shards, written under a temporary name and renamed; resumable), so every SAE of a
  run sees the same samples; too large a cache is replaced by live generation (the GPU protocol);
- lets SAELens's evaluator score this project's SAEs (:class:`SAELensView`, model by model for a
  stack).

Training this project's SAEs and SAELens's peers on a benchmark, and scoring them, is in
:mod:`sae_ortho.experiments.synthbench_runs`; the hierarchy readout (absorption, parent/child compositions) in
:mod:`sae_ortho.analysis.hierarchy_readout`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import TqdmWarning, tqdm

from sae_ortho.core import paths
from sae_ortho.core.atomic import atomic_write, replacing
from sae_ortho.core.validation import check_bool, check_float, check_int

with warnings.catch_warnings():
    # sae_lens imports tqdm.auto, which warns in notebook kernels without ipywidgets
    warnings.simplefilter("ignore", TqdmWarning)
    import sae_lens.synthetic  # noqa: F401  (imported here once, under the filter)

CACHE = paths.CACHE / "synthbench"

# Published results on SynthSAEBench-16k (width 4096, 200M samples) at SAE L0 = 25: (F1, MCC).
PUBLISHED_L0 = 25
PUBLISHED_16K: dict[str, tuple[float, float]] = {
    "Matryoshka BatchTopK": (0.879, 0.793),
    "BatchTopK": (0.732, 0.757),
    "JumpReLU": (0.732, 0.753),
    "L1 (standard)": (0.556, 0.604),
    "Matching Pursuit": (0.446, 0.693),
}
# Reference size of the published model, for proportional scaling.
_REF_FEATURES, _REF_HIDDEN, _REF_ROOTS = 16384, 768, 128


@dataclass(frozen=True)
class BenchConfig:
    """A SynthSAEBench model (the generator) and its SAE protocol. Defaults: SynthSAEBench-16k.

    Model fields map one-to-one onto ``sae_lens.synthetic.SyntheticModelConfig``:

    Attributes:
        n_features: ground-truth features (``num_features``); must exceed ``hidden_dim``.
        hidden_dim: dimension of the generated activations.
        zipf_exponent, max_prob, min_prob: Zipfian firing probabilities (p in (0, 1]).
        n_roots, branching, depth: the hierarchy forest (``total_root_nodes``,
            ``branching_factor``, ``max_depth``); every child group is mutually exclusive and
            probabilities are compensated, children scaled by their parent (as published).
        corr_rank, corr_scale: low-rank correlated firing.
        ortho_steps, ortho_lr: orthogonalisation of the feature vectors.
        mean_start, mean_end: mean firing magnitude, linear from the most to the least frequent.
        std_mean, std_std: per-feature magnitude std drawn from a folded normal.
        bias: norm of the activations' bias vector.
        seed: the model's seed.

    Protocol fields:

    Attributes:
        width: SAE latents (at most ``n_features``).
        samples: training samples per SAE.
        batch_size: samples per optimiser step.
        lr: Adam learning rate.
    """

    n_features: int = 16384
    hidden_dim: int = 768
    zipf_exponent: float = 0.5
    max_prob: float = 0.4
    min_prob: float = 5e-4
    n_roots: int = 128
    branching: int = 4
    depth: int = 3
    corr_rank: int = 25
    corr_scale: float = 0.1
    ortho_steps: int = 100
    ortho_lr: float = 3e-4
    mean_start: float = 5.0
    mean_end: float = 4.0
    std_mean: float = 0.5
    std_std: float = 0.5
    bias: float = 0.5
    seed: int = 42
    width: int = 4096
    samples: int = 200_000_000
    batch_size: int = 1024
    lr: float = 3e-4

    def __post_init__(self) -> None:
        for name, minimum in (
            ("n_features", 2), ("hidden_dim", 1), ("n_roots", 0), ("branching", 2), ("depth", 1),
            ("corr_rank", 1), ("ortho_steps", 0), ("seed", 0), ("width", 1), ("samples", 1), ("batch_size", 1),
        ):
            check_int(name, getattr(self, name), minimum)
        if self.n_features <= self.hidden_dim:
            raise ValueError(
                f"n_features={self.n_features} must exceed hidden_dim={self.hidden_dim}: the benchmark "
                "is about features in superposition"
            )
        if self.width > self.n_features:
            raise ValueError(f"width={self.width} must be at most n_features={self.n_features}")
        check_float("max_prob", self.max_prob, 0.0, 1.0, low_open=True)
        check_float("min_prob", self.min_prob, 0.0, 1.0, low_open=True)
        if self.min_prob >= self.max_prob:
            raise ValueError(f"min_prob={self.min_prob} must be below max_prob={self.max_prob}")
        check_float("zipf_exponent", self.zipf_exponent, 0.0, None, low_open=True)
        check_float("corr_scale", self.corr_scale, 0.0, None, low_open=False)
        if self.corr_rank * self.corr_scale**2 >= 1:
            raise ValueError(
                f"corr_scale={self.corr_scale} too large for corr_rank={self.corr_rank}: "
                "corr_rank * corr_scale**2 must be < 1 (a valid correlation matrix)"
            )
        check_float("ortho_lr", self.ortho_lr, 0.0, None, low_open=True)
        check_float("mean_start", self.mean_start, 0.0, None, low_open=True)
        check_float("mean_end", self.mean_end, 0.0, None, low_open=True)
        check_float("std_mean", self.std_mean, 0.0, None, low_open=False)
        check_float("std_std", self.std_std, 0.0, None, low_open=True)
        check_float("bias", self.bias, 0.0, None, low_open=False)
        check_float("lr", self.lr, 0.0, None, low_open=True)
        if self.n_roots * self.tree_size > self.n_features:
            raise ValueError(
                f"n_roots={self.n_roots} trees of {self.tree_size} features (branching={self.branching}, "
                f"depth={self.depth}) need {self.n_roots * self.tree_size} > n_features={self.n_features}"
            )
        if self.batch_size > self.samples:
            raise ValueError(f"batch_size={self.batch_size} exceeds samples={self.samples}")

    @property
    def tree_size(self) -> int:
        """Features per hierarchy tree (a full tree of the given branching and depth)."""
        return sum(self.branching**i for i in range(self.depth + 1))

    @property
    def superposition(self) -> float:
        """Features per hidden dimension."""
        return self.n_features / self.hidden_dim

    @property
    def width_ratio(self) -> float:
        """SAE latents per true feature."""
        return self.width / self.n_features

    @property
    def steps(self) -> int:
        """Optimiser steps of the protocol."""
        return self.samples // self.batch_size

    def model_fields(self) -> dict:
        """The fields that define the generator (not the SAE protocol)."""
        protocol = {"width", "samples", "batch_size", "lr"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in protocol}

    def model_key(self) -> str:
        """Short hash of the generator's fields (names its folders on disk)."""
        return hashlib.sha256(json.dumps(self.model_fields(), sort_keys=True).encode()).hexdigest()[:12]

    def is_published(self) -> bool:
        """True when the generator and protocol are exactly SynthSAEBench-16k's."""
        return self == SYNTHSAEBENCH_16K

    def label(self) -> str:
        """Short human-readable description, for titles."""
        name = "SynthSAEBench-16k" if self.model_fields() == SYNTHSAEBENCH_16K.model_fields() else "scaled SynthSAEBench"
        return (
            f"{name} (built locally, seed {self.seed}): {self.n_features} features, d={self.hidden_dim}, "
            f"SAE width {self.width}, {self.samples:,} samples"
        )

    def sae_lens_config(self):
        """The equivalent ``sae_lens.synthetic.SyntheticModelConfig``."""
        from sae_lens.synthetic import (
            FoldedNormalMagnitudeConfig,
            HierarchyConfig,
            LinearMagnitudeConfig,
            LowRankCorrelationConfig,
            OrthogonalizationConfig,
            SyntheticModelConfig,
            ZipfianFiringProbabilityConfig,
        )

        return SyntheticModelConfig(
            num_features=self.n_features,
            hidden_dim=self.hidden_dim,
            firing_probability=ZipfianFiringProbabilityConfig(
                exponent=float(self.zipf_exponent), max_prob=float(self.max_prob), min_prob=float(self.min_prob)
            ),
            hierarchy=None if self.n_roots == 0 else HierarchyConfig(
                total_root_nodes=self.n_roots,
                branching_factor=self.branching,
                max_depth=self.depth,
                mutually_exclusive_portion=1.0,
                mutually_exclusive_min_depth=0,
                compensate_probabilities=True,
                scale_children_by_parent=True,
            ),
            orthogonalization=None if self.ortho_steps == 0 else OrthogonalizationConfig(
                num_steps=self.ortho_steps, lr=float(self.ortho_lr)
            ),
            correlation=LowRankCorrelationConfig(rank=self.corr_rank, correlation_scale=float(self.corr_scale)),
            mean_firing_magnitudes=LinearMagnitudeConfig(start=float(self.mean_start), end=float(self.mean_end)),
            std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=float(self.std_mean), std=float(self.std_std)),
            bias=float(self.bias),
            seed=self.seed,
        )


SYNTHSAEBENCH_16K = BenchConfig()


def scaled(n_features: int, samples: int, batch_size: int = 1024, lr: float = 3e-4) -> BenchConfig:
    """SynthSAEBench-16k shrunk proportionally to ``n_features`` features, same structure.

    How each field scales (16k value -> here):

    - ``hidden_dim = round(n_features / 21.33)``: the superposition ratio 16384 / 768 is kept;
    - ``width = n_features / 4``: the SAE-width / features ratio 4096 / 16384 is kept;
    - ``n_roots = round(128 * n_features / 16384)`` (at least 1) trees of the same shape (branching
      4, depth 3, 85 features each): the same fraction of features (2/3) lies in hierarchies;
    - firing probabilities (Zipf exponent, p_max, p_min), magnitudes, correlation, bias,
      orthogonalisation and seed are unchanged, so a feature of a given frequency rank fires as
      often as in the 16k model. The true L0 therefore shrinks roughly with sqrt(n_features) (it is
      measured on the built model, not assumed);
    - ``samples``, ``batch_size`` and ``lr`` are the caller's: the protocol's 200M samples are out
      of reach of a CPU.
    """
    check_int("n_features", n_features, 2)
    ref = SYNTHSAEBENCH_16K
    return dataclasses.replace(
        ref,
        n_features=n_features,
        hidden_dim=max(1, round(n_features * _REF_HIDDEN / _REF_FEATURES)),
        width=max(1, n_features * ref.width // _REF_FEATURES),
        n_roots=max(1, round(_REF_ROOTS * n_features / _REF_FEATURES)),
        samples=samples,
        batch_size=batch_size,
        lr=lr,
    )


# --------------------------------------------------------------------------------------------
# Building the model


def _construct(cfg: BenchConfig, device: str):
    """``SyntheticModel(cfg)``. Its orthogonalisation bar redraws at every step (it sets the bar's
    description each time), which would flood a notebook: it is silenced, and one line says what
    is being built instead."""
    from sae_lens.synthetic import SyntheticModel

    print(f"building the model: {cfg.n_features} features in {cfg.hidden_dim} dims, "
          f"{cfg.ortho_steps} orthogonalisation steps (O(steps * n^2 * d)) ...", flush=True)
    with contextlib.redirect_stderr(io.StringIO()):
        return SyntheticModel(cfg.sae_lens_config(), device=device)


def build_model(cfg: BenchConfig, root: str | Path | None = CACHE, device: str = "cpu"):
    """The generator of ``cfg`` as a ``sae_lens.synthetic.SyntheticModel``, kept on disk.

    The first call builds it (the orthogonalisation is the slow part: O(steps * n^2 * d)) and saves
    it with ``SyntheticModel.save`` under ``root/model-<key>`` (written to a temporary folder and
    renamed); later calls load that folder. ``root=None`` builds without saving.
    """
    from sae_lens.synthetic import SyntheticModel

    if root is None:
        return _construct(cfg, device)
    folder = Path(root) / f"model-{cfg.model_key()}"
    if not (folder / "bench_config.json").exists():
        model = _construct(cfg, device)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
        try:
            model.save(tmp)
            (tmp / "bench_config.json").write_text(json.dumps(cfg.model_fields(), indent=1, sort_keys=True))
            try:
                os.replace(tmp, folder)
            except OSError:  # another process finished the same model first: keep its folder
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return model
    stored = json.loads((folder / "bench_config.json").read_text())
    if stored != cfg.model_fields():
        raise ValueError(f"model folder {folder} holds another configuration; remove it")
    return SyntheticModel.load_from_disk(folder, device=device)


def hierarchy_parents(model) -> dict[int, list[int]]:
    """Parent feature -> its child features, from the model's hierarchy (empty without one)."""
    out: dict[int, list[int]] = {}
    if model.hierarchy is None:
        return out

    def walk(node) -> None:
        kids = [c.feature_index for c in node.children if c.feature_index is not None]
        if node.feature_index is not None and kids:
            out[node.feature_index] = kids
        for c in node.children:
            walk(c)

    for r in model.hierarchy.roots:
        walk(r)
    return out


# --------------------------------------------------------------------------------------------
# Samples: generated once, cached on disk as sparse feature activations


@dataclass
class FeatureSamples:
    """Ground-truth feature activations of ``n`` samples in CSR form (the data of a run).

    Attributes:
        crow: [n + 1] int64 row pointers; row i holds entries ``crow[i]:crow[i+1]``.
        col: [nnz] int64 feature index of each entry.
        val: [nnz] float32 activation of each entry (> 0).
        n_features: number of features (columns).
    """

    crow: Tensor
    col: Tensor
    val: Tensor
    n_features: int

    @property
    def n(self) -> int:
        return self.crow.numel() - 1

    def true_l0(self) -> float:
        """Mean number of active features per sample."""
        return self.col.numel() / max(self.n, 1)

    def rows(self, start: int, stop: int, dense: bool = False) -> Tensor:
        """Samples ``start:stop`` as a sparse COO [stop - start, n_features] tensor (or dense)."""
        dense = check_bool("dense", dense)
        lo, hi = int(self.crow[start]), int(self.crow[stop])
        counts = self.crow[start + 1 : stop + 1] - self.crow[start:stop]
        row = torch.repeat_interleave(torch.arange(stop - start), counts)
        if dense:
            out = torch.zeros(stop - start, self.n_features)
            out[row, self.col[lo:hi]] = self.val[lo:hi]
            return out
        idx = torch.stack([row, self.col[lo:hi]])
        return torch.sparse_coo_tensor(
            idx, self.val[lo:hi], (stop - start, self.n_features), is_coalesced=True, check_invariants=False
        )


def _to_csr(acts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Dense [b, n] feature activations -> (counts [b], col [nnz], val [nnz])."""
    rows, cols = acts.nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=acts.shape[0])
    return counts, cols, acts[rows, cols].float()


def sample_bytes(cfg: BenchConfig, n: int, true_l0: float) -> int:
    """Approximate bytes of a cache of ``n`` samples at ``true_l0`` active features per sample."""
    return int(n * (8 + true_l0 * 12))


def generate_samples(
    model,
    n: int,
    seed: int,
    folder: str | Path,
    chunk: int = 8192,
    shard: int = 131072,
    progress: bool = True,
    desc: str = "generate",
) -> FeatureSamples:
    """``n`` samples of the model's feature activations, generated once and cached in ``folder``.

    Shard ``s`` is generated in chunks under the seed ``(seed, s)`` alone, so an interrupted run
    resumes at the first missing shard and gives the same samples. Each shard is written under a
    temporary name and renamed; ``meta.json`` (written last) lists them. A folder whose meta does
    not match ``n``, ``seed`` and ``shard`` is refused.
    """
    progress = check_bool("progress", progress)
    from sae_lens.util import temporary_seed

    check_int("n", n, 1)
    folder = Path(folder)
    meta_path = folder / "meta.json"
    want = {"n": n, "seed": seed, "shard": shard, "n_features": model.cfg.num_features}
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in want} != want:
            raise ValueError(f"sample folder {folder} holds {meta}, not {want}; remove it or use another folder")
        return _load_samples(folder, meta)
    folder.mkdir(parents=True, exist_ok=True)
    n_shards = -(-n // shard)
    bar = tqdm(total=n, desc=desc, disable=not progress, unit="samples")
    files = []
    for s in range(n_shards):
        name = f"shard_{s:05d}.safetensors"
        files.append(name)
        size = min(shard, n - s * shard)
        if (folder / name).exists():
            bar.update(size)
            continue
        counts, cols, vals = [], [], []
        with temporary_seed(int(hashlib.sha256(f"{seed}/{s}".encode()).hexdigest()[:8], 16)):
            done = 0
            while done < size:
                b = min(chunk, size - done)
                c, k, v = _to_csr(model.activation_generator.sample(b).cpu())
                counts.append(c)
                cols.append(k)
                vals.append(v)
                done += b
                bar.update(b)
        with replacing(folder / name) as tmp:
            save_file(
                {"counts": torch.cat(counts).to(torch.int32), "col": torch.cat(cols).to(torch.int32), "val": torch.cat(vals)},
                str(tmp),
            )
    bar.close()
    meta = {**want, "files": files}
    atomic_write(meta_path, json.dumps(meta, indent=1))
    return _load_samples(folder, meta)


def _load_samples(folder: Path, meta: dict) -> FeatureSamples:
    counts, cols, vals = [], [], []
    for name in meta["files"]:
        t = load_file(str(folder / name))
        counts.append(t["counts"].long())
        cols.append(t["col"].long())
        vals.append(t["val"])
    count = torch.cat(counts)
    if count.numel() != meta["n"]:
        raise ValueError(f"sample folder {folder}: {count.numel()} samples in shards, meta says {meta['n']}")
    crow = torch.zeros(count.numel() + 1, dtype=torch.long)
    crow[1:] = count.cumsum(0)
    return FeatureSamples(crow, torch.cat(cols), torch.cat(vals), meta["n_features"])


class Replay(nn.Module):
    """Serves cached feature activations in order, in place of SAELens's ``ActivationGenerator``.

    ``sample(b)`` / ``forward(b)`` return the next ``b`` samples (sparse COO, or dense with
    ``dense=True``) and wrap around at the end. SAELens's ``SyntheticSAERunner`` and its evaluator
    only call these, so they train and evaluate on exactly the cached samples.
    """

    def __init__(self, samples: FeatureSamples, dense: bool = False):
        dense = check_bool("dense", dense)
        super().__init__()
        self.samples, self.dense, self.position = samples, dense, 0
        self.num_features = samples.n_features

    def sample(self, batch_size: int) -> Tensor:
        n = self.samples.n
        if self.position + batch_size <= n:
            out = self.samples.rows(self.position, self.position + batch_size, dense=self.dense)
            self.position = (self.position + batch_size) % n
            return out
        parts = []  # wrap around the end of the samples
        while batch_size > 0:
            take = min(batch_size, n - self.position)
            parts.append(self.samples.rows(self.position, self.position + take, dense=True))
            self.position = (self.position + take) % n
            batch_size -= take
        out = torch.cat(parts)
        return out if self.dense else out.to_sparse()

    def forward(self, batch_size: int) -> Tensor:
        return self.sample(batch_size)


class LiveSamples(nn.Module):
    """Fresh samples from the model's own generator, drawn from a private seed (for data too large
    to cache: the GPU protocol). Same interface as :class:`Replay`."""

    def __init__(self, model, seed: int):
        super().__init__()
        self.model = model
        self.num_features = model.cfg.num_features
        device = model.feature_dict.feature_vectors.device
        self._state = torch.Generator(device="cpu").manual_seed(seed).get_state()
        self._device = device
        self._seed = seed
        self._calls = 0

    def sample(self, batch_size: int) -> Tensor:
        # The generator draws from the global RNG: fork it, seeded per call, so the caller's random
        # stream is untouched and every consumer of this object sees the same sequence.
        devices = [self._device] if self._device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self._seed * 1_000_003 + self._calls)
            self._calls += 1
            return self.model.activation_generator.sample(batch_size)

    def forward(self, batch_size: int) -> Tensor:
        return self.sample(batch_size)


class HiddenSampler:
    """``sample(b) -> x: [b, hidden_dim]`` (or ``[M, b, hidden_dim]`` for a stack of M models, the
    same batch for every model), the hidden activations of a feature source."""

    def __init__(self, model, source: Replay | LiveSamples, n_models: int | None = None, device: str = "cpu"):
        self.model, self.source, self.n_models, self.device = model, source, n_models, device

    @torch.no_grad()
    def __call__(self, batch_size: int) -> Tensor:
        feats = self.source.sample(batch_size)
        x = self.model.feature_dict(feats.to(self.model.feature_dict.feature_vectors.device)).float().to(self.device)
        return x if self.n_models is None else x.expand(self.n_models, -1, -1)


@dataclass
class BenchData:
    """A built benchmark: the model, its training and evaluation feature samples (cached) or live
    sources, and timings of how they were obtained."""

    cfg: BenchConfig
    model: object
    train: FeatureSamples | None
    eval: FeatureSamples | None
    n_eval: int
    data_seed: int
    build_seconds: float
    generate_seconds: float
    root: Path | None = None

    @property
    def cached(self) -> bool:
        return self.train is not None

    def train_source(self, dense: bool = False) -> Replay | LiveSamples:
        """A fresh source of the training samples, from the start (every SAE sees the same ones)."""
        dense = check_bool("dense", dense)
        return Replay(self.train, dense=dense) if self.cached else LiveSamples(self.model, self.data_seed)

    def eval_source(self) -> Replay | LiveSamples:
        """A fresh source of the evaluation samples (dense, as SAELens's evaluator indexes them)."""
        if self.cached:
            return Replay(self.eval, dense=True)
        return LiveSamples(self.model, self.data_seed + 1)


def prepare(
    cfg: BenchConfig,
    n_eval: int,
    data_seed: int = 0,
    root: str | Path = CACHE,
    device: str = "cpu",
    max_cache_gb: float = 4.0,
    progress: bool = True,
) -> BenchData:
    """Build (or load) the model and generate (or load) its training and evaluation samples.

    Samples are cached when ``cfg.samples`` of them fit in ``max_cache_gb`` (estimated from the
    true L0 of a first chunk); otherwise training and evaluation draw live samples from the model
    (on ``device``), each stream from its own seed.
    """
    progress = check_bool("progress", progress)
    check_int("n_eval", n_eval, 1)
    t0 = time.perf_counter()
    model = build_model(cfg, root, device=device)
    build_seconds = time.perf_counter() - t0
    with torch.random.fork_rng(devices=[]):  # the probe must not move the caller's random stream
        torch.manual_seed(data_seed)
        l0 = float((model.activation_generator.sample(min(4096, n_eval)) > 0).float().sum(-1).mean())
    t0 = time.perf_counter()
    if sample_bytes(cfg, cfg.samples, l0) > max_cache_gb * 1e9:
        return BenchData(cfg, model, None, None, n_eval, data_seed, build_seconds, 0.0, Path(root))
    base = Path(root) / f"samples-{cfg.model_key()}"
    train = generate_samples(model, cfg.samples, data_seed, base / f"train-{data_seed}-{cfg.samples}",
                             progress=progress, desc="training samples")
    ev = generate_samples(model, n_eval, data_seed + 1, base / f"eval-{data_seed + 1}-{n_eval}",
                          progress=progress, desc="evaluation samples")
    return BenchData(cfg, model, train, ev, n_eval, data_seed, build_seconds, time.perf_counter() - t0, Path(root))


# --------------------------------------------------------------------------------------------
# Scoring with SAELens's evaluator


class SAELensView(nn.Module):
    """One model of this project's :class:`sae_ortho.models.sae.SAE` (model ``index`` of a stack) with the
    interface SAELens's ``eval_sae_on_synthetic_data`` uses: ``W_dec [n, d]``, ``encode``,
    ``decode``, ``eval``."""

    def __init__(self, sae, index: int | None = None):
        super().__init__()
        if sae.stacked and index is None:
            raise ValueError("a stacked SAE needs the model index")
        self.sae = sae.select(index) if sae.stacked else sae
        self.sae.requires_grad_(False)

    @property
    def W_dec(self) -> Tensor:
        return self.sae.W_dec

    def encode(self, x: Tensor) -> Tensor:
        return self.sae.encode(x.to(self.sae.W_dec.device).float())

    def decode(self, codes: Tensor) -> Tensor:
        return self.sae.decode(codes)


def evaluate(sae_like, data: BenchData, batch_size: int = 4096) -> dict[str, float]:
    """SAELens's ``eval_sae_on_synthetic_data`` on the run's evaluation samples, as a flat dict
    (true_l0, sae_l0, dead_latents, shrinkage, explained_variance, mcc, uniqueness, precision,
    recall, f1, accuracy)."""
    from sae_lens.synthetic import eval_sae_on_synthetic_data

    res = eval_sae_on_synthetic_data(
        sae_like, data.model.feature_dict, data.eval_source(), num_samples=data.n_eval, batch_size=batch_size
    )
    out = {k: v for k, v in res.to_dict().items() if k != "classification"}
    out.update({("f1" if k == "f1_score" else k): v for k, v in res.to_dict()["classification"].items()})
    return out


# --------------------------------------------------------------------------------------------
# The protocol of a run

# A run of at least this many samples follows the published protocol's batch size and lr; shorter
# runs (CPU scale) need more, smaller steps to move the decoder from its initialisation.
LONG_RUN = 100_000_000
SHORT_BATCH, SHORT_LR = 256, 1e-2


def protocol(
    n_features: int,
    samples: int,
    hidden_dim: int | None = None,
    width: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
) -> BenchConfig:
    """The run's benchmark: :func:`scaled` to ``n_features`` with optional overrides.

    ``hidden_dim`` / ``width`` default to the published ratios (n/21.33, n/4). ``batch_size`` and
    ``lr`` default to the published 1024 and 3e-4 for runs of at least ``LONG_RUN`` samples, and
    to ``SHORT_BATCH`` / ``SHORT_LR`` for shorter ones. With ``n_features=16384, hidden_dim=768,
    width=4096, samples=200_000_000`` this is exactly :data:`SYNTHSAEBENCH_16K`.
    """
    check_int("samples", samples, 1)
    long = samples >= LONG_RUN
    base = scaled(n_features, samples, batch_size or (SYNTHSAEBENCH_16K.batch_size if long else SHORT_BATCH),
                  lr or (SYNTHSAEBENCH_16K.lr if long else SHORT_LR))
    return dataclasses.replace(
        base, hidden_dim=base.hidden_dim if hidden_dim is None else hidden_dim,
        width=base.width if width is None else width,
    )
