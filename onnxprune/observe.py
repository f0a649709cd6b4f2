"""Stage `observe`: stream the data through onnxruntime with watched tensors exposed.

Each batch's watched activations go straight to their accumulators and are dropped, so
memory holds at most two batches of activations (one being scored while onnxruntime
computes the next), never the whole dataset's. When exposing every watched tensor of a
batch would exceed a memory budget, the tensors are split into passes, each over a graph
truncated after its deepest watched tensor.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import onnx
import onnxruntime as ort

from . import progress
from .errors import ParameterError
from .importance.base import ChannelAccumulator
from .io import Dataset

Sinks = Mapping[str, tuple[int, Sequence[ChannelAccumulator]]]

#: Batches of exposed activations alive at once: one scored while the next is computed.
IN_FLIGHT = 2

#: An optimised session must reproduce the unoptimised CPU one to this fraction of each
#: tensor's largest magnitude: float32 roundoff of reordered kernels is ~1e-6 on the CPU,
#: TF32 convolutions on a GPU ~1e-3; a broken optimisation is off by O(1).
SELF_CHECK_TOLERANCE = {"CPUExecutionProvider": 1e-3, "CUDAExecutionProvider": 1e-2}


#: Threads this process may use (onnxruntime intra-op and scoring lanes); None: one per
#: core. A shard worker gets its share of the cores (shards.py), so workers do not
#: each start a pool per core and oversubscribe the machine.
_thread_limit: dict[str, int | None] = {"threads": None}


def limit_threads(threads: int | None) -> None:
    """Cap this process's onnxruntime and scoring threads (None: one per core)."""
    _thread_limit["threads"] = threads


def providers_for(device: str) -> list[str]:
    """onnxruntime providers for ``device``; says so once when CUDA is not available."""
    if device == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        progress.info("note: CUDA is not available to onnxruntime; running on the CPU")
    return ["CPUExecutionProvider"]


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the named intermediate tensors."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {value.name for value in exposed.graph.output}
    types = {v.name: v.type for v in (*exposed.graph.value_info, *exposed.graph.output)}
    for name in names:
        if name in present:
            continue
        value = exposed.graph.output.add()
        value.name = name
        if name in types:
            value.type.tensor_type.elem_type = types[name].tensor_type.elem_type
    return exposed


def session_with_outputs(
    model: onnx.ModelProto,
    names: Sequence[str],
    device: str = "cpu",
    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    providers: list[str] | None = None,
    spin: bool = True,
) -> ort.InferenceSession:
    """A session that also returns the named intermediate tensors."""
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    if _thread_limit["threads"] is not None:
        options.intra_op_num_threads = _thread_limit["threads"]
    if not spin:  # idle onnxruntime threads would busy-wait on the cores scoring needs
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        with_outputs(model, names).SerializeToString(),
        options,
        providers=providers or providers_for(device),
    )


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Every tensor name read inside a node's subgraphs (If/Loop/Scan bodies)."""
    reads: set[str] = set()
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
        for graph in graphs:
            for inner in graph.node:
                reads.update(name for name in inner.input if name)
                reads |= _subgraph_reads(inner)
    return reads


def backward_slice(model: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """The model truncated to the nodes ``outputs`` depend on; those become its outputs.

    Every graph input is kept (feeds stay valid); unused initializers are dropped.
    """
    graph = model.graph
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output}
    needed: set[int] = set()
    seen: set[str] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        index = producer.get(name)
        if index is None or index in needed:
            continue
        needed.add(index)
        node = graph.node[index]
        stack.extend(name for name in node.input if name)
        stack.extend(_subgraph_reads(node))
    sliced = onnx.ModelProto()
    sliced.CopyFrom(model)  # keeps opsets, functions, metadata
    del sliced.graph.node[:], sliced.graph.initializer[:], sliced.graph.output[:]
    sliced.graph.node.extend(node for i, node in enumerate(graph.node) if i in needed)
    sliced.graph.initializer.extend(t for t in graph.initializer if t.name in seen)
    types = {value.name: value.type for value in (*graph.value_info, *graph.output)}
    del sliced.graph.value_info[:]
    sliced.graph.value_info.extend(
        value for value in graph.value_info if value.name in seen and value.name not in outputs
    )
    for name in outputs:  # full types where known, so the slice is a valid model
        value = sliced.graph.output.add()
        value.name = name
        if name in types:
            value.type.CopyFrom(types[name])
    return sliced


def plan_passes(
    names: Sequence[str], bytes_per_sample: Mapping[str, int], batch_size: int, budget_mb: float
) -> list[list[str]]:
    """Split watched tensors (in graph order) into passes whose in-flight batches fit."""
    limit = budget_mb * 2**20 / (IN_FLIGHT * batch_size)  # bytes per sample and pass
    passes: list[list[str]] = []
    used = 0.0
    for name in names:
        size = bytes_per_sample[name]
        if size > limit:
            mb = size * IN_FLIGHT * batch_size / 2**20
            raise ParameterError(
                f"memory budget {budget_mb:g} MB is below {IN_FLIGHT} batches of tensor "
                f"'{name}' ({mb:.3g} MB at batch size {batch_size}): lower --batch-size "
                "or raise --memory-budget"
            )
        if not passes or used + size > limit:
            passes.append([])
            used = 0.0
        passes[-1].append(name)
        used += size
    return passes


def _graph_order(model: onnx.ModelProto, names: Sequence[str]) -> list[str]:
    """``names`` sorted by the position of their producer (graph inputs first)."""
    position = {out: i for i, node in enumerate(model.graph.node) for out in node.output}
    return sorted(names, key=lambda name: position.get(name, -1))


