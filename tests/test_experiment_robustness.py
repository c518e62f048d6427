"""Quick mode of experiments/robustness.py: schema and files (accuracies are not asserted)."""
from __future__ import annotations

import json
import os

import pytest

from experiments import robustness as rx
from lipdeq.training.loop import PRESETS, TrainConfig

MODELS = {"lip0", "lip_small", "lip_large", "interval_base", "interval_tuned"}
ROW_KEYS = {"model_name", "label", "seed", "accuracy", "lipschitz_bound_inf", "epoch_s",
            "train_s", "wall_s", "run_dir", "lip_reg", "robust", "eps", "epochs", "hidden"}
EPS_KEYS = {f"{m}@{e:g}" for e in (0.05, 0.1)
            for m in ("pgd_accuracy", "certified_lipschitz", "certified_interval",
                      "soundness_violations")}
HEAD_KEYS = {f"{m}@0.1" for m in ("autoattack_accuracy", "robust_accuracy", "exact_lower",
                                  "exact_upper", "undecided", "verify_seconds")}


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
    head = md.split("| model | clean % |")[1].split("\n")[0]
    for col in ("AutoAttack@0.1", "best-of-PGD@0.1", "exact (MILP)@0.1", "certified (interval)@0.1",
                "certified (Lipschitz)@0.1", "soundness_violations@0.1", "ℓ∞ bound", "s/epoch"):
        assert col in head, col
    assert head.index("AutoAttack") < head.index("best-of-PGD") < head.index("exact (MILP)") \
        < head.index("certified (interval)") < head.index("soundness_violations")
    assert "NEMON interval-trained (authors)" in md and "Goal (robust preset" in md
    assert "official MNIST test set" in md and "held-out digits of mnist-5k" in md
    assert "PGD@0.05 %" in md and "Consistency" in md
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    for name in MODELS:
        assert (out / "runs" / f"{name}_seed0" / "last.pt").is_file()
    assert payload["runtime_s"] < 120  # generous: the machine may be shared


def test_quick_json_schema(quick):
    out, _ = quick
    data = json.loads((out / "robustness.json").read_text())
    assert data["experiment"] == "robustness" and data["quick"] is True
    for key in ("config", "models", "rows", "summary", "anchors", "anchor_split", "target",
                "target_definition", "tuning_log", "runtime_s", "cpu_s", "machine"):
        assert key in data, key
    assert data["config"]["eps"] == [0.05, 0.1] and data["config"]["seeds"] == 1
    assert set(data["config"]["attacks"]) == set(data["models"])
    assert set(data["models"]) == MODELS
    assert len(data["rows"]) == len(MODELS)
    for row in data["rows"]:
        assert ROW_KEYS | EPS_KEYS | HEAD_KEYS <= set(row), (ROW_KEYS | EPS_KEYS | HEAD_KEYS) - set(row)
        for k in EPS_KEYS | HEAD_KEYS | {"accuracy"}:
            if not k.startswith(("soundness", "undecided", "verify_seconds")):
                assert 0.0 <= row[k] <= 1.0, k
        assert row["val"] == 50 and row["holdout"] == 4800  # val carved from training digits
        # sound certificates and the exact chain (same digits): certified ≤ exact lower ≤
        # every attack; exact upper ≤ every attack when nothing is undecided
        for e in ("0.05", "0.1"):
            assert row[f"soundness_violations@{e}"] == 0
            assert row[f"certified_interval@{e}"] <= row[f"pgd_accuracy@{e}"]
            assert row[f"certified_lipschitz@{e}"] <= row[f"pgd_accuracy@{e}"]
        lo, hi = row["exact_lower@0.1"], row["exact_upper@0.1"]
        assert row["certified_interval@0.1"] <= lo <= hi
        for k in ("autoattack_accuracy@0.1", "pgd_accuracy@0.1"):
            assert lo <= row[k] and (row["undecided@0.1"] > 0 or hi <= row[k])
        assert row["robust_accuracy@0.1"] <= min(row["autoattack_accuracy@0.1"],
                                                 row["pgd_accuracy@0.1"])
        assert row["chain_problems"] == []
        assert row["lipschitz_bound_inf"] > 0 and row["hidden"] == 32 and row["epochs"] == 2
    by = {r["model_name"]: r for r in data["rows"]}
    assert by["lip0"]["lip_reg"] == 0 and by["lip_large"]["lip_reg"] > by["lip_small"]["lip_reg"] > 0
    assert by["interval_tuned"]["robust"] == "interval" and by["lip0"]["robust"] is None
    assert {s["model_name"] for s in data["summary"]} == MODELS
    t = data["target"]
    assert t["model_name"] == "interval_tuned" and isinstance(t["met"], bool)
    for key in ("accuracy", "autoattack_accuracy@0.1", "certified_interval@0.1"):
        assert set(t[key]) == {"value", "target", "met", "gap"}
    a = data["anchors"]["nemon_interval"]
    assert a["accuracy"] == 0.905 and a["certified_interval@0.1"] == 0.663
    log = data["tuning_log"]
    assert log["file"] == "docs/tuning/tuning.json" and "tune_presets" in log["command"]
    assert isinstance(log.get("chosen"), dict)  # read from the file, not pasted into the code

def test_conv_row_is_on_request_and_measures_what_it_can():
    specs = rx.model_specs()
    assert "conv_robust" in specs and "conv_robust" not in MODELS
    conv = {k: v for k, v in specs["conv_robust"].items() if k != "label"}
    assert conv == PRESETS["robust-conv"] and "reduced AutoAttack" in specs["conv_robust"]["label"]
    opts = rx._measure_options("conv_robust", quick=False, restarts=5)
    # AutoAttack (reduced settings) and best-of-PGD at the headline ε; no MILP
    assert opts["full_eps"] == (rx.HEADLINE_EPS,) and opts["verify_eps"] == ()
    assert opts["restarts"] == rx.CONV_RESTARTS
    assert opts["aa_options"] == dict(rx.AA_REDUCED, backend="torch")


