"""The two checks every topology test makes of a pruned model.

``prune_checked``: OCNNA at k gives a model that passes the full onnx.checker, runs in
onnxruntime, and keeps the input/output names and output shapes.
``dead_exact``: channels made exactly zero (tests/dead.py) are pruned and every output
stays equal to 1e-4 of its largest magnitude.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from builders import build, check, graph_inputs, random_feeds, run
from dead import kill

import onnxprune
from onnxprune.analyze import Analysis, analyze
from onnxprune.pipeline import apply_masks
from onnxprune.select import keep_nonempty
from onnxprune.verify import verify

RELATIVE = 1e-4


def interface(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """Names a user feeds and reads (initializers listed as inputs are not inputs)."""
    return [v.name for v in graph_inputs(model)], [v.name for v in model.graph.output]


def prune_checked(
    model: onnx.ModelProto, k: float, samples: int = 6, seed: int = 0, **options
) -> tuple[onnx.ModelProto, dict]:
    """OCNNA at ``k`` on random data, then the validity checks; returns (model, report)."""
    feed = random_feeds(model, batch=samples, seed=seed)
    batch = min(samples, _fixed_batch(model) or samples)
    data = next(iter(feed.values())) if len(feed) == 1 else feed
    pruned, report = onnxprune.ocnna(model, k=k, data=data, batch_size=batch, **options)
    check(pruned, batch=batch)
    assert interface(pruned) == interface(model)
    probe = random_feeds(model, batch=batch, seed=seed + 1)
    assert [v.shape for v in run(pruned, probe)] == [v.shape for v in run(model, probe)]
    return pruned, report


def _fixed_batch(model: onnx.ModelProto) -> int | None:
    dim = graph_inputs(model)[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else None


def dead_exact(
    model: onnx.ModelProto,
    pick: Callable[[int], list[int]] = lambda size: [0, size // 2],
    batch: int = 3,
) -> tuple[onnx.ModelProto, dict[int, np.ndarray], Analysis]:
    """Kill channels, prune exactly them, assert the outputs are unchanged.

    Returns (pruned model, keep masks, analysis of the dead model). Masks leave every
    Split/Slice output and every layer at least one channel, as a real selection does.
    """
    feed = random_feeds(model, batch=min(batch, _fixed_batch(model) or batch), seed=1)
    dead_model, masks, before = kill(model, feed, pick)
    assert masks, "nothing prunable to kill channels in"
    analysis = analyze(dead_model, feed)
    assert [g.size for g in analysis.groups] == [g.size for g in before.groups]
    keep_nonempty(
        analysis.cg, analysis.groups, masks, {i: np.zeros(m.size) for i, m in masks.items()}
    )
    pruned = apply_masks(analysis, masks)
    verify(pruned, analysis.model, feed)
    check(pruned, batch=len(next(iter(feed.values()))))
    for want, have in zip(run(dead_model, feed), run(pruned, feed), strict=True):
        scale = max(1e-6, float(np.abs(want).max()))
        np.testing.assert_allclose(have, want, rtol=RELATIVE, atol=RELATIVE * scale)
    return pruned, masks, analysis


def kept_sizes(pruned: onnx.ModelProto, sample_batch: int = 1) -> dict[str, int]:
    """Channel count of every source (conv / dense layer) of a model, by node name."""
    analysis = analyze(pruned, random_feeds(pruned, batch=sample_batch))
    return {source.name: source.size for source in analysis.cg.sources}


def analysis_of(model: str | onnx.ModelProto, **build_options) -> Analysis:
    """The channel analysis of a model, or of a test builder's model by name."""
    if isinstance(model, str):
        model = build(model, **build_options)
    return analyze(model, random_feeds(model, 2))


def coupled(analysis: Analysis) -> list:
    """Groups joining more than one source (residual sums, SE gates)."""
    return [g for g in analysis.groups if len(g.sources) > 1]
