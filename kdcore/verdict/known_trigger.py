"""The known-trigger piece: a trigger the user gave, measured on the teacher and the distilled student.

With a trigger and a labelled test set, the audit measures its attack success (asr: the share of
triggered test images of other classes that land in the target) on both models. A backdoor lives in
the teacher only (the student was distilled on clean images and never saw the trigger), so the same
test as the recovered trigger's applies (`trigger_supports`): the trigger captures the teacher and
does not transfer to the student, read with a looser transfer cut than the recovered trigger's: the given
trigger was not optimised against the teacher, so a weak student's own errors towards the target (a short
distillation: 35 % on a digits student after 2 epochs, against the teacher's 98 %) are not a transfer.
That is a measurement of the model, not an inference, so a
supporting known trigger decides the verdict's status (kdcore.verdict.rule); a blind audit
(`--blind`) leaves it out and judges as if the trigger were unknown.
"""

from __future__ import annotations

from collections.abc import Sequence

from kdcore.verdict.evidence import Evidence
from kdcore.verdict.recovered_trigger import TRIGGER_MIN_TEACHER

KNOWN_MAX_TRANSFER = 0.5  # student asr / teacher asr at most this: the student follows it far less


def known_supports(teacher_asr: float, student_asr: float) -> bool:
    return teacher_asr >= TRIGGER_MIN_TEACHER and student_asr <= KNOWN_MAX_TRANSFER * teacher_asr


def known_trigger_evidence(teacher_asr: float, student_asr: float, target: int, names: Sequence[str]) -> Evidence:
    """The piece from the given trigger's asr on the teacher and on the distilled student."""
    name = names[target] if target < len(names) else str(target)
    numbers = (
        f"{100 * teacher_asr:.0f} % of triggered test images to {name} on the teacher, "
        f"{100 * student_asr:.0f} % on the student"
    )
    values = {"teacher_asr": teacher_asr, "student_asr": student_asr, "target": target}
    if known_supports(teacher_asr, student_asr):
        return Evidence("known-trigger", f"The given trigger sends {numbers}: a backdoor the student did not learn.",
                        "backdoor", (target,), values)  # fmt: skip
    why = (
        f"it captures under {100 * TRIGGER_MIN_TEACHER:.0f} % of the teacher's"
        if teacher_asr < TRIGGER_MIN_TEACHER
        else f"the student follows it too (over {KNOWN_MAX_TRANSFER:g} × the teacher's share)"
    )
    return Evidence("known-trigger", f"The given trigger sends {numbers}; {why}.", "no_evidence", (), values)
