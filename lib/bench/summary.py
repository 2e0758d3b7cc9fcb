"""The README's findings on the trainer, formatted from the committed benchmark outputs.

    python -m sae_ortho.bench.summary   # writes results/findings_trainer.md from:

- ``results/bench_trainer.md`` (:mod:`sae_ortho.bench.bench_trainer`: tokens/s against SAELens,
  dense and sparse step; whole runs dense against auto),
- ``results/bench_trainer_density.md`` (the same for ReLU SAEs at several L0: where the sparse step
  stops paying),
- ``results/kernel_equivalence.md`` (:mod:`sae_ortho.experiments.kernel_equivalence`),
- ``results/bench_harvest.md`` (:mod:`sae_ortho.bench.bench_harvest`).

Then ``python -m sae_ortho.reporting.report`` puts it in the README.
"""

from __future__ import annotations

import re

from sae_ortho.core.paths import COMMITTED_RESULTS
from sae_ortho.reporting.report import read_tables, write_findings
from sae_ortho.training.train import SPARSE_MAX_DENSITY

GOAL = 2.5  # tokens/s against SAELens at the notebook's shape (issue: a trainer that uses sparsity)


def _x(cell: str) -> float:
    return float(cell.rstrip("x").replace(",", ""))


def speed_lines(text: str, density: str) -> list[str]:
    rows = read_tables(text)[0]
    first = rows[0]
    n0, b0 = first["latents"], first["batch"]
    out = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        at = {r["trainer"]: r for r in rows if r["kind"] == kind and r["latents"] == n0 and r["batch"] == b0}
        sparse, dense = _x(at["ours sparse"]["vs SAELens"]), _x(at["ours dense"]["vs SAELens"])
        label = "ReLU + L1" if kind == "relu" else "TopK"
        out.append(f"- **{label} at the notebook's shape** ({n0} latents, batch {b0}): the sparse step trains at "
                   f"{sparse:.2f}x SAELens's tokens/s (the dense step {dense:.2f}x); the goal of {GOAL:g}x is "
                   f"{'met' if sparse >= GOAL else 'not met'} there.")
    sparse_rows = [r for r in rows if r["trainer"] == "ours sparse"]
    best = max(sparse_rows, key=lambda r: _x(r["vs SAELens"]))
    low = min(sparse_rows, key=lambda r: _x(r["vs SAELens"]))
    met = [r for r in sparse_rows if _x(r["vs SAELens"]) >= GOAL]
    out.append(f"- **Over the benchmark's shapes** ({', '.join(sorted({r['latents'] for r in rows}, key=int))} latents, "
               f"batch {' and '.join(sorted({r['batch'] for r in rows}, key=int))}) the sparse step runs at "
               f"{_x(low['vs SAELens']):.2f}x to {_x(best['vs SAELens']):.2f}x SAELens's throughput "
               f"(best: {best['kind']}, {best['latents']} latents, batch {best['batch']}) and reaches {GOAL:g}x at "
               f"{len(met)} of {len(sparse_rows)} shapes; SAELens's own sparse TopK decoder "
               f"{'fails to train on CPU' if any(r['ms / step'].startswith('fails') for r in rows) else 'trains'}.")
    ratios = re.findall(r"(relu|topk): auto / dense throughput ([0-9.]+)x", text)
    if ratios:
        runs = read_tables(text)[1]
        runs_steps = re.search(r"Whole runs: (\d+) steps, (\d+) latents, batch (\d+)", text)
        out.append(f"- **Whole runs** of notebook 02's configuration ({int(runs_steps[1]) * int(runs_steps[3]):,} tokens, "
                   f"{runs_steps[2]} latents, from a fresh SAE, kernel=\"auto\" against \"dense\"): "
                   + "; ".join(f"{'ReLU' if k == 'relu' else 'TopK'} {float(v):.2f}x the throughput "
                               f"(final L0 {_cell(runs, k, 'auto', 'final L0')} vs {_cell(runs, k, 'dense', 'final L0')})"
                               for k, v in ratios) + ".")
    d_rows = [r for r in read_tables(density)[0] if r["trainer"] == "ours sparse"]
    parts = [f"{n} latents: " + ", ".join(f"{_x(r['vs ours dense']):.2f}x at L0 {r['L0']}" for r in d_rows if r["latents"] == n)
             for n in dict.fromkeys(r["latents"] for r in d_rows)]
    out.append(f"- **Where the sparse step stops paying** (ReLU, batch {d_rows[0]['batch']}, its throughput against the "
               f"dense step's, by the L0 the SAE starts from): {'; '.join(parts)}. kernel=\"auto\" takes the sparse step "
               f"while at most {SPARSE_MAX_DENSITY:.0%} of the codes are active.")
    return out


def _cell(rows: list[dict], kind: str, kernel: str, col: str) -> str:
    return next(r[col] for r in rows if r["kind"] == kind and r["kernel"] == kernel)


def equivalence_lines(text: str) -> list[str]:
    kinds = re.findall(r"^(relu|topk)[^\n]*latents, ([0-9,]+) tokens[^\n]*seeds (\[[^\]]*\])", text, flags=re.MULTILINE)
    out = []
    for (kind, tokens, seeds), table in zip(kinds, read_tables(text)):
        sparse = {r["metric"]: r["verdict"] for r in table if r["arm"] == "sparse"}
        control = {r["metric"]: r["verdict"] for r in table if r["arm"] == "control"}
        equal = [m for m, v in sparse.items() if v == "equal"]
        differs = [m for m, v in control.items() if v == "differs"]
        out.append(f"- **Same SAEs, {'ReLU' if kind == 'relu' else 'TopK'}** ({tokens} tokens, seeds {seeds}): the sparse "
                   f"step is equal to the dense one within the seed-to-seed margin on {len(equal)} of {len(sparse)} metrics "
                   f"({', '.join(f'{m}: {v}' for m, v in sparse.items())}); the positive control (half the learning rate) "
                   f"differs on {', '.join(differs) if differs else 'no metric'}.")
    return out


def harvest_lines(text: str) -> list[str]:
    rows = {r["pass"]: r for r in read_tables(text)[0]}
    share = re.search(r"harvest throughput / forward-pass limit: ([0-9.]+)", text)[1]
    return [(f"- **Harvesting** runs at {rows['harvest']['tokens / s']} tokens/s, {float(share):.2f} of the forward pass it "
            f"needs ({rows['forward to block L (the limit)']['tokens / s']} tokens/s; the full forward "
            f"{rows['full forward']['tokens / s']}).")]


def main() -> None:
    read = {name: (COMMITTED_RESULTS / f"{name}.md").read_text()
            for name in ("bench_trainer", "bench_trainer_density", "kernel_equivalence", "bench_harvest")}
    head = read["bench_trainer"].split("\n\n")[2].split(";")[0]
    title = (f"## Findings on the trainer (benchmarks on {head}; the tables are [`results/bench_trainer.md`]"
             "(results/bench_trainer.md), [`results/bench_trainer_density.md`](results/bench_trainer_density.md), "
             "[`results/kernel_equivalence.md`](results/kernel_equivalence.md) and "
             "[`results/bench_harvest.md`](results/bench_harvest.md))")
    lines = [title, ""]
    lines += speed_lines(read["bench_trainer"], read["bench_trainer_density"])
    lines += equivalence_lines(read["kernel_equivalence"])
    lines += harvest_lines(read["bench_harvest"])
    print(write_findings("trainer", "\n".join(lines)))


if __name__ == "__main__":
    main()
