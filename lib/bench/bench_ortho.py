"""Benchmark: what the orthogonality penalty costs per training step, and how exact each method is.

    python -m sae_ortho.bench.bench_ortho --n 16384 --d 512 --batch 4096 --steps 3
    python -m sae_ortho.bench.bench_ortho --scaling            # n = 4096 ... 100,000 at d = 768: figure + CSV
    python -m sae_ortho.bench.bench_ortho --quality            # toy ground-truth recovery per method

For each method, in a fresh subprocess (so peak memory is that method's own), one full training
step of the shared trainer (forward, backward, Adam, decoder renormalisation) of a ReLU SAE is
timed, and compared with the vanilla SAE's step measured the same way in the same run:

- ``vanilla``: no penalty;
- ``naive``: full n x n Gram matrix with autograd;
- ``active``: the batch's active latents against all rows, one [m, n] block with autograd;
- ``chunked``: exact search in [chunk, n] blocks without gradient, chosen pairs recomputed;
- ``cached``: top-k candidates refreshed every K steps (exact, chunked); the refresh is timed
  separately and amortised over K steps;
- ``certified``: top-k candidates with a certificate (exact at every step; rows whose certificate
  fails are searched again). Timed over ``--certified-steps`` steps after ``--warm-steps``
  untimed ones (certificates last some steps, so the first steps after the initial full search
  would flatter it); the initial full search is reported as its refresh, once per run;
- ``ortsae``: nearest neighbour within random chunks (OrtSAE), an approximation;
- ``incremental``: the last stage of the staged dictionary (m new latents scored against all n).

Exactness: for (a sample of) the active latents of the last batch, the fraction whose chosen
neighbour has the exact nearest-neighbour |cos|, and the max abs error of the penalty.
The vanilla step's FLOP/s (12 B n d per step) is reported as a fraction of a dense matmul's
FLOP/s ([B, d] @ [d, n]) measured in the same process. The last line printed is machine-readable.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from sae_ortho.core.atomic import replacing
from sae_ortho.core.numerics import machine_label
from sae_ortho.core.paths import RESULTS
from sae_ortho.core.reproducibility import setup
from sae_ortho.core.validation import check_bool, check_output_dir
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.ortho import (
    DEFAULT_CACHE_K,
    EXACT_METHODS,
    METHOD_OPTIONS,
    PENALTY_SHAPES,
    OrthoConfig,
    nn_abs_cos,
)
from sae_ortho.training.train import Stepper, TrainConfig

METHODS = ("vanilla", "naive", "active", "chunked", "cached", "certified", "ortsae", "incremental")
# Dense methods whose |cos| block with autograd would need more than this are not attempted.
DENSE_LIMIT_BYTES = 8e9


@dataclass
class Result:
    method: str
    n: int
    d: int
    batch: int
    step_s: float  # median time of one step (for cached: between refreshes)
    refresh_s: float  # cached: one exact refresh; 0 otherwise
    amortised_s: float  # step_s + refresh_s / K
    peak_rss_mb: float
    active: int  # active latents in the last batch
    agreement: float  # fraction of checked active latents with an exact nearest neighbour
    max_abs_err: float  # max abs error of the penalty value over checked latents
    matmul_gflops: float
    vanilla_gflops: float
    note: str = ""
    # certified: its own per-step report (sae_ortho.ortho.CertifiedCache.summary) over the timed steps
    certified: dict | None = None
    # --paired: the vanilla step timed in the same process, alternating with this method's steps
    paired_vanilla_s: float = float("nan")
    kernel: str = "dense"  # the training step (sae_ortho.training.train.TrainConfig.kernel), the same for vanilla
    machine: str = ""  # CPU and threads it was timed on (sae_ortho.core.numerics.machine_label)


# Command-line options: default, smallest allowed value, and the methods that use it (None: all).
OPTIONS = {
    "n": (16384, 2, None),
    "d": (512, 1, None),
    "batch": (4096, 1, None),
    "steps": (3, 1, None),
    "k": (8, 1, ("cached",)),
    "refresh_every": (100, 1, ("cached",)),
    "ortsae_chunk": (1024, 2, ("ortsae",)),
    "stage_size": (1024, 2, ("incremental",)),  # 1 would leave the first stage's latent alone
    "check_rows": (4096, 1, None),
    "stale_steps": (0, 0, ("cached",)),
    "certified_k": (DEFAULT_CACHE_K["certified"], 1, ("certified",)),
    "certified_steps": (20, 1, ("certified",)),
    "warm_steps": (20, 0, ("certified",)),
    "certified_check": (64, 0, ("certified",)),
    "threads": (2, 1, None),
}
DEFAULT_METHODS = "naive,active,chunked,cached,certified,ortsae,incremental"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_cli(a: argparse.Namespace) -> list[str]:
    """Check the options before any timing starts; fill in defaults. Returns the methods.

    Every value is range-checked, and an option given explicitly that nothing in this run uses is
    an error instead of being silently ignored."""
    given = {name for name in OPTIONS if getattr(a, name) is not None}
    if a.quality:
        extra = [_flag(n) for n in sorted(given)] + ["--methods"] * (a.methods is not None) + ["--scaling"] * a.scaling + ["--paired"] * a.paired
        if extra:
            raise SystemExit(
                f"--quality runs a fixed toy setting (1 thread) and takes no other options; got {', '.join(extra)}"
            )
        return []
    methods = [m.strip() for m in (a.methods if a.methods is not None else DEFAULT_METHODS).split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; allowed: {', '.join(METHODS)}")
    if not methods:
        raise SystemExit(f"--methods must name at least one method of {', '.join(METHODS)}, got {a.methods!r}")
    if len(set(methods)) != len(methods):
        raise SystemExit(f"--methods names a method twice: {a.methods!r}")
    if a.scaling and "n" in given:
        raise SystemExit("--n does not apply with --scaling (it runs n = 4096 ... 100,000); drop one of them")
    for name, (default, low, users) in OPTIONS.items():
        value = getattr(a, name)
        if value is None:
            setattr(a, name, default)
            continue
        if users is not None and not set(users) & set(methods):
            raise SystemExit(
                f"{_flag(name)} only applies to --methods {' or '.join(users)}, which this run does not include"
            )
        if value < low:
            raise SystemExit(f"{_flag(name)} must be an int >= {low}, got {value}")
    return methods


def _matmul_gflops(batch: int, d: int, n: int, reps: int = 3) -> float:
    a, b = torch.randn(batch, d), torch.randn(d, n)
    a @ b  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * batch * d * n * reps / (time.perf_counter() - t0) / 1e9


def _inputs(batch: int, d: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(batch, d, generator=g)


def _method_options(method: str, k: int, refresh: int, ortsae_chunk: int, check_rows: int) -> dict:
    """The OrthoConfig options that ``method`` uses (the others must keep their defaults)."""
    options = {"cache_k": k, "refresh_every": refresh, "ortsae_chunk": ortsae_chunk, "check_rows": check_rows}
    return {name: value for name, value in options.items() if method in METHOD_OPTIONS[name]}


def run_one(method: str, n: int, d: int, batch: int, steps: int, k: int, refresh: int,
            ortsae_chunk: int, stage_size: int, check_rows: int, threads: int, stale_steps: int = 0,
            certified_k: int = DEFAULT_CACHE_K["certified"], certified_steps: int = 20, warm_steps: int = 20, certified_check: int = 64,
            paired: bool = False, kernel: str = "dense") -> Result:
    """Time ``steps`` training steps of one method (after one warm-up step) in this process.

    With ``paired``, a vanilla SAE with the same start is stepped on the same inputs in this
    process too, alternating step by step with the timed ones: a machine whose load changes
    during the run then slows both alike."""
    paired = check_bool("paired", paired)
    setup(0, threads)
    g = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig(d=d, n_latents=n), generator=g)
    with torch.no_grad():  # thresholds for a realistic L0 of ~32 per input
        pre = sae.pre_acts(_inputs(min(batch, 2048), d, g))
        sae.b_enc.copy_(-pre.quantile(1 - min(1.0, 32 / n), dim=0) if n > 32 else torch.zeros(n))
    ortho_method = {"vanilla": "chunked", "incremental": "chunked"}.get(method, method)
    cfg = TrainConfig(
        steps=10**6, batch_size=batch, lr=1e-4, l1_coeff=1e-3,
        ortho_weight=0.0 if method == "vanilla" else 1e-2,
        ortho=OrthoConfig(method=ortho_method, **_method_options(ortho_method, certified_k if method == "certified" else k,
                                                                  refresh, ortsae_chunk, certified_check)),
        stage_size=stage_size if method == "incremental" else 0, kernel=kernel,
    )
    if method == "certified":
        steps = certified_steps
    stepper = Stepper(sae, cfg)
    # the incremental method is timed in its last stage: m new latents against all n
    step0 = cfg.steps - 1 if method == "incremental" else 0
    xs = [_inputs(batch, d, g) for _ in range(steps + 1)]
    refresh_s = 0.0
    if method == "cached":  # time the first (exact, chunked) refresh; later ones cost the same
        t0 = time.perf_counter()
        stepper.cache.refresh(sae.W_dec, step0)
        refresh_s = time.perf_counter() - t0
    elif method == "certified":  # the initial full search, once per run (and per stage)
        t0 = time.perf_counter()
        Wd = sae.W_dec.detach()
        stepper.cache.observe((Wd / Wd.norm(dim=-1, keepdim=True)).unsqueeze(0))
        refresh_s = time.perf_counter() - t0
    stepper(xs[0], step0)  # warm-up
    van = None
    if paired and method != "vanilla":
        van_sae = copy.deepcopy(sae)
        van = Stepper(van_sae, dataclasses.replace(cfg, ortho_weight=0.0, stage_size=0))
        van(xs[0], 0)
    if method == "certified":
        for i in range(warm_steps):  # into the regime where certificates run out
            stepper(_inputs(batch, d, g), step0 + 1 + i)
        step0 += warm_steps
        before = dict(stepper.cache.stats)
    times, van_times = [], []
    for i in range(steps):
        if van is not None:
            t0 = time.perf_counter()
            van(xs[i + 1], 1 + i)
            van_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        stepper(xs[i + 1], step0 + 1 + i if method != "incremental" else step0)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    paired_s = statistics.median(van_times) if van_times else float("nan")
    report = None
    if method == "certified":  # mean, not median: re-searches make some steps dearer than others
        step_s = statistics.fmean(times)
        paired_s = statistics.fmean(van_times) if van_times else paired_s
        report = _certified_report(stepper.cache, before)
    if method == "cached":
        for i in range(stale_steps):  # let the candidates age before checking exactness
            stepper(_inputs(batch, d, g), step0 + 1 + steps + i)
    agreement, err, active = _exactness(sae, stepper, xs[-1], method, cfg.ortho, check_rows, stage_size)
    vanilla_flops = 12 * batch * n * d / step_s / 1e9 if method == "vanilla" else float("nan")
    amortised = step_s if method == "certified" else step_s + refresh_s / refresh
    return Result(
        method, n, d, batch, step_s, refresh_s, amortised, _peak_rss_mb(), active,
        agreement, err, _matmul_gflops(batch, d, n), vanilla_flops, certified=report, paired_vanilla_s=paired_s,
        kernel=kernel, machine=machine_label(threads),
    )


def _certified_report(cache, before: dict) -> dict:
    """The certified cache's counters over the timed steps only."""
    from sae_ortho.ortho import CertifiedCache

    timed = CertifiedCache(cache.k, cache.chunk, cache.check_rows)
    timed.stats = {k: cache.stats[k] - before[k] for k in cache.stats}
    timed.stats["margin_min"] = cache.stats["margin_min"]
    return timed.summary()


