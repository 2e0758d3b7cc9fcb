"""Pinned numerics (sae_ortho.core.numerics): the environment, setup()'s check, the kernel spec, and the proof
without a second machine that the pins make results independent of the CPU.

The emulation test runs ``python -m sae_ortho.bench.numerics --fingerprint`` (a toy training of a few hundred
steps, one LM-sized step with the recipe, a transformer forward, numpy/scipy decompositions) in
fresh processes whose environment makes the libraries behave as on other CPUs: an AVX2-only
x86-64 (torch's AVX2 kernels, MKL limited to AVX2, OpenBLAS's Zen kernels, numpy without
AVX-512) and the same with a single core (OpenBLAS / OpenMP thread counts). Unpinned, the digests
differ between the emulated CPUs (so the test can fail); pinned, they are identical to the bit,
and equal to the committed ``results/numerics_fingerprint.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sae_ortho.bench import numerics as numerics_bench
from sae_ortho.core import numerics, paths, reproducibility
from sae_ortho.core.reproducibility import NumericsWarning, check_numerics, setup
from sae_ortho.experiments import store

ROOT = Path(__file__).resolve().parent.parent
AVX2_ONLY = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OPENBLAS_CORETYPE": "Zen",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
}
CPUS = {
    "this CPU": {},
    "AVX2-only CPU": AVX2_ONLY,
    "AVX2-only CPU, 1 core": {**AVX2_ONLY, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
}
needs_x86 = pytest.mark.skipif(not numerics.applies(), reason="the pins are defined for x86-64 CPUs with AVX2")


def _clean_env() -> dict[str, str]:
    drop = set(numerics.pinned_env()) | {numerics.STRICT_VAR, "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _fingerprint(env: dict[str, str]) -> dict[str, str]:
    res = subprocess.run(
        [sys.executable, "-m", "sae_ortho.bench.numerics", "--fingerprint"], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)["digests"]


@needs_x86
def test_pinned_results_are_identical_on_emulated_cpus_and_unpinned_ones_are_not():
    runs = {(cpu, False): {**_clean_env(), **caps} for cpu, caps in CPUS.items()}
    runs.update({(cpu, True): {**_clean_env(), **caps, **numerics.pinned_env()}
                 for cpu, caps in CPUS.items() if cpu != "AVX2-only CPU"})
    with ThreadPoolExecutor(max_workers=2) as pool:
        digests = dict(zip(runs, pool.map(_fingerprint, runs.values())))
    pinned = {cpu: d for (cpu, pin), d in digests.items() if pin}
    unpinned = {cpu: d for (cpu, pin), d in digests.items() if not pin}
    # pinned: bit-identical whatever CPU the libraries think they run on
    first = next(iter(pinned.values()))
    for cpu, d in pinned.items():
        assert d == first, f"pinned digests differ on {cpu}: {d} vs {first}"
    # unpinned: the emulated CPUs give other numbers (the workload is sensitive to the dispatch)
    differ = [part for part in first if unpinned["this CPU"][part] != unpinned["AVX2-only CPU"][part]]
    assert differ, f"unpinned digests do not depend on the emulated CPU: {unpinned}"
    assert unpinned["AVX2-only CPU"] != unpinned["AVX2-only CPU, 1 core"]
    # and the pinned numbers are the committed ones of this CPU vendor (MKL differs between vendors)
    committed = json.loads((paths.COMMITTED_RESULTS / numerics_bench.FINGERPRINT_FILE).read_text())["digests_by_vendor"]
    vendor = store.cpu_info().get("vendor")
    if vendor in committed:
        assert first == committed[vendor], f"pinned digests {first} differ from the committed {vendor} ones {committed[vendor]}"
    else:
        warnings.warn(f"no committed fingerprint for CPU vendor {vendor!r} (committed: {sorted(committed)}): the "
                      "pinned digests were checked against each other on the emulated CPUs only", stacklevel=1)
        print(f"checked without a committed fingerprint for {vendor!r}: {first}")


def test_pinned_env_is_read_from_the_one_file():
    env = numerics.pinned_env()
    assert env["ATEN_CPU_CAPABILITY"] == "avx2"
    assert env["MKL_CBWR"].startswith("AVX2")
    assert env["OPENBLAS_CORETYPE"] == "Haswell"
    assert set(env) >= {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NPY_DISABLE_CPU_FEATURES",
                        "ONEDNN_MAX_CPU_ISA"}
    makefile = (ROOT / "Makefile").read_text()
    assert "include lib/core/numerics.env" in makefile  # the Makefile reads the same file


def test_env_command_is_shell_safe():
    out = subprocess.run([sys.executable, "-m", "sae_ortho.core.numerics", "--env"], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    script = out + "\nprintf '%s' \"$NPY_DISABLE_CPU_FEATURES\""
    got = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    assert got == numerics.pinned_env()["NPY_DISABLE_CPU_FEATURES"]


def test_setup_warns_or_refuses_when_not_pinned(monkeypatch):
    monkeypatch.setattr(numerics, "problems",
                        lambda threads=None: ["ATEN_CPU_CAPABILITY=None in the environment, pinned 'avx2'"])
    monkeypatch.delenv(numerics.STRICT_VAR, raising=False)
    monkeypatch.setattr(reproducibility, "_warned", False)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        setup(0, threads=1)
        setup(0, threads=1)  # once per process, one line
    ours = [w for w in record if issubclass(w.category, NumericsWarning)]
    assert len(ours) == 1 and "ATEN_CPU_CAPABILITY" in str(ours[0].message) and "\n" not in str(ours[0].message)
    monkeypatch.setenv(numerics.STRICT_VAR, "1")
    with pytest.raises(RuntimeError, match="not pinned"):
        setup(0, threads=1)
    monkeypatch.setattr(numerics, "problems", lambda threads=None: [])
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumericsWarning)
        assert check_numerics() == []


@needs_x86
def test_problems_name_each_unpinned_library():
    env = {**_clean_env(), "PYTHONPATH": str(ROOT)}
    code = "from sae_ortho.core import numerics; print('\\n'.join(numerics.problems()))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    for name in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES"):
        assert name in out
    pinned = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, **numerics.pinned_env()},
                            capture_output=True, text=True, check=True).stdout
    assert pinned.strip() == ""
    # the effective state is checked, not only the variables: a late ATEN_CPU_CAPABILITY is caught
    late = ("import torch; torch.ones(2).sum(); import os; os.environ['ATEN_CPU_CAPABILITY'] = 'avx2'; "
            "from sae_ortho.core import numerics; print('\\n'.join(numerics.problems()))")
    env_late = {**env, **numerics.pinned_env()}
    env_late.pop("ATEN_CPU_CAPABILITY")
    out = subprocess.run([sys.executable, "-c", late], cwd=ROOT, env=env_late, capture_output=True, text=True,
                         check=True).stdout
    native = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                            env=_clean_env(), capture_output=True, text=True, check=True).stdout.strip()
    if native != "AVX2":  # on an AVX-512 host the late variable leaves torch on its native kernels
        assert f"torch dispatches {native} kernels" in out


def test_kernel_spec_carries_the_pinned_environment(tmp_path):
    spec = json.loads(numerics.install_kernel(tmp_path, python="/x/python").read_text())
    assert spec["argv"][:3] == ["/x/python", "-m", "ipykernel_launcher"]
    assert spec["env"] == {**numerics.pinned_env(), numerics.STRICT_VAR: "1"}
    assert (tmp_path / "share/jupyter/kernels/python3/kernel.json").exists()


@needs_x86
def test_thread_variables_may_follow_the_runs_thread_count():
    """torchrun starts each process with OMP_NUM_THREADS=1; a run that asks for 1 thread is pinned."""
    env = {**_clean_env(), "PYTHONPATH": str(ROOT), **numerics.pinned_env(), "OMP_NUM_THREADS": "1"}
    code = ("from sae_ortho.core import numerics; print('|'.join(numerics.problems()) + '#' + "
            "'|'.join(numerics.problems(threads=1)) + '#' + '|'.join(numerics.problems(threads=2)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    default, one, two = out.split("#")
    assert "OMP_NUM_THREADS='1'" in default and one == "" and "OMP_NUM_THREADS='1'" in two
    # an ISA pin cannot be excused by a thread count
    env["MKL_CBWR"] = "AUTO"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert "MKL_CBWR" in out.split("#")[1]
