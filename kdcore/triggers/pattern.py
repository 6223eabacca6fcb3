"""Trigger images given as files (`Patch`, `Blend`): read, pinned by hash, decoded in the sandbox.

A pattern or mask image comes from someone the user may not trust, and it is a value in
config.json and the job store, so the file must still be the same when a job runs. Policy:
1. The parent reads the file's bytes itself: a regular file only (a FIFO is refused without
   blocking), at most `max_file_bytes`. A path is made absolute, so a worker with another working
   directory finds the same file.
2. The SHA-256 of those very bytes is the trigger's `*_sha256` field: filled in when the trigger is
   first made, checked whenever it is rebuilt (a changed file is a ConfigError, as for a model's
   source file in `kdcore.models.sources`). Only hashed bytes are decoded, so no swap can slip in
   between check and use.
3. The bytes are decoded in a sandboxed child (`kdcore.sandbox.run` → `decode_pattern`) with the
   dataset loaders' format allow-list, pixel cap and 16-bit/float scaling. Unlike the loaders it
   keeps the image's own size and its alpha channel (a PNG's alpha is the patch's mask), and keeps
   the colour under transparent pixels (it is weighted by the alpha, never shown alone).
4. Grey inputs get the pattern's luminance as PIL converts RGB to L (ITU-R 601-2), as the loaders
   convert a colour image for a grey model.

Stamping is one formula for both kinds (`apply`): with w = alpha · mask / 255 per pixel,
x' = round((1 − w) · x + w · p), float32, rounded half to even (torch.round), clipped to 0..255.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kdcore import limits, sandbox
from kdcore.errors import ConfigError, InputError

_FORMATS = "PNG, JPEG, BMP, WebP, TIFF or GIF"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Pattern:
    """A decoded trigger image at its own size: uint8 rgb (3, h, w), grey (1, h, w) and alpha
    (h, w) or None when the file has no transparency."""

    rgb: torch.Tensor
    grey: torch.Tensor
    alpha: torch.Tensor | None

    @property
    def size(self) -> tuple[int, int]:
        """(h, w)."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[2])

    def channels(self, c: int) -> torch.Tensor:
        """The pattern for images of `c` channels: uint8 (c, h, w)."""
        if c not in (1, 3):
            raise ConfigError(f"Trigger images can be stamped on grey or RGB images (1 or 3 channels); got {c}")
        return self.grey if c == 1 else self.rgb

    def opacity(self) -> torch.Tensor:
        """uint8 (h, w): the alpha channel, or 255 everywhere (a file without alpha is opaque)."""
        return self.alpha if self.alpha is not None else torch.full(self.size, 255, dtype=torch.uint8)


def check_sha256(value: str, field: str) -> None:
    if value and not _SHA256.fullmatch(value):
        raise ConfigError(f"Trigger {field} must be 64 lowercase hex digits (a SHA-256); got {value!r}")


def load_pattern(path: str, sha256: str, what: str) -> tuple[str, str, Pattern]:
    """(absolute path, SHA-256, decoded pattern) of a trigger image file (steps 1–3 above).
    `sha256` "" = not pinned yet; otherwise the file must still hash to it. `what` names the file
    in errors, e.g. "patch image"."""
    data, p = _read(path, what)
    digest = hashlib.sha256(data).hexdigest()
    if sha256 and digest != sha256:
        raise ConfigError(
            f"The trigger {what} {p} changed since this trigger was written (its SHA-256 differs); "
            "give the original file again, or make the trigger anew"
        )
    decoded = sandbox.run("kdcore.triggers.pattern:decode_pattern", (data, p.name), None, InputError, p.name)
    return str(p), digest, Pattern(decoded["rgb"], decoded["grey"], decoded["alpha"])


