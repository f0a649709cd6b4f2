"""Mean compensation: removing a channel that is constant over the data changes nothing."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from builders import build, check, random_feeds, run

from onnxprune.analyze import analyze
from onnxprune.pipeline import apply_masks
from onnxprune.score import consumer_inputs
from onnxprune.verify import run as run_named


def _make_constant(model, feed, source_index: int, channels: list[int], value: float):
    """Zero the producer's weights for ``channels`` and set their bias to ``value``."""
    analysis = analyze(model, feed)
    source = analysis.cg.sources[source_index]
    graph = gs.import_onnx(analysis.model)
    node = next(n for n in graph.nodes if n.name == source.name)
    weight = node.inputs[1].values.copy()
    bias = node.inputs[2].values.copy()
    axis = 0 if node.op == "Conv" or node.attrs.get("transB", 0) else 1
    index = [slice(None)] * weight.ndim
    index[axis] = channels
    weight[tuple(index)] = 0
    bias[channels] = value
    node.inputs[1] = gs.Constant(node.inputs[1].name + "_c", weight)
    node.inputs[2] = gs.Constant(node.inputs[2].name + "_c", bias)
    return gs.export_onnx(graph), source


@pytest.mark.parametrize(
    "name,source_index", [("mlp", 0), ("mlp", 1), ("flatten_gemm_head", 0), ("nhwc_style", 1)]
)
def test_removing_constant_channels_with_compensation_is_exact(name, source_index):
    model = build(name)
    feed = random_feeds(model, batch=16, seed=3)
    constant_model, source = _make_constant(model, feed, source_index, [1, 4], 0.7)
    analysis = analyze(constant_model, feed)
    group = analysis.group_of(source.name)
    mask = np.ones(group.size, dtype=bool)
    mask[group.channel_of[source.name][[1, 4]]] = False

    names = list(consumer_inputs(analysis, [group]))
    values = run_named(_exposed(analysis.model, names), feed)
    means = {n: _position_means(values[n], analysis.cg.layouts[n].axis) for n in names}

    expected = run(constant_model, feed)[0]
    compensated = apply_masks(analysis, {group.index: mask}, means)
    check(compensated)
    np.testing.assert_allclose(run(compensated, feed)[0], expected, rtol=1e-5, atol=1e-5)
    sliced_only = apply_masks(analysis, {group.index: mask})
    assert not np.allclose(run(sliced_only, feed)[0], expected, atol=1e-3)


def _position_means(value: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(value, axis, 1)
    return moved.reshape(moved.shape[0], moved.shape[1], -1).mean(axis=(0, 2))


def _exposed(model, names):
    from builders import expose

    return expose(model, names)
