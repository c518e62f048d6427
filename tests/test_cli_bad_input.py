"""CLI bad input: every case gives one stderr line, exit code 2, and writes nothing (README
'Failure behaviour')."""
import gzip
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from lipdeq.training.data import MNIST_FILES

from test_cli import (T, T0, TRAIN_ARGS, _run, _snapshot, _write_t10k, digits,  # noqa: F401
                      run_dir)  # shared helpers and fixtures


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
# found by review (session 7): empty paths, outputs that cannot be written or would replace
# the run's lock, flags that would be clamped or have no effect, splits re-carved silently
BAD_INPUT.update({
    "train out empty": lambda e: [*T, "--out", ""],
    "evaluate out empty": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--out", ""],
    "evaluate checkpoint empty": lambda e: ["evaluate", "--checkpoint", ""],
    "robustness out empty": lambda e: ["robustness", e.run, "--out", "", "--limit", "5"],
    "plot out empty": lambda e: ["plot", e.run, "--out", ""],
    "search-space out empty": lambda e: ["search-space", "--quick", "--out", ""],
    "evaluate out onto the run's lock": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--out",
                                                   os.path.join(e.run, ".lock")],
    "evaluate json into a missing folder": lambda e: ["evaluate", "--checkpoint", e.ckpt,
                                                      "--json", os.path.join(e.missing, "r.json")],
    "evaluate holdout with split train": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--split",
                                                    "train", "--holdout", "100"],
    "evaluate aa-targets past the classes": lambda e: [
        "evaluate", "--checkpoint", e.ckpt, "--attack", "autoattack", "--aa-backend", "torch",
        "--aa-targets", "10", "--limit", "2"],
    "gamma with condition none": lambda e: [*T, "--condition", "none", "--gamma", "0.5",
                                            "--out", e.out],
    "eps-ramp longer than the epochs": lambda e: [*T, "--robust", "interval", "--eps-ramp", "5",
                                                  "--out", e.out],
    "resume with another preset": lambda e: ["train", *TRAIN_ARGS, "--preset", "robust",
                                             "--resume", "--out", e.run],
})
if os.path.isdir("/proc"):  # a directory no one can create files in, root included
    BAD_INPUT.update({
        "evaluate out under /proc": lambda e: ["evaluate", "--checkpoint", e.ckpt, "--out",
                                               "/proc/lipdeq-test.json"],
        "robustness out under /proc": lambda e: ["robustness", e.run, "--out",
                                                 "/proc/lipdeq-test", "--limit", "5"],
        "bench out under /proc": lambda e: ["bench", "projection", "--quick", "--out",
                                            "/proc/lipdeq-test"],
        "plot out under /proc": lambda e: ["plot", e.run, "--out", "/proc/lipdeq-test.png"],
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
