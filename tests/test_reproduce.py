"""`lipdeq bench all --quick` and `lipdeq reproduce --quick` produce their files."""
import json
import os

import pytest
import torch

from lipdeq.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")


def test_reproduce_quick_writes_report_and_schema(tmp_path):
    out = tmp_path / "rep"
    doc = tmp_path / "EXPERIMENTS.md"
    assert main(["reproduce", "--quick", "--out", str(out), "--doc", str(doc)]) == 0
    payload = json.loads((out / "reproduce.json").read_text())
    for key in ("config", "machine", "function", "mnist", "fixed_point", "elapsed_s"):
        assert key in payload, key
    names = {r["model_name"] for r in payload["mnist"]}
    assert {"NEMON projected (mu_inf)", "NEMON parameterized (nemon)", "monDEQ (monotone)",
            "LBEN (lben)", "unconstrained (none)"} <= names
    for r in payload["mnist"]:
        assert 0.0 <= r["accuracy"] <= 1.0
        # a certificate never certifies more than the attack leaves standing
        assert r["certified_interval@0.1"] <= r["pgd_accuracy@0.1"] <= r["accuracy"] + 1e-12
    for r in payload["function"]:
        assert r["mse"] > 0
    solvers = {r["solver"] for r in payload["fixed_point"]}
    assert solvers == {"average", "picard", "anderson"}
    text = doc.read_text()
    assert "Claim (i)" in text and "Claim (ii)" in text and "Claim (iii-b)" in text
    for png in ("function.png", "mnist.png"):
        data = (tmp_path / "figures" / png).read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) < 300_000


def test_bench_all_quick_writes_every_benchmark(tmp_path):
    assert main(["bench", "all", "--quick", "--out", str(tmp_path)]) == 0
    for name in ("bench_projection", "bench_fixed_point", "bench_training"):
        folder = tmp_path / name
        payload = json.loads((folder / f"{name}.json").read_text())
        assert "machine" in payload, name
        assert (folder / f"{name}.md").read_text().count("|") > 4
        assert (folder / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_rejects_unknown_benchmark(capsys):
    assert main(["bench", "nonsense"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lipdeq: error:")
    assert not os.path.exists("results/bench_nonsense")


# ----------------------------------------------------------------------------- item 3
def test_reproduce_refuses_a_bad_data_dir_before_any_work(tmp_path, capsys, monkeypatch):
    import experiments.reproduce as rep
    monkeypatch.setattr(rep, "_function", lambda *a: pytest.fail("work started"))
    out, doc = tmp_path / "rep", tmp_path / "EXPERIMENTS.md"
    code = main(["reproduce", "--quick", "--out", str(out), "--doc", str(doc),
                 "--data-dir", str(tmp_path / "nonexistent")])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and "does not exist" in err[0]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("extra", [[], ["--report-only"]])
def test_reproduce_never_overwrites_a_report_without_force(tmp_path, capsys, monkeypatch, extra):
    import experiments.reproduce as rep
    monkeypatch.setattr(rep, "_function", lambda *a: pytest.fail("work started"))
    doc = tmp_path / "EXPERIMENTS.md"
    doc.write_text("the tracked report\n")
    code = main(["reproduce", "--quick", "--out", str(tmp_path / "rep"), "--doc", str(doc),
                 *extra])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and "--force" in err[0]
    assert doc.read_text() == "the tracked report\n"
    assert sorted(os.listdir(tmp_path)) == ["EXPERIMENTS.md"]


def test_a_failed_model_fails_the_run_and_writes_no_report(tmp_path, capsys, monkeypatch):
    import experiments.reproduce as rep
    from experiments import search_space
    monkeypatch.setattr(search_space, "run", lambda *a, **k: {})

    def train_and_measure(run_dir, **kw):
        return {"failed": "RuntimeError: boom", "run_dir": run_dir, "seed": kw.get("seed")}
    monkeypatch.setattr(rep, "train_and_measure", train_and_measure)
    doc = tmp_path / "EXPERIMENTS.md"
    code = main(["reproduce", "--quick", "--out", str(tmp_path / "rep"), "--doc", str(doc)])
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(err) == 1
    assert "model(s) failed, report not written" in err[0] and "boom" in err[0]
    assert not doc.exists() and not (tmp_path / "figures").exists()
    assert json.loads((tmp_path / "rep" / "reproduce.json").read_text())["mnist"]
