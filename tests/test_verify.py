"""Exact verification by MILP (lipdeq.certify.milp, lipdeq.certify.verify).

Oracle: for tiny models (n ≤ 6) every ReLU activation pattern is enumerated; for each pattern the
LP over the box restricted to that pattern's polyhedron (scipy.optimize.linprog, independent of
the MILP code) gives the maximum margin there, and the maximum over patterns is the exact answer.
"""
import itertools
import json
import os

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from lipdeq import ImplicitNetwork
from lipdeq.deq.activations import LEAKY_SLOPE
from lipdeq.certify.milp import (ExactNetwork, MarginOutcome, MarginProblem, VerificationError,
                         VerificationUnsupported)
from lipdeq.certify.verify import (BROKEN, ROBUST, VerifyResult, consistency_problems, save_examples,
                                   threat_box,
                           verify_exact)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed, n=5, p=3, q=3, activation="relu", gamma=0.9, b_scale=3.0, **kw):
    torch.manual_seed(seed)
    m = ImplicitNetwork(p, n, q, activation=activation, gamma=gamma, **kw).double()
    with torch.no_grad():
        if hasattr(m, "A"):
            m.A.copy_(torch.randn(n, n) * 0.6)
            m.project_()
        m.B.mul_(b_scale)
        m.b.copy_(torch.randn(n) * 0.3)
        m.C.copy_(torch.randn(q, n))
    return m


def weights64(m):
    return {k: v.detach().double().numpy() for k, v in m.weights().items()}


def fixed_point64(w, u, slope=0.0, iters=20000):
    """Independent float64 average iteration x ← (1−α)x + αΦ(Ax + Bu + b), α = 1/(1 − min(a_ii, 0))."""
    A, B, b = w["A"], w["B"], w["b"]
    alpha = 1.0 / (1.0 - min(A.diagonal().min(), 0.0))
    x = np.zeros((u.shape[0], A.shape[0]))
    for _ in range(iters):
        z = x @ A.T + u @ B.T + b
        x = (1 - alpha) * x + alpha * np.where(z > 0, z, slope * z)
    return x


def exhaustive_max(w, lower, upper, k, j, slope=0.0):
    """max y_j − y_k over the box by enumerating the activation patterns (one LP each)."""
    A, B, b, C, c = w["A"], w["B"], w["b"], w["C"], w["c"]
    n, p = B.shape
    best = -np.inf
    for pattern in itertools.product([0, 1], repeat=n):
        S = np.array(pattern, bool)
        slopes = np.where(S, 1.0, slope)
        # variables (u, x); x = diag(slopes)·(Ax + Bu + b)
        A_eq = np.hstack([-slopes[:, None] * B, np.eye(n) - slopes[:, None] * A])
        b_eq = slopes * b
        # sign of z: z ≥ 0 on S, z ≤ 0 off S  →  ±(Ax + Bu) ≤ ∓b
        sign = np.where(S, -1.0, 1.0)
        A_ub = sign[:, None] * np.hstack([B, A])
        b_ub = -sign * b
        obj = -np.concatenate([np.zeros(p), C[j] - C[k]])
        res = linprog(obj, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq,
                      bounds=list(zip(lower, upper)) + [(None, None)] * n, method="highs")
        if res.status == 0:
            best = max(best, -res.fun + c[j] - c[k])
    return best


def box(u, eps):
    return np.clip(u - eps, 0, None), np.clip(u + eps, None, 1)


def milp_max(m, u, eps, k, j):
    net = ExactNetwork.from_model(m)
    lo, hi = box(u, eps)
    x_lo, x_hi = net.state_bounds(lo[None], hi[None])
    z_lo, z_hi = net.pre_activation_bounds(x_lo, x_hi, lo[None], hi[None])
    prob = MarginProblem(net, lo, hi, x_lo[0], x_hi[0], z_lo[0], z_hi[0])
    return prob, prob.maximize(k, j, 60.0, mip_rel_gap=1e-9)


CASES = [(seed, act, eps) for seed in range(4) for act in ("relu", "leaky_relu")
         for eps in (0.15, 0.4)]


