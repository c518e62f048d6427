"""Run directories never mix, lose or half-write (items 1, 2, 4, 6).

Two real processes on one ``--out``; a real file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) for
the disk-full path; stale temp files cleaned on resume.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from lipdeq.cli import main
from lipdeq.errors import RunDirectoryError
from lipdeq.training import rundir
from lipdeq.training.checkpoint import read_checkpoint
from lipdeq.training.loop import TrainConfig, train

TINY = dict(dataset="mnist-5k", holdout=4700, hidden=16, epochs=2, batch_size=100, tol=1e-3,
            max_iter=50)
CLI = ["--dataset", "mnist-5k", "--holdout", "4700", "--hidden", "16", "--batch-size", "100",
       "--tol", "1e-3", "--max-iter", "50", "--quiet"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lines(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def test_second_writer_on_one_out_exits_2_naming_the_holder_pid(tmp_path):
    """Two real `python -m lipdeq train` processes on one --out: the second is refused while the
    first runs; the first's files are its own (config, consecutive metrics rows)."""
    out = str(tmp_path / "run")
    first = subprocess.Popen([sys.executable, "-m", "lipdeq", "train", *CLI, "--holdout", "0",
                              "--epochs", "40", "--seed", "1", "--out", out], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock = os.path.join(out, rundir.LOCK_NAME)
        deadline = time.time() + 300
        while first.poll() is None and time.time() < deadline:
            if os.path.exists(lock) and open(lock).read().strip():
                break
            time.sleep(0.02)
        assert first.poll() is None, first.stderr.read()
        assert open(lock).read().strip() == str(first.pid)
        second = subprocess.run([sys.executable, "-m", "lipdeq", "train", *CLI, "--holdout", "0",
                                 "--epochs", "40", "--seed", "2", "--out", out], cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        assert first.poll() is None  # the refusal happened while the first still ran
        assert second.returncode == 2, second.stderr
        lines = second.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("lipdeq: error: ")
        assert "in use by process" in lines[0] and str(first.pid) in lines[0]
        assert "Traceback" not in second.stderr
        metrics = os.path.join(out, "metrics.jsonl")
        while first.poll() is None and time.time() < deadline and not (
                os.path.exists(metrics) and os.path.getsize(metrics)):
            time.sleep(0.05)  # let the first finish an epoch after the refusal
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    with open(os.path.join(out, "config.json")) as fh:
        assert json.load(fh)["seed"] == 1  # the first run's, never overwritten by the second
    epochs = [r["epoch"] for r in _lines(os.path.join(out, "metrics.jsonl"))]
    assert epochs == list(range(1, len(epochs) + 1))  # no interleaved rows
    with rundir.lock_run_dir(out):  # the kernel released the killed holder's lock
        pass


def test_lock_is_exclusive_within_one_process_and_released_on_exit(tmp_path):
    out = str(tmp_path / "run")
    with rundir.lock_run_dir(out):
        with pytest.raises(RunDirectoryError, match=f"in use by process {os.getpid()}"):
            with rundir.lock_run_dir(out):
                pass
    with rundir.lock_run_dir(out):  # released when the block ended
        pass


def test_default_run_names_differ_within_one_second(monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20240101-000000")
    names = {rundir.default_run_name("mnist-5k", "dense", "mu_inf") for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith(os.path.join("runs", "mnist-5k-dense-mu_inf-20240101-000000-"))
               for n in names)


@pytest.mark.parametrize("stray", ["metrics.jsonl", "config.json", "last.pt"])
def test_fresh_run_refuses_a_directory_holding_any_run_file(tmp_path, stray):
    out = tmp_path / "run"
    out.mkdir()
    (out / stray).write_text('{"epoch": 7}\n')
    with pytest.raises(RunDirectoryError, match=f"already holds a run.*{stray}"):
        train(TrainConfig(**TINY), str(out), progress=False)
    assert sorted(os.listdir(out)) == [stray]
    assert (out / stray).read_text() == '{"epoch": 7}\n'


def test_bad_out_is_one_line_without_errno_text(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code = main(["train", *CLI, "--epochs", "1", "--out", str(blocker / "sub")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1
    assert "cannot create run directory" in err and "[Errno" not in err


def test_any_os_error_reaches_the_cli_without_its_errno_prefix():
    """Found by review: `robustness --out /proc/nope` printed "[Errno 2] No such file …"."""
    from lipdeq.cli.common import _one_line
    assert _one_line(FileNotFoundError(2, "No such file or directory", "/proc/nope")) == \
        "No such file or directory: '/proc/nope'"
    assert _one_line(OSError("no space left writing 'x'")) == "no space left writing 'x'"
    assert _one_line(IsADirectoryError(21, "Is a directory", "a.tmp", None, "d")) == \
        "Is a directory: 'a.tmp' -> 'd'"  # both paths of a rename


class Interrupted(Exception):
    pass


def test_resume_removes_stale_temp_files_of_the_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save = torch.save

    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            raise Interrupted()
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(Interrupted):
        train(TrainConfig(**TINY), str(out), progress=False)
    monkeypatch.undo()
    stale = [".tmp-last.pt-k3j2", ".tmp-x8d1.pt", ".tmp-config.json-aa", "metrics.jsonl.tmp"]
    for name in stale:  # what killed writers leave (lipdeq.io's and the older names)
        (out / name).write_bytes(b"\0" * 1000)
    (out / "notes.txt").write_text("mine")
    train(TrainConfig(**TINY), str(out), resume=True, progress=False)
    assert sorted(os.listdir(out)) == sorted([rundir.LOCK_NAME, "config.json", "last.pt",
                                              "metrics.jsonl", "notes.txt"])
    assert read_checkpoint(str(out / "last.pt"))["epoch"] == 2


DISK_FULL = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill past the limit
    import lipdeq.training.loop as L
    from lipdeq.cli import main
    WHEN = {when!r}
    def limit():  # the lock file's PID fits; config.json (about 1 KiB) or a checkpoint does not
        size = 64 if WHEN == "config" else 4096
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    real_save = L.save_checkpoint
    def save(path, payload):
        if WHEN == "checkpoint" and payload["epoch"] == 2:
            limit()  # epoch 1's checkpoint is on disk; epoch 2's does not fit
        return real_save(path, payload)
    L.save_checkpoint = save
    if WHEN == "config":
        limit()
    sys.exit(main(["train", *{cli!r}, "--epochs", "2", "--out", {out!r}]))
""")


@pytest.mark.parametrize("when, victim", [("checkpoint", "last.pt"), ("config", "config.json")])
def test_disk_full_is_one_line_exit_2_and_keeps_the_previous_checkpoint(tmp_path, when, victim):
    out = str(tmp_path / "run")
    script = DISK_FULL.format(when=when, cli=CLI, out=out)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lipdeq: error: no space left writing ") and victim in lines[0]
    assert "[Errno" not in lines[0] and "Traceback" not in proc.stderr
    left = sorted(n for n in os.listdir(out) if n.startswith(".tmp"))
    assert left == []  # the failed temp file is removed
    if when == "checkpoint":
        assert read_checkpoint(os.path.join(out, "last.pt"))["epoch"] == 1  # intact
        assert [r["epoch"] for r in _lines(os.path.join(out, "metrics.jsonl"))] == [1]
    else:
        assert not os.path.exists(os.path.join(out, "config.json"))


def test_resume_with_a_corrupt_config_json_says_so(tmp_path, capsys):
    """item 7: it said "holds no run (no config.json)"."""
    (tmp_path / "config.json").write_text("{not json")
    assert main(["train", *CLI, "--epochs", "1", "--resume", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "config.json' is corrupt" in err and "no config" not in err


# ----------------------------------------------------------------------------- metrics log, resume keys
def test_read_metrics_drops_only_a_torn_last_line(tmp_path):
    from lipdeq.errors import DataError
    path = str(tmp_path / "metrics.jsonl")
    good = ['{"epoch": 1, "epoch_s": 0.5}', '{"epoch": 2, "epoch_s": 0.4}']
    open(path, "w").write("\n".join(good) + '\n{"epoch": 3, "ep')  # crash mid-append
    assert [r["epoch"] for r in rundir.read_metrics(path)] == [1, 2]
    open(path, "w").write("\n".join(good) + "\n\n")  # blank lines are not rows
    assert len(rundir.read_metrics(path)) == 2
    open(path, "w").write(good[0] + "\n\n" + good[1] + "\n")
    assert len(rundir.read_metrics(path)) == 2
    for lines, match in (([good[0], "not json", good[1]], "line 2 is not JSON"),
                         ([good[0], '{"epoch": 2}'], "epoch_s"),
                         (['{"epoch": "1", "epoch_s": 1}'], "integer 'epoch'"),
                         (["[1, 2]", good[1]], "JSON object")):
        open(path, "w").write("\n".join(lines) + "\n")
        with pytest.raises(DataError, match=match):
            rundir.read_metrics(path)


def test_resume_compares_data_dir_as_a_folder_and_the_preset(tmp_path, monkeypatch):
    """``data_dir`` and ``preset`` are resume keys: another folder (or preset) is refused, the
    same folder spelled another way is not."""
    from types import SimpleNamespace
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"data_dir": "a", "preset": None}))
    model = SimpleNamespace(config=lambda: {})
    ckpt = {"model_config": {}}
    config = SimpleNamespace(**dict({k: None for k in rundir.RESUME_KEYS}, val=0, augment_shift=0))
    for same in ("a", "./a", str(tmp_path / "a")):
        config.data_dir = same
        rundir.check_resume_matches(ckpt, model, config, str(tmp_path))
    config.data_dir = "b"
    with pytest.raises(ValueError, match="data_dir"):
        rundir.check_resume_matches(ckpt, model, config, str(tmp_path))
    config.data_dir, config.preset = "a", "robust"
    with pytest.raises(ValueError, match="preset"):
        rundir.check_resume_matches(ckpt, model, config, str(tmp_path))
