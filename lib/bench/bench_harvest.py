"""Harvest throughput against the forward pass that it needs, in the same run.

``python -m sae_ortho.bench.bench_harvest`` loads the study's language model and corpus
(:mod:`sae_ortho.data.lm_data`) and times, alternating, on the same training contexts:

- **forward to block L**: the model's forward pass stopped after the deepest harvested block
  (:func:`sae_ortho.data.lm.residual_stream`), the limit a harvest of that block cannot beat;
- **full forward**: every block and the final norm (:func:`sae_ortho.data.lm.full_forward`), for scale;
- **harvest**: :func:`sae_ortho.data.activations.harvest` into a fresh cache in a temporary folder
  (the same forward pass, the cast to the cache dtype, the finite check, the shard writes and
  their hashes);

and prints tokens per second and harvest / forward-limit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from sae_ortho.core.atomic import atomic_write
from sae_ortho.core.paths import CACHE
from sae_ortho.core.reproducibility import setup
from sae_ortho.data import activations, corpus, lm
from sae_ortho.data.lm_data import LMDataConfig, cache_specs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sae_ortho.bench.bench_harvest", description=__doc__.split("\n\n")[0])
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=65_536, help="tokens per timed pass")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    ap.add_argument("--batch-size", type=int, default=32, help="contexts per forward pass")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="also write the table (Markdown) to this file")
    a = ap.parse_args(argv)
    for flag in ("tokens", "rounds", "batch_size", "threads"):
        if getattr(a, flag) <= 0:
            ap.error(f"--{flag.replace('_', '-')} must be > 0, got {getattr(a, flag)}")
    if a.out and not Path(a.out).parent.is_dir():
        ap.error(f"--out: the folder {Path(a.out).parent} does not exist")
    setup(0, a.threads)
    cfg = LMDataConfig(layers=(a.layer,), train_tokens=a.tokens, batch_size=a.batch_size)
    model = lm.load_model(cfg.model, cfg.revision, cfg.device, cfg.fallback, cache_dir=CACHE / "models")
    lm.check_layers(model, cfg.layers)
    text = corpus.load_corpus(cfg.corpus, cache_dir=CACHE / "text", fallback=cfg.fallback)
    tokens = corpus.tokenize(model.tokenizer, text.train, cfg.context, cfg.train_tokens)
    batches = tokens.split(a.batch_size)
    n_tokens = tokens.numel()

    @torch.no_grad()
    def forward_to_layer() -> None:
        for b in batches:
            lm.residual_stream(model, b, cfg.layers)

    @torch.no_grad()
    def full() -> None:
        for b in batches:
            lm.full_forward(model, b)

    def harvest() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            activations.harvest(cache_specs(cfg, model, text.name, "train", tokens), tokens,
                                lambda t, layers=cfg.layers: lm.residual_stream(model, t, layers),
                                root=Path(tmp), batch_size=a.batch_size, progress=False)

    passes = {"forward to block L (the limit)": forward_to_layer, "full forward": full, "harvest": harvest}
    times: dict[str, list[float]] = {name: [] for name in passes}
    forward_to_layer()  # warm-up
    for _ in range(a.rounds):
        for name, run in passes.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(v) for name, v in times.items()}
    limit = med["forward to block L (the limit)"]
    lines = [(f"{model.label}, block {a.layer}, {n_tokens:,} tokens ({len(batches)} passes of {a.batch_size} x "
              f"{cfg.context}), cache dtype {cfg.dtype}; {a.rounds} alternating rounds (median); {a.threads} threads"),
             "", "| pass | seconds | tokens / s | time / forward limit |", "|---|---|---|---|"]
    lines += [f"| {name} | {s:.2f} | {n_tokens / s:,.0f} | {s / limit:.2f}x |" for name, s in med.items()]
    lines += ["", f"harvest throughput / forward-pass limit: {limit / med['harvest']:.2f}"]
    out = "\n".join(lines)
    print(out)
    if a.out:
        cmd = " ".join(sys.argv[1:] if argv is None else argv)
        atomic_write(Path(a.out), f"# Harvest throughput\n\nWritten by `python -m sae_ortho.bench.bench_harvest {cmd}`.\n\n{out}\n")


if __name__ == "__main__":
    main()
