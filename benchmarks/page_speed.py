"""Page speed: time from navigation until a dashboard page is fully drawn, as a user sees it, on the
FIRST visit after a server start (nothing cached in the server), and after one widget change.

Two finished jobs in one data folder (made once, reused by later runs with the same --data-dir):
(a) the quick demo (`DemoConfig.preset(quick=True)`, run by a worker as the Home page's button does);
(b) a 10k-sample `audit` of the demo's teacher (saved as an uploaded model would be) on the demo's
    poisoned training set, clean pool and test set written as zips of PNG files.

Fully drawn: Streamlit reports the script as not running; nothing is stale, no spinner, no skeleton
(`stSkeleton`, the placeholder Streamlit shows until a lazily-loaded element such as a plotly chart
has its code); every plotly chart has drawn its SVG; every image has loaded (`complete`,
`naturalWidth > 0`); the page's h1 and its key element are there (a guard against timing a half-built
page). Elements appear in waves, so the condition must hold on every poll (25 ms apart) for 50 ms;
the time reported is that of the first of those polls.

The browser (`--browser`):
- `warm` (default), a returning user's: one persistent Chromium profile for the run, warmed once at
  the start by a throw-away dashboard on the same data folder (Home, then every measured page of
  every measured job, each fully drawn and its widget changed). Its HTTP and code caches then hold
  Streamlit's front-end code, including the chunks it loads only when a page needs them (plotly.js),
  which a browser downloads and compiles once, not per audit or page. Every server of the run listens
  on the same port, as the cache is keyed by URL. One warm-up serves every --tree: they all run this
  Python's Streamlit, so the same front-end files. Each measurement is a new tab, so a new renderer
  process: it does not keep code compiled by an earlier tab in memory, as a revisit in one tab does.
- `fresh`: a new browser context (empty cache) per measurement, a browser that has never seen the
  dashboard: every page also pays for that code.

Per (tree, job, page) and repeat: a fresh `python -m app --workers 0` from that checkout (`--tree`
adds a second one, e.g. the base commit: `git worktree add --detach /work/wt/speed-base main`; it
gets a copy of the data folder, `<data-dir>-<name>`, and each checkout's code writes its own runs'
views, as its jobs would have, before anything is measured), a
new tab that opens Home (its time is recorded: the server's one-time Python imports; `--cold` skips
it), then `page.goto` until fully drawn. Then, where the page has one, a widget change (Explain:
another image for the activation map; Candidates: the "Flagged only" toggle; Lesson: the trigger's
intensity, 100 % → 0, whose fragment redraws three models' answers and Grad-CAM), timed from the click
until the rerun has started (the script leaves `notRunning` or something goes stale; at most 1 s
of waiting) and the page is fully drawn again. Trees, jobs and pages are interleaved within every
repeat; medians are reported.

    .venv/bin/python benchmarks/page_speed.py [--tree /work/wt/speed-base] [--repeats 5]
        [--browser warm|fresh] [--data-dir /tmp/kdaudit-page-speed] [--smoke]
        [--pages results,candidates,explain,defenses,jobs,lesson] [--jobs demo,audit] [--cold] [--out PATH]

`--smoke` (benchmarks/common.py) stops after the first real step: a server on the data folder, with
no job made, and Home fully drawn once in a fresh browser (its JSON: <data-dir>/page_speed_smoke.json
unless --out says).

Prints a markdown table and writes benchmarks/results/page_speed.json (`--browser fresh`:
page_speed_fresh.json) with the browser mode, the sgemm rate (`common.sgemm_gflops`, measured in
the same run) and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.common import sgemm_gflops, smoke_args  # noqa: E402
from benchmarks.dashboard import CHROMIUM, FLAGS, free_port, start_dashboard, stop_dashboard  # noqa: E402
from kdcore.config import to_dict  # noqa: E402
from kdcore.data.imageset import ImageSet  # noqa: E402
from kdcore.io import atomic_write_json  # noqa: E402
from kdcore.jobs.store import JobStore  # noqa: E402

TIMEOUT_MS = 180_000
POLL_MS = 25  # how often the page is checked for a full render
HOLD_MS = 50  # ... and for how long it must stay fully rendered: elements appear in waves
RERUN_START_MS = 1000  # the longest wait for a widget change's rerun to show that it started
VIEWPORT = {"width": 1400, "height": 1000}
HOME = ("home", "is this model backdoored", ".st-key-demo_quick", 1)
# page: (URL path, title in its h1, key element, how many). The key element is drawn late in the page;
# on Explain it is the norm histograms (SVG now, a plotly chart in older checkouts).
PAGES: dict[str, tuple[str, str, str, int]] = {
    "results": ("results", "Results", '[data-testid="stDownloadButton"]', 1),
    "candidates": ("candidates", "Poison candidates", '[data-testid="stImage"] img', 4),
    "explain": ("explain", "Explain", ".st-key-explain_norms svg, .st-key-explain_norms_chart .js-plotly-plot", 1),
    "defenses": ("defenses", "Defenses", '[data-testid="stButton"]', 1),
    "jobs": ("jobs", "Jobs", '[data-testid="stCaptionContainer"]', 2),
    # the Lesson teaches on the demo only; its widget is the trigger's intensity (issue 23: < 0.5 s at 170 GFLOP/s)
    "lesson": ("lesson", "Lesson", ".st-key-lesson_trigger_preds img", 4),
}
DEMO_ONLY = {"lesson"}
# Full render (see the module docstring), held for HOLD_MS: false, or [first poll, this poll] in
# performance.now() ms. `key` names the window property that remembers the first poll, one per wait.
RENDERED_JS = """([title, sel, n, hold, key]) => {
  const now = performance.now();
  const drawn = (() => {
    const app = document.querySelector('[data-testid="stApp"]');
    if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
    const busy = '[data-stale="true"], [data-testid="stSpinner"], [data-testid="stSkeleton"]';
    if (document.querySelector(busy)) return false;
    for (const c of document.querySelectorAll('[data-testid="stPlotlyChart"]'))
      if (!c.querySelector('.js-plotly-plot .main-svg')) return false;
    for (const img of document.querySelectorAll('[data-testid="stImage"] img'))
      if (!img.complete || img.naturalWidth === 0) return false;
    const h1 = [...document.querySelectorAll('h1')].some(e => e.innerText.includes(title));
    return h1 && document.querySelectorAll(sel).length >= n;
  })();
  if (!drawn) { delete window[key]; return false; }
  if (window[key] === undefined) window[key] = now;
  return now - window[key] >= hold ? [window[key], now] : false;
}"""
# Set before a widget change: a flag that turns true as soon as the rerun shows (the script leaves
# notRunning or an element goes stale). An observer, not polling: a short rerun can fall between polls.
WATCH_RERUN_JS = """() => {
  window.__kdRerun = false;
  window.__kdWatchAt = performance.now();
  const started = () => document.querySelector('[data-testid="stApp"]')
      .getAttribute('data-test-script-state') !== 'notRunning'
    || document.querySelector('[data-stale="true"]') !== null;
  const obs = new MutationObserver(() => {
    if (started()) { window.__kdRerun = true; obs.disconnect(); }
  });
  obs.observe(document.body, {subtree: true, childList: true, attributes: true,
                              attributeFilter: ['data-test-script-state', 'data-stale']});
}"""
RERUN_STARTED_JS = "(limit) => window.__kdRerun || performance.now() - window.__kdWatchAt > limit"


# ----------------------------------------------------------------------------- the two jobs


def _worker(data: Path, tree: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "kdcore", "worker", "--data-dir", str(data), "--drain", "--device", "cpu"]
    subprocess.run(cmd, cwd=tree, env=env, check=True)


def _write_pngs(ds: ImageSet, dest: Path, folder: str, labelled: bool, names: tuple[str, ...] = ()) -> Path:
    """A zip of PNG files: `folder/<class name>/<i>.png` when labelled, else `folder/<i>.png`."""
    with zipfile.ZipFile(dest, "w") as z:
        for i in range(len(ds)):
            img = ds.images[i].numpy()
            buf = _png_bytes(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
            sub = f"{names[int(ds.labels[i])]}/" if labelled else ""
            z.writestr(f"{folder}/{sub}{folder}_{i:05d}.png", buf)
    return dest


def _png_bytes(a) -> bytes:
    import io

    out = io.BytesIO()
    Image.fromarray(a).save(out, format="PNG")
    return out.getvalue()


def make_jobs(data: Path, tree: Path) -> dict[str, int]:
    """The quick demo (job 1) and a 10k audit of its teacher (job 2), made once per data folder."""
    store = JobStore(data)
    jobs = {j.kind: j for j in store.list() if j.state == "succeeded"}
    if "demo" not in jobs:
        from kdcore.runs import DemoConfig

        cfg = to_dict(DemoConfig.preset(True, seed=0))
        cfg["cache_dir"] = str(data / "cache")
        store.submit("demo", cfg, label="quick demo")
        _worker(data, tree)
        jobs = {j.kind: j for j in store.list() if j.state == "succeeded"}
    if "audit" not in jobs:
        from kdcore.config import from_dict
        from kdcore.models.loading import save_model
        from kdcore.runs import DemoConfig
        from kdcore.runs.rebuild import load_context
        from kdcore.runs.scenario import build_demo_data

        demo = jobs["demo"]
        cfg = from_dict(DemoConfig, {k: v for k, v in store.get(demo.id).config.items() if k != "kind"})
        d = build_demo_data(cfg)
        ctx = load_context(demo.run_dir, device="cpu")
        files = data / "upload"
        files.mkdir(exist_ok=True)
        # a class name is a folder name in the zips: "T-shirt/top" cannot be one
        names = tuple(n.replace("/", "-") for n in ctx.spec.names)
        model = save_model(ctx.teacher, ctx.spec.replace(class_names=names), files / "teacher.safetensors")
        audit = {
            "model": str(model),
            "train": str(_write_pngs(d.poisoned, files / "train.zip", "train", True, names)),
            "unlabeled": str(_write_pngs(d.clean_pool, files / "pool.zip", "pool", False)),
            "test": str(_write_pngs(d.test, files / "test.zip", "test", True, names)),
            "trigger": cfg.trigger_value.to_dict(),
            "device": "cpu",
            "kd": to_dict(cfg.kd),
        }
        store.submit("audit", audit, label="10k audit")
        _worker(data, tree)
        jobs = {j.kind: j for j in store.list() if j.state == "succeeded"}
    return {"demo": jobs["demo"].id, "audit": jobs["audit"].id}


WRITE_VIEWS = """
import json, shutil, sys, time
from kdcore.runs.rebuild import load_context
from kdcore.views import write_views
out = {}
for kind, run_dir in json.loads(sys.argv[1]).items():
    shutil.rmtree(run_dir + "/view", ignore_errors=True)  # nothing another checkout wrote
    out[kind] = round(write_views(load_context(run_dir, "cpu")), 2)
