"""Stage `reconstruct`: refit the layers that lost input channels so that their outputs on
D_var match the original model's (least squares, the ThiNet / channel-pruning idea).

Sequential: layer i is fitted on inputs from the pruned network whose earlier layers are
already refit, against targets (pre-activation outputs) from the original network, so
errors do not pile up layer after layer. Streamed: every batch adds to the normal
equations X^T X and X^T Y (float64), so memory is bounded by one batch and the d x d
statistics, never by the dataset. Convs are solved over im2col patches, one system per
conv group, so depthwise convs are refit too. The ridge pulls towards the current
(sliced, mean-compensated) weights rather than towards zero: a layer with more inputs
than samples (a Flatten -> Gemm head) then stays close to what it was. Its strength is
chosen per layer on held-out D_var samples: a fixed value over-fits small D_var in wide
dense layers and under-fits convs that have rows to spare.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from . import progress
from .blas import one_blas_thread
from .errors import ParameterError
from .graph.rewrite import Plan
from .io import DataLike, Dataset, input_specs, load_data
from .metrics import layer_macs
from .normal_equations import CHUNK_ELEMENTS, NormalEquations, choose_ridge
from .observe import providers_for
from .refit_layers import (
    REFIT_OPS,
    Layer,
    Skip,
    input_features,
    layer_for,
    output_units,
    weights_of,
)

if TYPE_CHECKING:
    from .analyze import Analysis

#: Ridge strength relative to the mean input variance of each layer; None chooses it per
#: layer on held-out D_var samples (every HOLD_OUT-th one), falling back to FALLBACK_RIDGE.
DEFAULT_RIDGE: float | None = None
FALLBACK_RIDGE = 1e-2
HOLD_OUT = 5
#: D_var samples a refit streams (evenly spaced over D_var): every layer is one pass over
#: them, and 500 vs 2,000 samples changed no benchmark model by more than half a point.
#: Big models get fewer, so that layers x samples x MACs per sample stays near REFIT_MACS
#: (ResNet-50 at 224 px: 53 layers, 4.1 GMACs -> MIN_SAMPLES), but never below
#: MIN_SAMPLES: big inputs have many positions per sample to fit convs on.
MAX_SAMPLES = 2048
MIN_SAMPLES = 128
REFIT_MACS = 2e12
#: Layers with more regressors per output than this are skipped (a d x d solve each).
MAX_FEATURES = 8192
#: Regression rows per regressor a conv layer samples (positions drawn per sample), and
#: at most MAX_ROWS in all: each row costs d^2 in X^T X, so a wide conv on big maps (VGG at
#: 224 px: d = 2765) would otherwise spend minutes per layer for no measurable gain.
ROWS_PER_INPUT = 256
MAX_ROWS = 1 << 15


@dataclasses.dataclass
class LayerFit:
    """What recovery did for one layer that lost input channels (one report row).

    Errors are relative MSEs of the layer's outputs against the original model's on
    D_var: mean squared difference / variance of the original outputs (1 - R^2).
    ``error_before`` is with the sliced (and compensated) weights; ``error_after`` is
    what the returned model has (equal to it when the layer was not refit).
    """

    name: str
    op: str
    input: str
    inputs_kept: int
    inputs_total: int
    outputs: int
    compensated: bool = False
    refit: bool = False
    distilled: bool = False
    error_before: float | None = None
    error_after: float | None = None
    ridge: float | None = None
    reason: str | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Options:
    """How to fit (see ``reconstruct``)."""

    ridge: float | None = DEFAULT_RIDGE
    batch_size: int = 64
    device: str = "cpu"
    max_features: int = MAX_FEATURES
    rows_per_input: int | None = ROWS_PER_INPUT
    seed: int = 0


@dataclasses.dataclass
class FitData:
    """What every layer's fit reads: the original model, D_var, kept outputs, options."""

    original: onnx.ModelProto
    dataset: Dataset
    kept: dict[str, np.ndarray]
    options: Options


# ----------------------------------------------------------------------------- driving


def paired_layers(
    original: onnx.ModelProto, pruned: onnx.ModelProto
) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(original node, pruned node) of every Conv/Gemm/MatMul in ``pruned`` whose name is
    unique in ``original``, in ``pruned``'s (topological) order."""
    counts = Counter(n.name for n in original.graph.node)
    originals = {n.name: n for n in original.graph.node if n.name and counts[n.name] == 1}
    return [
        (originals[node.name], node)
        for node in pruned.graph.node
        if node.op_type in REFIT_OPS and node.name in originals
    ]


def find_consumers(original: onnx.ModelProto, pruned: onnx.ModelProto) -> list[LayerFit]:
    """Conv/Gemm/MatMul layers of ``pruned`` that read fewer inputs than in ``original``
    (paired by node name), in topological order."""
    before, after = weights_of(original), weights_of(pruned)
    fits = []
    for source, node in paired_layers(original, pruned):
        total = input_features(source, before)
        kept = input_features(node, after)
        if total is None or kept is None or total == kept:
            continue
        units = output_units(node, after)
        fits.append(LayerFit(node.name, node.op_type, node.input[0], kept, total, units))
    return fits


