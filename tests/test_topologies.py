"""Channel groups per coupling kind, and valid pruned models for every test topology."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import BUILDERS, build, check, random_feeds

import onnxprune
from onnxprune.analyze import analyze


def _analysis(name, **kwargs):
    model = build(name, **kwargs)
    return analyze(model, random_feeds(model, 2))


def _coupled(analysis):
    return [g for g in analysis.groups if len(g.sources) > 1]


def test_plain_conv_stack_has_one_group_per_layer_and_frozen_output():
    analysis = _analysis("vgg_like")
    assert [len(g.sources) for g in analysis.groups] == [1] * len(analysis.groups)
    assert [g.prunable for g in analysis.groups] == [True] * 5 + [False]
    assert "model output" in analysis.groups[-1].frozen_reason


@pytest.mark.parametrize("name", ["resnet_basic", "resnet_bottleneck"])
def test_residual_add_couples_the_block_outputs(name):
    coupled = _coupled(_analysis(name))
    assert coupled and all(g.prunable for g in coupled)
    for group in coupled:  # every member maps channel i to the same group channel i
        for source in group.sources:
            assert np.array_equal(group.channel_of[source.name], np.arange(group.size))


def test_depthwise_conv_passes_channels_through():
    model = build("mobilenet_v2_like")
    analysis = analyze(model, random_feeds(model, 2))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    depthwise = [n for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert depthwise
    assert len([s for s in analysis.cg.sources if s.kind == "conv"]) == len(convs) - len(depthwise)


@pytest.mark.parametrize("name", ["se_net", "efficient_se"])
def test_squeeze_excitation_mul_couples_gate_and_features(name):
    coupled = _coupled(_analysis(name))
    assert coupled and all(g.prunable for g in coupled)


@pytest.mark.parametrize("name", ["densenet_like", "inception_like", "squeezenet_fire"])
def test_concat_keeps_each_producer_its_own_prunable_group(name):
    analysis = _analysis(name)
    assert not _coupled(analysis)
    assert all(g.prunable for g in analysis.groups[:-1])


def test_grouped_conv_is_a_barrier_with_its_reason():
    frozen = _analysis("grouped_conv_net").frozen()
    assert any("grouped Conv" in (g.frozen_reason or "") for g in frozen)


def test_channel_shuffle_is_frozen_not_broken():
    analysis = _analysis("channel_shuffle_net")
    assert any(g.prunable for g in analysis.groups)
    assert any("Reshape" in (g.frozen_reason or "") for g in analysis.frozen())


def test_flatten_into_gemm_maps_each_channel_to_its_rows():
    analysis = _analysis("flatten_gemm_head")
    gemm = next(n for n in analysis.cg.graph.nodes if n.op == "Gemm")
    layout = analysis.cg.layouts[gemm.inputs[0].name]
    conv = analysis.cg.sources[0]
    spatial = layout.size // conv.size
    assert np.array_equal(layout.atoms, np.repeat(conv.atoms, spatial))


def test_nhwc_transpose_reshape_into_matmul_interleaves_channels():
    analysis = _analysis("nhwc_style")
    matmul = next(n for n in analysis.cg.graph.nodes if n.op == "MatMul")
    layout = analysis.cg.layouts[matmul.inputs[0].name]
    conv = [s for s in analysis.cg.sources if s.kind == "conv"][-1]
    assert np.array_equal(layout.atoms, np.tile(conv.atoms, layout.size // conv.size))


def test_old_zoo_graph_normalises_constant_weights_and_sum():
    model = build("old_zoo_style")
    assert any(n.op_type == "Constant" for n in model.graph.node)
    analysis = analyze(model, random_feeds(model, 1))
    assert not any(n.op == "Constant" for n in analysis.cg.graph.nodes)
    assert _coupled(analysis), "the Sum of two branches must couple them"
    initializers = {i.name for i in analysis.model.graph.initializer}
    assert not initializers & {i.name for i in analysis.model.graph.input}


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("k", [10, 40, 75])
def test_every_topology_prunes_to_a_valid_model(name, k):
    model = build(name)
    feed = random_feeds(model, batch=8, seed=2)
    data = next(iter(feed.values())) if len(feed) == 1 else feed
    pruned, report = onnxprune.ocnna(model, k=k, data=data)
    outputs = check(pruned)
    assert [o.name for o in pruned.graph.output] == [o.name for o in model.graph.output]
    weights = {t.name for t in model.graph.initializer}
    assert [i.name for i in pruned.graph.input] == [
        i.name for i in model.graph.input if i.name not in weights
    ]
    assert (
        outputs[0].shape[1:]
        == tuple(d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim)[1:]
    )
    for layer in report["layers"]:
        if layer["prunable"]:
            expected_drop = min(int(np.floor(k * layer["total"] / 100 + 1e-9)), layer["total"] - 1)
            assert layer["kept"] == layer["total"] - expected_drop, layer
        else:
            assert layer["kept"] == layer["total"]
    assert report["params_after"] <= report["params_before"]
    onnx.checker.check_model(pruned, full_check=True)