print(json.dumps(out))
"""


def write_job_views(data: Path, job_ids: dict[str, int], tree: Path) -> dict[str, float]:
    """(Re)write each job's view/ with checkout `tree`'s code, as the end of its jobs does
    (`kdcore.views.write_views`), in a fresh process (so with the one-time import of
    pytorch-grad-cam), timed: what the precompute adds to a job."""
    store = JobStore(data)
    runs = json.dumps({kind: store.get(i).run_dir for kind, i in job_ids.items()})
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-c", WRITE_VIEWS, runs], cwd=tree, env=env, check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def tree_data(data: Path, name: str) -> Path:
    """A copy of the data folder for another checkout (`<data>-<name>`, made once), so each checkout's
    pages read the views its own code writes: the run directories move, and the job store's and the
    runs' JSON files say where they are now (inputs outside runs/ stay where they are)."""
    copy = data.with_name(f"{data.name}-{name}")
    if not (copy / "jobs.sqlite3").exists():
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(data, copy, ignore=shutil.ignore_patterns("server-*.log"))
        old, new = f"{data / 'runs'}/", f"{copy / 'runs'}/"
        with sqlite3.connect(copy / "jobs.sqlite3") as db:
            db.execute("UPDATE jobs SET run_dir = replace(run_dir, ?, ?)", (old, new))
        for p in (copy / "runs").glob("*/*.json"):
            p.write_text(p.read_text().replace(old, new))
    return copy


