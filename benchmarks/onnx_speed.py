"""KD training throughput of an ONNX-converted paper CNN against the natively built one.

The paper CNN (the demo's spec) is exported with PyTorch's default exporter, read back with
`kdcore.models.loading` (onnx2torch's GraphModule as teacher, `build_model` of its spec as the
fresh student) and distilled exactly as the native model is: same data, same config, same
process, repeats interleaved (native, onnx, native, onnx, ...), medians reported. The machine's
sgemm rate (`benchmarks/kd_speed.py`) is printed beside it. Target: onnx ≥ 0.8 × native.

    .venv/bin/python benchmarks/onnx_speed.py [--images 5000] [--epochs 3] [--repeats 3] [--device auto] [--smoke]

Writes benchmarks/results/onnx_speed.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import sgemm_gflops, smoke_args, write_result  # noqa: E402
from kdcore.data.builtin import load_fashion_mnist  # noqa: E402
from kdcore.device import describe, resolve_device  # noqa: E402
from kdcore.distill import DistillConfig, distill  # noqa: E402
from kdcore.models.loading import load_model  # noqa: E402
from kdcore.models.registry import build_model  # noqa: E402
from kdcore.runs.scenario import SPEC  # noqa: E402
from kdcore.train import seeded_model  # noqa: E402


def onnx_export(model: torch.nn.Module, path: Path) -> Path:
    """The default (dynamo) exporter with a dynamic batch, weights in the file."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = torch.zeros(2, *SPEC.input_shape)
        dims = ({0: torch.export.Dim("batch")},)
        torch.onnx.export(model.eval(), (x,), str(path), dynamic_shapes=dims, external_data=False)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    smoke_args(ap)
    a = ap.parse_args()
    if a.smoke:
        a.images, a.epochs, a.repeats = 64, 1, 1
    device = resolve_device(a.device)
    torch.manual_seed(0)
    unl = load_fashion_mnist("train").subset(list(range(a.images))).unlabeled()
    native_teacher = seeded_model(lambda: build_model(SPEC), 0).eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_teacher, onnx_spec = load_model(onnx_export(native_teacher, Path(tmp) / "teacher.onnx"))
        sides = {
            "native": (native_teacher.to(device), SPEC),
            "onnx": (onnx_teacher.to(device), onnx_spec),
        }
        rates: dict[str, list[float]] = {name: [] for name in sides}
        for r in range(a.repeats):
            for name, (teacher, spec) in sides.items():
                cfg = DistillConfig(epochs=a.epochs, holdout_fraction=0.0)
                student = seeded_model(lambda spec=spec: build_model(spec), r)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                distill(teacher, student, spec, unl, cfg, device, seed=r)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                rates[name].append(a.images * a.epochs / (time.perf_counter() - t0))
    gemm = sgemm_gflops(device, smoke=a.smoke)
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med["onnx"] / med["native"]
    result = {
        "images": a.images,
        "epochs": a.epochs,
        "repeats": a.repeats,
        "kd_images_per_s": {k: round(v, 1) for k, v in med.items()},
        "ratio_onnx_over_native": round(ratio, 3),
        "target_ratio": 0.8,
        "all_runs_images_per_s": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
        "sgemm_gflops": round(gemm, 1),
    }
    print("| measure | value |\n|---|---|")
    print(f"| KD images/s, native paper CNN | {med['native']:.0f} |")
    print(f"| KD images/s, ONNX-converted paper CNN | {med['onnx']:.0f} |")
    print(f"| ratio onnx / native (target ≥ 0.8) | {ratio:.2f} |")
    print(f"| sgemm GFLOP/s (2048², fp32) | {gemm:.0f} |")
    print(f"\n{describe(device)}; {a.images} Fashion-MNIST images × {a.epochs} epochs × {a.repeats} repeats; medians")
    write_result("onnx_speed", "onnx_speed.py", device, result, a.results)


if __name__ == "__main__":
    main()
