"""``--workers N``: D_var scored in N spawned processes, merged so exactly that the F
matrix, every moment, the scores and the pruned model's bytes equal one process's.

Each test that spawns workers pays ~2 s of process start-up, so there are three."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import check
from cli_runs import SAMPLES, invoke, mnist_workdir

import onnxprune
from onnxprune.errors import ParameterError
from onnxprune.importance import OCNNA, ODF2NNA, APoZ
from onnxprune.importance.base import ChannelAccumulator
from onnxprune.importance.odf2nna import MomentsAccumulator
from onnxprune.io import input_specs, load_data, load_model
from onnxprune.methods.ocnna import prune_scored, score_model
from onnxprune.observe import observe
from onnxprune.pipeline import prepare
from onnxprune.score import consumer_inputs
from onnxprune.shards import (
    ImageShard,
    NpySlice,
    check_workers,
    observe_sharded,
    shard_bounds,
    shard_data,
)

MODEL = SAMPLES / "mnist_cnn.onnx"


def mnist_x(count: int) -> np.ndarray:
    return np.load(SAMPLES / "mnist_dvar.npz")["x"][:count]


def every_kind_of_sink(analysis) -> tuple[dict, dict]:
    """Sinks holding every accumulator the built-in criteria and compensation use."""
    groups = analysis.prunable()
    criteria = {"f": OCNNA(), "streamed": OCNNA(keep_frobenius=False), "apoz": APoZ()}
    criteria["odf2nna"] = ODF2NNA()
    sinks: dict = {}
    accumulators: dict = {}
    for source in (s for g in groups for s in g.sources):
        axis = analysis.cg.layouts[source.watched].axis
        for kind, criterion in criteria.items():
            accumulator = criterion.accumulator(source.size)
            accumulators[kind, source.name] = accumulator
            sinks.setdefault(source.watched, (axis, []))[1].append(accumulator)
    for name, axis in consumer_inputs(analysis, groups).items():
        accumulators["means", name] = MomentsAccumulator(analysis.cg.layouts[name].size)
        sinks.setdefault(name, (axis, []))[1].append(accumulators["means", name])
    return sinks, accumulators


def test_shards_are_whole_batches_and_never_more_than_the_batches():
    assert shard_bounds(500, 64, 2) == [(0, 256), (256, 500)]
    assert shard_bounds(40, 8, 3) == [(0, 8), (8, 24), (24, 40)]
    assert shard_bounds(3, 1, 5) == [(0, 1), (1, 2), (2, 3)]  # 5 workers, 3 samples
    assert shard_bounds(2, 64, 4) == [(0, 2)]
    for samples, batch, workers in [(1000, 64, 7), (65, 64, 2), (10, 3, 10)]:
        bounds = shard_bounds(samples, batch, workers)
        assert bounds[0][0] == 0 and bounds[-1][1] == samples
        assert all(a % batch == 0 and a < b for a, b in bounds)
        assert all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:]))


def test_bad_worker_counts_are_one_line_errors():
    with pytest.raises(ParameterError, match="workers must be at least 1, got 0"):
        check_workers(0)
    with pytest.raises(ParameterError, match="--device cuda use --workers 1"):
        check_workers(2, "cuda")
    with pytest.raises(ParameterError, match="at least 1"):
        onnxprune.ocnna(MODEL, k=40, data=mnist_x(8), workers=-1)


def test_data_reaches_workers_as_file_slices_or_rows(tmp_path):
    specs = input_specs(load_model(MODEL))
    np.save(tmp_path / "x.npy", mnist_x(40))
    mapped = load_data(tmp_path / "x.npy", specs)
    part = shard_data(mapped, 8, 24)
    (npy,) = part.arrays.values()
    assert isinstance(npy, NpySlice) and len(pickle.dumps(part)) < 2000  # no rows copied
    assert isinstance(npy.rows(), np.memmap)
    whole = next(mapped.batches(40))["input"]
    np.testing.assert_array_equal(next(part.open().batches(16))["input"], whole[8:24])
    # a view of part of a file, or arrays in RAM: the rows themselves travel
    (rows,) = shard_data(mapped.subset(30), 8, 24).arrays.values()
    np.testing.assert_array_equal(rows, whole[8:24])

    pytest.importorskip("PIL")
    from PIL import Image

    for i, value in enumerate(mnist_x(6)[:, 0]):
        Image.fromarray(value.astype(np.uint8)).save(tmp_path / f"{i}.png")
    folder = load_data(tmp_path, specs)
    images = shard_data(folder, 2, 5)
    assert isinstance(images, ImageShard) and len(images.files) == 3
    decoded = pickle.loads(pickle.dumps(images)).open()
    np.testing.assert_array_equal(
        next(decoded.batches(8))["input"], next(folder.batches(8))["input"][2:5]
    )


def test_an_accumulator_that_cannot_merge_exactly_is_refused_before_any_process():
    class Custom(ChannelAccumulator):
        def update(self, activation):
            pass

        def scores(self):
            return np.zeros(1)

    _, analysis, dataset = prepare(MODEL, mnist_x(16))
    name = analysis.model.graph.node[0].output[0]
    with pytest.raises(ParameterError, match="Custom cannot be merged exactly"):
        observe_sharded(analysis.model, dataset, {name: (1, [Custom()])}, 8, workers=2)


def test_every_accumulator_merges_bit_for_bit_from_a_memory_mapped_file(tmp_path, capsys):
    np.save(tmp_path / "x.npy", mnist_x(40))
    _, analysis, dataset = prepare(MODEL, tmp_path / "x.npy")
    one, one_acc = every_kind_of_sink(analysis)
    many, many_acc = every_kind_of_sink(analysis)
    observe(analysis.model, dataset, one, batch_size=8)
    observe_sharded(analysis.model, dataset, many, batch_size=8, workers=3)  # 8 + 16 + 16
    assert "worker 3/3 done: samples 24-39" in capsys.readouterr().err
    for (kind, name), want in one_acc.items():
        got = many_acc[kind, name]
        if kind == "f":
            assert got.frobenius.shape == (40, want.num_channels)
            assert got.frobenius.tobytes() == want.frobenius.tobytes()
        if kind in ("means", "odf2nna"):
            assert got.count == want.count
            assert got.mean.tobytes() == want.mean.tobytes()
        assert got.scores().tobytes() == want.scores().tobytes(), (kind, name)


def test_two_workers_score_and_prune_byte_identically(capsys):
    x = mnist_x(64)
    options = {"batch_size": 16, "compensate": True}
    one = score_model(MODEL, x, workers=1, **options)
    two = score_model(MODEL, x, workers=2, **options)
    assert "worker 2/2 done: samples 32-63" in capsys.readouterr().err
    assert one.settings["workers"] == 1 and two.settings["workers"] == 2
    for index, scores in one.scores.items():
        assert two.scores[index].tobytes() == scores.tobytes()
    assert one.means is not None and two.means is not None
    assert all(two.means[name].tobytes() == mean.tobytes() for name, mean in one.means.items())
    for reconstruct in (False, None):  # None: the default, a least-squares refit
        a = prune_scored(one, 40, reconstruct=reconstruct)
        b = prune_scored(two, 40, reconstruct=reconstruct)
        assert all(np.array_equal(a.masks[i], b.masks[i]) for i in a.masks)
        assert a.model.SerializeToString() == b.model.SerializeToString()
        assert b.report["workers"] == 2
        check(b.model)


def test_more_workers_than_batches_use_fewer(capsys):
    model, report = onnxprune.ocnna(MODEL, k=40, data=mnist_x(2), workers=4, reconstruct=False)
    assert "using 1 worker(s), not 4" in capsys.readouterr().err
    assert report["workers"] == 1
    check(model)


def test_cli_workers_writes_the_same_valid_model_and_records_workers(tmp_path: Path):
    work = mnist_workdir(tmp_path, dvar=64, test=0)
    common = ["--k", 40, "--data", work / "dvar.npz", "--batch-size", 32, "--no-reconstruct"]
    for workers in (1, 2):
        out, report = work / f"w{workers}.onnx", work / f"w{workers}.json"
        args = [*common, "--workers", workers, "-o", out, "--report", report]
        result = invoke("ocnna", work / "model.onnx", *args)
        assert result.exit_code == 0, result.output
    pruned = onnx.load(str(work / "w2.onnx"))
    check(pruned)
    assert json.loads((work / "w2.json").read_text())["workers"] == 2
    assert (work / "w2.onnx").read_bytes() == (work / "w1.onnx").read_bytes()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--workers", "0"], "error: workers must be at least 1, got 0"),
        (["--workers", "2", "--device", "cuda"], "with --device cuda use --workers 1"),
    ],
)
def test_cli_bad_workers_is_one_line_exit_2_and_no_output(tmp_path: Path, extra, message):
    work = mnist_workdir(tmp_path, dvar=8, test=0)
    out = work / "out.onnx"
    result = invoke("ocnna", work / "model.onnx", "--data", work / "dvar.npz", "-o", out, *extra)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert message in result.output and not out.exists()


def test_ocnna_and_sweep_share_the_workers_option():
    import click

    from onnxprune.cli import main

    context = click.Context(main)
    sweep = main.get_command(context, "sweep").get_command(context, "ocnna")
    found = {
        (param.default, param.help)
        for command in (main.get_command(context, "ocnna"), sweep)
        for param in command.params
        if "--workers" in param.opts
    }
    assert len(found) == 1 and next(iter(found))[0] == 1
