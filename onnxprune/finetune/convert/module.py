"""OnnxModule (runs the node modules in graph order) and onnx_to_torch."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from torch import Tensor, nn

from ...errors import ModelError
from .nodes import (  # noqa: F401
    ConstantTensor,
    GraphInfo,
    NodeView,
    _constant_node_value,
)
from .prepare import (  # noqa: F401
    default_opset,
    prepare_model,
)
from .registry import (  # noqa: F401
    DEFAULT_DOMAINS,
    HANDLERS,
    PROBABILITY_OPS,
)

# --------------------------------------------------------------------------- the module


@dataclass(frozen=True)
class Step:
    """One node in execution order: its submodule and the tensor names it reads/writes."""

    key: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def _sanitize(name: str) -> str:
    """An attribute-safe module name derived from an ONNX node name."""
    cleaned = re.sub(r"\W+", "_", name).strip("_")
    if not cleaned or cleaned[0].isdigit():
        cleaned = f"n_{cleaned}"
    return cleaned


class OnnxModule(nn.Module):
    """A converted ONNX graph: forward(*graph inputs) -> graph output(s).

    Attributes: ``input_names`` / ``output_names`` (the ONNX ones, in order), ``opset``,
    ``ends_with_probabilities`` and ``return_logits`` (when True, a final Softmax,
    LogSoftmax or Sigmoid is skipped so a trainer can apply cross-entropy to logits), and
    ``initializer_names`` (qualified parameter/buffer name -> ONNX initializer name).
    """

    def __init__(
        self,
        nodes: Sequence[tuple[str, nn.Module, Sequence[str], Sequence[str]]],
        input_names: Sequence[str],
        output_names: Sequence[str],
        final_probability_outputs: Collection[str],
        opset: int,
    ) -> None:
        super().__init__()
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.opset = opset
        self.return_logits = False
        self.initializer_names: dict[str, str] = {}
        steps, skip = [], set()
        taken = set(dir(self))
        for raw_name, module, inputs, outputs in nodes:
            key = self._unique_key(_sanitize(raw_name), taken)
            self.add_module(key, module)
            steps.append(Step(key, tuple(inputs), tuple(outputs)))
            if outputs and outputs[0] in final_probability_outputs:
                skip.add(key)
        self.steps = steps
        self.probability_keys = frozenset(skip)
        self.ends_with_probabilities = bool(skip)

    @staticmethod
    def _unique_key(key: str, taken: set[str]) -> str:
        candidate, suffix = key, 1
        while candidate in taken:
            suffix += 1
            candidate = f"{key}_{suffix}"
        taken.add(candidate)
        return candidate

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        outputs = self.values(self.output_names, *inputs)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def values(self, names: Sequence[str], *inputs: Tensor) -> list[Tensor]:
        """The tensors ``names`` (graph outputs or any intermediate value) for ``inputs``:
        distillation compares a student's inner layers with its teacher's."""
        if len(inputs) != len(self.input_names):
            raise TypeError(
                f"expected {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                f"got {len(inputs)}"
            )
        env: dict[str, Tensor] = dict(zip(self.input_names, inputs))
        for step in self.steps:
            args = [env[name] for name in step.inputs]
            if self.return_logits and step.key in self.probability_keys:
                result: Any = args[0]
            else:
                result = self._modules[step.key](*args)
            results = result if isinstance(result, (tuple, list)) else (result,)
            for name, value in zip(step.outputs, results):
                if name:
                    env[name] = value
        return [env[name] for name in names]

    def initializer_values(self) -> dict[str, np.ndarray]:
        """Current trained values keyed by ONNX initializer name (same layout as in ONNX)."""
        state = {**dict(self.named_parameters()), **dict(self.named_buffers())}
        return {
            onnx_name: state[qual].detach().cpu().numpy()
            for qual, onnx_name in self.initializer_names.items()
        }


# --------------------------------------------------------------------------- conversion


def _graph_info(model: onnx.ModelProto) -> GraphInfo:
    """Constants (initializers + Constant nodes), producers and consumer counts."""
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producers: dict[str, str] = {}
    consumers: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            constants[node.output[0]] = _constant_node_value(node)
        for name in node.output:
            producers[name] = node.op_type
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    return GraphInfo(
        opset=default_opset(model),
        constants=constants,
        producers=producers,
        consumers=consumers,
        graph_inputs=frozenset(value.name for value in graph.input),
        graph_outputs=frozenset(value.name for value in graph.output),
    )


def _check_supported(graph: onnx.GraphProto) -> None:
    """Fail before building anything, naming the first op the converter cannot run."""
    for node in graph.node:
        if node.domain not in DEFAULT_DOMAINS or (
            node.op_type not in HANDLERS and node.op_type != "Constant"
        ):
            label = (
                node.op_type
                if node.domain in DEFAULT_DOMAINS
                else (f"{node.domain}.{node.op_type}")
            )
            raise ModelError(
                f"cannot fine-tune: op type {label} (node {node.name or node.output[0]}) "
                "is not supported by the converter"
            )


def _final_probability_outputs(graph: onnx.GraphProto, info: GraphInfo) -> set[str]:
    """Outputs of Softmax/LogSoftmax/Sigmoid nodes that only feed a graph output (maybe via
    Identity)."""
    by_output = {name: node for node in graph.node for name in node.output}
    found = set()
    for value in graph.output:
        node = by_output.get(value.name)
        while (
            node is not None
            and node.op_type == "Identity"
            and (info.consumers.get(node.input[0], 0) == 1)
        ):
            node = by_output.get(node.input[0])
        if node is None or node.op_type not in PROBABILITY_OPS:
            continue
        if info.consumers.get(node.output[0], 0) <= 1:
            found.add(node.output[0])
    return found


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Give unnamed nodes a stable name (op type + position) for modules and messages."""
    for index, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"


