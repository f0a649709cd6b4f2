"""Sweeps: prune at many settings from ONE observation pass (the paper's Figure 3 study).

Observing and scoring is the expensive part and does not depend on k (or epsilon), so it
runs once; each value only selects, rewrites, verifies and evaluates. ``run_sweep`` is
method-agnostic: a method supplies ``prune(value) -> PruneResult`` (ocnna: ``prune_scored``
at k; odf2nna: ``prune_observed`` at epsilon).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import onnx

from . import __version__, progress
from .errors import ParameterError
from .io import DataLike, Dataset
from .methods import odf2nna as odf2nna_method
from .methods.ocnna import prune_scored, score_model
from .pipeline import PruneResult
from .select import check_epsilon, check_k
from .sweep_table import STAGES


@dataclass
class SweepResult:
    """The sweep report (JSON-able) and, when asked for, the model of every value."""

    report: dict
    models: dict[float, onnx.ModelProto] = field(default_factory=dict)


def parse_values(
    text: str,
    check: Callable[[float], float] = check_k,
    *,
    what: str = "value",
    example: str = "10,20,40",
) -> list[float]:
    """``10,20,30`` or ``start:stop:step`` ranges (stop included), mixed by commas ->
    sorted unique floats, each checked (k in [0, 100), epsilon >= 0); ``what`` and
    ``example`` name the option in the error line."""
    values: list[float] = []
    for part in (p.strip() for p in text.split(",")):
        try:
            if ":" in part:
                start, stop, step = (float(v) for v in part.split(":"))
                if not step > 0 or stop < start:
                    raise ValueError
                count = math.floor((stop - start) / step + 1e-9) + 1
                values += [round(start + i * step, 12) for i in range(count)]
            else:
                values.append(float(part))
        except ValueError:
            raise ParameterError(
                f"bad {what} {part!r} in the list: use numbers like {example} or start:stop:step"
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
    row_extra: Callable[[dict], dict] | None = None,
    keep_models: bool = False,
) -> tuple[list[dict], dict, dict[float, onnx.ModelProto]]:
    """(rows, the original model's numbers, models) for every value, in order.

    ``after_prune`` may replace the model (fine-tune) or add to the report (INT8);
    ``row_extra(report)`` adds a method's own columns to each row.
    """
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
        if row_extra is not None:
            rows[-1].update(row_extra(report))
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


@dataclass(frozen=True)
class Extras:
    """What every pruned model of a sweep may also get: a fine-tune and an INT8 copy."""

    finetune_data: DataLike | None = None
    epochs: int = 1
    lr: float = 1e-3
    quantize: bool = False

    def check(self) -> None:
        if self.finetune_data is not None and self.epochs < 1:
            raise ParameterError(f"epochs must be at least 1, got {self.epochs}")

    def settings(self) -> dict:
        options: dict = {"quantize": self.quantize}
        if self.finetune_data is not None:
            options.update({"finetune_epochs": self.epochs, "finetune_lr": self.lr})
        return options

    def hook(
        self,
        dataset: Dataset | None,
        eval_set: Dataset | None,
        *,
        batch_size: int,
        seed: int,
        device: str,
    ) -> Callable[[PruneResult], None]:
        """``after_prune`` for run_sweep: fine-tune, then quantize (calibrated on ``dataset``)."""

        def after_prune(result: PruneResult) -> None:
            if self.finetune_data is not None:
                from .finetune.round_trip import finetune_result

                settings = {"epochs": self.epochs, "lr": self.lr, "batch_size": batch_size}
                if not finetune_result(
                    result, self.finetune_data, eval_set, seed=seed, device=device, **settings
                ):
                    raise ParameterError(
                        "run sweeps with --finetune in one process, not under torchrun"
                    )
            if self.quantize:
                from .quantize import add_int8

                add_int8(result, dataset, eval_data=eval_set, batch_size=batch_size)

        return after_prune


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
    reconstruct: bool | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    seed: int = 0,
    finetune_data: DataLike | None = None,
    epochs: int = 1,
    lr: float = 1e-3,
    quantize: bool = False,
    keep_models: bool = False,
    workers: int = 1,
    keep: Sequence[str] = (),
) -> SweepResult:
    """OCNNA at every k in ``ks``: one scoring pass, then select / rewrite / verify / evaluate.

    With ``finetune_data`` every pruned model is also fine-tuned (``epochs``, ``lr``), with
    ``quantize`` also quantized to INT8 (calibrated on ``data``); the quality of each goes
    in the table. ``keep_models`` returns the (fine-tuned) float model of every k;
    ``workers`` > 1 scores in that many processes and ``keep`` keeps layers whole (as
    ``onnxprune.ocnna``).
    """
    ks = sorted({check_k(k) for k in ks})
    if not ks:
        raise ParameterError("give at least one k")
    if round_to < 1:
        raise ParameterError(f"round-to must be at least 1, got {round_to}")
    extras = Extras(finetune_data, epochs, lr, quantize)
    extras.check()
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
        workers=workers,
        keep=keep,
    )
    if reconstruct is None:  # as prune_scored decides it
        reconstruct = scored.dataset is not None
    rows, original, models = run_sweep(
        "k",
        ks,
        lambda k: prune_scored(scored, k, round_to, reconstruct=reconstruct),
        after_prune=extras.hook(
            scored.dataset, scored.eval_set, batch_size=batch_size, seed=seed, device=device
        ),
        keep_models=keep_models,
    )
    head = {
        "method": "ocnna",
        "title": f"OCNNA sensitivity to k: {_name(model)} ({criterion})",
        "parameter": "k",
        "parameter_label": "k, percentile of significance (%)",
        "settings": {
            **scored.settings,
            "round_to": round_to,
            "reconstruct": reconstruct,
            **extras.settings(),
        },
    }
    report = _report(head, model, rows, original, scored.dataset, scored.eval_set, scored.timings)
    return SweepResult(report, models)


def sweep_odf2nna(
    model: str | os.PathLike | onnx.ModelProto,
    epsilons: Iterable[float],
    data: DataLike | None,
    *,
    eval_data: DataLike | None = None,
    bridge: bool = True,
    batch_size: int = 64,
    device: str = "cpu",
    seed: int = 0,
    finetune_data: DataLike | None = None,
    epochs: int = 1,
    lr: float = 1e-3,
    quantize: bool = False,
    keep_models: bool = False,
) -> SweepResult:
    """ODF2NNA at every epsilon: one observation pass (every unit's std and mean), then
    select / rewrite / bridge / verify / evaluate per epsilon, as ``odf2nna`` does once.

    The options are those of ``onnxprune.odf2nna`` and ``sweep_ocnna``; each row also
    names the hidden units kept per layer (0: the layer was removed and bridged).
    """
    epsilons = sorted({check_epsilon(e) for e in epsilons})
    if not epsilons:
        raise ParameterError("give at least one epsilon")
    extras = Extras(finetune_data, epochs, lr, quantize)
    extras.check()
    observed = odf2nna_method.observe_units(
        model, data, eval_data=eval_data, batch_size=batch_size, device=device
    )
    rows, original, models = run_sweep(
        "epsilon",
        epsilons,
        lambda e: odf2nna_method.prune_observed(
            observed, e, bridge=bridge, batch_size=batch_size, device=device
        ),
        after_prune=extras.hook(
            observed.dataset, observed.eval_set, batch_size=batch_size, seed=seed, device=device
        ),
        row_extra=_units_kept,
        keep_models=keep_models,
    )
    settings = {"compensate": True, "bridge": bridge, "batch_size": batch_size, "device": device}
    head = {
        "method": "odf2nna",
        "title": f"ODF2NNA sensitivity to epsilon: {_name(model)}",
        "parameter": "epsilon",
        "parameter_label": "epsilon, threshold on each unit's output std (log scale)",
        "x_scale": "log",
        "settings": {**settings, **extras.settings()},
        "units_total": {g.name: g.size for g in observed.groups},
    }
    report = _report(
        head, model, rows, original, observed.dataset, observed.eval_set, observed.timings
    )
    return SweepResult(report, models)


def _units_kept(report: dict) -> dict:
    """ODF2NNA's row extras: kept units per hidden layer and the layers bridged away."""
    removed = [name for entry in report.get("layers_removed", []) for name in entry["layers"]]
    kept = {layer["layer"]: layer["kept"] for layer in report.get("unit_std", [])}
    return {"units_kept": kept, "layers_removed": removed}


def _name(model: str | os.PathLike | onnx.ModelProto) -> str:
    return os.path.basename(os.fspath(model)) if isinstance(model, str | os.PathLike) else "model"


def _report(
    head: dict,
    model: str | os.PathLike | onnx.ModelProto,
    rows: list[dict],
    original: dict,
    dataset: Dataset | None,
    eval_set: Dataset | None,
    timings: dict[str, float],
) -> dict:
    """The JSON sweep report: a method's ``head`` (title, parameter, settings) + the table."""
    metric = next((m for m in ("accuracy", "mse") if m in original), None)
    parameter = head["parameter"]
    return {
        "tool": "onnxprune",
        "version": __version__,
        **head,
        "metric": metric,
        "model": os.fspath(model) if isinstance(model, str | os.PathLike) else "model",
        "samples": 0 if dataset is None else len(dataset),
        "eval_samples": 0 if eval_set is None else len(eval_set),
        "original": original,
        "rows": rows,
        "timings": {
            "analyze_s": timings["analyze_s"],
            "score_once_s": timings["score_s"],
            f"per_{parameter}_s": [row["seconds"] for row in rows],
        },
    }
