"""Recompute every worked number of docs/math.md with plain numpy (and cvxpy for the set L).

Run from the repository root:  python docs/check_math_examples.py
It prints each number next to the value the document states and fails (exit 1) on a mismatch.
Independent of lipdeq on purpose: the formulas are written out again here.
"""
from __future__ import annotations

import math
import sys
from itertools import product

import numpy as np

FAILS: list[str] = []


def check(label: str, got, want, tol: float = 5e-4) -> None:
    ok = np.allclose(np.asarray(got, float), np.asarray(want, float), atol=tol, rtol=0)
    print(f"{'ok ' if ok else 'BAD'} {label}: {np.round(np.asarray(got, float), 6).tolist()}"
          f" (doc: {want})")
    if not ok:
        FAILS.append(label)


# ---------------------------------------------------------------- measures (§2.1, §2.2)
def mu_inf(A, eta=None):
    eta = np.ones(len(A)) if eta is None else np.asarray(eta, float)
    S = np.abs(A) * eta[None, :] / eta[:, None]
    return max(A[i, i] + S[i].sum() - S[i, i] for i in range(len(A)))


def mu_1(A):
    return mu_inf(A.T)


def mu_2(A):
    return np.linalg.eigvalsh((A + A.T) / 2).max()


def metzler(A):
    M = np.abs(A)
    np.fill_diagonal(M, np.diag(A))
    return M


def abscissa(A):
    return np.linalg.eigvals(A).real.max()


def in_L(A, gamma=1.0) -> bool:
    """max t s.t. 2γΛ − ΛA − AᵀΛ ⪰ tI, Λ diagonal ≥ 0, tr Λ = n; member iff t > 1e-7."""
    import cvxpy as cp
    n = len(A)
    lam, t = cp.Variable(n, nonneg=True), cp.Variable()
    L = cp.diag(lam)
    S = 2 * gamma * L - L @ A - A.T @ L
    prob = cp.Problem(cp.Maximize(t), [(S + S.T) / 2 >> t * np.eye(n), cp.sum(lam) == n])
    prob.solve(solver="CLARABEL")
    return t.value > 1e-7


A = np.array([[0.5, -2.0], [1.0, -3.0]])
check("§2.1 mu_inf, mu_1, mu_2", [mu_inf(A), mu_1(A), mu_2(A)], [2.5, 1.5, 0.5700])
check("§2.1 norms inf, 1, 2", [np.abs(A).sum(1).max(), np.abs(A).sum(0).max(),
                               np.linalg.norm(A, 2)], [4, 5, 3.7726])
check("§2.1 eigenvalues", sorted(np.linalg.eigvals(A).real), [-2.2808, -0.2192])

X5 = np.array([[-1.0, 5.0], [0.1, -2.0]])
M5 = metzler(X5)
w, V = np.linalg.eig(M5)
v = np.abs(V[:, w.real.argmax()].real); v /= v.sum()
wl, U = np.linalg.eig(M5.T)
xi = np.abs(U[:, wl.real.argmax()].real); xi /= xi.sum()
check("§2.2 X5 mu_inf, alpha(M)", [mu_inf(X5), abscissa(M5)], [4, (-3 + math.sqrt(3)) / 2])
check("§2.2 X5 right Perron v", v, [0.93179, 0.06821])
check("§2.2 X5 left Perron xi", xi, [0.21458, 0.78542])
check("§2.2 mu_{inf,v}(X5) and mu_{1,xi}(X5)",
      [mu_inf(X5, v), mu_inf((np.diag(xi) @ X5 @ np.diag(1 / xi)).T)], [-0.633975] * 2, 1e-6)
# η_t = (tI − M)^{-1} 1 gives μ∞,η_t < t for every t > α (§2.2 proof)
for t in (-0.6, -0.5, 0.0):
    eta_t = np.linalg.solve(t * np.eye(2) - M5, np.ones(2))
    check(f"§2.2 eta_t at t={t}: mu < t", mu_inf(X5, eta_t) < t, True)
# reducible example: inf not attained
R = np.array([[-1.0, 5.0], [0.0, -2.0]])
check("§2.2 reducible: mu at eta=(1,1e-6)", mu_inf(R, [1, 1e-6]), -1 + 5e-6, 1e-9)

# ---------------------------------------------------------------- the sets (§2.3–§2.6)
def members(A) -> list[int]:
    return [int(np.abs(A).sum(1).max() < 1), int(abscissa(np.abs(A)) < 1), int(mu_inf(A) < 1),
            int(abscissa(metzler(A)) < 1), int(mu_2(A) < 1), int(in_L(A))]


