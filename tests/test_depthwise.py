"""Grouped convolutions (rules/producers.py): a depthwise conv (group == channels) passes
channels through, each input channel making ``multiplier`` outputs; any other grouping
is a barrier whose channels stay whole, with the reason in the report."""

from __future__ import annotations

import numpy as np
from builders import build, random_feeds
from checks import analysis_of, dead_exact, kept_sizes, prune_checked
from fuzz_graphs import Net, finish, producer

from onnxprune.analyze import analyze


def test_depthwise_conv_passes_channels_through():
    model = build("mobilenet_v2_like")
    analysis = analyze(model, random_feeds(model, 2))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    depthwise = [n for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert depthwise
    assert len([s for s in analysis.cg.sources if s.kind == "conv"]) == len(convs) - len(depthwise)


def test_grouped_conv_is_a_barrier_with_its_reason():
    frozen = analysis_of("grouped_conv_net").frozen()
    assert any("grouped Conv" in (g.frozen_reason or "") for g in frozen)


def depthwise_block(multiplier: int):
    """pointwise conv -> depthwise 3x3 (x multiplier) -> ReLU -> pointwise conv -> head."""
    net, x = Net.start(3, 8)
    expand = net.conv(x, 6, 1, 1, bias=True)
    depthwise = net.conv(net.act(expand, "Relu6"), 6 * multiplier, 3, 1, bias=True, group=6)
    model = finish(net, net.conv(net.act(depthwise, "Relu"), 4, 1, 1, bias=True))
    return model, producer(expand), producer(depthwise)


def test_depthwise_multiplier_repeats_each_channel():
    model, expand, depthwise = depthwise_block(multiplier=2)
    analysis = analysis_of(model)
    source = next(s for s in analysis.cg.sources if s.name == expand)
    node = next(n for n in analysis.cg.graph.nodes if n.name == depthwise)
    layout = analysis.cg.layouts[node.outputs[0].name]
    assert np.array_equal(layout.atoms, np.repeat(source.atoms, 2))
    assert depthwise not in {s.name for s in analysis.cg.sources}


def test_pruning_through_a_depthwise_conv_shrinks_its_groups():
    for multiplier in (1, 2):
        model, _, depthwise = depthwise_block(multiplier)
        pruned, _ = prune_checked(model, 50)
        node = next(n for n in pruned.graph.node if n.name == depthwise)
        group = next(a.i for a in node.attribute if a.name == "group")
        weight = next(i for i in pruned.graph.initializer if i.name == node.input[1])
        assert group == 3 and list(weight.dims[:2]) == [3 * multiplier, 1]
        dead_exact(model)


def test_depthwise_conv_on_the_model_input_is_frozen_not_broken():
    net, x = Net.start(3, 8)
    depthwise = net.conv(x, 3, 3, 1, bias=True, group=3)
    model = finish(net, net.conv(net.act(depthwise, "Relu"), 6, 3, 1, bias=True))
    analysis = analysis_of(model)
    assert "depthwise Conv" in analysis.group_of(producer(depthwise)).frozen_reason
    pruned, _ = prune_checked(model, 50)
    assert kept_sizes(pruned)[producer(depthwise)] == 3


def test_grouped_conv_between_prunable_convs_keeps_its_neighbours_prunable():
    net, x = Net.start(3, 8)
    first = net.act(net.conv(x, 8, 3, 1, bias=True), "Relu")
    grouped = net.conv(first, 8, 3, 1, bias=False, group=2)
    last = net.conv(net.act(grouped, "Relu"), 6, 1, 1, bias=True)
    model = finish(net, last)
    analysis = analysis_of(model)
    assert "grouped Conv" in analysis.group_of(producer(grouped)).frozen_reason
    assert analysis.group_of(producer(last)).prunable
    pruned, _ = prune_checked(model, 50)
    assert kept_sizes(pruned)[producer(last)] == 3
    dead_exact(model)
