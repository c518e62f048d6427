"""CLI entry points and flows: the console script and its checkout lookup, presets' explicit flags,
the validation split end to end, divergence messages."""
import json
import os
import subprocess
import sys

import pytest

from lipdeq.cli import main

from test_cli import (T0, TRAIN_ARGS, _run, run_dir)  # noqa: F401 (shared helpers and fixtures)

def test_console_script_info(run_dir, tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "lipdeq")
    if not os.path.exists(exe):
        pytest.skip("console script not installed next to the interpreter")
    proc = subprocess.run([exe, "info", "--checkpoint", os.path.join(run_dir, "last.pt")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model_config"]["hidden"] == 16


def test_console_script_finds_the_experiments_from_any_directory(tmp_path):
    """Found by review: the `lipdeq` script (unlike `python -m lipdeq`) did not see the
    checkout's experiments/ folder, so `lipdeq bench|search-space|reproduce` failed."""
    exe = os.path.join(os.path.dirname(sys.executable), "lipdeq")
    if not os.path.exists(exe):
        pytest.skip("console script not installed next to the interpreter")
    import lipdeq
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(lipdeq.__file__)))
    if not os.path.isfile(os.path.join(checkout, "experiments", "__init__.py")):
        pytest.skip("lipdeq is not installed from a checkout (not editable)")
    proc = subprocess.run([exe, "search-space", "--help"], capture_output=True, text=True,
                          timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "--samples" in proc.stdout


def test_find_experiments_puts_the_checkout_of_this_lipdeq_on_the_path(monkeypatch, tmp_path):
    """The unit behind the console-script test above (which runs the installed copy): with
    experiments/ importable from nowhere, the checkout lipdeq was loaded from is added."""
    import importlib.util

    import lipdeq
    import lipdeq.cli.app as app
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(lipdeq.__file__)))
    monkeypatch.delitem(sys.modules, "experiments", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path
                                      if p and os.path.abspath(p) != checkout])
    monkeypatch.chdir(tmp_path)
    assert importlib.util.find_spec("experiments") is None
    app._find_experiments()
    assert sys.path[0] == checkout and importlib.util.find_spec("experiments") is not None


# ----------------------------------------------------------------------------- issue 13
def test_flags_set_by_a_preset_or_default_do_not_trip_the_ignored_flag_check(monkeypatch,
                                                                             tmp_path):
    """Only flags typed by the user count: the robust preset sets eps/kappa (read), the
    accurate preset does not; defaults (hidden, channels, eps, ...) never count."""
    import lipdeq.training.loop
    seen = []
    monkeypatch.setattr(lipdeq.training.loop, "train", lambda config, out, **kw: seen.append(config) or [])
    out = str(tmp_path / "x")
    for argv in (["--preset", "robust"], ["--preset", "robust", "--eps", "0.05"],
                 ["--preset", "robust", "--kappa=0.2", "--eps-ramp", "3"],
                 ["--preset", "accurate"], ["--model", "conv"], ["--channels", "4", "--model", "conv"],
                 ["--robust", "interval", "--eps", "0.1"], ["--model", "conv", "--condition", "mu_inf"],
                 ["--lip-reg", "0.1", "--condition", "nemon"], ["--dataset", "function"]):
        assert main(["train", *argv, "--out", out]) == 0, argv
    assert seen[1].eps == 0.05 and seen[1].robust == "interval"


def test_train_val_and_evaluate_split_val(tmp_path, capsys):
    """--val N: recorded in config.json, val_accuracy in every row, and `evaluate --split val`
    rebuilds the same split from config.json (same accuracy as the last row)."""
    out = str(tmp_path / "run")
    args = ["train", *TRAIN_ARGS, "--holdout", "4600", "--val", "100", "--out", out]
    assert main(args) == 0
    capsys.readouterr()
    with open(os.path.join(out, "config.json")) as fh:
        assert json.load(fh)["val"] == 100
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh]
    assert all("val_accuracy" in r and "val_loss" in r for r in rows)
    code, text, _ = _run(capsys, ["evaluate", "--checkpoint", os.path.join(out, "last.pt"),
                                  "--split", "val"])
    result = json.loads(text)
    assert code == 0 and result["n"] == 100 and result["split"] == "val"
    assert result["accuracy"] == pytest.approx(rows[-1]["val_accuracy"])
    code, text, _ = _run(capsys, ["evaluate", "--checkpoint", os.path.join(out, "last.pt"),
                                  "--split", "train"])
    assert json.loads(text)["n"] == 300  # the digits it trained on, without the val split
    code, text, _ = _run(capsys, ["evaluate", "--checkpoint", os.path.join(out, "last.pt")])
    assert json.loads(text)["n"] == 4600  # the held-out split is unchanged


def test_resume_of_a_run_from_before_val(tmp_path, capsys):
    """A config.json without "val" (runs made before --val) resumes with val 0."""
    out = str(tmp_path / "old")
    assert main(["train", *TRAIN_ARGS, "--holdout", "1000", "--epochs", "1", "--hidden", "4",
                 "--val", "0", "--out", out]) == 0
    path = os.path.join(out, "config.json")
    with open(path) as fh:
        cfg = json.load(fh)
    del cfg["val"]
    with open(path, "w") as fh:
        json.dump(cfg, fh)
    # the default (500 at holdout 1000) must not apply to an old run
    assert main(["train", "--resume", "--out", out, "--quiet"]) == 0
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        assert [json.loads(line)["epoch"] for line in fh] == [1]


def test_divergence_is_named_and_warnings_are_one_line_each(tmp_path, capsys):
    """Found by review: --lr 1e30 printed Python's two-line warnings (with source lines) and
    'A contains NaN or Inf' without saying that training diverged."""
    code, out, err = _run(capsys, [*T0, "--lr", "1e30", "--out", str(tmp_path / "r")])
    lines = err.splitlines()
    assert code == 2 and lines, err
    assert all(line.startswith(("lipdeq: warning: ", "lipdeq: error: ")) for line in lines), err
    assert lines[-1].startswith("lipdeq: error: training diverged in epoch 1") and "--lr" in lines[-1]
