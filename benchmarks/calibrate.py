"""Fit the calibrated verdict on the zoo's calibration part, and score it on the held-out parts (issue 20,
items 3–4). Reads benchmarks/results/zoo.json (every audited model's evidence numbers and truth), so it
re-runs no model.

    .venv/bin/python benchmarks/calibrate.py --fit    # refit: kdcore/verdict/calibration.json from the
                                                      # calibration part only, then score
    .venv/bin/python benchmarks/calibrate.py          # score every part with the shipped calibration

Scores per part (the README's headline numbers are the held-out parts'; "fresh" was fixed in the split
before the refit on the calibration's second half, "heldout" had been looked at before it, "third" was fixed
after an earlier fit was chosen; "fourth" and "fifth", fixed before the shipped fit's last change and scored
only after it, are UNTOUCHED by it and scored together too), and of the held-out parts together: ROC-AUC of P(backdoor);
TrojAI's cross-entropy (mean −log of the probability given to the truth, P clipped to [0.001, 0.999];
chance at 0.5 is 0.693, TrojAI's round target half of that, 0.3465); the detection rate (status
"backdoor" among backdoored models) and false-alarm rate (status "backdoor" among clean ones) at the
shipped thresholds; the target right among detected; each with a 95 % bootstrap interval over models
(2,000 resamples, seeded); the same per architecture and per attack; and a reliability diagram
(docs/zoo_reliability.png: mean P against the share backdoored, in five bins). Poisoned models whose
trigger sends under half of the test images to the target (MIN_ASR) are left out of fit and scores, and
listed: no backdoor took. Results in
benchmarks/results/zoo_score.json beside the printed table.

    .venv/bin/python benchmarks/calibrate.py --cv     # how the shipped features and C were chosen:
                                                      # 10-fold CV on the calibration part, one change at a time

`--smoke`: fits and scores a synthetic set of rows (two well-separated groups), to check the plumbing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import log, smoke_args, write_result  # noqa: E402
from benchmarks.zoo.recipes import HELD_OUT, MIN_ASR, PARTS, UNTOUCHED  # noqa: E402
from kdcore.verdict.calibrated import (  # noqa: E402
    CALIBRATION_FILE,
    FEATURES,
    NATURAL_SIGNS,
    SIGNS,
    Calibration,
    class_features,
    load,
    save,
)

T_LO, T_HI = 0.2, 0.5  # fixed before any fit: no_evidence at P ≤ 0.2, backdoor at P ≥ 0.5
# Stage 1's inverse regularisation, chosen with the features by 10-fold cross-validation on the
# calibration part alone: on its first 46 models cross-entropy 0.253 at C = 1, 0.228 at 3, 0.219 at 10;
# on all 73, with the silhouette left out, 0.257 / 0.245 / 0.228 (3 kept: the gain past it is within noise)
STAGE1_C = 3.0
FOLDS = 5
BOOT = 2000
EPS = 0.001
PICTURE = ROOT / "docs" / "zoo_reliability.png"


def implanted(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the rows to fit and score, the models made in vain: a poisoned one whose backdoor did not take,
    attack success on the test set < MIN_ASR, or one whose training failed; benchmarks/zoo.py does not
    audit them). As in TrojAI, a model counts as backdoored when its trigger works; one poisoned
    in vain is neither a backdoored model (nothing to find) nor a clean one (its training was poisoned)."""
    failed = [r for r in rows if r.get("outcome") in ("training failed", "implant failed") or not r.get("status")
              or (r["truth"]["backdoored"] and (r["truth"].get("asr") or 0.0) < MIN_ASR)]  # fmt: skip
    names = {r["name"] for r in failed}
    return [r for r in rows if r["name"] not in names], failed


def model_rows(rows: list[dict], k: int = 10) -> list[tuple[list[list[float]], bool, int | None]]:
    """(class features, backdoored, target) per zoo row."""
    out = []
    for r in rows:
        values = {m: e.get("values", {}) for m, e in r["evidence"].items()}
        out.append((class_features(values, k), bool(r["truth"]["backdoored"]), r["truth"]["target"]))
    return out


