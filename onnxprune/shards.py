"""``--workers N``: observe D_var in N local processes, one contiguous shard each, and
merge what they learn exactly.

What a criterion keeps is per sample (OCNNA's F rows: concatenated in shard order), an
integer count (APoZ: added), or running moments (compensation means, ODF2NNA, OCNNA's F
past FROBENIUS_BYTES) whose per-chunk updates a worker logs and the coordinator replays in
shard order (each accumulator's ``shard_twin`` / ``merge_shard``). Shards start on batch
boundaries, so every worker feeds onnxruntime the very batches one process would: the
merged state, the scores and the pruned model are bit-identical to ``workers=1``.
Processes are spawned (fork is unsafe under onnxruntime's threads) and each gets its share
of the cores, so N workers do not oversubscribe them.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import progress
from .errors import OnnxPruneError, ParameterError
from .images import ImageFolder, Transform
from .importance.base import ChannelAccumulator
from .io import Dataset, InputSpec
from .observe import Sinks, limit_threads, observe, scoring_threads


def check_workers(workers: int, device: str = "cpu") -> None:
    """Refuse a worker count below 1, and several workers on a GPU (they would share it)."""
    if workers < 1:
        raise ParameterError(f"workers must be at least 1, got {workers}")
    if workers > 1 and device != "cpu":
        raise ParameterError(
            f"--workers {workers} runs CPU processes; with --device {device} use --workers 1"
        )


def shard_bounds(samples: int, batch: int, workers: int) -> list[tuple[int, int]]:
    """[start, stop) sample ranges of whole batches, as even as the batches allow; never
    more shards than batches, so a large ``workers`` gets fewer."""
    batches = -(-samples // batch)
    count = max(1, min(workers, batches))
    edges = [min(samples, i * batches // count * batch) for i in range(count + 1)]
    return list(zip(edges, edges[1:]))


def workers_for(dataset: Dataset | None, batch_size: int, workers: int) -> int:
    """How many processes ``workers`` requested for ``dataset`` actually get."""
    if dataset is None:
        return 1
    return len(shard_bounds(len(dataset), dataset.batch_size(batch_size), workers))


@dataclass(frozen=True)
class NpySlice:
    """Rows of a .npy file: the worker memory-maps the file again, nothing is copied."""

    path: str
    start: int
    stop: int

    def rows(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r", allow_pickle=False)[self.start : self.stop]


@dataclass(frozen=True)
class ArrayShard:
    """A worker's samples from arrays: .npy slices to memory-map, else the rows themselves."""

    arrays: dict[str, NpySlice | np.ndarray]
    specs: list[InputSpec]

    def open(self) -> Dataset:
        opened = {k: a.rows() if isinstance(a, NpySlice) else a for k, a in self.arrays.items()}
        return Dataset(opened, self.specs)


@dataclass(frozen=True)
class ImageShard:
    """A worker's samples from an image folder: file names, decoded by the worker."""

    root: Path
    files: list[Path]
    classes: list[str]
    spec: InputSpec
    transform: Transform | None

    def open(self) -> Dataset:
        return ImageFolder(self.root, self.files, None, self.classes, self.spec, self.transform)


