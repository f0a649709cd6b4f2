"""Real architectures: torchvision models (random weights, 64 px inputs; VGG needs 224 px)
exported by benchmarks/zoo.py. Every one must prune at k = 10, 40, 75 to a valid model
with the same interface, list each frozen group with its reason, keep >= 95% of the
conv parameters of the big four prunable, and prune dead channels exactly.

Needs torchvision (``zoo`` marker: skipped cleanly without it; run in /work/venv-zoo).
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from dead import kill

from onnxprune.analyze import analyze
from onnxprune.inspection import inspect
from onnxprune.methods.ocnna import Scored, prune_scored, score_model
from onnxprune.metrics import count_params
from onnxprune.pipeline import apply_masks
from onnxprune.verify import run, verify

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from zoo import ZOO, effective_input_size, export_torchvision  # noqa: E402

pytestmark = pytest.mark.zoo

INPUT_SIZE = 64
SAMPLES = 3
KS = (10, 40, 75)
COVERED = ("resnet50", "vgg16", "mobilenet_v2", "densenet121")
# Barriers each architecture is known to contain (besides the classifier output).
EXPECTED_BARRIERS = {
    "shufflenet_v2_x0_5": ("Reshape", "depthwise Conv"),  # depthwise after each shuffle
}
# Grouped (not depthwise) convs: pruned equally in every group, never frozen for it.
GROUPED = {"regnet_x_400mf"}
# Residual Adds and SE Muls couple layers into one group; plain/Concat nets never do.
COUPLED = {"resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"}
COUPLED |= {"regnet_x_400mf", "mnasnet0_5"}


def images(name: str, count: int, seed: int = 0) -> np.ndarray:
    side = effective_input_size(name, INPUT_SIZE)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, 3, side, side)).astype(np.float32)


@functools.lru_cache(maxsize=1)  # one model at a time: VGG's analysis holds ~1 GB
def scored(name: str) -> tuple[Scored, tuple, dict]:
    """Scores made once per model, its interface and its output shapes on a probe batch."""
    path = export_torchvision(name, input_size=INPUT_SIZE)
    original = onnx.load(str(path))
    shapes = {n: v.shape for n, v in run(original, {"input": images(name, 2, seed=5)}).items()}
    scores = score_model(str(path), images(name, SAMPLES), batch_size=SAMPLES)
    return scores, _interface(original), shapes


def _interface(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    weights = {t.name for t in model.graph.initializer}
    inputs = [v.name for v in model.graph.input if v.name not in weights]
    return inputs, [v.name for v in model.graph.output]


@pytest.mark.parametrize(("name", "k"), [(name, k) for name in ZOO for k in KS])
def test_zoo_model_prunes_to_a_valid_model(name, k):
    scores, interface, shapes = scored(name)
    pruned, report = prune_scored(scores, k, reconstruct=k == 40)  # the refit once per model

    onnx.checker.check_model(pruned, full_check=True)
    assert _interface(pruned) == interface
    got = run(pruned, {"input": images(name, 2, seed=5)})
    assert {n: v.shape for n, v in got.items()} == shapes
    assert all(np.isfinite(v).all() for v in got.values())

    analysis = scores.analysis
    listed = {entry["group"]: entry["reason"] for entry in report["frozen"]}
    assert set(listed) == {g.index for g in analysis.frozen()}
    assert all(reason for reason in listed.values())
    assert any("model output" in reason for reason in listed.values())
    coupled = [g for g in analysis.groups if len(g.sources) > 1]
    assert bool(coupled) == (name in COUPLED)
    assert all(g.prunable for g in coupled)
    for barrier in EXPECTED_BARRIERS.get(name, ()):
        assert any(barrier in reason for reason in listed.values()), (barrier, listed)

    assert not any("grouped Conv" in reason for reason in listed.values())
    evened = [row for row in report["layers"] if row["equal_groups"] > 1 and row["prunable"]]
    assert bool(evened) == (name in GROUPED)
    for layer in report["layers"]:
        width = layer["total"] // layer["equal_groups"]  # a grouped conv's groups drop alike
        drop = layer["equal_groups"] * min(math.floor(k * width / 100 + 1e-9), width - 1)
        if not layer["prunable"]:
            assert layer["kept"] == layer["total"], layer
        else:  # a Split/Slice output may get one channel back so it is never empty
            assert layer["total"] - drop <= layer["kept"] <= layer["total"], layer
    if k >= 40:
        assert report["params_after"] < report["params_before"]


# One of each op family the torch converter must train through: residual Adds, SE gates
# with HardSwish, channel shuffle, Concat branches, LayerNorm (ConvNeXt).
DISTILLED = ("resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "googlenet")
DISTILLED += ("convnext_tiny",)


@pytest.mark.parametrize("name", DISTILLED)
def test_zoo_model_distills_in_place(name):
    """--distill converts the pruned model to torch, trains it and writes the weights back:
    the graph is the refit one node for node, valid, and runs to the same shapes."""
    scores, interface, shapes = scored(name)
    refit, _ = prune_scored(scores, 40)
    distilled, report = prune_scored(scores, 40, distill=1)
    onnx.checker.check_model(distilled, full_check=True)
    assert _interface(distilled) == interface
    assert [(n.name, n.op_type) for n in distilled.graph.node] == [
        (n.name, n.op_type) for n in refit.graph.node
    ]
    got = run(distilled, {"input": images(name, 2, seed=5)})
    assert {n: v.shape for n, v in got.items()} == shapes
    assert all(np.isfinite(v).all() for v in got.values())
    assert report["distill"]["layers"] > 0 and len(report["distill"]["loss"]) == 2


@pytest.mark.parametrize("name", COVERED)
def test_big_architectures_keep_most_conv_parameters_prunable(name):
    path = export_torchvision(name, input_size=INPUT_SIZE)
    info = inspect(str(path), images(name, 1))
    ratio = info["conv_params_prunable_ratio"]
    assert ratio >= 0.95, f"{name}: only {100 * ratio:.1f}% of conv parameters prunable"
    assert info["prunable_groups"] >= len(info["groups"]) - 1


@pytest.mark.parametrize("name", ZOO)
def test_pruning_dead_channels_of_a_zoo_model_keeps_outputs(name):
    path = export_torchvision(name, input_size=INPUT_SIZE)
    feed = {"input": images(name, 2, seed=3)}
    dead_model, masks, _ = kill(onnx.load(str(path)), feed)
    assert masks, f"{name}: no prunable group to kill channels in"
    analysis = analyze(dead_model, feed)
    pruned = apply_masks(analysis, masks)
    verify(pruned, analysis.model, feed)
    assert count_params(pruned) < count_params(analysis.model)
    want, got = run(dead_model, feed), run(pruned, feed)
    for output, value in want.items():
        scale = float(np.abs(value).max())
        assert scale > 0
        assert float(np.abs(got[output] - value).max()) <= 1e-4 * scale, output
