"""Output options of the CLI (items 6, 8, 11, 12): ``--out`` everywhere with the old
spellings as deprecated aliases, outputs checked before the work, no litter, printed paths."""
import json
import os

import pytest

import lipdeq.cli.robustness as rob
from lipdeq.cli import main

TRAIN = ["train", "--dataset", "mnist-5k", "--holdout", "4700", "--hidden", "8", "--epochs", "1",
         "--batch-size", "100", "--tol", "1e-3", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("outputs") / "run")
    assert main([*TRAIN, "--out", out]) == 0
    return out


def _run(capsys, argv):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("flag", ["--out", "--json"])
def test_evaluate_out_and_its_deprecated_alias(run, tmp_path, capsys, flag):
    path = str(tmp_path / "r.json")
    code, out, err = _run(capsys, ["evaluate", "--checkpoint", os.path.join(run, "last.pt"),
                                   "--limit", "20", flag, path])
    assert code == 0
    assert json.load(open(path)) == json.loads(out)
    if flag == "--json":
        assert err.splitlines() == ["lipdeq: note: --json is deprecated and will be removed; "
                                    "use --out"]
    else:
        assert err == ""


@pytest.mark.parametrize("flag", ["--out", "--output"])
def test_plot_out_directory_leaves_no_temp_file(run, tmp_path, capsys, flag, monkeypatch):
    target = tmp_path / "figs"
    target.mkdir()
    monkeypatch.chdir(target)
    code, out, err = _run(capsys, ["plot", run, flag, "."])
    assert code == 0, err
    assert sorted(os.listdir(target)) == ["curves.png"]  # not "..tmp.png"
    assert (target / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.strip() == os.path.join(".", "curves.png")
    assert ("deprecated" in err) == (flag == "--output")


def test_plot_out_into_a_missing_directory_is_refused(run, tmp_path, capsys):
    code, out, err = _run(capsys, ["plot", run, "--out", str(tmp_path / "no" / "c.png")])
    assert code == 2 and len(err.splitlines()) == 1 and "does not exist" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["last.pt", "metrics.jsonl", "config.json"])
def test_plot_out_onto_a_run_file_is_refused(run, tmp_path, capsys, name):
    """Found by review: `plot RUN --out RUN/last.pt` replaced the checkpoint by a PNG (exit 0)."""
    before = open(os.path.join(run, name), "rb").read()
    link = tmp_path / "link"
    link.symlink_to(os.path.join(run, name))
    for target in (os.path.join(run, name), os.path.join(run, "..", os.path.basename(run), name),
                   str(link)):
        code, out, err = _run(capsys, ["plot", run, "--out", target])
        assert code == 2 and len(err.splitlines()) == 1 and name in err, err
    assert open(os.path.join(run, name), "rb").read() == before


@pytest.mark.parametrize("limit", ["0", "-150"])
def test_robustness_limit_must_be_positive(run, tmp_path, capsys, limit, monkeypatch):
    monkeypatch.setattr(rob, "sweep", lambda *a, **k: pytest.fail("the sweep ran"))
    code, out, err = _run(capsys, ["robustness", run, "--limit", limit, "--out", str(tmp_path)])
    assert code == 2 and "--limit must be a positive integer" in err and out == ""
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind", ["file", "under a file", "read-only"])
def test_robustness_checks_its_output_before_the_sweep(run, tmp_path, capsys, kind,
                                                       monkeypatch):
    monkeypatch.setattr(rob, "sweep", lambda *a, **k: pytest.fail("the sweep ran"))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if kind == "read-only" and os.access(ro, os.W_OK):
        pytest.skip("running as a user that ignores permissions")
    out = {"file": blocker, "under a file": blocker / "sub", "read-only": ro / "sub"}[kind]
    code, stdout, err = _run(capsys, ["robustness", run, "--limit", "10", "--out", str(out)])
    ro.chmod(0o700)
    assert code == 2 and len(err.splitlines()) == 1 and "--out" in err, err
    assert sorted(os.listdir(tmp_path)) == ["a-file", "ro"] and os.listdir(ro) == []


def test_robustness_prints_the_json_and_png_paths(run, tmp_path, capsys):
    out = str(tmp_path / "rob")
    code, stdout, err = _run(capsys, ["robustness", run, "--limit", "10", "--eps", "0,0.05",
                                      "--steps", "2", "--out", out])
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[-2:] == [os.path.join(out, "robustness.json"), os.path.join(out, "robustness.png")]
    assert sorted(os.listdir(out)) == ["robustness.json", "robustness.png"]


# ----------------------------------------------------------------------------- items 10, 12
def test_train_help_documents_every_flag_with_its_default_and_choices(capsys):
    import argparse

    from lipdeq.cli.app import _Parser, _train_args
    p = _Parser(prog="lipdeq train", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _train_args(p)
    for action in p._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.dest
    for dest in ("condition", "preset", "activation", "solver"):
        assert next(a for a in p._actions if a.dest == dest).choices, dest
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.95)" in text and "(default: mu_inf)" in text and "pf" in text


def test_evaluate_certify_both_is_documented(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{lipschitz,interval,both}" in text and "or both" in text


def test_version_and_a_plain_text_description(capsys):
    from lipdeq import __version__
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"lipdeq {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "``" not in capsys.readouterr().out  # no raw RST markup


def test_train_prints_the_run_directory_first_and_the_mean_epoch_time(tmp_path, capsys):
    out = str(tmp_path / "r")
    code, stdout, err = _run(capsys, [*TRAIN[:-1], "--epochs", "2", "--out", out])
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0] == f"run directory: {out}"
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    mean = sum(r["epoch_s"] for r in rows) / 2
    assert lines[-1].endswith(f"{mean:.2f} s/epoch (mean of 2 epochs)")
    assert "requires_grad" not in err  # the UserWarning of converting a grad tensor


def test_training_emits_no_user_warning(tmp_path):
    """In a fresh process (torch warns once per process) with UserWarnings as errors."""
    import subprocess
    import sys
    code = ("from lipdeq.training.loop import TrainConfig, train\n"
            "train(TrainConfig(dataset='mnist-5k', holdout=4700, hidden=8, epochs=1, lip_reg=0.01),"
            f" {str(tmp_path / 'r')!r}, progress=True)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "requires_grad" not in proc.stderr
