"""Measurements of the training benchmark: a training run, a torchrun scaling run, a profile.

:mod:`experiments.bench_training` drives them and writes the report. One in-process training run
gives per-epoch rows and their summary; one ``torchrun`` run on the CPU gives the scaling row for
k processes; a cProfile covers training steps only. The load average is recorded with each, since
timings on a shared machine are only comparable at similar load.
"""
from __future__ import annotations

import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ----------------------------------------------------------------------------- one training run
def train_rows(config, verbose: bool = True, label: str = "") -> dict[str, Any]:
    """Train ``config`` (a TrainConfig) into a scratch directory; per-epoch rows and summary."""
    from lipdeq.training.loop import train

    n_train = 5000 - config.holdout
    load0, t0, c0 = _load(), time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="bench_training-") as tmp:
        metrics = train(config, os.path.join(tmp, "run"), progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rows = []
    for m in metrics:
        r = {"epoch": m["epoch"], "epoch_s": m["epoch_s"],
             "us_per_sample": m["epoch_s"] / n_train * 1e6,
             "samples_per_s": n_train / m["epoch_s"],
             "test_accuracy": m.get("test_accuracy"), "train_loss": m["train_loss"],
             "fwd_iterations": m["fwd_iterations"], "bwd_iterations": m["bwd_iterations"],
             "projection_s": m["projection_s"], "projection_share": m["projection_s"] / m["epoch_s"],
             "mu_inf": m["mu_inf"]}
        rows.append(r)
        if verbose:
            print(f"  {label:6s} epoch {r['epoch']:2d}/{config.epochs}: {r['epoch_s']:.3f} s, "
                  f"{r['us_per_sample']:.1f} us/sample, acc {r['test_accuracy']:.4f}, "
                  f"fwd/bwd it {r['fwd_iterations']:.1f}/{r['bwd_iterations']:.1f}, "
                  f"projection {100 * r['projection_share']:.1f}%", flush=True)
    summary = summarize(rows, n_train)
    # CPU seconds this process got per wall second over the whole run (setup and evaluation
    # included): < threads means the run waited for a core. With one thread, µs/sample × this
    # ratio estimates the time on an idle core (an estimate: contention also costs cache).
    summary["cpu_per_wall"] = cpu / wall if wall > 0 else None
    summary["us_per_sample_load_adjusted"] = (summary["us_per_sample_median"] * cpu / wall
                                              if wall > 0 and torch_threads() == 1 else None)
    return {"rows": rows, "summary": summary, "wall_s": wall, "cpu_s": cpu,
            "load_avg_before": load0, "load_avg_after": _load()}


def torch_threads() -> int:
    import torch
    return torch.get_num_threads()


def summarize(rows: list[dict], n_train: int) -> dict[str, Any]:
    """Medians over the epochs after the first (all epochs when there is only one)."""
    steady = rows[1:] if len(rows) > 1 else rows
    total_s = sum(r["epoch_s"] for r in rows)
    return {
        "n_train": n_train, "epochs": len(rows),
        "epoch_s_median": _median([r["epoch_s"] for r in steady]),
        "epoch_s_first": rows[0]["epoch_s"],
        "us_per_sample_median": _median([r["us_per_sample"] for r in steady]),
        "us_per_sample_best": min(r["us_per_sample"] for r in rows),
        "samples_per_s_median": _median([r["samples_per_s"] for r in steady]),
        "fwd_iterations_mean": statistics.fmean(r["fwd_iterations"] for r in rows),
        "bwd_iterations_mean": statistics.fmean(r["bwd_iterations"] for r in rows),
        "test_accuracy_final": rows[-1]["test_accuracy"],
        "projection_share": sum(r["projection_s"] for r in rows) / total_s if total_s else None,
        "train_s_total": total_s,
    }


# ----------------------------------------------------------------------------- scaling (torchrun)
def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def scaling_run(k: int, args: list[str], threads: int | None, n_train: int,
                timeout: float = 900) -> dict[str, Any]:
    """``torchrun --standalone --nproc_per_node=k -m lipdeq train ARGS`` on the CPU."""
    t = threads or max(1, _cores() // k)
    env = dict(os.environ, OMP_NUM_THREADS=str(t), PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    row: dict[str, Any] = {"nproc": k, "threads_per_process": t, "load_avg_before": _load()}
    with tempfile.TemporaryDirectory(prefix="bench_training-nproc-") as tmp:
        out = os.path.join(tmp, "run")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={k}", "-m", "lipdeq", "train", *args, "--out", out, "--quiet"]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            rc, tail = proc.returncode, (proc.stderr or proc.stdout)[-600:]
        except subprocess.TimeoutExpired:
            rc, tail = None, f"timed out after {timeout:g} s"
        row["process_wall_s"] = time.perf_counter() - t0
        row["load_avg_after"] = _load()
        mpath = os.path.join(out, "metrics.jsonl")
        if rc != 0 or not os.path.exists(mpath):
            row.update(status="error", error=f"exit {rc}: {' '.join(tail.split())[-400:]}")
            return row
        with open(mpath) as fh:
            ms = [json.loads(line) for line in fh]
    steady = ms[1:] if len(ms) > 1 else ms
    epoch_s = _median([m["epoch_s"] for m in steady])
    row.update(status="ok", epochs=len(ms), epoch_s_median=epoch_s,
               samples_per_s=n_train / epoch_s, us_per_sample=epoch_s / n_train * 1e6,
               test_accuracy_final=ms[-1].get("test_accuracy"),
               epoch_s=[m["epoch_s"] for m in ms])
    return row


# ----------------------------------------------------------------------------- profile
def profile_steps(config, steps: int | None = None, top: int = 15) -> dict[str, Any]:
    """cProfile of ``steps`` training steps (default: one epoch) in this process.

    The loop mirrors one step of ``lipdeq.train`` (forward, cross-entropy, zero_grad, backward,
    optimizer step, the run's projector, the per-step μ∞ of the metrics) on the same model,
    optimizer and data order, without setup, evaluation or checkpoints, so the profile is the
    step time only. Returns the ``top`` functions by own time.
    """
    import torch
    import torch.nn.functional as F

    from lipdeq.training import loop as T
    from lipdeq.training.checkpoint import build_model
    from lipdeq.training.data import load_dataset

    data = load_dataset(config.dataset, holdout=config.holdout)
    torch.manual_seed(config.seed)
    model = build_model(config.model_config(data.in_features, data.out_features)).to(config.device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    project = T._Projector(model, config)
    perm = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(config.seed))
    n_steps = steps or -(-len(data.train) // config.batch_size)
    batches = [perm[(i * config.batch_size) % len(perm):][:config.batch_size] for i in range(n_steps)]

    def step(idx):
        u = data.train.inputs[idx].to(config.device)
        t = data.train.targets[idx].to(config.device)
        loss = F.cross_entropy(model(u), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        project()
        model.mu_inf()

    step(batches[0])  # warm-up (first-call allocations)
    prof = cProfile.Profile()
    c0, t0 = time.process_time(), time.perf_counter()
    prof.enable()
    for idx in batches:
        step(idx)
    prof.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    st = pstats.Stats(prof)
    total = st.total_tt
    items = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    funcs = []
    for (file, line, name), (cc, nc, tt, ct, _) in items:
        where = name if file.startswith("~") else (
            f"{file}({name})" if file.startswith("{") else
            "/".join(Path(file).parts[-2:]) + f":{line}({name})")
        funcs.append({"function": where, "ncalls": nc, "tottime_s": tt, "cumtime_s": ct,
                      "share": tt / total if total else None})
    n = sum(len(b) for b in batches)
    return {"steps": n_steps, "samples": n, "wall_s": wall, "cpu_s": cpu,
            "us_per_sample_wall": wall / n * 1e6, "us_per_sample_cpu": cpu / n * 1e6,
            "projection_s": project.seconds, "profile_total_s": total, "top": funcs,
            "load_avg": _load(),
            "note": "cProfile adds overhead to every Python-level call; shares are indicative"}

