"""Stage `report`: render the report dict for people (Markdown, terminal) and machines (JSON)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx

from . import __version__
from .analyze import Analysis
from .io import atomic_write_bytes, model_hash
from .metrics import count_macs, count_params, model_bytes


def _fmt_int(value: int) -> str:
    return f"{value:,}"


def _ratio(after: float, before: float) -> str:
    return f"{after / before:.3f}" if before else "-"


def summary_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """(metric, before, after, after/before) rows shared by Markdown and the terminal."""
    rows = [
        (
            "parameters",
            _fmt_int(report["params_before"]),
            _fmt_int(report["params_after"]),
            _ratio(report["params_after"], report["params_before"]),
        ),
        (
            "FLOPs",
            _fmt_int(report["flops_before"]),
            _fmt_int(report["flops_after"]),
            _ratio(report["flops_after"], report["flops_before"]),
        ),
        (
            "file size (bytes)",
            _fmt_int(report["size_bytes_before"]),
            _fmt_int(report["size_bytes_after"]),
            _ratio(report["size_bytes_after"], report["size_bytes_before"]),
        ),
    ]
    for metric in ("accuracy", "mse"):
        if f"{metric}_before" in report:
            before, after = report[f"{metric}_before"], report[f"{metric}_after"]
            fmt = (lambda v: f"{100 * v:.2f}%") if metric == "accuracy" else (lambda v: f"{v:.5g}")
            rows.append((metric, fmt(before), fmt(after), f"{after - before:+.4f}"))
    for metric in ("accuracy", "mse"):
        if f"{metric}_finetuned" in report:
            value = report[f"{metric}_finetuned"]
            text = f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.5g}"
            change = value - report.get(f"{metric}_before", value)
            rows.append((f"{metric} after fine-tune", "", text, f"{change:+.4f}"))
    return rows


def to_markdown(report: dict) -> str:
    """A human report: totals, per-layer kept/total, and what was frozen and why."""
    params = ", ".join(f"{k}={v}" for k, v in report["parameters"].items())
    lines = [
        f"# onnxprune {report['method']} report",
        "",
        f"Model: `{report['model']}`  ",
        f"Parameters: {params}",
        "",
        "| metric | before | after | after/before |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {m} | {b} | {a} | {r} |" for m, b, a, r in summary_rows(report)]
    lines += [
        "",
        "## Layers",
        "",
        "| layer | op | group | kept | total |",
        "|---|---|---:|---:|---:|",
    ]
    for layer in report["layers"]:
        lines.append(
            f"| `{layer['name']}` | {layer['op']} | {layer['group']} | "
            f"{layer['kept']} | {layer['total']} |"
        )
    if report.get("frozen"):
        lines += ["", "## Not pruned", "", "| layers | channels | reason |", "|---|---:|---|"]
        for entry in report["frozen"]:
            names = ", ".join(f"`{n}`" for n in entry["layers"])
            lines.append(f"| {names} | {entry['channels']} | {entry['reason']} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, path: str | os.PathLike, force: bool = False) -> list[Path]:
    """Write ``path`` (JSON) and the same name with ``.md`` (Markdown), atomically."""
    path = Path(path)
    payload = json.dumps(report, indent=2, default=float).encode()
    written = [atomic_write_bytes(path, payload, force=force)]
    markdown = path.with_suffix(".md") if path.suffix != ".md" else path.with_suffix(".md.md")
    written.append(atomic_write_bytes(markdown, to_markdown(report).encode(), force=True))
    return written


def print_summary(report: dict, max_layers: int = 60) -> None:
    """The terminal view: per-layer kept/total and the totals, as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    layers = Table(title="kept / total per layer", show_lines=False)
    for column in ("layer", "op", "group", "kept", "total"):
        layers.add_column(
            column, justify="right" if column in ("group", "kept", "total") else "left"
        )
    shown = report["layers"][:max_layers]
    for layer in shown:
        style = None if layer["prunable"] else "dim"
        layers.add_row(
            layer["name"],
            layer["op"],
            str(layer["group"]),
            str(layer["kept"]),
            str(layer["total"]),
            style=style,
        )
    if len(report["layers"]) > max_layers:
        layers.add_row(
            f"... {len(report['layers']) - max_layers} more (see the report)", "", "", "", ""
        )
    console.print(layers)
    totals = Table(title="totals")
    for column in ("metric", "before", "after", "after/before"):
        totals.add_column(column, justify="left" if column == "metric" else "right")
    for row in summary_rows(report):
        totals.add_row(*row)
    console.print(totals)
    if report.get("frozen"):
        console.print(f"{len(report['frozen'])} group(s) not pruned; reasons in the report.")


def build_report(
    method: str,
    parameters: dict,
    model_arg,
    analysis: Analysis,
    pruned: onnx.ModelProto,
    masks: dict[int, np.ndarray],
    scores: dict[int, np.ndarray],
    feed: dict[str, np.ndarray],
) -> dict:
    """The machine-readable report (report.py renders it for people)."""
    params_before, params_after = count_params(analysis.model), count_params(pruned)
    macs_before, macs_after = count_macs(analysis.model, feed), count_macs(pruned, feed)
    layers = []
    for group in analysis.groups:
        mask = masks.get(group.index)
        for source in group.sources:
            total = source.size
            kept = total if mask is None else int(mask[group.channel_of[source.name]].sum())
            layers.append(
                {
                    "name": source.name,
                    "op": source.node.op,
                    "kind": source.kind,
                    "group": group.index,
                    "kept": kept,
                    "total": total,
                    "prunable": group.prunable,
                }
            )
    frozen = [
        {
            "group": g.index,
            "layers": [s.name for s in g.sources],
            "channels": g.size,
            "reason": g.frozen_reason or "single channel",
        }
        for g in analysis.frozen()
    ]
    return {
        "tool": "onnxprune",
        "version": __version__,
        "method": method,
        "parameters": parameters,
        "model": str(model_arg) if not isinstance(model_arg, onnx.ModelProto) else "<ModelProto>",
        "params_before": params_before,
        "params_after": params_after,
        "remaining_params_ratio": params_after / params_before if params_before else 1.0,
        "macs_before": macs_before,
        "macs_after": macs_after,
        "flops_before": 2 * macs_before,
        "flops_after": 2 * macs_after,
        "size_bytes_before": model_bytes(analysis.model),
        "size_bytes_after": model_bytes(pruned),
        "groups_total": len(analysis.groups),
        "groups_pruned": sum(1 for m in masks.values() if not m.all()),
        "layers": layers,
        "frozen": frozen,
    }


def stamp_provenance(pruned: onnx.ModelProto, report: dict, model_arg) -> None:
    """Record tool, method, parameters and source hash in the model's metadata_props."""
    entries = {
        "onnxprune.version": __version__,
        "onnxprune.method": report["method"],
        "onnxprune.parameters": repr(report["parameters"]),
    }
    if isinstance(model_arg, str | os.PathLike) and os.path.isfile(model_arg):
        entries["onnxprune.source_sha256"] = model_hash(model_arg)
    kept = [p for p in pruned.metadata_props if not p.key.startswith("onnxprune.")]
    del pruned.metadata_props[:]
    pruned.metadata_props.extend(kept)
    for key, value in entries.items():
        pruned.metadata_props.add(key=key, value=value)
