r"""Projected-gradient training of implicit networks (docs/math.md §8) and evaluation.

Each step: loss = task loss + λ·L∞ (the ℓ∞ Lipschitz bound of docs/math.md §6.1, ``lip_reg``), an
optimizer step (Adam or SGD), then A ← P_γ(A), the exact projection onto μ∞(A) ≤ γ
(``projection="exact"``; ``"qp"``/``"lp"`` route through CVXPY). A run directory holds
``config.json``, ``metrics.jsonl`` (one line per finished epoch) and ``last.pt`` (docs/design.md §6).
``val`` carves a validation split from the training part (``val_accuracy``/``val_loss`` per row;
``lipdeq.run_options``); options that would be recorded but not honoured raise ``OptionConflict``.
The checkpoint of an epoch is written atomically before its metrics line; ``resume`` drops
metrics lines past the checkpoint's epoch and continues bit for bit (data order, RNG, optimizer
and schedule are all restored).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import distributed
from .checkpoint import (FORMAT, VERSION, build_model, check_well_posed, restore_training_state,
                         save_checkpoint)
from .data import Split, load_dataset, random_shifts, shift_images
from .rundir import (append_jsonl as _append_jsonl, check_resume_matches as _check_resume_matches,
                     check_run_dir, clean_stale_temps,
                     lock_run_dir, read_metrics as _read_metrics, read_resume_checkpoint,
                     truncate_metrics as _truncate_metrics, write_config as _write_json)
from ..deq.model import check_gamma
from ..io import finite_or_none
from ..deq.implicit import BACKWARDS
from ..validate import check_positive_int, check_probability
from .run_options import (check_augment_shift, check_combinations, check_data_fits, epoch_line,
                          resolve_val, validation_metrics)

PRESETS = {
    # chosen on the validation split only (500 training digits) by experiments/tune_presets.py;
    # its log is docs/tuning/tuning.{json,md}. Explicit flags override a preset.
    "accurate": dict(lr=1e-2, epochs=10, lip_reg=0.0),
    "robust": dict(robust="interval", eps=0.12, epochs=20, lr=1e-2, kappa=0.3),
    # conv, chosen on the validation split only by experiments/tune_conv.py (docs/tuning/tuning_conv.*)
    "robust-conv": dict(model="conv", robust="interval", eps=0.125, kappa=0.3, epochs=30, lr=1e-2,
                        channels=64, backward="jacobian-free", downsample=2, batch_size=100),
}
#: ``--model conv``'s unset speed settings: the fast path chosen on the validation split by
#: experiments/tune_conv_speed.py (docs/tuning/conv_speed.md; timed by
#: experiments/bench_training_conv.py). The Jacobian-free backward is a biased gradient
#: (docs/math.md §5.6); ``--backward implicit --downsample 1 --batch-size 100`` is the exact,
#: about 9× slower configuration (CPU). ``ImplicitConvNetwork`` itself defaults to the implicit backward.
CONV_DEFAULTS = dict(solver="average", backward="jacobian-free", downsample=2, batch_size=25)
DENSE_BATCH_SIZE = 100


@dataclass
class TrainConfig:
    dataset: str = "mnist-5k"
    data_dir: str | None = None
    holdout: int = 1000
    val: int | None = 0  # validation examples carved from the training part; None: CLI default
    model: str = "dense"
    hidden: int = 100
    activation: str = "relu"
    condition: str = "mu_inf"
    gamma: float = 0.95
    solver: str | None = None  # None: the condition's default (average; monDEQ/LBEN: peaceman_rachford)
    tol: float = 1e-3
    max_iter: int = 100
    lr: float = 1e-2
    batch_size: int | None = None  # None: 100 (dense), CONV_DEFAULTS["batch_size"] (conv)
    epochs: int = 5
    seed: int = 0
    device: str = "cpu"
    lip_reg: float = 0.0
    projection: str = "exact"
    robust: str | None = None
    eps: float = 0.1
    eps_ramp: int | None = None  # epochs over which ε grows linearly (default: half the epochs)
    kappa: float = 0.5
    optimizer: str = "adam"
    schedule: str = "cosine"
    allow_ill_posed: bool = False
    channels: int = 32
    kernel_size: int = 3
    backward: str | None = None  # None: implicit (dense), CONV_DEFAULTS (conv; also downsample)
    downsample: int | None = None
    augment_shift: int = 0  # random translations of up to this many pixels (image datasets)
    preset: str | None = None
    extra: dict = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        choices = dict(model=("dense", "conv"), projection=("exact", "qp", "lp"),
                       optimizer=("adam", "sgd"), schedule=("cosine", "none"),
                       robust=(None, "interval"), device_kind=("cpu", "cuda"),
                       backward=(None, *BACKWARDS))
        for key, allowed in choices.items():
            value = self.device.split(":")[0] if key == "device_kind" else getattr(self, key)
            if value not in allowed:
                raise ValueError(f"{key.replace('_kind', '')} must be one of {allowed}, got {value!r}")
        for key in ("epochs", "batch_size", "hidden", "max_iter"):
            v = getattr(self, key)
            if key == "batch_size" and v is None:  # the model's default (resolved_batch_size)
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{key} must be a positive integer, got {v!r}")
        check_augment_shift(self.augment_shift)
        for key in ("lr", "tol"):
            if not (getattr(self, key) > 0 and math.isfinite(getattr(self, key))):
                raise ValueError(f"{key} must be positive and finite, got {getattr(self, key)!r}")
        for key in ("lip_reg", "eps"):
            if not (getattr(self, key) >= 0 and math.isfinite(getattr(self, key))):
                raise ValueError(f"{key} must be >= 0 and finite, got {getattr(self, key)!r}")
        if self.eps_ramp is not None:  # 0 divided by zero in the ramp; < 0 gave a negative eps
            check_positive_int("eps_ramp (--eps-ramp, epochs)", self.eps_ramp)
        check_probability("kappa (--kappa)", self.kappa)
        if self.downsample is not None and (self.model != "conv" or self.downsample < 1):
            raise ValueError(f"downsample must be >= 1, with model 'conv' only, got "
                             f"{self.downsample!r} (model {self.model!r})")
        shadowed = sorted(set(self.extra) & ({f.name for f in dataclasses.fields(self)}
                                             | {"model_config", "solver"}))
        if shadowed:  # extra keys are recorded in config.json: they must not rewrite real ones
            raise ValueError(f"extra must not set recorded settings, got {shadowed}")
        check_gamma(self.gamma, self.condition, self.allow_ill_posed)
        check_combinations(self)
        if self.projection != "exact" and self.condition not in ("mu_inf", "norm_inf"):
            raise ValueError(f"projection={self.projection!r} needs condition mu_inf or norm_inf")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        return self

    def resolved_batch_size(self) -> int:
        """``batch_size``, or for None the model's default (dense 100, conv ``CONV_DEFAULTS``)."""
        if self.batch_size is not None:
            return self.batch_size
        return CONV_DEFAULTS["batch_size"] if self.model == "conv" else DENSE_BATCH_SIZE

    def model_config(self, in_features: int, out_features: int) -> dict:
        common = dict(activation=self.activation, gamma=self.gamma, tol=self.tol, solver=self.solver,
                      max_iter=self.max_iter, allow_ill_posed=self.allow_ill_posed,
                      backward=self.backward or "implicit")
        if self.model == "conv":  # unset (None) speed settings take CONV_DEFAULTS
            fast = {k: v if (v := getattr(self, k)) is not None else d
                    for k, d in CONV_DEFAULTS.items() if k != "batch_size"}
            return {**common, **fast, "model": "conv", "channels": self.channels,
                    "kernel_size": self.kernel_size, "out_features": out_features}
        return dict(model="dense", in_features=in_features, hidden=self.hidden,
                    out_features=out_features, condition=self.condition, **common)


