"""Pinned numerics: one instruction-set level and fixed thread counts for every CPU math library.

Floating-point results on a CPU depend on which kernels run, and the libraries choose them at run
time from the CPU they find: torch's vectorised kernels (ATen: AVX2 or AVX-512), its BLAS (Intel
MKL), oneDNN, numpy's and scipy's OpenBLAS (Haswell or SkylakeX kernels; its thread count) and
numpy's own SIMD loops. A training run is a long chain of such operations, so two machines with
different CPUs drift apart after a few hundred steps and the checked numbers of a notebook move.

``lib/numerics.env`` pins all of them to the AVX2 level, which every x86-64 CPU with AVX2 (Intel
from Haswell, AMD from Zen) runs natively, and fixes the thread counts. The variables must be in
the environment before torch and numpy are loaded: the Makefile exports them to every command it
runs (papermill, nbval, pytest, the benchmark), and ``make setup`` installs a Jupyter kernel spec
that sets them. :func:`problems` checks the *effective* state (what torch, numpy and OpenBLAS
actually dispatch), and :func:`lib.reproducibility.setup` calls it: it warns loudly, or raises when
``SAE_STUDY_STRICT_NUMERICS=1`` (set by the Makefile), so a render under wrong numerics cannot
pass silently.

Command line::

    eval "$(python -m lib.numerics --env)"       # export the pinned variables into a shell
    python -m lib.numerics --check               # exit 1 and list what is not pinned
    python -m lib.numerics --install-kernel DIR  # kernel spec "python3" under DIR/share/jupyter/kernels
    python -m lib.numerics --fingerprint         # digests of a short workload; compare with
                                                 # results/numerics_fingerprint.json
    python -m lib.numerics --bench               # speed of the pinned settings against the unpinned ones
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from lib.atomic import atomic_write

ENV_FILE = Path(__file__).with_name("numerics.env")
# Set to "1" (the Makefile does) to make setup() refuse unpinned numerics instead of warning.
STRICT_VAR = "SAE_STUDY_STRICT_NUMERICS"
# numpy SIMD targets that the pinned environment disables
_NUMPY_AVX512 = ("X86_V4", "AVX512_SKX", "AVX512_ICL", "AVX512_SPR")


def pinned_env() -> dict[str, str]:
    """The pinned variables, ``{name: value}``, from ``lib/numerics.env`` (the one definition)."""
    env = {}
    for line in ENV_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def applies() -> bool:
    """Whether the pins apply here: an x86-64 CPU with AVX2 (elsewhere they are not defined)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: trust torch's own detection
        import torch

        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    return " avx2 " in flags.replace("\n", " ") and " fma " in flags.replace("\n", " ")


def effective() -> dict[str, object]:
    """What the libraries actually dispatch in this process (loads torch, numpy and scipy)."""
    import numpy as np  # noqa: F401  (loads numpy's SIMD dispatch)
    import scipy.linalg  # noqa: F401  (loads scipy's OpenBLAS)
    import torch
    from numpy._core._multiarray_umath import __cpu_features__
    from threadpoolctl import threadpool_info

    blas = [
        {"library": Path(i["filepath"]).name, "coretype": i.get("architecture"), "threads": i["num_threads"]}
        for i in threadpool_info()
        if i.get("internal_api") == "openblas"
    ]
    return {
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "numpy_avx512": sorted(k for k in _NUMPY_AVX512 if __cpu_features__.get(k)),
        "openblas": blas,
    }