@torch.no_grad()
def _exactness(sae: SAE, stepper: Stepper, x: torch.Tensor, method: str, ortho: OrthoConfig,
               check_rows: int, stage_size: int) -> tuple[float, float, int]:
    codes = sae.encode(x)
    active = (codes.amax(0) > 0).nonzero().flatten()
    if method == "vanilla" or len(active) == 0:
        return float("nan"), float("nan"), len(active)
    rows = active
    if method == "incremental":  # only the last stage's latents are scored, against rows < end = n
        rows = rows[rows >= (sae.cfg.n_latents - 1) // stage_size * stage_size]
    if len(rows) > check_rows:  # a random sample keeps the exact reference affordable at 100K
        rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(1))[:check_rows]]
    W = sae.W_dec
    exact = nn_abs_cos(W, rows, method="chunked")
    end = sae.cfg.n_latents  # the last stage compares with every row
    got = nn_abs_cos(W[:end], rows, method=ortho.method, cache=stepper.cache, ortsae_chunk=ortho.ortsae_chunk)
    shape = PENALTY_SHAPES[ortho.shape]
    agree = float(((got - exact).abs() <= 1e-6).float().mean())
    return agree, float((shape(got) - shape(exact)).abs().max()), len(active)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def expected_active(n: int, batch: int, l0: float = 32) -> float:
    """Expected number of latents active in a batch when each fires with probability l0 / n."""
    return n * (1 - math.exp(-batch * l0 / n))


