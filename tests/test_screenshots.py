"""The README's screenshots show today's pages: one per page of the navigation, named after its title
(`screenshot_name`, as the browser tests write them), shown under that title, and no file left over
from a page that was renamed or removed. Regenerate them with
`KDAUDIT_SCREENSHOTS=docs/screenshots ./test.sh tests/e2e/test_browser.py`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import screenshot_name

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "screenshots"


def page_titles() -> list[str]:
    """The `title=` of every st.Page in streamlit_app.py, read from its source (no Streamlit run)."""
    tree = ast.parse((ROOT / "streamlit_app.py").read_text())
    return [
        kw.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "Page"
        for kw in node.keywords
        if kw.arg == "title"
    ]


def readme_shots() -> list[tuple[str, str]]:
    """(alt text, file name) of every image under docs/screenshots/ in the README."""
    return re.findall(r"!\[([^\]]+)\]\(docs/screenshots/([^)]+)\)", (ROOT / "README.md").read_text())


def test_the_navigation_has_the_nine_pages():
    titles = ["Home", "New audit", "Models", "Jobs", "Results", "Defenses", "Poison candidates", "Explain", "Lesson"]
    assert page_titles() == titles


def test_every_page_has_its_screenshot_under_its_title():
    shown = dict(readme_shots())
    assert sorted(shown) == sorted(page_titles())
    for title, file in shown.items():
        assert file == screenshot_name(title), (title, file)
        assert (SHOTS / file).is_file(), file


def test_no_screenshot_of_a_page_that_is_gone():
    assert sorted(p.name for p in SHOTS.glob("*.png")) == sorted(file for _, file in readme_shots())
