"""Make chosen channels exactly zero everywhere they flow, using onnxprune's own analysis.

For each chosen group channel: the producers' weight rows and biases become 0, and every
per-channel constant on the way (BN gamma/beta, a MatMul's bias Add) is zeroed at the
positions carrying that channel, so the channel is 0 in every tensor until it is consumed.
Pruning exactly those channels must then leave every output unchanged.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.analyze import Analysis, analyze
from onnxprune.graph.rules.base import constant


def _zero(tensor: gs.Tensor, axis: int, positions: np.ndarray) -> None:
    values = constant(tensor)
    if values is None or positions.size == 0 or values.ndim <= axis:
        return
    if values.shape[axis] == 1:
        return
    values = values.copy()
    index = [slice(None)] * values.ndim
    index[axis] = positions
    values[tuple(index)] = 0
    tensor.values = values


def kill(
    model: onnx.ModelProto, sample: dict[str, np.ndarray], pick=lambda size: [0, size // 2]
) -> tuple[onnx.ModelProto, dict[int, np.ndarray], Analysis]:
    """(model with dead channels, keep masks removing exactly them, its analysis)."""
    analysis = analyze(model, sample)
    roots = analysis.cg.roots()
    masks: dict[int, np.ndarray] = {}
    for group in analysis.prunable():
        mask = np.ones(group.size, dtype=bool)
        if group.blocks is None:
            mask[[c for c in pick(group.size) if c < group.size - 1]] = False
        elif group.blocks.shape[1] > 1:  # a grouped conv reads it: one per block, each
            rows, width = group.blocks.shape  # block its own position (a per-group gather)
            mask[group.blocks[np.arange(rows), np.arange(rows) % width]] = False
        masks[group.index] = mask
    dead_roots = np.concatenate(
        [analysis.groups[i].roots[~m] for i, m in masks.items()] or [np.empty(0, np.int64)]
    )
    dead_atom = np.isin(roots, dead_roots)

    graph = gs.import_onnx(analysis.model)
    cg = analysis.cg
    for node in graph.nodes:
        out_layout = cg.layouts.get(node.outputs[0].name) if node.outputs else None
        if out_layout is None:
            continue
        positions = np.flatnonzero(dead_atom[out_layout.atoms])
        if node.op == "Conv" and cg.layouts.get(node.inputs[0].name) is not out_layout:
            _zero(node.inputs[1], 0, positions)
            if len(node.inputs) > 2:
                _zero(node.inputs[2], 0, positions)
        elif node.op == "ConvTranspose":  # weight (C_in, C_out, k...): outputs on axis 1
            _zero(node.inputs[1], 1, positions)
            if len(node.inputs) > 2:
                _zero(node.inputs[2], 0, positions)
        elif node.op == "Gemm":
            _zero(node.inputs[1], 0 if node.attrs.get("transB", 0) else 1, positions)
            if len(node.inputs) > 2:
                _zero(node.inputs[2], constant(node.inputs[2]).ndim - 1, positions)
        elif node.op == "MatMul":
            _zero(node.inputs[1], 1, positions)
        elif node.op in ("BatchNormalization", "InstanceNormalization"):
            _zero(node.inputs[1], 0, positions)
            _zero(node.inputs[2], 0, positions)
        elif node.op in ("Add", "Sub"):
            rank = len(cg.shapes[node.outputs[0].name])
            for tensor in node.inputs:
                values = constant(tensor)
                if values is not None:
                    _zero(tensor, out_layout.axis - (rank - values.ndim), positions)
    return gs.export_onnx(graph), masks, analysis
