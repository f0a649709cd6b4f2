"""Reshape targets computed only to carry the batch size (Keras 3 / tf2onnx's Flatten,
``tf.shape(x)[0]``) are folded to constants, so the conv channels behind them prune."""

from __future__ import annotations

import numpy as np
import onnx
from builders import run
from checks import analysis_of, dead_exact, prune_checked
from onnx import TensorProto, helper, numpy_helper

from onnxprune.batch_shapes import fold_batch_shapes


def computed_flatten(conv: bool = True, static: bool = True) -> onnx.ModelProto:
    """[Conv(4 -> 6) -> Relu ->] Reshape(x, Concat(Shape(x)[0:1], [rest])) -> MatMul."""
    rng = np.random.default_rng(0)
    channels = 6 if conv else 4
    dims = ["N", 4, 2, 2] if static else ["N", 4, "H", 2]
    nodes, inits = [], []
    flat_in = "x"
    if conv:
        nodes += [
            helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
        ]
        inits += [
            numpy_helper.from_array(rng.standard_normal((6, 4, 3, 3)).astype(np.float32), "cw"),
            numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "cb"),
        ]
        flat_in = "r"
    nodes += [
        helper.make_node("Shape", [flat_in], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", [flat_in, "target"], ["flat"], name="flatten/Reshape"),
        helper.make_node("MatMul", ["flat", "w"], ["y"], name="head"),
    ]
    inits += [
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([channels * 4], np.int64), "rest"),
        numpy_helper.from_array(rng.standard_normal((channels * 4, 3)).astype(np.float32), "w"),
    ]
    graph = helper.make_graph(
        nodes,
        "computed_flatten",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_batch_only_shape_folds_to_a_constant_with_the_same_outputs():
    model = computed_flatten(conv=False)
    x = np.random.default_rng(1).standard_normal((7, 4, 2, 2)).astype(np.float32)
    want = run(model, {"x": x})[0]
    assert fold_batch_shapes(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Reshape", "MatMul"]
    shapes = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert shapes[model.graph.node[0].input[1]].tolist() == [-1, 16]
    assert set(shapes) == {model.graph.node[0].input[1], "w"}
    np.testing.assert_allclose(run(model, {"x": x})[0], want, rtol=1e-6)


def test_other_dynamic_axes_or_a_fixed_batch_leave_the_model_as_it_is():
    dynamic = computed_flatten(static=False)
    fixed = computed_flatten()
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    for model in (dynamic, fixed):
        before = model.SerializeToString()
        assert fold_batch_shapes(model) == 0
        assert model.SerializeToString() == before


def test_conv_channels_behind_a_computed_flatten_are_prunable():
    model = computed_flatten()
    analysis = analysis_of(model)
    (group,) = [g for g in analysis.groups if g.size == 6]
    assert group.prunable, group.frozen_reason
    pruned, _ = prune_checked(model, k=50)
    weights = {i.name: numpy_helper.to_array(i) for i in pruned.graph.initializer}
    conv = next(n for n in pruned.graph.node if n.op_type == "Conv")
    head = next(n for n in pruned.graph.node if n.op_type == "MatMul")
    assert weights[conv.input[1]].shape[0] == 3  # floor(50% of 6) removed
    assert weights[head.input[1]].shape == (3 * 4, 3)  # each channel's 2 x 2 positions
    dead_exact(model)
