"""Run kinds: a name → (config class, run function). The CLI and the job system use this one table.

Every run function has the signature `run(config, run_dir, on_progress) -> report dict` and
writes config.json first and report.json last.
"""

from __future__ import annotations

from kdcore.runs.audit import run_audit
from kdcore.runs.audit_many import AuditManyConfig, audit_many_parts, run_audit_many
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
    "audit_many": (AuditManyConfig, run_audit_many),
}

# Kinds whose jobs fan out: config → (the gathering config, [(kind, part config, part run dir)]) or
# None when it does not (`JobStore.submit`).
PARTS = {"sweep": sweep_parts, "audit_many": audit_many_parts}

__all__ = [
    "KINDS",
    "PARTS",
    "AuditConfig",
    "AuditManyConfig",
    "DefendConfig",
    "DemoConfig",
    "RefineConfig",
    "SweepConfig",
    "run_audit",
    "run_audit_many",
    "run_defend",
    "run_demo",
    "run_refine",
    "run_sweep",
]
