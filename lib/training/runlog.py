"""What a training run reports while it runs: a JSONL log, held-out metrics, and wandb on request.

One JSON object per line, flushed as it is written, so ``tail -f`` and pandas
(``pd.read_json(path, lines=True)``) read a run in progress::

    {"step": 100, "loss": 41.2, "recon": 38.0, "l1": 3.1, "ortho": 0.12, "l0": 31.9, "dead": 0.01}
    {"step": 100, "eval_fve": 0.83, "eval_l0": 30.7, "eval_dead": 0.02, "eval_rows": 4096}

A stacked run (M models) writes a list of M values per term. On resume the lines after the
checkpoint's step are dropped (they are trained again), so the log follows the run as if it had
not stopped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sae_ortho.core.atomic import atomic_write
from sae_ortho.core.validation import check_str
from sae_ortho.models.sae import SAE


def _json_value(v: Any) -> Any:
    """A log value: floats (lists of floats for a stack); NaN and inf as null (strict JSON)."""
    if isinstance(v, (Tensor, np.ndarray)):
        v = np.asarray(v.detach().cpu() if isinstance(v, Tensor) else v).tolist()
    if isinstance(v, list):
        return [_json_value(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class RunLog:
    """Append-only JSONL log of a run, with an optional wandb run beside it.

    Args:
        path: the ``.jsonl`` file (its folder is created).
        wandb_project: also log every record to this wandb project (``wandb`` must be installed).
        config: the run's configuration, given to wandb.
    """

    def __init__(self, path: str | Path, wandb_project: str | None = None, config: dict | None = None):
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"log path {self.path} is a folder; pass a file name such as {self.path / 'log.jsonl'}")
        self._wandb = None
        if wandb_project is not None:
            check_str("wandb_project", wandb_project)
            try:
                import wandb
            except ImportError:
                raise ImportError(
                    f"wandb_project={wandb_project!r} needs the wandb package (pip install wandb); "
                    "the JSONL log is written without it"
                ) from None
            self._wandb = wandb.init(project=wandb_project, config=config or {})
        self._file = None

    def resume(self, step: int) -> None:
        """Keep only the records up to ``step`` (a cut line from a crash is dropped too)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("step", 0) <= step:
                kept.append(line)
        atomic_write(self.path, "".join(f"{line}\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a")  # noqa: SIM115  (kept open for the run, closed by close())
        rec = {k: _json_value(v) for k, v in record.items()}
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self._wandb is not None:
            step = rec.pop("step", None)
            flat = {k: v for k, v in rec.items() if not isinstance(v, list)}
            flat |= {f"{k}/{i}": x for k, v in rec.items() if isinstance(v, list) for i, x in enumerate(v)}
            self._wandb.log(flat, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


@torch.no_grad()
def held_out_metrics(sae: SAE, x: Tensor, chunk: int = 4096) -> dict[str, Tensor]:
    """FVE, L0 and dead fraction of ``sae`` on held-out inputs, per model.

    Args:
        sae: a single SAE or a stack of M.
        x: [N, d] inputs in training units (the same for every model of a stack), N >= 2.

    Returns:
        ``eval_fve`` (1 - residual / total sum of squares around the mean of ``x``), ``eval_l0``
        (mean active latents per input), ``eval_dead`` (fraction of latents that fire on none):
        each [(M,)].
    """
    dev = sae.W_dec.device
    M = sae.cfg.n_models
    sq_err = torch.zeros(() if M is None else (M,), dtype=torch.float64, device=dev)
    active = torch.zeros_like(sq_err)
    fired = torch.zeros(sae.W_dec.shape[:-1], dtype=torch.bool, device=dev)  # [(M,) n]
    for s in range(0, len(x), chunk):
        xb = x[s : s + chunk].to(dev, torch.float32)
        xin = xb if M is None else xb.expand(M, *xb.shape)
        x_hat, codes = sae(xin)
        sq_err += (xin - x_hat).double().square().sum((-2, -1))
        on = codes > 0
        active += on.sum((-2, -1)).double()
        fired |= on.any(-2)
    xs = x.double()
    total = (xs - xs.mean(0)).square().sum().to(dev)
    return {
        "eval_fve": (1 - sq_err / total).float(),
        "eval_l0": (active / len(x)).float(),
        "eval_dead": (~fired).float().mean(-1),
    }
