"""AutoAttack through ART (lipdeq.certify.autoattack), the per-example minimum over attacks and the
``evaluate --attack all`` soundness check (section 1).

Tiny models (8×8 inputs, 8 hidden units, 3 classes) and few iterations keep ART fast; the
oracles are independent of ART: the float64 box, lipdeq's own forward pass, the interval
certificate, and inputs of other classes that provably lie in a large ε-box.
"""
import builtins
import json
import math
import os

import pytest
import torch

pytest.importorskip("art")  # installed by the [test] extra (setup.cfg)

from lipdeq import ImplicitNetwork  # noqa: E402
from lipdeq.certify import robustness as R
from lipdeq.certify.autoattack import (STANDARD_ATTACKS, AttackLibraryMissing, autoattack,  # noqa: E402
                               require_art)
from lipdeq.cli import main  # noqa: E402
from lipdeq.deq.conv import ImplicitConvNetwork  # noqa: E402
from lipdeq.cli.robustness import per_example_minimum, soundness_violations  # noqa: E402
from helpers import fit_tiny_classifier  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
DT = torch.float64
FAST = dict(apgd_steps=10, square_queries=30, n_target_classes=2)


@pytest.fixture(params=["art", "torch"])
def backend(request):
    """Both AutoAttack backends: ART's attacks and lipdeq's own torch APGD/Square."""
    return request.param


def prototypes_data(N, seed, p=64, q=3, noise=0.12):
    protos = torch.rand(q, p, generator=torch.Generator().manual_seed(99), dtype=DT)
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(N) % q
    return (protos[labels] + noise * torch.randn(N, p, generator=g, dtype=DT)).clamp(0, 1), labels


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = ImplicitNetwork(64, 8, 3, activation="relu", gamma=0.8, tol=1e-10, max_iter=5000).double()
    return fit_tiny_classifier(m, prototypes_data(120, 0), prototypes_data(12, 1))


def in_box(adv, u, eps):
    d = (adv.double() - u.double()).abs()
    return bool((d <= eps).all()) and bool((adv >= 0).all()) and bool((adv <= 1).all())


def test_result_lies_in_the_box_and_robust_is_lipdeqs_own_verdict(tiny, backend):
    m, u, labels = tiny
    m.train()
    labels = labels.clone()
    labels[0] = (labels[0] + 1) % 3          # one example misclassified before any attack
    r = autoattack(m, u, labels, 0.15, backend=backend, **FAST)
    assert r.attacks == STANDARD_ATTACKS == ("apgd-ce", "apgd-t", "square")
    assert r.adversarial.shape == u.shape and r.adversarial.dtype == u.dtype
    assert in_box(r.adversarial, u, 0.15)
    with torch.no_grad():
        again = m(r.adversarial).argmax(1) == labels
        clean = m(u).argmax(1) == labels
    assert torch.equal(again, r.robust) and torch.equal(clean, r.clean_correct)
    assert not bool((r.robust & ~r.clean_correct).any())
    assert r.broken_by[0] == "clean" and not bool(r.robust[0])
    for i, who in enumerate(r.broken_by):
        assert (who is None) == bool(r.robust[i])
        assert who in (None, "clean", *r.attacks)
    assert r.robust_accuracy == float(r.robust.double().mean())
    # eval inside, restored; only input gradients were taken
    assert m.training and all(p.requires_grad and p.grad is None for p in m.parameters())
    m.eval()
    assert "FAB" in r.settings["not_run"]["fab-t"] or "fab" in str(r.settings["not_run"]).lower()


def test_breaks_every_example_when_an_adversarial_provably_exists(tiny, backend):
    m, u, labels = tiny
    # ε = 1: the box is all of [0, 1]^p, which holds inputs the model puts in every other class
    with torch.no_grad():
        pred = m(u).argmax(1)
    assert len(set(pred.tolist())) == 3
    r = autoattack(m, u, labels, 1.0, backend=backend, **FAST)
    assert not bool(r.robust.any())
    assert in_box(r.adversarial, u, 1.0)


def test_never_breaks_a_certified_example(tiny, backend):
    m, u, labels = tiny
    certified_somewhere = broken_somewhere = False
    for eps in (0.05, 0.15, 0.3):
        r = autoattack(m, u, labels, eps, backend=backend, **FAST)
        cert = R.certified_interval(m, u, labels, eps) | R.certified_lipschitz(m, u, labels, eps)
        assert soundness_violations(cert, r.robust) == 0
        assert not bool((cert & ~r.robust).any())
        certified_somewhere |= bool(cert.any())
        broken_somewhere |= bool((r.clean_correct & ~r.robust).any())
    assert certified_somewhere and broken_somewhere     # not vacuous