def apply_preset(config: TrainConfig, explicit: set[str]) -> TrainConfig:
    """Fill a preset's values into every field the user did not set explicitly."""
    if config.preset is None:
        return config
    if config.preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {config.preset!r}")
    values = {k: v for k, v in PRESETS[config.preset].items() if k not in explicit}
    return dataclasses.replace(config, **values)


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, split: Split, *, batch_size: int = 1000, device: str = "cpu") -> dict:
    """Accuracy (classification) or MSE (regression) and mean forward iterations on a split."""
    model.eval()
    correct, sq, iters, batches = 0, 0.0, 0, 0
    for start in range(0, len(split), batch_size):
        u = split.inputs[start:start + batch_size].to(device)
        t = split.targets[start:start + batch_size].to(device)
        y = model(u)
        iters += model.last_forward.iterations
        batches += 1
        if t.dtype == torch.int64:
            correct += int((y.argmax(1) == t).sum())
        else:
            sq += float(((y - t) ** 2).sum())
    n = len(split)
    out = {"n": n, "fwd_iterations": iters / max(batches, 1)}
    if split.targets.dtype == torch.int64:
        out["accuracy"] = correct / max(n, 1)
    else:
        out["mse"] = sq / max(n, 1)
    return out


def lipschitz_of(model) -> float:
    """The reported ℓ∞ bound: dense models the best of η = 1 and optimal η; else the model's own."""
    from ..certify.lipschitz import linf_bound
    from ..deq.model import ImplicitNetwork
    if isinstance(model, ImplicitNetwork):
        return linf_bound(model)
    return float(model.lipschitz_bound().detach())


