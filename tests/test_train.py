"""Training (lipdeq.train): projected-gradient loop, run-directory files, exact resume.

Runs are tiny: mnist-5k with ``holdout=4700`` (300 training digits, 3 batches of 100), hidden 16,
1–2 epochs, or the 1-D ``function`` dataset. μ∞(A) is checked in float64 on the stored tensor
after **every** optimizer step: a global optimizer step pre-hook sees the state that the previous
step (and its projection) left, and the model at the end of training is the state after the last
step.
"""
import json
import math
import os

import pytest
import torch
from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                   register_optimizer_step_pre_hook)

import lipdeq.training.loop as train_mod
from lipdeq.training.checkpoint import load_checkpoint, read_checkpoint
from lipdeq.training.loop import TrainConfig, train

TINY = dict(dataset="mnist-5k", holdout=4700, hidden=16, epochs=2, batch_size=100, tol=1e-3,
            max_iter=50)
STEPS_PER_EPOCH = 3
METRIC_KEYS = {"epoch", "train_loss", "train_accuracy", "test_accuracy", "mu_inf",
               "lipschitz_bound_inf", "fwd_iterations", "bwd_iterations", "epoch_s"}
CONFIG_KEYS = {"dataset", "holdout", "model", "hidden", "activation", "condition", "gamma",
               "solver", "tol", "max_iter", "lr", "batch_size", "epochs", "seed", "lip_reg",
               "projection"}
CHECKPOINT_KEYS = {"format", "version", "model", "model_config", "weights", "optimizer",
                   "scheduler", "rng", "epoch"}


def mu_inf64(A, eta=None):
    """μ∞,η(A) = maxᵢ (aᵢᵢ + Σ_{j≠i} |aᵢⱼ| ηⱼ/ηᵢ), in float64 (independent of lipdeq.geometry)."""
    A = A.detach().double()
    off = A.abs() - torch.diag(A.diagonal().abs())
    if eta is not None:
        eta = eta.detach().double()
        off = off * eta.unsqueeze(0) / eta.unsqueeze(1)
    return float((A.diagonal() + off.sum(1)).max())


class StepRecorder:
    """Captures the model(s) ``train`` builds and the effective A around every optimizer step."""

    def __init__(self, monkeypatch, *, fail_at_step=None, exc=None):
        self.models, self.before, self.after_step, self.etas = [], [], [], []
        self.fail_at_step, self.exc = fail_at_step, exc
        real_build = train_mod.build_model

        def build(cfg):
            model = real_build(cfg)
            self.models.append(model)
            return model
        monkeypatch.setattr(train_mod, "build_model", build)
        self.handles = [
            register_optimizer_step_pre_hook(self._pre),
            register_optimizer_step_post_hook(self._post)]

    @property
    def model(self):
        return self.models[-1]

    def _snap(self):
        A = self.model.effective_A().detach().clone()
        eta = self.model.norm_weights()
        self.etas.append(None if eta is None else eta.detach().clone())
        return A

    def _pre(self, opt, args, kwargs):
        # the state the previous step + projection left (or the initial projection)
        self.before.append(self._snap())
        if self.fail_at_step is not None and len(self.before) == self.fail_at_step:
            raise self.exc

    def _post(self, opt, args, kwargs):
        # right after the optimizer update, before the projection
        self.after_step.append(self.model.effective_A().detach().clone())

    @property
    def projected(self):
        """A after each optimizer step *and* its projection."""
        return self.before[1:] + [self.model.effective_A().detach().clone()]

    @property
    def projected_weighted(self):
        """(A, η) after each step, η the model's certified weights (None: η = 1)."""
        eta = self.model.norm_weights()
        return list(zip(self.projected, self.etas[1:] + [None if eta is None else eta.clone()]))

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.fixture
def recorder(monkeypatch):
    made = []

    def make(**kw):
        rec = StepRecorder(monkeypatch, **kw)
        made.append(rec)
        return rec
    yield make
    for rec in made:
        rec.remove()


