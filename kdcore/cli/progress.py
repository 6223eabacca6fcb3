"""Pipeline progress → one tqdm bar per stage, on stderr."""

from __future__ import annotations

import sys

from tqdm import tqdm


class BarProgress:
    """Pipeline progress → one tqdm bar per stage, on stderr."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.stage, self.bar = enabled, None, None

    def __call__(self, stage: str, step: int, total: int, metrics: dict) -> None:
        if not self.enabled:
            return
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
