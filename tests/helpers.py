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