# ----------------------------------------------------------------------------- one measurement


def wait_rendered(page, title: str, sel: str, n: int) -> float:
    """Wait until the page is fully drawn (RENDERED_JS); the `time.perf_counter()` of the first poll
    that saw it so."""
    key = f"__kdDrawn{time.perf_counter_ns()}"
    handle = page.wait_for_function(RENDERED_JS, arg=[title, sel, n, HOLD_MS, key], timeout=TIMEOUT_MS, polling=POLL_MS)
    first, now = handle.json_value()
    return time.perf_counter() - (now - first) / 1000


def _change_widget(page, name: str) -> bool:
    """One widget change on `name`'s page; False when the page has none to change."""
    if name == "explain":
        box = page.locator(".st-key-explain_act_image")
        box.locator("input").click()  # a react-aria combobox: focus it, the arrow key opens the list
        page.keyboard.press("ArrowDown")
        opts = page.locator('[role="option"]')
        opts.first.wait_for()
        if opts.count() < 2:
            return False
        opts.nth(1).click()
        return True
    if name == "candidates":
        page.locator(".st-key-filter-flagged label").first.click()
        return True
    if name == "lesson":  # the trigger's intensity from 100 % to 0: the fragment reruns, three models redraw
        page.locator(".st-key-lesson_intensity input[type=range]").focus()
        page.keyboard.press("Home")
        return True
    return False


