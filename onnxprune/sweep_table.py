"""Sweep tables as Markdown, for people.

``sensitivity_markdown``: the table of ``onnxprune sweep ocnna|odf2nna`` (a report from
onnxprune.sweep): one row per k or epsilon with size, speed and quality.

The rest is the ODF2NNA paper's layout (``odf2nna --sweep``, Algorithm 1): one row per
epsilon, as its tables (6, 7, 10-12) and Figure 7. Columns: accuracy (or MSE) of the
original model (OR), of the pruned model without retraining (PWR) and after the light
retrain (PR), parameters before and after and the reduction. Written as Markdown, JSON and
a PNG plot of the metric against parameters.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import onnx

from .graph.rules.base import constant
from .io import atomic_write_bytes

STAGES = ("after", "finetuned", "int8")  # a sweep row's quality columns, in this order
STAGE_NAMES = {"after": "no retraining", "finetuned": "fine-tuned", "int8": "INT8"}


def _quality(value: float | None, metric: str | None) -> str:
    if value is None or metric is None:
        return "-"
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.5g}"


def _latency(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def sensitivity_markdown(report: dict) -> str:
    """The sweep table: one row per value, the original model first.

    ODF2NNA rows add the hidden units kept per layer (``8-6`` -> ``7-0``: the second
    hidden layer was removed and bridged).
    """
    parameter, metric, original = report["parameter"], report["metric"], report["original"]
    rows = report["rows"]
    stages = [s for s in STAGES if any(f"{metric}_{s}" in row for row in rows)]
    units = "units_total" in report
    header = [parameter, "parameters", "RPR", "FLOPs ratio", "file size (bytes)"]
    header += ["latency (ms)", *(["hidden units"] if units else [])]
    header += [f"{metric or 'quality'} ({STAGE_NAMES[s]})" for s in stages] + ["time (s)"]
    settings = ", ".join(f"{k}={v}" for k, v in report["settings"].items())
    lines = [
        f"# {report['title']}",
        "",
        f"Model: `{report['model']}`  ",
        f"Settings: {settings}  ",
        f"Scored once on {report['samples']} samples (--data) in "
        f"{report['timings']['score_once_s']:.2f} s; quality on {report['eval_samples']} "
        "labelled samples. RPR = remaining-parameter ratio (parameters after / before); "
        "latency = onnxruntime CPU, batch 1, median.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---:|" * len(header),
    ]
    cells = ["original", f"{original['params']:,}", "1.000", "1.000", f"{original['size_bytes']:,}"]
    cells.append(_latency(original.get("latency_ms")))
    if units:
        cells.append("-".join(str(n) for n in report["units_total"].values()))
    if stages:  # the original's quality under "no retraining"; nothing to fine-tune
        cells += [_quality(original.get(metric), metric)] + ["-"] * (len(stages) - 1)
    lines.append("| " + " | ".join([*cells, "-"]) + " |")
    for row in rows:
        cells = [
            f"{row[parameter]:g}",
            f"{row['params']:,}",
            f"{row['rpr']:.3f}",
            f"{row['flops_ratio']:.3f}",
            f"{row['size_bytes']:,}",
            _latency(row.get("latency_ms")),
        ]
        if units:
            kept = row.get("units_kept", {})
            cells.append("-".join(str(kept.get(name, "?")) for name in report["units_total"]))
        cells += [_quality(row.get(f"{metric}_{s}"), metric) for s in stages]
        cells.append(f"{row['seconds']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def dense_architecture(model: onnx.ModelProto) -> str:
    """``D-h1-...-out``: input width then the units of each Gemm/MatMul, in graph order."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    widths: list[int] = []
    for node in graph.nodes:
        if node.op not in ("Gemm", "MatMul") or len(node.inputs) < 2:
            continue
        weight = constant(node.inputs[1])
        if weight is None or weight.ndim != 2:
            continue
        trans_b = node.op == "Gemm" and int(node.attrs.get("transB", 0))
        rows, cols = weight.shape
        if not widths:
            widths.append(cols if trans_b else rows)
        widths.append(rows if trans_b else cols)
    return "-".join(str(w) for w in widths)


def sweep_row(
    report: dict,
    uncounted: int = 0,
    original: onnx.ModelProto | None = None,
    pruned: onnx.ModelProto | None = None,
) -> dict:
    """One table row from an ``odf2nna`` report (plus ``*_refined``/``*_finetuned``).

    ``uncounted`` parameters (e.g. the standardisation constants of a from-dataset MLP)
    are left out of both counts, so the counts are those of the dense layers.
    """
    metric = "accuracy" if "accuracy_before" in report else "mse"
    refined = report.get(f"{metric}_refined", report.get(f"{metric}_finetuned"))
    before = report["params_before"] - uncounted
    after = report["params_after"] - uncounted
    return {
        "epsilon": report["parameters"]["epsilon"],
        "metric": metric,
        "original": report.get(f"{metric}_before"),
        "pruned": report.get(f"{metric}_after"),
        "refined": refined,
        "params_original": before,
        "params_pruned": after,
        "reduction_pct": 100.0 * (before - after) / before if before else 0.0,
        "architecture_original": None if original is None else dense_architecture(original),
        "architecture_pruned": None if pruned is None else dense_architecture(pruned),
        "layers_removed": sum(len(r["layers"]) for r in report.get("layers_removed", [])),
    }