@pytest.mark.parametrize("seed,act,eps", CASES)
def test_milp_maximum_equals_exhaustive_enumeration(seed, act, eps):
    m = tiny_model(seed, activation=act)
    w = weights64(m)
    slope = LEAKY_SLOPE if act == "leaky_relu" else 0.0
    u = np.random.default_rng(seed).uniform(0, 1, 3)
    lo, hi = box(u, eps)
    binaries = 0
    for j in (1, 2):
        prob, out = milp_max(m, u, eps, 0, j)
        binaries += prob.m
        exact = exhaustive_max(w, lo, hi, 0, j, slope)
        assert out.bound >= exact - 1e-7                     # the dual bound is an upper bound
        assert out.value == pytest.approx(exact, abs=1e-6)    # and the optimum is attained
    if eps == 0.4:
        assert binaries > 0                                   # the big-M rows were exercised


def test_verify_statuses_agree_with_enumeration():
    seen = set()
    for seed in range(6):
        m = tiny_model(seed, n=4, p=2)
        w = weights64(m)
        U = np.random.default_rng(100 + seed).uniform(0, 1, (4, 2))
        with torch.no_grad():
            labels = m(torch.tensor(U)).argmax(1)
        res = verify_exact(m, torch.tensor(U), labels, 0.3, attack_steps=0, time_limit=60)
        for i in range(4):
            lo, hi = box(U[i], 0.3)
            k = int(labels[i])
            worst = max(exhaustive_max(w, lo, hi, k, j) for j in range(3) if j != k)
            st = res.status[i]
            if worst < -1e-6:
                assert st in ROBUST, (seed, i, worst, st)
            elif worst > 1e-6:
                assert st in BROKEN, (seed, i, worst, st)
                assert np.isfinite(res.counterexample[i]).all()
            seen.add(st)
    assert {"verified", "falsified"} <= seen and "undecided" not in seen


def hand_model():
    """x = relu(−x + u) (A = −I, B = I), y = x: x*(u) = u/2, so y_1 − y_0 = (u_1 − u_0)/2."""
    m = ImplicitNetwork(2, 2, 2, gamma=0.9).double()
    with torch.no_grad():
        m.A.copy_(-torch.eye(2, dtype=torch.float64) + 0.0)
        m.B.copy_(torch.eye(2, dtype=torch.float64))
        m.b.zero_()
        m.C.copy_(torch.eye(2, dtype=torch.float64))
        m.c.zero_()
    return m


def test_hand_made_counterexample_is_found_and_rechecked():
    m = hand_model()
    u = torch.tensor([[0.6, 0.5]], dtype=torch.float64)
    res = verify_exact(m, u, torch.tensor([0]), 0.1, attack_steps=0)
    assert res.status[0] == "falsified"
    cex = res.counterexample[0]
    assert np.all(cex >= u.numpy()[0] - 0.1 - 1e-12) and np.all(cex <= u.numpy()[0] + 0.1 + 1e-12)
    assert cex[1] >= cex[0]                 # y = cex/2 flips (the only adversarial region)
    # at ε = 0.04 the worst margin is (0.54 − 0.56)/2 < 0: robust
    res = verify_exact(m, u, torch.tensor([0]), 0.04, attack_steps=0)
    assert res.status[0] in ROBUST


def test_output_weights_below_highs_tolerance_do_not_fake_a_proof():
    """HiGHS ignores matrix entries ≤ 1e-9: the decision row y_j − y_k ≥ t lost its 5e-10 term
    (times |x| up to 5e6) and was reported infeasible, i.e. "verified", while u = 0 flips the
    label. The dropped terms now widen the row, as for the network rows."""
    m = ImplicitNetwork(1, 3, 2).double()
    with torch.no_grad():
        m.A.zero_()
        m.B.copy_(torch.tensor([[-1e7], [2.0], [2.0]]))
        m.b.copy_(torch.tensor([5e6, -1.0, -1.0]))
        m.C.copy_(torch.tensor([[0.0, 0, 0], [5e-10, 1e-2, -3e-2]]))
        m.c.copy_(torch.tensor([1e-4, 0.0]))
    u = torch.tensor([[0.5]], dtype=torch.float64)
    with torch.no_grad():  # the counterexample the search must not miss
        assert m(torch.zeros(1, 1, dtype=torch.float64)).argmax(1).item() == 1
        assert m(u).argmax(1).item() == 0
    res = verify_exact(m, u, torch.tensor([0]), 0.5, attack_steps=0, time_limit=20)
    assert res.status.tolist() == ["falsified"]