def measured(kind: str, name: str) -> bool:
    """Whether page `name` is measured on job `kind` (the Lesson only on the demo)."""
    return name not in DEMO_ONLY or kind == "demo"


def open_home(page, url: str) -> float:
    """Home until fully drawn, in seconds."""
    path, title, sel, n = HOME
    t0 = time.perf_counter()
    page.goto(f"{url}/{path}")
    return wait_rendered(page, title, sel, n) - t0


def visit(page, url: str, name: str, job_id: int) -> tuple[float, float | None]:
    """(`name`'s page for job `job_id` until fully drawn, then its widget change until fully drawn
    again or None when it has none) in seconds."""
    path, title, sel, n = PAGES[name]
    t0 = time.perf_counter()
    page.goto(f"{url}/{path}?job={job_id}")
    first = wait_rendered(page, title, sel, n) - t0
    page.evaluate(WATCH_RERUN_JS)
    t0 = time.perf_counter()
    if not _change_widget(page, name):
        return first, None
    page.wait_for_function(RERUN_STARTED_JS, arg=RERUN_START_MS, timeout=TIMEOUT_MS, polling=10)
    return first, wait_rendered(page, title, sel, n) - t0


@contextmanager
def new_tab(browser, warm: bool) -> Iterator:
    """A new tab: in `browser`, the run's persistent context, when `warm`; else `browser` is a
    Browser and the tab gets a new context of its own (an empty HTTP cache), closed with it."""
    ctx = browser if warm else browser.new_context(viewport=VIEWPORT)
    page = ctx.new_page()
    try:
        yield page
    finally:
        (page if warm else ctx).close()


