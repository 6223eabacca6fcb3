"""Shared fixtures: tiny real data (scikit-learn's digits) and tiny models, CPU only."""

from __future__ import annotations

import pytest
import torch

from kdcore.data.builtin import load_digits
from kdcore.models.spec import ModelSpec

DIGITS_SPEC = ModelSpec("paper-cnn", 10, (1, 8, 8), (0.3,), (0.4,))


@pytest.fixture(scope="session")
def digits():
    return load_digits()


@pytest.fixture(scope="session")
def digits_spec():
    return DIGITS_SPEC


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests are tiny; one thread avoids oversubscribing CI's 2 cores when pytest runs subprocesses.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
