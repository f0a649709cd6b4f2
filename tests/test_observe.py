"""Observation: exposed activations are the model's true values, with or without a memory
budget (passes over truncated graphs), errors in the scoring thread surface, and the
CUDA request falls back to the CPU with one notice."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import random_feeds

from onnxprune.analyze import analyze
from onnxprune.errors import DataError, ParameterError
from onnxprune.importance import OCNNA, get_criterion, pca95_frobenius
from onnxprune.importance.base import ChannelAccumulator
from onnxprune.importance.ocnna import FROBENIUS_BYTES, _pca95_chunk_torch, for_run
from onnxprune.io import Dataset, input_specs
from onnxprune.observe import (
    _graph_order,
    backward_slice,
    checked_session,
    observe,
    plan_passes,
    providers_for,
    session_with_outputs,
)
from onnxprune.score import consumer_inputs, score_sources

DISABLE_ALL = ort.GraphOptimizationLevel.ORT_DISABLE_ALL


class Recorder(ChannelAccumulator):
    """Keeps every batch it is fed, channel axis first, to compare with a direct run."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def update(self, activation: np.ndarray) -> None:
        self.batches.append(np.array(activation))

    def scores(self) -> np.ndarray:
        return np.zeros(0)

    @property
    def value(self) -> np.ndarray:
        return np.concatenate(self.batches)


def _setup(model: onnx.ModelProto, samples: int = 12):
    feed = random_feeds(model, batch=samples, seed=5)
    analysis = analyze(model, {k: v[:2] for k, v in feed.items()})
    watched = analysis.watched_axes(analysis.prunable())
    dataset = Dataset(feed, input_specs(analysis.model))
    return analysis, watched, dataset, feed


def _unoptimised(model: onnx.ModelProto, feed: dict, names: list[str]) -> dict[str, np.ndarray]:
    session = session_with_outputs(model, names, level=DISABLE_ALL)
    return dict(zip(names, session.run(names, feed)))


def _tight_budget(model: onnx.ModelProto, watched: Iterable[str], batch_size: int) -> float:
    """A budget (MB) that fits the largest watched tensor but not all of them at once."""
    watched = list(watched)
    one = _unoptimised(model, random_feeds(model, batch=1), watched)
    sizes = {name: value.nbytes for name, value in one.items()}
    budget = 2 * batch_size * max(sizes.values()) * 1.01 / 2**20
    assert len(plan_passes(_graph_order(model, watched), sizes, batch_size, budget)) > 1
    return budget


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenet_v2_like", "nhwc_style"])
@pytest.mark.parametrize("split", [False, True])
def test_observed_activations_equal_an_unoptimised_run(built_model, name, split):
    analysis, watched, dataset, feed = _setup(built_model(name))
    sinks = {tensor: (axis, [Recorder()]) for tensor, axis in watched.items()}
    budget = _tight_budget(analysis.model, watched, 5) if split else None
    observe(analysis.model, dataset, sinks, batch_size=5, memory_budget=budget)
    want = _unoptimised(analysis.model, feed, list(watched))
    for tensor, (axis, (recorder,)) in sinks.items():
        expected = np.moveaxis(want[tensor], axis, 1)
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(recorder.value, expected, rtol=1e-5, atol=1e-5 * scale)


def test_a_small_budget_splits_observation_into_several_passes(built_model):
    analysis, watched, dataset, _ = _setup(built_model("resnet_basic"))
    reference = _unoptimised(analysis.model, next(dataset.batches(1)), list(watched))
    sizes = {name: value.nbytes for name, value in reference.items()}
    total = sum(sizes.values())
    budget = 2 * 5 * total / 3 / 2**20  # two batches of 5: about a third of the tensors
    passes = plan_passes(list(watched), sizes, 5, budget)
    assert len(passes) >= 3
    assert [name for group in passes for name in group] == list(watched)
    for group in passes:
        assert 2 * 5 * sum(sizes[name] for name in group) <= budget * 2**20


def test_budget_below_one_tensor_is_a_parameter_error_naming_the_fix(built_model):
    analysis, watched, dataset, _ = _setup(built_model("vgg_like"))
    sinks = {tensor: (axis, [Recorder()]) for tensor, axis in watched.items()}
    with pytest.raises(ParameterError, match="--batch-size or raise --memory-budget"):
        observe(analysis.model, dataset, sinks, batch_size=4, memory_budget=1e-4)
    with pytest.raises(ParameterError, match="positive"):
        observe(analysis.model, dataset, sinks, batch_size=4, memory_budget=0)


def test_truncated_graph_stops_at_its_deepest_watched_tensor(built_model):
    analysis, watched, _, feed = _setup(built_model("vgg_like"))
    first = next(iter(watched))
    sliced = backward_slice(analysis.model, [first])
    onnx.checker.check_model(sliced, full_check=True)
    produced = {out for node in sliced.graph.node for out in node.output}
    assert first in produced
    assert len(sliced.graph.node) < len(analysis.model.graph.node)
    assert [value.name for value in sliced.graph.output] == [first]
    # nothing downstream of the watched tensor is computed
    downstream = {node.output[0] for node in analysis.model.graph.node if first in node.input}
    assert not downstream & produced
    got = _unoptimised(sliced, feed, [first])[first]
    np.testing.assert_array_equal(got, _unoptimised(analysis.model, feed, [first])[first])


