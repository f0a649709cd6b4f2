"""Join the neighbours of a dense hidden layer that lost every unit.

When ODF2NNA finds no useful unit in a hidden layer, the layer goes and the layers around
it are joined. The paper re-initialises the joint; here it is fitted instead: one Gemm maps
the previous layer's kept activations (as the pruned model computes them) to the next
layer's ORIGINAL pre-activations, by least squares over the eval data. A run of consecutive
emptied layers is replaced by one such Gemm. If the removed layers were linear on the data
the fit is exact; otherwise it is the best linear stand-in for them.

A layer can be bridged when it is a plain chain: producer -> channelwise ops (bias,
activation) -> its watched tensor -> exactly one dense consumer (Gemm or MatMul with a
constant weight) reading it, on 2-D (batch, features) tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .. import progress
from ..blas import one_blas_thread
from ..io import Dataset
from ..normal_equations import NormalEquations
from ..observe import session_with_outputs
from .export import export_like
from .rules.base import constant

DENSE_OPS = ("Gemm", "MatMul")


@dataclass
class BridgeSite:
    """Where a bridge goes: it reads ``inputs`` and produces ``target`` in place of ``nodes``."""

    layers: list[str]  # producer names of the removed layers, in graph order
    inputs: str  # previous kept activations (the first removed producer's input)
    target: str  # the next kept layer's pre-activation tensor
    nodes: list[str] = field(default_factory=list)  # every node the bridge replaces
    target_keep: np.ndarray | None = None  # the target's units that survive pruning

    @property
    def name(self) -> str:
        return f"{self.layers[0]}_bridge"


@dataclass
class BridgeFit:
    """A fitted bridge: target ~ inputs @ weight + bias, and how well it fits (R^2)."""

    weight: np.ndarray  # (in, out)
    bias: np.ndarray  # (out,)
    r2: float
    rmse: float


def find_site(
    graph: gs.Graph,
    source: str,
    watched: Mapping[str, str],
    emptied: set[str],
    shapes: Mapping[str, tuple[int, ...]],
) -> BridgeSite | str:
    """The bridge site starting at producer ``source``, or the reason there is none.

    ``watched`` maps producer name -> its watched tensor; ``emptied`` names every producer
    losing all its units (consecutive ones join the same site).
    """
    nodes = {node.name: node for node in graph.nodes}
    outputs = {t.name for t in graph.outputs}
    node = nodes[source]
    site = BridgeSite([source], node.inputs[0].name, "")
    while True:
        site.nodes.append(node.name)
        tensor = node.outputs[0]
        while tensor.name != watched.get(node.name):
            if tensor.name in outputs or len(tensor.outputs) != 1:
                return f"the output of '{node.name}' branches before its activation"
            step = tensor.outputs[0]
            site.nodes.append(step.name)
            tensor = step.outputs[0]
        if tensor.name in outputs:
            return f"'{node.name}' feeds a model output"
        if len(tensor.outputs) != 1:
            return f"'{node.name}' feeds {len(tensor.outputs)} layers"
        consumer = tensor.outputs[0]
        if not _is_dense_consumer(consumer, tensor):
            return f"'{node.name}' feeds a {consumer.op} node, not a dense layer"
        if consumer.name not in emptied:
            break
        site.layers.append(consumer.name)
        node = consumer
    site.nodes.append(consumer.name)
    target = consumer.outputs[0]
    if consumer.op == "MatMul":  # tf2onnx / Keras: the bias is a separate Add
        while target.name not in outputs and len(target.outputs) == 1:
            add = target.outputs[0]
            if add.op != "Add" or not any(constant(t) is not None for t in add.inputs):
                break
            site.nodes.append(add.name)
            target = add.outputs[0]
    site.target = target.name
    for name in (site.inputs, site.target):
        if len(shapes.get(name, ())) != 2:
            return f"'{source}' does not work on 2-D (batch, features) tensors"
    return site


def _is_dense_consumer(node: gs.Node, tensor: gs.Tensor) -> bool:
    if node.op not in DENSE_OPS or node.inputs[0] is not tensor:
        return False
    if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
        return False
    weight = constant(node.inputs[1])
    return weight is not None and weight.ndim == 2


def solve_bridge(system: NormalEquations) -> BridgeFit:
    """The plain least-squares bridge (no ridge) and its R^2 / RMSE on the fitted rows."""
    moments = system.moments()
    weight, bias = moments.solve(np.zeros(system.xy.shape), ridge=0.0)
    relative = moments.relative_error(weight, bias)
    spread = float(np.maximum(moments.var_y, 0.0).sum())
    r2 = 1.0 - relative if spread > 0 else 1.0
    rmse = np.sqrt(relative * spread / max(moments.var_y.size, 1))
    return BridgeFit(weight[0], bias[0], float(r2), float(rmse))


def fit_bridge(
    current: onnx.ModelProto,
    original: onnx.ModelProto,
    site: BridgeSite,
    dataset: Dataset,
    batch_size: int = 64,
    device: str = "cpu",
) -> BridgeFit:
    """Least squares from ``site.inputs`` in ``current`` to ``site.target`` in ``original``."""
    reads = session_with_outputs(current, [site.inputs], device)
    targets = session_with_outputs(original, [site.target], device)
    system: NormalEquations | None = None
    batches = dataset.batches(batch_size)
    description = f"fitting bridge over '{site.layers[0]}'"
    with one_blas_thread():  # reproducible sums
        for feed in progress.track(batches, description, total=dataset.num_batches(batch_size)):
            x = reads.run([site.inputs], feed)[0]
            y = targets.run([site.target], feed)[0]
            if site.target_keep is not None:
                y = y[:, site.target_keep]
            x, y = x.reshape(len(x), 1, -1), y.reshape(len(y), 1, -1)
            system = system or NormalEquations(1, x.shape[2], y.shape[2])
            system.update(x, y)
        if system is None:
            raise ValueError("no data to fit the bridge on")
        return solve_bridge(system)


def splice(model: onnx.ModelProto, site: BridgeSite, fit: BridgeFit) -> onnx.ModelProto:
    """A copy of ``model`` where one Gemm computes ``site.target`` from ``site.inputs``."""
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    source, target = tensors[site.inputs], tensors[site.target]
    dtype = np.float32 if target.dtype is None else np.dtype(target.dtype)
    for producer in list(target.inputs):
        producer.outputs.clear()
    weight = gs.Constant(f"{site.name}.weight", np.ascontiguousarray(fit.weight.T, dtype))
    bias = gs.Constant(f"{site.name}.bias", np.ascontiguousarray(fit.bias, dtype))
    graph.nodes.append(
        gs.Node(
            "Gemm",
            site.name,
            attrs={"transB": 1},
            inputs=[source, weight, bias],
            outputs=[target],
        )
    )
    graph.cleanup().toposort()
    return export_like(graph, model)


def bridge_all(
    current: onnx.ModelProto,
    original: onnx.ModelProto,
    sites: Sequence[BridgeSite],
    dataset: Dataset,
    batch_size: int = 64,
    device: str = "cpu",
) -> tuple[onnx.ModelProto, list[dict]]:
    """Fit and splice every site in graph order; each fit sees the earlier bridges."""
    records = []
    for site in sites:
        fit = fit_bridge(current, original, site, dataset, batch_size, device)
        current = splice(current, site, fit)
        records.append(
            {
                "layers": list(site.layers),
                "bridge": site.name,
                "inputs": site.inputs,
                "target": site.target,
                "replaced_nodes": list(site.nodes),
                "fit_r2": fit.r2,
                "fit_rmse": fit.rmse,
            }
        )
    return current, records
