"""Quick mode of the conv training benchmark: schema, files, CLI (timings not asserted)."""
from __future__ import annotations

import json

import pytest

from experiments import bench_training as bt
from experiments import bench_training_conv as bc


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_training_conv")
    return out, bc.run(quick=True, out=out, verbose=False)


def test_quick_conv_bench_schema(quick):
    out, payload = quick
    data = json.loads((out / "bench_training_conv.json").read_text())
    md = (out / "bench_training_conv.md").read_text()
    assert data["benchmark"] == "training-conv" and data["config"]["quick"] is True
    assert list(data["runs"]) == list(bc.CONFIGS)
    for name, r in data["runs"].items():
        s = r["summary"]
        assert r["state_size"] == 28 // bc.CONFIGS[name]["downsample"]
        assert r["cpu_s_per_epoch"] > 0 and r["raw_conv_s_per_epoch"] > 0
        assert s["fwd_iterations_mean"] >= 1 and 0 <= s["test_accuracy_final"] <= 1
        # the Jacobian-free backward runs no adjoint solve
        assert (s["bwd_iterations_mean"] == 0) == (bc.CONFIGS[name]["backward"] == "jacobian-free")
        assert f"| {name} |" in md
    assert data["runs"]["today"]["cpu_ratio_vs_today"] == 1
    assert set(data["goal"]) >= {"best", "met"} and "goal:" in payload["summary_md"]


def test_conv_bench_bad_input_one_line_exit_2(tmp_path, capsys):
    assert bt.main(["--model", "conv", "--configs", "nope", "--quick", "--out", str(tmp_path)]) == 2
    assert bt.main(["--configs", "today", "--quick", "--out", str(tmp_path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 2 and all(line.startswith("bench_training: error:") for line in err), err
