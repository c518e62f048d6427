"""experiments.search_space: helpers, and the --quick run's files and JSON schema."""
import json
import math

import numpy as np
import pytest

from experiments import search_space as ss


def test_wilson_interval():
    lo, hi = ss.wilson(0, 100)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.0370, abs=1e-4)
    lo, hi = ss.wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert ss.wilson(0, 0) == (0.0, 1.0)


def test_row_volume_formulas_reproduce_spec_9_3():
    p_e1, p_n0 = ss.row_volumes(2, 1.0, 0.5)
    assert p_n0 == pytest.approx(0.5, abs=1e-12) and p_e1 == pytest.approx(0.125, abs=1e-12)
    p_e1, p_n0 = ss.row_volumes(3, 1.0, 0.9)
    assert p_n0 == pytest.approx(0.4501, abs=1e-4) and p_e1 == pytest.approx(0.1215, abs=1e-4)
    # Monte Carlo per row, n = 4, r = 1.5
    rng = np.random.default_rng(0)
    A = rng.uniform(-1.5, 1.5, (200000, 4))
    p_e1, p_n0 = ss.row_volumes(4, 1.5, 1.0)
    e1 = np.abs(A).sum(1) < 1
    n0 = A[:, 0] + np.abs(A[:, 1:]).sum(1) < 1
    for p, hit in ((p_e1, e1), (p_n0, n0)):
        assert abs(hit.mean() - p) < 5 * math.sqrt(p * (1 - p) / hit.size)


def test_slice_closed_forms_match_direct_tests():
    rng = np.random.default_rng(1)
    b, c = rng.uniform(-3, 3, (2, 3000))
    for delta in (-0.7, 0.0, 0.4, 0.95):
        closed = ss.slice_closed_forms(delta, b, c)
        A = np.empty((b.size, 2, 2))
        A[:, 0, 0] = A[:, 1, 1] = delta
        A[:, 0, 1], A[:, 1, 0] = b, c
        direct = {k: v < 1 for k, v in ss.measures(A).items()}
        for tag in direct:
            assert np.array_equal(closed[tag], direct[tag]), (delta, tag)
        # the slice regions are nested as in docs/math.md §2.4
        for sub, sup in ss.PROVEN:
            assert not np.any(closed[sub] & ~closed[sup]), (delta, sub, sup)


def test_lben_decide_shortcut_and_sdp():
    assert ss.lben_decide(np.array([[2.0, 0.0], [0.0, 0.0]]))[:2] == (False, "abscissa")
    member, how, t = ss.lben_decide(np.array([[0.0, 4.0], [-1.0, 0.0]]))
    assert member and how == "certified" and t > 0.5


SCHEMA = {"name", "quick", "seed", "gamma", "threshold_L", "config", "reference_distributions",
          "fractions", "containments", "non_inclusions", "distances", "volumes",
          "volume_worked_examples", "slices", "lben", "runtime_s", "cpu_s", "machine"}


def _check_outputs(out, quick=True):
    for name in ("search_space.json", "search_space.md", "search_space.png",
                 "search_space_slices.png"):
        assert (out / name).stat().st_size > 100, name
    data = json.loads((out / "search_space.json").read_text())
    assert SCHEMA <= set(data), SCHEMA - set(data)
    assert data["quick"] is quick and data["gamma"] == 1.0
    ns = {r["n"] for r in data["fractions"]}
    assert ns == {2, 3, 5, 10, 50}
    for r in data["fractions"]:
        assert set(r["fraction"]) == set(ss.TAGS)
        for tag in ss.TAGS:
            if r["fraction"][tag] is not None:
                lo, hi = r["wilson"][tag]
                assert lo <= r["fraction"][tag] <= hi
                assert r["count"][tag] <= (r["samples_L"] if tag == "L" else r["samples"])
    assert len(data["containments"]) == len(ss.PROVEN)
    for c in data["containments"]:
        assert c["violations"] == 0, c
    assert sum(c["n_subset"] for c in data["containments"]) > 0
    assert len(data["non_inclusions"]) == len(ss.NON_INCLUSIONS)
    for w in data["non_inclusions"]:
        assert w["verified"], w
        A = np.array(w["witness"])
        assert A.ndim == 2 and A.shape[0] == A.shape[1]
        assert w["memberships"][w["subset"]] and not any(w["memberships"][t] for t in w["not_in"])
    kinds = {(d["set"], d["kind"]) for d in data["distances"]}
    for tag in ("E1", "N0", "M"):
        assert (tag, "exact") in kinds
    for tag in ("E2", "N", "L"):
        assert (tag, "upper bound") in kinds
    for d in data["distances"]:
        assert d["mean"] >= 0
    for v in data["volumes"]:
        assert (v["z"] is None or abs(v["z"]) < 5) and v["p_value"] > 1e-5, v
    for s in data["slices"].values():
        assert all(m == 0 for m in s["mismatches_closed_vs_direct"].values())
    md = (out / "search_space.md").read_text()
    assert "| inclusion | members | violations |" in md and "E1 ⊂ N0" in md
    return data