TABLE = {"X1": ([[-3, 1], [1, -3]], [0, 0, 1, 1, 1, 1]),
         "X2": ([[0.9, 0], [10.9, -10]], [0, 0, 1, 1, 0, 1]),
         "X3": ([[0.9, 0], [0.9, 0]], [1, 1, 1, 1, 0, 1]),
         "X4": ([[0, 10], [0.01, 0]], [0, 1, 0, 1, 0, 1]),
         "X5": ([[-1, 5], [0.1, -2]], [0, 0, 0, 1, 0, 1]),
         "X6": ([[0, 0], [3, 0]], [0, 1, 0, 1, 0, 1]),
         "X7": ([[0, 2], [-2, 0]], [0, 0, 0, 0, 1, 1]),
         "X8": ([[0, 4], [-1, 0]], [0, 0, 0, 0, 0, 1]),
         "X9": ([[2, 0], [0, 0]], [0, 0, 0, 0, 0, 0])}
for name, (X, row) in TABLE.items():
    check(f"§2.6 {name} (E1 E2 N0 N M L)", members(np.array(X, float)), row, 0)
check("§2.6 X2 mu_inf, mu_2", [mu_inf(np.array(TABLE['X2'][0], float)),
                               mu_2(np.array(TABLE['X2'][0], float))], [0.9, 3.1575])
check("§2.6 X3 mu_2", mu_2(np.array(TABLE['X3'][0], float)), 1.0864)
check("§2.6 X4 rho(|A|)", abscissa(np.abs(np.array(TABLE['X4'][0], float))), 0.3162)
A1 = np.array([[0.0, 4.0], [0.0, 0.0]])
check("§2.4 N, E2, L not convex: midpoint", [abscissa(metzler((A1 + A1.T) / 2)),
                                            abscissa(np.abs((A1 + A1.T) / 2)),
                                            int(in_L((A1 + A1.T) / 2)), int(in_L(A1))],
      [2, 2, 0, 1], 1e-9)
# N ⊂ L certificate P = diag(xi / v) for X5 (irreducible): P(M − I) + (M − I)ᵀP ≺ 0
P = np.diag(xi / v)
Q = P @ (M5 - np.eye(2)); check("§2.4 diag stability certificate", np.linalg.eigvalsh(Q + Q.T).max() < 0, True)

# ---------------------------------------------------------------- average iteration (§4)
relu = lambda z: np.maximum(z, 0)  # noqa: E731
X1 = np.array([[-3.0, 1.0], [1.0, -3.0]])
a_star = 1 / (1 - min(np.diag(X1).min(), 0))
rho_exact = lambda A, a: max(abs(1 - a), max(abs(1 - a + a * A[i, i]) + a * (np.abs(A[i]).sum() - abs(A[i, i])) for i in range(len(A))))  # noqa: E731,E501
grid = np.linspace(1e-3, 1, 100001)
vals = [rho_exact(X1, a) for a in grid]
check("§4.3 X1 alpha*, rho(alpha*), rho_exact(1/3), argmin",
      [a_star, rho_exact(X1, a_star), rho_exact(X1, 1 / 3), grid[int(np.argmin(vals))]],
      [0.25, 0.75, 2 / 3, 1 / 3], 1e-4)
check("§4.4 rho_exact(1) = ||X1||_inf", rho_exact(X1, 1.0), 4)
w = np.array([4.0, 4.0]); x = np.zeros(2); seq = []
for _ in range(4):
    x = relu(X1 @ x + w); seq.append(x.tolist())
check("§4.4 Picard cycle", seq, [[4, 4], [0, 0], [4, 4], [0, 0]], 0)
xs = np.array([4 / 3, 4 / 3]); x = np.zeros(2); ratios = []; errs = [np.abs(x - xs).max()]
for _ in range(30):
    x = (1 - a_star) * x + a_star * relu(X1 @ x + w); errs.append(np.abs(x - xs).max())
ratios = [errs[k + 1] / errs[k] for k in range(1, 20)]
check("§4.4 average iteration limit, ratio", [*x, max(ratios)], [4 / 3, 4 / 3, 0.25], 1e-9)
Dg = np.diag([0.5, 0.5])
check("§4.2 diag(0.5): alpha* and factor of alpha=2 off region",
      [1 / (1 - min(0.5, 0)), rho_exact(Dg, 2.0)], [1, 1], 1e-12)
