"""The tf2onnx pattern without TensorFlow (tests/builders.nhwc_style): NHWC input, a
Transpose to NCHW, convs, a Transpose back and Reshape into MatMul + Add. One channel
maps to a strided set of MatMul rows (H, W, C order); the bias Add is sliced with the
units. tests/test_keras.py runs real Keras models through tf2onnx when it is installed."""

from __future__ import annotations

import numpy as np
from builders import build
from checks import analysis_of, dead_exact, kept_sizes, prune_checked


def test_nhwc_transpose_reshape_into_matmul_interleaves_channels():
    analysis = analysis_of("nhwc_style")
    matmul = next(n for n in analysis.cg.graph.nodes if n.op == "MatMul")
    layout = analysis.cg.layouts[matmul.inputs[0].name]
    conv = [s for s in analysis.cg.sources if s.kind == "conv"][-1]
    assert np.array_equal(layout.atoms, np.tile(conv.atoms, layout.size // conv.size))


def test_nhwc_graph_prunes_convs_and_dense_units_exactly():
    model = build("nhwc_style")
    analysis = analysis_of(model)
    assert [g.prunable for g in analysis.groups] == [True, True, True, False]
    pruned, _ = prune_checked(model, 50)
    sizes = kept_sizes(pruned)
    assert sorted(sizes.values()) == [4, 8, 10, 16]  # conv 8->4, conv 16->8, dense 32->16
    bias = next(n for n in pruned.graph.node if n.op_type == "Add")
    values = {i.name: i for i in pruned.graph.initializer}
    assert list(values[bias.input[1]].dims) == [16]
    dead_exact(model)
