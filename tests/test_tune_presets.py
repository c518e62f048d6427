"""experiments.tune_presets: the selection rule (validation metrics only) and its refusals."""
import pytest

from experiments import tune_presets as T


def _row(cfg, acc, pgd=0.0, cert=0.0):
    return {"config": cfg, "val_accuracy": acc, "val_pgd@0.1": pgd,
            "val_certified_interval@0.1": cert, "train_s": 1.0}


def test_choose_follows_the_stated_rule():
    accurate = [_row({"lr": 1}, 0.90), _row({"lr": 2}, 0.95), _row({"lr": 3}, 0.93)]
    robust = [_row({"k": "best-score-but-inaccurate"}, 0.85, 0.9, 0.9),
              _row({"k": "eligible-best"}, 0.91, 0.78, 0.73),
              _row({"k": "eligible-tie-less-accurate"}, 0.905, 0.80, 0.71),
              _row({"k": "eligible-worse"}, 0.95, 0.70, 0.70)]
    chosen = T.choose(accurate, robust, min_clean=0.90)
    assert chosen["accurate"] == {"lr": 2} and chosen["robust_eligible"] == 3
    # equal score 1.51: the tie goes to the higher validation accuracy
    assert chosen["robust"] == {"k": "eligible-best"}
    # no run clean enough: the rule falls back to all runs rather than choosing nothing
    assert T.choose(accurate, robust[:1], min_clean=0.99)["robust"] == robust[0]["config"]


def test_tuning_needs_a_validation_split(tmp_path, capsys):
    assert T.main(["--val", "0", "--out", str(tmp_path)]) == 2
    assert "--val" in capsys.readouterr().err and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- conv speed
def _speed_row(name, seed, acc, cpu):
    from experiments import tune_conv_speed as S
    return {"name": name, "config": dict(S.GRID[name], seed=seed), "val_accuracy": acc,
            "epoch_cpu_s": cpu, "fwd_iterations": 10.0, "bwd_iterations": 0.0}


def test_conv_speed_choice_is_the_best_mean_within_the_cost_ratio():
    from experiments import tune_conv_speed as S
    rows = [_speed_row("today", 0, 0.99, 40.0), _speed_row("today", 1, 0.99, 40.0),
            # best mean accuracy, but 0.3x today's CPU: excluded
            _speed_row("jfb-ds2-b50-c64", 0, 0.98, 12.0), _speed_row("jfb-ds2-b50-c64", 1, 0.98, 12.0),
            # one lucky seed does not win: the mean does
            _speed_row("jfb-ds2", 0, 0.975, 4.0), _speed_row("jfb-ds2", 1, 0.93, 4.0),
            _speed_row("jfb-ds2-b50", 0, 0.96, 4.5), _speed_row("jfb-ds2-b50", 1, 0.96, 4.5)]
    lines, chosen = S.summarize(rows, max_ratio=0.25)
    assert chosen == "jfb-ds2-b50"
    by = {ln["name"]: ln for ln in lines}
    assert by["jfb-ds2-b50-c64"]["cpu_ratio_vs_today"] == pytest.approx(0.3)
    assert by["jfb-ds2"]["val_accuracy_mean"] == pytest.approx(0.9525)
    assert S.summarize(rows, max_ratio=0.05)[1] is None  # nothing fits: no choice


def test_conv_accuracy_differences_are_paired_by_seed():
    from experiments import tune_conv_speed as S

    def row(name, seed, acc):
        return {"name": name, "config": dict(S.ACCURACY_GRID[name], seed=seed),
                "val_accuracy": acc, "epoch_cpu_s": 4.0}
    rows = [row("fast", 0, 0.96), row("fast", 1, 0.98), row("fast", 2, 0.97),
            # each seed +0.01 over its own reference: the difference is exact, se 0
            row("fast-c40", 0, 0.97), row("fast-c40", 1, 0.99), row("fast-c40", 2, 0.98),
            row("fast-lr5e-3", 0, 0.98), row("fast-lr5e-3", 1, 0.96)]
    by = {ln["name"]: ln for ln in S.paired_differences(rows)}
    assert by["fast-c40"]["diff_mean"] == pytest.approx(0.01)
    assert by["fast-c40"]["diff_se"] == pytest.approx(0.0, abs=1e-12)
    assert by["fast-c40"]["change"] == {"channels": 40}
    assert by["fast-lr5e-3"]["diff_mean"] == pytest.approx(0.0)  # +0.02 and −0.02
    assert by["fast-lr5e-3"]["diff_se"] == pytest.approx(0.02)
    assert by["fast"]["change"] == {}
    assert "fast-c40 | channels=40 |" in S.accuracy_table(list(by.values()))


