"""Property-based fuzzing of the channel engine on random CNN DAGs (tests/fuzz_graphs.py).

Two properties, for any drawn graph:
- OCNNA at any k gives a model that passes onnx.checker, runs in onnxruntime and keeps the
  input/output names and shapes (or the model honestly has no prunable group);
- pruning exactly the channels made dead (tests/dead.py) leaves every output unchanged.

Runs are derandomized (the same examples every run, so CI is deterministic). To explore
new examples locally: ``ONNXPRUNE_FUZZ_EXAMPLES=500 [ONNXPRUNE_FUZZ_STEPS=16] pytest
tests/test_fuzz.py`` (random draws, deeper graphs).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from builders import check, random_feeds
from checks import dead_exact, prune_checked
from fuzz_graphs import architectures, build_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxprune.analyze import analyze
from onnxprune.errors import ModelError

EXPLORE = int(os.environ.get("ONNXPRUNE_FUZZ_EXAMPLES", "0"))
STEPS = int(os.environ.get("ONNXPRUNE_FUZZ_STEPS", "10"))


def fuzz_settings(examples: int) -> settings:
    """Derandomized with ``examples`` cases, or random with the explore count if set."""
    return settings(
        max_examples=EXPLORE or examples,
        derandomize=not EXPLORE,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@fuzz_settings(80)
@given(arch=architectures(max_steps=STEPS), k=st.integers(0, 95))
def test_ocnna_on_a_random_dag_gives_a_valid_model(arch, k):
    model = build_model(arch)
    try:
        _, report = prune_checked(model, k, samples=4, seed=arch["seed"])
    except ModelError as exc:  # allowed only when nothing at all can be pruned
        assert "no prunable channel group" in str(exc)
        assert not analyze(model, random_feeds(model, batch=1)).prunable()
        return
    for layer in report["layers"]:
        assert 1 <= layer["kept"] <= layer["total"], layer
    assert report["params_after"] <= report["params_before"]


@fuzz_settings(80)
@given(arch=architectures(True, STEPS), pick_seed=st.integers(0, 2**16))
def test_pruning_dead_channels_of_a_random_dag_keeps_outputs(arch, pick_seed):
    model = build_model(arch)
    if not analyze(model, random_feeds(model, batch=1)).prunable():
        return

    def pick(size: int) -> list[int]:
        rng = np.random.default_rng(pick_seed + size)
        return rng.choice(size, size=max(1, size // 3), replace=False).tolist()

    dead_exact(model, pick)


@pytest.mark.parametrize("zero_preserving", [False, True])
def test_the_generator_builds_checked_models(zero_preserving):
    """Every drawn architecture is a valid, runnable ONNX model before any pruning."""

    @settings(max_examples=20, derandomize=True, database=None, deadline=None)
    @given(arch=architectures(zero_preserving=zero_preserving))
    def build_and_run(arch):
        check(build_model(arch))

    build_and_run()
