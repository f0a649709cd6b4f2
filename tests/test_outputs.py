"""Graph outputs (analyze.py, normalize.py): a tensor the user reads keeps every channel,
even mid-network; outputs keep their names; Identity aliases of outputs are removed in a
way onnxruntime's optimiser cannot trip over."""

from __future__ import annotations

import onnxruntime as ort
from builders import random_feeds
from checks import analysis_of, dead_exact, kept_sizes, prune_checked
from fuzz_graphs import Net, Tensor, apply_head, producer

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
