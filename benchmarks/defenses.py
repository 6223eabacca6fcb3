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
        [--device auto]

With several seeds (each trains its own teacher and runs every method again), each cell of the
table is the mean ± standard deviation over seeds; `rows` in the JSON keep every seed's row.

Default: the quick demo setup (10,000 training images, 2 % poisoned, 2,000 clean images, 5,000
test images). Prints a markdown table and writes benchmarks/results/defenses[_full].json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from statistics import fmean, stdev  # noqa: E402

import torch  # noqa: E402

from benchmarks.common import log, sgemm_gflops, throttled, write_result  # noqa: E402
from kdcore.config import to_dict  # noqa: E402
from kdcore.defenses import DEFENSES, get_defense  # noqa: E402
from kdcore.device import describe, resolve_device  # noqa: E402
from kdcore.report import ROLES, detection_of, evidence_of, headline_of, metrics_of, models_of  # noqa: E402
from kdcore.runs.defend import demo_inputs  # noqa: E402
from kdcore.runs.demo import DemoConfig  # noqa: E402
from kdcore.tables import pct  # noqa: E402

# The attacks compared. n_poison: poisons in the quick setup's 10,000 training images (×5 for --full).
ATTACKS = {
    "badnets": ({"kind": "badnets", "target": 7, "size": 3}, 200),
    "blended": ({"kind": "blended", "target": 7, "alpha": 0.15}, 200),
    "sig": ({"kind": "sig", "target": 7}, 200),
    "wanet": ({"kind": "wanet", "target": 7}, 500),
}


def row(
    attack: str,
    method: str,
    family: str,
    ev: dict | None,
    det: dict | None,
    wall: float,
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
        "wall_s": round(wall, 1),
        "needs_labels": labels,
        "note": note,
        "config": config,  # the method's resolved settings, so the row can be re-run
        "evidence": evidence,  # the method's own findings (NC's per-class norms, the ℓ∞ sweep, ...)
    }


def method_rows(attack: str, name: str, report: dict, labels: bool) -> list[dict]:
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
            labels,
            headline_of(report),
            config=report["method_config"],
            evidence=evidence_of(report),
        )
        for role, ev in own.items()
    ]


def run_attack(
    attack: str, methods: list[str], full: bool, device: torch.device, out: Path, seed: int = 0
) -> list[dict]:
    trigger, n_poison = ATTACKS[attack]
    n_poison *= 5 if full else 1  # the full setup has 5× the training images
    cfg = DemoConfig.preset(not full, trigger=trigger, n_poison=n_poison, cache_dir=str(out / "cache"), seed=seed)
    log(f"{attack}: teacher (cached after the first run)")
    inputs = demo_inputs(cfg, device, throttled())
    inputs.on_progress = throttled()
    suspect = inputs.evaluate(inputs.model).metrics()
    rows = [row(attack, "suspect (no defense)", "—", suspect, None, 0.0, False)]
    # The core method runs with the demo setup's own settings (as `kdcore demo` does); inputs.work_dir
    # stays None, so its stages go to a fresh temporary folder and its time includes all its work.
    settings = {"kd": to_dict(cfg.kd)}
    for name in methods:
        log(f"{attack}: {name}")
        method = get_defense(name).from_params(settings.get(name))
        report = method.run(inputs).report()
        rows += method_rows(attack, name, report, method.needs_labels)
    return [{**r, "seed": seed} for r in rows]


def spread(rs: list[dict], key: str, fmt=pct) -> str:
    """One cell: the value, or mean ± standard deviation over the seeds' rows."""
    vals = [float(r[key]) for r in rs if r.get(key) is not None]
    if len(vals) < 2:
        return fmt(vals[0] if vals else None)
    return f"{fmt(fmean(vals))} ± {fmt(stdev(vals)).removesuffix(' %')}"


def table(rows: list[dict]) -> str:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["attack"], r["method"]), []).append(r)
    seeds = max((len(g) for g in groups.values()), default=1)
    head = "| Attack | Method | clean_acc | poison_acc | asr | precision | recall | time (s) | labels | note |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for (attack, method), rs in groups.items():
        cells = [spread(rs, k) for k in ("clean_acc", "poison_acc", "asr", "precision", "recall")]
        few = f" (n = {len(rs)})" if len(rs) < seeds else ""  # a run stopped before its last seed
        lines.append(
            f"| {attack} | {method}{few} | {' | '.join(cells)} | {fmean(r['wall_s'] for r in rs):.0f} | "
            f"{'yes' if rs[0]['needs_labels'] else ''} | {rs[-1]['note']} |"
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
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "defenses")
    a = ap.parse_args()
    methods = [m for m in a.methods.split(",") if m] or sorted(DEFENSES)
    for m in methods:
        get_defense(m)
    device = resolve_device(a.device)
    t0 = time.perf_counter()
    rows: list[dict] = []
    seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    gemm = sgemm_gflops(device)
    for attack in a.triggers.split(","):
        if attack not in ATTACKS:
            raise SystemExit(f"unknown attack {attack!r}; expected some of {', '.join(ATTACKS)}")
    for seed in seeds:  # one seed of every attack first: a useful table exists early
        for attack in a.triggers.split(","):
            rows += run_attack(attack, methods, a.full, device, a.out, seed)
            print(table(rows), flush=True)
            wall = time.perf_counter() - t0
            result = {"wall_s": round(wall, 1), "seeds": seeds, "sgemm_gflops": round(gemm, 1), "rows": rows}
            write_result(
                "defenses_full" if a.full else "defenses", "defenses.py", device, result | {"table": table(rows)}
            )
    threads = torch.get_num_threads()
    print(f"\nwall time {wall:.0f} s on {describe(device)}, {threads} threads, sgemm {gemm:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
