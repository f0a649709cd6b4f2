"""Recurrent consumers (LSTM, GRU, RNN): the features they read can go, W loses exactly
those columns, the hidden units stay, and a removed constant feature is compensated
exactly through Wb."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from builders import build, check, random_feeds, run
from constant_channels import consumer_means, make_constant

import onnxprune
from onnxprune.analyze import analyze
from onnxprune.metrics import count_macs
from onnxprune.pipeline import apply_masks

# builder -> (recurrent op, index of the source feeding it)
RECURRENT = {"conv_lstm": ("LSTM", 0), "dense_gru": ("GRU", 0), "dense_rnn": ("RNN", 1)}


def _recurrent(model: onnx.ModelProto, op: str) -> tuple[onnx.NodeProto, dict]:
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return next(n for n in model.graph.node if n.op_type == op), weights


@pytest.mark.parametrize("name", sorted(RECURRENT))
def test_recurrent_input_loses_exactly_the_pruned_features(name):
    op, source_index = RECURRENT[name]
    model = build(name)
    feed = random_feeds(model, batch=16, seed=4)
    pruned, _ = onnxprune.ocnna(model, k=40, data=feed["input"])
    check(pruned)

    before, weights_before = _recurrent(model, op)
    after, weights_after = _recurrent(pruned, op)
    w_before, w_after = weights_before[before.input[1]], weights_after[after.input[1]]
    source = analyze(model, feed).cg.sources[source_index]
    kept = source.size - int(np.floor(0.4 * source.size))
    assert w_after.shape == (*w_before.shape[:2], kept)
    # The hidden units feed back through R: they are never pruned.
    assert weights_after[after.input[2]].shape == weights_before[before.input[2]].shape
    assert [o.name for o in pruned.graph.output] == [o.name for o in model.graph.output]


@pytest.mark.parametrize("name", sorted(RECURRENT))
def test_removing_constant_features_before_a_recurrent_layer_is_exact(name):
    op, source_index = RECURRENT[name]
    model = build(name)
    feed = random_feeds(model, batch=16, seed=3)
    analysis = analyze(model, feed)
    source = analysis.cg.sources[source_index]
    constant_model = make_constant(analysis.model, source.name, [1, 4], 0.7)

    analysis = analyze(constant_model, feed)
    group = analysis.group_of(source.name)
    mask = np.ones(group.size, dtype=bool)
    mask[group.channel_of[source.name][[1, 4]]] = False
    means = consumer_means(analysis, [group], feed)
    assert means, f"{op}'s input is not observed for compensation"

    expected = run(constant_model, feed)[0]
    compensated = apply_masks(analysis, {group.index: mask}, means)
    check(compensated)
    np.testing.assert_allclose(run(compensated, feed)[0], expected, rtol=1e-5, atol=1e-5)
    sliced_only = apply_masks(analysis, {group.index: mask})
    assert not np.allclose(run(sliced_only, feed)[0], expected, atol=1e-3)


def test_a_recurrent_layer_without_bias_gets_one_for_compensation():
    model = build("dense_gru")
    graph = gs.import_onnx(model)
    gru = next(n for n in graph.nodes if n.op == "GRU")
    gru.inputs[3] = gs.Variable.empty()  # B absent, sequence_lens and initial_h follow
    feed = random_feeds(model, batch=16, seed=5)
    no_bias = gs.export_onnx(graph)
    analysis = analyze(no_bias, feed)
    source = analysis.cg.sources[0]
    constant_model = make_constant(analysis.model, source.name, [2], 0.6)
    analysis = analyze(constant_model, feed)
    group = analysis.group_of(source.name)
    mask = np.ones(group.size, dtype=bool)
    mask[group.channel_of[source.name][[2]]] = False
    means = consumer_means(analysis, [group], feed)
    compensated = apply_masks(analysis, {group.index: mask}, means)
    check(compensated)
    assert _recurrent(compensated, "GRU")[0].input[3], "no bias was created"
    expected = run(constant_model, feed)[0]
    np.testing.assert_allclose(run(compensated, feed)[0], expected, rtol=1e-5, atol=1e-5)


def test_recurrent_macs_count_every_step():
    model = build("conv_lstm")  # Conv1d 4 -> 16 (k 5), LSTM 16 -> 12, Linear 12 -> 3; T = 20
    feed = random_feeds(model, batch=2)
    lstm = 20 * 4 * 12 * (16 + 12)  # every step: 4 gates x hidden over input + hidden
    assert count_macs(model, feed) == 20 * 16 * 4 * 5 + lstm + 12 * 3


def test_recurrent_layer_has_a_measured_report_row_without_refit():
    model = build("conv_lstm")
    feed = random_feeds(model, batch=32, seed=6)
    pruned, report = onnxprune.ocnna(model, k=40, data=feed["input"])
    (row,) = [r for r in report["recovery"] if r["op"] == "LSTM"]
    assert (row["inputs_kept"], row["inputs_total"], row["outputs"]) == (10, 16, 12)
    assert row["compensated"] and not row["refit"]
    assert row["reason"] == "LSTM layers are not refit"
    assert 0.0 < row["error_after"] < 1.0  # measured on D_var, not left empty


@pytest.mark.parametrize("name", sorted(RECURRENT))
def test_recurrent_model_distills_in_place(name):
    """--distill trains through torch's fused kernels and writes W, R, B back by name."""
    pytest.importorskip("torch")
    op, _ = RECURRENT[name]
    model = build(name)
    data = random_feeds(model, batch=128, seed=7)["input"]
    refit, _ = onnxprune.ocnna(model, k=40, data=data)
    distilled, report = onnxprune.ocnna(model, k=40, data=data, distill=3)
    check(distilled)
    assert [n.op_type for n in distilled.graph.node] == [n.op_type for n in refit.graph.node]
    losses = report["distill"]["loss"]
    assert report["distill"]["best_epoch"] > 0 and min(losses[1:]) < losses[0]
    before, weights_before = _recurrent(refit, op)
    after, weights_after = _recurrent(distilled, op)
    assert not np.array_equal(weights_after[after.input[1]], weights_before[before.input[1]])
