"""Quick mode of experiments/robustness.py: schema and files (accuracies are not asserted)."""
from __future__ import annotations

import json

import pytest

from experiments import robustness as rx
from lipdeq.training.loop import PRESETS, TrainConfig

MODELS = {"lip0", "lip_small", "lip_large", "interval_base", "interval_tuned"}
ROW_KEYS = {"model_name", "label", "seed", "accuracy", "lipschitz_bound_inf", "epoch_s",
            "train_s", "wall_s", "run_dir", "lip_reg", "robust", "eps", "epochs", "hidden"}
EPS_KEYS = {f"{m}@{e:g}" for e in (0.05, 0.1)
            for m in ("pgd_accuracy", "certified_lipschitz", "certified_interval")}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("robustness")
    payload = rx.run(quick=True, out=out, verbose=False)
    return out, payload


def test_quick_writes_json_md_png(quick):
    out, payload = quick
    for ext in ("json", "md", "png"):
        f = out / f"robustness.{ext}"
        assert f.is_file() and f.stat().st_size > 0, f
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "robustness.md").read_text()
    assert "| model | clean % |" in md and "PGD@0.1 %" in md and "cert-IBP@0.1 %" in md
    assert "NEMON interval-trained (authors)" in md and "Target" in md
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    for name in MODELS:
        assert (out / "runs" / f"{name}_seed0" / "last.pt").is_file()
    assert payload["runtime_s"] < 120  # generous: the machine may be shared


def test_quick_json_schema(quick):
    out, _ = quick
    data = json.loads((out / "robustness.json").read_text())
    assert data["experiment"] == "robustness" and data["quick"] is True
    for key in ("config", "models", "rows", "summary", "anchors", "target", "target_definition",
                "tuning_log", "runtime_s", "cpu_s", "machine"):
        assert key in data, key
    assert data["config"]["eps"] == [0.05, 0.1] and data["config"]["seeds"] == 1
    assert set(data["models"]) == MODELS
    assert len(data["rows"]) == len(MODELS)
    for row in data["rows"]:
        assert ROW_KEYS | EPS_KEYS <= set(row), ROW_KEYS | EPS_KEYS - set(row)
        for k in EPS_KEYS | {"accuracy"}:
            assert 0.0 <= row[k] <= 1.0
        # certificates are sound: certified ≤ PGD accuracy ≤ ... (same subset of digits)
        for e in ("0.05", "0.1"):
            assert row[f"certified_interval@{e}"] <= row[f"pgd_accuracy@{e}"]
            assert row[f"certified_lipschitz@{e}"] <= row[f"pgd_accuracy@{e}"]
        assert row["lipschitz_bound_inf"] > 0 and row["hidden"] == 32 and row["epochs"] == 2
    by = {r["model_name"]: r for r in data["rows"]}
    assert by["lip0"]["lip_reg"] == 0 and by["lip_large"]["lip_reg"] > by["lip_small"]["lip_reg"] > 0
    assert by["interval_tuned"]["robust"] == "interval" and by["lip0"]["robust"] is None
    assert {s["model_name"] for s in data["summary"]} == MODELS
    t = data["target"]
    assert t["model_name"] in ("interval_base", "interval_tuned") and isinstance(t["met"], bool)
    for key in ("accuracy", "pgd_accuracy@0.1", "certified_interval@0.1"):
        assert set(t[key]) == {"value", "target", "met", "gap"}
    a = data["anchors"]["nemon_interval"]
    assert a["accuracy"] == 0.905 and a["certified_interval@0.1"] == 0.663
    log = data["tuning_log"]
    assert len(log) >= 10 and all({"cfg", "acc", "pgd10", "cert10"} <= set(e) for e in log)


def test_presets_are_valid_train_configs():
    for name in ("accurate", "robust"):
        TrainConfig(**PRESETS[name]).validate()
    assert PRESETS["robust"]["robust"] == "interval"
    assert PRESETS["robust"]["epochs"] <= 20 and PRESETS["accurate"]["epochs"] <= 20
    specs = rx.model_specs()
    assert {k: v for k, v in specs["interval_tuned"].items() if k != "label"} == PRESETS["robust"]
    # the tuning log holds the chosen robust preset (its measurement is what chose it)
    assert any(all(e["cfg"].get(k) == v for k, v in PRESETS["robust"].items()
                   if k not in ("eps_ramp",)) for e in rx.TUNING_LOG)


def test_target_status():
    ok = rx.target_status({"accuracy": 0.91, "pgd_accuracy@0.1": 0.7,
                           "certified_interval@0.1": 0.67})
    assert ok["met"] and ok["accuracy"]["gap"] == pytest.approx(0.005)
    bad = rx.target_status({"accuracy": 0.91, "pgd_accuracy@0.1": 0.7,
                            "certified_interval@0.1": 0.663})
    assert not bad["met"] and not bad["certified_interval@0.1"]["met"]


def test_cli_bad_input_one_line_exit_2(tmp_path, capsys):
    for argv in (["--seeds", "0"], ["--epochs", "0"], ["--models", "nope"],
                 ["--attack-limit", "-3"]):
        out = tmp_path / "o"
        assert rx.main([*argv, "--quick", "--out", str(out)]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "error" in err
        assert not out.exists()