def test_each_attack_alone_and_per_sample_eps(tiny, backend):
    m, u, labels = tiny
    for name in ("apgd-ce", "apgd-dlr", "apgd-t", "square"):
        r = autoattack(m, u, labels, 0.3, attacks=[name], backend=backend, **FAST)
        assert r.attacks == (name,) and in_box(r.adversarial, u, 0.3)
        assert not bool((r.robust & ~r.clean_correct).any())
    eps = torch.tensor([0.0, 0.3] * 6, dtype=DT)
    r = autoattack(m, u, labels, eps, backend=backend, **FAST)
    assert in_box(r.adversarial, u, eps.view(-1, 1))
    assert torch.equal(r.adversarial[::2], u[::2])            # ε = 0: the input itself
    assert torch.equal(r.robust[::2], r.clean_correct[::2])


def test_seeded_runs_repeat(tiny, backend):
    m, u, labels = tiny
    a = autoattack(m, u, labels, 0.15, seed=3, backend=backend, **FAST)
    b = autoattack(m, u, labels, 0.15, seed=3, backend=backend, **FAST)
    assert torch.equal(a.adversarial, b.adversarial) and torch.equal(a.robust, b.robust)


def test_conv_model(backend):
    torch.manual_seed(0)
    m = ImplicitConvNetwork(in_shape=(1, 8, 8), channels=2, kernel_size=3, out_features=3,
                            input_kernel_size=3, pool=2, tol=1e-6)
    u, labels = prototypes_data(4, 2)
    u = u.float()
    r = autoattack(m, u, labels, 0.2, backend=backend, **FAST)
    assert r.settings["image_shape"] == [1, 8, 8]
    assert in_box(r.adversarial, u, 0.2) and r.adversarial.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(m(r.adversarial).argmax(1) == labels, r.robust)


@pytest.mark.parametrize("call,match", [
    (lambda m, u, t: autoattack(m, u.clone().fill_(math.nan), t, 0.1), "NaN"),
    (lambda m, u, t: autoattack(m, u, t, -0.1), "eps"),
    (lambda m, u, t: autoattack(m, u, t + 3, 0.1), "labels"),
    (lambda m, u, t: autoattack(m, u, t[:-1], 0.1), "labels"),
    (lambda m, u, t: autoattack(m, u, t, 0.1, attacks=["fab"]), "attacks"),
    (lambda m, u, t: autoattack(m, u, t, 0.1, attacks=[]), "attacks"),
    (lambda m, u, t: autoattack(m, u, t, 0.1, batch_size=0), "batch_size"),
    (lambda m, u, t: autoattack(m, u, t, 0.1, image_shape=(1, 4, 4)), "image_shape"),
    (lambda m, u, t: autoattack(m, u.view(12, 1, 64), t, 0.1), "flattened"),
    (lambda m, u, t: autoattack(m, u[:, :16].contiguous(), t, 0.1, attacks=["square"],
                                image_shape=(1, 4, 4)), "square"),
])
def test_bad_input_raises_value_error(tiny, call, match):
    m, u, labels = tiny
    if match == "square":
        m = ImplicitNetwork(16, 4, 3).double()
    with pytest.raises(ValueError, match=match):
        call(m, u, labels)


def test_dlr_needs_three_classes():
    m = ImplicitNetwork(64, 4, 2).double()
    u, labels = prototypes_data(4, 0, q=2)
    with pytest.raises(ValueError, match="3 classes"):
        autoattack(m, u, labels, 0.1)


