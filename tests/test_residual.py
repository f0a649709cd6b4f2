"""Elementwise joins of two activations (residual Add, SE Mul, Sum): one group, pruned
together, channel i of every member removed at once (rules/elementwise.py)."""

from __future__ import annotations

import numpy as np
import pytest
from checks import analysis_of, coupled, dead_exact, kept_sizes, prune_checked
from fuzz_graphs import Net, Tensor, finish, producer


@pytest.mark.parametrize("name", ["resnet_basic", "resnet_bottleneck"])
def test_residual_add_couples_the_block_outputs(name):
    coupled_groups = coupled(analysis_of(name))
    assert coupled_groups and all(g.prunable for g in coupled_groups)
    for group in coupled_groups:  # every member maps channel i to the same group channel i
        for source in group.sources:
            assert np.array_equal(group.channel_of[source.name], np.arange(group.size))


@pytest.mark.parametrize("name", ["se_net", "efficient_se"])
def test_squeeze_excitation_mul_couples_gate_and_features(name):
    coupled_groups = coupled(analysis_of(name))
    assert coupled_groups and all(g.prunable for g in coupled_groups)


def three_branch_sum(op: str = "Sum"):
    """stem -> three 3x3 convs -> Sum (opset-9 zoo style) or chained Add -> conv -> head.

    Returns the model and the names of the three branch convs."""
    net, x = Net.start(3, 8)
    stem = net.act(net.conv(x, 6, 3, 1, bias=True), "Relu")
    branches = [net.conv(stem, 6, 3, 1, bias=True) for _ in range(3)]
    if op == "Sum":
        (joined,) = net.node("Sum", [b.name for b in branches])
        total = Tensor(joined, 6, 8, 8)
    else:
        total = net.binary("Add", net.binary("Add", branches[0], branches[1]), branches[2])
    model = finish(net, net.conv(net.act(total, "Relu"), 4, 1, 1, bias=True))
    return model, [producer(b) for b in branches]


@pytest.mark.parametrize("op", ["Sum", "Add"])
def test_three_branches_joined_shrink_together(op):
    model, branches = three_branch_sum(op)
    pruned, report = prune_checked(model, 50)
    groups = {layer["group"] for layer in report["layers"] if layer["name"] in branches}
    assert len(groups) == 1
    assert [layer["kept"] for layer in report["layers"] if layer["name"] in branches] == [3] * 3
    sizes = kept_sizes(pruned)
    assert [sizes[name] for name in branches] == [3, 3, 3]
    dead_exact(model)


def test_a_tensor_added_to_itself_and_squared_stays_one_group():
    net, x = Net.start(2, 8)
    y = net.conv(x, 6, 3, 1, bias=True)
    doubled = net.binary("Add", y, y)
    squared = net.binary("Mul", doubled, doubled)
    model = finish(net, net.conv(squared, 4, 1, 1, bias=False))
    pruned, _ = prune_checked(model, 50)
    assert kept_sizes(pruned)[producer(y)] == 3
    dead_exact(model)


def test_spatial_attention_map_broadcast_over_channels_is_not_a_barrier():
    """CBAM-style: a 1-channel sigmoid map multiplies every channel of the features."""
    net, x = Net.start(3, 8)
    conv = net.conv(x, 8, 3, 1, bias=True)
    features = net.act(conv, "Relu")
    attention = net.act(net.conv(features, 1, 3, 1, bias=True), "Sigmoid")
    gated = net.binary("Mul", features, attention)
    model = finish(net, net.conv(gated, 4, 1, 1, bias=True))
    _, report = prune_checked(model, 50)
    kept = {layer["name"]: layer["kept"] for layer in report["layers"]}
    assert kept[producer(conv)] == 4
    dead_exact(model)


def test_residual_with_an_untracked_skip_is_frozen_with_its_reason():
    """The skip carries the model input's channels: nothing may remove them."""
    net, x = Net.start(4, 8)
    branch = net.conv(x, 4, 3, 1, bias=True)
    model = finish(net, net.conv(net.binary("Add", x, branch), 4, 1, 1, bias=True))
    analysis = analysis_of(model)
    reasons = [g.frozen_reason or "" for g in analysis.groups]
    assert any("untracked" in reason for reason in reasons)
    prune_checked(model, 50)
