"""Language-model activations for SAE training: model + corpus -> cached residual streams.

One call, :func:`prepare`, does what notebooks 02-04 share: load the target model (or its
offline stand-in), load and tokenise a real corpus (train and held-out eval documents), and
harvest the residual stream at the requested layers into the on-disk cache of
:mod:`sae_ortho.data.activations` (one pass for all missing layers, stopped at the deepest). A notebook run
after another with the same parameters reuses the cache; a cache made with other parameters is
never reused because the parameters are its key.

Position 0 of every context is dropped from the SAE data: it is an attention-sink token whose
residual norm is many times that of the other positions.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from sae_ortho.core.paths import CACHE
from sae_ortho.core.validation import check_bool, check_int, check_str, is_int
from sae_ortho.data import activations, corpus, lm


@dataclass(frozen=True)
class LMDataConfig:
    """What to harvest; validated on construction (model-dependent checks run in :func:`prepare`).

    Attributes:
        model: hub id or local folder (default Pythia-70M-deduped).
        revision: hub revision, or None.
        layers: residual stream after these blocks (distinct; their range is checked against the
            model in :func:`prepare`, before any harvesting).
        context: tokens per context.
        train_tokens, eval_tokens: tokens of training and held-out evaluation text.
        corpus: one of :data:`sae_ortho.data.corpus.CORPORA`.
        dtype: cache dtype.
        batch_size: contexts per forward pass.
        device: where the model runs.
        fallback: use the offline stand-in model / corpus when the requested one is unavailable.
    """

    model: str = lm.PYTHIA_70M
    revision: str | None = None
    layers: tuple[int, ...] = (3,)
    context: int = 128
    train_tokens: int = 500_000
    eval_tokens: int = 32_768
    corpus: str = "python-docs"
    dtype: str = "float16"
    batch_size: int = 32
    device: str = "cpu"
    fallback: bool = True

    def __post_init__(self) -> None:
        check_str("model", self.model)
        check_str("revision", self.revision, optional=True)
        ok = isinstance(self.layers, (tuple, list)) and self.layers and all(is_int(x) and x >= 0 for x in self.layers)
        if not ok or len(set(self.layers)) != len(self.layers):  # a repeated layer: one cache, harvested twice
            raise ValueError(f"layers must be a non-empty tuple of distinct ints >= 0, got {self.layers!r}")
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        for name in ("context", "train_tokens", "eval_tokens", "batch_size"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), 1))
        check_str("device", self.device)
        object.__setattr__(self, "fallback", check_bool("fallback", self.fallback))
        if self.context < 2:
            raise ValueError(f"context must be >= 2 (position 0 is dropped), got {self.context}")
        if self.corpus not in corpus.CORPORA:
            raise ValueError(f"corpus must be one of {corpus.CORPORA}, got {self.corpus!r}")
        if self.dtype not in activations.DTYPES:
            raise ValueError(f"dtype must be one of {tuple(activations.DTYPES)}, got {self.dtype!r}")


@dataclass
class LMData:
    """Everything a notebook needs from the language model.

    Attributes:
        lm: the model actually used (``lm.label`` names it in titles).
        corpus: the corpus actually used.
        train, eval: ``{layer: ActivationStore}`` of training / held-out activations.
        eval_tokens: [n_seq, context] held-out tokens (for CE-loss evaluation).
        harvest_tokens_per_s: harvesting throughput of this run, None when all came from cache.
    """

    cfg: LMDataConfig
    lm: lm.LoadedModel
    corpus: corpus.Corpus
    train: dict[int, activations.ActivationStore]
    eval: dict[int, activations.ActivationStore]
    eval_tokens: Tensor
    harvest_tokens_per_s: float | None


def cache_specs(cfg: LMDataConfig, model: lm.LoadedModel, corpus_name: str, split: str,
                tokens: Tensor) -> list[activations.CacheSpec]:
    """The cache specs (one per layer of ``cfg``) of harvesting ``tokens`` of a corpus split."""
    # The token ids' hash is part of the key: a change in the corpus, its split or the tokenizer
    # gives a new cache instead of silently reusing activations of other text.
    digest = hashlib.sha256(tokens.numpy().tobytes()).hexdigest()[:12]
    n_tokens = tokens.numel()
    return [
        activations.CacheSpec(
            model=model.name, revision=model.revision, layer=layer, context=cfg.context,
            n_tokens=n_tokens, dtype=cfg.dtype, corpus=f"{corpus_name}/{split}/tokens-{digest}", drop_first=True,
        )
        for layer in cfg.layers
    ]


def prepare(cfg: LMDataConfig, root: str | Path | None = None, progress: bool = True) -> LMData:
    """Load model and corpus, and harvest (or reopen) the cached activations of ``cfg``.

    Raises:
        ValueError: a layer out of range or a context longer than the model allows (before any
            harvesting), or a corpus too small for the requested tokens.
    """
    progress = check_bool("progress", progress)
    root = Path(root) if root is not None else CACHE
    model = lm.load_model(cfg.model, cfg.revision, cfg.device, cfg.fallback, cache_dir=root / "models")
    lm.check_layers(model, cfg.layers)
    lm.check_context(model, cfg.context)
    text = corpus.load_corpus(cfg.corpus, cache_dir=root / "text", fallback=cfg.fallback)
    train_tokens = corpus.tokenize(model.tokenizer, text.train, cfg.context, cfg.train_tokens)
    eval_tokens = corpus.tokenize(model.tokenizer, text.eval, cfg.context, cfg.eval_tokens)

    def forward(tokens: Tensor, layers=cfg.layers) -> dict[int, Tensor]:
        return lm.residual_stream(model, tokens.to(model.device), layers)

    stores, seconds, harvested = {}, 0.0, 0
    for split, tokens in (("train", train_tokens), ("eval", eval_tokens)):
        specs = cache_specs(cfg, model, text.name, split, tokens)
        # Only whether a cache folder exists (harvest verifies it): open_cache would hash every
        # shard here and harvest would hash them all again.
        missing = [s for s in specs if not (root / "activations" / s.key()).exists()]
        start = time.perf_counter()
        stores[split] = activations.harvest(
            specs, tokens, forward, root=root / "activations", batch_size=cfg.batch_size, progress=progress
        )
        if missing:
            seconds += time.perf_counter() - start
            harvested += tokens.numel()
    return LMData(
        cfg=cfg,
        lm=model,
        corpus=text,
        train=stores["train"],
        eval=stores["eval"],
        eval_tokens=eval_tokens,
        harvest_tokens_per_s=harvested / seconds if harvested else None,
    )


def stacked_sampler(store: activations.ActivationStore, n_models: int | None, scale: float):
    """``batch -> [n_models, batch, d]`` (independent rows per model), or ``[batch, d]`` for None."""
    n_models = check_int("n_models", n_models, 1, optional=True)
    draw = store.sampler(scale)
    if n_models is None:
        return draw
    return lambda batch: draw(n_models * batch).view(n_models, batch, -1)


@torch.no_grad()
def throughput(model: lm.LoadedModel, tokens: Tensor, layer: int, repeats: int = 2) -> dict[str, float]:
    """Tokens/s of the harvesting pass (stopped after ``layer``) and of a full forward pass
    (all blocks, no LM head) on the same tokens, measured back to back."""
    out = {}
    for name, fn in (
        ("harvest", lambda: lm.residual_stream(model, tokens, [layer])),
        ("full forward", lambda: lm.full_forward(model, tokens)),
    ):
        fn()  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        out[name] = repeats * tokens.numel() / (time.perf_counter() - start)
    return out