def _whole_npy(array: np.ndarray) -> str | None:
    """The .npy file ``array`` memory-maps from start to end (as io.py opens it), or None
    (a view of part of a file, or data in RAM: its rows are sent instead)."""
    if not isinstance(array, np.memmap) or not array.filename or not array.flags.c_contiguous:
        return None
    try:
        whole = np.load(array.filename, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    same = (whole.shape, whole.dtype, whole.offset) == (array.shape, array.dtype, array.offset)
    return str(array.filename) if same else None


def shard_data(dataset: Dataset, start: int, stop: int) -> ArrayShard | ImageShard:
    """Samples ``start:stop`` of ``dataset`` in the form a worker process rebuilds them from."""
    if isinstance(dataset, ImageFolder):
        files = dataset.files[start:stop]
        return ImageShard(dataset.root, files, dataset.classes, dataset.specs[0], dataset.transform)
    if type(dataset) is not Dataset:
        raise ParameterError(f"--workers cannot split a {type(dataset).__name__}: use --workers 1")
    arrays: dict[str, NpySlice | np.ndarray] = {}
    for spec in dataset.specs:
        array = dataset.arrays[spec.name]
        path = _whole_npy(array)
        arrays[spec.name] = NpySlice(path, start, stop) if path else np.asarray(array[start:stop])
    return ArrayShard(arrays, dataset.specs)


@dataclass(frozen=True)
class ShardJob:
    """Everything one worker needs, all picklable: the analysed model's bytes, its samples,
    empty twins of the coordinator's accumulators, and its share of threads and memory."""

    index: int
    start: int
    stop: int
    model: bytes
    data: ArrayShard | ImageShard
    sinks: dict[str, tuple[int, list[ChannelAccumulator]]]
    batch_size: int
    threads: int
    memory_budget: float | None


def observe_shard(job: ShardJob) -> tuple[int, dict, float]:
    """Worker process: observe one shard; returns (index, the filled sinks, seconds)."""
    start = time.perf_counter()
    progress.set_quiet(True)  # N processes' bars would interleave; the coordinator reports
    limit_threads(job.threads)
    model = onnx.load_model_from_string(job.model)
    dataset = job.data.open()
    observe(model, dataset, job.sinks, job.batch_size, "cpu", memory_budget=job.memory_budget)
    return job.index, job.sinks, time.perf_counter() - start


def _run(jobs: list[ShardJob], label: str) -> list[dict]:
    """Every job in its own spawned process; the filled sinks in shard order."""
    results: dict[int, dict] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(jobs), mp_context=context) as pool:
        futures = [pool.submit(observe_shard, job) for job in jobs]
        try:
            for future in progress.track(as_completed(futures), label, total=len(jobs)):
                index, sinks, seconds = future.result()
                results[index] = sinks
                job = jobs[index]
                progress.info(
                    f"worker {index + 1}/{len(jobs)} done: samples {job.start}-{job.stop - 1} "
                    f"in {seconds:.1f}s"
                )
        except BrokenProcessPool:
            raise OnnxPruneError(
                "a scoring worker process died (out of memory?): use fewer --workers"
            ) from None
        finally:
            for future in futures:
                future.cancel()
    return [results[index] for index in range(len(jobs))]


def observe_sharded(
    model: onnx.ModelProto,
    dataset: Dataset,
    sinks: Sinks,
    batch_size: int = 64,
    workers: int = 2,
    description: str = "observing activations",
    memory_budget: float | None = None,
) -> None:
    """``observe`` split over ``workers`` processes, leaving ``sinks`` exactly as one
    process would. ``memory_budget`` (MB) is shared: each worker gets an equal part."""
    check_workers(workers)
    batch = dataset.batch_size(batch_size)
    bounds = shard_bounds(len(dataset), batch, workers)
    if len(bounds) < workers:
        progress.info(
            f"note: {len(dataset)} samples make {len(bounds)} batch(es) of {batch}; "
            f"using {len(bounds)} worker(s), not {workers}"
        )
    if len(bounds) == 1 or not sinks:
        observe(model, dataset, sinks, batch_size, "cpu", description, memory_budget)
        return
    blanks = {name: (axis, [a.shard_twin() for a in accs]) for name, (axis, accs) in sinks.items()}
    payload = model.SerializeToString()
    threads = max(1, scoring_threads() // len(bounds))
    budget = None if memory_budget is None else memory_budget / len(bounds)
    jobs = [
        ShardJob(i, a, b, payload, shard_data(dataset, a, b), blanks, batch_size, threads, budget)
        for i, (a, b) in enumerate(bounds)
    ]
    label = f"{description}, {len(jobs)} workers x {threads} thread(s)"
    for filled in _run(jobs, label):
        for name, (_, parts) in filled.items():
            for target, part in zip(sinks[name][1], parts, strict=True):
                target.merge_shard(part)
