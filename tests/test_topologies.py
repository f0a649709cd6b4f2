"""Every test topology prunes to a valid model at k = 10, 40, 75 with the exact per-layer
counts. Each coupling kind has its own file: test_residual.py (Add/Mul/Sum joins),
test_concat.py (Concat/Split/Slice), test_depthwise.py (grouped convs), test_flatten.py
(dense heads), test_decoder.py (ConvTranspose, Resize), test_reshape_shuffle.py,
test_nhwc.py and test_keras.py (tf2onnx), test_old_opsets.py (opset 9, model-zoo files),
test_outputs.py, test_zoo.py (torchvision) and test_fuzz.py (random DAGs)."""

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


def test_plain_conv_stack_has_one_group_per_layer_and_frozen_output():
    analysis = _analysis("vgg_like")
    assert [len(g.sources) for g in analysis.groups] == [1] * len(analysis.groups)
    assert [g.prunable for g in analysis.groups] == [True] * 5 + [False]
    assert "model output" in analysis.groups[-1].frozen_reason


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
            blocks = layer["equal_groups"]  # a grouped conv's groups drop alike
            width = layer["total"] // blocks
            expected_drop = blocks * min(int(np.floor(k * width / 100 + 1e-9)), width - 1)
            assert layer["kept"] == layer["total"] - expected_drop, layer
        else:
            assert layer["kept"] == layer["total"]
    assert report["params_after"] <= report["params_before"]
    onnx.checker.check_model(pruned, full_check=True)
