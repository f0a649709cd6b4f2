"""Grouped convolutions (rules/producers.py): a depthwise conv (group == channels) passes
channels through, each input channel making ``multiplier`` outputs; any other grouped conv
keeps its group count and loses equally many inputs and filters in every group (ResNeXt,
RegNet), or is frozen with the reason when no selection could keep it grouped."""

from __future__ import annotations

import numpy as np
from builders import build, random_feeds
from checks import analysis_of, dead_exact, kept_sizes, prune_checked
from fuzz_graphs import Net, finish, producer

from onnxprune.analyze import analyze
from onnxprune.errors import ParameterError
from onnxprune.pipeline import masks_for_removal
from onnxprune.select import keep_nonempty, threshold_mask


def test_depthwise_conv_passes_channels_through():
    model = build("mobilenet_v2_like")
    analysis = analyze(model, random_feeds(model, 2))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    depthwise = [n for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert depthwise
    assert len([s for s in analysis.cg.sources if s.kind == "conv"]) == len(convs) - len(depthwise)


def _attr(model, name: str, attribute: str) -> int:
    node = next(n for n in model.graph.node if n.name == name)
    return next(a.i for a in node.attribute if a.name == attribute)


def _weight_dims(model, name: str) -> list[int]:
    node = next(n for n in model.graph.node if n.name == name)
    return list(next(i for i in model.graph.initializer if i.name == node.input[1]).dims)


def test_grouped_conv_net_prunes_every_group_equally_and_exactly():
    model = build("grouped_conv_net")
    analysis = analysis_of(model)
    grouped = next(
        n for n in model.graph.node if n.op_type == "Conv" and _attr(model, n.name, "group") == 2
    )
    group = analysis.group_of(grouped.name)
    assert group.prunable and group.blocks is not None and group.blocks.shape == (2, 16)
    pruned, _ = prune_checked(model, 50)
    assert _attr(pruned, grouped.name, "group") == 2
    assert _weight_dims(pruned, grouped.name)[:2] == [16, 4]  # 8 inputs -> 4, 2 per group
    dead_exact(model)


def grouped_block(groups: int = 4):
    """conv 3->16 -> ReLU -> grouped 3x3 16->16 -> ReLU -> conv 16->16, plus the block's
    input: a ResNeXt bottleneck with a residual Add."""
    net, x = Net.start(3, 8)
    stem = net.act(net.conv(x, 16, 3, 1, bias=True), "Relu")
    reduce = net.conv(stem, 16, 1, 1, bias=True)
    grouped = net.conv(net.act(reduce, "Relu"), 16, 3, 1, bias=True, group=groups)
    expand = net.conv(net.act(grouped, "Relu"), 16, 1, 1, bias=True)
    out = net.act(net.binary("Add", expand, stem), "Relu")
    model = finish(net, net.conv(out, 5, 1, 1, bias=True))
    return model, producer(reduce), producer(grouped)


def test_resnext_block_keeps_its_groups_and_outputs_of_dead_channels():
    model, reduce, grouped = grouped_block(groups=4)
    analysis = analysis_of(model)
    for name in (reduce, grouped):
        assert analysis.group_of(name).blocks.shape == (4, 4)
    pruned, _ = prune_checked(model, 50)
    assert _attr(pruned, grouped, "group") == 4
    assert _weight_dims(pruned, grouped)[:2] == [8, 2]
    assert kept_sizes(pruned)[reduce] == 8
    dead_exact(model)


def test_uneven_removal_from_a_grouped_conv_is_refused():
    model, reduce, _ = grouped_block(groups=4)
    analysis = analysis_of(model)
    try:
        masks_for_removal(analysis, {reduce: [0, 1]})
    except ParameterError as error:
        assert "equally many channels from each of its 4 blocks of 4" in str(error)
    else:
        raise AssertionError("uneven removal was accepted")


def test_a_threshold_selection_is_evened_out_across_groups():
    model, reduce, _ = grouped_block(groups=4)
    analysis = analysis_of(model)
    group = analysis.group_of(reduce)
    scores = {group.index: np.arange(16, dtype=float)}
    masks = {group.index: threshold_mask(scores[group.index], 9.5)}  # keeps 10..15 only
    keep_nonempty(analysis.cg, analysis.groups, masks, scores)
    kept = [int(masks[group.index][row].sum()) for row in group.blocks]
    assert kept == [4, 4, 4, 4]  # the fullest block (12..15) keeps 4: every block does


def test_grouped_convs_splitting_a_tensor_differently_freeze_it():
    net, x = Net.start(3, 8)
    stem = net.conv(x, 12, 3, 1, bias=True)
    two = net.conv(net.act(stem, "Relu"), 6, 3, 1, bias=True, group=2)
    three = net.conv(net.act(stem, "Relu"), 6, 3, 1, bias=True, group=3)
    model = finish(
        net, net.conv(net.act(net.binary("Add", two, three), "Relu"), 4, 1, 1, bias=True)
    )
    analysis = analysis_of(model)
    for tensor in (stem, two):  # the conv outputs added together are split 2 and 3 ways too
        assert "unlike another grouped Conv" in analysis.group_of(producer(tensor)).frozen_reason
    prune_checked(model, 50)


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


def test_grouped_conv_between_prunable_convs_prunes_with_them():
    net, x = Net.start(3, 8)
    first = net.act(net.conv(x, 8, 3, 1, bias=True), "Relu")
    grouped = net.conv(first, 8, 3, 1, bias=False, group=2)
    last = net.conv(net.act(grouped, "Relu"), 6, 1, 1, bias=True)
    model = finish(net, last)
    analysis = analysis_of(model)
    assert analysis.group_of(producer(grouped)).prunable
    assert analysis.group_of(producer(last)).prunable
    pruned, _ = prune_checked(model, 50)
    assert kept_sizes(pruned)[producer(last)] == 3
    assert _weight_dims(pruned, producer(grouped))[:2] == [4, 2]
    dead_exact(model)
