"""Exact verification's bookkeeping against the model as used (found by review, session 7): a
forward pass within its solver tolerance of a flip, the CLI's own attacks cross-checked per
example, and `lipdeq robustness` exiting non-zero on a soundness violation."""
import numpy as np
import pytest
import torch

from lipdeq import ImplicitNetwork
from lipdeq.certify import verify as V
from lipdeq.certify.milp import ExactNetwork
from lipdeq.training.data import Split

from test_verify import tiny_model  # noqa: F401 (shared helper)


def test_an_example_the_forward_pass_gets_wrong_is_never_proven_robust():
    """The reviewer's model: at tol 1e-3 the forward pass predicts class 2, the exact network
    class 1 (the label), 0.002 apart. Certificates already refuse such an example; the verifier
    called it robust (lower 1.0 > clean accuracy 0.0) and then reported its own PGD as a bug."""
    torch.manual_seed(43)
    m = ImplicitNetwork(4, 6, 3, gamma=0.9, tol=1e-3, max_iter=300)
    with torch.no_grad():
        m.A.copy_(torch.randn(6, 6) * 0.6)
        m.project_()
        m.B.mul_(3.0)
        m.b.copy_(torch.randn(6) * 0.3)
        m.C.copy_(torch.randn(3, 6))
    u = torch.rand(2000, 4, generator=torch.Generator().manual_seed(43))[1650:1651]
    label = torch.tensor([int(ExactNetwork.from_model(m).logits(u.double().numpy())[0].argmax())])
    with torch.no_grad():
        assert int(m(u).argmax(-1)) != int(label)  # the case: forward and exact disagree
    r = V.exact_metrics(m, Split(u, label), 1e-7, progress=False)
    assert r["verify_counts"]["misclassified"] == 1 and r["exact_robust_accuracy_lower"] == 0.0
    assert r["verify_inconsistencies"] == []


def test_attack_points_of_the_caller_are_judged_per_example(monkeypatch):
    """A verifier that wrongly proved an example robust is caught by any attack point that the
    exact network misclassifies, even when the aggregate accuracies still look consistent."""
    m = tiny_model(5)
    u = torch.rand(12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        labels = m(u).argmax(-1)
    eps = 0.1
    honest = V.verify_exact(m, u, labels, eps)
    broken = np.flatnonzero(np.isin(honest.status, ("attacked", "falsified")))
    assert broken.size >= 2
    lie = broken[0]
    points = u.clone()
    points[lie] = torch.from_numpy(honest.counterexample[lie])

    real = V.verify_exact

    def lying_verifier(*args, **kwargs):
        res = real(*args, **kwargs)
        res.status = res.status.copy()
        res.status[lie] = "verified"
        return res

    monkeypatch.setattr(V, "verify_exact", lying_verifier)
    r = V.exact_metrics(m, Split(u, labels), eps, progress=False, attack_points={"pgd": points})
    assert any("proven robust but broken by pgd" in p and f"[{lie}" in p
               for p in r["verify_inconsistencies"]), r["verify_inconsistencies"]
    clean = V.exact_metrics(m, Split(u, labels), eps, progress=False,
                            attack_points={"pgd": u.clone()})
    assert not any("broken by pgd" in p for p in clean["verify_inconsistencies"])


def test_robustness_command_exits_1_on_a_soundness_violation(tmp_path, monkeypatch, capsys):
    from lipdeq.certify import robustness as rb
    from lipdeq.cli import main
    run = str(tmp_path / "run")
    assert main(["train", "--dataset", "mnist-5k", "--holdout", "4800", "--hidden", "8",
                 "--epochs", "1", "--quiet", "--out", run]) == 0
    monkeypatch.setattr(rb, "certified_interval",  # a certificate that lies: everything
                        lambda model, u, t, eps: torch.ones(len(t), dtype=torch.bool))
    capsys.readouterr()
    assert main(["robustness", run, "--eps", "0.3", "--limit", "30"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lipdeq: error: soundness_violations:"), err
