"""Sweeps: prune at many settings from ONE observation pass (the paper's Figure 3 study).

Observing and scoring is the expensive part and does not depend on k, so it runs once;
each k only selects, rewrites, verifies and evaluates. ``run_sweep`` is method-agnostic:
a method supplies ``prune(value) -> PruneResult`` (ocnna: ``prune_scored`` at k).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import onnx

from . import __version__, progress
from .errors import ParameterError
from .io import DataLike
from .methods.ocnna import Scored, prune_scored, score_model
from .pipeline import PruneResult
from .select import check_k

STAGES = ("after", "finetuned", "int8")


@dataclass
class SweepResult:
    """The sweep report (JSON-able) and, when asked for, the model of every value."""

    report: dict
    models: dict[float, onnx.ModelProto] = field(default_factory=dict)


def parse_values(text: str, check: Callable[[float], float] = check_k) -> list[float]:
    """``10,20,30`` -> sorted unique floats, each checked (k must lie in [0, 100))."""
    values = []
    for part in (p.strip() for p in text.split(",")):
        try:
            values.append(float(part))
        except ValueError:
            raise ParameterError(
                f"bad value {part!r} in the list: use numbers like 10,20,40"
            ) from None
    return sorted({check(v) for v in values})


def sweep_row(parameter: str, value: float, report: dict, seconds: float) -> dict:
    """One table row from a method's report at one setting."""
    row = {
        parameter: value,
        "params": report["params_after"],
        "rpr": report["remaining_params_ratio"],
        "flops": report["flops_after"],
        "flops_ratio": report["flops_after"] / report["flops_before"]
        if report["flops_before"]
        else 1.0,
        "size_bytes": report["size_bytes_after"],
        "latency_ms": report.get("latency_ms_after"),
        "groups_pruned": report.get("groups_pruned"),
        "seconds": seconds,
    }
    for metric in ("accuracy", "mse"):
        for stage in STAGES:
            if f"{metric}_{stage}" in report:
                row[f"{metric}_{stage}"] = report[f"{metric}_{stage}"]
    return row


def run_sweep(
    parameter: str,
    values: Iterable[float],
    prune: Callable[[float], PruneResult],
    *,
    after_prune: Callable[[PruneResult], None] | None = None,
    keep_models: bool = False,
) -> tuple[list[dict], dict, dict[float, onnx.ModelProto]]:
    """(rows, the original model's numbers, models) for every value, in order."""
    rows: list[dict] = []
    models: dict[float, onnx.ModelProto] = {}
    original: dict = {}
    for value in values:
        progress.info(f"{parameter} = {value:g}")
        start = time.perf_counter()
        result = prune(value)
        if after_prune is not None:
            after_prune(result)
        report = result.report
        rows.append(sweep_row(parameter, value, report, time.perf_counter() - start))
        if keep_models:
            models[value] = result.model
        if not original:
            original = {
                "params": report["params_before"],
                "flops": report["flops_before"],
                "size_bytes": report["size_bytes_before"],
                "latency_ms": report.get("latency_ms_before"),
            }
            for metric in ("accuracy", "mse"):
                if f"{metric}_before" in report:
                    original[metric] = report[f"{metric}_before"]
    return rows, original, models


def sweep_ocnna(
    model: str | os.PathLike | onnx.ModelProto,
    ks: Iterable[float],
    data: DataLike | None,
    *,
    eval_data: DataLike | None = None,
    criterion: str = "ocnna",
    convs_only: bool = False,
    round_to: int = 1,
    compensate: bool = True,
    reconstruct: bool = False,
    batch_size: int = 64,
    device: str = "cpu",
    seed: int = 0,
    finetune_data: DataLike | None = None,
    epochs: int = 1,
    lr: float = 1e-3,
    quantize: bool = False,
    keep_models: bool = False,
) -> SweepResult:
    """OCNNA at every k in ``ks``: one scoring pass, then select / rewrite / verify / evaluate.

    With ``finetune_data`` every pruned model is also fine-tuned (``epochs``, ``lr``), with
    ``quantize`` also quantized to INT8 (calibrated on ``data``); the quality of each goes
    in the table. ``keep_models`` returns the (fine-tuned) float model of every k.
    """
    ks = sorted({check_k(k) for k in ks})
    if not ks:
        raise ParameterError("give at least one k")
    if round_to < 1:
        raise ParameterError(f"round-to must be at least 1, got {round_to}")
    if finetune_data is not None and epochs < 1:
        raise ParameterError(f"epochs must be at least 1, got {epochs}")
    scored = score_model(
        model,
        data,
        eval_data=eval_data,
        criterion=criterion,
        convs_only=convs_only,
        batch_size=batch_size,
        device=device,
        seed=seed,
        compensate=compensate,
    )

    def after_prune(result: PruneResult) -> None:
        if finetune_data is not None:
            finetune(result)
        if quantize:
            from .quantize import add_int8

            add_int8(result, scored.dataset, eval_data=scored.eval_set, batch_size=batch_size)

    def finetune(result: PruneResult) -> None:
        from .finetune.round_trip import finetune as run_finetune

        tuned, extra = run_finetune(
            result.model,
            finetune_data,
            eval_data,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            device=device,
        )
        if tuned is None:
            raise ParameterError("run sweeps with --finetune in one process, not under torchrun")
        tuned.metadata_props.extend(result.model.metadata_props)
        result.model = tuned
        result.report.update(extra)

    rows, original, models = run_sweep(
        "k",
        ks,
        lambda k: prune_scored(scored, k, round_to, reconstruct=reconstruct),
        after_prune=after_prune,
        keep_models=keep_models,
    )
    options = {"round_to": round_to, "reconstruct": reconstruct, "quantize": quantize}
    if finetune_data is not None:
        options.update({"finetune_epochs": epochs, "finetune_lr": lr})
    report = _report(scored, model, rows, original, options)
    return SweepResult(report, models)


