"""Mean compensation: removing a channel that is constant over the data changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
from builders import build, check, random_feeds, run
from constant_channels import consumer_means, make_constant

from onnxprune.analyze import analyze
from onnxprune.pipeline import apply_masks


@pytest.mark.parametrize(
    "name,source_index", [("mlp", 0), ("mlp", 1), ("flatten_gemm_head", 0), ("nhwc_style", 1)]
)
def test_removing_constant_channels_with_compensation_is_exact(name, source_index):
    model = build(name)
    feed = random_feeds(model, batch=16, seed=3)
    source = analyze(model, feed).cg.sources[source_index]
    constant_model = make_constant(model, source.name, [1, 4], 0.7)
    analysis = analyze(constant_model, feed)
    group = analysis.group_of(source.name)
    mask = np.ones(group.size, dtype=bool)
    mask[group.channel_of[source.name][[1, 4]]] = False

    means = consumer_means(analysis, [group], feed)

    expected = run(constant_model, feed)[0]
    compensated = apply_masks(analysis, {group.index: mask}, means)
    check(compensated)
    np.testing.assert_allclose(run(compensated, feed)[0], expected, rtol=1e-5, atol=1e-5)
    sliced_only = apply_masks(analysis, {group.index: mask})
    assert not np.allclose(run(sliced_only, feed)[0], expected, atol=1e-3)
