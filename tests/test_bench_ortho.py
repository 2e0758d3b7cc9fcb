"""Smoke test of the benchmark CLI ``python -m sae_ortho.bench.bench_ortho`` (one subprocess per method)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sae_ortho.bench.bench_ortho import METHODS
from sae_ortho.ortho import EXACT_METHODS

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"n=256 d=32 best=\w+ overhead=[0-9.]+ agreement=[0-9.]+ vanilla_vs_matmul=[0-9.]+")


def _bench(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sae_ortho.bench.bench_ortho", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def small_run():
    return _bench(
        "--n", "256", "--d", "32", "--batch", "64", "--steps", "1", "--refresh-every", "5", "--threads", "1"
    )


def _table(stdout: str) -> dict[str, list[str]]:
    """method -> the cells of its row in the markdown table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in METHODS:
            rows[cells[0]] = cells
    return rows


def test_small_run_succeeds_with_summary_line(small_run):
    assert small_run.returncode == 0, small_run.stderr[-3000:]
    last = small_run.stdout.strip().splitlines()[-1]
    assert SUMMARY.fullmatch(last), last
    best = re.search(r"best=(\w+)", last).group(1)
    assert best in ("chunked", "cached", "active", "naive")


def test_small_run_reports_every_method(small_run):
    rows = _table(small_run.stdout)
    assert list(rows) == list(METHODS)  # vanilla first, then every default method
    header = next(line for line in small_run.stdout.splitlines() if line.startswith("| method"))
    col = [c.strip() for c in header.strip("|").split("|")].index("neighbour agreement")
    for method in EXACT_METHODS:
        assert rows[method][1] == "yes"
        assert rows[method][col] == "1.0000", (method, rows[method])
    assert rows["vanilla"][col] == "nan"
    assert rows["certified"][1] == "yes (certified)" and rows["certified"][col] == "1.0000"
    for cells in rows.values():
        assert float(cells[2]) >= 0  # step time
    report = next(line for line in small_run.stdout.splitlines() if line.startswith("certified, over its"))
    assert report.endswith("(every step): 1.0000")


def test_paired_run_times_vanilla_beside_each_method():
    out = _bench("--n", "128", "--d", "16", "--batch", "32", "--steps", "2", "--threads", "1",
                 "--methods", "certified", "--certified-steps", "2", "--warm-steps", "1", "--paired")
    assert out.returncode == 0, out.stderr[-3000:]
    header = next(line for line in out.stdout.splitlines() if line.startswith("| method"))
    assert "amortised overhead vs the vanilla steps beside it" in header
    row = _table(out.stdout)["certified"]
    assert float(row[5]) > 0 and float(row[6]) > 0  # the vanilla step beside it, and the ratio


@pytest.mark.parametrize(
    "args,option",
    [(["--methods", "bogus"], "--methods"), (["--n", "0"], "--n")],
)
def test_bad_arguments_exit_nonzero_naming_the_option(args, option):
    out = _bench(*args, "--d", "8", "--batch", "8", "--steps", "1", "--threads", "1", timeout=60)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith(option), out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_replot_draws_the_figure_and_overhead_table_from_the_csv(tmp_path):
    """--replot: overheads against the paired vanilla steps where timed, else the same run's vanilla row."""
    import os

    import pandas as pd

    (tmp_path / "results").mkdir()
    pd.DataFrame({
        "method": ["vanilla", "chunked", "vanilla", "certified"], "n": [64, 64, 64, 64], "d": 8, "batch": 4,
        "amortised_s": [1.0, 3.0, 2.0, 2.5], "peak_rss_mb": 10.0, "kernel": "dense",
        "paired_vanilla_s": [float("nan"), float("nan"), float("nan"), 2.0],
        "machine": ["old CPU, 2 threads", "old CPU, 2 threads", "new CPU, 2 threads", "new CPU, 2 threads"],
    }).to_csv(tmp_path / "results" / "ortho_scaling.csv", index=False)
    env = {**os.environ, "SAE_STUDY_OUTPUT": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "sae_ortho.bench.bench_ortho", "--replot"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "figures" / "ortho_scaling.png").stat().st_size > 0
    rows = {(r["machine"], r["method"]): r for r in _md_rows((tmp_path / "results" / "ortho_scaling.md").read_text())}
    assert float(rows["old CPU, 2 threads", "chunked"]["64"]) == 3.0  # against the vanilla row of its run
    assert float(rows["new CPU, 2 threads", "certified"]["64"]) == 1.25  # against the vanilla beside it
    bad = subprocess.run([sys.executable, "-m", "sae_ortho.bench.bench_ortho", "--replot", "--paired"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode != 0 and "--replot" in bad.stderr and "--paired" in bad.stderr


def _md_rows(text: str) -> list[dict[str, str]]:
    from sae_ortho.reporting.report import read_tables

    (table,) = read_tables(text)
    return table
