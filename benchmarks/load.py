"""Load: browser sessions on the dashboard while workers run audit jobs; per-page render times and
session isolation.

`python -m app` (dashboard + 2 workers, CPU, loopback only, a fresh KDAUDIT_HOME in a temporary
folder) is driven by Playwright in Debian's headless Chromium, as tests/e2e/test_browser.py does.

1. A poisoned digits teacher (8×8, paper-cnn) and its train / test / unlabelled sets are written to
   the temporary folder; one seed audit runs so Results and Explain have a finished job to show.
2. Baseline: one session, no job running, walks New audit (uploads, widgets) → Home → Jobs →
   Results → Explain → New audit, twice (the first walk fills the dashboard's caches).
3. Load: 10 small audits (500 unlabelled 8×8 images, 150 distillation + 2 fine-tuning epochs, seeds
   1..10) are queued, and 5 independent browser contexts (separate Streamlit sessions) walk the
   same pages in rounds until every job has finished (at least one round, at most --max-rounds).
   Each session uploads its own distinctly named model (its spec carries session-specific class
   names) and image zip, and sets session-specific widget values.
4. Every page of every session is checked: it must show none of another session's file names,
   class names, labels or widget values, and New audit must show the session's own values back.

Render time of a page: from the click on its sidebar link (or `page.goto` for the first page) until
Streamlit reports the script as not running (`data-test-script-state="notRunning"`, the state its
"Running…" indicator shows), no element is stale, and the page's main element is present.

    .venv/bin/python benchmarks/load.py [--sessions 5] [--jobs 10] [--workers 2] [--budget 480] [--smoke]

`--smoke` (benchmarks/common.py) stops after the first real step: the dashboard up, with no worker
and no job, and one session's first page (Home) measured.

Prints a markdown table and writes benchmarks/results/load.json. Exits 1 if a session saw another
session's data or a job did not succeed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.common import sgemm_gflops, smoke_args  # noqa: E402
from benchmarks.dashboard import CHROMIUM, FLAGS, start_dashboard, stop_dashboard  # noqa: E402
from kdcore.data.builtin import load_digits  # noqa: E402
from kdcore.io import atomic_write_json  # noqa: E402
from kdcore.jobs.store import JobStore  # noqa: E402
from kdcore.models.loading import save_model  # noqa: E402
from kdcore.models.registry import build_model  # noqa: E402
from kdcore.models.spec import ModelSpec  # noqa: E402
from kdcore.train import TrainConfig, fit, seeded_model  # noqa: E402
from kdcore.triggers import BadNets, poison_dataset  # noqa: E402

SPEC = ModelSpec("paper-cnn", 10, (1, 8, 8), (0.3,), (0.4,))
TRIGGER = BadNets(target=7, size=2, margin=0)
PAGE_TIMEOUT_MS = int(os.environ.get("KDAUDIT_LOAD_PAGE_TIMEOUT_MS", "180000"))
SHOTS = ROOT / "build" / "load"  # a screenshot of a session that failed

# Page → (sidebar link text, title in its h1, CSS selector of its main element, how many).
# Results: the audit's plots (metric bars, confusion matrices); Explain: Grad-CAM images and the
# activation-norm histograms; Jobs: the job list's summary caption, drawn once the fragment ran.
PAGES: dict[str, tuple[str, str, str, int]] = {
    "new_audit": ("New audit", "New audit", ".st-key-model_file", 1),
    "home": ("Home", "is this model backdoored", ".st-key-demo_quick", 1),
    "jobs": ("Jobs", "Jobs", '[data-testid="stCaptionContainer"]', 2),
    "results": ("Results", "Results", ".js-plotly-plot", 6),
    "explain": ("Explain", "Explain", ".js-plotly-plot", 1),
}
WALK = ["home", "jobs", "results", "explain", "new_audit"]

READY_JS = """([title, sel, n]) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (document.querySelector('[data-stale="true"]')) return false;
  const h1 = [...document.querySelectorAll('h1')].some(e => e.innerText.includes(title));
  return h1 && document.querySelectorAll(sel).length >= n;
}"""
# Everything a session's page carries: its text, the values inside inputs, and the title / aria-label
# attributes (the uploader shows "sess1ab...images.zip" and keeps the whole name in its title).
VISIBLE_JS = """() => [document.body.innerText,
  ...[...document.querySelectorAll('input, textarea')].map(e => e.value),
  ...[...document.querySelectorAll('[title], [aria-label]')].map(
    e => (e.getAttribute('title') || '') + ' ' + (e.getAttribute('aria-label') || ''))].join('\\n')"""


# ----------------------------------------------------------------------------- inputs and jobs


def _png(path: Path, img: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img[0].numpy()).save(path)


def _zip(src: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as z:
        for p in sorted(src.rglob("*.png")):
            z.write(p, f"{src.name}/{p.relative_to(src).as_posix()}")
    return dest


def make_inputs(root: Path, epochs: int = 15) -> dict:
    """Digits: 1000 training images (60 poisoned) / 500 unlabelled / 297 test; a poisoned teacher
    (trained for `epochs`)."""
    digits = load_digits()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(digits), generator=g)
    train, unl, test = digits.subset(perm[:1000]), digits.subset(perm[1000:1500]), digits.subset(perm[1500:])
    poisoned, _ = poison_dataset(train, TRIGGER, 60, g)
    teacher = seeded_model(lambda: build_model(SPEC), 0)
    teacher, _ = fit(teacher, SPEC, poisoned, TrainConfig(epochs=epochs, batch_size=50), torch.device("cpu"))
    for name, ds in (("train", poisoned), ("test", test)):
        for i in range(len(ds)):
            _png(root / name / str(int(ds.labels[i])) / f"{name[:2]}{i:04d}.png", ds.images[i])
    for i in range(len(unl)):
        _png(root / "unlabeled" / f"u{i:04d}.png", unl.images[i])
    return {
        "teacher": teacher.eval(),
        "model": save_model(teacher, SPEC, root / "teacher.safetensors"),
        "train": _zip(root / "train", root / "train.zip"),
        "test": _zip(root / "test", root / "test.zip"),
        "unlabeled": root / "unlabeled",
    }


def audit_config(files: dict, seed: int, kd_epochs: int) -> dict:
    return {
        "model": str(files["model"]),
        "unlabeled": str(files["unlabeled"]),
        "train": str(files["train"]),
        "test": str(files["test"]),
        "device": "cpu",
        "seed": seed,  # a different seed per job: no job reuses another's stage folders
        "trigger": TRIGGER.to_dict(),
        "kd": {
            "distill": {"epochs": kd_epochs, "batch_size": 64},
            "finetune": {"epochs": 2, "lr": 1e-4, "val_fraction": 0.1, "patience": 0},
        },
    }


def wait_jobs(store: JobStore, ids: list[int], deadline: float) -> None:
    while time.monotonic() < deadline:
        if all(store.get(i).terminal for i in ids):
            return
        time.sleep(1.0)


# ----------------------------------------------------------------------------- the dashboard


@dataclass
class Session:
    """One browser context = one Streamlit session, with values no other session uses."""

    name: str
    index: int
    root: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    times: list[dict] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    own_checks: int = 0
    persisted: list[bool] = field(default_factory=list)

    @property
    def token(self) -> str:
        """In every string only this session puts on a page: file names, class names, label."""
        return f"{self.name}{self.tag}"

    @property
    def model_file(self) -> str:
        return f"{self.token}-model.safetensors"

    @property
    def images_file(self) -> str:
        return f"{self.token}-images.zip"

    @property
    def label(self) -> str:
        return f"audit of {self.token}"

    @property
    def class_names(self) -> list[str]:
        return [f"{self.token}c{j}" for j in range(SPEC.num_classes)]

    @property
    def trigger_target(self) -> int:
        return self.index % SPEC.num_classes

    @property
    def trigger_size(self) -> int:
        return 11 + self.index  # the default is 3; 11.. are used by no other session

    def write_files(self, teacher: torch.nn.Module, unlabeled: Path) -> None:
        spec = ModelSpec(SPEC.arch, SPEC.num_classes, SPEC.input_shape, SPEC.mean, SPEC.std, tuple(self.class_names))
        save_model(teacher, spec, self.root / self.model_file)
        with zipfile.ZipFile(self.root / self.images_file, "w") as z:
            for p in sorted(unlabeled.glob("*.png"))[: 40 + self.index]:  # distinct content too
                z.write(p, f"clean/{p.name}")


async def wait_ready(page, key: str) -> None:
    _, title, sel, n = PAGES[key]
    await page.wait_for_function(READY_JS, arg=[title, sel, n], timeout=PAGE_TIMEOUT_MS, polling=50)


async def settle(page) -> None:
    """After a widget change: let the rerun start, then wait until it is done."""
    await page.wait_for_timeout(300)
    await page.wait_for_function(
        "() => document.querySelector('[data-testid=\"stApp\"]')?.getAttribute('data-test-script-state')"
        " === 'notRunning'",
        timeout=PAGE_TIMEOUT_MS,
        polling=50,
    )


class Walker:
    def __init__(self, s: Session, page, url: str, others: list[Session], store: JobStore, phase: str):
        self.s, self.page, self.url, self.others, self.store, self.phase = s, page, url, others, store, phase

    async def visit(self, key: str, rnd: int, first: bool = False) -> None:
        busy, t0 = self.running(), time.perf_counter()
        if first:
            await self.page.goto(self.url if key == "home" else f"{self.url}/{key}")
        else:
            nav = self.page.locator('[data-testid="stSidebarNav"]')
            await nav.locator("a").filter(has_text=PAGES[key][0]).first.click()  # no title is part of another
        await wait_ready(self.page, key)
        self.record("first_load" if first else key, rnd, time.perf_counter() - t0, busy)
        await self.check_isolation(key, rnd)

    def running(self) -> int:
        return sum(j.state == "running" for j in self.store.list())

    def record(self, key: str, rnd: int, seconds: float, running_at_start: int) -> None:
        running = max(running_at_start, self.running())
        self.s.times.append(
            {"phase": self.phase, "round": rnd, "page": key, "s": round(seconds, 3), "jobs_running": running}
        )

    async def check_isolation(self, key: str, rnd: int) -> None:
        seen = await self.page.evaluate(VISIBLE_JS)
        for o in self.others:
            if o.token in seen:
                self.s.violations.append(f"{self.phase} round {rnd}: {key} shows {o.name}'s data ({o.token!r})")
        if key == "new_audit":
            # widget values left on the page are the session's own or the defaults, never another's
            for widget, own, default in (("trigger_size", self.s.trigger_size, 3),):
                box = self.page.locator(f".st-key-{widget} input")
                if await box.count():
                    v = int(await box.input_value())
                    if v not in (own, default):
                        self.s.violations.append(f"{self.phase} round {rnd}: {widget} is {v} (own {own})")

    async def fill_new_audit(self, rnd: int) -> None:
        """Upload this session's files, set its widgets, and read them back."""
        s, page = self.s, self.page
        busy, t0 = self.running(), time.perf_counter()
        await page.locator(".st-key-model_file input[type=file]").set_input_files(str(s.root / s.model_file))
        await page.get_by_text("Model loads").wait_for(timeout=PAGE_TIMEOUT_MS)
        await settle(page)
        self.record("upload_model_check", rnd, time.perf_counter() - t0, busy)
        await page.locator(".st-key-unlabeled_files input[type=file]").set_input_files(str(s.root / s.images_file))
        chip = f'.st-key-unlabeled_files [data-testid="stFileChipName"][title="{s.images_file}"]'
        await page.locator(chip).wait_for(timeout=PAGE_TIMEOUT_MS)
        await settle(page)
        if not await page.locator(".st-key-know_trigger input[type=checkbox]").is_checked():
            await page.get_by_text("I know the trigger").click()
        await page.locator(".st-key-trigger_target input").wait_for(timeout=PAGE_TIMEOUT_MS)
        await settle(page)
        for widget, value in (
            ("trigger_target", str(s.trigger_target)),
            ("trigger_size", str(s.trigger_size)),
            ("audit_label", s.label),
        ):
            box = page.locator(f".st-key-{widget} input")
            await box.fill(value)
            await box.press("Enter")
            await settle(page)
        # read back: the session's own upload and values, and nothing of anyone else's
        checks = {
            "model file": await page.locator(".st-key-model_file").inner_html(),
            "image file": await page.locator(".st-key-unlabeled_files").inner_html(),
            "class names": await page.locator(".st-key-class_names input").input_value(),
            "trigger target": await page.locator(".st-key-trigger_target input").input_value(),
            "trigger size": await page.locator(".st-key-trigger_size input").input_value(),
            "label": await page.locator(".st-key-audit_label input").input_value(),
        }
        want = {
            "model file": s.model_file,
            "image file": s.images_file,
            "class names": ",".join(s.class_names),
            "trigger target": str(s.trigger_target),
            "trigger size": str(s.trigger_size),
            "label": s.label,
        }
        for k, v in want.items():
            ok = v == checks[k] if k not in ("model file", "image file") else v in checks[k]
            if not ok:
                s.violations.append(f"{self.phase} round {rnd}: own {k} is {checks[k]!r}, expected {v!r}")
            s.own_checks += 1
        await self.check_isolation("new_audit(filled)", rnd)

    async def round(self, rnd: int) -> None:
        if rnd == 0:  # later rounds start where the last walk ended: on New audit
            await self.visit("home", rnd, first=True)
            await self.visit("new_audit", rnd)
        await self.fill_new_audit(rnd)
        for key in WALK:
            await self.visit(key, rnd)
        # what Streamlit keeps of the form after a walk through other pages (informational)
        self.s.persisted.append(self.s.model_file in await self.page.locator(".st-key-model_file").inner_html())