# a-posteriori bounds (§4.5) on a random weighted example with a strongly negative diagonal
rng = np.random.default_rng(0)
n = 30
A = rng.normal(size=(n, n)) * 0.3
np.fill_diagonal(A, -20 + rng.random(n))
eta = rng.random(n) + 0.5
sc = lambda B: np.abs(B) * eta[None, :] / eta[:, None]  # noqa: E731
s = sc(A).sum(1) - np.diag(sc(A))
np.fill_diagonal(A, 0.9 - s)                 # every weighted row value = 0.9
for i in range(0, n, 3):
    A[i, i] -= 15                             # some rows far below, strongly negative diagonal
mu = mu_inf(A, eta); mup = max(mu, 0); a = 1 / (1 - min(np.diag(A).min(), 0)); rho = 1 - a * (1 - mup)
nrm = lambda z: np.abs(z / eta).max()  # noqa: E731
wv = rng.normal(size=n)
x = np.zeros(n)
for _ in range(20000):
    x = (1 - a) * x + a * np.tanh(A @ x + wv)
xs = x
x = np.zeros(n); ok = True; picard = np.zeros(n)
for k in range(200):
    r = np.tanh(A @ x + wv) - x
    xn = x + a * r
    ok &= nrm(x - xs) <= nrm(r) / (1 - mup) * (1 + 1e-9) + 1e-15
    ok &= nrm(xn - xs) <= rho / (1 - rho) * nrm(xn - x) * (1 + 1e-9) + 1e-15
    ok &= nrm(xn - xs) <= rho * nrm(x - xs) * (1 + 1e-9) + 1e-15
    x = xn
    picard = np.tanh(A @ picard + wv)
check("§4.5 weighted example mu, alpha*, rho", [mu, a, rho], [0.9, a, 1 - a * 0.1], 1e-9)
check("§4.5 bounds hold along the iteration", ok, True)
check("§4.4 Picard blows past the fixed point there", nrm(picard - xs) > 1e-2, True)

# ---------------------------------------------------------------- adjoint norm identity (§5.4)
Mm = rng.normal(size=(5, 5)); e5 = rng.random(5) + 0.2
n_inf_eta = np.abs(np.diag(1 / e5) @ Mm @ np.diag(e5)).sum(1).max()
n_1_eta_T = np.abs(np.diag(e5) @ Mm.T @ np.diag(1 / e5)).sum(0).max()
check("§5.4 ||M^T||_{1,eta} = ||M||_{inf,eta}", n_1_eta_T, n_inf_eta, 1e-12)

# ---------------------------------------------------------------- Lipschitz (§6)
us = np.linspace(0.1, 2, 20)
xs = []
for u in us:
    x = 0.0
    for _ in range(200):
        x = 0.75 * x + 0.25 * max(-3 * x + u, 0)
    xs.append(x)
check("§6.1 slope of x = relu(-3x + u)", np.diff(xs).max() / (us[1] - us[0]), 0.25, 1e-9)
check("§6.3 global radius m/(2L)", 0.6 / (2 * 2), 0.15, 1e-12)


# ---------------------------------------------------------------- projection (§7)
def project_row(v, d, gamma, w=None):
    v = np.asarray(v, float); n = len(v)
    w = np.ones(n) if w is None else np.asarray(w, float)
    off = [j for j in range(n) if j != d]
    if v[d] + sum(w[j] * abs(v[j]) for j in off) <= gamma:
        return v.copy(), 0.0
    order = sorted(off, key=lambda j: -abs(v[j]) / w[j])
    lams = [(v[d] - gamma + sum(w[j] * abs(v[j]) for j in order[:k]))
            / (1 + sum(w[j] ** 2 for j in order[:k])) for k in range(len(off) + 1)]
    lam = max(0.0, max(lams))
    a = np.sign(v) * np.maximum(np.abs(v) - lam * w, 0)
    a[d] = v[d] - lam
    return a, lam, lams