def warm_up(ctx, data: Path, port: int, job_ids: dict[str, int], kinds: list[str], pages: list[str]) -> float:
    """A returning user's browser: a throw-away dashboard, and in one tab of the persistent context
    `ctx` Home and every page of every job, each fully drawn and its widget changed. Seconds taken."""
    t0 = time.perf_counter()
    proc, url = start_dashboard(data, data / "server-warm-up.log", workers=0, port=port)
    try:
        with new_tab(ctx, warm=True) as page:
            open_home(page, url)
            for kind in kinds:
                for name in pages:
                    if measured(kind, name):
                        visit(page, url, name, job_ids[kind])
    finally:
        stop_dashboard(proc)
    return time.perf_counter() - t0


def measure(
    browser, warm: bool, url: str, name: str, job_id: int, cold: bool
) -> tuple[float | None, float, float | None]:
    """(Home's time when visited first, the page's first visit, one widget change) in seconds, in a
    new tab (see `new_tab`).

    Unless `cold`, the tab opens Home first, as a user does: the server process then has its Python
    modules imported, but nothing of the run is cached yet."""
    with new_tab(browser, warm) as page:
        home = None if cold else open_home(page, url)
        first, widget = visit(page, url, name, job_id)
        return home, first, widget


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 2) if xs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", default=[], help="another checkout to measure (repeatable)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-dir", default="/tmp/kdaudit-page-speed")
    ap.add_argument("--pages", default=",".join(PAGES))
    ap.add_argument("--jobs", default="demo,audit")
    ap.add_argument("--cold", action="store_true", help="measure the server's very first page (no Home visit first)")
    ap.add_argument(
        "--browser",
        choices=("warm", "fresh"),
        default="warm",
        help="warm: one persistent profile, warmed once (a returning user); fresh: a new context per measurement",
    )
    ap.add_argument(
        "--out", help="the JSON (default: benchmarks/results/page_speed.json, page_speed_fresh.json if fresh)"
    )
    smoke_args(ap, results=False)
    a = ap.parse_args()
    if a.out is None and a.smoke:  # a smoke run never writes over benchmarks/results
        a.out = str(Path(a.data_dir) / "page_speed_smoke.json")
    elif a.out is None:  # a fresh-browser run does not overwrite the warm one's results
        a.out = str(ROOT / "benchmarks" / "results" / f"page_speed{'' if a.browser == 'warm' else '_fresh'}.json")
    trees = {"this": ROOT, **{Path(t).name: Path(t).resolve() for t in a.tree}}
    data = Path(a.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    if a.smoke:
        smoke(a, data)
        return
    t0 = time.perf_counter()
    job_ids = make_jobs(data, ROOT)
    setup_s = time.perf_counter() - t0
    datas = {name: data if name == "this" else tree_data(data, name) for name in trees}
    views_s = {name: write_job_views(datas[name], job_ids, tree) for name, tree in trees.items()}
    kinds = [k for k in a.jobs.split(",") if k]
    pages = [p for p in a.pages.split(",") if p]
    gflops = sgemm_gflops(torch.device("cpu"))
    load_before = os.getloadavg()
    times: dict[tuple[str, str, str], dict[str, list[float]]] = {}

    from playwright.sync_api import sync_playwright

    warm = a.browser == "warm"
    port = free_port()  # one for every server of the run: the browser's cache is keyed by URL
    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="kdaudit-page-speed-profile-") as profile:
        if warm:
            browser = p.chromium.launch_persistent_context(
                user_data_dir=profile, executable_path=CHROMIUM, args=FLAGS, viewport=VIEWPORT
            )
            warm_s = round(warm_up(browser, data, port, job_ids, kinds, pages), 1)
            print(f"browser warmed in {warm_s} s", flush=True)
        else:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            warm_s = None
        for rep in range(a.repeats):
            for tree_name, tree in trees.items():
                for kind in kinds:
                    for name in (n for n in pages if measured(kind, n)):
                        log = data / f"server-{tree_name}.log"
                        proc, url = start_dashboard(datas[tree_name], log, workers=0, tree=tree, port=port)
                        try:
                            home, first, widget = measure(browser, warm, url, name, job_ids[kind], a.cold)
                        finally:
                            stop_dashboard(proc)
                        rec = times.setdefault((tree_name, kind, name), {"first": [], "widget": [], "home": []})
                        rec["first"].append(first)
                        if home is not None:
                            rec["home"].append(home)
                        if widget is not None:
                            rec["widget"].append(widget)
                        w = "" if widget is None else f", widget {widget:.2f} s"
                        print(f"rep {rep + 1} {tree_name:>10} {kind:>5} {name:>10}: first {first:.2f} s{w}", flush=True)
            # after every repeat, so a run stopped early still leaves its medians so far
            report(a, trees, kinds, pages, times, gflops, load_before, job_ids, setup_s, views_s, warm_s, rep + 1)
        browser.close()


