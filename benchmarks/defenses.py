"""Every defense against every trigger on the Fashion-MNIST demo setup: one comparison table.

Per attack (BadNets, Blended, SIG, WaNet; all-to-one, target 7 "Sneaker") a paper-cnn teacher is
trained on the poisoned training set (cached), then every registered defense (kdcore.defenses) runs
on the same inputs: the core method `kd` (seed 000: distil on the unlabelled clean pool → detoxify
→ fine-tune) with the demo's own settings, every other method with its default settings.
Each row: clean_acc, poison_acc, asr of a model the method returns (one row per model role, e.g.
kd's distilled and fine-tuned students; the suspect's for detectors and inspectors), detection
precision / recall where the method flags training samples, the method's own wall time (kd: in a
fresh stage folder, so no cache hit), and whether it needs labelled clean data.

    .venv/bin/python benchmarks/defenses.py [--full] [--seeds 0,1,2] [--triggers badnets,sig] [--methods bcu,nad]
        [--device auto] [--setup '{"n_train": 3000, "teacher": {"epochs": 2}}']

With several seeds (each trains its own teacher and runs every method again), each cell of the
table is the mean ± standard deviation over seeds; `rows` in the JSON keep every seed's row.

As jobs, in parallel: one `defend` job per (attack, method, seed) in the job store DATA_DIR (it
may be the dashboard's: the Jobs page then shows each, labelled "defenses: badnets × nad × seed 1",
with the node it ran on), run by N local worker processes or by one dispatcher on a Ray cluster:

    .venv/bin/python benchmarks/defenses.py --jobs DATA_DIR [--executor local] [--workers 2] [...]
    .venv/bin/python benchmarks/defenses.py --jobs DATA_DIR --executor ray --ray-address 10.0.0.5:6379 [...]

Each job gets the same DemoConfig and method settings as the in-process run; the jobs of one attack
and seed share its teacher (the stage cache under --out, which every node must see at the same path:
on a cluster, a shared mount), and kd's stages go to the job's own run directory. The table and
JSON are built from the jobs' report.json files the same way; each row also names its job and node,
and a job that did not succeed is a row with its state and error in place of metrics.

`--smoke` (benchmarks/common.py): BadNets × kd, seed 0, in process, on the smallest demo
(`SMOKE_SETUP`), its teacher and stages in a temporary folder.

Default: the quick demo setup (10,000 training images, 2 % poisoned, 2,000 clean images, 5,000
test images); --setup merges DemoConfig settings into it. Prints a markdown table and writes
benchmarks/results/defenses[_full].json (with `executor`: in-process, local or ray).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from statistics import fmean  # noqa: E402

import torch  # noqa: E402

from benchmarks.common import SMOKE_SETUP, log, sgemm_gflops, smoke_args, throttled, write_result  # noqa: E402
from kdcore.config import to_dict  # noqa: E402
from kdcore.defenses import DEFENSES, get_defense  # noqa: E402
from kdcore.device import describe, resolve_device  # noqa: E402
from kdcore.jobs.store import Job, JobStore  # noqa: E402
from kdcore.report import ROLES, detection_of, evidence_of, headline_of, metrics_of, models_of  # noqa: E402
from kdcore.runs.configs import DemoConfig  # noqa: E402
from kdcore.runs.defend import DefendConfig, demo_inputs  # noqa: E402
from kdcore.tables import spread  # noqa: E402

# The attacks compared. n_poison: poisons in the quick setup's 10,000 training images (×5 for --full).
ATTACKS = {
    "badnets": ({"kind": "badnets", "target": 7, "size": 3}, 200),
    "blended": ({"kind": "blended", "target": 7, "alpha": 0.15}, 200),
    "sig": ({"kind": "sig", "target": 7}, 200),
    "wanet": ({"kind": "wanet", "target": 7}, 500),
}
SUSPECT = "suspect (no defense)"
POLL_S = 2.0  # how often the jobs mode looks at the store while its jobs run
WORKER_EXIT_S = 30.0  # how long it waits for its workers to drain once its jobs have ended
FIXED = ("seed", "trigger", "cache_dir")  # DemoConfig settings --setup leaves to --seeds, --triggers, --out


def demo_config(attack: str, full: bool, out: Path, seed: int = 0, setup: dict | None = None) -> DemoConfig:
    """The demo setup one attack runs on: the quick (or full) preset, `setup` merged in (DemoConfig
    settings; its n_poison replaces the attack's), the attack's trigger and poison count, the seed."""
    trigger, n_poison = ATTACKS[attack]
    n_poison *= 5 if full else 1  # the full setup has 5× the training images
    overrides = {"n_poison": n_poison, **(setup or {}), "trigger": trigger, "cache_dir": str(out / "cache")}
    return DemoConfig.preset(not full, **overrides, seed=seed)


def method_params(cfg: DemoConfig, name: str) -> dict | None:
    """The settings a method runs with: the core method the demo setup's own (as `kdcore demo` runs
    it), every other method its defaults (None)."""
    return to_dict(cfg.kd) if name == "kd" else None


def row(
    attack: str,
    method: str,
    family: str,
    ev: dict | None,
    det: dict | None,
    wall: float | None,
    labels: bool,
    note: str = "",
    config: dict | None = None,
    evidence: dict | None = None,
) -> dict:
    det = det or {}
    return {
        "attack": attack,
        "method": method,
        "family": family,
        **metrics_of(ev),
        "precision": det.get("precision"),
        "recall": det.get("recall"),
        "flagged": det.get("flagged"),
        "wall_s": None if wall is None else round(wall, 1),
        "needs_labels": labels,
        "note": note,
        "config": config,  # the method's resolved settings, so the row can be re-run
        "evidence": evidence,  # the method's own findings (NC's per-class norms, the ℓ∞ sweep, ...)
    }


def suspect_row(attack: str, ev: dict | None) -> dict:
    """The suspect model's own metrics: what every defense starts from."""
    return row(attack, SUSPECT, "—", ev, None, 0.0, False)


