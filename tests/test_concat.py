"""Index-mapping joins and cuts on the channel axis (rules/indexing.py): Concat gives each
input a contiguous range of the output, Split/Slice cut ranges out; each producer keeps
its own group, and no layer or Split/Slice output is ever left without a channel."""

from __future__ import annotations

import numpy as np
import pytest
from checks import analysis_of, coupled, dead_exact, kept_sizes, prune_checked
from fuzz_graphs import Net, Tensor, finish, producer
from onnx import numpy_helper


@pytest.mark.parametrize("name", ["densenet_like", "inception_like", "squeezenet_fire"])
def test_concat_keeps_each_producer_its_own_prunable_group(name):
    analysis = analysis_of(name)
    assert not coupled(analysis)
    assert all(g.prunable for g in analysis.groups[:-1])


def concat(net: Net, *parts: Tensor) -> Tensor:
    (y,) = net.node("Concat", [p.name for p in parts], axis=1)
    return Tensor(y, sum(p.c for p in parts), parts[0].h, parts[0].w)


def test_concat_of_a_tensor_with_itself_repeats_its_channels():
    net, x = Net.start(3, 8)
    conv = net.conv(x, 4, 3, 1, bias=True)
    model = finish(net, net.conv(concat(net, conv, conv), 5, 1, 1, bias=True))
    analysis = analysis_of(model)
    source = analysis.cg.sources[0]
    reader = analysis.cg.layouts[concat_output(model)]
    assert np.array_equal(reader.atoms, np.tile(source.atoms, 2))
    pruned, _ = prune_checked(model, 50)
    assert kept_sizes(pruned)[producer(conv)] == 2
    dead_exact(model)


def concat_output(model) -> str:
    return next(n.output[0] for n in model.graph.node if n.op_type == "Concat")


def test_concat_with_the_model_input_freezes_only_the_input_channels():
    net, x = Net.start(3, 8)
    conv = net.conv(x, 6, 3, 1, bias=True)
    model = finish(net, net.conv(concat(net, x, conv), 4, 3, 1, bias=True))
    analysis = analysis_of(model)
    assert analysis.group_of(producer(conv)).prunable
    pruned, _ = prune_checked(model, 50)
    assert kept_sizes(pruned)[producer(conv)] == 3
    dead_exact(model)


def test_split_branches_and_concat_rewrite_the_split_sizes():
    net, x = Net.start(3, 8)
    stem = net.conv(x, 8, 3, 1, bias=True)
    sizes = net.const("split", np.array([3, 5], np.int64))
    left, right = net.node("Split", [stem.name, sizes], outputs=2, axis=1)
    branch = net.act(net.conv(Tensor(right, 5, 8, 8), 5, 3, 1, bias=True), "Relu")
    model = finish(net, concat(net, Tensor(left, 3, 8, 8), branch))
    pruned, _ = prune_checked(model, 50)
    split = next(n for n in pruned.graph.node if n.op_type == "Split")
    values = {i.name: numpy_helper.to_array(i) for i in pruned.graph.initializer}
    sizes = values[split.input[1]].tolist()
    assert sum(sizes) == 4 and min(sizes) >= 1  # 8 -> 4 channels, both outputs non-empty
    dead_exact(model)


@pytest.mark.parametrize("k", [40, 90])
def test_channel_slices_keep_at_least_one_channel(k):
    net, x = Net.start(3, 8)
    stem = net.conv(x, 6, 3, 1, bias=True)
    bounds = [net.const(n, np.array([v], np.int64)) for n, v in (("s", 4), ("e", 5), ("a", 1))]
    (one,) = net.node("Slice", [stem.name, *bounds])
    model = finish(net, net.conv(concat(net, Tensor(one, 1, 8, 8), stem), 4, 1, 1, bias=True))
    pruned, report = prune_checked(model, k)
    assert all(layer["kept"] >= 1 for layer in report["layers"])
    dead_exact(model, pick=lambda size: list(range(size - 1)))


def test_concat_members_coupled_by_a_residual_never_lose_every_filter():
    """Regression (found by tests/test_fuzz.py): Concat(a, b) + residual makes a, b and the
    residual conv one group; dropping its 3 lowest channels took all of b's filters, a
    Conv with zero outputs. Every source now keeps at least one channel."""
    net, x = Net.start(1, 4)
    a = net.conv(x, 2, 1, 1, bias=True)
    b = net.conv(a, 2, 1, 1, bias=True)
    joined = concat(net, a, b)
    c = net.conv(joined, 4, 3, 1, bias=False)
    model = finish(net, net.binary("Add", joined, net.act(net.bn(c), "Relu")))
    group = analysis_of(model).group_of(producer(b))
    assert {s.name for s in group.sources} == {producer(a), producer(b), producer(c)}
    for k in (75, 90):
        pruned, report = prune_checked(model, k)
        kept = {layer["name"]: layer["kept"] for layer in report["layers"]}
        assert kept[producer(a)] == kept[producer(b)] == 1
        assert min(kept_sizes(pruned).values()) >= 1
