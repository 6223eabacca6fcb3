"""New audit's image-set check in a sandbox: what an uploaded zip holds, before an audit is queued.

`summarize` has a `kdcore.sandbox` child list the archive and read a sample of image headers
(`kdcore.data.summary.summarize`) under the flat sandbox budget, and rebuilds the answer with
`ImageSetSummary.from_dict`, which refuses any shape but the summary's own.
"""

from __future__ import annotations

from kdcore.data.summary import ImageSetSummary
from kdcore.errors import InputError
from kdcore.sandbox.runner import BudgetArg, PathLike, budget_for, run


def summarize(path: PathLike, budget: BudgetArg = "flat") -> ImageSetSummary:
    """`kdcore.data.summary.summarize(path)`, read in a sandbox child. Raises InputError."""
    b = budget_for(budget, path, "images")
    answer = run("kdcore.data.summary:summary_dict", (str(path),), b, InputError, path, reads=(path,))
    return ImageSetSummary.from_dict(answer)
