"""Pinned numerics: one instruction-set level and fixed thread counts for every CPU math library.

Floating-point results on a CPU depend on which kernels run, and the libraries choose them at run
time from the CPU they find: torch's vectorised kernels (ATen: AVX2 or AVX-512), its BLAS (Intel
MKL), oneDNN, numpy's and scipy's OpenBLAS (Haswell or SkylakeX kernels; its thread count) and
numpy's own SIMD loops. A training run is a long chain of such operations, so two machines with
different CPUs drift apart after a few hundred steps and the checked numbers of a notebook move.

``lib/core/numerics.env`` pins all of them to the AVX2 level, which every x86-64 CPU with AVX2 (Intel
from Haswell, AMD from Zen) runs natively, and fixes the thread counts. The variables must be in
the environment before torch and numpy are loaded: the Makefile exports them to every command it
runs (papermill, nbval, pytest, the benchmark), and ``make setup`` installs a Jupyter kernel spec
that sets them. :func:`problems` checks the *effective* state (what torch, numpy and OpenBLAS
actually dispatch), and :func:`sae_ortho.core.reproducibility.setup` calls it: it warns loudly, or raises when
``SAE_STUDY_STRICT_NUMERICS=1`` (set by the Makefile), so a render under wrong numerics cannot
pass silently.

Command line::

    eval "$(python -m sae_ortho.core.numerics --env)"       # export the pinned variables into a shell
    python -m sae_ortho.core.numerics --check               # exit 1 and list what is not pinned
    python -m sae_ortho.core.numerics --install-kernel DIR  # kernel spec "python3" under DIR/share/jupyter/kernels

The fingerprint of these numerics and their speed cost: :mod:`sae_ortho.bench.numerics`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

from sae_ortho.core.atomic import atomic_write

ENV_FILE = Path(__file__).with_name("numerics.env")
# Set to "1" (the Makefile does) to make setup() refuse unpinned numerics instead of warning.
STRICT_VAR = "SAE_STUDY_STRICT_NUMERICS"
# numpy SIMD targets that the pinned environment disables
_NUMPY_AVX512 = ("X86_V4", "AVX512_SKX", "AVX512_ICL", "AVX512_SPR")


def pinned_env() -> dict[str, str]:
    """The pinned variables, ``{name: value}``, from ``lib/core/numerics.env`` (the one definition)."""
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


def cpu_info() -> dict[str, Any]:
    """Vendor, family, model and AVX-512 support of this CPU (what decides its MKL code path)."""
    info: dict[str, Any] = {"machine": platform.machine()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    fields = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = (s.strip() for s in line.split(":", 1))
            fields.setdefault(k, v)
        elif fields:
            break  # the first processor's block is enough
    info.update(vendor=fields.get("vendor_id"), family=fields.get("cpu family"), model=fields.get("model"),
                model_name=fields.get("model name"), avx512="avx512f" in fields.get("flags", "").split())
    return info


def same_cpu_family(a: dict, b: dict) -> bool:
    """True when both CPUs run the same code paths of the pinned libraries (vendor, family, AVX-512)."""
    return all(a.get(k) == b.get(k) for k in ("machine", "vendor", "family", "avx512"))


def machine_label(threads: int | None = None) -> str:
    """``"<CPU model> (<vendor>), <threads> threads"``: what a timing was measured on."""
    info = cpu_info()
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return f"{info.get('model_name') or info['machine']} ({info.get('vendor') or '?'}), {threads} threads"


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

    ``threads``: the intra-op thread count the run asked for (:func:`sae_ortho.core.reproducibility.setup`);
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


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sae_ortho.core.numerics", description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--env", action="store_true", help="print `export KEY='VALUE'` lines for a shell's eval")
    g.add_argument("--check", action="store_true", help="exit 1 (and list why) unless numerics are pinned here")
    g.add_argument("--install-kernel", metavar="PREFIX", help="install the pinned 'python3' kernel spec under PREFIX")
    args = ap.parse_args(argv)
    if args.env:
        print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in pinned_env().items()))
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
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
