"""The verdict benchmark (issue 10, item 4): how often a blind audit says "backdoor" with the right
target on backdoored models, and raises a false alarm on clean ones.

Every model goes through the product path, `kdcore.runs.demo.run_demo` with
`DemoConfig.preset(quick=True, blind=True, ...)` (Fashion-MNIST, paper CNN, 10,000 training
images, 2,000 unlabelled clean images), so the verdict is exactly the one `kdcore demo --quick
--blind` writes. Models:

- attacks: BadNets, Blended, SIG and WaNet with target 7 and their n_poison of
  benchmarks/defenses.py; an image `patch` (a 4×4 random-pattern PNG with alpha, top-left) and an
  image `blend` (a 28×28 blocky random image at alpha 0.2), both written by this script, with a
  target that changes per seed (`TARGETS`);
- clean: scenario no_attack (the suspect is the clean baseline), seeds 0..4;
- poison rates: BadNets (then Blended) at 1, 5 and 10 % (100 / 500 / 1,000 of the 10,000).

The queue runs one seed of everything first, then more seeds, so a useful table exists early.
What the verdict does not read is cut: 1,000 test images (asr, poison_acc and clean_acc are
evaluation-only) and no fine-tuning epochs (the verdict audits the distilled student).
Neural Cleanse and activation clustering run with their defaults: those are what is calibrated.

Resumable: each model's run dir is benchmarks/out/verdict/runs/<name>/ and a model whose
report.json exists is not re-run; benchmarks/results/verdict.json is rewritten after every model.
A model whose run dir is gone (another machine, a clean checkout) but whose row is in
benchmarks/results/verdict.json keeps that row and is not re-run either: the queue takes hours.
`--rescore` re-runs nothing: it recomputes every verdict from the stored reports with the current
constants of kdcore/verdict/ (`kdcore.verdict.rescore`), which is how the constants are calibrated;
rows kept without their report are not re-scored (`--rerun-missing` trains them again).

    .venv/bin/python benchmarks/verdict.py [--rescore] [--limit N] [--only badnets,clean] [--device auto] [--smoke]

`--smoke` (benchmarks/common.py): one clean model (clean-s0) on the smallest demo (`SMOKE_SETUP`,
`SMOKE_NC`), its run in a temporary folder, no stored rows read.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.common import SMOKE_NC, SMOKE_SETUP, log, sgemm_gflops, smoke_args, throttled, write_result  # noqa: E402
from benchmarks.defenses import ATTACKS  # noqa: E402
from kdcore.defenses import get_defense  # noqa: E402
from kdcore.device import describe, resolve_device  # noqa: E402
from kdcore.runs.configs import DemoConfig  # noqa: E402
from kdcore.runs.demo import run_demo  # noqa: E402
from kdcore.runs.scenario import SPEC  # noqa: E402
from kdcore.verdict.detectors import AC_SILHOUETTE_THRESHOLD, ac_evidence  # noqa: E402
from kdcore.verdict.rescore import rescore  # noqa: E402

OUT = ROOT / "benchmarks" / "out" / "verdict"
N_TRAIN = 10_000  # the quick demo's training set
CUTS = {"n_test": 1000, "kd": {"finetune": {"epochs": 0}}}  # evaluation-only parts the verdict never reads
TARGETS = {"patch": (1, 4, 8), "blend": (8, 1, 4)}  # target per seed (cycled): a few target classes
IMAGE_ATTACKS = {"patch": 200, "blend": 200}  # n_poison, as BadNets/Blended in benchmarks/defenses.py
RATES = (100, 500, 1000)  # 1, 5, 10 % of N_TRAIN
MAIN = ("badnets", "blended", "sig", "wanet", "patch", "blend")


@dataclass(frozen=True)
class Job:
    name: str  # the run dir's name
    attack: str  # an ATTACKS key, "patch", "blend" or "clean"
    seed: int
    n_poison: int
    target: int | None  # None for clean models
    rate_check: bool = False  # one of the 1/5/10 % models

    def trigger(self, images: dict[str, Path]) -> dict:
        if self.attack in ATTACKS:
            return ATTACKS[self.attack][0]
        if self.attack == "patch":
            return {"kind": "patch", "image": str(images["patch"]), "location": "top-left", "target": self.target}
        if self.attack == "blend":
            return {"kind": "blend", "image": str(images["blend"]), "alpha": 0.2, "target": self.target}
        return {"kind": "badnets", "target": 7, "size": 3}  # clean: the trigger only evaluates


def attack_job(attack: str, seed: int, n_poison: int | None = None) -> Job:
    if attack in ATTACKS:
        trigger, default_n = ATTACKS[attack]
        target = trigger["target"]
    else:
        default_n, targets = IMAGE_ATTACKS[attack], TARGETS[attack]
        target = targets[seed % len(targets)]
    n = n_poison or default_n
    name = f"{attack}-s{seed}" if n_poison is None else f"{attack}-p{n}-s{seed}"
    return Job(name, attack, seed, n, target, rate_check=n_poison is not None)


def queue() -> list[Job]:
    """One seed of everything first, then the next seeds, then what is left if time allows."""
    jobs: list[Job] = []
    for seed in (0, 1, 2):  # a clean model is cheap (no teacher to train): early, beside the first attack
        jobs += [attack_job("badnets", seed), Job(f"clean-s{seed}", "clean", seed, 0, None)]
        jobs += [attack_job(a, seed) for a in MAIN[1:]]
        jobs += [attack_job("badnets", seed, n) for n in (500, 1000, 100)]  # 5 % first: where the 35 % cut broke
    jobs += [Job(f"clean-s{seed}", "clean", seed, 0, None) for seed in (3, 4)]
    jobs += [attack_job("blended", seed, n) for seed in (0, 1, 2) for n in RATES]
    return jobs


def trigger_images(folder: Path) -> dict[str, Path]:
    """The patch and blend images (seeded, so every run writes the same files)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(10)
    grey = torch.randint(0, 256, (4, 4), generator=g, dtype=torch.uint8)
    alpha = torch.full((4, 4), 255, dtype=torch.uint8)
    alpha[0, 0] = alpha[0, 3] = alpha[3, 0] = alpha[3, 3] = 0  # transparent corners: the mask is the alpha
    patch = Image.fromarray(torch.stack([grey, alpha], -1).numpy(), "LA")
    blocks = torch.randint(0, 256, (7, 7), generator=g, dtype=torch.uint8)
    blend = Image.fromarray(blocks.repeat_interleave(4, 0).repeat_interleave(4, 1).numpy(), "L")
    paths = {"patch": folder / "patch.png", "blend": folder / "blend.png"}
    patch.save(paths["patch"])
    blend.save(paths["blend"])
    return paths


