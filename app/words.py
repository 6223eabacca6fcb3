"""The user's words: kdcore's messages, written for the command line, said in the dashboard's terms.

kdcore's errors name CLI flags ("Check --arch, --num-classes and the input shape"), which mean
nothing on a web page. `in_words(text)` rewrites a message for the page: a few whole phrases first
(`PHRASES`: "pass --num-classes 43" → "set “Classes” to 43", the limits' "--limit NAME=VALUE"), then
every flag the dashboard has a field for → that field's label (`FIELDS`), a setting of the server →
who can change it, and a flag of the command line only → what it is. A flag missing from the map
still never reaches the page: it is written as plain words ("--foo-bar" → “foo bar”).
`tests/app/test_words.py` checks that every flag in kdcore's messages has an entry here.

Applied where the dashboard shows a KDCoreError (`app.state.show_error`) and a failed job's error
and log (the Jobs page, `reason_in_words`), and a report's notes (`note_in_words`: also those of
reports stored before kdcore wrote its notes without flags).

A report's trigger is said by `trigger_in_words` (kdcore.words' `trigger_words` with the model's class
names), also for reports stored when kdcore wrote it as a repr with the file's server path.
"""

from __future__ import annotations

import json
import re

from kdcore.words import Names, trigger_words

# On every page of a dashboard served beyond this machine without log-in (`app.serving`)
OPEN_WITHOUT_LOGIN = "Anyone who reaches this address can see every audit: log-in is off."

# Flag → the label of the New-audit form's field (or control) that sets the same thing
FIELDS = {
    "--model": "Model",
    "--arch": "Architecture",
    "--num-classes": "Classes",
    "--input-shape": "Input shape C,H,W",
    "--mean": "Mean",
    "--std": "Std",
    "--class-names": "Class names",
    "--layers": "Layers found for Explain / defenses",
    "--layer": "Layer",
    "--arch-file": "Python file that defines the architecture",
    "--arch-kwargs": "Keyword arguments",
    "--unlabeled": "Unlabelled clean images",
    "--train": "Labelled training set",
    "--test": "Labelled test set",
    "--trigger": "Known trigger",
    "--target": "Target class",
    "--triggered-test": "Triggered test images",
    "--blind": "Judge the model as if the trigger were unknown (blind)",
    "--no-verdict": "Skip the verdict",
    "--seed": "Seed",
    "--kd-epochs": "Distillation epochs",
    "--batch-size": "Batch size",
    "--kd-batch-size": "Batch size",
    "--temperature": "Temperature T",
    "--ft-lr": "Fine-tuning lr",
    "--augment": "Augment unlabelled images",
    "--label": "Name for this audit",
    "--params": "the method's settings",
    "--param": "the method's settings",
    "--config": "the settings",
    "--run": "the audit picked",
    "--job": "the job picked",
    # Settings of the server, not of the page: say who changes them
    "--trust-code": "the server setting KDAUDIT_TRUST_CODE=1 (ask whoever runs the dashboard)",
    "--limit": "the server's limits (KDAUDIT_LIMIT_<NAME>, set by whoever runs the dashboard)",
    "--device": "the workers' device",
    "--data-dir": "the data directory (KDAUDIT_HOME)",
    "--executor": "the server's executor (local workers or a Ray cluster; set by whoever runs the dashboard)",
    "--ray-address": "the Ray cluster's address (set by whoever runs the dashboard)",
    "--ray-cpus": "the CPUs each job asks of the Ray cluster (set by whoever runs the dashboard)",
    "--ray-resource": "the Ray resources each job asks for (set by whoever runs the dashboard)",
    "--resources": "a Ray node's resources (set when the node is started)",
    # Options of the command line only
    "--known-poisons": "a list of known poisons (command line only)",
    "--clean-labeled": "a labelled clean set (command line only)",
    "--demo": "the demo",
    "--quick": "the quick demo",
    "--teacher-epochs": "the demo's teacher epochs",
    "--setup-teacher-epochs": "the demo's teacher epochs",
    "--n-poison": "the demo's number of poisons",
    "--n-clean": "the demo's number of clean images",
    "--help": "the method's help",
    "--json": "JSON output",
    "--out": "the output folder",
    "--once": "a single job",
    "--drain": "draining the queue",
    "--tail": "the log",
    "--no-progress": "no progress bar",
    "--rescore": "re-scoring the verdict benchmark (command line only)",
}

