"""New audit's image-set check in a sandbox: what an uploaded zip holds, before an audit is queued.

`summarize` has a `kdcore.sandbox` child list the archive and read a sample of image headers
(`kdcore.data.summary.summarize`) under the flat sandbox budget, and rebuilds the answer with
`ImageSetSummary.from_dict`, which refuses any shape but the summary's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdcore.data.summary import ImageSetSummary
from kdcore.errors import InputError

if TYPE_CHECKING:  # kdcore.sandbox imports nothing from here; its names only for the hints
    from kdcore.sandbox import BudgetArg, PathLike


def summarize(path: PathLike, budget: BudgetArg = "flat") -> ImageSetSummary:
    """`kdcore.data.summary.summarize(path)`, read in a sandbox child. Raises InputError."""
    from kdcore.sandbox import _budget, run

    answer = run("kdcore.data.summary:summary_dict", (str(path),), _budget(budget, path, "images"), InputError, path)
    return ImageSetSummary.from_dict(answer)
