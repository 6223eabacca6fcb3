"""The seed paper's Table 5 beside our Fashion-MNIST reproduction (the Lesson page, step "The paper
beside us").

Source of PAPER: Yoshida & Fujino, "Disabling Backdoor and Identifying Poison Data by using Knowledge
Distillation in Backdoor Attacks on Deep Neural Networks", AISec 2020 (seed 000), **Table 5: Accuracy
of each model in MNIST task**. Its two rows are accuracy on the clean test set and on the poison test
set (the trigger on every image of another class, scored against the true labels); its columns are
the baseline, the backdoored model, and the distilled and fine-tuned models at 6 % and 20 % of the
training set as clean images, under attack and with no attack. The paper does not report the attack
success rate: those cells are "not measured" (None).

Ours: `benchmarks/results/table5.json` (`python benchmarks/table5.py`: the same protocol on
Fashion-MNIST, 3,000 and 10,000 clean images = 6 % and 20 % of 50,000), read as it is in the
repository; a missing file or row is "not measured" too. WHY holds one sentence per row: the README's
analysis ("Table 5 on Fashion-MNIST") in a student's words.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdcore.errors import InputError
from kdcore.io import read_json

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "table5.json"
TRAIN_SIZE = 50_000  # training images behind "6 %" and "20 %", in the paper (MNIST) and in ours
SHARES = (6, 20)  # the paper's budget columns, per cent of the training set


@dataclass(frozen=True)
class Row:
    """One model of Table 5: where it sits, and what the paper and we measured (fractions, None = not measured)."""

    key: tuple[str, str, int]  # (scenario: "attack" | "no_attack" | "-", model, share of the training set in %)
    label: str
    paper_clean: float | None
    paper_poison: float | None
    ours_clean: float | None = None
    ours_poison: float | None = None
    ours_attack: float | None = None
    why: str = ""


# (scenario, model, share %) → (clean accuracy, poison accuracy): Table 5 of seed 000, as printed.
PAPER: dict[tuple[str, str, int], tuple[float, float]] = {
    ("-", "baseline", 0): (0.991, 0.991),
    ("-", "backdoor", 0): (0.989, 0.049),
    ("attack", "student", 6): (0.982, 0.982),
    ("attack", "student", 20): (0.988, 0.988),
    ("attack", "finetuned", 6): (0.988, 0.988),
    ("attack", "finetuned", 20): (0.989, 0.989),
    ("no_attack", "student", 6): (0.983, 0.983),
    ("no_attack", "student", 20): (0.988, 0.988),
    ("no_attack", "finetuned", 6): (0.988, 0.989),
    ("no_attack", "finetuned", 20): (0.990, 0.989),
}

LABELS = {"baseline": "Clean model (never attacked)", "backdoor": "Backdoored teacher"}
STAGE = {"student": "Distilled student", "finetuned": "Fine-tuned student"}
SCENARIO = {"attack": "under attack", "no_attack": "no attack"}

WHY = {
    ("-", "baseline", 0): "Clothes are harder to tell apart than digits, so the same small network scores lower "
    "here, and ours trains for 8 rounds over the data where the paper's trained for 50.",
    ("-", "backdoor", 0): "The backdoor works in both: almost every triggered image is pulled to the attacker's "
    "class; ours is a little weaker after its shorter training.",
    ("attack", "student", 6): "Distilling on a few clean images removes the backdoor in both; our student loses "
    "more accuracy because clothes are harder to learn from few images.",
    ("attack", "student", 20): "Here we differ: with more clean images the backdoor leaks back into our student, "
    "because bags and ankle boots are often bright in the lower-right corner and partly fire the trigger, "
    "while MNIST's corner is always black.",
    ("attack", "finetuned", 6): "Fine-tuning wins accuracy back in both, but ours stays further below the clean "
    "model: our teacher and our fine-tuning train for fewer rounds.",
    ("attack", "finetuned", 20): "Fine-tuning cannot remove what distillation let leak in: our attack success "
    "stays where the distilled student left it.",
    ("no_attack", "student", 6): "Without an attack the method costs about as much accuracy as under attack, "
    "as in the paper.",
    ("no_attack", "student", 20): "More clean images give a better student, as in the paper; with no trigger "
    "in the data there is nothing to leak.",
    ("no_attack", "finetuned", 6): "Fine-tuning recovers accuracy in both; ours stays below the clean model "
    "for the same shorter training.",
    ("no_attack", "finetuned", 20): "As under attack, our fine-tuned student ends a point or two below the "
    "clean model, where the paper's matches it.",
}
NOT_MEASURED = "not measured"


def _label(key: tuple[str, str, int]) -> str:
    scenario, model, share = key
    if scenario == "-":
        return LABELS[model]
    return f"{STAGE[model]}, {share} % clean images ({SCENARIO[scenario]})"


def our_rows(path: Path = RESULTS) -> dict[tuple[str, str, int], dict]:
    """Our measured rows of Table 5 by (scenario, model, share %), from the sweep's JSON; {} when it is missing."""
    if not path.is_file():
        return {}
    try:
        rows = read_json(path).get("rows") or []
    except ValueError as e:
        raise InputError(f"The stored reproduction {path.name} is not valid JSON ({e}); run the benchmark again") from e
    out = {}
    for r in rows:
        share = round(100 * r.get("budget", 0) / TRAIN_SIZE)
        out[(r.get("scenario"), r.get("model"), share)] = r
    return out


def table5_rows(path: Path = RESULTS) -> list[Row]:
    """The paper's Table 5 and ours side by side, a row per model in the paper's order."""
    ours = our_rows(path)
    rows = []
    for key, (clean, poison) in PAPER.items():
        r = ours.get(key) or {}
        rows.append(
            Row(key, _label(key), clean, poison, r.get("clean_acc"), r.get("poison_acc"), r.get("asr"), WHY[key])
        )
    return rows


def pct(v: float | None) -> str:
    """A fraction as "91.5 %", or "not measured"."""
    return NOT_MEASURED if v is None else f"{100 * v:.1f} %"