def test_scores_do_not_depend_on_the_memory_budget(built_model):
    analysis, _, dataset, _ = _setup(built_model("densenet_like"), samples=16)
    groups = analysis.prunable()
    one, means = score_sources(analysis, groups, get_criterion("ocnna"), dataset, 8, "cpu", True)
    observed = {*analysis.watched_axes(groups), *consumer_inputs(analysis, groups)}
    budget = _tight_budget(analysis.model, observed, 8)
    split, split_means = score_sources(
        analysis, groups, get_criterion("ocnna"), dataset, 8, "cpu", True, memory_budget=budget
    )
    assert one.keys() == split.keys() and means.keys() == split_means.keys()
    for name in one:
        np.testing.assert_allclose(split[name], one[name], rtol=1e-4, atol=1e-7)
    for name in means:
        np.testing.assert_allclose(split_means[name], means[name], rtol=1e-5, atol=1e-6)


def test_nan_activations_raise_a_data_error_from_the_scoring_thread(built_model):
    analysis, watched, dataset, feed = _setup(built_model("vgg_like"))
    poisoned = {name: value.copy() for name, value in feed.items()}
    for value in poisoned.values():
        value[7] = np.nan  # a later batch: the error travels back from the worker thread
    bad = Dataset(poisoned, dataset.specs)
    sizes = {tensor: analysis.cg.layouts[tensor].size for tensor in watched}
    sinks = {t: (axis, [OCNNA().accumulator(sizes[t])]) for t, axis in watched.items()}
    with pytest.raises(DataError, match="NaN or infinity"):
        observe(analysis.model, bad, sinks, batch_size=4)


def test_optimised_session_is_replaced_when_it_disagrees_with_the_reference(built_model):
    analysis, watched, _, feed = _setup(built_model("vgg_like"))
    names = list(watched)
    probe = {k: v[:1] for k, v in feed.items()}
    truth = list(_unoptimised(analysis.model, probe, names).values())
    cpu = ["CPUExecutionProvider"]
    good = checked_session(analysis.model, names, probe, truth, cpu)
    level = ort.GraphOptimizationLevel
    assert good.get_session_options().graph_optimization_level == level.ORT_ENABLE_ALL
    wrong = [value + 1.0 for value in truth]  # what a broken optimiser would look like
    fallback = checked_session(analysis.model, names, probe, wrong, cpu)
    assert fallback.get_session_options().graph_optimization_level == DISABLE_ALL


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="a GPU is present"
)
def test_cuda_request_without_a_gpu_falls_back_to_cpu_with_one_notice(capsys):
    assert providers_for("cuda") == ["CPUExecutionProvider"]
    criterion = for_run(OCNNA(), "cuda", 10, 10)
    assert criterion.device in ("cpu", "cuda")
    err = capsys.readouterr().err.strip().splitlines()
    assert any("CUDA is not available to onnxruntime" in line for line in err)
    if criterion.device == "cpu":
        assert [line for line in err if "OCNNA spectra on the CPU" in line] == [
            "note: torch cannot use CUDA here; computing OCNNA spectra on the CPU"
        ]
    l1 = get_criterion("l1")
    assert for_run(l1, "cuda", 10, 10) is l1


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="a GPU is present"
)
def test_scoring_with_cuda_requested_says_so_once_and_scores_as_on_cpu(built_model, capsys):
    analysis, watched, dataset, _ = _setup(built_model("resnet_basic"))
    groups = analysis.prunable()
    budget = _tight_budget(analysis.model, watched, 6)  # several passes, one notice
    cpu, _ = score_sources(analysis, groups, OCNNA(), dataset, 6, "cpu", False, budget)
    capsys.readouterr()
    cuda, _ = score_sources(analysis, groups, OCNNA(), dataset, 6, "cuda", False, budget)
    err = capsys.readouterr().err
    assert err.count("CUDA is not available to onnxruntime") == 1
    for name in cpu:
        np.testing.assert_allclose(cuda[name], cpu[name], rtol=1e-5, atol=1e-7)


def test_torch_spectra_path_matches_the_numpy_one():
    # The GPU path's code, run by torch on the CPU: same maths in float32.
    pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    for shape in [(7, 7), (4, 9), (9, 3), (2, 5), (16, 16)]:
        maps = np.maximum(rng.standard_normal((30, *shape)), 0).astype(np.float32)
        maps[3] = 0.0
        maps[4] = 2.5  # constant: exactly 0 in both
        want = pca95_frobenius(maps)
        got = _pca95_chunk_torch(maps, "cpu")
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert got[3] == 0.0 and got[4] == 0.0
    with pytest.raises(DataError, match="NaN"):
        _pca95_chunk_torch(np.full((2, 3, 3), np.inf, dtype=np.float32), "cpu")


def test_large_runs_stream_f_into_moments_with_the_same_scores():
    rng = np.random.default_rng(4)
    act = np.maximum(rng.standard_normal((40, 5, 6, 6)), 0).astype(np.float32) * 3 + 1
    act[:, 1] = 0.0  # dead: scores exactly 0
    act[:, 2] = 2.0  # constant: F = 0 for every sample, scores exactly 0
    exact = OCNNA().accumulator(5)
    big = for_run(OCNNA(), "cpu", FROBENIUS_BYTES // 8 + 1, 1)
    assert not big.keep_frobenius and for_run(OCNNA(), "cpu", 1000, 100).keep_frobenius
    streamed = big.accumulator(5)
    for lo in range(0, 40, 7):
        exact.update(act[lo : lo + 7])
        streamed.update(act[lo : lo + 7])
    assert not streamed._parts  # O(channels) memory: no F rows kept
    np.testing.assert_allclose(streamed.scores(), exact.scores(), rtol=1e-12, atol=0)
    assert streamed.scores()[1] == 0.0 and streamed.scores()[2] == 0.0
    with pytest.raises(ValueError, match="streams F into moments"):
        _ = streamed.frobenius
    with pytest.raises(DataError, match="at least one"):
        big.accumulator(2).scores()
