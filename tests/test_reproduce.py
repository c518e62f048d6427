"""`lipdeq bench all --quick` and `lipdeq reproduce --quick` produce their files (issue 10)."""
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
