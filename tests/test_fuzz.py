"""Property-based fuzzing of the channel engine on random CNN DAGs (tests/fuzz_graphs.py).

Two properties, for any drawn graph:
- OCNNA at any k gives a model that passes onnx.checker, runs in onnxruntime and keeps the
  input/output names and shapes (or the model honestly has no prunable group);
- pruning exactly the channels made dead (tests/dead.py) leaves every output unchanged.

Runs are derandomized (the same examples every run, so CI is deterministic). To explore
new examples locally: ``ONNXPRUNE_FUZZ_EXAMPLES=500 pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from builders import check, random_feeds, run
from dead import kill
from fuzz_graphs import architectures, build_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import onnxprune
from onnxprune.analyze import analyze
from onnxprune.errors import ModelError
from onnxprune.pipeline import apply_masks
from onnxprune.select import keep_nonempty
from onnxprune.verify import verify

EXPLORE = int(os.environ.get("ONNXPRUNE_FUZZ_EXAMPLES", "0"))


def fuzz_settings(examples: int) -> settings:
    """Derandomized with ``examples`` cases, or random with the explore count if set."""
    return settings(
        max_examples=EXPLORE or examples,
        derandomize=not EXPLORE,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _output_shapes(model, feed) -> list[tuple[int, ...]]:
    return [value.shape for value in run(model, feed)]


@fuzz_settings(30)
@given(arch=architectures(), k=st.integers(0, 95))
def test_ocnna_on_a_random_dag_gives_a_valid_model(arch, k):
    model = build_model(arch)
    data = random_feeds(model, batch=4, seed=arch["seed"])["input"]
    try:
        pruned, report = onnxprune.ocnna(model, k=k, data=data, batch_size=4)
    except ModelError as exc:  # allowed only when nothing at all can be pruned
        assert "no prunable channel group" in str(exc)
        assert not analyze(model, {"input": data[:1]}).prunable()
        return
    check(pruned, batch=3)
    assert [i.name for i in pruned.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in pruned.graph.output] == [o.name for o in model.graph.output]
    feed = random_feeds(model, batch=3, seed=7)
    assert _output_shapes(pruned, feed) == _output_shapes(model, feed)
    for layer in report["layers"]:
        assert 1 <= layer["kept"] <= layer["total"], layer
    assert report["params_after"] <= report["params_before"]


@fuzz_settings(30)
@given(arch=architectures(zero_preserving=True), pick_seed=st.integers(0, 2**16))
def test_pruning_dead_channels_of_a_random_dag_keeps_outputs(arch, pick_seed):
    model = build_model(arch)
    feed = random_feeds(model, batch=3, seed=1)

    def pick(size: int) -> list[int]:
        rng = np.random.default_rng(pick_seed + size)
        return rng.choice(size, size=max(1, size // 3), replace=False).tolist()

    dead_model, masks, before = kill(model, feed, pick)
    if not masks:
        return
    analysis = analyze(dead_model, feed)
    assert [g.size for g in analysis.groups] == [g.size for g in before.groups]
    scores = {i: np.zeros(mask.size) for i, mask in masks.items()}
    keep_nonempty(analysis.cg, analysis.groups, masks, scores)  # Split outputs keep one
    pruned = apply_masks(analysis, masks)
    verify(pruned, analysis.model, feed)
    check(pruned)
    for want, have in zip(run(dead_model, feed), run(pruned, feed), strict=True):
        scale = max(1e-6, float(np.abs(want).max()))
        np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("zero_preserving", [False, True])
def test_the_generator_builds_checked_models(zero_preserving):
    """Every drawn architecture is a valid, runnable ONNX model before any pruning."""

    @settings(max_examples=20, derandomize=True, database=None, deadline=None)
    @given(arch=architectures(zero_preserving=zero_preserving))
    def build_and_run(arch):
        check(build_model(arch))

    build_and_run()
