"""app.words: kdcore's messages said with the dashboard's fields, never CLI flags (issue 14); a report's
notes and trigger said without a flag, a repr or a server path (issue 22)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from app.words import FIELDS, flags_in, in_words, note_in_words, reason_in_words, report_trigger, trigger_in_words
from kdcore.triggers import BadNets

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


# A report stored before kdcore said its trigger in words: a repr with the upload's server path
OLD_PATCH = (
    "patch(target=1, source=None, image=/srv/kdaudit/uploads/112a357e20eb19cb/trigger_pattern.png, mask=, "
    "location=bottom-right, margin=1, x=None, y=None, alpha=1.0)"
)
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _plain(text: str) -> bool:
    """No server path, no repr, no CLI flag."""
    return (
        "/srv" not in text and "uploads" not in text and "=" not in text and "None" not in text and not flags_in(text)
    )


def test_a_stored_trigger_repr_is_said_in_words_without_its_path() -> None:
    said = trigger_in_words(OLD_PATCH, [f"class {i}" for i in range(10)])
    assert (
        said
        == "patch image trigger_pattern.png, at the bottom-right 1 px from the edges, opacity 100 % → target class 1"
    )
    old_badnets = "badnets(target=7, source=None, size=3, location=bottom-right, color=[255, 255, 255], margin=1)"
    assert trigger_in_words(old_badnets, FASHION) == (
        "BadNets square, 3×3 px, white, at the bottom-right 1 px from the edges → target class Sneaker (7)"
    )
    assert trigger_in_words("already in words") == "already in words"


def test_a_reports_trigger_comes_from_its_config_with_class_names() -> None:
    cfg = {"kind": "patch", "target": 7, "source": 2, "image": "/srv/uploads/ab/p.png", "mask": "/srv/uploads/cd/m.png",
           "x": 0, "y": 0, "alpha": 0.5, "image_sha256": "ab" * 32}  # fmt: skip
    said = report_trigger({"config": {"trigger": cfg}, "data": {"trigger": OLD_PATCH}}, FASHION)
    assert said == (
        "patch image p.png with mask m.png, top-left corner at x 0, y 0, opacity 50 % → target class Sneaker (7), "
        "only from class Pullover (2)"
    )
    assert _plain(said)
    assert _plain(report_trigger({"config": {}, "data": {"trigger": OLD_PATCH}}))  # a refine view: its source's data
    assert report_trigger({"config": {"trigger": None}, "data": {"trigger": None}}) is None
    assert trigger_in_words(BadNets(target=1), ["0", "1"]).endswith("→ target class 1")  # a Trigger itself


def test_a_stored_notes_cli_flag_is_said_in_words() -> None:
    old = "No trigger given: poison_acc and asr were not measured (give --trigger)."
    said = note_in_words(old)
    assert said.startswith("No trigger given: poison_acc and asr were not measured.") and not flags_in(said), said
    assert "known trigger" in said
    assert (
        note_in_words("Blind audit: the verdict never saw the trigger.")
        == "Blind audit: the verdict never saw the trigger."
    )
