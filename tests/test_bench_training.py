"""Quick mode of experiments/bench_training.py: schema and files (timings are not asserted)."""
from __future__ import annotations

import json

import pytest

from experiments import bench_training as bt

RUN_KEYS = {"epoch", "epoch_s", "us_per_sample", "samples_per_s", "test_accuracy", "train_loss",
            "fwd_iterations", "bwd_iterations", "projection_s", "projection_share", "mu_inf"}
SUMMARY_KEYS = {"n_train", "epochs", "epoch_s_median", "epoch_s_first", "us_per_sample_median",
                "us_per_sample_best", "samples_per_s_median", "fwd_iterations_mean",
                "bwd_iterations_mean", "test_accuracy_final", "projection_share", "train_s_total"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_training")
    payload = bt.run(quick=True, out=out, profile=True, verbose=False)
    return out, payload


def test_quick_writes_json_md_png(quick):
    out, payload = quick
    for ext in ("json", "md", "png"):
        f = out / f"bench_training.{ext}"
        assert f.is_file() and f.stat().st_size > 0, f
    assert (out / "bench_training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "bench_training.md").read_text()
    assert "| run |" in md and "reference: NEMON" in md and "projection exact" in md
    assert "## Profile of 2 training steps" in md
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert payload["total_runtime_s"] < 120  # generous: the machine may be shared


def test_quick_json_schema(quick):
    out, _ = quick
    data = json.loads((out / "bench_training.json").read_text())
    assert data["benchmark"] == "training"
    m = data["machine"]
    for key in ("cpu_model", "logical_cores", "torch_threads", "python", "versions"):
        assert key in m
    cfg = data["config"]
    assert cfg["quick"] is True and cfg["hidden"] == 32 and cfg["epochs"] == 2
    assert cfg["n_train"] == 200 and cfg["projections"] == ["exact", "qp"] and cfg["threads"] == 1
    assert set(data["runs"]) == {"exact", "qp"}
    for p, r in data["runs"].items():
        assert len(r["rows"]) == 2 and [x["epoch"] for x in r["rows"]] == [1, 2]
        for row in r["rows"]:
            assert RUN_KEYS <= set(row)
            assert row["epoch_s"] > 0 and row["us_per_sample"] == pytest.approx(
                row["epoch_s"] / 200 * 1e6)
            assert 0 <= row["projection_share"] <= 1 and 0 <= row["test_accuracy"] <= 1
            assert row["fwd_iterations"] >= 1 and row["mu_inf"] <= 0.95 + 1e-9
        assert SUMMARY_KEYS <= set(r["summary"])
        assert len(r["load_avg_before"]) == 3 and r["wall_s"] > 0
    # exact and qp project onto the same set: the same trajectory up to the QP's accuracy
    ex, qp = data["runs"]["exact"]["rows"], data["runs"]["qp"]["rows"]
    assert [r["train_loss"] for r in ex] == pytest.approx([r["train_loss"] for r in qp], rel=1e-3)
    ref = data["reference"]
    assert ref["us_per_sample"] == 98.0 and ref["epoch_s"] == 0.49 and ref["test_accuracy"] == 0.92
    t = data["targets"]
    for key in ("us_per_sample", "projection_share_exact", "test_accuracy"):
        assert set(t[key]) == {"value", "target", "met"} and isinstance(t[key]["met"], bool)
    assert data["scaling"] == []
    prof = data["profile"]
    assert prof["steps"] == 2 and prof["samples"] == 200 and prof["wall_s"] > 0
    assert prof["us_per_sample_cpu"] > 0 and len(prof["top"]) == 15
    assert {"function", "ncalls", "tottime_s", "cumtime_s", "share"} <= set(prof["top"][0])
    for p in ("exact", "qp"):
        s = data["runs"][p]["summary"]
        assert s["cpu_per_wall"] > 0 and s["us_per_sample_load_adjusted"] > 0  # 1 thread
        assert data["runs"][p]["cpu_s"] > 0


def test_cli_bad_input_one_line_exit_2(tmp_path, capsys):
    for argv in (["--batch-size", "0"], ["--nproc", "2", "--batch-size", "99"],
                 ["--holdout", "0"], ["--threads", "0"]):
        assert bt.main([*argv, "--quick", "--out", str(tmp_path / "o")]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("bench_training: error:"), err
    with pytest.raises(SystemExit) as e:
        bt.main(["--projection", "nope"])
    assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_quick_nproc_scaling(tmp_path):
    """torchrun with k = 1, 2 CPU processes (slow: three interpreter start-ups per k)."""
    payload = bt.run(quick=True, projections=("exact",), nproc=2, out=tmp_path, verbose=False)
    rows = payload["scaling"]
    assert [r["nproc"] for r in rows] == [1, 2]
    for r in rows:
        assert r["status"] == "ok", r.get("error")
        assert r["samples_per_s"] > 0 and r["threads_per_process"] >= 1
    assert rows[0]["speedup_vs_1"] == 1.0
    data = json.loads((tmp_path / "bench_training.json").read_text())
    assert data["scaling"][1]["nproc"] == 2
    assert "Scaling (torchrun" in (tmp_path / "bench_training.md").read_text()
