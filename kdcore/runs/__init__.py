"""Run kinds: a name → (config class, run function). The CLI and the job system use this one table.

Every run function has the signature `run(config, run_dir, on_progress) -> report dict` and
writes config.json first and report.json last.
"""

from __future__ import annotations

from kdcore.runs.audit import run_audit
from kdcore.runs.configs import AuditConfig, DemoConfig
from kdcore.runs.defend import DefendConfig, run_defend
from kdcore.runs.demo import run_demo
from kdcore.runs.refine import RefineConfig, run_refine
from kdcore.runs.sweep import SweepConfig, run_sweep, sweep_parts

KINDS = {
    "demo": (DemoConfig, run_demo),
    "audit": (AuditConfig, run_audit),
    "sweep": (SweepConfig, run_sweep),
    "refine": (RefineConfig, run_refine),
    "defend": (DefendConfig, run_defend),
}

# Kinds whose jobs fan out: config → (the gathering config, [(kind, part config, part run dir)]) or
# None when it does not (`JobStore.submit`).
PARTS = {"sweep": sweep_parts}

__all__ = [
    "KINDS",
    "PARTS",
    "AuditConfig",
    "DefendConfig",
    "DemoConfig",
    "RefineConfig",
    "SweepConfig",
    "run_audit",
    "run_defend",
    "run_demo",
    "run_refine",
    "run_sweep",
]
