"""What a finished run worked on (its models, data and trigger), as plain data: `RunContext`.

The run kinds build one at the end of a run and hand it to the dashboard's view writer
(kdcore.views); `kdcore.runs.rebuild.load_context` builds one again from a run directory. It sits
below both, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdcore.data.imageset import ImageSet
from kdcore.errors import InputError
from kdcore.models.loading import load_model
from kdcore.models.spec import ModelSpec
from kdcore.triggers import Trigger


@dataclass(frozen=True)
class RunContext:
    run_dir: Path
    kind: str
    config: dict
    spec: ModelSpec
    teacher: nn.Module
    train: ImageSet | None
    test: ImageSet | None
    trigger: Trigger | None
    poison_idx: torch.Tensor | None

    def model(self, name: str, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelSpec]:
        """`teacher`, or a model saved in the run (`student`, `finetuned`)."""
        if name == "teacher":
            return self.teacher, self.spec
        path = self.run_dir / "models" / f"{name}.safetensors"
        if not path.exists():
            raise InputError(f"This run has no {name} model ({path} is missing)")
        return load_model(path, None, device)

    def available_models(self) -> list[str]:
        names = ["teacher"]
        names += [n for n in ("student", "finetuned") if (self.run_dir / "models" / f"{n}.safetensors").exists()]
        return names