class SignedLogistic:
    """Stage 1: scikit-learn's L2 logistic regression (C, class_weight="balanced") with each coefficient
    kept on the side `signs` give it (or at 0): L-BFGS-B with bounds on the same objective."""

    def __init__(self, signs, C: float = 1.0):
        self.signs, self.C = signs, C

    def fit(self, Z, y) -> SignedLogistic:
        import numpy as np
        from scipy.optimize import minimize

        w_class = {c: len(y) / (2 * max(1, int((y == c).sum()))) for c in (0, 1)}
        sw = np.where(y == 1, w_class[1], w_class[0])
        t = 2 * y - 1

        def loss(theta):
            w, b = theta[:-1], theta[-1]
            m = t * (Z @ w + b)
            value = 0.5 * w @ w + self.C * (sw * np.logaddexp(0, -m)).sum()
            g = -self.C * sw * t / (1 + np.exp(m))
            return value, np.append(w + Z.T @ g, g.sum())

        bounds = [(0, None) if s > 0 else (None, 0) if s < 0 else (0, 0) for s in self.signs] + [(None, None)]
        theta = minimize(loss, np.zeros(Z.shape[1] + 1), jac=True, method="L-BFGS-B", bounds=bounds).x
        self.coef_, self.intercept_ = theta[:-1], float(theta[-1])
        return self

    def decision_function(self, Z):
        return Z @ self.coef_ + self.intercept_


def fit(
    models: list[tuple[list[list[float]], bool, int | None]],
    about: dict,
    signs: dict[str, int] = SIGNS,
    C: float = STAGE1_C,
) -> Calibration:
    """Stage 1 on every (model, class) pair, stage 2 on the cross-fitted largest class logit (module
    docstring of kdcore.verdict.calibrated). `signs` and `C` default to the shipped ones (--cv tries others)."""
    import numpy as np  # the fit's numerics: scikit-learn's, only here
    from sklearn.linear_model import LogisticRegression

    X = np.array([row for feats, _, _ in models for row in feats], dtype=float)
    y = np.array([int(bad and c == target) for feats, bad, target in models for c in range(len(feats))])
    groups = np.array([i for i, (feats, _, _) in enumerate(models) for _ in feats])
    mean, scale = X.mean(0), X.std(0)
    scale[scale < 1e-6] = 1.0
    Z = (X - mean) / scale

    def stage1(idx: np.ndarray) -> SignedLogistic:
        return SignedLogistic(np.array([signs[f] for f in FEATURES]), C=C).fit(Z[idx], y[idx])

    rng = np.random.default_rng(0)
    fold_of = rng.permutation(len(models)) % FOLDS
    top = np.zeros(len(models))
    for f in range(FOLDS):
        held = np.isin(groups, np.nonzero(fold_of == f)[0])
        m = stage1(~held)
        logits = m.decision_function(Z[held])
        for i in np.unique(groups[held]):
            top[i] = logits[groups[held] == i].max()
    bad = np.array([int(b) for _, b, _ in models])
    platt = LogisticRegression(C=10.0, max_iter=1000).fit(top.reshape(-1, 1), bad)
    full = stage1(np.arange(len(X)))
    return Calibration(
        features=tuple(FEATURES),
        mean=tuple(round(float(v), 6) for v in mean),
        scale=tuple(round(float(v), 6) for v in scale),
        coef=tuple(round(float(v), 6) for v in full.coef_),
        intercept=round(float(full.intercept_), 6),
        platt_a=round(float(platt.coef_[0][0]), 6),
        platt_b=round(float(platt.intercept_[0]), 6),
        t_lo=T_LO,
        t_hi=T_HI,
        fitted={**about, "models": len(models), "backdoored": int(bad.sum()), "date": date.today().isoformat()},
    )


def cross_validate(models: list, signs: dict[str, int], C: float, folds: int = 10, seed: int = 0) -> dict:
    """k-fold cross-validation of the whole fit (both stages) on the models given: each model's P(backdoor)
    from a fit that never saw it. How the shipped features and C were chosen, on the calibration part only."""
    rng = random.Random(seed)
    order = list(range(len(models)))
    rng.shuffle(order)
    fold_of = {i: n % folds for n, i in enumerate(order)}
    p = [0.0] * len(models)
    for f in range(folds):
        train = [m for i, m in enumerate(models) if fold_of[i] != f]
        cal = fit(train, {}, signs, C)
        for i, (feats, _, _) in enumerate(models):
            if fold_of[i] == f:
                p[i] = cal.judge_rows(feats).p_backdoor
    y = [bad for _, bad, _ in models]
    return {"cross_entropy": round(cross_entropy(p, y), 4), "roc_auc": round(auc(p, y) or 0.0, 4)}


