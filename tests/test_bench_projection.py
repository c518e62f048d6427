"""Quick mode of experiments/bench_projection.py and the shared timing helper (lipdeq.timing)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from experiments import bench_projection as bp
from experiments import timing


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_projection")
    payload = bp.run(None, None, "cpu", out, True, verbose=False)
    return out, payload


def test_quick_writes_json_png_md(quick):
    out, _ = quick
    for ext in ("json", "md", "png"):
        f = out / f"bench_projection.{ext}"
        assert f.is_file() and f.stat().st_size > 0, f
    assert (out / "bench_projection.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "bench_projection.md").read_text()
    assert "| method |" in md and "KKT-polished" in md and "raw" in md
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # atomic writes cleaned up


def test_quick_json_schema(quick):
    out, payload = quick
    data = json.loads((out / "bench_projection.json").read_text())
    m = data["machine"]
    for key in ("cpu_model", "logical_cores", "torch_threads", "gpu", "python", "cvxpy_solvers"):
        assert key in m
    for pkg in ("torch", "numpy", "scipy", "cvxpy", "clarabel"):
        assert m["versions"][pkg]
    assert data["config"]["sizes"] == [16, 64] and data["config"]["quick"] is True
    # one row per (method, size), with the expected methods present
    keys = [(r["method"], r["n"]) for r in data["rows"]]
    assert len(keys) == len(set(keys)) == len(data["methods"]) * 2
    for name in ("exact-numpy-f64", "exact-torch-cpu-f64", "exact-torch-cpu-f32",
                 "sort-torch-cpu-f64", "qp-clarabel-first", "qp-clarabel-cached",
                 "qp-osqp-cached", "qp-scs-cached", "lp-highs-cached", "lp-clarabel-cached"):
        assert name in data["methods"]
    assert not [m for m in data["methods"] if "constw" in m]  # the library path covers it now
    for r in data["rows"]:
        assert r["status"] in ("ok", "skipped", "error")
        if r["status"] == "ok":
            assert r["median_s"] > 0 and r["min_s"] <= r["median_s"] <= r["max_s"]
            assert len(r["samples_s"]) == r["repeats"] >= 1
            if r["kind"] == "qp":  # polished point and the solver's own (raw) point
                assert math.isfinite(r["err_max_abs"]) and math.isfinite(r["err_raw_max_abs"])
                assert r["err_max_abs"] <= r["err_raw_max_abs"] + 1e-9 and r["solver_status"]
            if r["kind"] == "lp":
                assert math.isfinite(r["lp_rel_gap"])
        else:
            assert r.get("reason") or r.get("error")
    assert {s["method"] for s in data["skipped"]} <= set(data["methods"])
    # exact and Clarabel always run at n = 16, 64 (well inside the quick budget)
    for name in ("exact-numpy-f64", "exact-torch-cpu-f64", "sort-torch-cpu-f64",
                 "qp-clarabel-first", "qp-clarabel-cached"):
        assert all(r["status"] == "ok" for r in data["rows"] if r["method"] == name)
    ag = data["agreement"]
    assert ag["clarabel_qp"] is True and ag["qp-clarabel"]["sizes_solved"] == [16, 64]
    assert ag["qp-clarabel"]["max"] <= 1e-6
    assert isinstance(ag["clarabel_qp_raw"], bool) and ag["qp-clarabel"]["raw_max"] is not None
    assert "KKT-polished" in data["config"]["qp_rows"]
    assert ag["exact_variants_feasible"] is True
    for fam in ("lp-highs", "lp-clarabel"):
        if ag.get(fam, {}).get("max") is not None:
            assert ag[fam]["max"] < 1e-6  # ℓ1 optimum attained
    r = data["ratios"]
    assert r["cached_clarabel_qp_over_exact"]["value"] is None  # n = 256 not in quick mode
    assert r["cached_clarabel_qp_over_exact"]["fallback"]["n"] == 64
    assert r["exact_torch_over_sort"]["target"] == "<= 3" and "exact_torch_over_sort_cpu_f32" in r
    assert data["total_runtime_s"] > 0
    assert "(i)" in payload["summary_md"] and "(ii)" in payload["summary_md"]


def test_l1_optimum_formula():
    A = bp.make_matrix(6, seed=3)
    r = bp.row_measures(A)
    assert bp.l1_optimum(A, 0.95) == pytest.approx(float(np.sum(np.maximum(r - 0.95, 0))))
    X = A.copy()
    X[np.diag_indices(6)] -= np.maximum(r - 0.95, 0)  # lowering the diagonal attains it
    assert bp.row_measures(X).max() <= 0.95 + 1e-12
    assert np.abs(X - A).sum() == pytest.approx(bp.l1_optimum(A, 0.95))


def test_cli_arguments_and_module_size():
    import argparse
    from pathlib import Path

    p = argparse.ArgumentParser()
    bp.add_arguments(p)  # the command-module interface (add_arguments / run_cli / main)
    a = p.parse_args(["--sizes", "16", "64", "--budget", "3", "--threads", "1", "--quick"])
    assert (a.sizes, a.budget, a.threads, a.quick, a.device) == ([16, 64], 3.0, 1, True, "auto")
    assert callable(bp.run_cli)
    assert len(Path(bp.__file__).read_text().splitlines()) <= 400  # project rule: modules ≤ ~400


def test_cli_bad_input_one_line_exit_2(tmp_path, capsys):
    assert bp.main(["--sizes", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sizes" in err[0]
    with pytest.raises(SystemExit) as e:
        bp.main(["--budget", "abc"])
    assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_time_call_stats_and_budget():
    calls = []
    s = timing.time_call(lambda: calls.append(1), warmup=2, repeats=4, min_time=1e-3)
    assert s["repeats"] == 4 and s["number"] >= 1 and s["warmup"] == 2
    assert len(calls) >= 2 + 4 * s["number"]
    assert s["min_s"] <= s["q1_s"] <= s["median_s"] <= s["q3_s"] <= s["max_s"]
    assert s["iqr_s"] == pytest.approx(s["q3_s"] - s["q1_s"])
    synced = []
    s = timing.time_call(lambda: sum(range(20000)), repeats=50, max_time=0.0,
                         sync=lambda: synced.append(1), return_result=True)
    assert s["repeats"] == 1 and s["result"] == sum(range(20000)) and len(synced) >= 2
    with pytest.raises(ValueError):
        timing.time_call(lambda: None, repeats=0)


def test_writers(tmp_path):
    md = timing.markdown_table([{"a": 1.23456, "b": None, "c": "x|y"}, {"a": float("nan")}],
                               ["a", "b", "c"], headers={"a": "A"})
    lines = md.strip().splitlines()
    assert lines[0] == "| A | b | c |" and lines[2] == "| 1.23 | — | x\\|y |"
    assert lines[3] == "| — | — | — |"
    paths = timing.write_results(tmp_path / "r", "t", {"x": np.float32(1.5), "y": float("inf"),
                                                       "z": np.arange(2)}, md)
    data = json.loads(paths["json"].read_text())
    assert data["x"] == 1.5 and data["y"] is None and data["z"] == [0, 1]
    assert data["machine"]["logical_cores"] >= 1
    assert paths["md"].read_text() == md
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["t.json", "t.md"]