def _agrees(got: Sequence[np.ndarray], want: Sequence[np.ndarray], tolerance: float) -> bool:
    for a, b in zip(got, want):
        if a.shape != b.shape:
            return False
        scale = float(np.abs(b).max()) if b.size else 0.0
        if b.size and not np.allclose(a, b, rtol=0, atol=tolerance * scale + 1e-30):
            return False
    return True


def checked_session(
    model: onnx.ModelProto,
    names: Sequence[str],
    probe: dict[str, np.ndarray],
    reference: Sequence[np.ndarray],
    providers: list[str],
) -> ort.InferenceSession:
    """A fully optimised session, kept only if its exposed values match ``reference``.

    ORT_ENABLE_ALL (NCHWc layouts, fusions) runs ~2x faster than lower levels, and
    optimisers are meant to leave graph outputs intact; this one-sample self-check keeps
    a regression in them from silently corrupting scores (fallback: no optimisation).
    """
    level = ort.GraphOptimizationLevel
    session = session_with_outputs(model, names, "cpu", level.ORT_ENABLE_ALL, providers, False)
    tolerance = SELF_CHECK_TOLERANCE.get(providers[0], 1e-2)
    if _agrees(session.run(list(names), probe), reference, tolerance):
        return session
    progress.info("note: optimised onnxruntime graph changed watched values; not optimising")
    return session_with_outputs(model, names, "cpu", level.ORT_DISABLE_ALL, providers, False)


def _feed_sinks(sinks: Sinks, names: Sequence[str], values: Sequence[np.ndarray]) -> None:
    for name, value in zip(names, values):
        axis, accumulators = sinks[name]
        activation = np.moveaxis(value, axis, 1) if axis != 1 else value
        for accumulator in accumulators:
            accumulator.update(activation)


def scoring_threads() -> int:
    """Threads that score while onnxruntime runs: one per core this process may use."""
    if _thread_limit["threads"] is not None:
        return _thread_limit["threads"]
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def balance(costs: Mapping[str, float], lanes: int) -> list[list[str]]:
    """Split tensors into ``lanes`` groups of similar total cost (largest first)."""
    groups: list[list[str]] = [[] for _ in range(max(1, min(lanes, len(costs))))]
    totals = [0.0] * len(groups)
    for name in sorted(costs, key=lambda n: -costs[n]):
        lightest = totals.index(min(totals))
        groups[lightest].append(name)
        totals[lightest] += costs[name]
    return groups


def _stream(
    session: ort.InferenceSession,
    lanes: list[list[str]],
    batches: Iterable[dict[str, np.ndarray]],
    sinks: Sinks,
) -> None:
    """Run batch i + 1 in onnxruntime while scoring threads work on batch i.

    onnxruntime, LAPACK and numpy's kernels release the GIL, so they overlap on separate
    cores. Each lane of tensors has one thread, so every accumulator still sees its
    batches in order and results do not depend on the threading.
    """
    names = [name for lane in lanes for name in lane]
    pools = [ThreadPoolExecutor(1, thread_name_prefix="onnxprune-score") for _ in lanes]
    pending: list[Future] = []
    try:
        for feed in batches:
            values = dict(zip(names, session.run(names, feed)))
            for future in pending:
                future.result()  # re-raises a scoring error (NaN activations, ...)
            pending = [
                pool.submit(_feed_sinks, sinks, lane, [values[name] for name in lane])
                for pool, lane in zip(pools, lanes)
            ]
            del values
        for future in pending:
            future.result()
    finally:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)


def observe(
    model: onnx.ModelProto,
    dataset: Dataset,
    sinks: Sinks,
    batch_size: int = 64,
    device: str = "cpu",
    description: str = "observing activations",
    memory_budget: float | None = None,
) -> None:
    """Feed every watched tensor (name -> (channel axis, accumulators)) batch by batch.

    ``memory_budget`` (MB) caps the exposed activations of the batches in flight; when
    one pass over the full graph would exceed it, the watched tensors are split into
    passes over truncated graphs (the results do not depend on the split).
    """
    names = _graph_order(model, list(sinks))
    if not names:
        return
    if memory_budget is not None and memory_budget <= 0:
        raise ParameterError(f"memory budget must be positive, got {memory_budget:g} MB")
    probe = next(dataset.batches(1))
    reference = session_with_outputs(
        model, names, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ).run(names, probe)
    expected = dict(zip(names, reference))
    del reference
    sizes = {name: value.nbytes // max(1, len(value)) for name, value in expected.items()}
    if memory_budget is None:
        passes = [names]
    else:
        passes = plan_passes(names, sizes, batch_size, memory_budget)
    # scoring cost grows with a map's side (Gram and spectrum), not only its size
    costs = {name: sizes[name] * min(value.shape[-2:]) for name, value in expected.items()}
    providers = providers_for(device)  # says once when CUDA is missing
    for number, watched in enumerate(passes, 1):
        graph = model if len(passes) == 1 else backward_slice(model, watched)
        want = [expected[name] for name in watched]
        session = checked_session(graph, watched, probe, want, providers)
        label = description if len(passes) == 1 else f"{description}, pass {number}/{len(passes)}"
        total = dataset.num_batches(batch_size)
        batches = progress.track(dataset.batches(batch_size), label, total=total)
        lanes = balance({name: costs[name] for name in watched}, scoring_threads())
        _stream(session, lanes, batches, sinks)
        del session, graph


def predict(
    model: onnx.ModelProto, dataset: Dataset, batch_size: int = 64, device: str = "cpu"
) -> np.ndarray:
    """The first output over the whole dataset (for accuracy / MSE)."""
    session = session_with_outputs(model, [], device)
    name = session.get_outputs()[0].name
    return np.concatenate([session.run([name], feed)[0] for feed in dataset.batches(batch_size)])
