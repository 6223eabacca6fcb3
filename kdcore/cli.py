"""`python -m kdcore` / `kdcore`: the command line.

Exit codes: 0 ok · 2 bad input (one line on stderr saying why) · 1 a bug (traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from kdcore.errors import ConfigError, KDCoreError

EXIT_OK, EXIT_BUG, EXIT_INPUT = 0, 1, 2


class BarProgress:
    """Pipeline progress → one tqdm bar per stage, on stderr."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.stage, self.bar = enabled, None, None

    def __call__(self, stage: str, step: int, total: int, metrics: dict) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self.stage or self.bar is None or (total and self.bar.total != total):
            self.close()
            self.stage = stage
            self.bar = tqdm(
                total=total or None,
                desc=f"{stage:>10}",
                unit="step",
                leave=True,
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.5,
            )
        self.bar.n = step
        shown = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in metrics.items() if k != "message"}
        if shown:
            self.bar.set_postfix(shown, refresh=False)
        self.bar.refresh() if step >= (total or 0) else self.bar.update(0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError as e:
        raise ConfigError(f"Expected comma-separated integers; got {text!r}") from e


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise ConfigError(f"Expected comma-separated numbers; got {text!r}") from e


def _default_out(kind: str) -> Path:
    from kdcore.paths import data_home

    return data_home() / "runs" / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def _kd_overrides(a: argparse.Namespace) -> dict:
    distill = {
        k: v
        for k, v in (
            ("epochs", a.kd_epochs),
            ("lr", a.kd_lr),
            ("temperature", a.temperature),
            ("batch_size", a.batch_size),
            ("augment", a.augment or None),
        )
        if v is not None
    }
    finetune = {k: v for k, v in (("epochs", a.ft_epochs), ("lr", a.ft_lr)) if v is not None}
    kd: dict = {}
    if distill:
        kd["distill"] = distill
    if finetune:
        kd["finetune"] = {"val_fraction": 0.1, "patience": 2, "lr": 1e-4, **finetune}
    if getattr(a, "student_arch", None):
        kd["student_arch"] = a.student_arch
    return kd


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _add_kd_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("defence hyperparameters")
    g.add_argument("--kd-epochs", type=int, help="distillation epochs (paper: 50)")
    g.add_argument("--kd-lr", type=float, help="distillation Adam learning rate (default 1e-3)")
    g.add_argument("--temperature", type=float, help="KD temperature T (paper: 20)")
    g.add_argument("--batch-size", type=int, help="distillation batch size (default 128)")
    g.add_argument("--augment", action="store_true", help="random ±2 px shifts during distillation")
    g.add_argument("--ft-epochs", type=int, help="max fine-tuning epochs (early stopping on a val slice)")
    g.add_argument("--ft-lr", type=float, help="fine-tuning learning rate (default 1e-4)")


def _add_audit_input_args(p: argparse.ArgumentParser, trigger: bool = True) -> None:
    p.add_argument("--model", help=".safetensors (preferred) or .pt/.pth state_dict")
    p.add_argument("--arch", help="architecture: paper-cnn, paper-vgg11, resnet18-small or tv:<torchvision name>")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--input-shape", help="C,H,W (default: the architecture's)")
    p.add_argument("--mean", help="per-channel mean, e.g. 0.5 or 0.49,0.48,0.45")
    p.add_argument("--std", help="per-channel std")
    p.add_argument("--class-names", help="comma-separated class names in output order")
    p.add_argument("--unlabeled", help="folder or .zip of unlabelled clean images")
    p.add_argument("--train", help="folder or .zip of the labelled training set (class sub-folders)")
    p.add_argument("--test", help="folder or .zip of a labelled test set (class sub-folders)")
    if trigger:
        p.add_argument("--trigger", help="known trigger: badnets:target=7,size=3 | JSON | file.json")
    p.add_argument("--max-unlabeled", type=int, help="use at most this many unlabelled images")


def _add_demo_attack_args(p: argparse.ArgumentParser) -> None:
    from kdcore.triggers import TRIGGERS

    p.add_argument(
        "--trigger",
        help=f"the attack ({', '.join(sorted(TRIGGERS))}), e.g. sig:target=7,delta=20 (default: BadNets 3×3, target 7)",
    )
    p.add_argument("--n-poison", type=int, help="poisoned training images (default 100; quick: 200)")


def _defense_epilog() -> str:
    from kdcore.defenses import DEFENSES

    lines = ["methods:"]
    for name, cls in sorted(DEFENSES.items()):
        needs = ", ".join(cls.needs) or "—"
        tag = "  [needs labelled clean data]" if cls.needs_labels else ""
        lines.append(f"  {name:<22} {cls.family:<9} needs: {needs}{tag}")
        lines.append(f"  {'':<22} {cls.summary}")
    lines.append("")
    lines.append("examples:")
    lines.append("  kdcore defend neural-cleanse --demo --quick")
    lines.append("  kdcore defend bcu --run kdaudit-data/runs/demo-20261122-101500 --param epochs=10")
    lines.append(
        "  kdcore defend fine-pruning --model m.safetensors --unlabeled u.zip --test t.zip --clean-labeled c.zip"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="kdcore",
        description="Audit image classifiers for backdoors: distil → detoxify → fine-tune (Yoshida & Fujino 2020).",
    )
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", type=Path, help="run directory (default: $KDAUDIT_HOME/runs/<kind>-<time>)")
        p.add_argument("--device", default=None, help="auto (default) | cpu | cuda | cuda:N")
        p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
        p.add_argument("--config", type=Path, help="a JSON config file; flags override its values")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("demo", help="built-in Fashion-MNIST backdoor scenario, end to end")
    common(p)
    p.add_argument("--quick", action="store_true", help="small and fast (< 3 min on 2 CPU cores)")
    p.add_argument("--data-dir", help="Fashion-MNIST IDX folder (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--cache-dir", help="where trained baseline/teacher are cached ($KDAUDIT_HOME/cache)")
    p.add_argument("--n-clean", type=int, help="unlabelled clean images for distillation")
    p.add_argument("--teacher-epochs", type=int, help="epochs for the baseline and backdoored teacher")
    _add_demo_attack_args(p)
    _add_kd_args(p)

    p = sub.add_parser("audit", help="audit your own model on your own images")
    common(p)
    _add_audit_input_args(p)
    p.add_argument("--student-arch", help="student architecture (default: the teacher's)")
    _add_kd_args(p)

    p = sub.add_parser(
        "defend",
        help="run another defence (BCU, ℓ∞ pruning, Neural Cleanse, ...) on a run, the demo, or your model",
        description="Run one registered defence on a suspect model. Inputs come from exactly one of: "
        "--run (a finished demo or audit), --demo (the built-in scenario), or audit-style --model/--unlabeled/... "
        "Method settings: --param key=value (repeatable; values are JSON, e.g. --param epochs=5 "
        "--param ratios=[0.01,0.1]) or --params JSON.",
        epilog=_defense_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("method", metavar="METHOD", help="the defence (listed below)")
    common(p)
    p.add_argument("--run", dest="source_run", help="a finished demo or audit run directory")
    p.add_argument("--demo", action="store_true", help="the built-in Fashion-MNIST scenario")
    p.add_argument("--quick", action="store_true", help="with --demo: the quick setup")
    p.add_argument("--data-dir", help="with --demo: Fashion-MNIST IDX folder")
    p.add_argument("--cache-dir", help="with --demo: where the trained teacher is cached")
    _add_demo_attack_args(p)
    _add_audit_input_args(p, trigger=False)
    p.add_argument("--clean-labeled", help="folder or .zip of labelled clean images (fine-pruning, NAD)")
    p.add_argument("--param", action="append", default=[], help="a method setting, key=value (JSON value)")
    p.add_argument("--params", help="all method settings as one JSON object")
    p = sub.add_parser("sweep", help="clean-image budget sweep, under attack and without (Table 5)")
    common(p)
    p.add_argument("--quick", action="store_true", help="the quick demo setup with small budgets")
    p.add_argument("--budgets", help="comma-separated clean-image budgets (default 3000,6500,10000)")
    p.add_argument("--scenarios", help="attack,no_attack (default both)")
    p.add_argument("--seeds", help="comma-separated seeds (default 0)")
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir")
    p.add_argument("--teacher-epochs", type=int)
    _add_kd_args(p)

    p = sub.add_parser("worker", help="run queued jobs from the job store (the dashboard starts these)")
    p.add_argument("--data-dir", help="job store folder (default $KDAUDIT_HOME or ./kdaudit-data)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (one job per GPU at a time)")
    p.add_argument("--once", action="store_true", help="run at most one job, then exit")
    p.add_argument("--job", type=int, help="run exactly this queued job, then exit (e.g. under Ray Jobs)")
    p.add_argument("--drain", action="store_true", help="exit once the queue is empty")

    p = sub.add_parser("jobs", help="submit, list, show, cancel, retry jobs and read their logs")
    jsub = p.add_subparsers(dest="jobs_command", required=True)
    s = jsub.add_parser(
        "submit",
        help="jobs submit KIND [options of `kdcore KIND`] [--json] [--label L]",
        description="Validate and queue a job. KIND is demo, audit or sweep; its options are "
        "those of `kdcore KIND --help`.",
    )
    s.add_argument("kind", choices=["demo", "audit", "sweep", "defend"])
    s.add_argument("options", nargs=argparse.REMAINDER, help="options of the kind, as for `kdcore KIND`")
    for name, h in (
        ("list", "all jobs, newest first"),
        ("show", "one job"),
        ("cancel", "cancel a job"),
        ("retry", "queue a failed/cancelled/interrupted job again"),
        ("logs", "a job's log"),
    ):
        q = jsub.add_parser(name, help=h)
        if name != "list":
            q.add_argument("id", type=int)
        if name == "logs":
            q.add_argument("--tail", type=int, default=50, help="last N lines (0 = all)")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        q.add_argument("--data-dir")
    return ap


def _pop_flag(args: list[str], name: str, takes_value: bool) -> tuple[list[str], str | bool | None]:
    out, value, i = [], None if takes_value else False, 0
    while i < len(args):
        if args[i] == name:
            if takes_value:
                if i + 1 >= len(args):
                    raise ConfigError(f"{name} needs a value")
                value = args[i + 1]
                i += 1
            else:
                value = True
        elif takes_value and args[i].startswith(name + "="):
            value = args[i].split("=", 1)[1]
        else:
            out.append(args[i])
        i += 1
    return out, value


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "—"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _job_line(j) -> str:
    prog = f"{j.stage} {j.step}/{j.total}" if j.state == "running" else ""
    return f"{j.id:>5}  {j.kind:<6} {j.state:<11} {_fmt_s(j.elapsed()):>7}  {prog:<24} {j.label or ''}"


def jobs_main(a: argparse.Namespace) -> int:
    from kdcore.jobs.store import JobStore

    if a.jobs_command == "submit":
        opts, as_json = _pop_flag(list(a.options), "--json", False)
        opts, label = _pop_flag(opts, "--label", True)
        opts, data_dir = _pop_flag(opts, "--data-dir", True)
        store = JobStore(data_dir)
        kind_args = build_parser().parse_args([a.kind, *opts])
        cfg = _config_from_args(kind_args)
        from kdcore.config import to_dict

        d = to_dict(cfg)
        cache = str(store.data_dir / "cache")
        if a.kind == "demo" and not d["cache_dir"]:
            d["cache_dir"] = cache
        if a.kind == "defend" and d["demo"] and not d["demo"]["cache_dir"]:
            d["demo"]["cache_dir"] = cache
        if a.kind == "sweep" and not d["setup"]["cache_dir"]:
            d["setup"]["cache_dir"] = cache
        job = store.submit(a.kind, d, label=str(label or ""), run_dir=str(kind_args.out) if kind_args.out else None)
        print(json.dumps(job.to_dict()) if as_json else job.id)
        return EXIT_OK
    store = JobStore(a.data_dir)
    if a.jobs_command == "list":
        jobs = store.list()
        if a.json:
            print(json.dumps([j.to_dict() for j in jobs], indent=2))
        else:
            print("   id  kind   state       elapsed  progress                 label")
            for j in jobs:
                print(_job_line(j))
        return EXIT_OK
    if a.jobs_command == "logs":
        job = store.get(a.id)
        log_path = Path(job.run_dir) / "log.txt"
        lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
        lines = lines[-a.tail :] if a.tail else lines
        print(json.dumps({"id": job.id, "log": str(log_path), "lines": lines}) if a.json else "\n".join(lines))
        return EXIT_OK
    job = {"show": store.get, "cancel": store.cancel, "retry": store.retry}[a.jobs_command](a.id)
    if a.json:
        print(json.dumps(job.to_dict(), indent=2))
    elif a.jobs_command == "retry":
        print(job.id)
    else:
        print(f"job {job.id} ({job.kind}{', ' + job.label if job.label else ''}): {job.state}")
        if job.state == "running":
            eta = job.eta()
            print(f"  progress: {job.stage} {job.step}/{job.total} {job.message}  (eta {_fmt_s(eta)})")
            if job.cancel_requested:
                print("  cancel requested: stops within seconds")
        print(f"  device: {job.device or '—'}   elapsed: {_fmt_s(job.elapsed())}")
        print(f"  run directory: {job.run_dir}")
        print(f"  report: {job.report_path or '—'}")
        if job.parent_id:
            print(f"  retry of job {job.parent_id}")
        if job.error:
            print(f"  reason: {job.error.strip().splitlines()[-1]}")
    return EXIT_OK


def worker_main(a: argparse.Namespace) -> int:
    import logging

    from kdcore.jobs.store import JobStore
    from kdcore.jobs.worker import work

    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(process)d %(levelname)s %(message)s")
    work(JobStore(a.data_dir), device=a.device, once=a.once, job_id=a.job, idle_exit_s=2.0 if a.drain else None)
    return EXIT_OK


def _config_from_args(a: argparse.Namespace):
    from kdcore.config import from_dict, to_dict
    from kdcore.runs import KINDS
    from kdcore.triggers import parse_trigger

    cls, _ = KINDS[a.command]
    base: dict = {}
    if a.config:
        try:
            base = json.loads(Path(a.config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"Cannot read --config {a.config}: {e}") from e
        base.pop("kind", None)
    if a.command == "defend":
        return _defend_config(a, base)
    kd = _kd_overrides(a)
    if a.command == "demo":
        from kdcore.runs.demo import DemoConfig

        over = {
            "seed": a.seed,
            "device": a.device,
            "data_dir": a.data_dir,
            "cache_dir": a.cache_dir,
            "n_clean": a.n_clean,
            "n_poison": a.n_poison,
            "trigger": parse_trigger(a.trigger).to_dict() if a.trigger else None,
        }
        d = _merge(base, {k: v for k, v in over.items() if v is not None})
        if a.teacher_epochs is not None:
            d = _merge(d, {"teacher": {"epochs": a.teacher_epochs}})
        if kd:
            d = _merge(d, {"kd": kd})
        return DemoConfig.preset(a.quick, **d) if not a.config else from_dict(DemoConfig, d)
    if a.command == "sweep":
        from kdcore.runs.demo import DemoConfig
        from kdcore.runs.sweep import SweepConfig

        setup = {
            k: v
            for k, v in (("seed", a.seed), ("device", a.device), ("data_dir", a.data_dir), ("cache_dir", a.cache_dir))
            if v is not None
        }
        if a.teacher_epochs is not None:
            setup["teacher"] = {"epochs": a.teacher_epochs}
        if kd:
            setup["kd"] = kd
        over: dict = {}
        if a.budgets:
            over["budgets"] = _ints(a.budgets)
        if a.scenarios:
            over["scenarios"] = tuple(s.strip() for s in a.scenarios.split(","))
        if a.seeds:
            over["seeds"] = _ints(a.seeds)
        if a.config:
            return from_dict(SweepConfig, _merge(_merge(base, {"setup": setup}), over))
        preset_setup = _merge(to_dict(DemoConfig.preset(a.quick)), setup)
        return SweepConfig.preset(a.quick, setup=from_dict(DemoConfig, preset_setup), **over)
    d = _merge(base, _audit_overrides(a))
    if kd:
        d = _merge(d, {"kd": kd})
    return from_dict(cls, d)


def _audit_overrides(a: argparse.Namespace) -> dict:
    from kdcore.triggers import parse_trigger

    over = {
        "model": a.model,
        "arch": a.arch,
        "num_classes": a.num_classes,
        "input_shape": _ints(a.input_shape) if a.input_shape else None,
        "mean": _floats(a.mean) if a.mean else None,
        "std": _floats(a.std) if a.std else None,
        "class_names": tuple(c.strip() for c in a.class_names.split(",")) if a.class_names else None,
        "unlabeled": a.unlabeled,
        "train": a.train,
        "test": a.test,
        "trigger": parse_trigger(a.trigger).to_dict() if a.trigger else None,
        "max_unlabeled": a.max_unlabeled,
        "seed": a.seed,
        "device": a.device,
    }
    return {k: v for k, v in over.items() if v is not None}


def _method_params(a: argparse.Namespace) -> dict:
    params: dict = {}
    if a.params:
        try:
            params = json.loads(a.params)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--params is not valid JSON: {e}") from e
        if not isinstance(params, dict):
            raise ConfigError(f"--params should be a JSON object; got {a.params!r}")
    for item in a.param:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--param {item!r} should look like key=value")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text  # a bare word, e.g. --param schedule=uniform
        params[key.strip()] = value
    return params


def _defend_config(a: argparse.Namespace, base: dict):
    from kdcore.config import from_dict
    from kdcore.runs.defend import DefendConfig
    from kdcore.runs.demo import DemoConfig
    from kdcore.triggers import parse_trigger

    d = dict(base)
    d["method"] = a.method
    params = _method_params(a)
    if params:
        d["params"] = _merge(d.get("params", {}), params)
    for key, value in (("source_run", a.source_run), ("clean_labeled", a.clean_labeled), ("seed", a.seed)):
        if value is not None:
            d[key] = value
    if a.device is not None:
        d["device"] = a.device
    audit = {k: v for k, v in _audit_overrides(a).items() if k not in ("seed", "device", "trigger")}
    if a.demo:
        over = {
            "data_dir": a.data_dir,
            "cache_dir": a.cache_dir,
            "n_poison": a.n_poison,
            "trigger": parse_trigger(a.trigger).to_dict() if a.trigger else None,
            "seed": a.seed,
        }
        d["demo"] = DemoConfig.preset(a.quick, **{k: v for k, v in over.items() if v is not None})
    elif audit:
        if a.trigger:
            audit["trigger"] = parse_trigger(a.trigger).to_dict()
        d["audit"] = _merge(d.get("audit") or {}, audit)
    elif a.trigger or a.n_poison:
        raise ConfigError(
            "--trigger and --n-poison go with --demo (the attack to build) or --model (the known trigger); "
            "a --run brings its own"
        )
    return from_dict(DefendConfig, d)


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    bar = BarProgress(enabled=not getattr(a, "no_progress", True))
    try:
        if a.command == "jobs":
            return jobs_main(a)
        if a.command == "worker":
            return worker_main(a)
        import torch

        from kdcore.runs import KINDS
        from kdcore.tables import defense_table, report_table

        cfg = _config_from_args(a)
        if a.command in ("audit", "defend"):
            cfg.check_inputs()
        torch.manual_seed(getattr(cfg, "seed", 0) if a.command != "sweep" else cfg.setup.seed)
        out = a.out or _default_out(a.command)
        report = KINDS[a.command][1](cfg, out, bar)
        bar.close()
        if a.command == "sweep":
            print(report["table"])
        else:
            print(defense_table(report) if a.command == "defend" else report_table(report))
        if a.command == "audit" and not cfg.trigger:
            print("No --trigger given: asr and poison_acc were not measured.")
        print(f"\nRun directory: {out}  (report.json, candidates.csv, models/, confusion/, log.txt)")
        return EXIT_OK
    except KDCoreError as e:
        bar.close()
        msg = " ".join(str(e).split())
        print(f"kdcore: error: {msg}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        bar.close()
        print("kdcore: interrupted", file=sys.stderr)
        return 130