def _report(
    scored: Scored,
    model: str | os.PathLike | onnx.ModelProto,
    rows: list[dict],
    original: dict,
    options: dict,
) -> dict:
    name = os.path.basename(os.fspath(model)) if isinstance(model, str | os.PathLike) else "model"
    metric = next((m for m in ("accuracy", "mse") if m in original), None)
    settings = {**scored.settings, **options}
    return {
        "tool": "onnxprune",
        "version": __version__,
        "method": "ocnna",
        "title": f"OCNNA sensitivity to k: {name} ({scored.settings['criterion']})",
        "parameter": "k",
        "parameter_label": "k, percentile of significance (%)",
        "metric": metric,
        "model": name if not isinstance(model, str | os.PathLike) else os.fspath(model),
        "settings": settings,
        "samples": 0 if scored.dataset is None else len(scored.dataset),
        "eval_samples": 0 if scored.eval_set is None else len(scored.eval_set),
        "original": original,
        "rows": rows,
        "timings": {
            "analyze_s": scored.timings["analyze_s"],
            "score_once_s": scored.timings["score_s"],
            "per_k_s": [row["seconds"] for row in rows],
        },
    }


def _quality(value: float | None, metric: str | None) -> str:
    if value is None or metric is None:
        return "-"
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.5g}"


def to_markdown(report: dict) -> str:
    """The sweep table: one row per value, the original model first."""
    parameter, metric, original = report["parameter"], report["metric"], report["original"]
    stages = [s for s in STAGES if any(f"{metric}_{s}" in row for row in report["rows"])]
    names = {"after": "no retraining", "finetuned": "fine-tuned", "int8": "INT8"}
    quality = [f"{metric or 'quality'} ({names[s]})" for s in stages]
    header = [parameter, "parameters", "RPR", "FLOPs ratio", "file size (bytes)"]
    header += ["latency (ms)", *quality, "time (s)"]
    settings = ", ".join(f"{k}={v}" for k, v in report["settings"].items())
    timings = report["timings"]
    lines = [
        f"# {report['title']}",
        "",
        f"Model: `{report['model']}`  ",
        f"Settings: {settings}  ",
        f"Scored once on {report['samples']} D_var samples in {timings['score_once_s']:.2f} s; "
        f"quality on {report['eval_samples']} labelled samples. RPR = remaining-parameter ratio "
        "(parameters after / before); latency = onnxruntime CPU, batch 1, median.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---:|" * len(header),
    ]

    def latency(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    cells = ["original", f"{original['params']:,}", "1.000", "1.000", f"{original['size_bytes']:,}"]
    cells += [latency(original.get("latency_ms"))]
    cells += [_quality(original.get(metric), metric)] + ["-"] * (len(stages) - 1) + ["-"]
    lines.append("| " + " | ".join(cells) + " |")
    for row in report["rows"]:
        cells = [
            f"{row[parameter]:g}",
            f"{row['params']:,}",
            f"{row['rpr']:.3f}",
            f"{row['flops_ratio']:.3f}",
            f"{row['size_bytes']:,}",
            latency(row.get("latency_ms")),
        ]
        cells += [_quality(row.get(f"{metric}_{s}"), metric) for s in stages]
        cells.append(f"{row['seconds']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