def test_quick_run_small_sample_writes_files(tmp_path, capsys):
    assert ss.main(["--quick", "--samples", "30", "--out", str(tmp_path), "--seed", "3"]) == 0
    data = _check_outputs(tmp_path)
    assert data["seed"] == 3 and all(r["samples"] == 30 for r in data["fractions"])
    out = capsys.readouterr().out
    assert "E1 ⊂ N0" in out
    # item 12: every output names the sets (stdout, markdown, PNG legend)
    legend = "E1 = norm_inf (‖A‖∞ < 1); E2 = pf (ρ(|A|) < 1); N0 = mu_inf (μ∞(A) < 1)"
    assert legend in out and legend in (tmp_path / "search_space.md").read_text()
    from experiments.search_space_plots import plot_fractions
    fig = plot_fractions(data["fractions"], sorted({r["n"] for r in data["fractions"]}))
    labels = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert "N: mu_inf_weighted (α(M(A)) < 1)" in labels and "L: lben (LBEN LMI)" in labels


@pytest.mark.slow
def test_quick_run_default(tmp_path):
    import time
    t0 = time.process_time()
    ss.main(["--quick", "--out", str(tmp_path)])
    _check_outputs(tmp_path)
    assert time.process_time() - t0 < 60


def test_bad_arguments(tmp_path, capsys):
    assert ss.main(["--samples", "0", "--out", str(tmp_path)]) == 2
    assert "samples" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        ss.main(["--no-such-flag"])


def test_a_miss_of_l_at_the_subsets_boundary_is_undecided_not_a_violation(tmp_path, monkeypatch):
    """Found by review: L's test (t > 1e-7) is stricter than membership, so a sample inside N by
    1e-9 that the SDP leaves at t ≈ 2e-9 would have counted as a violation of N ⊂ L."""
    B = np.array([[0.5, 0.3], [0.2, 0.5]])
    alpha = float(np.linalg.eigvals(np.abs(B)).real.max())
    edge = B + (1 - 1e-9 - alpha) * np.eye(2)  # α(M(edge)) = 1 − 1e-9: in E2 and N, barely

    def sample(dist, n, sigma, count, rng):  # the edge matrix at n = 2, zeros (inside all) else
        return np.broadcast_to(edge, (count, 2, 2)).copy() if n == 2 else np.zeros((count, n, n))
    real = ss.memberships

    def memberships(A, cap):
        res = real(A, cap)
        if A.shape[-1] == 2:
            res["member"]["L"][:] = False  # what the SDP's t ≈ 2e-9 < 1e-7 decides
        return res
    monkeypatch.setattr(ss, "sample", sample)
    monkeypatch.setattr(ss, "memberships", memberships)
    assert ss.main(["--quick", "--samples", "4", "--out", str(tmp_path), "--seed", "0"]) == 0
    data = json.loads((tmp_path / "search_space.json").read_text())
    by = {f"{c['subset']}⊂{c['superset']}": c for c in data["containments"]}
    assert by["N⊂L"]["violations"] == 0 and by["N⊂L"]["at_boundary"] > 0
    assert by["E2⊂L"]["violations"] == 0
