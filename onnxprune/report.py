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
from .metrics import LATENCY_BUDGET_S, count_params, latency_ms, layer_macs, model_bytes


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
    ]
    for key, label in (("macs", "MACs"), ("latency_ms", "latency (ms, batch 1)")):
        if f"{key}_before" in report:
            before, after = report[f"{key}_before"], report[f"{key}_after"]
            fmt = _fmt_int if key == "macs" else (lambda v: f"{v:.3f}")
            rows.append((label, fmt(before), fmt(after), _ratio(after, before)))
    rows += [
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
            rows.append((metric, fmt(before), fmt(after), _change(metric, after, before)))
    for metric in ("accuracy", "mse"):
        if f"{metric}_finetuned" in report:
            value = report[f"{metric}_finetuned"]
            text = f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.5g}"
            change = _change(metric, value, report.get(f"{metric}_before", value))
            rows.append((f"{metric} after fine-tune", "", text, change))
    return rows


def _change(metric: str, after: float, before: float) -> str:
    """Accuracy moves in percentage points; an error is compared as a ratio."""
    return f"{100 * (after - before):+.2f} pt" if metric == "accuracy" else _ratio(after, before)


def to_markdown(report: dict) -> str:
    """A human report: totals, per-layer kept/total, and what was frozen and why."""
    params = ", ".join(f"{k}={v}" for k, v in report["parameters"].items())
    lines = [
        f"# onnxprune {report['method']} report",
        "",
        f"Model: `{report['model']}`  ",
        f"Parameters: {params}  ",
        f"Remaining-parameter ratio (RPR, parameters after / before): "
        f"{report['remaining_params_ratio']:.4f}",
        "",
        "| metric | before | after | after/before |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {m} | {b} | {a} | {r} |" for m, b, a, r in summary_rows(report)]
    if report["layers"]:
        lines += ["", "## Layers", ""]
        lines += ["| layer | op | group | kept | total | MACs before | MACs after |"]
        lines += ["|---|---|---:|---:|---:|---:|---:|"]
    for layer in report["layers"]:
        lines.append(
            f"| `{layer['name']}` | {layer['op']} | {layer['group']} | "
            f"{layer['kept']} | {layer['total']} | {_fmt_int(layer.get('macs_before', 0))} | "
            f"{_fmt_int(layer.get('macs_after', 0))} |"
        )
    if report.get("frozen"):
        lines += ["", "## Not pruned", "", "| layers | channels | reason |", "|---|---:|---|"]
        for entry in report["frozen"]:
            names = ", ".join(f"`{n}`" for n in entry["layers"])
            lines.append(f"| {names} | {entry['channels']} | {entry['reason']} |")
    if report.get("recovery"):
        lines += recovery_markdown(report["recovery"], report.get("distill"))
    if report.get("layers_removed"):  # ODF2NNA: hidden layers left without units
        lines += ["", "## Hidden layers removed", "", "| layers | bridge | fit R² |"]
        lines += ["|---|---|---:|"]
        for entry in report["layers_removed"]:
            names = ", ".join(f"`{n}`" for n in entry["layers"])
            lines.append(f"| {names} | `{entry['bridge']}` | {entry['fit_r2']:.4f} |")
    if report.get("finetune"):
        lines += finetune_markdown(report["finetune"])
    if report.get("artifacts"):
        lines += ["", "## Artifacts", ""]
        lines += [f"| {' | '.join(ARTIFACT_COLUMNS)} |", "|---|" + "---:|" * 5]
        lines += [f"| {' | '.join(row)} |" for row in artifact_rows(report["artifacts"])]
    if report.get("timings"):
        spent = ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in report["timings"].items())
        lines += ["", f"Time: {spent}."]
    return "\n".join(lines) + "\n"


def _schedule_text(tuned: dict) -> str:
    """`` (cosine, 10% warm-up, weight decay 0.0005)`` or nothing for the plain defaults."""
    parts = []
    if tuned.get("schedule", "constant") != "constant":
        parts.append(tuned["schedule"])
    if tuned.get("warmup"):
        parts.append(f"{100 * tuned['warmup']:g}% warm-up")
    if tuned.get("weight_decay"):
        parts.append(f"weight decay {tuned['weight_decay']:g}")
    return f" ({', '.join(parts)})" if parts else ""


def finetune_markdown(tuned: dict) -> list[str]:
    """The fine-tune's settings and per-epoch loss / eval metric; the kept epoch marked *."""
    fmt = lambda v: "-" if v is None else f"{v:.6g}"  # noqa: E731
    lines = [
        "",
        "## Fine-tune",
        "",
        f"{tuned['epochs_run']} of {tuned['epochs']} epoch(s) on {tuned['train_samples']:,} "
        f"samples, {tuned['optimizer']} lr {tuned['lr']:g}{_schedule_text(tuned)}, "
        f"batch {tuned['batch_size']}, "
        f"seed {tuned['seed']}, {tuned.get('processes', 1)} process(es), "
        f"{tuned['train_s']:.1f} s; kept epoch {tuned['best_epoch']} (by {tuned['metric']}).",
        "",
        "| epoch | train loss | eval metric | eval loss |",
        "|---:|---:|---:|---:|",
    ]
    for row in tuned["history"]:
        mark = " *" if row["epoch"] == tuned["best_epoch"] else ""
        lines.append(
            f"| {row['epoch']}{mark} | {fmt(row['loss'])} | {fmt(row['eval_metric'])} | "
            f"{fmt(row['eval_loss'])} |"
        )
    return lines