def method_rows(attack: str, name: str, report: dict) -> list[dict]:
    """One row per model the method returned (the suspect's for detectors and inspectors)."""
    models = models_of(report)
    own = {role: ev for role, ev in models.items() if role != "teacher"} or {"teacher": models.get("teacher")}
    return [
        row(
            attack,
            name if len(own) == 1 else f"{name}: {ROLES[role]}",
            report["family"],
            ev,
            detection_of(report),
            report["method_wall_s"],
            get_defense(name).needs_labels,
            headline_of(report),
            config=report["method_config"],
            evidence=evidence_of(report),
        )
        for role, ev in own.items()
    ]


def run_attack(
    attack: str,
    methods: list[str],
    full: bool,
    device: torch.device,
    out: Path,
    seed: int = 0,
    setup: dict | None = None,
) -> list[dict]:
    """Every method on one attack and seed, one after the other in this process."""
    cfg = demo_config(attack, full, out, seed, setup)
    log(f"{attack}: teacher (cached after the first run)")
    inputs = demo_inputs(cfg, device, throttled())
    inputs.on_progress = throttled()
    rows = [suspect_row(attack, inputs.evaluate(inputs.model).metrics())]
    # inputs.work_dir stays None, so kd's stages go to a fresh temporary folder and its time includes all its work.
    for name in methods:
        log(f"{attack}: {name}")
        method = get_defense(name).from_params(method_params(cfg, name))
        rows += method_rows(attack, name, method.run(inputs).report())
    return [{**r, "seed": seed} for r in rows]


# ---- as jobs ------------------------------------------------------------------------------------


def job_label(attack: str, method: str, seed: int) -> str:
    return f"defenses: {attack} × {method} × seed {seed}"


def submit_jobs(
    store: JobStore,
    attacks: list[str],
    methods: list[str],
    seeds: list[int],
    full: bool,
    out: Path,
    device: str = "auto",
    setup: dict | None = None,
) -> dict[tuple[str, str, int], Job]:
    """One `defend` job per (attack, method, seed), seed by seed (a first table's jobs end first):
    the same DemoConfig and method settings as `run_attack`. Returns them by (attack, method, seed)."""
    jobs = {}
    for seed in seeds:
        for attack in attacks:
            cfg = demo_config(attack, full, out, seed, setup)
            for name in methods:
                # seed: the defend run's own seed replaces the demo's in the method's inputs; keep them equal
                job_cfg = DefendConfig(
                    method=name, params=method_params(cfg, name) or {}, demo=cfg, seed=seed, device=device
                )
                jobs[attack, name, seed] = store.submit("defend", job_cfg, label=job_label(attack, name, seed))
    return jobs


