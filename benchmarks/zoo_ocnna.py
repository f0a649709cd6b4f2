"""OCNNA at k on torchvision's real architectures: validity, coverage and parameter ratio.

Random weights (no downloads), random D_var images; what is measured is structure: every
pruned model must pass onnx.checker and run, and coupled pruning of every group should
leave roughly (1 - k/100)^2 of the conv parameters. Needs torchvision:

    /work/venv-zoo/bin/python benchmarks/zoo_ocnna.py [--k 40] [--models resnet18,...]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo import ZOO, effective_input_size, export_torchvision  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.inspection import inspect  # noqa: E402
from onnxprune.verify import run  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def measure(name: str, k: float, samples: int, input_size: int) -> dict:
    path = export_torchvision(name, input_size=input_size)
    size = effective_input_size(name, input_size)
    data = np.random.default_rng(0).standard_normal((samples, 3, size, size)).astype(np.float32)
    return measure_model(onnx.load(str(path)), data, name, f"{size}x{size}", k)


def measure_model(model: onnx.ModelProto, data: np.ndarray, name: str, label: str, k: float):
    """Prune ``model`` at k on ``data`` and check it: one table row."""
    start = time.perf_counter()
    pruned, report = onnxprune.ocnna(model, k=k, data=data, batch_size=8)
    seconds = time.perf_counter() - start
    onnx.checker.check_model(pruned, full_check=True)
    outputs = run(pruned, {pruned.graph.input[0].name: data[:2]})
    info = inspect(model, data[:1])
    return {
        "model": name,
        "input": label,
        "rpr": report["remaining_params_ratio"],
        "flops_ratio": report["flops_after"] / report["flops_before"],
        "groups": f"{report['groups_pruned']}/{report['groups_total']}",
        "conv_prunable": info["conv_params_prunable_ratio"],
        "frozen": sorted({f["reason"].split("'")[0].strip() for f in report["frozen"]}),
        "valid": all(np.isfinite(v).all() for v in outputs.values()),
        "seconds": seconds,
    }


def measure_all(names: list[str], measure_one: Callable[[str], dict]) -> list[dict]:
    """One row per model, printed as it comes; a failure is recorded as a row, not raised."""
    rows = []
    for name in names:
        try:
            rows.append(measure_one(name))
        except Exception as exc:  # a benchmark records failures instead of stopping
            rows.append({"model": name, "error": f"{type(exc).__name__}: {exc}"[:200]})
        print(rows[-1], flush=True)
    return rows


def table(rows: list[dict]) -> list[str]:
    """The Markdown table of ``measure_model`` rows (failures as rows too)."""
    lines = [
        "| model | input | valid | RPR | FLOPs ratio | groups pruned | conv params prunable | "
        "frozen because | time (s) |",
        "|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | | **failed**: {row['error']} | | | | | | |")
            continue
        lines.append(
            f"| {row['model']} | {row['input']} | {'yes' if row['valid'] else 'NO'} | "
            f"{row['rpr']:.3f} | {row['flops_ratio']:.3f} | {row['groups']} | "
            f"{100 * row['conv_prunable']:.1f}% | {'; '.join(row['frozen']) or '-'} | "
            f"{row['seconds']:.1f} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--k", type=float, default=40)
    parser.add_argument("--models", default=",".join(ZOO))
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--out", default=str(REPO / "docs" / "zoo.md"))
    args = parser.parse_args()
    rows = measure_all(
        args.models.split(","), lambda name: measure(name, args.k, args.samples, args.input_size)
    )
    lines = [
        f"# OCNNA at k = {args.k:g} on torchvision architectures",
        "",
        f"Random weights (BN statistics calibrated), {args.samples} random D_var images, "
        f"opset 17, `torch.onnx.export(dynamo=False)`. "
        f"Machine: {platform.machine()}, 2 cores, "
        f"Python {platform.python_version()}. RPR = remaining-parameter ratio. Time: the "
        "whole `onnxprune.ocnna` call with its defaults (scoring, rewrite, the least-squares "
        "reconstruction, verification). The first 13 rows are the test zoo "
        "(`tests/test_zoo.py`, k = 10/40/75, exactness on dead channels); the rest are "
        "`benchmarks/zoo.py` EXTRA, run here only. Grouped convs (ResNeXt, RegNet) are pruned "
        "equally in every group; LayerNorm over channels (ConvNeXt, Swin) and attention "
        "reshapes (ViT, Swin) are barriers, so those keep more.",
        "",
        *table(rows),
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all("error" not in r and r["valid"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
