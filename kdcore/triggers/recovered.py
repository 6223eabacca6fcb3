"""The trigger Neural Cleanse recovered, used as a trigger (seed 004's "synthetic triggers").

    recovered:RUN_DIR[,class=T]        (JSON: {"kind": "recovered", "run": RUN_DIR, "target": T})

RUN_DIR is a `defend` run of neural-cleanse, or an audit run whose evidence holds Neural Cleanse's
output: either way `RUN_DIR/evidence/recovered.safetensors` (`FILE`), written by `write_recovered`
(defend: Neural Cleanse's `recovered.*` raw evidence tensors):
    mask     float32 (K, H, W) in [0, 1]      one mask per class optimised
    pattern  float32 (K, C, H, W) in [0, 255]
    classes  int64 (K,)                        the class each row was optimised for
    flagged  bool (K,)                         flagged as a backdoor target (anomaly index > threshold)
    anomaly_index float64 (K,)
`class` (the trigger's target) picks the row; by default the first flagged class, else the most
anomalous one. Stamping is `apply_recovered` (here, below the defenses: Neural Cleanse measures its
recovered-trigger success with the same function): x' = round((1 − m)·x + m·p).

The file is read as bytes, pinned by SHA-256 (`file_sha256`: filled in when the trigger is made,
checked when it is rebuilt, as `kdcore.triggers.pattern` pins an image) and parsed with
safetensors, which holds no code. It is only ever read in this process; it is written by kdcore.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from kdcore import limits
from kdcore.errors import ConfigError, InputError
from kdcore.io import atomic_write_bytes
from kdcore.triggers.base import Trigger
from kdcore.triggers.pattern import check_sha256

FILE = Path("evidence") / "recovered.safetensors"
_KEYS = ("mask", "pattern", "classes", "flagged", "anomaly_index")


def apply_recovered(images: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Stamp a recovered trigger: uint8 (N, C, H, W) → uint8 round((1 − m)·x + m·p).

    mask: (H, W) or (1, H, W) in [0, 1]; pattern: (C, H, W) in [0, 255]."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise InputError(f"apply_recovered takes uint8 images (N, C, H, W); got {images.dtype} {tuple(images.shape)}")
    m = mask.to(images.device, torch.float32).reshape(1, 1, *images.shape[2:])
    p = pattern.to(images.device, torch.float32).reshape(1, *images.shape[1:])
    x = (1 - m) * images.float() + m * p
    return x.round_().clamp_(0, 255).to(torch.uint8)


def recovered_tensors(
    mask: torch.Tensor, pattern: torch.Tensor, classes: list[int], flagged: torch.Tensor, anomaly_index: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The tensors of `FILE` (shapes in the module docstring), on the CPU."""
    return {
        "mask": mask.detach().float().cpu().contiguous(),
        "pattern": pattern.detach().float().cpu().contiguous(),
        "classes": torch.as_tensor(classes, dtype=torch.int64),
        "flagged": torch.as_tensor(flagged, dtype=torch.bool).cpu(),
        "anomaly_index": torch.as_tensor(anomaly_index, dtype=torch.float64).cpu(),
    }


def write_recovered(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save `recovered_tensors(...)` as safetensors, atomically."""
    atomic_write_bytes(Path(path), save({k: v.contiguous() for k, v in tensors.items()}))


def read_recovered(run: str | Path, sha256: str = "") -> tuple[str, dict[str, torch.Tensor]]:
    """(SHA-256, tensors) of RUN/evidence/recovered.safetensors. ConfigError, one line, when the
    run has none, the file changed since `sha256` was pinned, or its tensors are not as written."""
    p = Path(run) / FILE
    if not p.is_file():
        raise ConfigError(
            f"{run} holds no recovered trigger ({FILE} is missing); give a neural-cleanse defend run or an "
            "audit run whose Neural Cleanse evidence was saved"
        )
    cap = limits.current().max_file_bytes
    if p.stat().st_size > cap:
        raise ConfigError(f"The recovered trigger {p} is over {cap // 2**20} MiB (max_file_bytes)")
    data = p.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 and digest != sha256:
        raise ConfigError(f"The recovered trigger {p} changed since this trigger was written (its SHA-256 differs)")
    try:
        t = load(data)
    except SafetensorError as e:
        raise ConfigError(f"The recovered trigger {p} is not a readable safetensors file ({e})") from None
    missing = [k for k in _KEYS if k not in t]
    k = len(t.get("classes", ()))
    ok = (
        not missing
        and t["mask"].dim() == 3
        and t["pattern"].dim() == 4
        and t["mask"].shape[0] == t["pattern"].shape[0] == k == len(t["flagged"]) == len(t["anomaly_index"])
        and t["mask"].shape[1:] == t["pattern"].shape[2:]
        and bool(torch.isfinite(t["mask"]).all() and torch.isfinite(t["pattern"]).all())
    )
    if not ok:
        raise ConfigError(
            f"The recovered trigger {p} does not hold mask (K, H, W), pattern (K, C, H, W) and K classes"
            + (f" (missing {missing})" if missing else "")
        )
    return digest, t


@dataclass(frozen=True)
class Recovered(Trigger):
    run: str = ""  # a neural-cleanse defend run, or an audit run with NC's evidence
    target: int = -1  # the recovered class to use; -1 = the first flagged class, else the most anomalous
    file_sha256: str = ""  # of RUN/evidence/recovered.safetensors; "" = pin the file as it is now
    kind = "recovered"
    positional = "run"  # recovered:RUN_DIR
    aliases: ClassVar[dict[str, str]] = {"class": "target"}  # recovered:RUN_DIR,class=7

    def __post_init__(self) -> None:
        if not self.run:
            raise ConfigError("A recovered trigger needs the run directory: recovered:RUN_DIR[,class=T]")
        check_sha256(self.file_sha256, "file_sha256")
        run = str(Path(self.run).expanduser().resolve())
        digest, t = read_recovered(run, self.file_sha256)
        classes = [int(c) for c in t["classes"]]
        target = self.target
        if target == -1:
            flagged = [c for c, f in zip(classes, t["flagged"].tolist(), strict=True) if f]
            target = flagged[0] if flagged else classes[int(torch.argmax(t["anomaly_index"]))]
        object.__setattr__(self, "run", run)
        object.__setattr__(self, "file_sha256", digest)
        object.__setattr__(self, "target", target)
        super().__post_init__()
        if target not in classes:
            raise ConfigError(f"Class {target} has no recovered trigger in {run}; it holds classes {classes}")
        row = classes.index(target)
        object.__setattr__(self, "_mask", t["mask"][row])  # float32 (H, W)
        object.__setattr__(self, "_pattern", t["pattern"][row])  # float32 (C, H, W)

    @property
    def mask(self) -> torch.Tensor:
        """float32 (H, W) in [0, 1]."""
        return self._mask  # type: ignore[attr-defined]

    @property
    def pattern(self) -> torch.Tensor:
        """float32 (C, H, W) in [0, 255]."""
        return self._pattern  # type: ignore[attr-defined]

    def stamp(self, images: torch.Tensor) -> torch.Tensor:
        want = tuple(self.pattern.shape)
        if tuple(images.shape[1:]) != want:
            raise ConfigError(
                f"The recovered trigger of {Path(self.run).name} is for {want[0]}×{want[1]}×{want[2]} inputs; "
                f"got images of {'×'.join(map(str, images.shape[1:]))}"
            )
        return apply_recovered(images, self.mask, self.pattern)
