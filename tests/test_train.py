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


# ----------------------------------------------------------------------------- resume
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


def test_resume_after_crash_mid_epoch_matches_uninterrupted_run(tmp_path, recorder,
                                                                uninterrupted):
    out = str(tmp_path / "run")
    cfg = TrainConfig(**TINY)
    # crash inside epoch 2 (its second optimizer step): epoch 1's checkpoint is on disk
    rec = recorder(fail_at_step=STEPS_PER_EPOCH + 2, exc=Interrupted())
    with pytest.raises(Interrupted):
        train(cfg, out, progress=False)
    rec.remove()
    assert read_checkpoint(os.path.join(out, "last.pt"))["epoch"] == 1
    assert [r["epoch"] for r in _lines(os.path.join(out, "metrics.jsonl"))] == [1]
    # the same config again, resumed
    torch.manual_seed(12345)  # whatever the global RNG did meanwhile must not matter
    rows = train(cfg, out, resume=True, progress=False)
    assert [r["epoch"] for r in rows] == [1, 2]
    _assert_same_run(_run_files(out), uninterrupted)


def test_resume_after_failed_checkpoint_write(tmp_path, monkeypatch, uninterrupted):
    """A crash while epoch 2's checkpoint is being written leaves epoch 1's, and resume works."""
    out = str(tmp_path / "run")
    cfg = TrainConfig(**TINY)
    real_save = torch.save

    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise Interrupted()
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(Interrupted):
        train(cfg, out, progress=False)
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == [".lock", "config.json", "last.pt", "metrics.jsonl"]
    assert read_checkpoint(os.path.join(out, "last.pt"))["epoch"] == 1
    train(cfg, out, resume=True, progress=False)
    _assert_same_run(_run_files(out), uninterrupted)


def test_resume_drops_metrics_rows_past_the_checkpoint(tmp_path, recorder, uninterrupted):
    out = str(tmp_path / "run")
    cfg = TrainConfig(**TINY)
    rec = recorder(fail_at_step=STEPS_PER_EPOCH + 1, exc=Interrupted())
    with pytest.raises(Interrupted):
        train(cfg, out, progress=False)
    rec.remove()
    metrics = os.path.join(out, "metrics.jsonl")
    with open(metrics, "a") as fh:  # a stale row past the checkpoint and a torn line
        fh.write(json.dumps(dict(_lines(metrics)[0], epoch=2, train_loss=-1.0)) + "\n")
        fh.write('{"epoch": 3, "train_lo')
    train(cfg, out, resume=True, progress=False)
    _assert_same_run(_run_files(out), uninterrupted)


def test_crash_between_checkpoint_and_metrics_line_loses_no_row(tmp_path, monkeypatch,
                                                                 uninterrupted):
    out = str(tmp_path / "run")
    cfg = TrainConfig(**TINY)
    real_append = train_mod._append_jsonl

    def append(path, row):
        if row["epoch"] == 1:
            raise Interrupted()  # killed right after epoch 1's checkpoint
        real_append(path, row)
    monkeypatch.setattr(train_mod, "_append_jsonl", append)
    with pytest.raises(Interrupted):
        train(cfg, out, progress=False)
    monkeypatch.undo()
    assert read_checkpoint(os.path.join(out, "last.pt"))["epoch"] == 1
    train(cfg, out, resume=True, progress=False)
    _assert_same_run(_run_files(out), uninterrupted)


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_again(tmp_path, recorder,
                                                                         uninterrupted):
    """Killed during epoch 1: config.json is written, last.pt and metrics are not. A fresh run
    refuses the directory, so --resume must start it again (there is nothing to continue)."""
    out = str(tmp_path / "run")
    cfg = TrainConfig(**TINY)
    rec = recorder(fail_at_step=2, exc=Interrupted())
    with pytest.raises(Interrupted):
        train(cfg, out, progress=False)
    rec.remove()
    assert not os.path.exists(os.path.join(out, "last.pt"))
    with pytest.raises(ValueError, match="resume"):
        train(cfg, out, progress=False)
    rows = train(cfg, out, resume=True, progress=False)
    assert [r["epoch"] for r in rows] == [1, 2]
    _assert_same_run(_run_files(out), uninterrupted)


