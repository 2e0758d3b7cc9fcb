"""Tests of the training command line ``python -m sae_ortho.training.train_sae`` (one process and, with torchrun,
two gloo processes on CPU, bounded in time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sae_ortho.data import activations
from sae_ortho.models.saelens_io import load_sae_lens
from sae_ortho.training.train_sae import main

ROOT = Path(__file__).resolve().parent.parent
D = 16


def _forward(tokens, layers):
    """A fake model: smooth functions of the token ids, D dims per position."""
    t = tokens.float().unsqueeze(-1)
    feats = torch.sin(0.37 * t * torch.arange(1, D + 1) + torch.arange(D)).relu()
    return {layer: feats * (layer + 1) for layer in layers}


@pytest.fixture(scope="module")
def cache_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("acts")
    spec = activations.CacheSpec(model="org/fake", revision=None, layer=0, context=8, n_tokens=800, dtype="float32",
                                 corpus="fake/train")
    tokens = (torch.arange(spec.n_seq * 8).reshape(-1, 8) * 7919) % 5000
    store = activations.harvest([spec], tokens, _forward, root=root, batch_size=50, progress=False)[0]
    return store.path


def _args(data, out, *extra):
    return ["--data", str(data), "--out", str(out), "--n-latents", "24", "--steps", "12", "--batch-size", "64",
            "--lr", "3e-3", "--ortho-weight", "0.05", "--checkpoint-every", "4", "--log-every", "4", "--threads", "1",
            "--cache-k", "4", "--no-progress", *extra]


def test_one_process_on_an_activation_cache(cache_folder, tmp_path, capsys):
    main(_args(cache_folder, tmp_path / "run"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["resumed_from"] == 0 and summary["steps"] == 12
    assert summary["certified"]["agreement"] == 1.0 and summary["inputs_per_s"] > 0
    sae, cfg = load_sae_lens(tmp_path / "run" / "sae")
    assert sae.cfg.n_latents == 24 and sae.cfg.d == D
    assert cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    assert "trained 12 steps on 1 process" in capsys.readouterr().err
    assert cfg["metadata"]["training_config"]["train"]["steps"] == 12  # cfg.json says how it was trained
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "eval_fve" in r] == [12]  # held out: the cache's last rows
    assert any("loss" in r for r in log)
    # the same command again: the finished run is resumed from its checkpoint, nothing retrained
    main(_args(cache_folder, tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["resumed_from"] == 12
    assert "already finished" in capsys.readouterr().err


def test_one_process_on_toy_data(tmp_path):
    main(["--data", "toy", "--toy-features", "40", "--toy-d", "8", "--toy-p", "0.1", "--out", str(tmp_path / "toy"),
          "--n-latents", "16", "--steps", "5", "--batch-size", "32", "--threads", "1", "--no-progress",
          "--kind", "topk", "--k", "3"])
    sae, _ = load_sae_lens(tmp_path / "toy" / "sae")
    assert sae.cfg.kind == "topk" and sae.cfg.k == 3


def test_resume_with_other_data_or_settings_names_what_differs(tmp_path):
    args = ["--data", "toy", "--toy-features", "40", "--toy-d", "8", "--toy-p", "0.1", "--out", str(tmp_path / "toy"),
            "--n-latents", "16", "--batch-size", "32", "--threads", "1", "--no-progress", "--eval-every", "5",
            "--eval-rows", "64"]
    main([*args, "--steps", "5"])
    with pytest.raises(SystemExit, match="trained on data 'toy features=40 d=8 p=0.1 seed=0', not .*seed=1"):
        main([*args, "--steps", "10", "--seed", "1"])
    with pytest.raises(SystemExit, match=r"different configuration: train\.lr \(0\.0003 in the checkpoint, 0\.001 now\)"):
        main([*args, "--steps", "10", "--lr", "1e-3"])
    main([*args, "--steps", "10"])  # more steps: the run continues
    summary = json.loads((tmp_path / "toy" / "summary.json").read_text())
    assert summary["resumed_from"] == 5 and summary["steps"] == 10
    log = [json.loads(line) for line in (tmp_path / "toy" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "eval_fve" in r] == [5, 10]


def test_eval_rows_without_eval_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="--eval-rows only applies to --eval-every > 0"):
        main(["--data", "toy", "--out", str(tmp_path / "t"), "--n-latents", "8", "--steps", "2", "--eval-every", "0",
              "--eval-rows", "10"])


def test_torchrun_two_processes_match_one(cache_folder, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "sae_ortho.training.train_sae", *_args(cache_folder, tmp_path / "two")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["certified"]["agreement"] == 1.0
    main(_args(cache_folder, tmp_path / "one"))
    two, _ = load_sae_lens(tmp_path / "two" / "sae")
    one, _ = load_sae_lens(tmp_path / "one" / "sae")
    for name, p in one.named_parameters():
        # the same global batches; only the rounding of the gradient average differs
        torch.testing.assert_close(getattr(two, name), p, rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    "extra,flag",
    [
        (["--steps", "0"], "--steps"),
        (["--batch-size", "-3"], "--batch-size"),
        (["--ortho-method", "exact"], "--ortho-method"),
        (["--kind", "topk"], "--k"),
        (["--lr", "nan"], "--lr"),
        (["--device", "tpu"], "--device"),
        (["--toy-p", "0"], "--toy-p"),
        (["--threads", "0"], "--threads"),
    ],
)
def test_bad_arguments_name_the_flag(tmp_path, extra, flag):
    with pytest.raises(SystemExit) as e:
        main(_args("toy", tmp_path / "x", *extra))
    assert str(e.value).startswith(flag)
    assert not (tmp_path / "x").exists()  # refused before any work


def test_bad_data_and_foreign_out_folder(tmp_path):
    with pytest.raises(SystemExit, match="^--data must be 'toy', a cache folder .* or a .npy, .pt, .safetensors file"):
        main(_args(tmp_path / "nothing", tmp_path / "x"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="^--out .* is not empty and holds no checkpoint"):
        main(_args("toy", mine))
    assert (mine / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--k", "3"], "--k only applies to --kind topk"),
        (["--kind", "topk", "--k", "3", "--l1-coeff", "0.1"], "--l1-coeff only applies to --kind relu"),
        (["--ortho-method", "chunked"], "--cache-k only applies to --ortho-method cached or certified"),
        (["--refresh-every", "10"], "--refresh-every only applies to --ortho-method cached"),
        (["--data-in-memory"], "--data-in-memory only applies to --data <an activation cache>"),
    ],
)
def test_flags_without_effect_are_refused(tmp_path, extra, message):
    with pytest.raises(SystemExit, match=f"^{message}.*, which this run does not use$"):
        main(_args("toy", tmp_path / "x", *extra))
    assert not (tmp_path / "x").exists()


def test_toy_flags_with_a_cache_are_refused(cache_folder, tmp_path):
    with pytest.raises(SystemExit, match="^--toy-d only applies to --data toy"):
        main(_args(cache_folder, tmp_path / "x", "--toy-d", "8"))


def test_the_output_folder_is_checked_before_training(tmp_path):
    """Its SAE folder used to be checked only when the SAE was saved, after training."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(SystemExit, match="^--out must be a folder path, got .* which lies under the file"):
        main(_args("toy", a_file / "run"))
    run = tmp_path / "run"
    main(_args("toy", run, "--steps", "4"))
    before = (run / "checkpoint.pt").read_bytes()
    (run / "sae" / "cfg.json").write_text('{"architecture": "standard"}')  # an SAE that is not ours
    with pytest.raises(SystemExit, match=r"^--out .*: folder .*/sae holds an SAE \(cfg.json\) that save_sae_lens did not write"):
        main(_args("toy", run, "--steps", "8"))  # would resume and train 4 more steps
    assert (run / "checkpoint.pt").read_bytes() == before  # nothing was trained
    assert a_file.read_text() == "mine"