def _model_measures(model) -> dict:
    out = {"mu_inf": float(model.mu_inf())}
    if getattr(model, "norm_weights", None) is not None and model.norm_weights() is not None:
        out["mu_inf_weighted"] = float(model.mu_inf(weighted=True))
    out["lipschitz_bound_inf"] = lipschitz_of(model)
    return out


# ----------------------------------------------------------------------------- training
class _Projector:
    """A ← P(A) after every optimizer step: exact (model.project_) or CVXPY (qp/lp)."""

    def __init__(self, model, config: TrainConfig):
        self.model, self.method = model, config.projection
        self.seconds = 0.0

    @torch.no_grad()
    def __call__(self) -> None:
        t0 = time.perf_counter()
        if self.method == "exact":
            self.model.project_()
        else:
            from ..solvers import project_mu_inf, project_norm_inf
            fn = project_mu_inf if self.model.condition.name == "mu_inf" else project_norm_inf
            fn(self.model.A.data, self.model.gamma, method=self.method, out=self.model.A.data,
               weights=getattr(self.model.condition, "weights", None))
        self.seconds += time.perf_counter() - t0


def train(config: TrainConfig, out_dir: str, *, resume: bool = False, progress: bool = True
          ) -> list[dict]:
    """Train per ``config`` into ``out_dir``; returns the metrics rows (one per epoch).

    Everything that can be checked (config, data, model, run directory) is checked before
    anything is written.
    """
    config = config.validate()
    config = dataclasses.replace(config, val=resolve_val(config),
                                 batch_size=config.resolved_batch_size())
    distributed.check_batch_size(config.batch_size)  # before a process group exists (no hang)
    ctx = distributed.init_from_env(config.device)
    try:
        with contextlib.ExitStack() as stack:  # holds the run directory's lock (main process)
            return _train(config, out_dir, resume, progress, ctx, stack)
    finally:
        distributed.close(ctx)