def test_threat_box_is_rounded_outward():
    from fractions import Fraction
    U = (np.arange(256, dtype=np.float32) / np.float32(255)).astype(np.float64)
    for eps in (0.1, 0.05, 1 / 255, 1e-20, 0.0):
        lo, hi = threat_box(U, eps)
        ilo, ihi = threat_box(U, eps, outward=False)
        for u, a, b, c, d in zip(U, lo, hi, ilo, ihi):
            exact_lo = max(Fraction(0), Fraction(u) - Fraction(eps))
            exact_hi = min(Fraction(1), Fraction(u) + Fraction(eps))
            assert Fraction(a) <= exact_lo <= Fraction(c) <= Fraction(d) <= exact_hi <= Fraction(b)


def test_false_counterexample_is_reported_as_a_bug(monkeypatch):
    m = hand_model()
    u = torch.tensor([[0.6, 0.5]], dtype=torch.float64)

    def bogus(self, k, j, time_limit, **kw):   # claims a flip at the clean input: not true
        return MarginOutcome(1.0, 1.0, u.numpy()[0].copy(), 0, "bogus", 0.0)
    monkeypatch.setattr(MarginProblem, "maximize", bogus)
    with pytest.raises(VerificationError):
        verify_exact(m, u, torch.tensor([0]), 0.1, attack_steps=0)


def test_forced_time_limit_gives_undecided_not_a_guess():
    m = tiny_model(3, n=30, p=20, q=4, b_scale=2.0)
    U = torch.tensor(np.random.default_rng(0).uniform(0, 1, (1, 20)))
    with torch.no_grad():
        label = m(U).argmax(1)
    res = verify_exact(m, U, label, 0.3, attack_steps=0, time_limit=0.001)
    assert res.status[0] == "undecided"
    assert res.lower < res.upper and np.isnan(res.counterexample[0]).all()
    res = verify_exact(m, U, label, 0.3, attack_steps=0, time_limit=120)
    assert res.status[0] in ("verified", "falsified")       # decided by the MILP itself


@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
def test_big_m_bounds_contain_sampled_fixed_points(act):
    slope = LEAKY_SLOPE if act == "leaky_relu" else 0.0
    for seed in range(3):
        m = tiny_model(seed, n=8, p=4, activation=act)
        w = weights64(m)
        net = ExactNetwork.from_model(m)
        u = np.random.default_rng(seed).uniform(0, 1, 4)
        lo, hi = box(u, 0.3)
        x_lo, x_hi = net.state_bounds(lo[None], hi[None])
        z_lo, z_hi = net.pre_activation_bounds(x_lo, x_hi, lo[None], hi[None])
        rng = np.random.default_rng(seed + 10)
        corners = np.array(list(itertools.product(*zip(lo, hi))))
        S = np.vstack([corners, lo + (hi - lo) * rng.uniform(size=(200, 4))])
        X = fixed_point64(w, S, slope)
        Z = X @ w["A"].T + S @ w["B"].T + w["b"]
        assert (X >= x_lo - 1e-12).all() and (X <= x_hi + 1e-12).all()
        assert (Z >= z_lo - 1e-12).all() and (Z <= z_hi + 1e-12).all()


def test_nemon_uses_the_effective_matrix():
    m = tiny_model(1, n=5, p=3, condition="nemon")
    net = ExactNetwork.from_model(m)
    assert np.array_equal(net.A.toarray(), m.effective_A().detach().double().numpy())
    w = weights64(m)
    u = np.random.default_rng(1).uniform(0, 1, 3)
    lo, hi = box(u, 0.3)
    _, out = milp_max(m, u, 0.3, 0, 1)
    assert out.value == pytest.approx(exhaustive_max(w, lo, hi, 0, 1), abs=1e-6)


