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
    assert (out / "bench_training_conv.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
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


def test_several_seeds_are_averaged_and_paired_with_today(tmp_path):
    payload = bc.run(quick=True, out=tmp_path, configs=["today", "jfb-downsample-b25"],
                     seeds=[0, 1], verbose=False)
    runs = payload["runs"]
    for name, r in runs.items():
        per_seed = [x["summary"]["test_accuracy_final"] for x in r["per_seed"]]
        assert [x["seed"] for x in r["per_seed"]] == [0, 1] == r["summary"]["seeds"]
        assert r["summary"]["test_accuracy_per_seed"] == per_seed
        assert r["summary"]["test_accuracy_final"] == pytest.approx(sum(per_seed) / 2)
        assert r["cpu_s_per_epoch"] == pytest.approx(
            sum(x["cpu_s_per_epoch"] for x in r["per_seed"]) / 2)
    today = runs["today"]["summary"]["test_accuracy_per_seed"]
    fast = runs["jfb-downsample-b25"]["summary"]["test_accuracy_per_seed"]
    d = runs["jfb-downsample-b25"]["accuracy_vs_today"]
    diffs = [f - t for f, t in zip(fast, today)]
    assert d["n"] == 2 and d["mean"] == pytest.approx(sum(diffs) / 2)
    assert d["se"] == pytest.approx(abs(diffs[0] - diffs[1]) / 2)
    assert runs["today"]["accuracy_vs_today"]["mean"] == 0
    assert "per seed" in payload["summary_md"] and "seeds [0, 1]" in payload["summary_md"]


def test_paired_difference_uses_only_common_seeds():
    ref = {"summary": {"seeds": [0, 1, 2], "test_accuracy_per_seed": [0.90, 0.92, 0.94]}}
    run = {"summary": {"seeds": [2, 0], "test_accuracy_per_seed": [0.95, 0.93]}}
    d = bc.paired_difference(run, ref)
    assert d["n"] == 2 and d["mean"] == pytest.approx(0.02) and d["se"] == pytest.approx(0.01)
    one = bc.paired_difference({"summary": {"seeds": [1], "test_accuracy_per_seed": [0.9]}}, ref)
    assert one["n"] == 1 and one["se"] is None and one["mean"] == pytest.approx(-0.02)


@pytest.mark.parametrize("seeds", [[], [0, 0], [-1], [True]])
def test_bad_seeds_refused_before_training(tmp_path, seeds):
    with pytest.raises(ValueError, match="seeds"):
        bc.run(quick=True, out=tmp_path, seeds=seeds, verbose=False)
    assert not any(tmp_path.iterdir())


def test_several_seeds_refused_for_the_dense_bench(tmp_path, capsys):
    assert bt.main(["--quick", "--seed", "0", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench_training: error:") and "--seed" in err


def test_lipdeq_bench_passes_seeds_to_the_conv_benchmark(tmp_path, monkeypatch):
    """Found by review: README's `lipdeq bench training --model conv --seed 0 1 2` was refused
    (`lipdeq bench` had no --seed)."""
    from experiments import bench
    seen = {}
    monkeypatch.setattr(bc, "run", lambda **kw: seen.update(kw) or {"summary_md": ""})
    assert bench.main(["training", "--model", "conv", "--seed", "0", "1", "2", "--quick",
                       "--threads", "1", "--out", str(tmp_path)]) == 0
    assert seen["seeds"] == [0, 1, 2] and seen["threads"] == 1 and seen["quick"] is True
