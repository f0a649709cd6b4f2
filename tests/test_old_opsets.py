"""Old opsets and model-zoo files (normalize.py): opset-9 graphs with ConstantOfShape or
Constant weights, initializers listed as inputs, unfused BatchNorm, Sum, LRN, fixed
batch 1. Includes the real CNNs shipped in the onnx package's backend test data
(``onnx/backend/test/data/light``: the model zoo's AlexNet, DenseNet-121, Inception v1/v2,
ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet-512 with ConstantOfShape weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import build, check, random_feeds, run
from checks import analysis_of, coupled, dead_exact, interface, prune_checked
from dead import kill
from onnx import helper, numpy_helper

import onnxprune
from onnxprune.analyze import analyze
from onnxprune.pipeline import apply_masks
from onnxprune.select import keep_nonempty, percentile_mask
from onnxprune.verify import verify

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
KS = (10, 40, 75)  # as the torchvision zoo
# Heavy ones (hundreds of MB of folded weights, or 500+ layers at 224 px) run with the
# zoo tests (venv-zoo) to keep the default run fast.
HEAVY = pytest.mark.zoo
LIGHT_MODELS = [
    "squeezenet",
    "inception_v1",
    "resnet50",
    "shufflenet",
    pytest.param("densenet121", marks=HEAVY),
    pytest.param("inception_v2", marks=HEAVY),
    pytest.param("bvlc_alexnet", marks=HEAVY),
    pytest.param("zfnet512", marks=HEAVY),
    pytest.param("vgg19", marks=HEAVY),
]
# What must be frozen (besides the output classifier), by model.
BARRIERS = {
    "inception_v1": ("LRN",),
    "bvlc_alexnet": ("LRN",),
    "zfnet512": ("LRN",),
    "shufflenet": ("grouped Conv",),
}


def test_old_zoo_graph_normalises_constant_weights_and_sum():
    model = build("old_zoo_style")
    assert any(n.op_type == "Constant" for n in model.graph.node)
    analysis = analyze(model, random_feeds(model, 1))
    assert not any(n.op == "Constant" for n in analysis.cg.graph.nodes)
    assert coupled(analysis), "the Sum of two branches must couple them"
    initializers = {i.name for i in analysis.model.graph.initializer}
    assert not initializers & {i.name for i in analysis.model.graph.input}


@pytest.mark.parametrize("opset", [9, 11])
@pytest.mark.parametrize("name", ["resnet_basic", "densenet_like", "mobilenet_v2_like"])
def test_torch_exports_at_old_opsets_prune_exactly(name, opset):
    model = build(name, opset=opset)
    assert model.opset_import[0].version == opset
    prune_checked(model, 40)
    dead_exact(model)


def randomized(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """The same graph with random weights and logits as output.

    Every light-model weight is 0.02, so all channels would be identical and no wrong
    slicing could show. Each ConstantOfShape now makes ones that a Mul scales by a random
    tensor (the quirk stays for normalisation to fold), and the final Softmax, which a
    random ResNet-50 saturates to one-hot, is dropped so outputs are comparable logits.
    """
    rng = np.random.default_rng(seed)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    shapes = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    readers = {name: (n.op_type, i) for n in graph.node for i, name in enumerate(n.input)}
    nodes = []
    for node in graph.node:
        if node.op_type == "Softmax" and node.output[0] == graph.output[0].name:
            graph.output[0].name = node.input[0]
            continue
        nodes.append(node)
        if node.op_type != "ConstantOfShape" or node.input[0] not in shapes:
            continue
        target = node.output[0]
        scale = _random_weight(rng, tuple(shapes[node.input[0]]), readers.get(target), target)
        node.output[0] = f"{target}__ones"
        node.attribute[0].t.CopyFrom(numpy_helper.from_array(np.ones(1, np.float32)))
        graph.initializer.append(scale)
        nodes.append(helper.make_node("Mul", [node.output[0], scale.name], [target]))
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def _random_weight(rng, shape, reader, name) -> onnx.TensorProto:
    """Fan-in scaled weights; BN scale/variance near 1 and small shifts elsewhere."""
    shape = tuple(int(d) for d in shape)
    if len(shape) >= 2:
        values = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    elif reader in (("BatchNormalization", 1), ("BatchNormalization", 4)):
        values = 0.5 + 0.5 * rng.random(shape)
    else:
        values = 0.1 * rng.standard_normal(shape)
    return numpy_helper.from_array(values.astype(np.float32), f"{name}__random")


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_model_zoo_file_prunes_validly_and_exactly(name):
    model = randomized(onnx.load(str(LIGHT / f"light_{name}.onnx")))
    assert model.opset_import[0].version == 9
    feed = random_feeds(model, batch=1, seed=0)
    dead_model, dead_masks, analysis = kill(model, feed)

    reasons = [g.frozen_reason or "" for g in analysis.frozen()]
    assert any("model output" in r for r in reasons)
    for barrier in BARRIERS.get(name, ()):
        assert any(barrier in reason for reason in reasons), (barrier, reasons)
    if name == "shufflenet":  # every 1x1 conv is grouped: nothing can be pruned
        assert not analysis.prunable()
        return

    rng = np.random.default_rng(0)
    scores = {g.index: rng.random(g.size) for g in analysis.prunable()}
    for k in KS:
        masks = {i: percentile_mask(s, k) for i, s in scores.items()}
        keep_nonempty(analysis.cg, analysis.groups, masks, scores)
        pruned = apply_masks(analysis, masks)
        verify(pruned, analysis.model, feed)
        assert interface(pruned) == interface(model)

    dead_analysis = analyze(dead_model, feed)
    pruned = apply_masks(dead_analysis, dead_masks)
    verify(pruned, dead_analysis.model, feed)
    for want, have in zip(run(dead_model, feed), run(pruned, feed), strict=True):
        scale = float(np.abs(want).max())
        assert float(np.abs(have - want).max()) <= 1e-4 * scale


@pytest.mark.parametrize("batch_size", [1, 64])
def test_ocnna_on_a_fixed_batch_model_with_several_samples(batch_size):
    """The model's batch dimension is fixed to 1: every pass (observation, verification,
    recovery, evaluation) feeds batches of exactly that size, whatever --batch-size says."""
    model = build("old_zoo_style")
    rng = np.random.default_rng(0)
    data = {
        "x": rng.standard_normal((4, 3, 32, 32)).astype(np.float32),
        "y": rng.integers(0, 10, 4),
    }
    result = onnxprune.ocnna(
        model, k=40, data=data["x"], eval_data=data, batch_size=batch_size, reconstruct=True
    )
    check(result.model, batch=1)
    assert result.report["samples"] == 4
    assert 0.0 <= result.report["accuracy_after"] <= 1.0
    assert result.report["params_after"] < result.report["params_before"]


def test_old_zoo_style_prunes_with_its_quirks():
    model = build("old_zoo_style")
    analysis = analysis_of(model)
    assert all(g.prunable for g in analysis.groups[:-1])
    pruned, report = prune_checked(model, 50)
    assert report["params_after"] < report["params_before"]
    dead_exact(model)