def run_job(job: Job, images: dict[str, Path], device: str, out: Path = OUT, sizes: dict | None = None) -> dict:
    """The blind quick demo of `job` in <out>/runs/<name>/; `sizes`: DemoConfig settings merged last."""
    run_dir = out / "runs" / job.name
    cfg = DemoConfig.preset(
        quick=True,
        blind=True,
        seed=job.seed,
        scenario="no_attack" if job.attack == "clean" else "attack",
        trigger=job.trigger(images),
        device=device,
        cache_dir=str(out / "cache"),
        **{"n_poison": job.n_poison or None, **CUTS, **(sizes or {})},
    )
    return run_demo(cfg, run_dir, throttled())


def flags_target(report: dict, verdict: dict, target: int) -> dict[str, bool]:
    """Does each detector on its own name the target? (the 1/5/10 % check) AC twice: with its own
    default cuts (35 % size, silhouette 0.44) and with the verdict's calibrated ones."""
    named = {e["method"]: target in e["classes"] and e["supports"] == "backdoor" for e in verdict["evidence"]}
    ac = get_defense("activation-clustering").config_class()
    fixed = ac_evidence(
        report["activation_clustering"]["classes"], ac.size_threshold, ac.silhouette_threshold, SPEC.names
    )
    return {
        "activation-clustering (default cuts)": target in fixed.classes,
        "activation-clustering": named.get("activation-clustering", False),
        "neural-cleanse": named.get("neural-cleanse", False),
        "kd-disagreement": named.get("kd-disagreement", False),
    }


def row_of(job: Job, report: dict) -> dict:
    v = rescore(report)
    status, targets = v["status"], v["target_classes"]
    outcome = status
    if job.target is not None and status == "backdoor":
        outcome = "right" if job.target in targets else "wrong"
    return {
        "name": job.name,
        "attack": job.attack,
        "rate": job.n_poison / N_TRAIN,
        "n_poison": job.n_poison,
        "seed": job.seed,
        "target": job.target,
        "rate_check": job.rate_check,
        "status": status,
        "target_classes": targets,
        "confidence": v["confidence"],
        "outcome": outcome,
        "evidence": {e["method"]: {"supports": e["supports"], "classes": e["classes"]} for e in v["evidence"]},
        "flags_target": flags_target(report, v, job.target) if job.target is not None else None,
        "asr": (report.get("teacher") or {}).get("asr"),
        "wall_s": report.get("wall_s"),
        "timings": report.get("timings"),  # seconds per stage (a cached baseline/teacher is not retrained)
    }


def frac(rows: list[dict], key) -> str:
    return f"{sum(1 for r in rows if key(r))}/{len(rows)}"