a, lam, lams = project_row([0.5, 1.0, -0.4], 0, 0.5)
check("§7.4 unweighted lambda_k", lams, [0, 0.5, 0.4667])
check("§7.4 unweighted a", a, [0, 0.5, 0], 1e-12)
a, lam, lams = project_row([0.5, 1.0, -0.4], 0, 0.5, [1, 2, 0.5])
check("§7.4 weighted lambda", [lam, 2.2 / 5.25], [0.419048, 0.419048], 1e-6)
check("§7.4 weighted a", a, [0.080952, 0.161905, -0.190476], 1e-6)
check("§7.4 weighted constraint", a[0] + 2 * abs(a[1]) + 0.5 * abs(a[2]), 0.5, 1e-12)
# against a QP
try:
    import cvxpy as cp
    for wts in ([1, 1, 1], [1, 2, 0.5]):
        z = cp.Variable(3)
        cp.Problem(cp.Minimize(cp.sum_squares(z - np.array([0.5, 1, -0.4]))),
                   [z[0] + wts[1] * cp.abs(z[1]) + wts[2] * cp.abs(z[2]) <= 0.5]).solve(
            solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        check(f"§7.4 QP oracle w={wts}", z.value, project_row([0.5, 1, -0.4], 0, 0.5, wts)[0], 1e-6)
except ImportError:
    pass
# ℓ1 ball (§7.7): v = (0.5, 1.0, -0.4), γ = 0.5: λ = max(0, (1 - .5)/1, (1.5 - .5)/2, (1.9 - .5)/3)
lam1 = max(0, *[(np.sort(np.abs([0.5, 1, -0.4]))[::-1][:k].sum() - 0.5) / k for k in (1, 2, 3)])
a1 = np.sign([0.5, 1, -0.4]) * np.maximum(np.abs([0.5, 1, -0.4]) - lam1, 0)
check("§7.7 l1-ball lambda, a", [lam1, *a1], [0.5, 0, 0.5, 0], 1e-12)
# §7.6: the scaled projection is not the Frobenius projection
Vm = np.array([[0.5, 1.0, -0.4], [2.0, 0.3, 0.1], [-1.0, 0.7, 0.9]]); et = np.array([1.0, 0.1, 4.0])
W = et[None, :] / et[:, None]
P1 = np.array([project_row(Vm[i], i, 0.5, W[i])[0] for i in range(3)])
Vs = np.diag(1 / et) @ Vm @ np.diag(et)
P2 = np.diag(et) @ np.array([project_row(Vs[i], i, 0.5)[0] for i in range(3)]) @ np.diag(1 / et)
d1, d2 = np.linalg.norm(P1 - Vm), np.linalg.norm(P2 - Vm)
check("§7.6 both feasible; Frobenius distances (exact < scaled)",
      [mu_inf(P1, et) <= 0.5 + 1e-12, mu_inf(P2, et) <= 0.5 + 1e-12, d1 < d2], [1, 1, 1], 0)
print(f"    §7.6 distances: exact {d1:.4f}, scaled-and-mapped-back {d2:.4f}")
# §7.8 parameterization
Mr = rng.normal(size=(4, 4)); dv = rng.normal(size=4); g = 0.7
D = np.diag(np.exp(dv))
Ap = g * np.eye(4) + np.linalg.inv(D) @ Mr @ D - np.diag(np.abs(Mr).sum(1))
check("§7.8 mu_{inf,e^-d} = gamma + 2 max min(M_ii, 0)",
      mu_inf(Ap, np.exp(-dv)), g + 2 * max(min(Mr[i, i], 0) for i in range(4)), 1e-12)
Bp = D @ Ap @ np.linalg.inv(D)
r = np.diag(Bp) - g + (np.abs(Bp).sum(1) - np.abs(np.diag(Bp)))
Mpre = Bp - np.diag(np.diag(Bp)) + np.diag(r / 2)
Arec = g * np.eye(4) + np.linalg.inv(D) @ Mpre @ D - np.diag(np.abs(Mpre).sum(1))
check("§7.8 preimage rebuilds A", np.abs(Arec - Ap).max(), 0, 1e-12)

# ---------------------------------------------------------------- §8.3 ReLU rescaling
Ar = rng.normal(size=(4, 4)) * 0.2; Br = rng.normal(size=(4, 3)); br = rng.normal(size=4)
Cr = rng.normal(size=(2, 4)); u = rng.normal(size=3)
def out(B, b, C):
    x = np.zeros(4)
    for _ in range(3000):
        x = 0.5 * x + 0.5 * relu(Ar @ x + B @ u + b)
    return C @ x
check("§8.3 (sB, sb, C/s) leaves y unchanged", out(3 * Br, 3 * br, Cr / 3), out(Br, br, Cr), 1e-10)


# ---------------------------------------------------------------- row volumes (§9.3)
def p_n0(n, r, g):
    return sum((-1) ** (k + e) * math.comb(n - 1, k) * max(g + r - k * r - 2 * e * r, 0) ** n
               for k in range(n) for e in range(2)) / (math.factorial(n) * 2 * r ** n)


def p_e1(n, r, g):
    return (g / r) ** n / math.factorial(n)


check("§9.3 n=2 g=.5: p_N0, p_E1", [p_n0(2, 1, .5), p_e1(2, 1, .5)], [0.5, 0.125], 1e-12)
check("§9.3 n=3 g=.9: p_N0, p_E1", [p_n0(3, 1, .9), p_e1(3, 1, .9)], [0.4501, 0.1215], 1e-4)
check("§9.3 g=1: n=2, n=3 p_N0 (EXPERIMENTS.md)", [p_n0(2, 1, 1), p_n0(3, 1, 1)], [0.75, 0.5], 1e-12)
Z = rng.uniform(-1, 1, size=(400000, 3))
mc = np.mean(Z[:, 0] + np.abs(Z[:, 1:]).sum(1) <= 0.9)
check("§9.3 Monte Carlo p_N0 n=3 g=.9", mc, p_n0(3, 1, .9), 4 * math.sqrt(0.25 / 400000))

# ---------------------------------------------------------------- 2-D slices (§9.4)
bad = 0
for dlt, b, c in product([-0.5, 0.0, 0.5, 0.9], np.linspace(-2, 2, 9) + 0.013, np.linspace(-2, 2, 9)):
    Aq = np.array([[dlt, b], [c, dlt]])
    closed = [abs(dlt) + max(abs(b), abs(c)) < 1, abs(dlt) + math.sqrt(abs(b * c)) < 1,
              dlt + max(abs(b), abs(c)) < 1, dlt + math.sqrt(abs(b * c)) < 1,
              dlt + abs(b + c) / 2 < 1, dlt < 1 and (b * c < 0 or dlt + math.sqrt(abs(b * c)) < 1)]
    direct = [np.abs(Aq).sum(1).max() < 1, abscissa(np.abs(Aq)) < 1, mu_inf(Aq) < 1,
              abscissa(metzler(Aq)) < 1, mu_2(Aq) < 1,
              (1 - dlt) > 0 and (1 - dlt) ** 2 - b * c > 0]  # 2×2 diagonal stability of A − I
    bad += sum(x != y for x, y in zip(closed, direct))
check("§9.4 slice closed forms vs direct tests (mismatches)", bad, 0, 0)

# ---------------------------------------------------------------- embedded network (§12)
n, p = 6, 3
A = rng.normal(size=(n, n)) * 0.5
np.fill_diagonal(A, -2.0 - rng.random(n))          # negative diagonal: the averaging matters
s = np.abs(A).sum(1) - np.abs(np.diag(A)); A -= np.diag(np.maximum(np.diag(A) + s - 0.8, 0))
B = rng.normal(size=(n, p)); b = rng.normal(size=n)
up, lo = np.triu(A, 1) + np.tril(A, -1), None
Aup = np.diag(np.diag(A)) + np.maximum(A - np.diag(np.diag(A)), 0)
Alo = np.minimum(A - np.diag(np.diag(A)), 0)
E = np.block([[Aup, Alo], [Alo, Aup]])
check("§12.2 embedded mu_inf = mu_inf(A)", mu_inf(E), mu_inf(A), 1e-12)
u0, eps = rng.random(p), 0.1
ul, uu = u0 - eps, u0 + eps
Bp, Bm = np.maximum(B, 0), np.minimum(B, 0)
wl, wu = Bp @ ul + Bm @ uu + b, Bp @ uu + Bm @ ul + b
al = 1 / (1 - min(np.diag(A).min(), 0))
z = np.zeros(2 * n)
for _ in range(5000):
    z = (1 - al) * z + al * np.tanh(E @ z + np.concatenate([wl, wu]))
xl, xu = z[:n], z[n:]
inside = True
for k in range(300):
    uk = ul + (uu - ul) * (rng.random(p) if k else rng.integers(0, 2, p))
    x = np.zeros(n)
    for _ in range(3000):
        x = (1 - al) * x + al * np.tanh(A @ x + B @ uk + b)
    inside &= bool(np.all(xl <= x + 1e-12) and np.all(x <= xu + 1e-12))
check("§12.2 every sampled x*(u) lies in [x_lo, x_hi] (negative diagonal)", inside, True)

print(f"\n{len(FAILS)} mismatch(es)" + (": " + ", ".join(FAILS) if FAILS else ""))
sys.exit(1 if FAILS else 0)
