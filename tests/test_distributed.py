"""Multi-process tests of sae_ortho.training.distributed and data-parallel sae_ortho.training.train (gloo, 2 processes on CPU).

The processes are started by the tests (tests/dist_worker.py, with the environment torchrun
sets), one thread each, with a short collective timeout and a wall-clock limit on every launch.
The single-process references run in this process with the same functions.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from sae_ortho.training import distributed
from sae_ortho.training.checkpoint import load_checkpoint
from tests import dist_worker

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_TIMEOUT = 120  # seconds for one multi-process launch, start-up included
# 2 processes vs 1 with the same global batch: the gradient of the batch mean is summed in a
# different order (two half-batch means, then their average), so the weights agree to float32
# rounding only; measured after 24 steps: max abs difference 1.2e-7 (a few ulps), under 1e-6.
ATOL = 1e-6

TRAIN = {"kind": "train", "steps": 24, "batch": 32, "checkpoint_every": 5}
JOBS = [
    {"name": "search", "kind": "search"},
    {**TRAIN, "name": "chunked"},
    {**TRAIN, "name": "certified", "method": "certified"},
    {**TRAIN, "name": "stacked-cached", "method": "cached", "n_models": 2},
    {**TRAIN, "name": "sparse-relu", "kernel": "sparse"},  # the sparse step (sae_ortho.models.sparse)
    {**TRAIN, "name": "sparse-topk-certified", "kernel": "sparse", "sae_kind": "topk", "method": "certified"},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: dict, world: int = 2, timeout: float = LAUNCH_TIMEOUT) -> list[subprocess.CompletedProcess]:
    """Start ``world`` worker processes (as torchrun would) and wait for all of them."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {
            **os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT),
        }
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.dist_worker", json.dumps(args)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    deadline = time.monotonic() + timeout
    done = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"a worker did not finish within {timeout} s")
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def _ok(procs):
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{p.stderr[-3000:]}"


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One launch of 2 processes running every job; returns (results, folder)."""
    folder = tmp_path_factory.mktemp("dist")
    jobs = [{**j, "folder": str(folder / j["name"])} if j["kind"] == "train" else j for j in JOBS]
    _ok(launch({"jobs": jobs, "out": str(folder / "result.pt")}))
    return torch.load(folder / "result.pt", weights_only=False), folder


def test_sharded_search_equals_single_process_exactly(two_ranks):
    got = two_ranks[0]["search"]
    want = dist_worker.search_job({})
    assert got.keys() == want.keys()
    for key in want:
        if key.startswith("chunked"):
            for a, b in zip(got[key], want[key]):  # values and gradients, bit for bit
                assert torch.equal(a, b), key
        elif key.startswith("cached"):
            assert torch.equal(got[key], want[key]), key
        else:
            vals, state, summary = got[key]
            assert torch.equal(vals, want[key][0]), key  # the results, bit for bit
            # The stored |cos| come from [rows, n] blocks of other shapes than in one process, so
            # they may differ in the last bit; the candidates and counters do not.
            for name, t in want[key][1].items():
                torch.testing.assert_close(state[name], t, rtol=0, atol=1e-6, msg=name)
            assert torch.equal(state["cols"], want[key][1]["cols"])
            assert summary == pytest.approx(want[key][2], abs=1e-6)
            assert summary["certified_fraction"] < 1  # some rows were re-searched (split over the ranks)
            assert summary["agreement"] == 1.0


@pytest.mark.parametrize("name", ["chunked", "certified", "stacked-cached", "sparse-relu", "sparse-topk-certified"])
def test_two_processes_match_one_process(two_ranks, name):
    results, _ = two_ranks
    job = next(j for j in JOBS if j["name"] == name)
    got, want = results[name], dist_worker.train_job(job)
    assert got["world_size"] == 2 and want["world_size"] == 1
    first = dist_worker.train_job({**job, "steps": 1})["params"]
    for k, w in want["params"].items():
        torch.testing.assert_close(got["params"][k], w, rtol=0, atol=ATOL, msg=k)
    assert max(float((w - first[k]).abs().max()) for k, w in want["params"].items()) > 100 * ATOL  # it trained
    for k in ("loss", "recon", "ortho", "l0"):  # the logged terms are the global batch's
        torch.testing.assert_close(torch.as_tensor(got["history"][k]), torch.as_tensor(want["history"][k]),
                                   rtol=1e-4, atol=1e-5, msg=k)
    if name == "certified":
        assert got["certified"]["agreement"] == 1.0 and got["certified"]["rows_checked"] > 0


def test_killed_rank_stops_job_with_clear_error_and_resume(two_ranks, tmp_path):
    results, _ = two_ranks
    job = {**TRAIN, "name": "chunked", "folder": str(tmp_path / "run")}
    t0 = time.monotonic()
    # rank 1 dies abruptly while drawing the batch of step 12 (after the step-10 checkpoint)
    procs = launch({"jobs": [{**job, "crash": [1, 13]}], "out": str(tmp_path / "crashed.pt"), "timeout_s": 15})
    assert time.monotonic() - t0 < 60
    assert procs[1].returncode == 3
    err = procs[0].stderr
    assert procs[0].returncode != 0
    assert "CollectiveError: training stopped at step 12" in err, err[-3000:]
    assert "The checkpoint of step 10" in err and "run the same command again to resume" in err
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 10 and state["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pt"]
    shutil.copytree(tmp_path / "run", tmp_path / "run-1proc")

    # The same command resumes from step 10 and ends bit for bit where the uninterrupted run did.
    _ok(launch({"jobs": [job], "out": str(tmp_path / "resumed.pt")}))
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=False)["chunked"]
    assert resumed["resumed_from"] == 10
    for k, v in results["chunked"]["params"].items():
        assert torch.equal(resumed["params"][k], v), k

    # Resuming on another number of processes continues the same global batches, with a warning.
    with pytest.warns(UserWarning, match="written by 2 process"):
        one = dist_worker.train_job({**job, "folder": str(tmp_path / "run-1proc")})
    assert one["resumed_from"] == 10 and one["world_size"] == 1
    for k, v in results["chunked"]["params"].items():
        torch.testing.assert_close(one["params"][k], v, rtol=0, atol=ATOL, msg=k)


def test_uneven_batch_refused_before_training():
    group = distributed.Group(rank=0, world=2, device=torch.device("cpu"))  # refused before any collective
    with pytest.raises(ValueError, match="batch_size=33 is the global batch and must divide evenly over the 2"):
        dist_worker.train_job({**TRAIN, "batch": 33}, group=group)


def test_single_process_is_unchanged_without_a_job():
    assert distributed.current() is None
    assert distributed.init() is None  # no torchrun environment: a plain single-process run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = dist_worker.train_job(TRAIN)
    assert a["world_size"] == 1
    assert not [w for w in caught if "process" in str(w.message)]  # no word of other processes


@pytest.mark.parametrize("kw,match", [({"backend": "mpi"}, "backend"), ({"timeout_s": 0}, "timeout_s")])
def test_init_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        distributed.init(**kw)