def smoke(a, data: Path) -> None:
    """The first real step only: a server on `data` (no job made) and Home fully drawn once, in a
    fresh browser; reported as a page `home` of a job `none`."""
    from playwright.sync_api import sync_playwright

    a.browser, a.repeats = "fresh", 1
    gflops, load_before = sgemm_gflops(torch.device("cpu"), smoke=True), os.getloadavg()
    proc, url = start_dashboard(data, data / "server-smoke.log", workers=0)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            with new_tab(browser, warm=False) as page:
                home = open_home(page, url)
            browser.close()
    finally:
        stop_dashboard(proc)
    times = {("this", "none", "home"): {"first": [home], "widget": [], "home": []}}
    report(a, {"this": ROOT}, ["none"], ["home"], times, gflops, load_before, {}, 0.0, {}, None, 1)


def report(a, trees, kinds, pages, times, gflops, load_before, job_ids, setup_s, views_s, warm_s, done: int) -> None:
    """Print the table of medians and write the JSON."""
    load_after = os.getloadavg()
    rows = [
        {
            "tree": t,
            "job": k,
            "page": n,
            "first_s": _median(v["first"]),
            "widget_s": _median(v["widget"]),
            "first_all_s": [round(x, 2) for x in v["first"]],
            "widget_all_s": [round(x, 2) for x in v["widget"]],
            "home_before_s": _median(v["home"]),
        }
        for (t, k, n), v in times.items()
    ]
    scale = 170.0 / gflops  # the targets are for a 170 GFLOP/s machine
    load = f"load {load_before[0]:.2f} → {load_after[0]:.2f}"
    browser = f"{a.browser} browser" + (f" (warmed in {warm_s} s)" if warm_s is not None else "")
    print(f"\n{browser}; sgemm {gflops:.0f} GFLOP/s (targets scaled ×{scale:.2f}); {load}; view written in {views_s} s")
    print("| job | page | " + " | ".join(f"first visit ({t}) | widget ({t})" for t in trees) + " |")
    print("|---|---|" + "---|---|" * len(trees))
    for kind in kinds:
        for name in (n for n in pages if measured(kind, n)):
            cells = []
            for t in trees:
                r = next(r for r in rows if (r["tree"], r["job"], r["page"]) == (t, kind, name))
                cells += [f"{r['first_s']:.2f} s", "—" if r["widget_s"] is None else f"{r['widget_s']:.2f} s"]
            print(f"| {kind} | {name} | " + " | ".join(cells) + " |", flush=True)
    atomic_write_json(
        Path(a.out),
        {
            "sgemm_gflops": round(gflops, 1),
            "target_scale": round(scale, 3),
            "targets_s": {
                "demo": 2.0 * scale,
                "audit": 3.0 * scale,
                "widget": 1.0 * scale,
                "lesson_widget": 0.5 * scale,
            },
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            "cpus": os.cpu_count(),
            "repeats": a.repeats,
            "repeats_done": done,
            "browser": a.browser,
            "warm_up_s": warm_s,
            "cold": a.cold,
            "trees": {k: str(v) for k, v in trees.items()},
            "jobs": job_ids,
            "setup_s": round(setup_s, 1),
            "views_s": views_s,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