CV_GAIN = 0.01  # a change is adopted when it lowers the cross-validated cross-entropy by more than this


def cv_search(models: list) -> list[dict]:
    """--cv: from the shipped choice, every one-step change (a weighted feature dropped, an unweighted one
    weighted on its natural side, stage 1's C a step up or down among 1, 3, 10) cross-validated 10-fold on
    the models given; the best change is adopted when it gains more than CV_GAIN, and the search goes on
    from there until none does. Each round's trials are returned; the last round's first row is the
    choice to ship (by hand: SIGNS / UNWEIGHTED in kdcore.verdict.calibrated, STAGE1_C here)."""
    signs, c = dict(SIGNS), STAGE1_C
    rounds: list[dict] = []
    while True:
        trials = [("shipped" if not rounds else "current", signs, c)]
        for name in FEATURES:
            trials.append(
                (
                    ("drop " if signs[name] else "weigh ") + name,
                    {**signs, name: 0 if signs[name] else NATURAL_SIGNS[name]},
                    c,
                )
            )
        trials += [(f"C = {x:g}", signs, x) for x in (1.0, 3.0, 10.0) if x != c]
        scored = []
        for label, sg, cc in trials:
            scored.append(
                {"trial": label, "C": cc, "weighted": [f for f in FEATURES if sg[f]], **cross_validate(models, sg, cc)}
            )
            log(f"cv round {len(rounds) + 1}, {label}: {scored[-1]['cross_entropy']}")
        best = min(scored[1:], key=lambda t: t["cross_entropy"])
        adopt = best["cross_entropy"] < scored[0]["cross_entropy"] - CV_GAIN
        rounds.append({"trials": scored, "adopted": best["trial"] if adopt else None})
        if not adopt:
            return rounds
        signs = {f: NATURAL_SIGNS[f] if f in best["weighted"] else 0 for f in FEATURES}
        c = best["C"]


def auc(p: Sequence[float], y: Sequence[bool]) -> float | None:
    pos = [a for a, b in zip(p, y, strict=True) if b]
    neg = [a for a, b in zip(p, y, strict=True) if not b]
    if not pos or not neg:
        return None
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def cross_entropy(p: Sequence[float], y: Sequence[bool]) -> float:
    return statistics.fmean(
        -math.log(min(1 - EPS, max(EPS, q)) if t else 1 - min(1 - EPS, max(EPS, q))) for q, t in zip(p, y, strict=True)
    )


def rates(scored: list[dict]) -> dict:
    bad = [s for s in scored if s["backdoored"]]
    clean = [s for s in scored if not s["backdoored"]]
    detected = [s for s in bad if s["status"] == "backdoor"]
    p, y = [s["p"] for s in scored], [s["backdoored"] for s in scored]
    return {
        "models": len(scored),
        "backdoored": len(bad),
        "clean": len(clean),
        "roc_auc": auc(p, y),
        "cross_entropy": cross_entropy(p, y) if scored else None,
        "detection": len(detected) / len(bad) if bad else None,
        "false_alarm": sum(s["status"] == "backdoor" for s in clean) / len(clean) if clean else None,
        "no_evidence_clean": sum(s["status"] == "no_evidence" for s in clean) / len(clean) if clean else None,
        "target_right": sum(s["target"] == s["true_target"] for s in detected) / len(detected) if detected else None,
    }


def interval(scored: list[dict], key: str, rng: random.Random) -> list[float] | None:
    """The 95 % bootstrap interval of rates()[key] over models."""
    vals = []
    for _ in range(BOOT):
        v = rates([rng.choice(scored) for _ in scored])[key]
        if v is not None:
            vals.append(v)
    if len(vals) < BOOT // 2:
        return None
    vals.sort()
    return [round(vals[int(0.025 * len(vals))], 4), round(vals[int(0.975 * len(vals)) - 1], 4)]


