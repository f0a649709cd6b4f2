"""Dense networks in every form exporters write, built with onnx.helper.

- ``gemm_tb1`` / ``gemm_tb0``: Gemm with transB 1 (torch: W is out x in) or 0 (W is in x out)
- ``gemm_tb1_nobias`` / ``gemm_tb0_nobias``: the same without the C input
- ``matmul_add``: MatMul then Add(bias), as tf2onnx writes Keras Dense layers
- ``matmul_add_bias_first``: Add(bias, MatMul) — the operands the other way round

Units can be made exactly constant (zero weights in, a fixed bias), so pruning them must
leave every output unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FORMS = (
    "gemm_tb1",
    "gemm_tb0",
    "gemm_tb1_nobias",
    "gemm_tb0_nobias",
    "matmul_add",
    "matmul_add_bias_first",
)
ACTIVATIONS = ("Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu")
_ATTRS = {"LeakyRelu": {"alpha": 0.2}, "Elu": {"alpha": 1.0}}


def build_dense(
    widths: Sequence[int] = (5, 8, 6, 3),
    form: str = "gemm_tb1",
    activation: str | Sequence[str] = "Relu",
    *,
    softmax_output: bool = False,
    constant_units: Mapping[int, Sequence[int]] | None = None,
    constant_value: float = 0.7,
    weight_scale: Mapping[int, float] | None = None,
    bias_value: Mapping[int, float] | None = None,
    input_offset: Mapping[int, float] | None = None,
    seed: int = 0,
) -> onnx.ModelProto:
    """``widths`` = input, hidden..., output. Layer i (0-based) maps widths[i] -> widths[i+1];
    every layer but the last is followed by ``activation`` (one name or one per layer).

    ``constant_units[i]`` lists units of layer i whose weights are zeroed and whose bias is
    ``constant_value`` (0 for bias-free forms); ``weight_scale[i]`` / ``bias_value[i]``
    scale layer i's random weights and set all its biases; ``input_offset[i]`` shifts layer
    i's biases so that inputs sitting at that constant contribute nothing.
    """
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}")
    rng = np.random.default_rng(seed)
    layers = len(widths) - 1
    acts = [activation] * (layers - 1) if isinstance(activation, str) else list(activation)
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    current = "input"
    for i in range(layers):
        n_in, n_out = widths[i], widths[i + 1]
        scale = (weight_scale or {}).get(i, 1.0 / np.sqrt(n_in))
        weight = (rng.normal(size=(n_in, n_out)) * scale).astype(np.float32)
        bias = (0.1 * rng.normal(size=n_out)).astype(np.float32)
        if bias_value and i in bias_value:
            bias[:] = bias_value[i]
        if input_offset and i in input_offset:
            bias -= input_offset[i] * weight.sum(axis=0)
        dead = list((constant_units or {}).get(i, []))
        weight[:, dead] = 0.0
        bias[dead] = constant_value
        pre = f"dense{i}_pre"
        _dense(form, i, current, pre, weight, bias, nodes, inits)
        current = pre
        if i < layers - 1:
            act = acts[i]
            nodes.append(
                helper.make_node(
                    act, [current], [f"dense{i}_act"], name=f"act{i}", **_ATTRS.get(act, {})
                )
            )
            current = f"dense{i}_act"
    if softmax_output:
        nodes.append(helper.make_node("Softmax", [current], ["probs"], name="softmax", axis=-1))
        current = "probs"
    nodes[-1].output[0] = "output"
    graph = helper.make_graph(
        nodes,
        f"dense_{form}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", widths[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", widths[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _dense(form, i, x, out, weight, bias, nodes, inits) -> None:
    name = f"dense{i}"
    if form.startswith("gemm"):
        trans_b = form.startswith("gemm_tb1")
        w = weight.T.copy() if trans_b else weight
        inits.append(numpy_helper.from_array(w, f"{name}.weight"))
        inputs = [x, f"{name}.weight"]
        if not form.endswith("nobias"):
            inits.append(numpy_helper.from_array(bias, f"{name}.bias"))
            inputs.append(f"{name}.bias")
        nodes.append(helper.make_node("Gemm", inputs, [out], name=name, transB=int(trans_b)))
        return
    inits.append(numpy_helper.from_array(weight, f"{name}.kernel"))
    inits.append(numpy_helper.from_array(bias, f"{name}.bias"))
    nodes.append(helper.make_node("MatMul", [x, f"{name}.kernel"], [f"{name}_mm"], name=name))
    operands = [f"{name}_mm", f"{name}.bias"]
    if form == "matmul_add_bias_first":
        operands.reverse()
    nodes.append(helper.make_node("Add", operands, [out], name=f"{name}_bias"))


def sample(model: onnx.ModelProto, rows: int = 256, seed: int = 1) -> np.ndarray:
    """Standard-normal rows of the model's input width."""
    width = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    return np.random.default_rng(seed).normal(size=(rows, width)).astype(np.float32)


def layer_units(model: onnx.ModelProto) -> list[int]:
    """Output units of each Gemm/MatMul, in graph order (to count what survived)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    units = []
    for node in model.graph.node:
        if node.op_type not in ("Gemm", "MatMul") or node.input[1] not in inits:
            continue
        weight = inits[node.input[1]]
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        units.append(weight.shape[0] if trans_b else weight.shape[1])
    return units
