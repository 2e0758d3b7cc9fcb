"""Your own activations from .npy, .pt, .safetensors and datasets folders (sae_ortho.data.tensor_files), and the
command line on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.torch
import torch
from datasets import Dataset

from sae_ortho.data.tensor_files import is_activations_file, load_activations
from sae_ortho.models.saelens_io import load_sae_lens
from sae_ortho.training.train_sae import main

X = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))


def _write(kind: str, folder, x=X):
    if kind == "npy":
        np.save(folder / "a.npy", x.numpy())
        return folder / "a.npy"
    if kind == "pt":
        torch.save(x, folder / "a.pt")
        return folder / "a.pt"
    if kind == "pt dict":
        torch.save({"acts": x, "tokens": torch.zeros(3)}, folder / "b.pt")
        return folder / "b.pt"
    if kind == "safetensors":
        safetensors.torch.save_file({"activations": x, "other": torch.zeros(2)}, str(folder / "a.safetensors"))
        return folder / "a.safetensors"
    Dataset.from_dict({"acts": x.tolist()}).save_to_disk(str(folder / "ds"))
    return folder / "ds"


@pytest.mark.parametrize("kind", ["npy", "pt", "pt dict", "safetensors", "datasets"])
def test_every_format_gives_the_same_rows(tmp_path, kind):
    path = _write(kind, tmp_path)
    assert is_activations_file(path)
    got = load_activations(path)
    assert got.dtype == torch.float32 and torch.equal(got, X)


def test_bad_files_are_refused_naming_the_problem(tmp_path):
    torch.save({"x": X, "y": X}, tmp_path / "two.pt")
    with pytest.raises(ValueError, match=r"holds \['x', 'y'\]: keep one array, or name it one of"):
        load_activations(tmp_path / "two.pt")
    np.save(tmp_path / "3d.npy", np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"must hold activations \[N >= 2, d\], got shape \(2, 3, 4\)"):
        load_activations(tmp_path / "3d.npy")
    bad = X.clone()
    bad[3, 1] = float("nan")
    np.save(tmp_path / "nan.npy", bad.numpy())
    with pytest.raises(ValueError, match="NaN or inf"):
        load_activations(tmp_path / "nan.npy")
    (tmp_path / "a.csv").write_text("1,2\n")
    assert not is_activations_file(tmp_path / "a.csv")
    with pytest.raises(ValueError, match="must be a .npy, .pt, .safetensors file"):
        load_activations(tmp_path / "a.csv")


def test_command_line_trains_on_a_file_with_held_out_rows(tmp_path):
    path = _write("npy", tmp_path, torch.randn(400, 6, generator=torch.Generator().manual_seed(1)) * 7)
    args = ["--data", str(path), "--out", str(tmp_path / "run"), "--n-latents", "12", "--steps", "6", "--batch-size", "16",
            "--threads", "1", "--no-progress", "--eval-every", "3", "--eval-rows", "40"]
    with pytest.raises(SystemExit, match="--hook-name is required with --data <a file>"):
        main(args)
    main([*args, "--hook-name", "blocks.2.hook_resid_post"])
    sae, cfg = load_sae_lens(tmp_path / "run" / "sae")
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post" and sae.cfg.d == 6
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "eval_fve" in r] == [3, 6]
    with pytest.raises(SystemExit, match="--hook-name only applies to --data <a file>"):
        main(["--data", "toy", "--out", str(tmp_path / "t"), "--n-latents", "8", "--steps", "2", "--hook-name", "x"])
