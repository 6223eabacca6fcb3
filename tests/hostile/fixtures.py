"""Fixtures shared by the reader tests: changing kdcore's limits for one test."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import pytest

from kdcore import limits


@pytest.fixture
def set_limits() -> Iterator[Callable[..., limits.Limits]]:
    """`set_limits(max_file_bytes=10, ...)` changes the limits in force; the test's end restores them."""
    before = limits.current()

    def apply(**changes) -> limits.Limits:
        limits.use(dataclasses.replace(limits.current(), **changes))
        return limits.current()

    yield apply
    limits.use(before)
