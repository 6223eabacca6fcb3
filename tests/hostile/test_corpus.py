"""Every case of the hostile corpus is refused by its reader with one clear KDCoreError.

The bombs run in a subprocess each (tests/hostile/measure.py): refusing one may take at most
1.5 GiB above the process's idle size, and the process must survive (the deep-tuple .pt
used to kill it with SIGSEGV). No message may ever suggest torch's `weights_only=False`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kdcore import errors
from tests.hostile.corpus import CASES, Case, read
from tests.hostile.measure import measure

BOMBS = [name for name, case in CASES.items() if case.bomb]
OTHERS = [name for name, case in CASES.items() if not case.bomb]
MAX_PEAK_BYTES = 1.5 * 2**30


def check_outcome(case: Case, error: str | None, message: str, skipped: tuple[str, ...]) -> None:
    assert error == case.error, f"expected {case.error}, got {error}: {message}"
    text = message if case.error else " ".join(skipped)
    assert re.search(case.match, text), text
    assert "weights_only" not in message and "set to `False`" not in message  # torch's unsafe advice
    assert "\n" not in message  # one line, as the dashboard shows it


@pytest.mark.parametrize("name", OTHERS)
def test_refused_with_a_clear_message(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    path = case.make(tmp_path)
    try:
        result = read(case, path)
    except errors.KDCoreError as e:
        check_outcome(case, type(e).__name__, str(e), ())
    else:
        check_outcome(case, None, "", tuple(getattr(result, "skipped", ())))


@pytest.mark.slow
@pytest.mark.parametrize("name", BOMBS)
def test_bomb_refused_within_memory(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    m = measure(name, case.make(tmp_path))
    check_outcome(case, m.error, m.message, m.skipped)
    assert m.peak_bytes <= MAX_PEAK_BYTES, f"{m.peak_bytes / 2**20:.0f} MiB above idle"


def test_every_kdcore_error_class_is_expected_somewhere() -> None:
    kinds = {case.error for case in CASES.values()}
    assert {"InputError", "ModelLoadError", "ConfigError", None} <= kinds
    assert all(hasattr(errors, k) for k in kinds if k)