def test_conv_operator_probed_exactly():
    from lipdeq.deq.conv import ImplicitConvNetwork
    torch.manual_seed(0)
    m = ImplicitConvNetwork(in_shape=(1, 6, 6), channels=2, kernel_size=3, out_features=3,
                            input_kernel_size=3, pool=3).double()
    net = ExactNetwork.from_model(m)
    op = m.operator()
    assert np.array_equal(net.A.toarray(), op.dense().detach().numpy())
    U = torch.rand(3, 36, dtype=torch.float64)
    with torch.no_grad():
        w = m.input_map(U).numpy()
        y = m(U).numpy()
    assert np.allclose(U.numpy() @ net.B.T.toarray() + net.b, w, atol=1e-12)
    assert np.allclose(net.logits(U.numpy()), y, atol=1e-3)
    res = verify_exact(m, U, torch.tensor(y.argmax(1)), 0.05, time_limit=60)
    assert "undecided" not in res.status


def test_other_activations_are_refused():
    m = tiny_model(0, activation="tanh")
    with pytest.raises(VerificationUnsupported, match="piecewise-linear"):
        verify_exact(m, torch.rand(2, 3, dtype=torch.float64), torch.tensor([0, 1]), 0.1)


def test_save_examples_npz(tmp_path):
    res = VerifyResult(np.array(["certified", "falsified"]), np.array([[np.nan] * 2, [0.1, 0.2]]),
                       1.0, np.zeros(2))
    path = str(tmp_path / "ex.npz")
    save_examples(path, res)
    with np.load(path, allow_pickle=False) as f:
        assert f["index"].tolist() == [0, 1]
        assert f["status"].tolist() == ["certified", "falsified"]
        assert np.isnan(f["counterexample"][0]).all() and f["counterexample"][1].tolist() == [0.1, 0.2]
    assert os.listdir(tmp_path) == ["ex.npz"]


def test_consistency_problems_are_detected():
    res = VerifyResult(np.array(["certified", "verified", "falsified", "undecided"]),
                       np.full((4, 2), np.nan), 0.0, np.zeros(4))
    assert consistency_problems(res, certified=np.array([1, 0, 0, 0], bool),
                                attack_correct={"pgd": np.array([1, 1, 0, 1], bool)},
                                accuracies={"certified_accuracy_interval": 0.25,
                                            "attack_accuracy": 0.75}) == []
    probs = consistency_problems(res, certified=np.array([0, 0, 1, 0], bool),
                                 attack_correct={"pgd": np.array([1, 0, 0, 1], bool)},
                                 accuracies={"certified_accuracy_interval": 0.75,
                                             "attack_accuracy": 0.5})
    text = " | ".join(probs)
    assert len(probs) == 3 and "certified example" in text and "broken by pgd" in text
    assert "(first: [2])" in text and "(first: [1])" in text
    shard = " | ".join(consistency_problems(res, certified=np.array([0, 0, 1, 0], bool),
                                            attack_correct={"pgd": np.array([1, 0, 0, 1], bool)},
                                            start=500))
    assert "(first: [502])" in shard and "(first: [501])" in shard  # split indices of a shard
    assert "certified_accuracy_interval 0.7500 > exact_robust_accuracy_lower" in text
    # a stronger attack may break the undecided example: 0.5 = lower < upper is no contradiction,
    # below the lower bound it is
    assert not [p for p in probs if p.startswith("attack_accuracy")]
    low = consistency_problems(res, accuracies={"attack_accuracy": 0.25})
    assert low == ["attack_accuracy 0.2500 < exact_robust_accuracy_lower 0.5000"]
    # nothing undecided: lower = upper, an attack below it is a contradiction
    decided = VerifyResult(np.array(["certified", "verified", "falsified", "attacked"]),
                           np.full((4, 2), np.nan), 0.0, np.zeros(4))
    probs = consistency_problems(decided, accuracies={"attack_accuracy": 0.25})
    assert probs == ["attack_accuracy 0.2500 < exact_robust_accuracy_lower 0.5000 (= upper, 0 undecided)"]
    assert consistency_problems(decided, accuracies={"attack_accuracy": 0.5}) == []


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from lipdeq.cli import main
    out = str(tmp_path_factory.mktemp("verify") / "run")
    assert main(["train", "--dataset", "mnist-5k", "--holdout", "4800", "--hidden", "12",
                 "--epochs", "1", "--batch-size", "100", "--gamma", "0.5", "--quiet",
                 "--out", out]) == 0
    return out


