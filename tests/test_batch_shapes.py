"""Shape operands computed only to carry the batch size (Keras 3 / tf2onnx's Flatten,
``tf.shape(x)[0]``, ``torch.chunk``'s Slice bounds under a dynamic batch) are folded to
constants, so the conv channels behind them prune; values that follow the data are not."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from builders import export, run
from checks import analysis_of, dead_exact, prune_checked
from onnx import TensorProto, helper, numpy_helper
from torch import nn

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


class ChunkBlock(nn.Module):
    """YOLOv8's C2f pattern: conv -> chunk(2) -> a conv on one half -> concat -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.inner = nn.Conv2d(4, 4, 3, padding=1)
        self.fuse = nn.Conv2d(12, 6, 1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x))
        a, b = y.chunk(2, 1)
        y = torch.relu(self.fuse(torch.cat([a, b, torch.relu(self.inner(b))], 1)))
        return self.head(y.mean((2, 3)))


def test_chunk_bounds_from_a_dynamic_batch_fold_and_the_halves_prune_exactly():
    torch.manual_seed(0)
    model = export(ChunkBlock(), (1, 3, 8, 8))
    assert any(n.op_type == "Shape" for n in model.graph.node)  # bounds computed at run time
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert fold_batch_shapes(folded) > 0
    assert not any(n.op_type == "Shape" for n in folded.graph.node)
    analysis = analysis_of(model)
    (stem,) = [g for g in analysis.groups if g.size == 8]
    assert stem.prunable, stem.frozen_reason
    pruned, _ = prune_checked(model, k=50)
    weights = {i.name: numpy_helper.to_array(i) for i in pruned.graph.initializer}
    convs = [weights[n.input[1]].shape for n in pruned.graph.node if n.op_type == "Conv"]
    assert [shape[0] for shape in convs] == [4, 2, 3]
    dead_exact(model)


VALUE_BOUND = [  # ends = [max(x)]: follows the values
    helper.make_node("ReduceMax", ["x"], ["top"], keepdims=1),
    helper.make_node("Reshape", ["top", "one"], ["top1"]),
    helper.make_node("Cast", ["top1"], ["ends"], to=TensorProto.INT64),
]
NONZERO_BOUND = [  # ends = [count of non-zeros]: the shape of a data-shaped tensor
    helper.make_node("NonZero", ["x"], ["where"]),
    helper.make_node("Shape", ["where"], ["where_shape"]),
    helper.make_node("Slice", ["where_shape", "one", "two"], ["ends"]),
]


@pytest.mark.parametrize(
    ("bound", "width"), [(VALUE_BOUND, 3), (NONZERO_BOUND, 4)], ids=["value", "nonzero"]
)
def test_a_data_dependent_operand_is_not_folded(bound, width):
    """Slice bounds that follow the data must stay computed: probing with zeros would
    bake in one sample's value (0 here)."""
    nodes = [*bound, helper.make_node("Slice", ["x", "zero", "ends", "one"], ["y"])]
    inits = [
        numpy_helper.from_array(np.array([v], np.int64), name)
        for name, v in (("zero", 0), ("one", 1), ("two", 2))
    ]
    graph = helper.make_graph(
        nodes,
        "data_slice",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", None])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.array([[0, 1, 2, 3], [1, 1, 1, 0]], np.float32)
    assert run(model, {"x": x})[0].shape == (2, width)  # max(x) = 3; 6 non-zeros: all 4
    before = model.SerializeToString()
    assert fold_batch_shapes(model) == 0
    assert model.SerializeToString() == before