def start_workers(
    data_dir: Path, executor: str, workers: int, device: str, ray_address: str, logs: Path
) -> list[subprocess.Popen]:
    """`kdcore worker --drain` processes: `workers` local ones (each with its share of the cores), or
    one that dispatches the queue to a Ray cluster. Their output goes to `logs`/worker-<i>.log."""
    base = [sys.executable, "-m", "kdcore", "worker", "--data-dir", str(data_dir), "--device", device, "--drain"]
    env = dict(os.environ)
    if executor == "ray":
        cmds = [[*base, "--executor", "ray", *(["--ray-address", ray_address] if ray_address else [])]]
    else:
        cmds = [base] * workers
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, cmd in enumerate(cmds):
        with open(logs / f"worker-{i}.log", "w") as f:  # the child keeps its own copy of the descriptor
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT))
    return procs


def wait_for_jobs(store: JobStore, ids: list[int], procs: list[subprocess.Popen]) -> list[Job]:
    """Wait until every job has ended, logging each as it does. A job another worker runs (e.g. the
    dashboard's, in a shared store) is waited for too; one still queued once our workers have all
    exited is returned as it is (its row says so) rather than waited for forever."""
    done: set[int] = set()
    while True:
        exited = all(p.poll() is not None for p in procs)
        if exited:
            store.reap()  # a worker that died leaves its job running: mark it interrupted
        jobs = [store.get(i) for i in ids]
        for j in jobs:
            if j.terminal and j.id not in done:
                done.add(j.id)
                node = f" on {j.node}" if j.node else ""
                log(f"job {j.id} {j.label}: {j.state}{node} ({len(done)}/{len(ids)})")
        if all(j.terminal for j in jobs) or (exited and not any(j.state == "running" for j in jobs)):
            return jobs
        time.sleep(POLL_S)


def reason(job: Job) -> str:
    """Why a job did not succeed, in one line: its error's first line (a traceback's last, the exception)."""
    if job.state == "queued":
        return "never ran: every worker exited first (see the worker logs)"
    if job.state == "succeeded":
        return f"no report.json in {job.run_dir}"
    lines = job.error.strip().splitlines() or ["no error recorded"]
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]


def failed_row(attack: str, name: str, job: Job) -> dict:
    """A method whose job did not succeed: no metrics, its state and why in the note."""
    d = get_defense(name)
    return row(attack, name, d.family, None, None, None, d.needs_labels, f"{job.state}: {reason(job)}")


def job_rows(attack: str, seed: int, jobs: dict[str, Job]) -> list[dict]:
    """The rows of one attack and seed from its jobs (method → job), as `run_attack` builds them:
    the suspect's (from the first report) and each method's, with its job id and node; a job that
    did not succeed is one row with its state and reason."""
    rows, suspect = [], None
    for name, job in jobs.items():
        where = {"job": job.id, "node": job.node, "state": job.state}
        if job.state == "succeeded" and job.report_path is not None:
            report = json.loads(job.report_path.read_text())
            if suspect is None:
                suspect = {**suspect_row(attack, models_of(report).get("teacher")), **where}
            rows += [{**r, **where} for r in method_rows(attack, name, report)]
        else:
            rows.append({**failed_row(attack, name, job), **where})
    return [{**r, "seed": seed} for r in ([suspect] if suspect else []) + rows]


def run_jobs(
    data_dir: Path,
    attacks: list[str],
    methods: list[str],
    seeds: list[int],
    full: bool,
    out: Path,
    executor: str = "local",
    workers: int = 1,
    ray_address: str = "",
    device: str = "auto",
    setup: dict | None = None,
) -> list[dict]:
    """The comparison as jobs: submit them, run them with `executor`'s workers, read their reports."""
    store = JobStore(data_dir)
    jobs = submit_jobs(store, attacks, methods, seeds, full, out, device, setup)
    ids = [j.id for j in jobs.values()]
    log(f"submitted jobs {ids[0]}..{ids[-1]} to {store.path}; worker logs in {out / 'workers'}")
    procs = start_workers(store.data_dir, executor, workers, device, ray_address, out / "workers")
    try:
        ended = {j.id: j for j in wait_for_jobs(store, ids, procs)}
    except BaseException:  # an error or Ctrl-C: a stopped worker's job ends interrupted (retryable)
        for p in procs:
            p.terminate()
        raise
    for i, p in enumerate(procs):
        try:  # --drain: a worker exits seconds after the queue is empty
            if p.wait(timeout=WORKER_EXIT_S) != 0:
                log(f"worker {p.pid} exited with {p.returncode}: see {out / 'workers' / f'worker-{i}.log'}")
        except subprocess.TimeoutExpired:  # it took another job from a shared queue: it ends when the queue does
            log(f"worker {p.pid} is still running other queued jobs; it exits when the queue is empty")
    rows = []
    for seed in seeds:
        for attack in attacks:
            rows += job_rows(attack, seed, {m: ended[jobs[attack, m, seed].id] for m in methods})
    return rows