_NAME = r"[\w:-]+(?:\.[\w-]+)*"  # an architecture name, without a sentence's full stop
# Whole phrases, rewritten before single flags (regex → replacement)
PHRASES = (
    (r"with --limit NAME=VALUE or KDAUDIT_LIMIT_NAME", "(ask whoever runs the dashboard to set KDAUDIT_LIMIT_<NAME>)"),
    (r"with --limit NAME=VALUE", "(ask whoever runs the dashboard to set KDAUDIT_LIMIT_<NAME>)"),
    (r"--limit (\w+)=(\S+)", r"the server limit KDAUDIT_LIMIT_\1=\2"),
    (r"\(?(?:python -m )?kdcore defend --help(?: lists them)?\)?", "(the Defenses page lists them)"),
    (r"pass --num-classes (\d+)", r"set “Classes” to \1"),
    (r"--num-classes (\d+)", r"“Classes” \1"),
    (rf"try --arch tv:({_NAME})", r"try “Architecture” = torchvision model, name \1"),
    (rf"try --arch timm:({_NAME})", r"try “Architecture” = timm model, name \1"),
    (rf"--arch ({_NAME})", r"“Architecture” \1"),
)
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")


def _field(m: re.Match) -> str:
    flag = m.group(0)
    label = FIELDS.get(flag)
    if label is None:
        return f"“{m.group(1).replace('-', ' ')}”"
    return label if label.startswith(("the ", "a ", "no ", "JSON")) else f"“{label}”"


def in_words(text: str) -> str:
    """`text` with every CLI flag said as the dashboard's field, setting or thing (module docstring)."""
    for pattern, repl in PHRASES:
        text = re.sub(pattern, repl, text)
    return _FLAG.sub(_field, text)


def flags_in(text: str) -> list[str]:
    """The CLI flags (`--name`) in `text`, for tests and checks."""
    return [m.group(0) for m in _FLAG.finditer(text)]


def reason_in_words(error: str) -> str:
    """A failed job's error (`"ModelLoadError: …"`, or a bug's traceback) → its last line in the page's
    words, without the error class's name."""
    lines = error.strip().splitlines()
    return in_words(re.sub(r"^\w*Error: ", "", lines[-1] if lines else ""))


# Notes that reports stored before kdcore said them without CLI flags still hold (regex → replacement)
OLD_NOTES = (
    (
        r"No trigger given: poison_acc and asr were not measured \(give --trigger\)\.",
        "No trigger given: poison_acc and asr were not measured. To measure them, start the audit again "
        "with its known trigger.",
    ),
)


def note_in_words(note: str) -> str:
    """A report's note for the page: an old note's known wording replaced (`OLD_NOTES`), then any
    flag said as the dashboard's field (`in_words`)."""
    for pattern, repl in OLD_NOTES:
        note = re.sub(pattern, repl, note)
    return in_words(note)


_REPR = re.compile(r"([a-z][\w-]*)\((.*)\)", re.S)


def _old_trigger(text: str) -> dict | None:
    """The settings in a trigger as reports stored it before kdcore said it in words:
    `patch(target=1, source=None, image=/srv/uploads/…/p.png, …, alpha=1.0)`; None for other text."""
    m = _REPR.fullmatch(text.strip())
    if m is None:
        return None
    d: dict = {"kind": m.group(1)}
    for part in filter(None, re.split(r", (?=\w+=)", m.group(2))):
        key, eq, value = part.partition("=")
        if not eq:
            return None
        try:
            d[key] = json.loads(value)  # numbers, lists ("[255, 255, 0]")
        except ValueError:
            d[key] = None if value == "None" else value
    return d


def trigger_in_words(trigger: object, class_names: Names = ()) -> str:
    """A trigger as a page says it: from its settings (a `Trigger`, a dict), or from the description
    a report stored (an old repr is read and said again; words are kept as they are)."""
    if hasattr(trigger, "to_dict"):
        trigger = trigger.to_dict()
    if isinstance(trigger, dict):
        return trigger_words(trigger, class_names)
    text = str(trigger)
    old = _old_trigger(text)
    return text if old is None else trigger_words(old, class_names)


def report_trigger(report: dict, class_names: Names = ()) -> str | None:
    """The trigger of a run's report in words, or None when the run had none: from its config's
    settings (with the model's class names), else the description in its data."""
    trigger = (report.get("config") or {}).get("trigger") or (report.get("data") or {}).get("trigger")
    return trigger_in_words(trigger, class_names) if trigger else None


# A report's metric and detection names as a student says them (the Lesson page's cards)
METRIC_WORDS = {
    "clean_acc": "Accuracy on clean images",
    "poison_acc": "Accuracy on triggered images",
    "asr": "Attack success",
    "flagged": "Flagged as suspicious",
    "precision": "Precision",
    "recall": "Recall",
    "false_positives": "Clean images flagged",
}