def test_resume_does_not_take_over_a_folder_that_is_not_a_run(tmp_path):
    """The restart rule needs a lipdeq config.json (with model_config): another tool's folder
    with a config.json is refused as before, and left as it was."""
    from lipdeq.errors import CheckpointError
    out = tmp_path / "app"
    out.mkdir()
    (out / "config.json").write_text('{"name": "my-webapp", "port": 8080}\n')
    with pytest.raises(CheckpointError, match="does not exist"):
        train(TrainConfig(**TINY), str(out), resume=True, progress=False)
    assert sorted(os.listdir(out)) == ["config.json"]


def test_resume_refuses_a_checkpoint_outside_its_set(tmp_path):
    from lipdeq.errors import CheckpointError
    out = str(tmp_path / "run")
    train(TrainConfig(**dict(TINY, epochs=1)), out, progress=False)
    path = os.path.join(out, "last.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"]["A"] = ckpt["model"]["A"] * float("nan")
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="NaN"):
        train(TrainConfig(**dict(TINY, epochs=1)), out, resume=True, progress=False)
    assert [r["epoch"] for r in _lines(os.path.join(out, "metrics.jsonl"))] == [1]


def test_metrics_lr_is_the_rate_the_epochs_steps_used(tmp_path):
    rows = train(TrainConfig(**dict(TINY, lr=0.01, schedule="cosine")), str(tmp_path / "r"),
                 progress=False)
    # cosine over 2 epochs: epoch 1 steps at 0.01, epoch 2 at 0.01·(1 + cos(π/2))/2 = 0.005
    assert [round(r["lr"], 12) for r in rows] == [0.01, 0.005]


def test_resume_with_a_different_model_config_is_a_value_error(tmp_path, uninterrupted):
    out = str(tmp_path / "run")
    train(TrainConfig(**dict(TINY, epochs=1)), out, progress=False)
    with pytest.raises(ValueError, match="hidden"):
        train(TrainConfig(**dict(TINY, hidden=8)), out, resume=True, progress=False)


def test_existing_run_and_missing_run(tmp_path, uninterrupted):
    out = tmp_path / "run"
    train(TrainConfig(**dict(TINY, epochs=1)), str(out), progress=False)
    before = {p: (out / p).read_bytes() for p in os.listdir(out)}
    with pytest.raises(ValueError, match="resume"):
        train(TrainConfig(**dict(TINY, epochs=1)), str(out), progress=False)
    assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before
    from lipdeq.errors import CheckpointError
    with pytest.raises(CheckpointError):
        train(TrainConfig(**TINY), str(tmp_path / "missing"), resume=True, progress=False)
    assert not (tmp_path / "missing").exists()
    # resuming a finished run is a no-op that returns its rows
    rows = train(TrainConfig(**dict(TINY, epochs=1)), str(out), resume=True, progress=False)
    assert [r["epoch"] for r in rows] == [1]
    assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before


# ----------------------------------------------------------------------------- other paths
def test_function_dataset_trains(tmp_path, recorder):
    rec = recorder()
    cfg = TrainConfig(dataset="function", hidden=8, epochs=3, batch_size=100, lr=2e-2,
                      gamma=0.5, tol=1e-3, max_iter=100)
    rows = train(cfg, str(tmp_path / "f"), progress=False)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    losses = [r["train_loss"] for r in rows]
    mses = [r["test_mse"] for r in rows]
    assert losses[0] > losses[1] > losses[2] and mses[0] > mses[2]
    assert mses[-1] < 0.8 * mses[0]
    assert all(r["train_accuracy"] is None and r["test_accuracy"] is None for r in rows)
    assert max(mu_inf64(A) for A in rec.projected) <= 0.5
    assert len(rec.before) == 3 * 10


