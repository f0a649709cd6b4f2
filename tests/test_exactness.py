"""Pruning exactly the dead channels must not change any output (DESIGN: exactness)."""

from __future__ import annotations

import numpy as np
import pytest
from builders import build, check, random_feeds, run
from dead import kill

from onnxprune.analyze import analyze
from onnxprune.pipeline import apply_masks
from onnxprune.verify import verify

TOPOLOGIES = [
    "vgg_like",
    "resnet_basic",
    "resnet_bottleneck",
    "mobilenet_v2_like",
    "densenet_like",
    "se_net",
    "inception_like",
    "squeezenet_fire",
    "flatten_gemm_head",
    "gap_gemm_head",
    "reshape_head",
    "efficient_se",
    "mlp",
    "conv1d_net",
    "conv_lstm",
    "dense_gru",
    "dense_rnn",
    "nhwc_style",
    "old_zoo_style",
]


@pytest.mark.parametrize("name", TOPOLOGIES)
@pytest.mark.parametrize("keep_bn", [False, True])
def test_pruning_dead_channels_keeps_outputs(name, keep_bn):
    model = build(name, keep_bn=keep_bn)
    feed = random_feeds(model, batch=4, seed=1)
    dead_model, masks, _ = kill(model, feed)
    assert masks, f"{name}: no prunable group found"

    # Re-analyse the dead model as a user would get it, prune exactly the dead channels.
    analysis = analyze(dead_model, feed)
    assert [g.size for g in analysis.groups] == [g.size for g in analyze(model, feed).groups]
    pruned = apply_masks(analysis, masks)
    verify(pruned, analysis.model, feed)
    check(pruned)

    expected = run(dead_model, feed)
    got = run(pruned, feed)
    for want, have in zip(expected, got, strict=True):
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5 * scale)

    # Exactly the chosen channels are gone, in every member of every group.
    after = {s.name: s.size for s in analyze(pruned, feed).cg.sources}
    for group in analysis.groups:
        mask = masks.get(group.index, np.ones(group.size, dtype=bool))
        for source in group.sources:
            assert after[source.name] == int(mask[group.channel_of[source.name]].sum())
