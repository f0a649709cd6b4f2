"""Data movement that is not a flatten (rules/reshape.py): a channel shuffle
(Reshape -> Transpose -> Reshape) spreads channels over two axes and is frozen, never
broken; transposes to NHWC and back keep channels; Reshape targets are rewritten."""

from __future__ import annotations

import numpy as np
from checks import analysis_of, dead_exact, kept_sizes, prune_checked
from fuzz_graphs import Net, Tensor, finish, producer
from onnx import numpy_helper


def test_channel_shuffle_is_frozen_not_broken():
    analysis = analysis_of("channel_shuffle_net")
    assert any(g.prunable for g in analysis.groups)
    assert any("Reshape" in (g.frozen_reason or "") for g in analysis.frozen())


def shuffled(groups: int = 2):
    """conv -> channel shuffle -> conv -> head; returns the model and both conv names."""
    net, x = Net.start(3, 8)
    first = net.conv(x, 8, 3, 1, bias=True)
    split = net.reshape(first.name, [0, groups, 8 // groups, 8, 8])
    swapped = net.transpose(split, [0, 2, 1, 3, 4])
    back = Tensor(net.reshape(swapped, [0, 8, 8, 8]), 8, 8, 8)
    second = net.conv(net.act(back, "Relu"), 6, 3, 1, bias=True)
    return finish(net, second), producer(first), producer(second)


def test_pruning_around_a_channel_shuffle_keeps_it_whole():
    model, first, second = shuffled()
    analysis = analysis_of(model)
    assert "Reshape" in analysis.group_of(first).frozen_reason
    assert analysis.group_of(second).prunable
    pruned, _ = prune_checked(model, 50)
    sizes = kept_sizes(pruned)
    assert sizes[first] == 8 and sizes[second] == 3
    dead_exact(model)


def test_nhwc_round_trip_keeps_channels_on_their_axis():
    net, x = Net.start(3, 8)
    conv = net.conv(x, 6, 3, 1, bias=True)
    nhwc = net.transpose(conv.name, [0, 2, 3, 1])
    (relu,) = net.node("Relu", [nhwc])
    back = Tensor(net.transpose(relu, [0, 3, 1, 2]), 6, 8, 8)
    model = finish(net, net.conv(back, 4, 1, 1, bias=True))
    analysis = analysis_of(model)
    assert analysis.cg.layouts[nhwc].axis == 3
    assert np.array_equal(analysis.cg.layouts[back.name].atoms, analysis.cg.sources[0].atoms)
    pruned, _ = prune_checked(model, 50)
    assert kept_sizes(pruned)[producer(conv)] == 3
    dead_exact(model)


def test_explicit_reshape_targets_are_rewritten_for_the_kept_channels():
    """(N, C, H, W) -> (N, C, H*W) with a literal C, then back: both targets shrink."""
    net, x = Net.start(3, 4)
    conv = net.conv(x, 6, 3, 1, bias=True)
    flat = net.reshape(conv.name, [0, 6, 16])
    (relu,) = net.node("Relu", [flat])
    back = Tensor(net.reshape(relu, [-1, 6, 4, 4]), 6, 4, 4)
    model = finish(net, net.conv(back, 4, 1, 1, bias=True))
    pruned, _ = prune_checked(model, 50)
    values = {i.name: numpy_helper.to_array(i) for i in pruned.graph.initializer}
    targets = [values[n.input[1]].tolist() for n in pruned.graph.node if n.op_type == "Reshape"]
    assert targets == [[0, 3, 16], [-1, 3, 4, 4]]
    dead_exact(model)


def test_shuffling_a_duplicated_concat_does_not_crash_the_analysis():
    """Regression (found by tests/test_fuzz.py): Concat(x, x) makes a shuffle see one atom
    per position pair; after a second shuffle a one-atom tensor was put on a spatial axis
    and the next Flatten crashed the analysis (numpy broadcast error)."""
    net, x = Net.start(1, 4)
    stem = net.conv(x, 2, 3, 1, bias=True)
    joined = concat(net, stem, stem)
    mixed = shuffle(net, joined)
    sizes = net.const("split", np.array([2, 2], np.int64))
    _, right = net.node("Split", [mixed.name, sizes], outputs=2, axis=1)
    depthwise = net.conv(Tensor(right, 2, 4, 4), 2, 3, 1, bias=False, group=2)
    model = finish(net, shuffle(net, depthwise))
    analysis_of(model)
    for k in (0, 50, 90):
        prune_checked(model, k)


def test_pooling_a_channels_last_tensor_is_a_barrier():
    """Regression (found with the one above): MaxPool on an NHWC tensor pools over W and
    C; passing the layout through gave the pooled tensor a channel count it lacks."""
    net, x = Net.start(3, 8)
    conv = net.conv(x, 6, 3, 1, bias=True)
    nhwc = net.transpose(conv.name, [0, 2, 3, 1])
    (pooled,) = net.node("MaxPool", [nhwc], kernel_shape=[2, 2], strides=[2, 2])
    back = Tensor(net.transpose(pooled, [0, 3, 1, 2]), 3, 8, 4)
    model = finish(net, net.conv(back, 4, 1, 1, bias=True))
    analysis = analysis_of(model)
    assert "pools over the channel axis" in analysis.group_of(producer(conv)).frozen_reason
    prune_checked(model, 50)


def concat(net: Net, *parts: Tensor) -> Tensor:
    (y,) = net.node("Concat", [p.name for p in parts], axis=1)
    return Tensor(y, sum(p.c for p in parts), parts[0].h, parts[0].w)


def shuffle(net: Net, x: Tensor, groups: int = 2) -> Tensor:
    grouped = net.reshape(x.name, [0, groups, x.c // groups, x.h, x.w])
    swapped = net.transpose(grouped, [0, 2, 1, 3, 4])
    return Tensor(net.reshape(swapped, [0, x.c, x.h, x.w]), x.c, x.h, x.w)
