"""Shared pytest/hypothesis settings for the lipdeq test-suite.

Hypothesis runs without a per-example deadline (the first CVXPY solve of a shape pays for the
canonicalization, and CI machines are slow) and with a fixed, modest example budget; set
``HYPOTHESIS_PROFILE=thorough`` for a longer search.
"""
import os

import pytest

from hypothesis import HealthCheck, settings

settings.register_profile(
    "lipdeq", deadline=None, max_examples=40, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "thorough", deadline=None, max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "lipdeq"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is fastest, and immune to a busy machine (modules opt in
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
