"""One section of a form: the value it gives, and why it cannot be used as the user left it.

A section whose input is wrong or incomplete shows its error where that input is and also returns
it as its `problem`. The page collects every section and starts no job while a problem is left, so
an input the user gave is never dropped in silence (a trigger in error never becomes "no trigger")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Section(Generic[T]):
    value: T  # what the section gives the job's config; None where the user gave nothing (or it is in error)
    problem: str = ""  # what to fix, in the user's words; "" when the section can be used as it stands


def blocking(sections: dict[str, Section]) -> list[str]:
    """Each section in error as “Fix the <name> section: <problem>”, in the form's order."""
    return [f"Fix the {name} section: {s.problem}" for name, s in sections.items() if s.problem]
