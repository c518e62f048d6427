"""Training resume: crash anywhere, continue bit for bit; what resume refuses."""
import json
import os

import pytest
import torch

import lipdeq.training.loop as train_mod
from lipdeq.training.checkpoint import read_checkpoint
from lipdeq.training.loop import TrainConfig, train

from test_train import (STEPS_PER_EPOCH, TINY, Interrupted, _assert_same_run,  # noqa: F401
                        _lines, _run_files, recorder, uninterrupted)  # shared helpers, fixtures


# ----------------------------------------------------------------------------- resume
def _crash_in_epoch_2(tmp_path, recorder, step: int):
    """Train TINY into tmp_path/run and crash at optimizer step ``step`` of epoch 2 (epoch 1's
    checkpoint is on disk); returns (run directory, config)."""
    out = str(tmp_path / "run")
    cfg = TrainConfig(**TINY)
    rec = recorder(fail_at_step=STEPS_PER_EPOCH + step, exc=Interrupted())
    with pytest.raises(Interrupted):
        train(cfg, out, progress=False)
    rec.remove()
    return out, cfg


def test_resume_after_crash_mid_epoch_matches_uninterrupted_run(tmp_path, recorder,
                                                                uninterrupted):
    out, cfg = _crash_in_epoch_2(tmp_path, recorder, 2)  # its second optimizer step
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
    out, cfg = _crash_in_epoch_2(tmp_path, recorder, 1)
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


def test_resume_refuses_a_metrics_log_corrupt_before_its_last_line(tmp_path):
    """Only a torn last line is a crash's trace; garbage between rows is refused, and the log
    is left as it was (no valid row dropped)."""
    from lipdeq.errors import DataError
    out = str(tmp_path / "run")
    train(TrainConfig(**TINY), out, progress=False)
    path = os.path.join(out, "metrics.jsonl")
    rows = open(path).read().splitlines()
    edited = "\n".join([rows[0], "GARBAGE{", *rows[1:]]) + "\n"
    open(path, "w").write(edited)
    with pytest.raises(DataError, match="line 2 is not JSON"):
        train(TrainConfig(**TINY), out, resume=True, progress=False)
    assert open(path).read() == edited


def _edit_checkpoint(path, edit):
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)


@pytest.mark.parametrize("what,edit", [
    ("optimizer", lambda c: c.update(optimizer={})),
    ("rng", lambda c: c["rng"].update(order=torch.zeros(3, dtype=torch.uint8))),
    ("rng", lambda c: c["rng"].update(torch=torch.zeros(3, dtype=torch.uint8))),
    ("metrics", lambda c: c.update(metrics="bad")),
    ("metrics", lambda c: c.update(metrics={"epoch": 1})),
    ("metrics", lambda c: c.update(metrics={"epoch": 5, "epoch_s": 1.0})),
])
def test_resume_refuses_a_checkpoint_with_a_corrupt_training_state(tmp_path, what, edit):
    """An edited optimizer, generator state or metrics row: one CheckpointError naming it (no
    KeyError/RuntimeError from inside torch), and the run's files left as they were."""
    from lipdeq.errors import CheckpointError
    out = str(tmp_path / "run")
    train(TrainConfig(**dict(TINY, epochs=1)), out, progress=False)
    _edit_checkpoint(os.path.join(out, "last.pt"), edit)
    before = {p: open(os.path.join(out, p), "rb").read() for p in ("metrics.jsonl", "last.pt")}
    with pytest.raises(CheckpointError, match=what):
        train(TrainConfig(**dict(TINY, epochs=1)), out, resume=True, progress=False)
    assert {p: open(os.path.join(out, p), "rb").read() for p in before} == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_map_location_without_cuda_is_not_called_corrupt(tmp_path):
    """Found by review: the checkpoint was reported 'corrupt or truncated'."""
    from lipdeq.training.checkpoint import load_checkpoint
    out = str(tmp_path / "run")
    train(TrainConfig(**dict(TINY, epochs=1)), out, progress=False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_checkpoint(os.path.join(out, "last.pt"), map_location="cuda")
    assert load_checkpoint(os.path.join(out, "last.pt")) is not None
