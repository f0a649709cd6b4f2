"""Graph outputs (analyze.py, normalize.py): a tensor the user reads keeps every channel,
even mid-network; outputs keep their names; Identity aliases of outputs are removed in a
way onnxruntime's optimiser cannot trip over."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from builders import random_feeds, run
from checks import analysis_of, dead_exact, kept_sizes, prune_checked
from fuzz_graphs import Net, Tensor, apply_head, producer
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.analyze import analyze


def identity_output_before_pad_conv():
    """conv -> Pad -> conv -> head, the first conv also read through Identity -> output.

    Regression (found by tests/test_fuzz.py): normalising kept the Identity and its
    topological sort put it before the second Conv; onnxruntime 1.32's Identity
    elimination then renamed the tensor its Pad+Conv fusion still used, and the model
    failed to load ("Node input ... is not a graph input, initializer, or output").
    """
    net, x = Net.start(1, 4)
    first = net.conv(x, 4, 3, 1, bias=True)
    second = net.conv(net.conv(first, 4, 1, 1, bias=True), 4, 1, 1, bias=True)
    pads = net.const("pads", [0, 0, 1, 1, 0, 0, 1, 1])
    (padded,) = net.node("Pad", [second.name, pads])
    third = net.conv(Tensor(padded, 4, 6, 6), 4, 1, 1, bias=True)
    head, shape = apply_head(net, "gap_gemm", third, 2, hidden=False)
    (out,) = net.node("Identity", [head])
    (side,) = net.node("Identity", [second.name])
    model = net.model([(out, shape), (side, ["N", 4, 4, 4])])
    return model, producer(second)


def _loads_optimised(model) -> bool:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return True


def test_identity_aliased_output_survives_onnxruntime_optimisation():
    model, _ = identity_output_before_pad_conv()
    analysis = analyze(model, random_feeds(model, 1))
    assert not any(n.op == "Identity" for n in analysis.cg.graph.nodes)
    assert [o.name for o in analysis.model.graph.output] == [o.name for o in model.graph.output]
    assert _loads_optimised(analysis.model)
    pruned, _ = prune_checked(model, 50)
    assert _loads_optimised(pruned)


def test_an_intermediate_output_freezes_only_its_own_group():
    model, side = identity_output_before_pad_conv()
    analysis = analysis_of(model)
    assert "model output" in analysis.group_of(side).frozen_reason
    assert sum(g.prunable for g in analysis.groups) == 3
    pruned, report = prune_checked(model, 50)
    assert kept_sizes(pruned)[side] == 4
    frozen = {entry["group"] for entry in report["frozen"]}
    assert analysis.group_of(side).index in frozen
    dead_exact(model)


def sklearn_style_classifier():
    """x -> MatMul/Add/Relu -> MatMul/Add -> Softmax -> (ArgMax label, ZipMap probabilities):
    the interface skl2onnx gives an MLPClassifier: int64 labels first, then a sequence of
    {class: probability} maps (not a tensor)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((5, 8)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="hidden"),
        helper.make_node("Add", ["m1", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["m2"], name="out"),
        helper.make_node("Add", ["m2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
        helper.make_node(
            "ZipMap",
            ["probabilities"],
            ["output_probability"],
            domain="ai.onnx.ml",
            classlabels_int64s=[0, 1, 2],
        ),
    ]
    maps = helper.make_sequence_type_proto(
        helper.make_map_type_proto(
            TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, None)
        )
    )
    graph = helper.make_graph(
        nodes,
        "sklearn_style",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_value_info("output_probability", maps),
        ],
        inits,
    )
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def test_sequence_of_maps_output_and_label_output_survive_pruning():
    model = sklearn_style_classifier()
    x = np.random.default_rng(1).standard_normal((40, 5)).astype(np.float32)
    labels = run(model, {"x": x})[0]
    result = onnxprune.ocnna(model, 50, data=x, eval_data={"x": x, "y": labels})
    pruned = result.model
    onnx.checker.check_model(pruned, full_check=True)
    maps_type = pruned.graph.output[1].type.sequence_type.elem_type.map_type
    assert maps_type.key_type == TensorProto.INT64
    hidden = next(n for n in pruned.graph.node if n.name == "hidden")
    weights = {i.name: numpy_helper.to_array(i) for i in pruned.graph.initializer}
    assert weights[hidden.input[1]].shape == (5, 4)
    label, maps = ort.InferenceSession(pruned.SerializeToString()).run(None, {"x": x})
    assert label.shape == (40,) and len(maps) == 40 and sorted(maps[0]) == [0, 1, 2]
    # the labels output is read as predicted labels, not argmax'ed again
    assert result.report["accuracy_before"] == 1.0
    assert result.report["accuracy_after"] == float((label == labels).mean())
