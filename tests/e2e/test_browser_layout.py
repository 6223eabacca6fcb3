"""Layout in a real browser at 1280 px and 1920 px (issue 14): Results, Candidates and Explain of a
small finished digits audit (files in class folders, so samples have file names), screenshotted,
with no label or number cut off and the same sample name in the gallery and in Explain. And a deep
link as the first page a fresh server serves gets st.navigation's app (sidebar titles, wide layout).

The audit is queued straight into the store of this module's own dashboard (the cheapest job with
file names: 2 + 1 epochs on 1,000 digits), not a second quick demo."""

from __future__ import annotations

import pytest

from kdcore.candidates import read_candidates
from kdcore.jobs.store import JobStore
from tests.conftest import audit_config
from tests.e2e.conftest import SHOTS, open_ready, wait_job

WIDTHS = (1280, 1920)

# Elements holding text that Streamlit cuts with an ellipsis when it does not fit: every one must fit.
CUT_TEXT = """(sel) => [...document.querySelectorAll(sel)]
    .filter(e => [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim()))
    .filter(e => e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1)
    .map(e => e.textContent.trim())"""
METRICS = '[data-testid="stMetricValue"] *, [data-testid="stMetricDelta"] *, [data-testid="stMetricLabel"] *'


NAV_TITLES = ["Home", "New audit", "Models", "Jobs", "Results", "Defenses", "Poison candidates", "Explain", "Lesson"]


def test_a_deep_link_first_gets_the_navigation_and_wide_layout(server, page):
    # First in this module: no browser session has reached this server yet (start_dashboard only asked
    # /_stcore/health). With the pages in a `pages/` folder, Streamlit served this first deep link as
    # a v1 multipage page: file names in the sidebar, the centred layout, streamlit_app.py bypassed.
    page.set_viewport_size({"width": 1400, "height": 1000})
    open_ready(page, f"{server['url']}/jobs?job=1", '[data-testid="stSidebarNavLink"]', len(NAV_TITLES))
    page.get_by_role("heading", name="Jobs").first.wait_for()
    links = page.locator('[data-testid="stSidebarNavLink"]').all_inner_texts()
    assert [t.strip().splitlines()[-1].strip() for t in links] == NAV_TITLES, links  # after each icon
    assert page.locator('[data-testid="stSidebarNav"]').get_by_text("new_audit").count() == 0
    width = page.locator('[data-testid="stMainBlockContainer"]').evaluate("e => e.clientWidth")
    assert width > 900, f"main column {width} px wide at 1400 px: not the wide layout"


@pytest.fixture(scope="module")
def audit(server, digits_files):
    """A finished audit of the digits files, run by the dashboard's own worker: (job id, its candidates)."""
    store = JobStore(server["data"])
    job = store.submit("audit", audit_config(digits_files, kd_epochs=2, ft_epochs=1), label="layout audit")
    wait_job(server["data"], job.id)
    rows = read_candidates(f"{store.get(job.id).run_dir}/candidates.csv")
    assert any(r.flagged for r in rows), "the audit should flag some samples for the gallery"
    return job.id, rows


@pytest.mark.parametrize("width", WIDTHS)
def test_pages_fit_and_name_samples_alike(server, page, audit, width):
    url = server["url"]
    job_id, rows = audit
    top = rows[0]
    page.set_viewport_size({"width": width, "height": 1000})

    open_ready(page, f"{url}/results?job={job_id}", ".kd-cm table", 2)
    page.locator('[data-testid="stMetricLabel"]', has_text="flagged").first.scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / f"layout_results_{width}.png", full_page=True)
    assert page.evaluate(CUT_TEXT, METRICS) == []
    # every confusion table fits its column: no cell scrolled or cut off
    overflow = "els => els.filter(t => t.scrollWidth > t.parentElement.clientWidth + 1).length"
    assert page.locator(".kd-cm table").count() >= 2
    assert page.eval_on_selector_all(".kd-cm table", overflow) == 0

    open_ready(page, f"{url}/candidates?job={job_id}", '[class*="st-key-card-"] [data-testid="stImage"] img')
    toggle = page.locator(".st-key-filter-flagged")
    toggle.get_by_text("Flagged only", exact=True).wait_for()
    assert page.evaluate(CUT_TEXT, ".st-key-filter-flagged *") == []  # the label is whole, not "F…"
    assert page.evaluate(CUT_TEXT, METRICS) == []  # "of 1,000 (p %)" under the flagged count fits
    assert page.evaluate(CUT_TEXT, '.st-key-refine *, .st-key-export-verdicts *, [class*="st-key-bulk-"] *') == []
    assert page.locator(".st-key-score-histogram svg rect").count() >= 1  # the score histogram above the gallery
    card = page.locator(f".st-key-card-{top.index}")
    gallery_name = card.locator('[data-testid="stImageCaption"]').first.inner_text().strip()
    page.screenshot(path=SHOTS / f"layout_candidates_{width}.png", full_page=True)
    assert gallery_name == top.name and " · #" in gallery_name

    open_ready(page, f"{url}/explain?job={job_id}", '[data-testid="stImage"] img', 4)
    page.get_by_text("Grad-CAM").first.wait_for()
    picker = page.locator(".st-key-explain_pick").inner_text()
    assert f"poison candidate #1 · {gallery_name}" in picker, picker
    page.get_by_text(f"poison candidate #1 · {gallery_name}", exact=False).first.wait_for()
    assert page.get_by_text("clean · label", exact=False).count() == 0
    page.screenshot(path=SHOTS / f"layout_explain_{width}.png", full_page=True)


# Per candidate card: its width, and the top edge and width of each verdict button (poison / clean / unsure).
VERDICT_TOPS = """(sel) => [...document.querySelectorAll(sel)].map(card => {
    const buttons = [...card.querySelectorAll('[data-testid="stButtonGroup"] button')];
    return {
        width: Math.round(card.getBoundingClientRect().width),
        tops: buttons.map(b => Math.round(b.getBoundingClientRect().top)),
        widths: buttons.map(b => Math.round(b.getBoundingClientRect().width)),
    };
})"""


@pytest.mark.parametrize("width", (1280, 1400, 1920))
def test_candidate_verdict_buttons_sit_in_one_row(server, page, audit, width):
    # At 1400 px the three buttons of a card stacked one under another (issue 22).
    job_id, _ = audit
    page.set_viewport_size({"width": width, "height": 1000})
    buttons = '[class*="st-key-card-"] [data-testid="stButtonGroup"] button'
    open_ready(page, f"{server['url']}/candidates?job={job_id}", buttons, 3)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000)
    cards = page.evaluate(VERDICT_TOPS, '[class*="st-key-card-"]')
    assert cards, "no candidate card drawn"
    stacked = [c for c in cards if len(c["tops"]) != 3 or max(c["tops"]) - min(c["tops"]) > 2]
    assert not stacked, f"at {width} px, cards whose verdict buttons are not in one row: {stacked[:3]}"
    assert all(sum(c["widths"]) < c["width"] for c in cards), cards[:3]  # the row fits inside its card
    assert page.evaluate(CUT_TEXT, f"{buttons} *") == []  # each label whole