def test_missing_art_is_a_clear_import_error(monkeypatch):
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "art" or name.startswith("art."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[attacks\]"') as info:
        require_art()
    assert isinstance(info.value, AttackLibraryMissing)
    m = ImplicitNetwork(64, 4, 3).double()
    u, labels = prototypes_data(3, 0)
    with pytest.raises(AttackLibraryMissing):
        autoattack(m, u, labels, 0.1)


def test_import_lipdeq_does_not_import_art():
    import subprocess
    import sys
    code = ("import sys, lipdeq, lipdeq.robustness, lipdeq.certify.autoattack, lipdeq.cli; "
            "print(any(k == 'art' or k.startswith('art.') for k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- combining attacks
def test_robust_accuracy_is_the_per_example_minimum():
    T, F_ = True, False
    outcomes = {"pgd-ce": torch.tensor([T, T, F_, T, F_]),
                "pgd-margin": torch.tensor([T, F_, T, T, F_]),
                "autoattack": torch.tensor([T, T, T, F_, F_])}
    robust = per_example_minimum(outcomes)
    assert robust.tolist() == [T, F_, F_, F_, F_]
    # every single attack reports 3/5, 3/5, 3/5 robust; together only 1/5
    assert [int(v.sum()) for v in outcomes.values()] == [3, 3, 3] and int(robust.sum()) == 1
    certified = torch.tensor([T, F_, F_, T, F_])
    assert soundness_violations(certified, robust) == 1      # example 3: certified, yet broken
    assert soundness_violations(certified & robust, robust) == 0
    with pytest.raises(ValueError):
        per_example_minimum({})
    with pytest.raises(ValueError):
        per_example_minimum({"a": torch.ones(2, dtype=torch.bool), "b": torch.ones(3, dtype=torch.bool)})


# ----------------------------------------------------------------------------- CLI
TRAIN = ["train", "--dataset", "mnist-5k", "--holdout", "4700", "--hidden", "16", "--epochs", "1",
         "--batch-size", "100", "--gamma", "0.5", "--tol", "1e-3", "--quiet"]
EVAL_ALL = ["--attack", "all", "--certify", "both", "--limit", "4", "--eps", "0.1", "--steps", "3",
            "--restarts", "2", "--square-queries", "20", "--aa-targets", "1"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("aa") / "run")
    assert main([*TRAIN, "--out", out]) == 0
    return os.path.join(out, "last.pt")


def test_evaluate_all_reports_every_attack_and_soundness(ckpt, capsys):
    code = main(["evaluate", "--checkpoint", ckpt, *EVAL_ALL])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    res = json.loads(cap.out)
    keys = {"accuracy", "n", "mu_inf", "lipschitz_bound_inf", "attack_accuracy", "pgd_accuracy",
            "autoattack_accuracy", "autoattack_attacks", "autoattack_settings", "robust_accuracy",
            "certified_accuracy_lipschitz", "certified_accuracy_interval", "soundness_violations"}
    assert keys <= set(res)
    assert res["soundness_violations"] == 0 and "soundness_violations: 0" in cap.err
    assert res["autoattack_attacks"] == list(STANDARD_ATTACKS)
    settings = res["autoattack_settings"]
    assert settings["square_queries"] == 20 and settings["n_target_classes"] == 1
    assert res["robust_accuracy"] == res["attack_accuracy"]
    assert res["robust_accuracy"] <= min(res["pgd_accuracy"], res["autoattack_accuracy"])
    assert res["pgd_accuracy"] <= res["accuracy"] and res["autoattack_accuracy"] <= res["accuracy"]
    for k in ("certified_accuracy_lipschitz", "certified_accuracy_interval"):
        assert res[k] <= res["robust_accuracy"]


def test_evaluate_flags_a_violation_as_an_error(ckpt, capsys, monkeypatch):
    # a deliberately unsound "certificate" (certifies everything) must be caught and reported
    monkeypatch.setattr(R, "certified_interval", lambda m, u, t, eps: torch.ones(len(t), dtype=torch.bool))
    code = main(["evaluate", "--checkpoint", ckpt, "--attack", "pgd", "--certify", "interval",
                 "--eps", "0.5", "--limit", "4", "--steps", "3"])
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    assert res["soundness_violations"] > 0 and code == 1
    assert cap.err.startswith("lipdeq: error: soundness_violations:")


@pytest.mark.parametrize("argv,match", [
    (["--attack", "fgsm", "--restarts", "2"], "--restarts"),
    (["--attack", "pgd", "--restarts", "0"], "--restarts"),
    (["--attack", "all", "--loss", "margin"], "--loss"),
    (["--attack", "pgd", "--square-queries", "5"], "--square-queries"),
    (["--attack", "autoattack", "--aa-targets", "0"], "--aa-targets"),
    (["--attack", "pgd", "--aa-backend", "torch"], "--aa-backend"),
])
def test_evaluate_refuses_ignored_attack_options(ckpt, capsys, argv, match):
    code = main(["evaluate", "--checkpoint", ckpt, *argv])
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1


def test_evaluate_without_art_is_one_line_exit_2(ckpt, capsys, monkeypatch):
    import lipdeq.certify.autoattack as aa

    def missing():
        raise AttackLibraryMissing('AutoAttack needs ART; install it with pip install -e ".[attacks]"')

    monkeypatch.setattr(aa, "require_art", missing)
    code = main(["evaluate", "--checkpoint", ckpt, "--attack", "autoattack", "--limit", "2"])
    cap = capsys.readouterr()
    assert code == 2 and cap.out == "" and 'pip install -e ".[attacks]"' in cap.err
    assert len(cap.err.strip().splitlines()) == 1


def test_evaluate_torch_backend_needs_no_art(ckpt, capsys, monkeypatch):
    import lipdeq.certify.autoattack as aa

    def missing():
        raise AttackLibraryMissing("no ART here")

    monkeypatch.setattr(aa, "require_art", missing)
    monkeypatch.setattr(aa, "_import_art", missing)
    code = main(["evaluate", "--checkpoint", ckpt, "--attack", "autoattack", "--aa-backend",
                 "torch", "--limit", "4", "--square-queries", "20", "--aa-targets", "1"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    res = json.loads(cap.out)
    assert res["autoattack_settings"]["backend"] == "torch"
    assert res["autoattack_accuracy"] <= res["accuracy"]


def test_torch_backend_is_at_least_as_strong_as_art(tiny):
    """Same settings, same models: lipdeq's own APGD/Square break at least what ART breaks
    (up to one example of 12 per radius: both are randomised searches)."""
    m, u, labels = tiny
    settings = dict(apgd_steps=30, square_queries=100, n_target_classes=2)
    broken = {"art": 0, "torch": 0}
    for eps in (0.1, 0.15, 0.2):
        counts = {b: int((~autoattack(m, u, labels, eps, backend=b, **settings).robust).sum())
                  for b in broken}
        assert counts["torch"] >= counts["art"] - 1, (eps, counts)
        for b in broken:
            broken[b] += counts[b]
    assert broken["torch"] >= broken["art"] and broken["art"] > 0
