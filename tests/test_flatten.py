"""Flatten/Reshape into a dense head (rules/reshape.py): the layout is found by pushing an
index tensor through the real reshape, so one channel maps to its H*W rows of the Gemm,
a global pool maps it to one row, and a reshape computed from Shape ops still follows."""

from __future__ import annotations

import numpy as np
import pytest
from builders import build
from checks import analysis_of, dead_exact, kept_sizes, prune_checked
from fuzz_graphs import Net, Tensor, finish, producer


def test_flatten_into_gemm_maps_each_channel_to_its_rows():
    analysis = analysis_of("flatten_gemm_head")
    gemm = next(n for n in analysis.cg.graph.nodes if n.op == "Gemm")
    layout = analysis.cg.layouts[gemm.inputs[0].name]
    conv = analysis.cg.sources[0]
    spatial = layout.size // conv.size
    assert np.array_equal(layout.atoms, np.repeat(conv.atoms, spatial))


@pytest.mark.parametrize("name", ["flatten_gemm_head", "gap_gemm_head", "reshape_head"])
def test_dense_heads_lose_the_rows_of_pruned_channels(name):
    model = build(name)
    analysis = analysis_of(model)
    conv = analysis.cg.sources[0]
    gemm = next(n for n in analysis.cg.graph.nodes if n.op == "Gemm")
    rows_per_channel = analysis.cg.layouts[gemm.inputs[0].name].size // conv.size
    pruned, report = prune_checked(model, 50)
    kept = next(layer["kept"] for layer in report["layers"] if layer["name"] == conv.name)
    assert kept == conv.size - conv.size // 2
    first = next(n for n in pruned.graph.node if n.op_type == "Gemm")
    weight = next(i for i in pruned.graph.initializer if i.name == first.input[1])
    trans_b = any(a.name == "transB" and a.i for a in first.attribute)
    assert weight.dims[1 if trans_b else 0] == kept * rows_per_channel
    dead_exact(model)


@pytest.mark.parametrize("head", ["flatten_gemm", "gap_gemm", "reduce_gemm"])
def test_a_single_channel_slice_flattened_into_a_gemm_is_not_a_barrier(head):
    """Regression (found by tests/test_fuzz.py): a one-channel tensor varies along no axis,
    so its Flatten was frozen as 'spreads channels over axes', freezing the conv it came
    from. It now keeps its one (never removed) channel on the flattened axis."""
    net, x = Net.start(2, 4)
    conv = net.conv(x, 4, 3, 1, bias=True)
    bounds = [net.const(n, np.array([v], np.int64)) for n, v in (("s", 2), ("e", 3), ("a", 1))]
    (one,) = net.node("Slice", [conv.name, *bounds])
    model = finish(net, Tensor(one, 1, 4, 4), head=head)
    analysis = analysis_of(model)
    assert not any("spreads" in (g.frozen_reason or "") for g in analysis.groups)
    assert analysis.group_of(producer(conv)).prunable
    pruned, _ = prune_checked(model, 75)
    assert kept_sizes(pruned)[producer(conv)] in (1, 2)  # 3 dropped, the sliced one restored
    dead_exact(model, pick=lambda size: [0, 1, 3][: size - 1])


def test_flatten_of_a_one_by_one_map_after_global_pooling():
    net, x = Net.start(3, 8)
    conv = net.act(net.conv(x, 6, 3, 1, bias=True), "Relu")
    (pooled,) = net.node("GlobalAveragePool", [conv.name])
    model = finish(net, Tensor(pooled, 6, 1, 1), head="flatten_gemm")
    analysis = analysis_of(model)
    gemm = next(n for n in analysis.cg.graph.nodes if n.op == "Gemm")
    assert analysis.cg.layouts[gemm.inputs[0].name].size == 6
    prune_checked(model, 50)
    dead_exact(model)
