"""app.words: kdcore's messages said with the dashboard's fields, never CLI flags (issue 14)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from app.words import FIELDS, flags_in, in_words, reason_in_words

KDCORE = Path(__file__).resolve().parents[2] / "kdcore"


def _strings(path: Path) -> list[str]:
    """Every string constant of a module (f-strings' literal parts included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _engine_flags() -> set[str]:
    """The flags in the strings of every kdcore module the dashboard runs (the CLI's own modules excepted)."""
    found = set()
    for path in KDCORE.rglob("*.py"):
        if "cli" not in path.relative_to(KDCORE).parts:
            for text in _strings(path):
                found.update(flags_in(text))
    return found


def test_every_flag_in_kdcores_messages_has_the_dashboards_words() -> None:
    flags = _engine_flags()
    assert {"--arch", "--num-classes", "--limit", "--trust-code"} <= flags  # the scan sees the messages
    missing = sorted(flags - set(FIELDS))
    assert not missing, f"add these to app.words.FIELDS: {missing}"


@pytest.mark.parametrize(
    ("message", "said"),
    [
        ("Check --arch, --num-classes and the input shape", "Check “Architecture”, “Classes” and the input shape"),
        ("m.pt has 43 output classes but --num-classes is 10; pass --num-classes 43", "set “Classes” to 43"),
        ("it looks like tv:resnet18: try --arch tv:resnet18.", "torchvision model, name resnet18."),
        ("raise it with --limit NAME=VALUE or KDAUDIT_LIMIT_NAME", "ask whoever runs the dashboard"),
        ("running that file needs --trust-code", "KDAUDIT_TRUST_CODE=1"),
        ("an unknown --some-new-flag", "“some new flag”"),
    ],
)
def test_messages_are_said_in_the_pages_words(message: str, said: str) -> None:
    out = in_words(message)
    assert said in out and not flags_in(out), out


def test_every_engine_string_comes_out_without_a_flag() -> None:
    for path in KDCORE.rglob("*.py"):
        if "cli" not in path.relative_to(KDCORE).parts:
            for text in _strings(path):
                assert not flags_in(in_words(text)), (path, text)


def test_words_leave_other_dashes_alone() -> None:
    assert in_words("a--b, ---, 3 -- 4 and −1") == "a--b, ---, 3 -- 4 and −1"


def test_a_failed_jobs_reason_is_its_last_line_without_the_class_name() -> None:
    assert reason_in_words("ModelLoadError: m.pt has 3 output classes; pass --num-classes 3") == (
        "m.pt has 3 output classes; set “Classes” to 3"
    )
    assert reason_in_words("Traceback (most recent call last):\n  ...\nValueError: bad --arch") == "bad “Architecture”"
    assert reason_in_words("") == ""