def _value(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.4g}"


def to_markdown(rows: list[dict], title: str) -> str:
    """The paper's table layout: epsilon | OR PWR PR | OR P % reduction | architecture."""
    metric = rows[0]["metric"] if rows else "accuracy"
    name = "accuracy" if metric == "accuracy" else "MSE"
    lines = [
        f"# {title}",
        "",
        f"OR = original, PWR = pruned without retraining, PR = pruned and retrained; {name} "
        "on the test data; parameters are weights and biases.",
        "",
        f"| epsilon | {name} OR | {name} PWR | {name} PR | params OR | params P | % reduction "
        "| architecture | layers removed |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        arch = row.get("architecture_pruned") or "-"
        if row.get("architecture_original"):
            arch = f"{row['architecture_original']} -> {arch}"
        lines.append(
            f"| {row['epsilon']:g} | {_value(row['original'], metric)} | "
            f"{_value(row['pruned'], metric)} | {_value(row['refined'], metric)} | "
            f"{row['params_original']:,} | {row['params_pruned']:,} | "
            f"{row['reduction_pct']:.2f}% | {arch} | {row['layers_removed']} |"
        )
    return "\n".join(lines) + "\n"


def plot_png(rows: list[dict], title: str) -> bytes:
    """Figure 7: accuracy (or MSE) against the number of parameters, one point per epsilon."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    metric = rows[0]["metric"]
    scale = 100.0 if metric == "accuracy" else 1.0
    ordered = sorted(rows, key=lambda r: r["params_pruned"])
    params = [r["params_pruned"] for r in ordered]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    try:
        original = rows[0]["original"]
        if original is not None:
            ax.axhline(original * scale, color="0.5", linestyle="--", linewidth=1)
            ax.plot(
                rows[0]["params_original"],
                original * scale,
                marker="*",
                markersize=13,
                color="black",
                linestyle="none",
                label="original (OR)",
            )
        for key, label, marker, color in (
            ("pruned", "pruned, no retraining (PWR)", "o", "tab:orange"),
            ("refined", "pruned + retrained (PR)", "s", "tab:blue"),
        ):
            points = [(p, r[key] * scale) for p, r in zip(params, ordered) if r[key] is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker=marker, color=color, label=label)
        labels: dict[int, list[dict]] = {}  # epsilons giving the same size share a label
        for p, row in zip(params, ordered):
            labels.setdefault(p, []).append(row)
        for turn, (p, same) in enumerate(labels.items()):
            value = same[0]["refined"] if same[0]["refined"] is not None else same[0]["pruned"]
            if value is not None:  # alternate above / below so neighbours do not collide
                ax.annotate(
                    "ε=" + ", ".join(f"{r['epsilon']:g}" for r in same),
                    (p, value * scale),
                    textcoords="offset points",
                    xytext=(4, 7 if turn % 2 == 0 else -13),
                    fontsize=8,
                )
        sizes = [*params, rows[0]["params_original"]]
        if min(sizes) > 0 and max(sizes) / min(sizes) > 20:
            ax.set_xscale("log")
        values = [r[k] for r in rows for k in ("original", "pruned", "refined") if r[k]]
        if metric == "mse" and values and max(values) / max(min(values), 1e-300) > 50:
            ax.set_yscale("log")
        ax.set_xlabel("parameters (weights + biases, count)")
        ax.set_ylabel("test accuracy (%)" if metric == "accuracy" else "test MSE")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=9)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def sweep_paths(report_path: str | os.PathLike) -> tuple[Path, Path, Path]:
    """JSON path and the Markdown / PNG beside it."""
    text = os.fspath(report_path)
    base = text[: -len(".json")] if text.endswith(".json") else text
    return Path(f"{base}.json"), Path(f"{base}.md"), Path(f"{base}.png")


def write_sweep(
    rows: list[dict],
    report_path: str | os.PathLike,
    title: str,
    context: dict | None = None,
    force: bool = False,
) -> list[Path]:
    """Write the table as JSON + Markdown + PNG, each atomically."""
    json_path, md_path, png_path = sweep_paths(report_path)
    payload = {"title": title, "rows": rows, **(context or {})}
    text = json.dumps(payload, indent=2, default=_json_default).encode()
    return [
        atomic_write_bytes(json_path, text, force=force),
        atomic_write_bytes(md_path, to_markdown(rows, title).encode(), force=force),
        atomic_write_bytes(png_path, plot_png(rows, title), force=force),
    ]


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    return float(value)  # type: ignore[arg-type]