def _read(path: str, what: str) -> tuple[bytes, Path]:
    if not path:
        raise ConfigError(f"The trigger needs its {what} (a file: {_FORMATS})")
    p = Path(path).expanduser().resolve()
    cap = limits.current().max_file_bytes
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConfigError(f"The trigger {what} {path} does not exist; give an image file ({_FORMATS})") from None
    except OSError as e:
        raise ConfigError(f"Cannot read the trigger {what} {path}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a folder, FIFO, device or socket
        os.close(fd)
        raise ConfigError(f"The trigger {what} {path} is not a regular file; give an image file ({_FORMATS})")
    with os.fdopen(fd, "rb") as fh:
        try:
            data = fh.read(cap + 1)
        except OSError as e:
            raise ConfigError(f"Cannot read the trigger {what} {path}: {e.strerror}") from None
    if len(data) > cap:
        raise ConfigError(f"The trigger {what} {path} is over {cap // 2**20} MiB (max_file_bytes)")
    return data, p


def decode_pattern(data: bytes, name: str) -> dict[str, torch.Tensor | None]:
    """Runs in the sandbox's child: one image file's bytes → {"rgb", "grey", "alpha"} at its own
    size (see `Pattern`). InputError, naming `name`, when it is not a readable image."""
    # The dataset loaders' allow-list of decoders, the errors they treat as "unreadable", and
    # their 16-bit / float scaling: one decoder policy for every untrusted image.
    from kdcore.data.folders import PIL_FORMATS, UNREADABLE, high_depth_to_uint8

    max_pixels = limits.current().max_image_pixels
    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as img:
            if img.width * img.height > max_pixels:  # the header is read, the pixels are not yet
                raise ValueError(f"{img.width}x{img.height} pixels is over the limit of {max_pixels:,}")
            img.load()
            has_alpha = "transparency" in img.info or any(b in ("A", "a") for b in img.getbands())
            if img.mode.startswith("I") or img.mode == "F":
                img = Image.fromarray(high_depth_to_uint8(img))
            rgba = img.convert("RGBA")
            rgb = rgba.convert("RGB")  # drops alpha without flattening: the colour is kept
            arrays = np.array(rgb, dtype=np.uint8), np.array(rgb.convert("L"), dtype=np.uint8)
            alpha = np.array(rgba.getchannel("A"), dtype=np.uint8) if has_alpha else None
    except UNREADABLE as e:
        raise InputError(f"Could not read '{name}' as an image ({type(e).__name__}: {e}); expected {_FORMATS}") from e
    return {
        "rgb": torch.from_numpy(arrays[0]).permute(2, 0, 1).contiguous(),  # (3, h, w)
        "grey": torch.from_numpy(arrays[1])[None].contiguous(),  # (1, h, w)
        "alpha": None if alpha is None else torch.from_numpy(alpha),  # (h, w)
    }


def resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """uint8 (C, h0, w0) with C = 1 or 3 → (C, h, w), resized as the dataset loaders resize an
    image (PIL bilinear, which widens its filter when shrinking, i.e. antialiased)."""
    if tuple(x.shape[1:]) == (h, w):
        return x
    mode = "L" if x.shape[0] == 1 else "RGB"
    img = Image.fromarray(x.permute(1, 2, 0).squeeze(-1).numpy() if mode == "L" else x.permute(1, 2, 0).numpy())
    out = np.array(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)
    return torch.from_numpy(out).reshape(h, w, -1).permute(2, 0, 1).contiguous()


def apply(images: torch.Tensor, pattern: torch.Tensor, weight: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """uint8 images (N, C, H, W) with `pattern` (C, h, w) blended in at (row, col) by `weight`
    (float32 (h, w), 0 = keep the input, 1 = the pattern): x' = round((1 − w)·x + w·p)."""
    out = images.clone()
    h, w = weight.shape
    region = out[:, :, row : row + h, col : col + w].float()  # (N, C, h, w)
    mixed = (1 - weight) * region + weight * pattern.float()
    out[:, :, row : row + h, col : col + w] = mixed.round_().clamp_(0, 255).to(torch.uint8)
    return out


def check_alpha(alpha: object, kind: str) -> float:
    """The trigger's weight as a float in (0, 1]."""
    ok = isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0.0 < alpha <= 1.0
    if not ok:
        raise ConfigError(f"{kind} alpha (the trigger's weight) must be a number in (0, 1]; got {alpha!r}")
    return float(alpha)
