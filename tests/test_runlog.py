"""What a run reports and how it stops and resumes: the JSONL log, held-out metrics, SIGINT / SIGTERM,
the resume checks (fields named, data identity, more steps)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal

import pytest
import torch

from sae_ortho.core.reproducibility import setup
from sae_ortho.data.toy import ToyData, ToyDataConfig
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.training.checkpoint import load_checkpoint
from sae_ortho.training.runlog import RunLog, held_out_metrics
from sae_ortho.training.train import TrainConfig, TrainingInterrupted, train

D, N = 4, 6
CFG = TrainConfig(steps=20, batch_size=16, lr=1e-2, l1_coeff=0.05, ortho_weight=0.1, log_every=5)


def _sample():
    data = ToyData(ToyDataConfig(n_features=5, d=D, embedding="random", p=0.3), generator=torch.Generator().manual_seed(0))
    return lambda b: data.sample(b).x


def _held_out(n=64):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(5))


def _train(folder, cfg=CFG, sample=None, **kw):
    setup(0, threads=1)
    sae = SAE(SAEConfig(d=D, n_latents=N), generator=torch.Generator().manual_seed(0))
    res = train(sae, sample or _sample(), cfg, checkpoint_dir=folder, progress=False, **kw)
    return sae, res


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_log_has_every_term_and_the_held_out_metrics(tmp_path):
    sae, res = _train(tmp_path, log=tmp_path / "log.jsonl", eval_data=_held_out(), eval_every=10)
    recs = _records(tmp_path / "log.jsonl")
    terms = [r for r in recs if "loss" in r]
    evals = [r for r in recs if "eval_fve" in r]
    assert [r["step"] for r in terms] == [5, 10, 15, 20]
    assert {"loss", "recon", "l1", "ortho", "l0", "dead"} <= set(terms[0])
    assert terms[-1]["loss"] == pytest.approx(float(res.history["loss"][-1]))
    assert [r["step"] for r in evals] == [10, 20] and evals[0]["eval_rows"] == 64
    assert res.history["eval_step"].tolist() == [10, 20]
    want = held_out_metrics(sae, _held_out())  # the final model's metrics, recomputed
    assert evals[-1]["eval_fve"] == pytest.approx(want["eval_fve"].item())
    assert evals[-1]["eval_l0"] == pytest.approx(want["eval_l0"].item())


def test_held_out_metrics_of_a_perfect_and_a_stacked_model():
    x = _held_out()
    stack = SAE(SAEConfig(d=D, n_latents=N, n_models=3), generator=torch.Generator().manual_seed(0))
    got = held_out_metrics(stack, x)
    assert got["eval_fve"].shape == (3,)
    one = held_out_metrics(stack.select(1), x)
    assert got["eval_fve"][1].item() == pytest.approx(one["eval_fve"].item(), rel=1e-5)
    assert got["eval_dead"][1].item() == one["eval_dead"].item()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_writes_a_checkpoint_and_the_resumed_run_is_the_uninterrupted_one(tmp_path, signum):
    full, _ = _train(tmp_path / "full")
    inner = _sample()
    calls = {"n": 0}

    def sample(b):
        calls["n"] += 1
        if calls["n"] == 8:  # during step 7 (0-based): the step finishes, then the checkpoint
            os.kill(os.getpid(), signum)
        return inner(b)

    with pytest.raises(TrainingInterrupted, match=rf"{signal.Signals(signum).name} at step 8; checkpoint written"):
        _train(tmp_path / "run", sample=sample, log=tmp_path / "run" / "log.jsonl")
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 8
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    resumed, res = _train(tmp_path / "run", log=tmp_path / "run" / "log.jsonl")
    assert res.resumed_from == 8
    for pa, pb in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(pa, pb)
    assert [r["step"] for r in _records(tmp_path / "run" / "log.jsonl")] == [5, 10, 15, 20]


def test_resume_log_drops_records_after_the_checkpoint_and_a_cut_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 5, "loss": 1.0}\n{"step": 10, "loss": 0.5}\n{"step": 15, "lo')
    log = RunLog(path)
    log.resume(10)
    log.write({"step": 15, "loss": torch.tensor([0.25, float("nan")])})
    log.close()
    assert _records(path) == [{"step": 5, "loss": 1.0}, {"step": 10, "loss": 0.5}, {"step": 15, "loss": [0.25, None]}]


def test_resume_names_the_fields_that_differ(tmp_path):
    _train(tmp_path)
    other = TrainConfig(steps=20, batch_size=16, lr=2e-2, l1_coeff=0.05, ortho_weight=0.2, log_every=5)
    with pytest.raises(ValueError, match=r"train\.lr \(0\.01 in the checkpoint, 0\.02 now\); train\.ortho_weight"):
        _train(tmp_path, cfg=other)


def test_resume_on_other_data_is_refused(tmp_path):
    _train(tmp_path, cfg=TrainConfig(steps=10, batch_size=16, lr=1e-2, log_every=5, checkpoint_every=5),
           data_id="toy seed 0")
    with pytest.raises(ValueError, match="trained on data 'toy seed 0', not 'toy seed 1'"):
        _train(tmp_path, cfg=TrainConfig(steps=20, batch_size=16, lr=1e-2, log_every=5), data_id="toy seed 1")


def test_steps_may_be_raised_on_resume_and_continue_the_run(tmp_path):
    full, _ = _train(tmp_path / "full")
    short = TrainConfig(steps=10, batch_size=16, lr=1e-2, l1_coeff=0.05, ortho_weight=0.1, log_every=5)
    _train(tmp_path / "run", cfg=short)
    more, res = _train(tmp_path / "run")
    assert res.resumed_from == 10
    for pa, pb in zip(full.parameters(), more.parameters()):
        assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match="at step 20, beyond steps=10; steps may only be raised"):
        _train(tmp_path / "run", cfg=short)


def test_bad_logging_options_are_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="eval_every needs eval_data"):
        _train(None, eval_every=5)
    with pytest.raises(ValueError, match=r"eval_data must have shape \[N >= 2, 4\]"):
        _train(None, eval_data=torch.randn(8, 3), eval_every=5)
    with pytest.raises(ValueError, match="is a folder"):
        RunLog(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_wandb_without_the_package_is_a_clear_error(tmp_path):
    with pytest.raises(ImportError, match="wandb_project='p' needs the wandb package"):
        RunLog(tmp_path / "log.jsonl", wandb_project="p")


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed here")
def test_wandb_gets_the_same_records(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")  # offline and without an account: a no-op run
    log = RunLog(tmp_path / "log.jsonl", wandb_project="p", config={"lr": 1e-3})
    log.write({"step": 1, "loss": torch.tensor([1.0, 2.0])})
    log.close()
    assert _records(tmp_path / "log.jsonl") == [{"step": 1, "loss": [1.0, 2.0]}]