def test_conv_speed_refuses_unknown_configurations(tmp_path, capsys):
    from experiments import tune_conv_speed as S
    assert S.main(["--only", "bogus", "--out", str(tmp_path)]) == 2
    assert "bogus" in capsys.readouterr().err and not list(tmp_path.iterdir())
    # a speed-grid name is not an accuracy-grid name
    assert S.main(["--grid", "accuracy", "--only", "today", "--out", str(tmp_path)]) == 2
    assert "today" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_cached_row_returns_a_matching_row_and_refuses_another_configuration(tmp_path):
    import json
    from experiments._cli import cached_row
    assert cached_row(str(tmp_path), config={"eps": 0.1}) is None  # nothing cached yet
    (tmp_path / "row.json").write_text(json.dumps({"config": {"eps": 0.1}, "val_accuracy": 0.9}))
    assert cached_row(str(tmp_path), config={"eps": 0.1})["val_accuracy"] == 0.9
    with pytest.raises(ValueError, match="row.json holds another configuration"):
        cached_row(str(tmp_path), config={"eps": 0.15})
    with pytest.raises(ValueError, match="base"):  # a key the row lacks is a mismatch too
        cached_row(str(tmp_path), config={"eps": 0.1}, base={"lr": 1e-2})


@pytest.mark.parametrize("module,argv,word", [
    # found by review: each of these ran (or crashed with a traceback) instead of refusing
    ("tune_conv", ["--quick", "--only", "99"], "--only"),
    ("tune_conv_speed", ["--grid", "accuracy", "--max-ratio", "0.3"], "--max-ratio"),
    ("tune_conv_speed", ["--max-ratio", "nan"], "--max-ratio"),
    ("compare_conditions", ["--quick", "--epochs", "0"], "--epochs"),
    ("compare_conditions", ["--quick", "--epochs", "-1"], "--epochs"),
    # found by the experiments review: NaN accepted, ignored options, device tracebacks
    ("tune_conv", ["--quick", "--min-clean", "nan"], "--min-clean"),
    ("tune_presets", ["--quick", "--min-clean", "2"], "--min-clean"),
    ("bench", ["fixed-point", "--quick", "--model", "conv"], "--model"),
    ("bench", ["autoattack", "--quick", "--device", "foo"], "--device"),
    # found by the session-7 review: accepted here, refused (or ignored) downstream
    ("bench", ["projection", "--quick", "--device", "cuda:1"], "--device"),
    ("bench", ["projection", "--quick", "--seed", "1"], "--seed"),
    ("bench", ["training", "--quick", "--seed", "0", "1"], "--seed"),
    ("bench_training", ["--quick", "--model", "conv", "--nproc", "2"], "--nproc"),
    ("bench_training", ["--quick", "--model", "conv", "--hidden", "5"], "--hidden"),
    ("bench_training", ["--quick", "--model", "conv", "--projection", "qp"], "--projection"),
    ("bench_training", ["--quick", "--model", "conv", "--profile"], "--profile"),
    ("bench_training", ["--quick", "--model", "conv", "--scaling-epochs", "2"], "--scaling-epochs"),
])
def test_experiment_scripts_refuse_bad_arguments_in_one_line(module, argv, word, tmp_path, capsys):
    import importlib
    mod = importlib.import_module(f"experiments.{module}")
    assert mod.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module,argv", [("bench_projection", ["--quick"]),
                                         ("search_space", ["--quick"]),
                                         ("bench_fixed_point", ["--quick"])])
def test_an_unwritable_out_is_refused_before_the_work(module, argv, tmp_path, capsys):
    """Found by review: a traceback (NotADirectoryError, exit 1) after the whole run."""
    import importlib
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    mod = importlib.import_module(f"experiments.{module}")
    assert mod.main([*argv, "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be created" in err[0], err


def test_a_failed_training_row_stops_compare_conditions_in_one_line(tmp_path, capsys,
                                                                    monkeypatch):
    """Found by review: a failed run became a row without 'accuracy' and a KeyError traceback."""
    import experiments.runs as runs
    from experiments import compare_conditions

    def train(*args, **kwargs):
        raise ValueError("training diverged in epoch 1, step 1")
    monkeypatch.setattr(runs, "train", train)
    rc = compare_conditions.main(["--quick", "--no-conv", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "training failed" in err[0] and "diverged" in err[0]
    assert not (tmp_path / "out" / "compare_conditions.json").exists()


def test_a_tuning_run_killed_midway_is_resumed_on_the_next_call(tmp_path, monkeypatch):
    """Found by review: the rerun refused the run directory ('pass --resume'), an option the
    tuning scripts do not have; they now resume it."""
    from experiments._cli import train_or_resume
    from lipdeq.training.loop import TrainConfig, train
    cfg = TrainConfig(dataset="mnist-5k", holdout=4700, hidden=8, epochs=2, tol=1e-3)
    out = str(tmp_path / "run")
    import lipdeq.training.loop as loop
    real = loop.save_checkpoint

    def die_at_epoch_2(path, ckpt):
        if ckpt["epoch"] == 2:
            raise KeyboardInterrupt
        real(path, ckpt)
    monkeypatch.setattr(loop, "save_checkpoint", die_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress=False)
    monkeypatch.setattr(loop, "save_checkpoint", real)
    rows = train_or_resume(cfg, out)
    assert [r["epoch"] for r in rows] == [1, 2]
