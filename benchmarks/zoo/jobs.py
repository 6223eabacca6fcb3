"""The zoo's blind audits as plain `audit` jobs in a job store (`<out>/jobs`), run by
`kdcore worker --drain` processes on this machine or by one dispatching to Ray
(benchmarks/defenses.py's `start_workers`). Workers drain and exit when the queue is empty, so a
worker is started again whenever one of the zoo's audits is queued and none is alive (training
the next model can take longer than auditing the last).

Each audit is what a user runs on a model they were handed: `run_audit` with the exported model
file, the training set as its trainer had it, clean unlabelled images and a test set (zips), blind,
no trigger. For a model whose file carries no normalisation or class names (ONNX, .pt2), they are
given as a user gives them (`--mean`, `--std`, `--class-names`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from benchmarks.defenses import start_workers
from benchmarks.zoo.build import FOLDERS, Made
from benchmarks.zoo.recipes import Recipe
from kdcore.config import from_dict
from kdcore.jobs.store import Job, JobStore
from kdcore.runs.configs import AuditConfig
from kdcore.runs.scenario import FASHION_MEAN, FASHION_STD
from kdcore.verdict.gather import VERDICT_NC

# What the audit is told beyond the defaults, to fit the zoo's audits into hours of two CPU cores: no
# fine-tuning (the verdict reads the distilled student; fine-tuning only evaluates). Distillation and
# Neural Cleanse run as every user's audit runs them (the distillation's defaults; the verdict's own
# Neural Cleanse budget, `VERDICT_NC`). An earlier zoo distilled for 8 epochs, and its MobileNet
# students (no BatchNorm then: kdcore.models.reinit.STUDENT_NORM) agreed with their teachers on ~10 %
# of images: a student that learnt nothing reads as a student the backdoor did not reach.
AUDIT_KD = {"finetune": {"epochs": 0}}
AUDIT_NC = dict(VERDICT_NC)  # the product's own verdict budget: the calibration reads what users' audits gather


def audit_config(recipe: Recipe, made: Made, device: str, kd: dict, nc: dict) -> AuditConfig:
    given = {}
    if made.model.suffix in (".onnx", ".pt2"):
        given = {"mean": FASHION_MEAN, "std": FASHION_STD, "class_names": FOLDERS}
    settings = {
        "model": str(made.model),
        "unlabeled": str(made.file("unlabeled.zip")),
        "train": str(made.file("train.zip")),
        "test": str(made.file("test.zip")),
        "blind": True,
        "neural_cleanse": dict(nc),
        "seed": recipe.seed,
        "device": device,
        "kd": kd,
        **given,
    }
    return from_dict(AuditConfig, settings)


class Audits:
    """The zoo's audit jobs and the workers that run them."""

    def __init__(self, out: Path, executor: str, workers: int, device: str, ray_address: str = ""):
        self.store = JobStore(out / "jobs")
        self.store.reap()  # a previous session's worker that died leaves its job running: interrupted
        self.executor, self.workers, self.device, self.ray_address = executor, workers, device, ray_address
        self.logs = out / "workers"
        self.procs: list[subprocess.Popen] = []
        self.starts = 0
        self.retried_dirs: set[str] = set()

    def submit(self, recipe: Recipe, made: Made, run_dir: Path, kd: dict, nc: dict) -> Job:
        """Queue the audit of `made` into `run_dir`, or return the one already queued for it (a
        previous session's); its finished stages in `run_dir` are reused."""
        for job in self.store.list(states=("queued",)):
            if job.run_dir == str(run_dir):
                return job
        cfg = audit_config(recipe, made, self.device, kd, nc)
        return self.store.submit("audit", cfg, label=f"zoo: {recipe.name}", run_dir=str(run_dir))

    def keep_running(self, ids: list[int]) -> None:
        """While one of `ids` is queued, keep `workers` of ours alive (one dispatcher for Ray). Workers
        drain and exit when the queue is empty: topping up only once all had exited left every audit
        queued behind a slow one (a ResNet-18's 25 min) with the other worker gone."""
        self.procs = [p for p in self.procs if p.poll() is None]
        missing = (1 if self.executor == "ray" else self.workers) - len(self.procs)
        if missing > 0 and any(self.store.get(i).state == "queued" for i in ids):
            self.starts += 1
            logs = self.logs / f"start-{self.starts}"
            self.procs += start_workers(
                self.store.data_dir, self.executor, missing, self.device, self.ray_address, logs
            )

    def again(self, job: Job) -> Job | None:
        """The audit queued again when its worker was stopped under it, once per model (its finished
        stages reused); None for any other end. Zoo runs side by side share one queue, so a run that ends
        stops workers of its own that may be running the other run's audits."""
        if job.state != "interrupted" or job.run_dir in self.retried_dirs:
            return None
        self.retried_dirs.add(job.run_dir)
        return self.store.retry(job.id)

    def alive(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