def kept_outputs(analysis: Analysis, masks: Mapping[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Layer name -> the original output channels it still produces, for layers that
    lost outputs under ``masks`` (group index -> keep mask)."""
    plan = Plan(analysis.cg, analysis.groups, dict(masks))
    kept = {}
    for node in analysis.cg.graph.nodes:
        if node.op in REFIT_OPS:
            keep = plan.keep(node.outputs[0])
            if keep is not None:
                kept[node.name] = np.flatnonzero(keep)
    return kept


def _subgraph_names(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for attribute in node.attribute:
        for graph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in graph.node:
                names.update(inner.input)
                names.update(_subgraph_names(inner))
    return names


def truncated(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """Only the nodes ``names`` need, with ``names`` as outputs: onnxruntime would run
    every node of the full graph whatever was fetched."""
    needed, nodes = set(names), []
    for node in reversed(model.graph.node):
        if needed.intersection(node.output):
            nodes.append(node)
            needed.update(node.input)
            needed.update(_subgraph_names(node))
    known = {v.name: v for v in (*model.graph.value_info, *model.graph.output)}
    outputs = [known.get(n) or helper.make_empty_tensor_value_info(n) for n in names]
    graph = helper.make_graph(
        nodes[::-1],
        model.graph.name,
        model.graph.input,
        outputs,
        initializer=[i for i in model.graph.initializer if i.name in needed],
        value_info=[v for v in model.graph.value_info if v.name in needed],
    )
    sub = helper.make_model(graph, opset_imports=model.opset_import)
    sub.ir_version = model.ir_version
    sub.functions.extend(model.functions)
    return sub


def calm_session(model: onnx.ModelProto, device: str = "cpu") -> ort.InferenceSession:
    """A session whose idle threads sleep: spinning ones would slow the numpy solves that
    run between batches."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=providers_for(device))


def kept_output_index(
    name: str, units: int, original_units: int, kept: Mapping[str, np.ndarray]
) -> np.ndarray:
    """Which of the original layer's outputs the pruned layer ``name`` (making ``units``)
    still makes."""
    if name in kept:
        return np.asarray(kept[name])
    if units != original_units:
        raise Skip("its outputs were pruned too and no kept-output map was given")
    return np.arange(original_units)


def _sample_positions(rows, targets, first: int, positions: int, keep: int, seed: int):
    """``keep`` random positions of each sample (seeded by the sample's index in the
    dataset, so the rows do not depend on how the data is batched)."""
    samples = rows.shape[0] // positions
    picks = [
        np.random.default_rng([seed, first + i]).choice(positions, keep, replace=False)
        for i in range(samples)
    ]
    flat = (np.arange(samples)[:, None] * positions + np.sort(picks, axis=1)).reshape(-1)
    return rows[flat], targets[flat]


def _held_rows(rows: int, per_sample: int, first: int, hold_out: bool) -> np.ndarray:
    """Which rows belong to held-out samples (every HOLD_OUT-th sample, when asked)."""
    samples = np.arange(first, first + rows // per_sample)
    held = samples % HOLD_OUT == HOLD_OUT - 1 if hold_out else np.zeros(len(samples), bool)
    return np.repeat(held, per_sample)


def _accumulate(
    layer: Layer, x_name: str, target: str, fit_data: FitData
) -> tuple[NormalEquations, NormalEquations]:
    """Stream D_var through both models once into the normal equations of the fitting
    rows and of the held-out samples (empty unless the ridge is to be chosen)."""
    w0, _ = layer.current()
    fit, held = (NormalEquations(layer.groups, w0.shape[1], w0.shape[2]) for _ in range(2))
    options = fit_data.options
    hold_out = options.ridge is None and len(fit_data.dataset) >= 2 * HOLD_OUT
    x_session = calm_session(truncated(layer.model, [x_name]), options.device)
    y_session = calm_session(truncated(fit_data.original, [target]), options.device)
    budget = None
    if options.rows_per_input is not None:
        budget = min(options.rows_per_input * w0.shape[1], MAX_ROWS)
    seen, keep = 0, None
    for feed in fit_data.dataset.batches(options.batch_size):
        x = x_session.run([x_name], feed)[0]
        y = y_session.run([target], feed)[0]
        one = layer.rows(x[:1])  # the regressors of one sample
        positions = one.shape[0]
        if keep is None:
            keep = positions if budget is None else -(-budget // len(fit_data.dataset))
        step = max(1, CHUNK_ELEMENTS // max(one.size, 1))
        for start in range(0, len(x), step):
            rows = layer.rows(x[start : start + step])
            targets = layer.targets(y[start : start + step])
            if rows.shape[0] != targets.shape[0]:
                raise Skip("its input positions do not line up with its outputs")
            first = seen + start
            if keep < positions:
                rows, targets = _sample_positions(
                    rows, targets, first, positions, keep, options.seed
                )
            held_rows = _held_rows(len(rows), min(keep, positions), first, hold_out)
            fit.update(rows[~held_rows], targets[~held_rows])
            held.update(rows[held_rows], targets[held_rows])
        seen += len(x)
    return fit, held


def _refit(fit: LayerFit, model: onnx.ModelProto, fit_data: FitData) -> None:
    original, options = fit_data.original, fit_data.options
    source = next(n for n in original.graph.node if n.name == fit.name)
    node = next(n for n in model.graph.node if n.name == fit.name)
    target = source.output[0]
    original_units = output_units(source, weights_of(original))
    out_index = kept_output_index(fit.name, fit.outputs, original_units, fit_data.kept)
    layer = layer_for(model, node, out_index, target)
    w0, b0 = layer.current()
    if w0.shape[1] > options.max_features:
        raise Skip(f"{w0.shape[1]} inputs per output exceed the limit of {options.max_features}")
    fitting, held = (
        stats.moments() for stats in _accumulate(layer, node.input[0], target, fit_data)
    )
    ridge = options.ridge
    if ridge is None:
        ridge = choose_ridge(fitting, held, w0) if held.count and fitting.count else FALLBACK_RIDGE
    everything = fitting + held
    w, b = everything.solve(w0, ridge)
    if not (np.isfinite(w).all() and np.isfinite(b).all()):
        raise Skip("the least-squares solution is not finite")
    fit.error_before = everything.relative_error(w0, b0)
    fit.error_after = everything.relative_error(w, b)
    fit.ridge = ridge
    layer.write(w, b)
    fit.refit = True


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used |= {name for node in model.graph.node for name in _subgraph_names(node)}
    used |= {value.name for value in model.graph.output}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def reconstruct(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    data: DataLike,
    *,
    kept_outputs: Mapping[str, np.ndarray] | None = None,
    ridge: float | None = DEFAULT_RIDGE,
    batch_size: int = 64,
    device: str = "cpu",
    max_features: int = MAX_FEATURES,
    rows_per_input: int | None = ROWS_PER_INPUT,
    seed: int = 0,
) -> tuple[onnx.ModelProto, list[LayerFit]]:
    """Refit every layer of ``pruned`` that lost inputs, so its outputs on ``data`` match
    the same-named layer of ``original`` (pre-activation); layers in graph order.

    ``kept_outputs`` (layer -> original output channels kept; see ``kept_outputs()``) is
    needed for layers whose outputs were pruned too. Past MAX_SAMPLES samples an evenly
    spaced subset of ``data`` is used (each layer is a pass over it). A conv with more
    output positions than it needs uses ``rows_per_input`` x (its inputs) rows (at most
    MAX_ROWS), drawn at random per sample (None: every position). Returns a new model and
    one LayerFit per layer that lost inputs, with the reason where a layer was left as it
    was.
    """
    if ridge is not None and ridge < 0:
        raise ParameterError(f"ridge must be >= 0, got {ridge}")
    dataset = load_data(data, input_specs(original))
    model = onnx.ModelProto()
    model.CopyFrom(pruned)
    fits = find_consumers(original, model)
    dataset = dataset.spread(refit_samples(original, dataset, len(fits)))
    options = Options(
        ridge, dataset.batch_size(batch_size), device, max_features, rows_per_input, seed
    )
    fit_data = FitData(original, dataset, dict(kept_outputs or {}), options)
    with one_blas_thread():  # reproducible sums; onnxruntime keeps its own threads
        _refit_all(fits, model, fit_data)
    _drop_unused_initializers(model)
    return model, fits


def refit_samples(original: onnx.ModelProto, dataset: Dataset, layers: int) -> int:
    """How many D_var samples the refit streams: MAX_SAMPLES, fewer for big models (see
    REFIT_MACS), never below MIN_SAMPLES. From MACs, not timings, so runs are repeatable."""
    if len(dataset) <= MIN_SAMPLES or layers == 0:
        return len(dataset)
    macs = max(sum(layer_macs(original, next(dataset.batches(1))).values()), 1)
    affordable = int(REFIT_MACS / (layers * macs))
    return max(MIN_SAMPLES, min(MAX_SAMPLES, affordable))


def _refit_all(fits: list[LayerFit], model: onnx.ModelProto, fit_data: FitData) -> None:
    samples = len(fit_data.dataset)
    label = f"reconstructing {len(fits)} layers on {samples} D_var samples"
    for fit in progress.track(fits, label, total=len(fits)):
        try:
            _refit(fit, model, fit_data)
        except Skip as reason:
            fit.reason = str(reason)
        except Exception as error:  # noqa: BLE001 - one layer's refit never fails the run
            lines = str(error).strip().splitlines()
            fit.reason = f"refit failed: {type(error).__name__}: {lines[0] if lines else ''}"