def _record_origins(module: OnnxModule, info: GraphInfo) -> None:
    """Fill ``initializer_names`` by matching parameter/buffer identity to initializers."""
    for qual, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if id(tensor) in info.origins:
            module.initializer_names[qual] = info.origins[id(tensor)]


NodeSpec = tuple[str, nn.Module, list[str], list[str]]


def _node_modules(graph: onnx.GraphProto, info: GraphInfo) -> list[NodeSpec]:
    """One (name, module, runtime inputs, outputs) per node, Constant nodes excepted."""
    specs = []
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        module = HANDLERS[node.op_type](NodeView.of(node, info))
        runtime = [name for name in node.input if name and name not in info.constants]
        specs.append((node.name, module, runtime, list(node.output)))
    return specs


def _constant_outputs(graph: onnx.GraphProto, info: GraphInfo) -> list[NodeSpec]:
    """Steps for graph outputs that are constants (folded or initializers)."""
    return [
        (f"const_{value.name}", ConstantTensor(info.constants[value.name]), [], [value.name])
        for value in graph.output
        if value.name in info.constants
    ]


def onnx_to_torch(model: onnx.ModelProto) -> OnnxModule:
    """Convert an ONNX model into a trainable ``OnnxModule`` (eval mode, like the ONNX graph).

    Raises ModelError naming the op type and node for anything outside the supported set.
    The caller's model is not modified.
    """
    prepared = prepare_model(model)
    graph = prepared.graph
    _name_nodes(graph)
    _check_supported(graph)
    info = _graph_info(prepared)
    module = OnnxModule(
        _node_modules(graph, info) + _constant_outputs(graph, info),
        input_names=[value.name for value in graph.input],
        output_names=[value.name for value in graph.output],
        final_probability_outputs=_final_probability_outputs(graph, info),
        opset=info.opset,
    )
    _record_origins(module, info)
    return module.eval()