def score(rows: list[dict], cal: Calibration) -> list[dict]:
    out = []
    for r, (feats, bad, target) in zip(rows, model_rows(rows), strict=True):
        values = {m: e.get("values", {}) for m, e in r["evidence"].items()}
        j = cal.judge(values, len(feats))
        out.append({
            "name": r["name"], "part": r["part"], "arch": r["arch"], "attack": r["attack"], "hard": r.get("hard", ""),
            "backdoored": bad, "true_target": target, "p": round(j.p_backdoor, 4), "status": j.status,
            "target": j.target, "target_probability": round(j.target_probability, 4),
        })  # fmt: skip
    return out


def summary(scored: list[dict], seed: int = 0) -> dict:
    rng = random.Random(seed)
    s = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rates(scored).items()}
    if len(scored) >= 4:
        for key in ("roc_auc", "cross_entropy", "detection", "false_alarm", "target_right"):
            s[key + "_95"] = interval(scored, key, rng)
    return s


def by(scored: list[dict], key: Callable[[dict], str]) -> dict:
    groups: dict[str, list[dict]] = {}
    for s in scored:
        groups.setdefault(key(s), []).append(s)
    return {
        g: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rates(rs).items()}
        for g, rs in sorted(groups.items())
    }


def reliability(scored: list[dict], bins: int = 5) -> list[dict]:
    out = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        rs = [s for s in scored if lo <= s["p"] < hi or (b == bins - 1 and s["p"] == 1.0)]
        if rs:
            out.append({"bin": [lo, hi], "models": len(rs), "mean_p": round(statistics.fmean(s["p"] for s in rs), 4),
                        "share_backdoored": round(sum(s["backdoored"] for s in rs) / len(rs), 4)})  # fmt: skip
    return out


