"""Stage `recover` (after `rewrite`): for every layer that lost input channels, say what
compensation did and how far its outputs are from the original's on D_var, and with
``refit`` make them match by least squares (``reconstruct``); with ``distill`` then train
the whole pruned model towards the original on D_var (opt-in, needs torch)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

import numpy as np
import onnx

from .errors import DataError, ModelError, ParameterError
from .importance.odf2nna import MomentsAccumulator
from .io import DataLike, Dataset, input_specs, load_data
from .observe import session_with_outputs
from .reconstruct import (
    DEFAULT_RIDGE,
    LayerFit,
    find_consumers,
    kept_output_index,
    kept_outputs,
    reconstruct,
)
from .refit_layers import Skip, channel_axis, output_units, weights_of

if TYPE_CHECKING:
    from .analyze import Analysis

#: Adam's step size for --distill: the refit weights are already close, and a fine-tune's
#: 1e-3 undoes them (measured on the CIFAR ResNets, docs/recovery.md).
DISTILL_LR = 2e-4


def measure(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    data: DataLike,
    *,
    kept_outputs: Mapping[str, np.ndarray] | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    layers: Collection[str] | None = None,
) -> list[LayerFit]:
    """The relative output error of every layer that lost inputs (of ``layers`` only,
    when given), without refitting."""
    dataset = load_data(data, input_specs(original))
    batch_size = dataset.batch_size(batch_size)
    fits = find_consumers(original, pruned)
    if layers is not None:
        fits = [fit for fit in fits if fit.name in layers]
    produced = {name for node in pruned.graph.node for name in node.output}
    sources = {n.name: n for n in original.graph.node}
    weights = weights_of(original)
    checks: dict[str, tuple[str, np.ndarray, MomentsAccumulator]] = {}
    squared: dict[str, float] = {}
    for fit in fits:
        target = sources[fit.name].output[0]
        try:
            units = output_units(sources[fit.name], weights)
            index = kept_output_index(fit.name, fit.outputs, units, kept_outputs or {})
        except Skip as reason:
            fit.reason = str(reason)
            continue
        if target and target in produced:  # a recurrent layer may leave Y unset
            checks[fit.name] = (target, index, MomentsAccumulator(len(index)))
            squared[fit.name] = 0.0
    names = sorted({target for target, _, _ in checks.values()})
    if names:
        got_session = session_with_outputs(pruned, names, device)
        want_session = session_with_outputs(original, names, device)
        for feed in dataset.batches(batch_size):
            got = dict(zip(names, got_session.run(names, feed)))
            want = dict(zip(names, want_session.run(names, feed)))
            for fit in fits:
                if fit.name not in checks:
                    continue
                target, index, moments = checks[fit.name]
                axis = channel_axis(fit.op) % want[target].ndim
                expected = np.take(want[target], index, axis=axis).astype(np.float64)
                squared[fit.name] += float(np.square(got[target] - expected).sum())
                moments.update(np.moveaxis(expected, axis, 1))
    for fit in fits:
        if fit.name in checks:
            moments = checks[fit.name][2]
            spread = float(np.square(moments.std).sum() * moments.count)
            fit.error_before = fit.error_after = squared[fit.name] / max(spread, 1e-30)
    return fits


@dataclasses.dataclass(frozen=True)
class DistillOptions:
    """How ``--distill`` trains: epochs over D_var, Adam's step, batch, seed, device."""

    epochs: int
    lr: float = DISTILL_LR
    batch_size: int = 64
    seed: int = 0
    device: str = "cpu"


def check_distill(epochs: int, lr: float, data: DataLike | None) -> None:
    """Before any work: distillation options in range, and D_var to distill on."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ParameterError(f"distill epochs must be a whole number >= 0, got {epochs!r}")
    if not lr > 0:
        raise ParameterError(f"distill learning rate must be > 0, got {lr}")
    if epochs and data is None:
        raise DataError("distillation needs data: pass D_var samples (--data)")


@dataclasses.dataclass
class Recovery:
    """What ``recover`` did: the model, one report row per layer that lost inputs, the
    distillation's report (None without it) and the seconds each step took."""

    model: onnx.ModelProto
    rows: list[dict]
    distill: dict | None
    timings: dict[str, float]

    @property
    def seconds(self) -> float:
        """Refit (or measurement) plus distillation time."""
        return sum(self.timings.values())

    def report(self) -> dict:
        """The report's entries: ``recovery`` rows, and ``distill`` when it ran."""
        entries: dict = {"recovery": self.rows}
        if self.distill is not None:
            entries["distill"] = self.distill
        return entries


def recover(
    analysis: Analysis,
    pruned: onnx.ModelProto,
    masks: Mapping[int, np.ndarray],
    dataset: Dataset,
    means: Mapping[str, np.ndarray],
    *,
    refit: bool = False,
    ridge: float | None = DEFAULT_RIDGE,
    batch_size: int = 64,
    device: str = "cpu",
    distill: DistillOptions | None = None,
) -> Recovery:
    """The pipelines' recovery step after ``rewrite``: refit (or only measure) every layer
    that lost inputs, then with ``distill`` train the whole model towards the original on
    D_var and measure each layer again; report rows say what was compensated, refit,
    distilled, and the error left."""
    started = time.perf_counter()
    kept = kept_outputs(analysis, masks)
    options = {"kept_outputs": kept, "batch_size": batch_size, "device": device}
    if refit:
        pruned, fits = reconstruct(analysis.model, pruned, dataset, ridge=ridge, **options)
        _measure_unrefit(fits, analysis.model, pruned, dataset, options)
    else:
        fits = measure(analysis.model, pruned, dataset, **options)
    for fit in fits:
        fit.compensated = fit.input in means
    timings = {"recover_s": time.perf_counter() - started}
    distilled = None
    if distill is not None and distill.epochs:
        started = time.perf_counter()
        pruned, distilled = _distill(analysis.model, pruned, dataset, kept, distill)
        if distilled["best_epoch"]:  # the weights changed: measure every layer again
            errors = {
                f.name: f.error_after for f in measure(analysis.model, pruned, dataset, **options)
            }
            for fit in fits:
                fit.error_after = errors.get(fit.name, fit.error_after)
        for fit in fits:
            fit.distilled = True
        timings["distill_s"] = time.perf_counter() - started
    return Recovery(pruned, [fit.as_dict() for fit in fits], distilled, timings)


def _measure_unrefit(
    fits: list[LayerFit],
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    dataset: Dataset,
    options: dict,
) -> None:
    """Layers the refit skipped (ConvTranspose, recurrent) still get their error measured."""
    skipped = {fit.name for fit in fits if fit.reason and fit.error_after is None}
    if skipped:
        measured = measure(original, pruned, dataset, **options, layers=skipped)
        errors = {f.name: f.error_after for f in measured}
        for fit in fits:
            if fit.name in skipped:
                fit.error_before = fit.error_after = errors.get(fit.name)


def _distill(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    dataset: Dataset,
    kept: Mapping[str, np.ndarray],
    options: DistillOptions,
) -> tuple[onnx.ModelProto, dict]:
    """``finetune.distill``, with its failures said as --distill's."""
    try:
        from .finetune.distill import distill
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "torch":
            raise
        raise ParameterError("--distill needs torch: pip install 'onnxprune[torch]'") from None
    try:
        return distill(original, pruned, dataset, kept, options)
    except ModelError as exc:
        raise ModelError(f"--distill: {exc}") from exc
