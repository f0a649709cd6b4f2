"""The pipeline as one readable function per method: load -> analyze -> observe/score ->
select -> rewrite -> verify -> report. The CLI and the public API both call these."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from . import progress
from .analyze import Analysis, analyze
from .errors import ModelError, ParameterError
from .graph.rewrite import Plan, rewrite
from .io import DataLike, Dataset, input_specs, load_data, load_model
from .metrics import evaluate
from .verify import verify


@dataclass
class PruneResult:
    """The pruned model and its report; unpacks as ``model, report = ocnna(...)``."""

    model: onnx.ModelProto
    report: dict = field(default_factory=dict)
    # group index -> keep mask the model was pruned with (to prune a twin of the model the
    # same way, e.g. the user's Keras original); not part of the unpacking
    masks: dict[int, np.ndarray] | None = None

    def __iter__(self):
        yield self.model
        yield self.report


def first_feed(dataset: Dataset) -> dict[str, np.ndarray]:
    return next(dataset.batches(min(8, len(dataset))))


def prepare(
    model: str | os.PathLike | onnx.ModelProto, data: DataLike | None
) -> tuple[onnx.ModelProto, Analysis, Dataset | None]:
    """Load the model and data, check they fit, and analyze the channel groups."""
    original = load_model(model)
    dataset = None if data is None else load_data(data, input_specs(original))
    sample = first_feed(dataset) if dataset is not None else None
    progress.info("analyzing channel groups")
    try:
        analysis = analyze(original, sample)
    except ModelError:
        raise
    except Exception as exc:  # a graph the analysis cannot even read is a model problem
        raise ModelError(f"cannot analyze the model: {exc}") from exc
    return original, analysis, dataset


def masks_for_removal(analysis: Analysis, remove: Mapping[str, list[int]]) -> dict[int, np.ndarray]:
    """Keep masks that drop the given channels of named sources (and their coupled ones)."""
    masks: dict[int, np.ndarray] = {}
    for source_name, channels in remove.items():
        group = analysis.group_of(source_name)
        if not group.prunable:
            raise ParameterError(f"'{source_name}' cannot be pruned: {group.frozen_reason}")
        mask = masks.setdefault(group.index, np.ones(group.size, dtype=bool))
        mask[group.channel_of[source_name][list(channels)]] = False
        if not mask.any():
            raise ParameterError(f"removing all channels of '{source_name}' is not allowed")
    for index, mask in masks.items():
        blocks = analysis.groups[index].blocks
        if blocks is not None and len({int(mask[row].sum()) for row in blocks}) != 1:
            raise ParameterError(
                f"'{analysis.groups[index].name}' is read by a grouped conv: remove equally "
                f"many channels from each of its {len(blocks)} blocks of {blocks.shape[1]}"
            )
    return masks


def apply_masks(
    analysis: Analysis,
    masks: dict[int, np.ndarray],
    means: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """Rewrite the analysed model for ``masks`` (group index -> keep mask); ``means``
    (consumer input -> per-position mean) turns on mean compensation."""
    return rewrite(analysis.model, Plan(analysis.cg, analysis.groups, masks, means))


def prune_channels(
    model: str | os.PathLike | onnx.ModelProto,
    remove: Mapping[str, list[int]],
    data: DataLike | None = None,
) -> onnx.ModelProto:
    """Remove exactly the named channels (source node name -> channel indices).

    The building block for custom criteria and for exactness tests: coupled channels
    (residual partners, concat consumers) go with them.
    """
    _, analysis, dataset = prepare(model, data)
    pruned = apply_masks(analysis, masks_for_removal(analysis, remove))
    feed = first_feed(dataset) if dataset is not None else None
    if feed is not None:
        verify(pruned, analysis.model, feed)
    return pruned


def zeros_feed(analysis: Analysis) -> dict[str, np.ndarray]:
    from .graph.shapes import probe_feed

    return probe_feed(analysis.specs, None)


#: Ops of an already quantized model: its layers read DequantizeLinear outputs or are
#: integer ops, neither of which has float weights to slice.
QUANTIZED_OPS = {
    "DequantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeLinear",
}


def nothing_to_prune(analysis: Analysis) -> str:
    """Why no group can be pruned, said in the user's terms."""
    reasons = sorted({g.frozen_reason for g in analysis.groups if g.frozen_reason})
    if not analysis.groups:
        if any(node.op_type in QUANTIZED_OPS for node in analysis.model.graph.node):
            return (
                "it is already quantized: prune the float model, then quantize, e.g. "
                "with --quantize int8"
            )
        return "it has no Conv, Gemm or MatMul layer"
    return f"frozen: {reasons[0]}" if reasons else "every group has a single channel"


def frozen_hint(analysis: Analysis) -> str:
    """``nothing_to_prune`` as a parenthesis for an error message."""
    return f" ({nothing_to_prune(analysis)})"


def before_after(
    before: onnx.ModelProto, after: onnx.ModelProto, eval_set: Dataset, batch_size: int
) -> dict[str, float]:
    result = {}
    for suffix, model in (("before", before), ("after", after)):
        for metric, value in evaluate(model, eval_set, batch_size).items():
            result[f"{metric}_{suffix}"] = value
    return result
