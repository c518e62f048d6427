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

Writes ``bench_training_conv.{json,md,png}`` (the PNG: held-out accuracy against CPU s/epoch
relative to ``today``, with the goal).

Several training seeds (``--seed 0 1 2``): every configuration trains once per seed (seed-major
order, so the load is spread over the configurations alike). A configuration's accuracy is then
the mean held-out accuracy over its seeds (per-seed values kept), its timings and iterations
the means over seeds, and each configuration gets its paired difference to ``today`` (same seed,
same held-out digits), mean ± standard error over seeds: one seed's held-out accuracy varies by
a few tenths of a point with the seed alone, the size of the differences being measured. The
goal is judged on the means.

    python -m experiments.bench_training --model conv [--epochs 3] [--configs today combined]
        [--seed 0 1 2] [--quick] [--out DIR]

``--quick``: 4 channels, 1 epoch on 200 digits, tol 1e-2, 1 torch thread (a schema check, not a
measurement).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Sequence

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
QUICK = dict(epochs=1, holdout=4800, channels=4, tol=1e-2, threads=1)


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
        tol: float | None = None, lr: float = 1e-2, batch_size: int | None = None,
        seeds: Sequence[int] = (0,), threads: int | None = None, verbose: bool = True
        ) -> dict[str, Any]:
    """Run the conv benchmark; write ``bench_training_conv.{json,md,png}`` under ``out`` (unless None).

    ``batch_size`` None: each configuration's own (100 unless it names one); a number: all.
    ``seeds``: the training seeds, each configuration once per seed (module docstring)."""
    import torch

    from experiments.timing import machine_info, write_results
    from lipdeq.training.loop import TrainConfig

    t_start = time.perf_counter()
    epochs = epochs if epochs is not None else (QUICK["epochs"] if quick else 3)
    holdout = holdout if holdout is not None else (QUICK["holdout"] if quick else 1000)
    channels = channels if channels is not None else (QUICK["channels"] if quick else 32)
    tol = tol if tol is not None else (QUICK["tol"] if quick else 1e-3)
    threads = threads if threads is not None else (QUICK["threads"] if quick else None)
    names = list(dict.fromkeys(configs or CONFIGS))
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        raise ValueError(f"configs must be among {list(CONFIGS)}, got {unknown}")
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be distinct integers >= 0, got {seeds}")
    base = dict(dataset="mnist-5k", holdout=holdout, model="conv", channels=channels,
                batch_size=100, epochs=epochs, tol=tol, lr=lr, device=device)
    # a configuration may set its own width (not in --quick, a schema check at one width)
    # and batch size (unless --batch-size is given)
    forced = {**({"channels": channels} if quick else {}),
              **({"batch_size": batch_size} if batch_size is not None else {})}
    cfgs = {(c, seed): TrainConfig(**{**base, **CONFIGS[c], **forced, "seed": seed}).validate()
            for seed in seeds for c in names}
    n_train = 5000 - holdout
    per_seed: dict[str, list[dict[str, Any]]] = {c: [] for c in names}
    with num_threads(threads):
        if verbose:
            print(f"bench_training_conv: {channels} channels, batch "
                  f"{'per configuration' if batch_size is None else batch_size}, tol {tol:g}, "
                  f"{epochs} epochs, {n_train} training digits, seeds {seeds}, torch threads "
                  f"{torch.get_num_threads()}, load average {_load()}", flush=True)
        calls = {}
        for (c, seed), cfg in cfgs.items():
            r = train_rows(cfg, verbose=verbose, label=c if len(seeds) == 1 else f"{c} s{seed}")
            size, width, batch = 28 // CONFIGS[c]["downsample"], cfg.channels, cfg.batch_size
            if (size, width, batch) not in calls:
                calls[size, width, batch] = conv_call_seconds(batch, width, size)
            s, call = r["summary"], calls[size, width, batch]
            steps = -(-n_train // batch)
            r["seed"], r["cpu_s_per_epoch"] = seed, r["cpu_s"] / epochs
            r["raw_conv_s_per_epoch"] = steps * (s["fwd_iterations_mean"] * call["conv2d"]
                                                 + s["bwd_iterations_mean"] * call["conv_transpose2d"])
            r["state_size"], r["channels"], r["conv_call_s"] = size, width, call
            r["batch_size"] = batch
            per_seed[c].append(r)
        used_threads = torch.get_num_threads()
    runs = {c: combine_seeds(rs) for c, rs in per_seed.items()}
    ref = runs.get("today")
    for r in runs.values():
        r["cpu_ratio_vs_today"] = r["cpu_s_per_epoch"] / ref["cpu_s_per_epoch"] if ref else None
        r["accuracy_vs_today"] = paired_difference(r, ref) if ref else None
    payload: dict[str, Any] = {
        "benchmark": "training-conv", "machine": machine_info(),
        "config": {**base, "seeds": seeds, "configs": {c: CONFIGS[c] for c in names},
                   "quick": quick, "threads": used_threads, "n_train": n_train},
        "runs": runs, "goal": goal(runs), "total_runtime_s": time.perf_counter() - t_start}
    summary = summary_markdown(payload)
    if out is not None:
        payload["files"] = {k: str(v) for k, v in write_results(
            out, NAME, payload, "# Conv training benchmark\n\n" + summary,
            figure=make_figure(payload)).items()}
    payload["summary_md"] = summary
    return payload


def combine_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's runs (one per seed) as one record: means over seeds of the timings,
    iterations and final held-out accuracy (``summary``; per-seed values in
    ``test_accuracy_per_seed``, each run whole in ``per_seed``)."""
    def mean(key):  # a run's own key, else its summary's
        return statistics.fmean(r[key] if key in r else r["summary"][key] for r in per_seed)

    first = per_seed[0]
    acc = [r["summary"]["test_accuracy_final"] for r in per_seed]
    summary = {"epoch_s_median": mean("epoch_s_median"), "fwd_iterations_mean":
               mean("fwd_iterations_mean"), "bwd_iterations_mean": mean("bwd_iterations_mean"),
               "test_accuracy_final": statistics.fmean(acc), "test_accuracy_per_seed": acc,
               "seeds": [r["seed"] for r in per_seed]}
    return {"summary": summary, "cpu_s_per_epoch": mean("cpu_s_per_epoch"),
            "raw_conv_s_per_epoch": mean("raw_conv_s_per_epoch"),
            "state_size": first["state_size"], "channels": first["channels"],
            "batch_size": first["batch_size"], "conv_call_s": first["conv_call_s"],
            "load_avg_before": first["load_avg_before"], "load_avg_after": per_seed[-1]["load_avg_after"],
            "per_seed": per_seed}


def paired_difference(run: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Held-out accuracy of ``run`` minus ``ref``'s, seed by seed: mean and standard error over
    the seeds both have (``se`` None with one seed)."""
    ref_acc = dict(zip(ref["summary"]["seeds"], ref["summary"]["test_accuracy_per_seed"]))
    diffs = [a - ref_acc[s] for s, a in zip(run["summary"]["seeds"],
                                            run["summary"]["test_accuracy_per_seed"]) if s in ref_acc]
    return {"mean": statistics.fmean(diffs) if diffs else None, "n": len(diffs),
            "se": statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None}


def goal(runs: dict[str, Any]) -> dict[str, Any]:
    """The fastest configuration (CPU) whose mean held-out accuracy meets the accuracy goal, and
    whether it meets both."""
    ok = [(r["cpu_ratio_vs_today"], c) for c, r in runs.items()
          if c != "today" and r["cpu_ratio_vs_today"] is not None
          and (r["summary"]["test_accuracy_final"] or 0) >= GOAL["accuracy"]]
    if not ok:
        return {"best": None, "met": False}
    ratio, best = min(ok)
    return {"best": best, "cpu_ratio": ratio, "met": ratio <= GOAL["cpu_ratio"],
            "accuracy": runs[best]["summary"]["test_accuracy_final"]}


def make_figure(payload: dict[str, Any]):
    """Held-out accuracy against CPU s/epoch relative to ``today`` (log scale), one marker per
    configuration (the mean over seeds; per-seed values as small dots), the goal region shaded."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot / global backend state

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for c, r in payload["runs"].items():
        x, s = r["cpu_ratio_vs_today"] or r["cpu_s_per_epoch"], r["summary"]
        ax.scatter([x] * len(s["test_accuracy_per_seed"]), s["test_accuracy_per_seed"], s=8,
                   color="gray", alpha=0.6)
        ax.scatter([x], [s["test_accuracy_final"]], s=40, zorder=3)
        ax.annotate(c, (x, s["test_accuracy_final"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    relative = "today" in payload["runs"]
    ax.set_xscale("log")
    ax.axhline(GOAL["accuracy"], color="green", ls=":", lw=1, label="goal")
    if relative:  # the goal region: at most 0.25x today's CPU, at least 95% held-out
        xlim, (y0, y1) = ax.get_xlim(), ax.get_ylim()
        y1 = max(y1, GOAL["accuracy"] + 0.005)
        ax.axvline(GOAL["cpu_ratio"], color="green", ls=":", lw=1)
        ax.fill_between([xlim[0], GOAL["cpu_ratio"]], GOAL["accuracy"], y1, color="green",
                        alpha=0.1, lw=0)
        ax.set_xlim(*xlim)
        ax.set_ylim(y0, y1)
    ax.set_xlabel("CPU s/epoch relative to today" if relative else "CPU s/epoch")
    ax.set_ylabel("held-out accuracy after the last epoch")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    cfg = payload["config"]
    fig.suptitle(f"Conv training, {cfg['epochs']} epoch(s), seeds {cfg['seeds']} "
                 f"(large marker: mean) — {payload['machine']['cpu_model']}", fontsize=8)
    return fig


def summary_markdown(payload: dict[str, Any]) -> str:
    from experiments.timing import markdown_table

    cfg, rows = payload["config"], []
    several = len(cfg["seeds"]) > 1
    for c, r in payload["runs"].items():
        s, d = r["summary"], r["accuracy_vs_today"]
        rows.append({"config": c, "state": f"{r['channels']}x{r['state_size']}x{r['state_size']}",
                     "batch": r.get("batch_size", cfg["batch_size"]),
                     "wall s/epoch": s["epoch_s_median"], "CPU s/epoch": r["cpu_s_per_epoch"],
                     "CPU vs today": r["cpu_ratio_vs_today"], "fwd it": s["fwd_iterations_mean"],
                     "bwd it": s["bwd_iterations_mean"], "raw conv s/epoch": r["raw_conv_s_per_epoch"],
                     "accuracy": s["test_accuracy_final"],
                     "per seed": " / ".join(f"{a:.3f}" for a in s["test_accuracy_per_seed"]),
                     "vs today (points)": "" if d is None or c == "today" else
                     f"{100 * d['mean']:+.2f}" + ("" if d["se"] is None else f" ± {100 * d['se']:.2f}"),
                     "load avg": "/".join(f"{x:g}" for x in (r["load_avg_before"] or [])[:1]
                                          + (r["load_avg_after"] or [])[:1])})
    cols = ["config", "state", "batch", "wall s/epoch", "CPU s/epoch", "CPU vs today", "fwd it", "bwd it",
            "raw conv s/epoch", "accuracy"] + (["per seed", "vs today (points)"] if several else []) \
        + ["load avg"]
    g = payload["goal"]
    verdict = ("no configuration reached the accuracy goal" if g["best"] is None else
               f"best: {g['best']} at {g['cpu_ratio']:.3f}x today's CPU s/epoch, accuracy "
               f"{g['accuracy']:.4f}: goal {'met' if g['met'] else 'NOT met'}")
    seeds = (f"seeds {cfg['seeds']}: accuracy, timings and iterations are means over the seeds, "
             f"'vs today' the paired difference (same seed) ± its standard error; "
             if several else f"seed {cfg['seeds'][0]}; ")
    return "\n".join([
        f"Conv training, {cfg['channels']} channels unless named, tol {cfg['tol']:g}, "
        f"{cfg['epochs']} epoch(s) on {cfg['n_train']} mnist-5k digits ({cfg['holdout']} held out), "
        f"{cfg['threads']} torch thread(s), {seeds}wall s/epoch: training steps (median over epochs "
        f"2..E); CPU s/epoch: process time of the whole run / epochs (evaluation included); raw "
        f"conv: (fwd it x conv2d + bwd it x conv_transpose2d) x batches, calls timed alone; "
        f"load average before the first and after the last run (1 min).", "",
        markdown_table(rows, cols, floatfmt=".4g"), "",
        f"- goal: >= {GOAL['accuracy']:g} held-out accuracy at <= {GOAL['cpu_ratio']:g}x today's "
        f"CPU s/epoch; {verdict}",
        f"- total runtime {payload['total_runtime_s']:.1f} s"]) + "\n"