def draw(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib  # the picture only: matplotlib comes with grad-cam

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=110)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfectly calibrated")
    for (name, pts), marker in zip(curves.items(), itertools.cycle("os^Dv")):  # one marker per part
        ax.plot([p["mean_p"] for p in pts], [p["share_backdoored"] for p in pts], marker=marker, label=name)
        for p in pts:
            ax.annotate(str(p["models"]), (p["mean_p"], p["share_backdoored"]), fontsize=7, xytext=(4, -8),
                        textcoords="offset points")  # fmt: skip
    ax.set_xlabel("P(backdoor), mean in the bin")
    ax.set_ylabel("share of the bin's models backdoored")
    ax.set_title("Reliability of P(backdoor), model zoo", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def fmt(v: object) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


HEAD = ("Part", "models (clean)", "ROC-AUC [95 %]", "cross-entropy [95 %]", "detection [95 %]",
        "false alarms [95 %]", "clean → no_evidence", "target right [95 %]")  # fmt: skip


def cell(s: dict, key: str) -> str:
    ci = s.get(key + "_95")
    return fmt(s[key]) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def table(parts: dict[str, dict]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for part, s in parts.items():
        cells = [
            part,
            f"{s['models']} ({s['clean']})",
            *(cell(s, k) for k in ("roc_auc", "cross_entropy", "detection", "false_alarm")),
        ]
        cells += [fmt(s["no_evidence_clean"]), cell(s, "target_right")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def synthetic_rows(n: int = 24) -> list[dict]:
    """--smoke: rows whose target class has a large recovered-trigger gap and a small NC norm."""
    rng = random.Random(1)
    rows = []
    for i in range(n):
        bad = i % 2 == 0
        target = (i * 3) % 10 if bad else None
        l1 = [rng.uniform(30, 60) for _ in range(10)]
        gap = [rng.uniform(0.0, 0.4) for _ in range(10)]
        if bad:
            l1[target], gap[target] = 8.0, 0.95
        rt = [{"class": c, "teacher_flip": 0.97, "student_flip": 0.97 - gap[c], "gap": gap[c]} for c in range(10)]
        evidence = {"neural-cleanse": {"values": {"l1": l1}}, "recovered-trigger": {"values": {"classes": rt}}}
        part = "calibration" if i < n // 2 else "heldout"
        truth = {"backdoored": bad, "target": target, "asr": 0.95 if bad else None}
        attack = "badnets" if bad else "clean"
        rows.append({"name": f"synthetic-{i}", "part": part, "arch": "paper-cnn", "attack": attack, "hard": "",
                     "truth": truth, "evidence": evidence, "status": "backdoor" if bad else "no_evidence"})  # fmt: skip
    return rows


def vain_row(r: dict) -> dict:
    t = r["truth"]
    return {"name": r["name"], "part": r["part"], "outcome": r.get("outcome"), "asr": t.get("asr"),
            "clean_acc": t.get("clean_acc")}  # fmt: skip


def attack_kind(s: dict) -> str:
    return s["attack"] if s["backdoored"] else "clean" + (f" ({s['hard']})" if s["hard"] else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", action="store_true", help="refit kdcore/verdict/calibration.json on the calibration part")
    ap.add_argument("--zoo", type=Path, default=None, help="the zoo's results (default: <results>/zoo.json)")
    ap.add_argument("--cv", action="store_true", help="10-fold cross-validation of feature and C choices on the "
                    "calibration part, one change at a time (results/zoo_cv.json), then exit")  # fmt: skip
    smoke_args(ap)
    a = ap.parse_args()
    if a.smoke:
        zoo = {"rows": synthetic_rows(), "setup": {"synthetic": True}}
    else:
        zoo = json.loads((a.zoo or a.results / "zoo.json").read_text())
    rows, failed = implanted(zoo["rows"])
    if failed:
        log(f"left out, made in vain (no backdoor took, or training failed): {', '.join(r['name'] for r in failed)}")
    cal_rows = [r for r in rows if r["part"] == "calibration"]
    if a.cv:
        rounds = cv_search(model_rows(cal_rows))
        for n, r in enumerate(rounds, 1):
            print(f"round {n} (adopted: {r['adopted']})")
            print("\n".join(f"  {t['trial']:32s} cross-entropy {t['cross_entropy']:.3f}  ROC-AUC {t['roc_auc']:.3f}"
                            for t in r["trials"]))  # fmt: skip
        final = rounds[-1]["trials"][0]
        print(f"choice: C = {final['C']:g}, weighted {final['weighted']}")
        out = {"models": len(cal_rows), "gain": CV_GAIN, "rounds": rounds, "choice": final}
        write_result("zoo_cv", "calibrate.py --cv", torch.device("cpu"), out, a.results)
        return
    if a.fit or a.smoke:
        about = {"source": "benchmarks/results/zoo.json, calibration part", "setup": zoo.get("setup")}
        cal = fit(model_rows(cal_rows), about)
        if not a.smoke:
            save(cal)
            log(f"fitted on {len(cal_rows)} calibration models: {CALIBRATION_FILE.relative_to(ROOT)}")
    else:
        cal = load()
    scored = score(rows, cal)
    parts = {p: summary([s for s in scored if s["part"] == p]) for p in PARTS}
    parts = {p: s for p, s in parts.items() if s["models"]}
    both = [s for s in scored if s["part"] in HELD_OUT]
    untouched = [s for s in scored if s["part"] in UNTOUCHED]
    if sum(p in parts for p in UNTOUCHED) > 1:  # the parts the shipped fit never saw in any form: the cleanest test
        parts["untouched, together"] = summary(untouched)
    if sum(p in parts for p in HELD_OUT) > 1:  # the held-out parts together: the widest test there is
        parts["held-out, all"] = summary(both)
    held = {p: [s for s in scored if s["part"] == p] for p in HELD_OUT if p in parts}
    if "untouched, together" in parts:
        held["untouched"] = untouched
    curves = {p: reliability([s for s in scored if s["part"] == p]) for p in PARTS if p in parts}
    if not a.smoke and held:
        draw({f"{p} ({parts[p]['models']} models)": c for p, c in curves.items()}, PICTURE)
    print(table(parts), flush=True)
    write_result("zoo_score", "calibrate.py", torch.device("cpu"), {
        "thresholds": {"t_lo": cal.t_lo, "t_hi": cal.t_hi}, "calibration": cal.fitted, "parts": parts,
        "made_in_vain": [vain_row(r) for r in failed],
        **{f"{p}_by_arch": by(ss, lambda s: s["arch"]) for p, ss in held.items()},
        **{f"{p}_by_attack": by(ss, attack_kind) for p, ss in held.items()},
        "reliability": curves, "table": table(parts), "models": scored,
    }, a.results)  # fmt: skip


if __name__ == "__main__":
    main()