def test_qp_projection_runs_in_the_loop_and_keeps_mu_inf(tmp_path, recorder):
    pytest.importorskip("cvxpy")
    from lipdeq.solvers import project_mu_inf
    gamma = 0.3
    rec = recorder()
    cfg = TrainConfig(dataset="function", hidden=8, epochs=1, batch_size=250, lr=5e-2,
                      gamma=gamma, projection="qp", tol=1e-3, max_iter=100)
    [row] = train(cfg, str(tmp_path / "qp"), progress=False)
    assert len(rec.before) == 4
    for A_step, A_proj in zip(rec.after_step, rec.projected):
        assert mu_inf64(A_proj) <= gamma + 1e-6  # solver tolerance
        # it is the projection (the exact one, up to the solver's accuracy)
        exact = project_mu_inf(A_step.double(), gamma)
        assert torch.allclose(A_proj.double(), exact, atol=1e-5)
    assert any(mu_inf64(A) > gamma + 1e-3 for A in rec.after_step)  # it had work to do
    assert row["mu_inf"] <= gamma + 1e-6 and row["projection_s"] > 0


def test_validation_happens_before_anything_is_written(tmp_path):
    bad = [dict(gamma=1.0), dict(gamma=float("nan")), dict(lip_reg=-0.1), dict(epochs=0),
           dict(batch_size=0), dict(lr=0.0), dict(tol=float("inf")), dict(projection="bogus"),
           dict(condition="nemon", projection="qp"), dict(condition="bogus"),
           dict(solver="bogus"), dict(activation="bogus"), dict(holdout=5000),
           dict(dataset="function", robust="interval"), dict(robust="interval", eps_ramp=0),
           dict(robust="interval", eps_ramp=-1), dict(robust="interval", kappa=1.5),
           dict(robust="interval", kappa=float("nan"))]
    for kw in bad:
        out = tmp_path / "never"
        with pytest.raises(ValueError) as info:
            train(TrainConfig(**dict(TINY, **kw)), str(out), progress=False)
        assert not out.exists(), kw
        if "eps_ramp" in kw or "kappa" in kw:  # the message names the flag that is wrong
            assert str(info.value).startswith(next(k for k in kw if k != "robust")), info.value


