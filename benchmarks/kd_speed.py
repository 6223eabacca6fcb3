"""KD training throughput: our loop (teacher logits cached once) vs a naive loop (teacher run on
every batch), and our training FLOP/s as a fraction of the machine's sgemm rate.

Same data, same models, same process, interleaved repeats; medians reported.

    .venv/bin/python benchmarks/kd_speed.py [--images 5000] [--epochs 5] [--repeats 3] [--device auto] [--smoke]

Writes benchmarks/results/kd_speed.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.common import sgemm_gflops, smoke_args, write_result  # noqa: E402
from kdcore.data.builtin import load_fashion_mnist  # noqa: E402
from kdcore.device import describe, resolve_device  # noqa: E402
from kdcore.distill import DistillConfig, distill, kd_loss  # noqa: E402
from kdcore.models.registry import build_model  # noqa: E402
from kdcore.runs.scenario import SPEC  # noqa: E402
from kdcore.train import seeded_model  # noqa: E402


def train_flops_per_image(batch: int = 128) -> float:
    """Forward + backward FLOPs of one student KD step, per image (counted by torch)."""
    student = build_model(SPEC)
    x = torch.randn(batch, *SPEC.input_shape)
    t = torch.randn(batch, SPEC.num_classes)
    with FlopCounterMode(display=False) as fc:
        kd_loss(student(x), t, 20.0).backward()
    return fc.get_total_flops() / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    smoke_args(ap)
    a = ap.parse_args()
    if a.smoke:
        a.images, a.epochs, a.repeats = 64, 1, 1
    device = resolve_device(a.device)
    torch.manual_seed(0)
    unl = load_fashion_mnist("train").subset(list(range(a.images))).unlabeled()
    teacher = seeded_model(lambda: build_model(SPEC), 0).to(device).eval()
    rates: dict[str, list[float]] = {"cached": [], "naive": []}
    walls: dict[str, list[float]] = {"cached": [], "naive": []}
    for r in range(a.repeats):
        for name, cache in (("cached", True), ("naive", False)):
            cfg = DistillConfig(epochs=a.epochs, holdout_fraction=0.0, cache_teacher=cache)
            student = seeded_model(lambda: build_model(SPEC), r)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            distill(teacher, student, SPEC, unl, cfg, device, seed=r)
            if device.type == "cuda":
                torch.cuda.synchronize()
            walls[name].append(time.perf_counter() - t0)  # includes the one-off teacher pass
            rates[name].append(a.images * a.epochs / walls[name][-1])
    gemm = sgemm_gflops(device, smoke=a.smoke)
    fpi = train_flops_per_image()
    med = {k: statistics.median(v) for k, v in rates.items()}
    ours_gflops = med["cached"] * fpi / 1e9
    result = {
        "images": a.images,
        "epochs": a.epochs,
        "repeats": a.repeats,
        "kd_images_per_s": {"ours_cached": round(med["cached"], 1), "naive": round(med["naive"], 1)},
        "ratio_ours_over_naive": round(med["cached"] / med["naive"], 3),
        "all_runs_images_per_s": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
        "sgemm_gflops": round(gemm, 1),
        "train_gflop_per_image": round(fpi / 1e9, 5),
        "train_gflops": round(ours_gflops, 1),
        "fraction_of_sgemm": round(ours_gflops / gemm, 3),
    }
    print("| measure | value |\n|---|---|")
    print(f"| KD images/s, ours (teacher logits cached) | {med['cached']:.0f} |")
    print(f"| KD images/s, naive (teacher per batch) | {med['naive']:.0f} |")
    print(f"| ratio ours / naive | {result['ratio_ours_over_naive']:.2f} |")
    print(f"| sgemm GFLOP/s (2048², fp32) | {gemm:.0f} |")
    print(f"| our training GFLOP/s ({fpi / 1e6:.1f} MFLOP/image fwd+bwd) | {ours_gflops:.0f} |")
    print(f"| fraction of sgemm | {ours_gflops / gemm:.2f} |")
    print(f"\n{describe(device)}; {a.images} Fashion-MNIST images × {a.epochs} epochs × {a.repeats} repeats; medians")
    write_result("kd_speed", "kd_speed.py", device, result, a.results)


if __name__ == "__main__":
    main()