def test_table_notes_state_each_models_attack_settings():
    from experiments.robustness_report import attack_notes
    attacks = {n: rx.attack_settings(n, quick=False, restarts=5)
               for n in ("interval_tuned", "lip0", "conv_robust")}
    assert attacks["interval_tuned"] == {"pgd_restarts": 5, "autoattack_backend": "art",
                                         "autoattack": "standard"}
    assert attacks["lip0"]["autoattack"] == rx.AA_REDUCED
    assert attacks["conv_robust"] == {"pgd_restarts": rx.CONV_RESTARTS,
                                      "autoattack_backend": "torch", "autoattack": rx.AA_REDUCED}
    note = attack_notes({"quick": False, "config": {"attacks": attacks}})
    assert "interval_tuned: AutoAttack standard" in note and "backend art; best-of-PGD 5" in note
    assert f"backend torch; best-of-PGD {rx.CONV_RESTARTS} starts" in note


def test_presets_are_valid_train_configs():
    for name in ("accurate", "robust"):
        TrainConfig(**PRESETS[name]).validate()
    assert PRESETS["robust"]["robust"] == "interval"
    assert PRESETS["robust"]["epochs"] <= 20 and PRESETS["accurate"]["epochs"] <= 20
    specs = rx.model_specs()
    assert {k: v for k, v in specs["interval_tuned"].items() if k != "label"} == PRESETS["robust"]
    # the presets are the ones the tuning script chose on the validation split
    assert rx.tuning_reference()["chosen"]["robust"] == PRESETS["robust"]
    assert not hasattr(rx, "TUNING_LOG") or isinstance(rx.TUNING_LOG, str)

def test_target_status():
    ok = rx.target_status({"accuracy": 0.915, "autoattack_accuracy@0.1": 0.74,
                           "certified_interval@0.1": 0.75})
    assert ok["met"] and ok["accuracy"]["gap"] == pytest.approx(0.005)
    bad = rx.target_status({"accuracy": 0.93, "autoattack_accuracy@0.1": 0.8,
                            "certified_interval@0.1": 0.729})
    assert not bad["met"] and not bad["certified_interval@0.1"]["met"]
    assert not rx.target_status({"accuracy": 0.93})["met"]  # missing values never meet it


def test_chain_problems():
    row = {"certified_interval@0.1": 0.7, "certified_lipschitz@0.1": 0.0, "exact_lower@0.1": 0.72,
           "exact_upper@0.1": 0.74, "undecided@0.1": 20, "autoattack_accuracy@0.1": 0.73,
           "pgd_accuracy@0.1": 0.75, "robust_accuracy@0.1": 0.73, "soundness_violations@0.1": 0}
    assert rx.chain_problems(row) == []  # AutoAttack may break undecided examples
    assert rx.chain_problems({**row, "autoattack_accuracy@0.1": 0.71, "robust_accuracy@0.1": 0.71})
    assert rx.chain_problems({**row, "undecided@0.1": 0, "exact_upper@0.1": 0.72,
                              "autoattack_accuracy@0.1": 0.715, "robust_accuracy@0.1": 0.715})
    assert rx.chain_problems({**row, "certified_interval@0.1": 0.73})
    assert rx.chain_problems({**row, "soundness_violations@0.1": 1}) == [
        "soundness_violations@0.1 = 1"]

def test_cli_bad_input_one_line_exit_2(tmp_path, capsys):
    for argv in (["--seeds", "0"], ["--epochs", "0"], ["--models", "nope"],
                 ["--attack-limit", "-3"]):
        out = tmp_path / "o"
        assert rx.main([*argv, "--quick", "--out", str(out)]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "error" in err
        assert not out.exists()


def test_reuse_runs_measures_a_finished_run_of_the_same_configuration_only(tmp_path):
    from experiments.runs import train_and_measure
    cfg = dict(dataset="mnist-5k", holdout=4800, val=50, hidden=8, epochs=1, seed=0)
    run_dir = str(tmp_path / "run")
    first = train_and_measure(run_dir, eps_list=(), **cfg)
    assert first["reused"] is False
    stamp = os.path.getmtime(os.path.join(run_dir, "last.pt"))
    again = train_and_measure(run_dir, eps_list=(), fresh=False, **cfg)
    assert again["reused"] is True and again["accuracy"] == first["accuracy"]
    assert os.path.getmtime(os.path.join(run_dir, "last.pt")) == stamp  # not retrained
    assert again["train_s"] == pytest.approx(first["epoch_s"])  # the stored epochs' time
    with pytest.raises(ValueError, match="--resume: the run was made with"):
        train_and_measure(run_dir, eps_list=(), fresh=False, **{**cfg, "lr": 0.5})


def test_quick_report_states_what_it_ran_on(quick):
    """Found by review: the markdown said "20 of the 4800 held-out digits" while clean accuracy
    used all 4,800, the labels said "10 ep" for 2-epoch runs, and the JSON split said 1,000."""
    out, payload = quick
    md = (out / "robustness.md").read_text()
    holdout = payload["config"]["holdout"]
    assert f"clean accuracy on all {holdout}" in md
    assert payload["config"]["split"].startswith(f"held-out {holdout:,} digits")
    for s in payload["summary"]:
        assert "[ran" in s["label"] or "ep" not in s["label"], s["label"]
