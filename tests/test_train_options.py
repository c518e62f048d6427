"""Training: other datasets and projections, validation before writing, SIGKILL of a CLI run, the
validation split, conflicting options, the epoch line and strict JSON run files."""
import json
import os

import pytest
import torch

import lipdeq.training.loop as train_mod
from lipdeq.training.checkpoint import load_checkpoint, read_checkpoint
from lipdeq.training.loop import TrainConfig, train

# shared helpers and fixtures
from test_train import (TINY, _assert_same_run, _run_files, mu_inf64, recorder, uninterrupted)  # noqa: F401


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


def test_extra_cannot_rewrite_recorded_settings(tmp_path):
    """Found by review: ``extra`` is written into config.json after the real fields, so
    extra={"holdout": 0} recorded a holdout the run never used (evaluate and resume then failed)."""
    for bad in ({"holdout": 0}, {"gamma": 0.5}, {"model_config": {}}):
        with pytest.raises(ValueError, match="extra must not set recorded settings"):
            train(TrainConfig(**dict(TINY, extra=bad)), str(tmp_path / "never"), progress=False)
    assert not (tmp_path / "never").exists()