def _train(config, out_dir, resume, progress, ctx, stack) -> list[dict]:
    device = torch.device(config.device if not (ctx.enabled and config.device.startswith("cuda"))
                          else f"cuda:{ctx.local_rank}")
    data = load_dataset(config.dataset, data_dir=config.data_dir, holdout=config.holdout,
                        val=config.val)
    check_data_fits(config, data)  # image sizes: before anything is written
    is_cls = data.task == "classification"
    if config.robust and not is_cls:
        raise ValueError("robust training needs a classification dataset")
    if config.batch_size % ctx.world_size:
        raise ValueError(f"batch size {config.batch_size} is not divisible by the world size "
                         f"{ctx.world_size}")
    ckpt_path = os.path.join(out_dir, "last.pt")
    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    check_run_dir(out_dir, resume)
    # CheckpointError when missing/corrupt; None for a run stopped before its first checkpoint
    ckpt = read_resume_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        _read_metrics(metrics_path)  # DataError for a corrupt log, before anything is written

    torch.manual_seed(config.seed)
    model = build_model(config.model_config(data.in_features, data.out_features)).to(device)
    params = [p for p in model.parameters()]
    opt = (torch.optim.Adam(params, lr=config.lr) if config.optimizer == "adam"
           else torch.optim.SGD(params, lr=config.lr, momentum=0.9))
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
             if config.schedule == "cosine" else torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0))
    order_gen = torch.Generator().manual_seed(config.seed)
    start_epoch = 1
    if ckpt is not None:
        _check_resume_matches(ckpt, model, config, out_dir)
        model.load_state_dict(ckpt["model"])
        check_well_posed(model, ckpt_path)  # NaN or A outside its set: refused, as on loading
        restore_training_state(ckpt, ckpt_path, opt, sched, order_gen)
        start_epoch = int(ckpt["epoch"]) + 1
    net = model
    if ctx.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    project = _Projector(model, config)

    if ctx.is_main:
        stack.enter_context(lock_run_dir(out_dir))  # RunDirectoryError when another writer holds it
        check_run_dir(out_dir, resume, locked=True)  # again, under the lock: a run may have finished meanwhile
        if progress:
            print(f"run directory: {out_dir}", flush=True)
        if ckpt is None:
            if resume:  # stopped before its first checkpoint: start again (read_resume_checkpoint)
                clean_stale_temps(out_dir)
                _truncate_metrics(metrics_path, 0)
            _write_json(os.path.join(out_dir, "config.json"), _flat_config(config, model))
        else:
            clean_stale_temps(out_dir)
            _truncate_metrics(metrics_path, int(ckpt["epoch"]))
            kept = _read_metrics(metrics_path)
            if ckpt.get("metrics") and (not kept or kept[-1].get("epoch") != ckpt["epoch"]):
                _append_jsonl(metrics_path, ckpt["metrics"])  # crash between the two writes
    rows = _read_metrics(metrics_path) if ckpt is not None and ctx.is_main else []
    train_split = data.train
    ramp = config.eps_ramp if config.eps_ramp is not None else max(1, config.epochs // 2)
    steps_per_epoch = math.ceil(len(train_split) / config.batch_size)

    for epoch in range(start_epoch, config.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        project.seconds = 0.0
        perm = torch.randperm(len(train_split), generator=order_gen)
        shifts = (random_shifts(len(train_split), config.augment_shift, order_gen)
                  if config.augment_shift else None)  # drawn only when asked: old runs unchanged
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = torch.zeros((), device=device)
        mu_max = torch.full((), -float("inf"), device=device)
        fwd = bwd = 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}",
                   disable=not (progress and ctx.is_main), leave=False, unit="batch")
        for step in bar:
            batch_idx = perm[step * config.batch_size:(step + 1) * config.batch_size]
            idx = ctx.shard(batch_idx)
            share = idx.numel()  # this rank's real samples; the last batch may split unevenly
            if share == 0:  # every rank must join DDP's all-reduce: one sample, weight 0
                idx = batch_idx[:1]
            u = train_split.inputs[idx].to(device)
            u = shift_images(u, shifts[idx], data.image_size) if shifts is not None else u
            t = train_split.targets[idx].to(device)
            y = net(u)
            if config.robust == "interval":
                from ..certify.robustness import interval_loss
                frac = min(1.0, ((epoch - 1) * steps_per_epoch + step + 1) / (ramp * steps_per_epoch))
                task = interval_loss(model, u, t, config.eps * frac, kappa=config.kappa, logits=y)
            else:
                task = F.cross_entropy(y, t) if is_cls else F.mse_loss(y, t)
            loss = task + config.lip_reg * model.lipschitz_bound() if config.lip_reg else task
            if ctx.enabled:  # DDP averages rank gradients: weight by the share of the batch
                loss = loss * ctx.loss_weight(share, len(batch_idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            try:
                project()
            except ValueError as exc:  # the only one left once the config is checked: NaN/Inf in A
                raise ValueError(f"training diverged in epoch {epoch}, step {step + 1}: {exc} "
                                 f"(a smaller --lr may help)") from exc
            mu_max = torch.maximum(mu_max, model.mu_inf().detach().to(device))
            fwd += model.last_forward.iterations
            bwd += model.last_backward.iterations if model.last_backward is not None else 0
            loss_sum += task.detach() * share
            seen += share
            if is_cls and share:
                correct += (y.detach().argmax(1) == t).sum()
            if step % 10 == 0 and progress and ctx.is_main:
                bar.set_postfix(loss=f"{float(task.detach()):.3f}", fwd=model.last_forward.iterations)
        lr = opt.param_groups[0]["lr"]  # the rate this epoch's steps used
        sched.step()
        totals = ctx.all_sum(torch.stack([loss_sum, correct, seen]).double())
        row = {"epoch": epoch, "train_loss": float(totals[0] / totals[2])}
        row["train_accuracy"] = float(totals[1] / totals[2]) if is_cls else None
        row["epoch_s"] = time.perf_counter() - t0
        if ctx.is_main:
            if data.test is not None:
                ev = evaluate(model, data.test, device=str(device))
                row["test_accuracy"] = ev.get("accuracy")
                if "mse" in ev:
                    row["test_mse"] = ev["mse"]
            else:
                row["test_accuracy"] = None
            row.update(validation_metrics(model, data.val, str(device)))
            row.update(_model_measures(model))
            row.update(mu_inf_max_step=float(mu_max), fwd_iterations=fwd / steps_per_epoch,
                       bwd_iterations=bwd / steps_per_epoch, projection_s=project.seconds, lr=lr)
            save_checkpoint(ckpt_path, _checkpoint(model, opt, sched, order_gen, epoch, row))
            _append_jsonl(metrics_path, row)
            rows.append(finite_or_none(row))  # as the file holds it (resumed rows too)
            if progress:
                tqdm.write(epoch_line(row))
        ctx.barrier()
    return rows


def _checkpoint(model, opt, sched, order_gen, epoch, row) -> dict:
    return {"format": FORMAT, "version": VERSION, "model": model.state_dict(),
            "model_config": model.config(), "weights": model.weights(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": {"order": order_gen.get_state(), "torch": torch.get_rng_state()},
            "epoch": epoch, "metrics": row}


def _flat_config(config: TrainConfig, model) -> dict:
    out = {k: v for k, v in dataclasses.asdict(config).items() if k != "extra"}
    out.update(config.extra)
    out["model_config"] = model.config()
    out["solver"] = out["model_config"].get("solver", config.solver)  # the resolved default
    return out