def tables(rows: list[dict]) -> str:
    main = [r for r in rows if not r["rate_check"]]
    lines = [
        "| Models | n | backdoor, right target | backdoor, wrong target | inconclusive | no_evidence |",
        "|---|---|---|---|---|---|",
    ]
    for attack in (*MAIN, "clean"):
        rs = [r for r in main if r["attack"] == attack]
        if not rs:
            continue
        if attack == "clean":
            alarms = frac(rs, lambda r: r["status"] == "backdoor")
            label, right, wrong = "clean (no attack)", "—", f"**{alarms}** false alarms"
        else:
            targets = sorted({r["target"] for r in rs})
            label = f"{attack} ({rs[0]['n_poison']} poisons, target {'/'.join(map(str, targets))})"
            right, wrong = frac(rs, lambda r: r["outcome"] == "right"), frac(rs, lambda r: r["outcome"] == "wrong")
        lines.append(
            f"| {label} | {len(rs)} | {right} | {wrong} | {frac(rs, lambda r: r['status'] == 'inconclusive')} | "
            f"{frac(rs, lambda r: r['status'] == 'no_evidence')} |"
        )
    rate_rows = [r for r in rows if r["attack"] in ("badnets", "blended") and r["target"] is not None]
    if any(r["rate_check"] for r in rate_rows):
        lines += [
            "",
            "| Attack | poison rate | n | AC, default cuts (size ≤ 35 %, silhouette ≥ 0.44) flags the target | "
            f"AC, verdict's cuts (silhouette ≥ {AC_SILHOUETTE_THRESHOLD}) | NC (index > 2) | KD structure | "
            "verdict: backdoor, right target |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for attack in ("badnets", "blended"):
            for n in sorted({r["n_poison"] for r in rate_rows if r["attack"] == attack}):
                rs = [r for r in rate_rows if r["attack"] == attack and r["n_poison"] == n]
                cells = [frac(rs, lambda r, m=m: r["flags_target"][m]) for m in r_methods()]
                lines.append(
                    f"| {attack} | {n / N_TRAIN:.0%} ({n}) | {len(rs)} | {' | '.join(cells)} | "
                    f"{frac(rs, lambda r: r['outcome'] == 'right')} |"
                )
    return "\n".join(lines)


def r_methods() -> tuple[str, ...]:
    return ("activation-clustering (default cuts)", "activation-clustering", "neural-cleanse", "kd-disagreement")


def stored_rows() -> list[dict]:
    """The rows of the last results/verdict.json (empty when there is none)."""
    path = ROOT / "benchmarks" / "results" / "verdict.json"
    return json.loads(path.read_text()).get("rows", []) if path.is_file() else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rescore", action="store_true", help="re-score the stored reports; train nothing")
    ap.add_argument("--limit", type=int, default=0, help="run at most N new models (0 = the whole queue)")
    ap.add_argument("--only", default="", help="attacks to run, e.g. badnets,clean (default: all)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rerun-missing", action="store_true", help="re-run models whose run dir is gone")
    smoke_args(ap)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdaudit-verdict-smoke-") as tmp:
        if a.smoke:
            a.only, a.limit, a.rerun_missing, a.rescore = "clean", 1, True, False
            run(a, Path(tmp), {**SMOKE_SETUP, "neural_cleanse": SMOKE_NC})
        else:
            run(a, OUT, {})


def run(a: argparse.Namespace, out: Path, sizes: dict) -> None:
    """The queue (or `--only` of it) under `out`, the result JSON rewritten after every model."""
    device = resolve_device(a.device)
    images = trigger_images(out / "triggers")
    only = {x for x in a.only.split(",") if x}
    jobs = [j for j in queue() if not only or j.attack in only]
    t0 = time.perf_counter()
    rows: list[dict] = []
    new = 0
    gemm = sgemm_gflops(device, smoke=a.smoke)
    stored = {r["name"]: r for r in (stored_rows() if not a.rerun_missing else [])}
    for i, job in enumerate(jobs):
        path = out / "runs" / job.name / "report.json"
        if not path.is_file() and job.name in stored:
            rows.append(stored[job.name])
            log(f"  {job.name}: kept from results/verdict.json (its run dir is not here)")
            continue
        if not path.is_file():
            if a.rescore or (a.limit and new >= a.limit):
                continue
            log(f"[{i + 1}/{len(jobs)}] {job.name}: target {job.target}, {job.n_poison} poisons")
            run_job(job, images, a.device, out, sizes)
            new += 1
        rows.append(row_of(job, json.loads(path.read_text())))
        log(f"  {job.name}: {rows[-1]['status']} {rows[-1]['target_classes']} ({rows[-1]['outcome']})")
        write_result(
            "verdict",
            "verdict.py",
            device,
            {
                "wall_s": round(sum(r["wall_s"] or 0 for r in rows), 1),
                "session_wall_s": round(time.perf_counter() - t0, 1),
                "sgemm_gflops": round(gemm, 1),
                "dataset": f"Fashion-MNIST, {SPEC.arch}, quick blind demo + {CUTS}",
                "models": len(rows),
                "queued": len(jobs),
                "rows": rows,
                "table": tables(rows),
            },
            a.results,
        )
    print(tables(rows), flush=True)
    total = sum(r["wall_s"] or 0 for r in rows)
    print(f"\n{len(rows)} models, wall time {total:.0f} s (sum over models) on {describe(device)}, "
          f"{torch.get_num_threads()} threads, sgemm {gemm:.0f} GFLOP/s")  # fmt: skip


if __name__ == "__main__":
    main()