def test_cli_verify_exact(tiny_run, tmp_path, capsys):
    from lipdeq.cli import main
    ex = str(tmp_path / "ex.npz")
    code = main(["evaluate", "--checkpoint", os.path.join(tiny_run, "last.pt"), "--limit", "12",
                 "--eps", "0.02", "--attack", "pgd", "--certify", "interval", "--verify", "exact",
                 "--save-examples", ex, "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["verify_inconsistencies"] == []
    lo, hi = out["exact_robust_accuracy_lower"], out["exact_robust_accuracy_upper"]
    assert out["certified_accuracy_interval"] <= lo <= hi <= out["attack_accuracy"]
    assert out["undecided"] == 0 and lo == hi and out["verify_seconds"] > 0
    assert sum(out["verify_counts"].values()) == 12
    with np.load(ex) as f:
        assert f["status"].shape == (12,) and f["counterexample"].shape == (12, 784)
        assert f["index"].tolist() == list(range(12))
        broken = np.isin(f["status"], BROKEN)
        assert np.isfinite(f["counterexample"][broken]).all()
        assert np.isnan(f["counterexample"][~broken]).all()



def test_cli_verify_exact_on_a_shard_indexes_from_start(tiny_run, tmp_path, capsys):
    """--start K: the npz's per-example index is the split index K … K+N−1, and the shard
    proves robust exactly the digits that a run over the whole prefix proves robust."""
    from lipdeq.cli import main
    ck = os.path.join(tiny_run, "last.pt")
    whole, shard = str(tmp_path / "whole.npz"), str(tmp_path / "shard.npz")
    args = ["evaluate", "--checkpoint", ck, "--eps", "0.02", "--verify", "exact", "--quiet"]
    assert main(args + ["--limit", "9", "--save-examples", whole]) == 0
    assert main(args + ["--start", "5", "--limit", "4", "--save-examples", shard]) == 0
    capsys.readouterr()
    with np.load(whole) as w, np.load(shard) as s:
        assert s["index"].tolist() == [5, 6, 7, 8]
        # exact verification: the same digits are proven robust (how a broken one was found,
        # attack or MILP, may differ with the attack's random starts)
        assert np.isin(s["status"], ROBUST).tolist() == np.isin(w["status"][5:9], ROBUST).tolist()
        assert "undecided" not in s["status"].tolist() + w["status"].tolist()

@pytest.mark.parametrize("extra,msg", [
    (["--save-examples", "x.npz"], "needs --verify"),
    (["--verify", "exact", "--verify-time-limit", "0"], "verify-time-limit"),
    (["--verify", "exact", "--save-examples", "/nonexistent/dir/x.npz"], "does not exist"),
])
def test_cli_verify_bad_input(tiny_run, capsys, extra, msg):
    from lipdeq.cli import main
    code = main(["evaluate", "--checkpoint", os.path.join(tiny_run, "last.pt"), "--limit", "2",
                 *extra])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_tanh(tmp_path, capsys):
    from lipdeq.training.checkpoint import save_checkpoint
    from lipdeq.cli import main
    m = ImplicitNetwork(784, 4, 10, activation="tanh")
    save_checkpoint(str(tmp_path / "last.pt"),
                    {"format": "lipdeq-checkpoint", "version": 1, "model": m.state_dict(),
                     "model_config": m.config(), "weights": m.weights(), "epoch": 0})
    code = main(["evaluate", "--checkpoint", str(tmp_path / "last.pt"), "--limit", "2",
                 "--verify", "exact", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "piecewise-linear" in err and len(err.strip().splitlines()) == 1
