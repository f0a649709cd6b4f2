"""Fold shape arithmetic that only carries the batch size into constants.

Exporters compute shape operands from tensor shapes whenever the batch is dynamic: a
flatten as ``Reshape(x, Concat(Shape(x)[0], 512))`` (Keras 3 via tf2onnx,
``x.view(x.size(0), 512)`` in PyTorch, TF's ``tf.shape(x)[0]``), ``torch.chunk`` as Slice
bounds from ``Shape(x)[1] / 2`` (YOLOv8's C2f blocks). The channel analysis can neither
read nor rewrite a computed operand, so it freezes every channel that reaches one. When
the only dynamic input dimension is the batch, such operands are constants, except for
a Reshape target's batch entry: running the model at two batch sizes finds them, and
they become constants (``-1`` for that batch entry).

Only operands computed from shapes and constants are folded, never values that depend on
the data, so probing with zeros cannot bake in a data-dependent value.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .io import InputSpec, input_specs

#: Two batch sizes whose shapes are compared: an entry equal to the batch size both times
#: is the batch; every other entry must not move.
PROBE_BATCHES = (2, 3)

#: Operand positions that the channel rules need as constants, per op type.
SHAPE_OPERANDS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,),
    "Slice": (1, 2, 3, 4),
    "Split": (1,),
    "Tile": (1,),
    "Expand": (1,),
    "Pad": (1, 3),
    "Resize": (3,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
}

#: Ops whose output is a tensor's shape, whatever its values.
SHAPE_READERS = {"Shape", "Size"}

#: Ops whose output shape follows the values of these operands (besides SHAPE_OPERANDS).
VALUE_SHAPED: dict[str, tuple[int, ...]] = {
    **SHAPE_OPERANDS,
    "ConstantOfShape": (0,),
    "Range": (0, 1, 2),
    "TopK": (1,),
    "OneHot": (1,),
}

#: Ops whose output shape follows the data itself.
DATA_SHAPED = {"NonZero", "Unique", "Compress", "NonMaxSuppression", "If", "Loop", "Scan"}


def fold_batch_shapes(model: onnx.ModelProto) -> int:
    """Make each shape operand computed from batch-only shapes a constant (a Reshape
    target ``[batch, d1, ...]`` becomes ``[-1, d1, ...]``) and drop the arithmetic left
    dead; returns how many operands were folded.

    Nothing changes unless every graph input has a dynamic first axis and static other
    axes, or when probing fails (the analysis then freezes, as before).
    """
    graph = model.graph
    operands = _computed_operands(graph)
    specs = _batch_only_inputs(model)
    if not operands or specs is None:
        return 0
    wanted = list(dict.fromkeys(name for _, _, name in operands))
    values = _probe(model, specs, wanted)
    if values is None:
        return 0
    taken = {init.name for init in graph.initializer}
    taken |= {t for n in graph.node for t in (*n.input, *n.output)}
    taken |= {v.name for v in (*graph.input, *graph.output)}
    folded = 0
    for node, position, name in operands:
        value = _batch_free(node.op_type, *(v[name] for v in values))
        if value is None:
            continue
        constant = f"{node.name or node.op_type}__folded_{position}"
        while constant in taken:
            constant += "_"
        graph.initializer.append(numpy_helper.from_array(value, constant))
        taken.add(constant)
        node.input[position] = constant
        folded += 1
    if folded:
        _drop_dead_nodes(graph)
    return folded


def _computed_operands(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, int, str]]:
    """(node, position, tensor) of every shape operand computed from shapes and constants
    only: a value that follows the data, or the shape of a tensor whose shape follows the
    data (after NonZero, or a Reshape to a data-dependent target), is never a candidate."""
    constants = {init.name for init in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    shape_only = set(constants)  # values that follow only tensor shapes and constants
    data_shaped: set[str] = set()  # tensors whose shape may follow the data
    for node in graph.node:  # graph order: producers first
        inputs = [name for name in node.input if name]
        operands = (_operand(node, p) for p in VALUE_SHAPED.get(node.op_type, ()))
        if (
            node.op_type in DATA_SHAPED
            or any(name in data_shaped for name in inputs)
            or any(name and name not in shape_only for name in operands)
        ):
            data_shaped.update(node.output)
        elif node.op_type in SHAPE_READERS or (
            inputs and all(name in shape_only for name in inputs)
        ):
            shape_only.update(node.output)
    return [
        (node, position, name)
        for node in graph.node
        for position in SHAPE_OPERANDS.get(node.op_type, ())
        if (name := _operand(node, position)) and name not in constants and name in shape_only
    ]


def _operand(node: onnx.NodeProto, position: int) -> str:
    return node.input[position] if position < len(node.input) else ""


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
    try:
        inferred = onnx.shape_inference.infer_shapes(probe)
    except Exception:  # noqa: BLE001 - without types the probe cannot declare its outputs
        return None
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    known = {v.name for v in probe.graph.output}
    probe.graph.output.extend(
        helper.make_tensor_value_info(name, types.get(name) or onnx.TensorProto.INT64, None)
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


def _batch_free(op_type: str, first, second) -> np.ndarray | None:
    """The constant for an operand seen as ``first`` and ``second`` at the two probe
    batches: the value itself when it did not move; for a Reshape target whose only
    moving entry is the batch size (and none already inferred or copied), that entry as
    -1; otherwise None."""
    first, second = np.asarray(first), np.asarray(second)
    if first.shape != second.shape:
        return None
    if np.array_equal(first, second):
        return first
    if op_type != "Reshape" or first.ndim != 1 or np.any(first <= 0):
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