async def warm_up(url: str) -> None:
    """One page view before any measured one, so the server's first imports are not measured."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(url)
            await wait_ready(page, "home")
        finally:
            await browser.close()


async def first_page(url: str, s: Session, everyone: list[Session], store: JobStore) -> None:
    """A smoke run's one step: session `s` opens Home, timed and checked as in a walk."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page()
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            await Walker(s, page, url, [o for o in everyone if o is not s], store, "baseline").visit("home", 0, True)
        finally:
            await browser.close()


async def run_sessions(
    url: str, sessions: list[Session], everyone: list[Session], store: JobStore, phase: str, rounds, job_ids: list[int]
) -> None:
    """Each session in its own browser context; rounds continue until the jobs are done (bounded)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:

            async def one(s: Session) -> None:
                ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
                page = await ctx.new_page()
                page.set_default_timeout(PAGE_TIMEOUT_MS)
                w = Walker(s, page, url, [o for o in everyone if o is not s], store, phase)
                try:
                    for rnd in range(rounds[1]):
                        done = all(store.get(i).terminal for i in job_ids)
                        if rnd >= rounds[0] and done:
                            break
                        await w.round(rnd)
                except Exception:
                    SHOTS.mkdir(parents=True, exist_ok=True)
                    await page.screenshot(path=SHOTS / f"{s.name}-failed.png", full_page=True)
                    raise
                finally:
                    await ctx.close()

            await asyncio.gather(*(one(s) for s in sessions))
        finally:
            await browser.close()


# ----------------------------------------------------------------------------- report


def summarize(sessions: list[Session], phase: str) -> dict:
    by: dict[str, list[dict]] = {}
    for s in sessions:
        for t in s.times:
            if t["phase"] == phase:
                by.setdefault(t["page"], []).append(t)
    return {
        k: {
            "n": len(v),
            "n_with_a_job_running": sum(t["jobs_running"] > 0 for t in v),
            "median_s": round(statistics.median(t["s"] for t in v), 2),
            "max_s": round(max(t["s"] for t in v), 2),
        }
        for k, v in by.items()
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kd-epochs", type=int, default=150, help="distillation epochs of each job (500 images)")
    ap.add_argument("--max-rounds", type=int, default=4, help="walks per session under load, at most")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds the jobs may take, at most")
    smoke_args(ap)
    a = ap.parse_args()
    assert Path(CHROMIUM).exists(), "Chromium is missing: ./scripts/setup.sh installs Debian's chromium"
    if a.smoke:
        a.sessions, a.jobs, a.workers = 0, 0, 0
    t_start = time.perf_counter()
    gemm = sgemm_gflops(torch.device("cpu"), smoke=a.smoke)
    with tempfile.TemporaryDirectory(prefix="kdaudit-load-") as tmp:
        root, home = Path(tmp), Path(tmp) / "home"
        home.mkdir()
        files = make_inputs(root, epochs=1 if a.smoke else 15)
        base = Session("base", 0, root)
        load = [Session(f"sess{i}", i, root) for i in range(1, a.sessions + 1)]
        everyone = [base, *load]
        for s in everyone:
            s.write_files(files["teacher"], files["unlabeled"])
        store = JobStore(home)
        # one thread per process: the workers and the dashboard share the machine's cores
        proc, url = start_dashboard(home, home / "server.log", workers=a.workers, threads=1)
        ids: list[int] = []
        t_base = t_load = 0.0
        try:
            if a.smoke:
                asyncio.run(first_page(url, base, everyone, store))
            else:
                ids.append(store.submit("audit", audit_config(files, 0, 1), label="seed audit").id)
                wait_jobs(store, ids, time.monotonic() + a.budget)
                asyncio.run(warm_up(url))
                t_base = time.perf_counter()
                asyncio.run(run_sessions(url, [base], everyone, store, "baseline", (2, 2), []))
                t_base = time.perf_counter() - t_base
                t_load = time.perf_counter()
                ids += [
                    store.submit("audit", audit_config(files, i, a.kd_epochs), label=f"load job {i}").id
                    for i in range(1, a.jobs + 1)
                ]
                asyncio.run(run_sessions(url, load, everyone, store, "load", (1, a.max_rounds), ids[1:]))
                wait_jobs(store, ids, time.monotonic() + a.budget)
                t_load = time.perf_counter() - t_load
        finally:
            stop_dashboard(proc)
        jobs = [store.get(i) for i in ids]  # the seed audit first
    walls = [j.finished_at - j.started_at for j in jobs if j.finished_at and j.started_at]
    failed = [f"#{j.id} {j.state}: {(j.error or '').strip()[-200:]}" for j in jobs if j.state != "succeeded"]
    violations = [v for s in everyone for v in s.violations]
    base_sum, load_sum = summarize(everyone, "baseline"), summarize(everyone, "load")
    under_load = [t for s in load for t in s.times if t["phase"] == "load"]
    result = {
        "command": " ".join(["python", "benchmarks/load.py", *sys.argv[1:]]),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "note": "The 2 cores were shared with other processes (other developers' tests and builds) during "
        "this run, so absolute times are inflated; compare baseline and load within the run.",
        "sgemm_gflops": round(gemm, 1),
        "sessions": a.sessions,
        "workers": a.workers,
        "jobs": {
            "count": len(jobs[1:]),
            "each": f"audit of 500 unlabelled digits, {a.kd_epochs} distillation + 2 fine-tuning epochs",
            "states": {j.id: j.state for j in jobs},
            "all_succeeded": not failed,
            "failed": failed,
            "job_wall_s_median": round(statistics.median(walls), 1) if walls else None,
            "first_start_to_last_finish_s": round(
                max(j.finished_at or 0 for j in jobs[1:]) - min(j.started_at or 0 for j in jobs[1:]), 1
            )
            if jobs[1:]
            else None,
        },
        "render_s": {"baseline_one_session_no_jobs": base_sum, "load": load_sum},
        "share_of_load_measurements_with_a_job_running": round(
            sum(t["jobs_running"] > 0 for t in under_load) / max(len(under_load), 1), 2
        ),
        "rounds_per_session": {s.name: len({t["round"] for t in s.times}) for s in everyone},
        "form_kept_after_walk": {s.name: s.persisted for s in everyone},
        "isolation": {"own_value_checks": sum(s.own_checks for s in everyone), "violations": violations},
        "wall_s": {
            "baseline": round(t_base, 1),
            "load": round(t_load, 1),
            "total": round(time.perf_counter() - t_start, 1),
        },
        "all_times": [{"session": s.name, **t} for s in everyone for t in s.times],
    }
    print("| page | baseline median s | baseline max s | load median s | load max s | load n (job running) |")
    print("|---|---|---|---|---|---|")
    for key in ["first_load", *PAGES, "upload_model_check"]:
        b, u = base_sum.get(key), load_sum.get(key)
        if b and u:
            cells = [b["median_s"], b["max_s"], u["median_s"], u["max_s"]]
            print(
                f"| {key} | " + " | ".join(f"{v:.2f}" for v in cells) + f" | {u['n']} ({u['n_with_a_job_running']}) |"
            )
    print(
        f"\n{a.sessions} sessions, {a.workers} workers, {len(jobs[1:])} jobs + {len(jobs[:1])} seed job: "
        f"{sum(j.state == 'succeeded' for j in jobs)}/{len(jobs)} succeeded; "
        f"isolation violations: {len(violations)} ({result['isolation']['own_value_checks']} own-value checks); "
        f"sgemm {gemm:.0f} GFLOP/s; wall {result['wall_s']['total']:.0f} s"
    )
    for line in [*failed, *violations]:
        print("  " + line)
    atomic_write_json(a.results / "load.json", result)
    return 1 if failed or violations else 0


if __name__ == "__main__":
    sys.exit(main())