def table(rows: list[dict]) -> str:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["attack"], r["method"]), []).append(r)
    seeds = max((len(g) for g in groups.values()), default=1)
    head = "| Attack | Method | clean_acc | poison_acc | asr | precision | recall | time (s) | labels | note |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for (attack, method), rs in groups.items():
        cells = [spread([r.get(k) for r in rs]) for k in ("clean_acc", "poison_acc", "asr", "precision", "recall")]
        few = f" (n = {len(rs)})" if len(rs) < seeds else ""  # a run stopped before its last seed
        walls = [r["wall_s"] for r in rs if r["wall_s"] is not None]
        # a seed whose job did not succeed says so, whichever seed it was
        note = next((f"seed {r['seed']}: {r['note']}" for r in rs if r.get("state", "succeeded") != "succeeded"), "")
        lines.append(
            f"| {attack} | {method}{few} | {' | '.join(cells)} | {f'{fmean(walls):.0f}' if walls else '—'} | "
            f"{'yes' if rs[0]['needs_labels'] else ''} | {note or rs[-1]['note']} |"
        )
    if seeds > 1:
        lines.append(f"\nMean ± standard deviation over {seeds} seeds; time and note: mean, last seed.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the full demo setup (50,000 training images)")
    ap.add_argument("--triggers", default=",".join(ATTACKS))
    ap.add_argument("--methods", default="")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (default 0); tables show mean ± std")
    ap.add_argument("--setup", type=json.loads, default=None, help="DemoConfig settings merged into the preset (JSON)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "defenses")
    ap.add_argument("--jobs", type=Path, metavar="DATA_DIR", help="run as jobs in this job store (see above)")
    ap.add_argument("--executor", choices=("local", "ray"), default="local", help="with --jobs: who runs them")
    ap.add_argument("--workers", type=int, default=1, help="with --jobs --executor local: worker processes")
    ap.add_argument("--ray-address", default="", help="with --executor ray: the cluster (default: a local one)")
    smoke_args(ap)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdaudit-defenses-smoke-") as tmp:
        if a.smoke:
            a.full, a.triggers, a.methods, a.seeds, a.setup, a.out = False, "badnets", "kd", "0", SMOKE_SETUP, Path(tmp)
            a.jobs = None
        run(a)


def run(a: argparse.Namespace) -> None:
    methods = [m for m in a.methods.split(",") if m] or sorted(DEFENSES)
    for m in methods:
        get_defense(m)
    attacks = a.triggers.split(",")
    for attack in attacks:
        if attack not in ATTACKS:
            raise SystemExit(f"unknown attack {attack!r}; expected some of {', '.join(ATTACKS)}")
    if set(a.setup or {}) & set(FIXED):
        raise SystemExit(
            f"--setup sets the demo setup's sizes and epochs; {', '.join(FIXED)} come from --seeds, "
            "--triggers and --out"
        )
    if a.workers < 1:
        raise SystemExit(f"--workers must be at least 1; got {a.workers}")
    seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    out = a.out.resolve()  # workers run elsewhere (another cwd, another node): the cache path must be absolute
    device = resolve_device(a.device)
    gemm = sgemm_gflops(device, smoke=a.smoke)
    t0 = time.perf_counter()

    def save(rows: list[dict], executor: str) -> float:
        print(table(rows), flush=True)
        wall = time.perf_counter() - t0
        result = {"wall_s": round(wall, 1), "seeds": seeds, "sgemm_gflops": round(gemm, 1), "executor": executor}
        name = "defenses_full" if a.full else "defenses"
        write_result(name, "defenses.py", device, result | {"rows": rows, "table": table(rows)}, a.results)
        return wall

    if a.jobs:
        how = f"ray ({a.ray_address or 'a local cluster'})" if a.executor == "ray" else f"local, {a.workers} workers"
        rows = run_jobs(
            a.jobs, attacks, methods, seeds, a.full, out, a.executor, a.workers, a.ray_address, a.device, a.setup
        )
        wall = save(rows, how)
    else:
        rows: list[dict] = []
        for seed in seeds:  # one seed of every attack first: a useful table exists early
            for attack in attacks:
                rows += run_attack(attack, methods, a.full, device, out, seed, a.setup)
                wall = save(rows, "in-process")
    threads = torch.get_num_threads()
    print(f"\nwall time {wall:.0f} s on {describe(device)}, {threads} threads, sgemm {gemm:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
