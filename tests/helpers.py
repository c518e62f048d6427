"""Small helpers shared by test modules (not fixtures): a tiny classifier trained to be accurate."""
import torch
import torch.nn.functional as F


def fit_tiny_classifier(model, train, test, *, steps: int = 40, lr: float = 0.03,
                        min_accuracy: float = 0.9):
    """Train ``model`` on ``train = (u, labels)`` with Adam and a projection after each step;
    assert accuracy > ``min_accuracy`` on ``test``; return ``(model, u_test, labels_test)``."""
    u, labels = train
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(u), labels).backward()
        opt.step()
        model.project_()
    model.zero_grad(set_to_none=True)
    ut, lt = test
    with torch.no_grad():
        assert float((model(ut).argmax(1) == lt).double().mean()) > min_accuracy
    return model, ut, lt


# docs/math.md §2.6: A, then memberships E1 E2 N0 N M L (strict, γ = 1)
SPEC_TABLE = {
    "X1": ([[-3, 1], [1, -3]], (0, 0, 1, 1, 1, 1)),
    "X2": ([[0.9, 0], [10.9, -10]], (0, 0, 1, 1, 0, 1)),
    "X3": ([[0.9, 0], [0.9, 0]], (1, 1, 1, 1, 0, 1)),
    "X4": ([[0, 10], [0.01, 0]], (0, 1, 0, 1, 0, 1)),
    "X5": ([[-1, 5], [0.1, -2]], (0, 0, 0, 1, 0, 1)),
    "X6": ([[0, 0], [3, 0]], (0, 1, 0, 1, 0, 1)),
    "X7": ([[0, 2], [-2, 0]], (0, 0, 0, 0, 1, 1)),
    "X8": ([[0, 4], [-1, 0]], (0, 0, 0, 0, 0, 1)),
    "X9": ([[2, 0], [0, 0]], (0, 0, 0, 0, 0, 0)),
}


def assert_close(actual, expected, atol, rtol=0.0):
    """(torch.testing.assert_close imports torch.distributed on first use: seconds.)"""
    diff = float((actual - expected).abs().max())
    assert diff <= atol + rtol * float(expected.abs().max()), f"max abs difference {diff:.3g}"
