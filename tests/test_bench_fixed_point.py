"""``python -m experiments.bench_fixed_point --quick``: files, JSON schema and the measured facts
the benchmark reports (the average iteration converges on every problem, Picard blows up on
the strongly negative diagonal)."""
from __future__ import annotations

import json
import math

import pytest

from experiments import bench_fixed_point as bench


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_fp")
    rc = bench.main(["--quick", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    return out, json.loads((out / "bench_fixed_point.json").read_text())


def test_files_exist(quick):
    out, _ = quick
    for ext in ("json", "md", "png"):
        f = out / f"bench_fixed_point.{ext}"
        assert f.is_file() and f.stat().st_size > 0
    assert (out / "bench_fixed_point.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "bench_fixed_point.md").read_text()
    assert "| device | n | case |" in md and "Picard" in md


def test_json_schema(quick):
    _, data = quick
    assert data["benchmark"] == "bench_fixed_point" and data["schema_version"] == 1
    cfg = data["config"]
    assert cfg["quick"] is True and cfg["devices"] == ["cpu"] and cfg["tol"] == 1e-6
    assert {"cpu_model", "logical_cores", "versions"} <= set(data["machine"])
    rows = data["rows"]
    assert len(rows) == len(cfg["sizes"]) * len(bench.CASES) * len(bench.SOLVERS)
    for r in rows:
        assert set(bench.ROW_KEYS) <= set(r), set(bench.ROW_KEYS) - set(r)
        assert r["solver"] in bench.SOLVERS and r["case"] in bench.CASES
        assert 1 <= r["fwd_iterations"] <= cfg["max_iter"]
        assert r["fwd_time_s"] > 0 and isinstance(r["fwd_converged"], bool)
        assert len(r["fwd_trace"]) == r["fwd_iterations"]
        if r["fwd_converged"]:
            assert r["fwd_bound"] <= cfg["tol"] * 1e6  # finite, met the (relative) rule
            assert r["bwd_iterations"] is not None and r["bwd_time_s"] > 0
            assert len(r["bwd_trace"]) == r["bwd_iterations"]
        else:
            assert r["status"].startswith("forward not converged")
        # the case's matrix is what it claims to be
        target = 0.9 if r["case"] == "negdiag" else float(r["case"][3:])
        assert r["mu_inf"] == pytest.approx(target, abs=1e-9)
        assert r["rate_bound"] == pytest.approx(
            1 - r["alpha_star"] * (1 - max(r["mu_inf"], 0)))
    claim = data["claim"]
    assert claim["total"] == len(cfg["sizes"]) * len(bench.CASES)
    assert isinstance(claim["holds_everywhere"], bool) and "Picard" in claim["text"]


def test_measured_facts(quick):
    _, data = quick
    rows = data["rows"]
    for r in rows:
        if r["solver"] == "average":  # docs/math.md §4.2: guaranteed to converge
            assert r["fwd_converged"] and r["bwd_converged"], r["case"]
    neg = next(r for r in rows if r["case"] == "negdiag" and r["solver"] == "picard")
    assert not neg["fwd_converged"]
    assert neg["norm_inf"] > 50 and neg["alpha_star"] < 0.025


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--device", "tpu", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    assert bench.main(["--quick", "--sizes", "1", "--out", str(tmp_path / "y")]) == 2
    assert "sizes" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    with pytest.raises(ValueError, match="case"):
        bench.make_matrix("bogus", 4)


def test_matrices():
    for case in bench.CASES:
        A = bench.make_matrix(case, 30)
        info = bench.matrix_info(A)
        assert info["mu_inf"] <= (0.9 if case == "negdiag" else float(case[3:])) + 1e-12
        assert info["norm_inf"] > 1  # outside El Ghaoui's ‖A‖∞ < 1
        assert not math.isnan(info["rate_bound"])
        off = A - A.diag().diag()
        assert bool((off > 0).any()) and bool((off < 0).any())  # mixed signs