def measure(method: str, **kw) -> Result:
    """Run one method in a fresh subprocess (its own peak memory) and return its result."""
    n = kw["n"]
    # Autograd keeps the |cos| block and its gradient: skip what cannot fit on this machine.
    need = {"naive": 3 * 4 * n * n, "active": 3 * 4 * n * expected_active(n, kw["batch"])}.get(method, 0)
    if need > DENSE_LIMIT_BYTES:
        nan = float("nan")
        return Result(method, n, kw["d"], kw["batch"], nan, 0.0, nan, nan, 0, nan, nan, nan, nan,
                      note=f"skipped: its dense |cos| block with autograd needs ~{need / 1e9:.0f} GB")
    cmd = [sys.executable, "-m", "sae_ortho.bench.bench_ortho", "--worker", json.dumps({"method": method, **kw})]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker for {method} failed:\n{out.stderr[-3000:]}")
    return Result(**json.loads(out.stdout.strip().splitlines()[-1]))


def benchmark(methods: list[str], **kw) -> list[Result]:
    results = [measure(m, **kw) for m in ["vanilla"] + [m for m in methods if m != "vanilla"]]
    return results


def report(results: list[Result]) -> str:
    """A markdown table and the machine-readable summary line."""
    van = results[0]
    paired = any(not math.isnan(r.paired_vanilla_s) for r in results)

    def overhead(r: Result) -> float:  # with --paired: against the vanilla steps timed beside it
        if not paired or r.method == "vanilla":
            return r.amortised_s / van.step_s
        return r.amortised_s / r.paired_vanilla_s

    lines = [
        (f"n={van.n} d={van.d} batch={van.batch}; vanilla step {van.step_s:.3f} s, "
        f"{van.vanilla_gflops:.0f} GFLOP/s = {van.vanilla_gflops / van.matmul_gflops:.2f} x dense matmul "
        f"({van.matmul_gflops:.0f} GFLOP/s); active latents in the last batch: {results[-1].active}"),
        "",
        "| method | exact | step (s) | refresh (s) | amortised overhead vs vanilla | peak RSS (MB) | neighbour agreement | max abs penalty error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if paired:
        lines[2] = lines[2].replace("| amortised overhead vs vanilla |", "| amortised overhead vs vanilla | vanilla step beside it (s) | amortised overhead vs the vanilla steps beside it |")
        lines[3] = "|---|---|---|---|---|---|---|---|---|---|"
    for r in results:
        exact = "yes" if r.method in EXACT_METHODS or r.method == "vanilla" else (
            "staged" if r.method == "incremental" else "between refreshes" if r.method == "cached"
            else "yes (certified)" if r.method == "certified" else "no (approx.)")
        beside = f"{r.paired_vanilla_s:.3f} | {overhead(r):.3f} | " if paired else ""
        lines.append(
            f"| {r.method} | {exact} | {r.step_s:.3f} | {r.refresh_s:.2f} | {r.amortised_s / van.step_s:.3f} | {beside}"
            f"{r.peak_rss_mb:.0f} | {r.agreement:.4f} | {r.max_abs_err:.2e} | {r.note}".rstrip(" |") + " |"
        )
    for r in results:
        if r.certified:
            c = r.certified
            lines += ["", (
                f"certified, over its {c['searches']} timed steps: k = {c['k']} candidates per latent; certified "
                f"{c['certified_fraction']:.4f} of the scored rows, re-searched {c['researched_per_search']:.0f} rows "
                f"per step ({c['researched_fraction']:.4f} of the scored), {c['evaluated_per_row']:.2f} candidates "
                f"evaluated per scored row; margin of re-searched rows (best minus largest outside |cos|) mean "
                f"{c['mean_margin']:.4f}; agreement with the exact search on {c['rows_checked']} sampled rows "
                f"(every step): {c['agreement']:.4f}")]
    cands = [r for r in results if r.method in ("chunked", "cached", "certified", "active", "naive")
             and not math.isnan(r.amortised_s)]
    best = min(cands, key=overhead) if cands else van
    lines.append("")
    lines.append(
        f"n={van.n} d={van.d} best={best.method} overhead={overhead(best):.3f} "
        f"agreement={best.agreement:.4f} vanilla_vs_matmul={van.vanilla_gflops / van.matmul_gflops:.2f}"
    )
    return "\n".join(lines)


def quality(n_seeds: int = 3, steps: int = 3000, ortho_weight: float = 0.01, threads: int = 1) -> str:
    """Toy ground-truth recovery per method (the Q3 setting of notebook 01, smaller).

    64 features with Zipf firing (0.3 ... 0.003), copula-correlated in blocks of 4 (rho = 0.7),
    orthogonal in d = 64; SAEs with 64 latents; ``n_seeds`` seeds per method as one stack.
    """
    import pandas as pd

    from sae_ortho.data import toy
    from sae_ortho.experiments import sweep
    from sae_ortho.training.train import train

    setup(0, threads)
    data = toy.ToyData(
        toy.ToyDataConfig(64, 64, firing="zipf", p_max=0.3, p_min=0.003, structure="copula", rho=0.7, block_size=4),
        generator=torch.Generator().manual_seed(0),
    )
    variants = {
        "vanilla": (0.0, OrthoConfig(), 0),
        "chunked (exact)": (ortho_weight, OrthoConfig(), 0),
        "cached (k=4, K=50)": (ortho_weight, OrthoConfig(method="cached", cache_k=4, refresh_every=50), 0),
        "ortsae (chunks of 16)": (ortho_weight, OrthoConfig(method="ortsae", ortsae_chunk=16), 0),
        "incremental (stages of 16)": (ortho_weight, OrthoConfig(), 16),
        # last, so that the variants above draw the same data as before it was added
        "certified (k=4)": (ortho_weight, OrthoConfig(method="certified", cache_k=4, check_rows=64), 0),
    }
    rows = []
    for name, (w, ortho, stage) in variants.items():
        sae = SAE(SAEConfig(64, 64, n_models=n_seeds), generator=torch.Generator().manual_seed(1))
        cfg = TrainConfig(steps=steps, batch_size=256, lr=3e-3, l1_coeff=0.1, ortho_weight=w, ortho=ortho,
                          stage_size=stage, log_every=steps)
        t0 = time.perf_counter()
        res = train(sae, sweep.as_sampler([data] * n_seeds), cfg, progress=False)
        secs = (time.perf_counter() - t0) / steps
        gt = sweep.ground_truth_scores(sae, data.directions)
        stale, cert = res.stale_agreement, res.certified
        rows.append({
            "method": name,
            "mcc": f"{gt.mcc.mean():.3f} ± {gt.mcc.std(ddof=0):.3f}",
            "features alone": f"{gt.alone.mean():.3f} ± {gt.alone.std(ddof=0):.3f}",
            "composition latents": f"{gt.n_compositions.mean():.1f} ± {gt.n_compositions.std(ddof=0):.1f}",
            "missed": f"{gt.missed.mean():.3f}",
            "ms/step (stack)": f"{1000 * secs:.1f}",
            "stale-cache agreement (mean / min)": f"{np.mean(stale):.3f} / {np.min(stale):.3f}" if stale else "",
            "stale-cache max abs error of max abs cos": f"{np.max(res.stale_max_error):.3f}" if stale else "",
            "certified: agreement (rows checked) / re-searched rows per step / full searches": (
                f"{cert['agreement']:.4f} ({cert['rows_checked']}) / {cert['researched_per_search']:.1f} / "
                f"{cert['full_refreshes']}" if cert else ""),
        })
    return _markdown(pd.DataFrame(rows))


def _markdown(df) -> str:
    head = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    helps = {
        "n": "dictionary size",
        "k": "cached: candidates per latent",
        "refresh_every": "cached: steps between refreshes",
        "ortsae_chunk": "ortsae: rows per random chunk",
        "stage_size": "incremental: latents per stage",
        "check_rows": "active latents checked against exact",
        "stale_steps": "cached: untimed steps after the timed ones before exactness is checked "
                       "(refresh-every - 1 - steps checks the stalest candidates)",
        "certified_k": "certified: candidates per latent",
        "certified_steps": "certified: timed steps",
        "warm_steps": "certified: untimed steps before the timed ones",
        "certified_check": "certified: rows checked against the exact search every step",
    }
    for name, (default, low, _) in OPTIONS.items():  # default None: tells an option given from one left out
        p.add_argument(_flag(name), type=int, default=None,
                       help=f"{helps.get(name, name)} (default {default}, at least {low})")
    p.add_argument("--methods", default=None, help=f"comma-separated (default {DEFAULT_METHODS})")
    p.add_argument("--paired", action="store_true",
                   help="also time a vanilla step beside each method's, alternating, in its process "
                        "(for a machine whose load changes during the run)")
    p.add_argument("--scaling", action="store_true", help="n = 4096 ... 100,000 at d = 768: figure + CSV (the "
                   "rows of the methods and kernel run replace theirs in an existing CSV; the others are kept)")
    p.add_argument("--kernel", default="dense", choices=("dense", "sparse"),
                   help="the training step of every method and of vanilla (sae_ortho.training.train.TrainConfig.kernel)")
    p.add_argument("--quality", action="store_true", help="toy ground-truth recovery per method, then exit")
    p.add_argument("--replot", action="store_true",
                   help="redraw figures/ortho_scaling.png and results/ortho_scaling.md from the CSV, then exit")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        kw = json.loads(a.worker)
        print(json.dumps(asdict(run_one(**kw))))
        return
    if a.replot:
        extra = [_flag(n) for n in OPTIONS if getattr(a, n) is not None] + [
            f for f, on in (("--methods", a.methods is not None), ("--scaling", a.scaling), ("--paired", a.paired),
                            ("--quality", a.quality)) if on]
        if extra:
            raise SystemExit(f"--replot only redraws from results/ortho_scaling.csv and takes no other options; got {', '.join(extra)}")

        write_scaling_outputs(read_scaling(RESULTS / "ortho_scaling.csv"))
        return
    methods = _check_cli(a)
    if a.scaling:  # where the results go, checked before hours of timing
        check_output_dir("the results folder", RESULTS)
    if a.quality:
        print(quality(threads=1))
        return
    kw = {"d": a.d, "batch": a.batch, "steps": a.steps, "k": a.k, "refresh": a.refresh_every,
              "ortsae_chunk": a.ortsae_chunk, "stage_size": a.stage_size, "check_rows": a.check_rows, "threads": a.threads,
              "stale_steps": a.stale_steps, "certified_k": a.certified_k, "certified_steps": a.certified_steps,
              "warm_steps": a.warm_steps, "certified_check": a.certified_check, "paired": a.paired,
              "kernel": a.kernel}
    sizes = [4096, 16384, 32768, 65536, 100000] if a.scaling else [a.n]
    all_results = []
    for n in sizes:
        results = benchmark(methods, n=n, **kw)
        all_results += results
        print(report(results), flush=True)
    if a.scaling:
        save_scaling(all_results, methods)


def save_scaling(results: list[Result], methods: list[str]) -> None:
    """Write results/ortho_scaling.csv and figures/ortho_scaling.png.

    Rows of an existing CSV are replaced only for the ``methods`` asked for (the vanilla step that
    every run times too replaces the stored one only when asked for): a run that adds a method
    keeps the others' rows, and its ratios against vanilla are in its own ``paired_vanilla_s``."""
    import pandas as pd

    df = pd.DataFrame([asdict(r) for r in results])
    path = RESULTS / "ortho_scaling.csv"
    if path.exists():  # keep the rows of the methods (and kernel) this run did not measure
        old = pd.read_csv(path)
        if "kernel" not in old:
            old["kernel"] = "dense"
        if "machine" not in old:
            old["machine"] = UNRECORDED
        ran = {(m, k) for m, k in zip(df.method, df.kernel) if m in methods}
        df = df[[m in methods for m in df.method]]
        old = old[[(m, k) not in ran for m, k in zip(old.method, old.kernel)]]
        df = pd.concat([old, df], ignore_index=True)
    RESULTS.mkdir(exist_ok=True)
    with replacing(RESULTS / "ortho_scaling.csv") as tmp:
        df.to_csv(tmp, index=False)
    write_scaling_outputs(df)


def read_scaling(path=None):
    """The rows of ``results/ortho_scaling.csv`` (default: the committed one), with the columns that older
    rows lack filled in (``kernel`` dense, ``machine`` :data:`UNRECORDED`) and ``overhead``, the step time
    over the vanilla step's (:func:`overhead_vs_vanilla`)."""
    import pandas as pd

    from sae_ortho.core.paths import COMMITTED_RESULTS

    df = pd.read_csv(COMMITTED_RESULTS / "ortho_scaling.csv" if path is None else path)
    return _filled(df)


def _filled(df):
    for column, value in (("kernel", "dense"), ("machine", UNRECORDED)):
        df = df.assign(**{column: df[column].fillna(value) if column in df else value})
    return df.assign(overhead=overhead_vs_vanilla(df))


def write_scaling_outputs(df) -> None:
    """figures/ortho_scaling.png and results/ortho_scaling.md from the rows of the CSV."""
    from sae_ortho.reporting.plotting import save_figure

    df = _filled(df)
    print("wrote", save_figure(scaling_figure(df), "ortho_scaling"))
    table = df.pivot_table(
        index=["machine", "kernel", "method"], columns="n", values="overhead", aggfunc="first"
    )
    text = (
        f"# Cost of the orthogonality penalty against n (d = {df.d.iloc[0]}, batch = {df.batch.iloc[0]})\n\n"
        "Amortised training-step time over the vanilla step's (lower is better; 1 = free): against the "
        "vanilla steps timed beside it in the same process where the run was `--paired`, else against "
        "the vanilla row of the same run. Times compare only within a machine. From "
        "`results/ortho_scaling.csv` (`python -m sae_ortho.bench.bench_ortho --scaling`).\n\n"
        + table.reset_index().to_markdown(index=False, floatfmt=".3f") + "\n"
    )
    with replacing(RESULTS / "ortho_scaling.md") as tmp:
        tmp.write_text(text)
    print("wrote", RESULTS / "ortho_scaling.md")


# The machine of rows written before the CSV had the column (their times compare with each other only).
UNRECORDED = "not recorded (an earlier machine)"


def overhead_vs_vanilla(df):
    """Amortised step time over vanilla's: the vanilla steps timed beside it (--paired) where there are
    some, else the vanilla row of the same n, kernel and machine (the same run)."""
    van = df[df.method == "vanilla"].set_index(["n", "kernel", "machine"]).amortised_s
    keys = list(zip(df.n, df.kernel, df.machine))
    same_run = np.array([van.get(k, np.nan) for k in keys])
    paired = df.paired_vanilla_s.to_numpy() if "paired_vanilla_s" in df else np.full(len(df), np.nan)
    return df.amortised_s.to_numpy() / np.where(np.isfinite(paired), paired, same_run)


def scaling_figure(df):
    """figures/ortho_scaling.png from the rows of results/ortho_scaling.csv."""
    from sae_ortho.reporting import plotting

    df = _filled(df)
    label = df.method.where(df.kernel == "dense", df.method + " (" + df.kernel + " step)")
    machines = sorted(set(df.machine))
    if len(machines) > 1:  # say which series were timed where
        tag = {m: chr(ord("A") + i) for i, m in enumerate(machines)}
        label = label + " [" + df.machine.map(tag) + "]"
    series = {m: g.sort_values("n") for m, g in df.groupby(label, sort=False)}
    where = "; ".join(f"[{chr(ord('A') + i)}] {m}" for i, m in enumerate(machines)) if len(machines) > 1 else machines[0]
    return plotting.scaling(
        {m: (g.n.to_numpy(), g.amortised_s.to_numpy(), g.peak_rss_mb.to_numpy(), g.overhead.to_numpy())
         for m, g in series.items()},
        title=f"Orthogonality penalty cost, d={df.d.iloc[0]}, batch={df.batch.iloc[0]} (lower is better)\n{where}",
    )


if __name__ == "__main__":
    main()
