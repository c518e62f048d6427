r"""Conv training benchmark: ``lipdeq bench training --model conv``.

Trains the conv implicit network (``lipdeq.train.train``, ``model="conv"``: 32 channels, 3×3
kernel, 7×7 input kernel, γ = 0.95, tol 1e-3, Adam lr 1e-2, batch 100 unless a configuration
names its own) on the mnist-5k split (4,000 train / 1,000 held out), in one run, once per
configuration of ``CONFIGS``:

* ``today``: the configuration before (average iteration, implicit backward, 28×28);
* one row per speed option: ``anderson`` (safeguarded Anderson forward and adjoint),
  ``jacobian-free`` (Jacobian-free backward), ``downsample-2`` (stride-2 injection, 14×14 state);
* ``combined``: all three; ``jfb-downsample``: the two that paid off alone (average iteration),
  and ``jfb-downsample-48`` the same with 48 channels (spending part of the saving on width);
* ``jfb-downsample-b25``: the two at batch 25, the combination chosen on the validation split by
  ``experiments.tune_conv_speed`` (docs/tuning/conv_speed.md): a smaller batch costs little CPU
  per epoch (the conv work is per digit) and gives 4× the optimizer steps in 3 epochs.

Reported per configuration: wall s per epoch (training steps only, the loop's ``epoch_s``), CPU
(process) s per epoch (whole run / epochs: held-out evaluation and checkpoint included), the
ratio of CPU s/epoch to ``today``'s, mean forward/backward iterations per batch and held-out
accuracy after the last epoch; and the **raw cost** of the solver's convolutions: (fwd it ×
one conv2d + bwd it × one conv_transpose2d of a batch-sized state) × batches, each call timed
alone (median CPU time). Wall time is distorted by the load on a shared machine: the load
average is recorded before and after each run; compare CPU times.

    python -m experiments.bench_training --model conv [--epochs 3] [--configs today combined]
        [--quick] [--out DIR]

``--quick``: 4 channels, 1 epoch on 200 digits, tol 1e-2 (a schema check, not a measurement).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from experiments.bench_training_measure import _load, train_rows
from experiments.timing import num_threads

NAME = "bench_training_conv"
DEFAULT_OUT = "results/bench_training_conv"
CONFIGS = {
    "today": dict(solver="average", backward="implicit", downsample=1),
    "anderson": dict(solver="anderson", backward="implicit", downsample=1),
    "jacobian-free": dict(solver="average", backward="jacobian-free", downsample=1),
    "downsample-2": dict(solver="average", backward="implicit", downsample=2),
    "combined": dict(solver="anderson", backward="jacobian-free", downsample=2),
    "jfb-downsample": dict(solver="average", backward="jacobian-free", downsample=2),
    "jfb-downsample-48": dict(solver="average", backward="jacobian-free", downsample=2, channels=48),
    "jfb-downsample-b25": dict(solver="average", backward="jacobian-free", downsample=2,
                               batch_size=25),
}
GOAL = {"accuracy": 0.95, "cpu_ratio": 0.25}
QUICK = dict(epochs=1, holdout=4800, channels=4, tol=1e-2)


def conv_call_seconds(batch: int, channels: int, size: int, kernel: int = 3, repeats: int = 7
                      ) -> dict[str, float]:
    """Median CPU (process) seconds of one conv2d and one conv_transpose2d on (batch, c, s, s)."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(batch, channels, size, size)
    K = torch.randn(channels, channels, kernel, kernel)
    out = {}
    with torch.no_grad():
        for name, fn in (("conv2d", F.conv2d), ("conv_transpose2d", F.conv_transpose2d)):
            fn(x, K, padding=kernel // 2)
            ts = []
            for _ in range(repeats):
                c0 = time.process_time()
                fn(x, K, padding=kernel // 2)
                ts.append(time.process_time() - c0)
            out[name] = statistics.median(ts)
    return out


def run(quick: bool = False, out: str | Path | None = DEFAULT_OUT, device: str = "cpu", *,
        epochs: int | None = None, holdout: int | None = None, configs=None, channels: int | None = None,
        tol: float | None = None, lr: float = 1e-2, batch_size: int | None = None, seed: int = 0,
        threads: int | None = None, verbose: bool = True) -> dict[str, Any]:
    """Run the conv benchmark; write ``bench_training_conv.{json,md}`` under ``out`` (unless None).

    ``batch_size`` None: each configuration's own (100 unless it names one); a number: all."""
    import torch

    from experiments.timing import machine_info, write_results
    from lipdeq.training.loop import TrainConfig

    t_start = time.perf_counter()
    epochs = epochs if epochs is not None else (QUICK["epochs"] if quick else 3)
    holdout = holdout if holdout is not None else (QUICK["holdout"] if quick else 1000)
    channels = channels if channels is not None else (QUICK["channels"] if quick else 32)
    tol = tol if tol is not None else (QUICK["tol"] if quick else 1e-3)
    names = list(dict.fromkeys(configs or CONFIGS))
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        raise ValueError(f"configs must be among {list(CONFIGS)}, got {unknown}")
    base = dict(dataset="mnist-5k", holdout=holdout, model="conv", channels=channels,
                batch_size=100, epochs=epochs, tol=tol, lr=lr, seed=seed, device=device)
    # a configuration may set its own width (not in --quick, a schema check at one width)
    # and batch size (unless --batch-size is given)
    forced = {**({"channels": channels} if quick else {}),
              **({"batch_size": batch_size} if batch_size is not None else {})}
    cfgs = {c: TrainConfig(**{**base, **CONFIGS[c], **forced}).validate() for c in names}
    n_train = 5000 - holdout
    runs: dict[str, Any] = {}
    with num_threads(threads):
        if verbose:
            print(f"bench_training_conv: {channels} channels, batch "
                  f"{'per configuration' if batch_size is None else batch_size}, tol {tol:g}, "
                  f"{epochs} epochs, {n_train} training digits, torch threads "
                  f"{torch.get_num_threads()}, load average {_load()}", flush=True)
        calls = {}
        for c, cfg in cfgs.items():
            r = train_rows(cfg, verbose=verbose, label=c)
            size, width, batch = 28 // CONFIGS[c]["downsample"], cfg.channels, cfg.batch_size
            if (size, width, batch) not in calls:
                calls[size, width, batch] = conv_call_seconds(batch, width, size)
            s, call = r["summary"], calls[size, width, batch]
            steps = -(-n_train // batch)
            r["cpu_s_per_epoch"] = r["cpu_s"] / epochs
            r["raw_conv_s_per_epoch"] = steps * (s["fwd_iterations_mean"] * call["conv2d"]
                                                 + s["bwd_iterations_mean"] * call["conv_transpose2d"])
            r["state_size"], r["channels"], r["conv_call_s"] = size, width, call
            r["batch_size"] = batch
            runs[c] = r
        used_threads = torch.get_num_threads()
    ref = runs.get("today")
    for r in runs.values():
        r["cpu_ratio_vs_today"] = r["cpu_s_per_epoch"] / ref["cpu_s_per_epoch"] if ref else None
    payload: dict[str, Any] = {
        "benchmark": "training-conv", "machine": machine_info(),
        "config": {**base, "configs": {c: CONFIGS[c] for c in names}, "quick": quick,
                   "threads": used_threads, "n_train": n_train},
        "runs": runs, "goal": goal(runs), "total_runtime_s": time.perf_counter() - t_start}
    summary = summary_markdown(payload)
    if out is not None:
        payload["files"] = {k: str(v) for k, v in write_results(
            out, NAME, payload, "# Conv training benchmark\n\n" + summary).items()}
    payload["summary_md"] = summary
    return payload


def goal(runs: dict[str, Any]) -> dict[str, Any]:
    """The fastest configuration (CPU) that meets the accuracy goal, and whether it meets both."""
    ok = [(r["cpu_ratio_vs_today"], c) for c, r in runs.items()
          if c != "today" and r["cpu_ratio_vs_today"] is not None
          and (r["summary"]["test_accuracy_final"] or 0) >= GOAL["accuracy"]]
    if not ok:
        return {"best": None, "met": False}
    ratio, best = min(ok)
    return {"best": best, "cpu_ratio": ratio, "met": ratio <= GOAL["cpu_ratio"],
            "accuracy": runs[best]["summary"]["test_accuracy_final"]}


def summary_markdown(payload: dict[str, Any]) -> str:
    from experiments.timing import markdown_table

    cfg, rows = payload["config"], []
    for c, r in payload["runs"].items():
        s = r["summary"]
        rows.append({"config": c, "state": f"{r['channels']}x{r['state_size']}x{r['state_size']}",
                     "batch": r.get("batch_size", cfg["batch_size"]),
                     "wall s/epoch": s["epoch_s_median"], "CPU s/epoch": r["cpu_s_per_epoch"],
                     "CPU vs today": r["cpu_ratio_vs_today"], "fwd it": s["fwd_iterations_mean"],
                     "bwd it": s["bwd_iterations_mean"], "raw conv s/epoch": r["raw_conv_s_per_epoch"],
                     "accuracy": s["test_accuracy_final"],
                     "load avg": "/".join(f"{x:g}" for x in (r["load_avg_before"] or [])[:1]
                                          + (r["load_avg_after"] or [])[:1])})
    cols = ["config", "state", "batch", "wall s/epoch", "CPU s/epoch", "CPU vs today", "fwd it", "bwd it",
            "raw conv s/epoch", "accuracy", "load avg"]
    g = payload["goal"]
    verdict = ("no configuration reached the accuracy goal" if g["best"] is None else
               f"best: {g['best']} at {g['cpu_ratio']:.3f}x today's CPU s/epoch, accuracy "
               f"{g['accuracy']:.4f}: goal {'met' if g['met'] else 'NOT met'}")
    return "\n".join([
        f"Conv training, {cfg['channels']} channels unless named, tol {cfg['tol']:g}, "
        f"{cfg['epochs']} epoch(s) on {cfg['n_train']} mnist-5k digits ({cfg['holdout']} held out), "
        f"{cfg['threads']} torch thread(s). wall s/epoch: training steps (median over epochs "
        f"2..E); CPU s/epoch: process time of the whole run / epochs (evaluation included); raw "
        f"conv: (fwd it x conv2d + bwd it x conv_transpose2d) x batches, calls timed alone; "
        f"load average before/after (1 min).", "",
        markdown_table(rows, cols, floatfmt=".4g"), "",
        f"- goal: >= {GOAL['accuracy']:g} held-out accuracy at <= {GOAL['cpu_ratio']:g}x today's "
        f"CPU s/epoch; {verdict}",
        f"- total runtime {payload['total_runtime_s']:.1f} s"]) + "\n"
