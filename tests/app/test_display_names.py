"""One display name per model role (kdcore.report.ROLES) on the Results page, in the Defenses
comparison and in the HTML report, and no other spelling of a role anywhere in them."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from types import SimpleNamespace

from app.charts import metric_bars
from app.defenses import compare_rows
from app.report_html import audit_report_html
from kdcore.jobs.store import JobStore
from kdcore.report import ROLES, models_of
from kdcore.tables import report_table
from tests.app.conftest import open_page

OTHER_SPELLINGS = (  # how roles were named before there was one table
    "Teacher (suspect)",
    "Backdoor (teacher)",
    "KD (distilled)",
    "KD + detox fine-tuned",
    "Baseline (trained on clean data)",
    "After ",
    "Suspect model",
)


def _check(role_labels: list[str], text: str, where: str) -> None:
    for label in role_labels:
        assert label in text, (where, label)
    for other in OTHER_SPELLINGS:
        assert other not in text, (where, other)


def test_audit_roles_read_the_same_on_every_page(kdaudit_home):
    job = JobStore(kdaudit_home).get(1)
    report = json.loads((Path(job.run_dir) / "report.json").read_text())
    roles = list(models_of(report))
    assert roles == ["teacher", "student", "finetuned"]
    labels = [ROLES[r] for r in roles]

    results = open_page("results", job=1)
    assert not results.exception, results.exception
    shown = [m.value for m in results.markdown]
    assert [v for v in shown if v.strip("*") in ROLES.values()] == [f"**{label}**" for label in labels]
    _check(labels, " ".join(shown + [c.value for c in results.caption]), "results page")

    defenses = open_page("defenses", job=1, timeout=120)
    assert not defenses.exception, defenses.exception
    table = next(d.value for d in defenses.dataframe if "model" in d.value.columns)
    assert list(table["model"]) == labels
    _check(labels, " | ".join(table["model"]), "defenses comparison")

    html = audit_report_html(job, report)
    _check([escape(label) for label in labels], html, "HTML report")


def test_every_role_has_its_one_name_in_the_pure_renderers():
    """A demo-shaped report has every core role, a defend report the repaired one: the HTML report,
    the comparison rows, the bar chart and the CLI table all use ROLES."""
    ev = {"clean_acc": 0.9, "poison_acc": 0.8, "asr": 0.1, "confusion_clean": [[1, 0], [0, 1]]}
    demo = {"kind": "demo", **{r: dict(ev) for r in ("baseline", "teacher", "student", "finetuned")}}
    labels = [ROLES[r] for r in models_of(demo)]
    job = SimpleNamespace(id=3, kind="demo", label="", run_dir="", finished_at=None)
    _check([escape(x) for x in labels], audit_report_html(job, demo), "HTML report")
    _check(labels, " | ".join(r["model"] for r in compare_rows(demo, [])), "comparison")
    _check(labels, " | ".join(t.name for t in metric_bars(demo).data), "bar chart")
    _check(labels, report_table(demo), "CLI table")
    defend = {"method": "bcu", "family": "repairer", "suspect": ev, "repaired": ev, "method_wall_s": 1.0}
    html = audit_report_html(SimpleNamespace(id=4, kind="defend", label="", run_dir="", finished_at=None), defend)
    _check([escape(ROLES["teacher"]), escape(ROLES["repaired"])], html, "HTML report of a defend run")
