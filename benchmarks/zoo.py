"""The model zoo (issue 20, items 1–2): backdoored and clean models over five architectures, each
audited BLIND through the product path, for calibrating the verdict and scoring it on models it
was never tuned on.

Recipes and the split are in benchmarks/zoo/recipes.py and fixed in benchmarks/zoo_split.json
(calibration: 112 models, half clean, four architectures, 16 of them trained like the quick demo's
teacher; three held-out parts, "heldout" (90), "fresh" (72) and "third" (32, added to score the shipped
fit cleanly), the first two each with ≥ 30 clean models and five architectures, each with one architecture
and one attack never seen by calibration). For each model:

1. made once, cached by content (benchmarks/zoo/build.py): its data drawn from Fashion-MNIST, poisoned
   or made hard, trained (4,000 images, 3 epochs; VGG-11 3,000 and 2, ResNet-18 2,000 and 2), saved or exported as its
   architecture's user would (.safetensors, .onnx, .pt2), with the training set as its trainer had
   it, 800 clean unlabelled images and 500 test images as zips; its truth (backdoored or not,
   target, attack, poison indices) in <out>/<name>/truth.json, which the audit never reads;
2. audited blind as an `audit` job (benchmarks/zoo/jobs.py: `run_audit`, the model file and the zips,
   `blind=True`, no trigger) into <out>/<name>/audit/, run by `kdcore worker --drain` processes
   (`--executor local`) or one dispatching to Ray (`--executor ray`). Training runs in a pool of
   `--workers` processes beside them.

Resumable: a model whose <out>/<name>/audit/report.json exists is not made or audited again, and a
row kept in benchmarks/results/zoo.json whose run dir is gone is kept as it is. The result file is
rewritten after every audit: one row per model (its recipe, its truth, the verdict's status, target
and confidence, every evidence piece's `values` as stored in report.json, seconds per stage).

    .venv/bin/python benchmarks/zoo.py [--part calibration|heldout|fresh|third|fourth|all] [--limit N] [--only NAME,...]
        [--workers N] [--executor local|ray] [--out DIR]
    .venv/bin/python benchmarks/zoo.py --write-split    # once, before any scoring: benchmarks/zoo_split.json
    .venv/bin/python benchmarks/zoo.py --rows-only      # the rows of the audits on disk written again: what
                                                        # this version reads from them (e.g. the student's
                                                        # belief, from each audit's candidates.csv)

`--smoke` (benchmarks/common.py): two tiny models (one backdoored paper CNN, one clean .pt2
GroupNorm net) on a few hundred images, in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import SMOKE_NC, log, sgemm_gflops, smoke_args, write_result  # noqa: E402
from benchmarks.verdict import trigger_images  # noqa: E402
from benchmarks.zoo.build import Made, Sizes, make  # noqa: E402
from benchmarks.zoo.jobs import AUDIT_KD, AUDIT_NC, Audits  # noqa: E402
from benchmarks.zoo.recipes import MIN_ASR, MIN_CLEAN_ACC, PARTS, Recipe, read_split, recipes, split_json  # noqa: E402
from kdcore.candidates import read_candidates  # noqa: E402
from kdcore.device import resolve_device  # noqa: E402
from kdcore.io import atomic_write_json  # noqa: E402
from kdcore.verdict.detectors import silhouettes  # noqa: E402
from kdcore.verdict.kd_disagreement import student_belief  # noqa: E402

OUT = ROOT / "benchmarks" / "out" / "zoo"
SPLIT = ROOT / "benchmarks" / "zoo_split.json"
POLL_S = 2.0

SMOKE_SIZES = Sizes(n_clean=100, n_test=100, n_train=300, epochs=1)
SMOKE_KD = {"distill": {"epochs": 1}, "finetune": {"epochs": 0}}


def smoke_recipes() -> list[Recipe]:
    """The smallest zoo: the first backdoored paper CNN and a clean .pt2 model (the exported path)."""
    rs = recipes()
    bad = next(r for r in rs if r.attack != "clean" and r.arch == "paper-cnn")
    good = next(r for r in rs if r.attack == "clean" and r.arch == "groupnorm-pt2" and not r.hard)
    return [replace(bad, name="smoke-" + bad.name), replace(good, name="smoke-" + good.name)]


def selected(a: argparse.Namespace) -> list[Recipe]:
    if a.smoke:
        return smoke_recipes()
    fixed = read_split(SPLIT)
    if fixed != recipes():
        raise SystemExit(
            f"The recipes in benchmarks/zoo/recipes.py differ from {SPLIT.name}, the split fixed before scoring; "
            "undo the change, or (before any scoring) write the split again with --write-split"
        )
    only = {x for x in a.only.split(",") if x}
    unknown = only - {r.name for r in fixed}
    if unknown:
        raise SystemExit(f"--only names no model of the zoo: {sorted(unknown)}; see {SPLIT.name}")
    return [r for r in fixed if (a.part == "all" or r.part == a.part) and (not only or r.name in only)]


def row_of(recipe: Recipe, truth: dict, report: dict, job: int | None, audit: Path | None = None) -> dict:
    """One model's row: recipe, truth, the verdict, every evidence piece's values (`_values`: what older
    reports lack, from the `audit` folder's files), seconds per stage."""
    v = report.get("verdict") or {}
    status, targets = v.get("status"), v.get("target_classes", [])
    if truth["backdoored"]:
        outcome = ("right" if truth["target"] in targets else "wrong") if status == "backdoor" else status
    else:
        outcome = "false alarm" if status == "backdoor" else status
    return {
        "name": recipe.name,
        "part": recipe.part,
        "arch": recipe.arch,
        "format": truth.get("format"),
        "attack": recipe.attack,
        "hard": recipe.hard,
        "rate": round(recipe.rate, 5),
        "n_poison": truth.get("n_poison", recipe.n_poison),
        "seed": recipe.seed,
        "truth": {k: truth.get(k) for k in ("backdoored", "target", "source", "trigger", "clean_acc", "asr")},
        "status": status,
        "target_classes": targets,
        "confidence": v.get("confidence"),
        "outcome": outcome,
        "evidence": {
            e["method"]: {"supports": e["supports"], "classes": e["classes"], "values": _values(e, report, audit)}
            for e in v.get("evidence", [])
        },
        "p_backdoor": v.get("p_backdoor"),
        "seconds": {"train": truth.get("train_s"), **(report.get("timings") or {}), "audit": report.get("wall_s")},
        "job": job,
    }


def made_in_vain(truth: dict, smoke: bool) -> str:
    """Why a made model is no audit subject, or "": its training failed (clean accuracy under
    MIN_CLEAN_ACC: it never learnt the task) or its poisoning did (attack success under MIN_ASR: no
    backdoor took; as TrojAI counts a model trojaned only when its trigger works). Such a model is
    kept as a row with that outcome, left out of the calibration and the scores."""
    if smoke:
        return ""
    if truth["clean_acc"] < MIN_CLEAN_ACC:
        return "training failed"
    if truth["backdoored"] and (truth.get("asr") or 0.0) < MIN_ASR:
        return "implant failed"
    return ""


def _values(e: dict, report: dict, audit: Path | None = None) -> dict:
    """A piece's numbers as the calibrated verdict reads them, where older reports did not keep them:
    activation clustering's per-class silhouettes from the report's table; the student's belief in
    each funnel class (kdcore.verdict.kd_disagreement.student_belief) from the audit's candidates.csv."""
    values = dict(e.get("values") or {})
    ac = report.get("activation_clustering") or {}
    if e["method"] == "activation-clustering" and "silhouette" not in values and ac.get("classes"):
        values["silhouette"] = silhouettes(ac["classes"])
    classes = values.get("classes") or []
    csv = audit / "candidates.csv" if audit else None
    if e["method"] == "kd-disagreement" and classes and csv and csv.is_file():
        if not any("student_p" in r for r in classes):
            cands = read_candidates(csv)
            belief = student_belief(
                torch.tensor([c.teacher_pred for c in cands]),
                torch.tensor([c.student_conf for c in cands]),
                torch.tensor([c.flagged for c in cands]),
                len(classes),
            )
            values["classes"] = [
                {**r, "student_p": round(b, 4)} if b is not None else r for r, b in zip(classes, belief, strict=True)
            ]
    return values


def table(rows: list[dict]) -> str:
    lines = ["| Part | models | backdoored: right target | wrong target | inconclusive | no_evidence | "
             "clean: false alarms | inconclusive | no_evidence |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for part in PARTS:
        rs = [r for r in rows if r["part"] == part]
        if not rs:
            continue
        bad = [r for r in rs if r["truth"]["backdoored"]]
        good = [r for r in rs if not r["truth"]["backdoored"]]

        def n(group: list[dict], outcome: str) -> str:
            return f"{sum(r['outcome'] == outcome for r in group)}/{len(group)}"

        cells = [n(bad, o) for o in ("right", "wrong", "inconclusive", "no_evidence")]
        cells += [n(good, o) for o in ("false alarm", "inconclusive", "no_evidence")]
        lines.append(f"| {part} | {len(rs)} | {' | '.join(cells)} |")
    return "\n".join(lines)


def by_architecture(todo: list[Recipe]) -> list[Recipe]:
    """The models to make, the first of each architecture first, then the second of each, ...: a partial
    run (a session ends wherever it is) covers every architecture, the slow ones too."""
    seen: dict[str, int] = {}
    rank = []
    for r in todo:
        rank.append(seen.get(r.arch, 0))
        seen[r.arch] = rank[-1] + 1
    return [r for _, r in sorted(zip(rank, todo, strict=True), key=lambda x: x[0])]


def stored_rows(results: Path, setup: dict) -> dict[str, dict]:
    """The rows of results/zoo.json made with `setup` (rows of other sizes or settings are not comparable)."""
    path = results / "zoo.json"
    stored = json.loads(path.read_text()) if path.is_file() else {}
    if stored.get("setup") != setup:
        return {}
    return {r["name"]: r for r in stored.get("rows", [])}


def _threads(n: int) -> None:
    torch.set_num_threads(n)


def run(a: argparse.Namespace, out: Path) -> None:
    device = resolve_device(a.device)
    rs = selected(a)
    sizes, kd, nc = (SMOKE_SIZES, SMOKE_KD, SMOKE_NC) if a.smoke else (Sizes(), AUDIT_KD, AUDIT_NC)
    trigger_images(out / "triggers")
    setup = {"sizes": vars(sizes), "audit_kd": kd, "neural_cleanse": nc, "split": SPLIT.name}
    kept = {} if a.smoke else stored_rows(a.results, setup)
    rows: dict[str, dict] = {}
    todo: list[Recipe] = []
    for r in rs:
        report = out / r.name / "audit" / "report.json"
        truth_file = out / r.name / "truth.json"
        known = json.loads(truth_file.read_text()) if truth_file.is_file() else None
        vain = made_in_vain(known, a.smoke) if known else ""
        if vain:
            rows[r.name] = {**row_of(r, known, {}, None), "outcome": vain}
        elif report.is_file():
            rows[r.name] = row_of(
                r, known, json.loads(report.read_text()), kept.get(r.name, {}).get("job"), report.parent
            )
        elif r.name in kept:
            rows[r.name] = kept[r.name]
            log(f"{r.name}: kept from results/zoo.json (its run dir is not here)")
        elif not a.limit or len(todo) < a.limit:
            todo.append(r)
    todo = by_architecture(todo)
    gemm = sgemm_gflops(device, smoke=a.smoke)
    t0 = time.perf_counter()

    everything = rs if a.smoke else recipes()  # a --part or --only run keeps the other models' stored rows

    def save() -> None:
        # the stored rows are read again: a run of another part beside this one (e.g. --part fresh while
        # --part calibration audits) wrote its rows since, and this run must not write them back as they were
        now = {} if a.smoke else {**kept, **stored_rows(a.results, setup)}
        ordered = [rows.get(r.name) or now[r.name] for r in everything if r.name in rows or r.name in now]
        # and the rows of models this run does not know: the split grew since it started (a run started on
        # the old recipes dropped the 24 rows another run had just audited)
        known = {r.name for r in everything}
        ordered += [row for name, row in now.items() if name not in known]
        write_result("zoo", "zoo.py", device, {
            "sgemm_gflops": round(gemm, 1), "models": len(ordered), "selected": len(rs),
            "session_wall_s": round(time.perf_counter() - t0, 1),
            "setup": setup,
            "table": table(ordered), "rows": ordered,
        }, a.results)  # fmt: skip

    save()
    log(f"{len(rows)} of {len(rs)} models done; {len(todo)} to make and audit (out: {out})")
    if a.rows_only:  # the stored audits' rows written again (what this version reads from them), nothing made
        return
    # training processes and audit workers run side by side: each gets its share of the cores (torch's
    # threads spin-wait, so 4 threads on 2 cores made both ~15× slower than alone, measured)
    threads = max(1, (os.cpu_count() or 1) // (2 * a.workers))
    if a.executor == "local":
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # the audit workers' share (start_workers)
    audits = Audits(out, a.executor, a.workers, a.device, a.ray_address)
    ctx = multiprocessing.get_context("spawn")  # no forked torch state in the training processes
    pending: dict[int, tuple[Recipe, Made]] = {}
    with ProcessPoolExecutor(a.workers, mp_context=ctx, initializer=_threads, initargs=(threads,)) as pool:
        making: dict[Future, Recipe] = {pool.submit(make, r, out, sizes, str(device)): r for r in todo}
        try:
            while making or pending:
                done = wait(list(making), timeout=POLL_S, return_when=FIRST_COMPLETED)[0] if making else set()
                for f in done:
                    r = making.pop(f)
                    made = f.result()
                    t = made.truth
                    how = "reused" if made.reused else f"{t['train_s']:.0f} s training"
                    log(f"{r.name}: made ({how}), clean_acc {t['clean_acc']}, asr {t['asr']}")
                    failed = made_in_vain(t, a.smoke)
                    if failed:
                        log(f"{r.name}: not audited, {failed}")
                        rows[r.name] = {**row_of(r, t, {}, None), "outcome": failed}
                        save()
                        continue
                    job = audits.submit(r, made, out / r.name / "audit", kd, nc)
                    pending[job.id] = (r, made)
                audits.keep_running(list(pending))
                for job_id in list(pending):
                    job = audits.store.get(job_id)
                    if not job.terminal:
                        continue
                    r, made = pending.pop(job_id)
                    again = audits.again(job)
                    if again:
                        why = job.error.strip()[-120:]
                        log(f"{r.name}: audit job {job_id} interrupted ({why}), queued again as job {again.id}")
                        pending[again.id] = (r, made)
                        continue
                    if job.state != "succeeded" or job.report_path is None:
                        log(f"{r.name}: audit job {job_id} {job.state}: {job.error.strip()[-300:]}")
                        continue
                    report = json.loads(job.report_path.read_text())
                    rows[r.name] = row_of(r, made.truth, report, job_id, job.report_path.parent)
                    row = rows[r.name]
                    log(f"{r.name}: {row['status']} {row['target_classes']} ({row['outcome']}), "
                        f"audit {row['seconds']['audit']:.0f} s")  # fmt: skip
                    save()
                if not making and pending and not audits.alive():
                    audits.keep_running(list(pending))
                    if not audits.alive():
                        log(f"audits {sorted(pending)} neither queued nor running: see {audits.logs}")
                        break
        finally:
            audits.stop()
    print(table([rows[r.name] for r in rs if r.name in rows]), flush=True)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=(*PARTS, "all"), default="all")
    ap.add_argument("--limit", type=int, default=0, help="make and audit at most N new models (0 = all)")
    ap.add_argument("--only", default="", help="model names, comma-separated (see benchmarks/zoo_split.json)")
    ap.add_argument("--workers", type=int, default=1, help="training processes, and audit workers (local)")
    ap.add_argument("--executor", choices=("local", "ray"), default="local", help="who runs the audit jobs")
    ap.add_argument("--ray-address", default="", help="with --executor ray: the cluster (default: a local one)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=OUT, help="models, truths, audits and the job store")
    ap.add_argument("--write-split", action="store_true", help=f"write {SPLIT.name} from the recipes and exit")
    ap.add_argument("--rows-only", action="store_true", help="write the rows of the audits already on disk again "
                    "(what this version reads from them) and exit, making and auditing nothing")  # fmt: skip
    smoke_args(ap)
    return ap


def main() -> None:
    a = parser().parse_args()
    if a.workers < 1:
        raise SystemExit(f"--workers must be at least 1; got {a.workers}")
    if a.write_split:
        atomic_write_json(SPLIT, split_json(recipes()))
        log(f"wrote {SPLIT}")
        return
    if a.smoke:
        with tempfile.TemporaryDirectory(prefix="kdaudit-zoo-smoke-") as tmp:
            run(a, Path(tmp))
    else:
        run(a, a.out)


if __name__ == "__main__":
    main()