# Thread counts of the OpenMP / MKL pools: pinned for the defaults, but a run may use another count
# on purpose (``setup(threads=...)``, or torchrun, which starts each process with OMP_NUM_THREADS=1);
# the count is then part of the run's parameters, like ``threads`` itself.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def problems(threads: int | None = None) -> list[str]:
    """Everything that differs from the pinned numerics in this process ([] when pinned).

    ``threads``: the intra-op thread count the run asked for (:func:`lib.reproducibility.setup`);
    the OpenMP / MKL thread variables may equal it instead of their pinned value."""
    if not applies():
        return [
            (
                f"this CPU ({platform.machine()}) is not x86-64 with AVX2, where the pins are defined: "
                "results agree with the committed ones only statistically, not to the bit"
            )
        ]
    want = pinned_env()
    out = [
        f"{k}={os.environ.get(k)!r} in the environment, pinned {v!r}"
        for k, v in want.items()
        if os.environ.get(k) != v and not (k in THREAD_VARS and threads is not None and os.environ.get(k) == str(threads))
    ]
    eff = effective()
    if eff["torch_capability"] != want["ATEN_CPU_CAPABILITY"].upper():
        out.append(
            f"torch dispatches {eff['torch_capability']} kernels, pinned {want['ATEN_CPU_CAPABILITY'].upper()} "
            "(ATEN_CPU_CAPABILITY must be set before torch runs its first operation)"
        )
    if eff["numpy_avx512"]:
        out.append(
            f"numpy dispatches {', '.join(eff['numpy_avx512'])} (NPY_DISABLE_CPU_FEATURES must be set before "
            "numpy is imported)"
        )
    for b in eff["openblas"]:
        if b["coretype"] != want["OPENBLAS_CORETYPE"] or str(b["threads"]) != want["OPENBLAS_NUM_THREADS"]:
            out.append(
                f"OpenBLAS {b['library']} runs {b['coretype']} kernels on {b['threads']} threads, pinned "
                f"{want['OPENBLAS_CORETYPE']} on {want['OPENBLAS_NUM_THREADS']} (set before numpy / scipy load)"
            )
    return out


def strict() -> bool:
    return os.environ.get(STRICT_VAR) == "1"


def install_kernel(prefix: str | Path, python: str | None = None) -> Path:
    """Write the kernel spec ``python3`` with the pinned environment under
    ``prefix/share/jupyter/kernels`` (a virtual environment's prefix overrides the default
    kernel of the same name for Jupyter and papermill run from that environment)."""
    folder = Path(prefix) / "share" / "jupyter" / "kernels" / "python3"
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [python or sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "env": {**pinned_env(), STRICT_VAR: "1"},
        "metadata": {"debugger": True},
    }
    return atomic_write(folder / "kernel.json", json.dumps(spec, indent=1) + "\n")


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

    from lib import decompose, metrics, toy
    from lib.recipe import Recipe
    from lib.reproducibility import NumericsWarning, setup
    from lib.sae import SAE, SAEConfig
    from lib.train import Stepper, TrainConfig, train

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
from lib.reproducibility import setup
from lib import toy
from lib.sae import SAE, SAEConfig
from lib.train import Stepper, TrainConfig
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
    root = Path(__file__).resolve().parent.parent
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
    ap = argparse.ArgumentParser(prog="python -m lib.numerics", description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--env", action="store_true", help="print `export KEY='VALUE'` lines for a shell's eval")
    g.add_argument("--check", action="store_true", help="exit 1 (and list why) unless numerics are pinned here")
    g.add_argument("--install-kernel", metavar="PREFIX", help="install the pinned 'python3' kernel spec under PREFIX")
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
    if args.env:
        print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in pinned_env().items()))
        return 0
    if args.fingerprint:
        digests = fingerprint()
        print(json.dumps({"digests": digests, "pinned": not problems(), "machine": platform.machine()}, indent=1))
        return 0
    if args.install_kernel:
        print(install_kernel(args.install_kernel))
        return 0
    if args.check:
        issues = problems()
        for p in issues:
            print(f"not pinned: {p}")
        if not issues:
            eff = effective()
            print(f"pinned: torch {eff['torch_capability']}, numpy without AVX-512, OpenBLAS "
                  + ", ".join(f"{b['coretype']} x{b['threads']}" for b in eff["openblas"]))
        return 1 if issues else 0
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
        out = atomic_write(Path(args.out), "# Speed cost of the pinned numerics\n\nWritten by `python -m lib.numerics --bench --out "
                       f"{Path(args.out).name}`.\n\n{text}\n")
        print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
