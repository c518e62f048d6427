"""Quick mode of the AutoAttack backend benchmark: schema, files, the evaluation counts that are
the torch backend's reason to exist, one-line errors (timings are not asserted)."""
from __future__ import annotations

import json

import pytest

from experiments import bench_autoattack as ba

pytest.importorskip("art")  # the comparison needs both backends (the [test] extra installs ART)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_autoattack")
    return out, ba.run(quick=True, out=out)


def test_quick_schema_and_fewer_evaluations_than_art(quick):
    out, payload = quick
    data = json.loads((out / "bench_autoattack.json").read_text())
    md = (out / "bench_autoattack.md").read_text()
    assert (out / "bench_autoattack.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # CONVENTIONS §6
    assert data["config"]["quick"] is True and "validation" in data["config"]["split"]
    assert data["config"]["channels"] == ba.QUICK["channels"]  # the width of the model attacked
    rows = {(r["backend"], r["attack"]): r for r in data["rows"]}
    assert set(rows) == {(b, a) for b in ("art", "torch") for a in ("apgd-ce", "square")}
    for (backend, attack), r in rows.items():
        assert set(ba.COLUMNS) <= set(r) and 0 <= r["robust_accuracy"] <= 1
        assert r["cpu_ms_per_step"] > 0 and f"| {backend} | {attack} |" in md
        assert (r["grads_per_step"] == 0) == (attack == "square")   # Square is gradient-free
    for attack in ("apgd-ce", "square"):
        assert rows["torch", attack]["evals_per_step"] < rows["art", attack]["evals_per_step"]
    assert rows["torch", "apgd-ce"]["grads_per_step"] < rows["art", "apgd-ce"]["grads_per_step"]


def test_bad_input_one_line_exit_2(tmp_path, capsys):
    assert ba.main(["--quick", "--n", "0", "--out", str(tmp_path)]) == 2
    assert ba.main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 2 and all("bench_autoattack: error:" in line for line in err), err