@pytest.mark.slow
def test_resume_after_sigkill_of_a_cli_run(tmp_path):
    """A real kill: `python -m lipdeq train` is SIGKILLed once its first checkpoint exists."""
    import signal
    import subprocess
    import sys
    import time
    cfg = TrainConfig(**dict(TINY, epochs=3))
    args = ["--dataset", "mnist-5k", "--holdout", "4700", "--hidden", "16", "--epochs", "3",
            "--batch-size", "100", "--tol", "1e-3", "--max-iter", "50", "--quiet"]
    out = str(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-m", "lipdeq", "train", *args, "--out", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = os.path.join(out, "last.pt")
    deadline = time.time() + 300
    while not os.path.exists(ckpt) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert read_checkpoint(ckpt)["epoch"] < 3
    train(cfg, out, resume=True, progress=False)
    full = str(tmp_path / "full")
    train(cfg, full, progress=False)
    _assert_same_run(_run_files(out), _run_files(full))


# ----------------------------------------------------------------------------- validation split
def test_val_split_rows_config_and_resume(tmp_path, uninterrupted):
    """§3: --val carves validation digits from the training part; every metrics row has
    val_accuracy/val_loss (checked against an independent evaluation of the checkpoint),
    config.json records val, and resume refuses another val."""
    import torch.nn.functional as F
    from lipdeq.training.data import load_dataset
    out = str(tmp_path / "run")
    cfg = dict(TINY, holdout=4500, val=200, epochs=1)  # 300 train / 200 val / 4500 held out
    [row] = train(TrainConfig(**cfg), out, progress=False)
    assert row["val_accuracy"] is not None and 0 <= row["val_accuracy"] <= 1
    with open(os.path.join(out, "config.json")) as fh:
        assert json.load(fh)["val"] == 200
    data = load_dataset("mnist-5k", holdout=4500, val=200)
    model = load_checkpoint(os.path.join(out, "last.pt")).eval()
    with torch.no_grad():
        y = model(data.val.inputs)
    assert row["val_accuracy"] == pytest.approx(float((y.argmax(1) == data.val.targets).double().mean()))
    assert row["val_loss"] == pytest.approx(float(F.cross_entropy(y, data.val.targets)), rel=1e-5)
    with pytest.raises(ValueError, match="val=200"):
        train(TrainConfig(**dict(cfg, val=100, epochs=2)), out, resume=True, progress=False)
    # no validation split: the keys are there, None
    [row0] = train(TrainConfig(**dict(TINY, epochs=1)), str(tmp_path / "r0"), progress=False)
    assert row0["val_accuracy"] is None and row0["val_loss"] is None


def test_val_default_and_bad_values():
    from lipdeq.training.run_options import resolve_val
    assert resolve_val(TrainConfig(val=None)) == 500  # mnist-5k, holdout 1000: 3500/500/1000
    assert resolve_val(TrainConfig(val=None, holdout=0)) == 0  # "train on all 5,000"
    assert resolve_val(TrainConfig(val=None, holdout=4700)) == 0  # tiny smoke runs
    assert resolve_val(TrainConfig(val=None, dataset="function")) == 0
    assert resolve_val(TrainConfig(val=7)) == 7 and resolve_val(TrainConfig()) == 0
    for bad in (-1, 1.5, True, 300, 1000):
        with pytest.raises(ValueError, match="val"):
            TrainConfig(**dict(TINY, val=bad)).validate()


def test_conflicting_options_are_refused_by_the_library(tmp_path):
    """§4: combinations that would be recorded but not done raise OptionConflict."""
    from lipdeq.errors import OptionConflict
    bad = [dict(model="conv", projection="qp"), dict(model="conv", projection="lp"),
           dict(model="conv", condition="nemon"), dict(lip_reg=0.1, condition="monotone"),
           dict(lip_reg=0.1, condition="lben"), dict(lip_reg=0.1, condition="none"),
           dict(eps_ramp=2)]
    for kw in bad:
        out = tmp_path / "never"
        with pytest.raises(OptionConflict):
            train(TrainConfig(**dict(TINY, **kw)), str(out), progress=False)
        assert not out.exists(), kw
    for kw in (dict(lip_reg=0.1, condition="nemon"), dict(model="conv", projection="exact"),
               dict(robust="interval", eps_ramp=2)):
        TrainConfig(**dict(TINY, **kw)).validate()  # honoured combinations pass


def test_epoch_line_shows_validation_accuracy_when_there_is_a_split():
    """The per-epoch progress line shows the validation accuracy, not the held-out one, when
    a validation split exists (tuning discipline); without one, the held-out accuracy."""
    row = dict(epoch=3, train_loss=0.5, test_accuracy=0.91, val_accuracy=0.87, mu_inf=0.9,
               lipschitz_bound_inf=10.0, fwd_iterations=5.0, bwd_iterations=4.0, epoch_s=1.0)
    line = train_mod.epoch_line(row)
    assert "val acc 0.8700" in line and "0.9100" not in line
    line = train_mod.epoch_line(dict(row, val_accuracy=None))
    assert "test acc 0.9100" in line and "val acc" not in line


def test_run_files_are_standard_json_when_the_bound_is_infinite(tmp_path, capsys, monkeypatch):
    """An infinite ℓ∞ bound (μ∞,η(A) ≥ 1 for every η tried, e.g. a monotone model): null in
    the files (not Python's non-standard Infinity) and None in the rows train() returns."""
    from lipdeq.cli import main
    monkeypatch.setattr(train_mod, "lipschitz_of", lambda model: float("inf"))

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    out = str(tmp_path / "run")
    rows = train(TrainConfig(**dict(TINY, epochs=1)), out, progress=False)
    assert rows[0]["lipschitz_bound_inf"] is None  # returned as the file holds it
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        row = json.loads(fh.readline(), parse_constant=refuse)
    assert row["lipschitz_bound_inf"] is None and row["epoch"] == 1
    capsys.readouterr()
    assert main(["info", "--checkpoint", os.path.join(out, "last.pt")]) == 0
    assert json.loads(capsys.readouterr().out, parse_constant=refuse)["lipschitz_bound_inf"] is None
    assert main(["plot", out, "--out", str(tmp_path / "c.png")]) == 0
