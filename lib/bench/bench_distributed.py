"""Benchmark: data-parallel training throughput on 1 ... N processes (torchrun + sae_ortho.training.train_sae).

    python -m sae_ortho.bench.bench_distributed                       # CPU: 1 vs 2 processes, 1 thread each
    python -m sae_ortho.bench.bench_distributed --procs 1,2,4,8 --device cuda --threads 4 \\
        --n-latents 65536 --toy-d 512 --batch-size 8192 --steps 50

Every configuration trains the same SAE on the same global batches (toy data, same seed) with
``torchrun --standalone --nproc_per_node=P -m sae_ortho.training.train_sae`` in a fresh temporary folder; the
table gives its training throughput (from its summary.json, start-up excluded), the speed-up over
the first configuration, and the largest difference of its decoder from the first one's (float
rounding of the gradient average only). The last line printed is machine-readable.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import safetensors.torch

from sae_ortho.core.atomic import atomic_write


def run_config(procs: int, threads: int, args: argparse.Namespace, folder: Path) -> dict:
    """One torchrun launch; returns its summary and decoder."""
    out = folder / f"p{procs}t{threads}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           "-m", "sae_ortho.training.train_sae", "--data", "toy", "--out", str(out), "--no-progress",
           "--n-latents", str(args.n_latents), "--toy-d", str(args.toy_d), "--toy-features", str(args.toy_features),
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--threads", str(threads),
           "--device", args.device, "--ortho-weight", str(args.ortho_weight), "--ortho-method", args.ortho_method,
           "--checkpoint-every", "0", "--log-every", str(args.steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{procs} process(es) x {threads} thread(s) failed:\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    summary["W_dec"] = safetensors.torch.load_file(str(out / "sae" / "sae_weights.safetensors"))["W_dec"]
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--procs", default="1,2", help="process counts, comma-separated")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    p.add_argument("--also-one-process-threads", type=int, default=0,
                   help="also run 1 process with this many threads (the same cores used by threads)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-latents", type=int, default=4096)
    p.add_argument("--toy-d", type=int, default=128)
    p.add_argument("--toy-features", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--ortho-weight", type=float, default=0.01)
    p.add_argument("--ortho-method", default="chunked")
    p.add_argument("--out", help="also write the table (Markdown) to this file")
    a = p.parse_args(argv)
    if a.out and not Path(a.out).parent.is_dir():
        raise SystemExit(f"--out: the folder {Path(a.out).parent} does not exist")
    try:
        procs = [int(x) for x in a.procs.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--procs must be comma-separated positive integers, got {a.procs!r}") from None
    if not procs or min(procs) <= 0:
        raise SystemExit(f"--procs must be comma-separated positive integers, got {a.procs!r}")
    for flag in ("threads", "n_latents", "toy_d", "toy_features", "batch_size", "steps"):
        if getattr(a, flag) <= 0:
            raise SystemExit(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(a, flag)}")
    configs = [(n, a.threads) for n in procs]
    if a.also_one_process_threads:
        configs.append((1, a.also_one_process_threads))
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(n, t, run_config(n, t, a, Path(tmp))) for n, t in configs]
    base = runs[0][2]
    lines = [
        (f"toy data d={a.toy_d}, {a.n_latents} latents, global batch {a.batch_size}, {a.steps} steps, "
         f"lambda_orth={a.ortho_weight} ({a.ortho_method}), device {a.device}"),
        "",
        "| processes | threads each | steps/s | inputs/s | speed-up | max abs W_dec difference vs first |",
        "|---|---|---|---|---|---|",
    ]
    for n, t, s in runs:
        diff = float((s["W_dec"] - base["W_dec"]).abs().max())
        lines.append(f"| {n} | {t} | {s['steps_per_s']:.3f} | {s['inputs_per_s']:.0f} | "
                     f"{s['inputs_per_s'] / base['inputs_per_s']:.2f} | {diff:.1e} |")
    lines.append("")
    lines.append(" ".join(f"p{n}t{t}={s['inputs_per_s']:.0f}" for n, t, s in runs))
    text = "\n".join(lines)
    print(text)
    if a.out:
        out = atomic_write(Path(a.out), f"# Data-parallel throughput\n\nWritten by `python -m sae_ortho.bench.bench_distributed --out {Path(a.out).name}`.\n\n"
                       f"{text}\n")
        print(f"written to {out}")


if __name__ == "__main__":
    main()
