"""The pinned numerics measured: a fingerprint of their results and their speed cost.

Command line::

    python -m sae_ortho.bench.numerics --fingerprint   # digests of a short workload; compare with
                                                       # results/numerics_fingerprint.json
    python -m sae_ortho.bench.numerics --bench --out results/numerics_bench.md
                                                       # pinned against unpinned, fresh processes

The pins themselves (and the check that they are in force) are :mod:`sae_ortho.core.numerics`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from sae_ortho.core.atomic import atomic_write
from sae_ortho.core.numerics import STRICT_VAR, pinned_env, problems

# ---------------------------------------------------------------------------------------------
# A fingerprint of the numerics: a short workload touching every library the study uses.

FINGERPRINT_FILE = "numerics_fingerprint.json"


def fingerprint() -> dict[str, str]:
    """sha256 digests (12 hex digits) of a short workload, one per library family it exercises:

    - ``toy training``: 200 steps of a stack of 4 ReLU SAEs on correlated toy data with the
      orthogonality penalty (torch: MKL GEMM, ATen element-wise and reductions, fused Adam);
    - ``LM-size step``: one step of a 4096-latent SAE on 1024 x 512 inputs with the full recipe
      (b_dec median, clipping) and the exact penalty;
    - ``transformer forward``: a small random GPT-NeoX (attention softmax, GELU, LayerNorm);
    - ``numpy / scipy``: sparse non-negative decompositions (OpenBLAS, LAPACK, scipy's NNLS),
      Hungarian matching and numpy transcendental functions.

    Equal digests mean bit-identical results; :mod:`tests.test_numerics` runs it under emulated
    CPUs.
    """
    import hashlib
    import warnings

    import numpy as np
    import torch

    from sae_ortho import metrics
    from sae_ortho.analysis import decompose
    from sae_ortho.core.reproducibility import NumericsWarning, setup
    from sae_ortho.data import toy
    from sae_ortho.models.sae import SAE, SAEConfig
    from sae_ortho.training.recipe import Recipe
    from sae_ortho.training.train import Stepper, TrainConfig, train

    def digest(*arrays) -> str:
        h = hashlib.sha256()
        for a in arrays:
            a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:12]

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumericsWarning)  # the unpinned runs are the point here
        setup(0, threads=2)
    data = toy.ToyData(toy.zipf_copula_config(48, 0.6))
    stack = SAE(SAEConfig(48, 64, n_models=4))
    cfg = TrainConfig(steps=200, batch_size=128, l1_coeff=0.05, ortho_weight=(0.0, 0.01, 0.03, 0.1))
    res = train(stack, lambda b: toy.stack_sampler([data] * 4, b), cfg, progress=False)
    out["toy training"] = digest(stack.W_dec, stack.W_enc, res.history["loss"])

    torch.manual_seed(1)
    sae = SAE(SAEConfig(512, 4096))
    x = torch.randn(1024, 512) * torch.linspace(0.2, 3.0, 512) + 0.5
    step = Stepper(sae, TrainConfig(steps=1, batch_size=1024, l1_coeff=1e-2, ortho_weight=1.0,
                                    recipe=Recipe(grad_clip=1.0, b_dec_init="geometric_median",
                                                  b_dec_init_samples=1024)))
    step.init_from_data(lambda b: x[:b])
    terms = step(x, 0)
    out["LM-size step"] = digest(sae.W_dec, sae.W_enc, sae.b_dec, terms["loss"])

    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(2)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=512, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024,
        max_position_embeddings=128,
    )).eval()
    tokens = torch.randint(0, 512, (8, 128))
    with torch.no_grad():
        hidden = model(tokens, output_hidden_states=True)
    out["transformer forward"] = digest(hidden.logits, *hidden.hidden_states)

    rng = np.random.default_rng(3)
    dictionary = rng.standard_normal((256, 64))
    targets = np.abs(rng.standard_normal((16, 256))) @ dictionary / 16
    fits = decompose.decompose_rows(torch.from_numpy(targets), torch.from_numpy(dictionary), max_terms=3)
    a, b = torch.randn(128, 64), torch.randn(128, 64)
    z = rng.standard_normal(10_001)
    out["numpy / scipy"] = digest(
        np.concatenate([np.r_[f.coef, f.cos] for f in fits]), np.asarray(metrics.mcc(a, b)),
        np.exp(z), np.log1p(np.abs(z)), np.power(np.abs(z), 0.7), np.arctan(z),
        rng.standard_normal((500, 300)) @ rng.standard_normal((300, 400)),
    )
    return out


# ---------------------------------------------------------------------------------------------
# Speed cost of the pins: the same workload in fresh processes, pinned and unpinned, interleaved.

_BENCH = r"""
import time, torch
from sae_ortho.core.reproducibility import setup
from sae_ortho.data import toy
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.training.train import Stepper, TrainConfig
import warnings; warnings.simplefilter("ignore")
setup(0, threads=2)
out = {}
# toy: a stack of 16 small SAEs (notebook 01's sweeps)
data = toy.ToyData(toy.zipf_copula_config(64, 0.6))
stack = SAE(SAEConfig(64, 64, n_models=16))
st = Stepper(stack, TrainConfig(steps=10**6, batch_size=512, l1_coeff=0.05, ortho_weight=0.01))
xs = [toy.stack_sampler([data] * 16, 512) for _ in range(5)]
for i in range(5): st(xs[i], i)
t = time.perf_counter()
for i in range(60): st(xs[i % 5], i)
out["toy stack step"] = (time.perf_counter() - t) / 60
# language-model size: 2048 latents x 576 dims, batch 256 (notebook 02)
sae = SAE(SAEConfig(576, 2048))
st = Stepper(sae, TrainConfig(steps=10**6, batch_size=256, l1_coeff=1.0, ortho_weight=1.0))
x = torch.randn(256, 576)
for i in range(3): st(x, i)
t = time.perf_counter()
for i in range(20): st(x, i)
out["LM-size step"] = (time.perf_counter() - t) / 20
# a transformer-like forward: attention softmax and GELU (harvesting)
q = torch.randn(16, 9, 128, 64); w = torch.randn(576, 2304)
h = torch.randn(16 * 128, 576)
t = time.perf_counter()
for i in range(10):
    a = torch.softmax(q @ q.transpose(-1, -2) / 8, -1) @ q
    g = torch.nn.functional.gelu(h @ w)
out["attention + MLP forward"] = (time.perf_counter() - t) / 10
print("RESULT", __import__("json").dumps(out))
"""


def _unpinned_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in pinned_env() and k != STRICT_VAR}
    return env


def bench(repeats: int = 3) -> dict[str, dict[str, float]]:
    """Median seconds per operation of the benchmark workload, pinned and unpinned, each in a fresh
    process, alternating ``repeats`` times so both see the same machine load."""
    times: dict[str, dict[str, list[float]]] = {"pinned": {}, "unpinned": {}}
    root = Path(__file__).resolve().parents[2]  # the repository
    for _ in range(repeats):
        for name, env in (("unpinned", _unpinned_env()), ("pinned", {**_unpinned_env(), **pinned_env()})):
            env = {**env, "PYTHONPATH": str(root)}
            res = subprocess.run([sys.executable, "-c", _BENCH], env=env, capture_output=True, text=True, check=True)
            line = next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT "))
            for k, v in json.loads(line[7:]).items():
                times[name].setdefault(k, []).append(v)
    import numpy as np

    return {name: {k: float(np.median(v)) for k, v in d.items()} for name, d in times.items()}



def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sae_ortho.bench.numerics", description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--bench", action="store_true", help="time the pinned settings against the unpinned ones")
    g.add_argument("--fingerprint", action="store_true", help="print the digests of a short workload (JSON)")
    ap.add_argument("--repeats", type=int, default=3, help="--bench: alternating runs per setting (default 3)")
    ap.add_argument("--out", help="--bench: also write the table (Markdown) to this file")
    args = ap.parse_args(argv)
    if args.out and not args.bench:
        ap.error("--out only applies to --bench")
    if args.out and not Path(args.out).parent.is_dir():
        ap.error(f"--out: the folder {Path(args.out).parent} does not exist")
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.fingerprint:
        digests = fingerprint()
        print(json.dumps({"digests": digests, "pinned": not problems(), "machine": platform.machine()}, indent=1))
        return 0
    start = time.perf_counter()
    res = bench(args.repeats)
    lines = ["| workload | unpinned (s) | pinned (s) | pinned / unpinned |", "|---|---|---|---|"]
    for k in res["pinned"]:
        u, p = res["unpinned"][k], res["pinned"][k]
        lines.append(f"| {k} | {u:.4f} | {p:.4f} | {p / u:.3f} |")
    lines.append(f"\nMedian of {args.repeats} alternating fresh processes each; {time.perf_counter() - start:.0f} s in "
                 f"all; CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores.")
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = atomic_write(Path(args.out), "# Speed cost of the pinned numerics\n\nWritten by `python -m sae_ortho.bench.numerics --bench --out "
                       f"{Path(args.out).name}`.\n\n{text}\n")
        print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