def recovery_markdown(rows: list[dict], distill: dict | None = None) -> list[str]:
    """Per layer that lost inputs: compensated, refit, and its output error left on D_var
    (after distillation, when there was one)."""
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    intro = (
        "Relative MSE of each layer's outputs against the original "
        "model's on D_var (MSE / variance of the original outputs)."
    )
    if distill:
        intro += f" {distill_summary(distill)} 'Error after' is measured after it."
    lines = ["", "## Recovery", "", intro, ""]
    lines += ["| layer | op | inputs kept | compensated | refit | error before | error after |"]
    lines += ["|---|---|---:|---|---|---:|---:|"]
    for row in rows:
        refit = "yes" if row["refit"] else ("no: " + row["reason"] if row["reason"] else "no")
        lines.append(
            f"| `{row['name']}` | {row['op']} | {row['inputs_kept']}/{row['inputs_total']} | "
            f"{'yes' if row['compensated'] else 'no'} | {refit} | "
            f"{fmt(row['error_before'])} | {fmt(row['error_after'])} |"
        )
    return lines


ARTIFACT_COLUMNS = ("artifact", "size (bytes)", "params", "FLOPs", "latency (ms)", "quality")


def artifact_rows(artifacts: list[dict]) -> list[tuple[str, ...]]:
    """original / pruned / pruned + INT8 side by side (rows shared by Markdown and terminal)."""
    rows = []
    for item in artifacts:
        if "accuracy" in item:
            quality = f"{100 * item['accuracy']:.2f}%"
        elif "mse" in item:
            quality = f"MSE {item['mse']:.5g}"
        else:
            quality = "-"
        rows.append(
            (
                item["name"],
                _fmt_int(item["size_bytes"]),
                _fmt_int(item["params"]),
                _fmt_int(item["flops"]),
                f"{item['latency_ms']:.3f}",
                quality,
            )
        )
    return rows


def write_report(report: dict, path: str | os.PathLike, force: bool = False) -> list[Path]:
    """Write ``path`` (JSON) and the same name with ``.md`` (Markdown), atomically."""
    path = Path(path)
    payload = json.dumps(report, indent=2, default=float).encode()
    written = [atomic_write_bytes(path, payload, force=force)]
    markdown = path.with_suffix(".md") if path.suffix != ".md" else path.with_suffix(".md.md")
    written.append(atomic_write_bytes(markdown, to_markdown(report).encode(), force=True))
    return written


def print_summary(report: dict, max_layers: int = 60) -> None:
    """The terminal view: per-layer kept/total, the totals and the artifacts, as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if report["layers"]:
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
    if report.get("artifacts"):
        artifacts = Table(title="artifacts")
        for column in ARTIFACT_COLUMNS:
            left = column == "artifact"
            artifacts.add_column(column, justify="left" if left else "right", no_wrap=left)
        for row in artifact_rows(report["artifacts"]):
            artifacts.add_row(*row)
        console.print(artifacts)
    if report.get("frozen"):
        console.print(f"{len(report['frozen'])} group(s) not pruned; reasons in the report.")
    refit = [row for row in report.get("recovery", []) if row["refit"]]
    if refit:
        worst = max(row["error_after"] for row in refit)
        console.print(f"{len(refit)} layer(s) refit; largest output error left {worst:.4f}.")
    if report.get("distill"):
        console.print(distill_summary(report["distill"]))


def distill_summary(distill: dict) -> str:
    """One sentence on what --distill did."""
    losses, best = distill["loss"], distill["best_epoch"]
    kept = f"epoch {best} kept" if best else "no epoch improved on the refit, so it was kept"
    return (
        f"Distilled {distill['epochs']} epoch(s) on {distill['samples']} D_var samples "
        f"({distill['layers']} layer outputs matched, lr {distill['lr']:g}): D_var loss "
        f"{losses[0]:.4f} -> {losses[best]:.4f}, {kept}."
    )


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
    node_macs_before, node_macs_after = layer_macs(analysis.model, feed), layer_macs(pruned, feed)
    macs_before, macs_after = sum(node_macs_before.values()), sum(node_macs_after.values())
    one = {name: value[:1] for name, value in feed.items()}
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
                    "equal_groups": group.equal_groups,
                    "macs_before": node_macs_before.get(source.name, 0),
                    "macs_after": node_macs_after.get(source.name, 0),
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
        "latency_ms_before": latency_ms(analysis.model, one, budget_s=LATENCY_BUDGET_S),
        "latency_ms_after": latency_ms(pruned, one, budget_s=LATENCY_BUDGET_S),
        "groups_total": len(analysis.groups),
        "groups_pruned": sum(1 for m in masks.values() if not m.all()),
        "layers": layers,
        "frozen": frozen,
    }


def carry_metadata(tuned: onnx.ModelProto, source: onnx.ModelProto) -> None:
    """Copy ``source``'s metadata_props (provenance) into ``tuned`` (a retrained export of
    it), never duplicating a key."""
    present = {prop.key for prop in tuned.metadata_props}
    for prop in source.metadata_props:
        if prop.key not in present:
            tuned.metadata_props.add(key=prop.key, value=prop.value)
            present.add(prop.key)


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