def _lines(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def _no_time(row):
    return {k: v for k, v in row.items() if not k.endswith("_s")}


def _assert_only_plain_data(obj, where="checkpoint"):
    """What torch.load(weights_only=True) accepts: tensors, numbers, str, None, list/tuple/dict."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, (str, int)), where
            _assert_only_plain_data(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _assert_only_plain_data(v, f"{where}[{i}]")
    else:
        assert obj is None or isinstance(obj, (torch.Tensor, bool, int, float, str)), \
            f"{where} is a {type(obj).__name__}"


# ----------------------------------------------------------------------------- end to end
def test_tiny_run_keeps_mu_inf_after_every_step_and_writes_the_run_files(tmp_path, recorder):
    gamma = 0.3
    rec = recorder()
    out = str(tmp_path / "run")
    rows = train(TrainConfig(**TINY, gamma=gamma), out, progress=False)
    steps = TINY["epochs"] * STEPS_PER_EPOCH
    assert len(rec.before) == len(rec.after_step) == steps  # one pre/post per optimizer step
    mus = [mu_inf64(A) for A in rec.projected]
    assert mu_inf64(rec.before[0]) <= gamma  # the initial projection
    assert max(mus) <= gamma, mus  # after every step, in float64
    # the constraint is active (else this test would check nothing) ...
    assert max(mus) >= gamma - 1e-6
    # ... and the projection does work: some optimizer update left the set
    assert max(mu_inf64(A) for A in rec.after_step) > gamma

    # metrics.jsonl: one row per epoch with the docs/design.md §6 keys
    lines = _lines(os.path.join(out, "metrics.jsonl"))
    assert [r["epoch"] for r in lines] == [1, 2]
    assert lines == json.loads(json.dumps(rows))
    for k, row in enumerate(lines):
        assert METRIC_KEYS <= set(row), METRIC_KEYS - set(row)
        assert math.isfinite(row["train_loss"]) and row["train_loss"] > 0
        assert 0 <= row["train_accuracy"] <= 1 and 0 <= row["test_accuracy"] <= 1
        assert row["epoch_s"] > 0 and row["fwd_iterations"] >= 1 and row["bwd_iterations"] >= 0
        assert row["mu_inf"] <= gamma
        assert 0 < row["lipschitz_bound_inf"] < math.inf
        epoch_mus = mus[k * STEPS_PER_EPOCH:(k + 1) * STEPS_PER_EPOCH]
        assert row["mu_inf_max_step"] == pytest.approx(max(epoch_mus), abs=1e-12)
    assert lines[-1]["mu_inf"] == pytest.approx(mus[-1], abs=1e-12)

    # config.json
    with open(os.path.join(out, "config.json")) as fh:
        config = json.load(fh)
    assert CONFIG_KEYS <= set(config), CONFIG_KEYS - set(config)
    for key, value in dict(TINY, gamma=gamma, condition="mu_inf", model="dense",
                           activation="relu", solver="average", seed=0, lip_reg=0.0,
                           projection="exact").items():
        assert config[key] == value, key

    # last.pt: §3 structure, weights_only, weights == the effective tensors
    path = os.path.join(out, "last.pt")
    ckpt = torch.load(path, weights_only=True)
    assert CHECKPOINT_KEYS <= set(ckpt)
    assert ckpt["format"] == "lipdeq-checkpoint" and ckpt["version"] == 1 and ckpt["epoch"] == 2
    _assert_only_plain_data(ckpt)
    assert set(ckpt["weights"]) == {"A", "B", "b", "C", "c"}
    model = rec.model
    for name in ("A", "B", "b", "C", "c"):
        assert torch.equal(ckpt["weights"][name], getattr(model, name).detach()), name
        assert torch.equal(ckpt["weights"][name], ckpt["model"][name]), name
    assert mu_inf64(ckpt["weights"]["A"]) <= gamma
    assert ckpt["weights"]["A"].shape == (16, 16) and ckpt["weights"]["B"].shape == (16, 784)
    assert ckpt["model_config"]["hidden"] == 16 and ckpt["model_config"]["gamma"] == gamma
    assert ckpt["optimizer"]["state"] and ckpt["scheduler"]["last_epoch"] == 2
    assert os.path.getsize(path) > 0 and sorted(os.listdir(out)) == [
        ".lock", "config.json", "last.pt", "metrics.jsonl"]  # no temp files left
    # the checkpoint rebuilds the trained model
    rebuilt = load_checkpoint(path)
    u = torch.rand(5, 784)
    with torch.no_grad():
        assert torch.allclose(rebuilt(u), model.eval()(u), atol=1e-5)
    assert float(rebuilt.mu_inf()) == pytest.approx(lines[-1]["mu_inf"], abs=1e-12)


def test_nemon_checkpoint_stores_the_built_A(tmp_path, recorder):
    gamma = 0.5
    rec = recorder()
    out = str(tmp_path / "nemon")
    cfg = TrainConfig(**dict(TINY, epochs=1), condition="nemon", gamma=gamma)
    [row] = train(cfg, out, progress=False)
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    M = ckpt["model"]["parametrizations.A.original0"].double()  # the raw tensors (M, d) of the
    d = ckpt["model"]["parametrizations.A.original1"].double()  # torch parametrization of A
    n = M.shape[0]
    # A = γI + D⁻¹MD − diag(|M|1), D = diag(eᵈ) (docs/design.md §2), the certified weights η = e⁻ᵈ
    built = (gamma * torch.eye(n, dtype=torch.float64) + torch.exp(-d)[:, None] * M
             * torch.exp(d)[None, :] - torch.diag(M.abs().sum(1)))
    A = ckpt["weights"]["A"]
    assert A.shape == (16, 16) and "A" not in ckpt["model"]
    assert torch.allclose(A.double(), built, atol=1e-6)
    assert torch.equal(A, rec.model.effective_A().detach())
    eta = torch.exp(-(d - d.max()))  # ∝ e⁻ᵈ, normalized to max 1 (only the ratios matter)
    assert row["mu_inf"] == pytest.approx(mu_inf64(A), abs=1e-12)
    assert row["mu_inf_weighted"] == pytest.approx(mu_inf64(A, eta), abs=1e-6)  # η in float32
    assert row["mu_inf_weighted"] <= gamma + 1e-6
    # d moved during training, so the unweighted and weighted measures differ
    assert float(d.abs().max()) > 0
    # guaranteed after every step (A is built in float32: allow its rounding, 1e-6)
    pairs = rec.projected_weighted
    assert len(pairs) == STEPS_PER_EPOCH
    assert max(mu_inf64(A_step, eta_step) for A_step, eta_step in pairs) <= gamma + 1e-6
    assert torch.allclose(pairs[-1][1].double(), eta)
    assert load_checkpoint(os.path.join(out, "last.pt")).condition.name == "nemon"


# ----------------------------------------------------------------------------- shared by the resume tests
class Interrupted(Exception):
    pass


def _run_files(out):
    rows = _lines(os.path.join(out, "metrics.jsonl"))
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    return rows, ckpt


def _assert_same_run(a, b):
    rows_a, ck_a = a
    rows_b, ck_b = b
    assert [r["epoch"] for r in rows_a] == [r["epoch"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        assert _no_time(ra) == _no_time(rb)
    assert ck_a["epoch"] == ck_b["epoch"]
    for part in ("model", "weights"):
        assert ck_a[part].keys() == ck_b[part].keys()
        for k in ck_a[part]:
            assert torch.equal(ck_a[part][k], ck_b[part][k]), (part, k)
    for pid, state in ck_a["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ck_b["optimizer"]["state"][pid][k]))
    assert ck_a["scheduler"] == ck_b["scheduler"]
    assert torch.equal(ck_a["rng"]["order"], ck_b["rng"]["order"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("full") / "run")
    train(TrainConfig(**TINY), out, progress=False)
    return _run_files(out)
