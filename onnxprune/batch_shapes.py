"""Fold Reshape target shapes that are computed only to carry the batch size.

Exporters often write a flatten as ``Reshape(x, Concat(Shape(x)[0], 512))`` (Keras 3 via
tf2onnx, ``x.view(x.size(0), 512)`` in PyTorch, TF's ``tf.shape(x)[0]``): the target is
computed from a channel-bearing tensor, so the channel analysis can neither read nor
rewrite it and freezes every channel that reaches it. When the only dynamic input
dimension is the batch, such a shape is a constant except for the batch entry: running
the model at two batch sizes finds it, and it becomes the constant ``[-1, 512]``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .io import InputSpec, input_specs

#: Two batch sizes whose shapes are compared: an entry equal to the batch size both times
#: is the batch; every other entry must not move.
PROBE_BATCHES = (2, 3)


def fold_batch_shapes(model: onnx.ModelProto) -> int:
    """Make each computed Reshape target ``[batch, d1, ...]`` the constant
    ``[-1, d1, ...]`` and drop the shape arithmetic left dead; returns how many were folded.

    Nothing changes unless every graph input has a dynamic first axis and static other
    axes, or when probing fails (the analysis then freezes, as before).
    """
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    computed = [n for n in graph.node if n.op_type == "Reshape" and n.input[1] not in constants]
    specs = _batch_only_inputs(model)
    if not computed or specs is None:
        return 0
    wanted = list(dict.fromkeys(n.input[1] for n in computed))
    values = _probe(model, specs, wanted)
    if values is None:
        return 0
    taken = constants | {t for n in graph.node for t in (*n.input, *n.output)}
    taken |= {v.name for v in (*graph.input, *graph.output)}
    folded = 0
    for node in computed:
        target = _batch_free_target(*(v[node.input[1]] for v in values))
        if target is None:
            continue
        name = f"{node.name}__folded_shape"
        while name in taken:
            name += "_"
        graph.initializer.append(numpy_helper.from_array(target, name))
        taken.add(name)
        node.input[1] = name
        folded += 1
    if folded:
        _drop_dead_nodes(graph)
    return folded


def _batch_only_inputs(model: onnx.ModelProto) -> list[InputSpec] | None:
    """The model's inputs, or None unless each one's only dynamic axis is its first."""
    specs = input_specs(model)
    for spec in specs:
        if not spec.shape or spec.shape[0] is not None or None in spec.shape[1:]:
            return None
    return specs or None


def _probe(model: onnx.ModelProto, specs: list[InputSpec], wanted: list[str]) -> list[dict] | None:
    """The values of ``wanted`` for zero inputs at each of PROBE_BATCHES, or None."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {v.name for v in probe.graph.output}
    probe.graph.output.extend(
        helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None)
        for name in wanted
        if name not in known
    )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(
            probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        values = []
        for batch in PROBE_BATCHES:
            feed = {s.name: np.zeros((batch, *s.shape[1:]), s.dtype) for s in specs}
            values.append(dict(zip(wanted, session.run(wanted, feed))))
    except Exception:  # noqa: BLE001 - a model that cannot be probed is left as it is
        return None
    return values


def _batch_free_target(first, second) -> np.ndarray | None:
    """``first`` with its batch entry as -1, if exactly that entry follows the batch size
    and no entry is already inferred or copied."""
    first, second = (np.asarray(v).reshape(-1) for v in (first, second))
    if first.shape != second.shape or np.any(first <= 0):
        return None
    moving = np.flatnonzero(first != second)
    if len(moving) != 1 or (first[moving[0]], second[moving[0]]) != PROBE_BATCHES:
        return None
    target = first.astype(np.int64)
    target[moving[0]] = -1
    return target


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes and initializers no graph output depends on. Not in a graph with
    subgraphs (If, Loop, Scan), whose nodes may read outer names without listing them."""
    if any(a.HasField("g") or len(a.graphs) for n in graph.node for a in n.attribute):
        return
    live = {value.name for value in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in live for o in node.output):
            keep.append(node)
            live.update(i for i in node.input if i)
    if len(keep) == len(graph.node):
        return
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [init for init in graph.initializer if init.name in live]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    names = {o for node in graph.node for o in node.output} | live
    infos = [v for v in graph.value_info if v.name in names]
    del graph.value_info[:]
    graph.value_info.extend(infos)
