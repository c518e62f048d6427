"""Multi-process training (torchrun + DDP on gloo, 2 CPU processes) — issue 8.

* K = 2 processes with a global batch B reach the weights of one process with batch B (to float
  tolerance: each rank solves the fixed point of its half of the batch to ``tol``);
* after every projected step the parameters are bit-identical on all ranks (hashes gathered with
  ``torch.distributed.all_gather_object`` from a small worker that wraps ``lipdeq.train.train``);
* only rank 0 writes files (metrics, checkpoints, config);
* the last, partial batch (here one sample: rank 1's share is empty) neither hangs nor biases
  the gradient;
* crash safety: a rank SIGKILLed mid-epoch, then ``--resume`` under torchrun, ends with the same
  metrics (timing keys aside) and bit-identical weights as an uninterrupted distributed run;
* bad input: a batch size not divisible by the world size exits 2 with one line, writes nothing.

Runs use ``torchrun --standalone`` (a free rendezvous port is picked, so concurrent test runs do
not collide), gloo, one thread per process, a model with 8 hidden units and 201 MNIST digits.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from lipdeq.training.checkpoint import read_checkpoint
from lipdeq.training.loop import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or
                                not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

# 5000 - 4799 = 201 training digits; batch 50 -> 5 steps per epoch, the last with ONE sample.
CONFIG = dict(dataset="mnist-5k", holdout=4799, hidden=8, batch_size=50, epochs=3, tol=1e-6,
              max_iter=300, gamma=0.5, lr=1e-2, seed=0)
STEPS_PER_EPOCH = 5
TIMEOUT = 180
GLOO_ABORT = "terminate called without an active exception"

WORKER = textwrap.dedent(r'''
    """torchrun worker: lipdeq.train.train with probes (hashes after every projection, file writes
    per rank, an optional SIGKILL of one rank at a given projection), reported by rank 0."""
    import hashlib, json, os, signal, sys
    import torch.distributed as dist
    from lipdeq.training import distributed
    from lipdeq.training import loop as T
    from lipdeq.deq.model import ImplicitNetwork

    spec = json.loads(sys.argv[1])
    rank = int(os.environ.get("RANK", "0"))
    log = {"rank": rank, "hashes": [], "writes": []}
    kill = spec.get("kill")

    original_project = ImplicitNetwork.project_

    def project_(self):
        out = original_project(self)
        h = hashlib.sha256()
        for p in self.parameters():
            h.update(p.detach().cpu().numpy().tobytes())
        log["hashes"].append(h.hexdigest())
        if kill and rank == kill["rank"] and len(log["hashes"]) == kill["at"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    ImplicitNetwork.project_ = project_

    def record(name):
        fn = getattr(T, name)

        def wrapper(*args, **kwargs):
            log["writes"].append(name)
            return fn(*args, **kwargs)
        setattr(T, name, wrapper)

    for name in ("save_checkpoint", "_append_jsonl", "_write_json", "_truncate_metrics"):
        record(name)

    original_close = distributed.close

    def close(ctx):
        logs = [log]
        if ctx.enabled and dist.is_initialized():
            logs = [None] * ctx.world_size
            dist.all_gather_object(logs, log)
        if ctx.is_main:
            with open(spec["report"], "w") as fh:
                json.dump({"world_size": ctx.world_size, "logs": logs}, fh)
        original_close(ctx)

    distributed.close = close
    T.train(T.TrainConfig(**spec["config"]), spec["out"], resume=spec.get("resume", False),
            progress=False)
''')


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def torchrun(args: list[str], nproc: int = 2, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())


def run_worker(tmp_path, name: str, out: str, *, resume=False, kill=None, nproc=2, **overrides):
    worker = tmp_path / "dist_worker.py"
    if not worker.exists():
        worker.write_text(WORKER)
    report = tmp_path / f"{name}.report.json"
    spec = {"config": {**CONFIG, **overrides}, "out": out, "resume": resume,
            "report": str(report), "kill": kill}
    proc = torchrun([str(worker), json.dumps(spec)], nproc=nproc)
    if kill is None and proc.returncode != 0 and GLOO_ABORT in proc.stdout + proc.stderr:
        # A gloo worker thread torn down during interpreter shutdown can abort a rank
        # (std::terminate; seen here only on a loaded machine, never in a lone run; upstream
        # discussion: pytorch/pytorch#179291). Rerun the same deterministic job once from scratch.
        if not resume:
            shutil.rmtree(out, ignore_errors=True)
        report.unlink(missing_ok=True)
        proc = torchrun([str(worker), json.dumps(spec)], nproc=nproc)
    data = json.loads(report.read_text()) if report.exists() else None
    return proc, data


def metrics(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]


def model_state(run_dir) -> dict:
    return read_checkpoint(os.path.join(run_dir, "last.pt"))["model"]


@pytest.fixture(scope="module")
def dist_run(tmp_path_factory):
    """One uninterrupted 2-process run (3 epochs), shared by several tests."""
    tmp = tmp_path_factory.mktemp("dist")
    out = str(tmp / "run")
    proc, report = run_worker(tmp, "full", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, out, report


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_ranks_bit_identical_after_every_projection(dist_run):
    _, _, report = dist_run
    assert report["world_size"] == 2
    logs = report["logs"]
    assert [log["rank"] for log in logs] == [0, 1]
    h0, h1 = logs[0]["hashes"], logs[1]["hashes"]
    assert len(h0) == 1 + CONFIG["epochs"] * STEPS_PER_EPOCH  # init + one per step
    assert h0 == h1
    assert len(set(h0)) == len(h0)  # every step changed the weights (the 1-sample step too)


def test_only_rank_zero_writes(dist_run):
    tmp, out, report = dist_run
    w0, w1 = report["logs"][0]["writes"], report["logs"][1]["writes"]
    assert w1 == []
    assert w0.count("save_checkpoint") == CONFIG["epochs"]
    assert w0.count("_append_jsonl") == CONFIG["epochs"] and w0.count("_write_json") == 1
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert sorted(os.listdir(out)) == [".lock", "config.json", "last.pt", "metrics.jsonl"]
    assert read_checkpoint(os.path.join(out, "last.pt"))["epoch"] == 3


def test_matches_single_process_with_same_global_batch(dist_run, tmp_path):
    _, out, _ = dist_run
    single = str(tmp_path / "single")
    rows = train(TrainConfig(**CONFIG), single, progress=False)
    d_rows = metrics(out)
    a, b = model_state(single), model_state(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), (k, (a[k] - b[k]).abs().max())
    for r1, r2 in zip(rows, d_rows):
        # train_loss / train_accuracy are totals over all 201 samples (all-reduced over ranks)
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-4)
        assert r2["train_accuracy"] == r1["train_accuracy"]
        assert r2["test_accuracy"] == pytest.approx(r1["test_accuracy"], abs=2 / 4799)
        assert r2["mu_inf"] <= CONFIG["gamma"] and r1["mu_inf"] <= CONFIG["gamma"]


def test_sigkill_one_rank_then_resume(dist_run, tmp_path):
    _, full_out, _ = dist_run
    out = str(tmp_path / "crash")
    # rank 1 kills itself (SIGKILL) after its 3rd projected step of epoch 2: project_ calls are
    # 1 (init) + 5 (epoch 1) + 3
    proc, report = run_worker(tmp_path, "killed", out, kill={"rank": 1, "at": 1 + STEPS_PER_EPOCH + 3})
    assert proc.returncode != 0 and report is None
    assert read_checkpoint(os.path.join(out, "last.pt"))["epoch"] == 1
    assert [r["epoch"] for r in metrics(out)] == [1]
    proc, report = run_worker(tmp_path, "resumed", out, resume=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["logs"][0]["hashes"][1:] == report["logs"][1]["hashes"][1:]
    assert report["logs"][1]["writes"] == []
    assert untimed(metrics(out)) == untimed(metrics(full_out))
    a, b = model_state(out), model_state(full_out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_batch_size_not_divisible_exits_2_one_line(tmp_path):
    out = tmp_path / "bad"
    args = ["-m", "lipdeq", "train", "--dataset", "function", "--hidden", "4", "--epochs", "1",
            "--batch-size", "7", "--out", str(out), "--quiet"]
    # as torchrun's rank 0 would see it (no second process: the check runs before any
    # process group is created, so nothing waits for the other rank)
    env = _env()
    env.update(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "batch size 7 is not divisible by the world size 2" in lines[0]
    assert proc.stdout == "" and not out.exists()
    # under torchrun every rank exits 2 with that line (torchrun adds its own failure report)
    proc = torchrun(args)
    assert proc.returncode != 0
    assert "lipdeq: error: batch size 7 is not divisible by the world size 2" in proc.stderr
    assert "exitcode  : 2" in proc.stderr and not out.exists()
