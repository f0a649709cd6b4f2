"""ONNX -> torch -> ONNX round trip of the fine-tune stage, checked against onnxruntime.

Every converted module must reproduce onnxruntime on the same ONNX graph (1e-5) at two
batch sizes, be trainable, and export back to an ONNX model with the original names and
a dynamic batch axis.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from onnxprune.errors import ModelError
from onnxprune.finetune.convert import HANDLERS, OnnxModule, onnx_to_torch, supported_ops
from onnxprune.finetune.export import export_onnx, export_opset

TOL = {"rtol": 1e-5, "atol": 1e-5}
BATCHES = (2, 5)


# --------------------------------------------------------------------------- helpers


def f32(*shape: int, seed: int = 0, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def graph_model(
    nodes: list[onnx.NodeProto],
    feeds: dict[str, np.ndarray],
    consts: dict[str, np.ndarray] | None = None,
    outputs: tuple[str, ...] = ("y",),
    opset: int = 17,
    batch_dynamic: bool = True,
    initializers_as_inputs: bool = False,
) -> onnx.ModelProto:
    """A model from nodes; graph inputs are the feeds (axis 0 dynamic), constants initializers."""
    consts = consts or {}
    inputs = []
    for name, value in feeds.items():
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
        shape = list(value.shape)
        if batch_dynamic and shape:
            shape[0] = "N"
        inputs.append(helper.make_tensor_value_info(name, elem, shape))
    if initializers_as_inputs:
        for name, value in consts.items():
            elem = helper.np_dtype_to_tensor_dtype(value.dtype)
            inputs.append(helper.make_tensor_value_info(name, elem, list(value.shape)))
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_empty_tensor_value_info(name) for name in outputs],
        [numpy_helper.from_array(value, name) for name, value in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 4 if opset < 10 else 8
    return model


def one_node(
    op: str,
    node_inputs: list[str],
    feeds: dict[str, np.ndarray],
    consts: dict[str, np.ndarray] | None = None,
    opset: int = 17,
    n_outputs: int = 1,
    **attrs: object,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    outputs = tuple(f"y{i}" if n_outputs > 1 else "y" for i in range(n_outputs))
    node = helper.make_node(op, node_inputs, list(outputs), name=f"the_{op.lower()}", **attrs)
    return graph_model([node], feeds, consts, outputs, opset), feeds


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # old-opset cases make onnxruntime chatty
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def run_module(module: nn.Module, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        result = module(*[torch.from_numpy(value) for value in feeds.values()])
    results = result if isinstance(result, tuple) else (result,)
    return [r.numpy() for r in results]


def assert_matches_ort(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], module: nn.Module | None = None
) -> OnnxModule:
    module = module if module is not None else onnx_to_torch(model)
    module.eval()
    expected, actual = run_ort(model, feeds), run_module(module, feeds)
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual):
        assert got.shape == want.shape
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, **TOL)
    return module


def torch_to_onnx(model: nn.Module, *examples: torch.Tensor, **export_kwargs) -> onnx.ModelProto:
    """Export like a user would: eval mode, opset 17, dynamic batch on every input/output."""
    names = [f"input{i}" for i in range(len(examples))]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            examples,
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=names,
            output_names=["output"],
            dynamic_axes={name: {0: "batch"} for name in [*names, "output"]},
            **export_kwargs,
        )
    return onnx.load_from_string(buffer.getvalue())


def assert_matches_at_batches(
    model: onnx.ModelProto, *sample_shapes: tuple[int, ...]
) -> OnnxModule:
    """Converted module == onnxruntime at two batch sizes (dynamic batch must work)."""
    module = onnx_to_torch(model)
    names = [value.name for value in model.graph.input]
    for batch in BATCHES:
        feeds = {
            name: f32(batch, *shape, seed=batch + i)
            for i, (name, shape) in enumerate(zip(names, sample_shapes))
        }
        assert_matches_ort(model, feeds, module)
    return module


def op_types(model: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in model.graph.node}


# --------------------------------------------------------------------------- single ops


def _bn_consts(channels: int) -> dict[str, np.ndarray]:
    return {
        "s": f32(channels, seed=1, low=0.5, high=1.5),
        "bb": f32(channels, seed=2),
        "m": f32(channels, seed=3),
        "v": f32(channels, seed=4, low=0.5, high=2.0),
    }


def _const_node(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=numpy_helper.from_array(value, name + "_value")
    )


OP_CASES = {
    "tile": lambda: one_node("Tile", ["x", "r"], {"x": f32(2, 3, 4)}, {"r": i64(1, 2, 3)}),
    "expand_broadcast_and_new_axes": lambda: one_node(
        "Expand", ["x", "s"], {"x": f32(2, 3, 1, 4)}, {"s": i64(5, 1, 3, 2, 1)}
    ),
    "conv1d_asymmetric_pads": lambda: one_node(
        "Conv",
        ["x", "w", "b"],
        {"x": f32(2, 3, 10)},
        {"w": f32(4, 3, 3, seed=1), "b": f32(4, seed=2)},
        pads=[1, 2],
    ),
    "conv2d_groups_dilation_stride": lambda: one_node(
        "Conv",
        ["x", "w"],
        {"x": f32(2, 4, 11, 9)},
        {"w": f32(6, 2, 3, 3, seed=1)},
        group=2,
        dilations=[2, 1],
        strides=[2, 1],
        pads=[1, 1, 1, 1],
    ),
    "conv2d_asymmetric_pads": lambda: one_node(
        "Conv",
        ["x", "w", "b"],
        {"x": f32(2, 3, 8, 8)},
        {"w": f32(5, 3, 3, 3, seed=1), "b": f32(5, seed=2)},
        pads=[0, 1, 2, 1],
    ),
    "conv2d_same_upper": lambda: one_node(
        "Conv",
        ["x", "w"],
        {"x": f32(2, 3, 9, 8)},
        {"w": f32(4, 3, 4, 3, seed=1)},
        auto_pad="SAME_UPPER",
        strides=[2, 2],
    ),
    "conv2d_same_lower": lambda: one_node(
        "Conv",
        ["x", "w"],
        {"x": f32(2, 3, 9, 8)},
        {"w": f32(4, 3, 4, 4, seed=1)},
        auto_pad="SAME_LOWER",
    ),
    "conv2d_valid": lambda: one_node(
        "Conv",
        ["x", "w"],
        {"x": f32(2, 3, 7, 7)},
        {"w": f32(4, 3, 3, 3, seed=1)},
        auto_pad="VALID",
        strides=[2, 2],
    ),
    "conv_transpose2d": lambda: one_node(
        "ConvTranspose",
        ["x", "w", "b"],
        {"x": f32(2, 4, 5, 5)},
        {"w": f32(4, 3, 3, 3, seed=1), "b": f32(3, seed=2)},
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        output_padding=[1, 1],
    ),
    "conv_transpose2d_asymmetric_grouped": lambda: one_node(
        "ConvTranspose",
        ["x", "w"],
        {"x": f32(2, 4, 5, 5)},
        {"w": f32(4, 2, 3, 3, seed=1)},
        strides=[2, 2],
        pads=[0, 1, 1, 0],
        group=2,
    ),
    "gemm_transA_alpha_beta": lambda: one_node(
        "Gemm",
        ["a", "b", "c"],
        {"a": f32(6, 3)},
        {"b": f32(6, 4, seed=1), "c": f32(1, 4)},
        transA=1,
        alpha=0.5,
        beta=2.0,
    ),
    "gemm_transB_no_bias": lambda: one_node(
        "Gemm",
        ["a", "b"],
        {"a": f32(3, 6)},
        {"b": f32(4, 6, seed=1)},
        transB=1,
    ),
    "matmul_3d": lambda: one_node(
        "MatMul",
        ["x", "w"],
        {"x": f32(2, 5, 6)},
        {"w": f32(6, 3, seed=1)},
    ),
    "matmul_runtime": lambda: one_node(
        "MatMul",
        ["x", "z"],
        {"x": f32(2, 5, 6), "z": f32(2, 6, 3, seed=1)},
    ),
    "add_broadcast": lambda: one_node("Add", ["x", "c"], {"x": f32(2, 3, 4)}, {"c": f32(3, 1)}),
    "sub_runtime": lambda: one_node("Sub", ["x", "z"], {"x": f32(2, 3), "z": f32(2, 3, seed=1)}),
    "mul_scalar": lambda: one_node(
        "Mul", ["x", "c"], {"x": f32(2, 3)}, {"c": np.array(1.5, np.float32)}
    ),
    "div": lambda: one_node("Div", ["x", "c"], {"x": f32(2, 3)}, {"c": f32(3, low=0.5, high=2.0)}),
    "div_integer_truncates": lambda: one_node(
        "Div", ["x", "c"], {"x": i64(-7, 7, 9).reshape(3, 1)}, {"c": i64(2)}
    ),
    "pow_constant_exponent": lambda: one_node(
        "Pow", ["x", "e"], {"x": f32(2, 3, low=0.1)}, {"e": np.array(2.0, np.float32)}
    ),
    "sqrt": lambda: one_node("Sqrt", ["x"], {"x": f32(2, 3, low=0.1)}),
    "neg": lambda: one_node("Neg", ["x"], {"x": f32(2, 3)}),
    "relu": lambda: one_node("Relu", ["x"], {"x": f32(2, 3)}),
    "sigmoid": lambda: one_node("Sigmoid", ["x"], {"x": f32(2, 3)}),
    "tanh": lambda: one_node("Tanh", ["x"], {"x": f32(2, 3)}),
    "erf": lambda: one_node("Erf", ["x"], {"x": f32(2, 3)}),
    "softplus": lambda: one_node("Softplus", ["x"], {"x": f32(2, 3, low=-5, high=5)}),
    "hardswish": lambda: one_node("HardSwish", ["x"], {"x": f32(2, 9, low=-5, high=5)}),
    "hardsigmoid": lambda: one_node(
        "HardSigmoid", ["x"], {"x": f32(2, 9, low=-5, high=5)}, alpha=0.3, beta=0.4
    ),
    "leaky_relu": lambda: one_node("LeakyRelu", ["x"], {"x": f32(2, 3)}, alpha=0.2),
    "prelu_channel_slope": lambda: one_node(
        "PRelu", ["x", "s"], {"x": f32(2, 3, 4, 4)}, {"s": f32(3, 1, 1, seed=1)}
    ),
    "elu": lambda: one_node("Elu", ["x"], {"x": f32(2, 3, low=-3, high=3)}, alpha=0.7),
    "selu": lambda: one_node("Selu", ["x"], {"x": f32(2, 3, low=-3, high=3)}),
    "gelu_tanh": lambda: one_node(
        "Gelu", ["x"], {"x": f32(2, 3, low=-3, high=3)}, opset=20, approximate="tanh"
    ),
    "clip_inputs": lambda: one_node(
        "Clip",
        ["x", "lo", "hi"],
        {"x": f32(2, 5, low=-9, high=9)},
        {"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)},
    ),
    "clip_max_only": lambda: one_node(
        "Clip",
        ["x", "", "hi"],
        {"x": f32(2, 5, low=-9, high=9)},
        {"hi": np.array(1.0, np.float32)},
    ),
    "clip_attributes_opset6": lambda: one_node(
        "Clip", ["x"], {"x": f32(2, 5, low=-9, high=9)}, opset=6, min=-1.0, max=2.0
    ),
    "softmax_axis1_opset13": lambda: one_node("Softmax", ["x"], {"x": f32(2, 3, 4)}, axis=1),
    "softmax_coerced_opset11": lambda: one_node(
        "Softmax", ["x"], {"x": f32(2, 3, 4)}, opset=11, axis=1
    ),
    "logsoftmax": lambda: one_node("LogSoftmax", ["x"], {"x": f32(2, 7)}),
    "batchnorm_eval": lambda: one_node(
        "BatchNormalization",
        ["x", "s", "bb", "m", "v"],
        {"x": f32(2, 3, 4, 4)},
        _bn_consts(3),
        epsilon=1e-3,
    ),
    "instancenorm": lambda: one_node(
        "InstanceNormalization",
        ["x", "s", "b"],
        {"x": f32(2, 3, 4, 5)},
        {"s": f32(3, seed=1), "b": f32(3, seed=2)},
    ),
    "layernorm_last_axis": lambda: one_node(
        "LayerNormalization",
        ["x", "s", "b"],
        {"x": f32(2, 5, 6)},
        {"s": f32(6, seed=1), "b": f32(6, seed=2)},
        epsilon=1e-3,
    ),
    "layernorm_from_axis1_no_bias": lambda: one_node(
        "LayerNormalization",
        ["x", "s"],
        {"x": f32(2, 3, 4, 5)},
        {"s": f32(3, 4, 5, seed=1)},
        axis=1,
    ),
    "softsign": lambda: one_node("Softsign", ["x"], {"x": f32(2, 3, low=-5, high=5)}),
    "mish_opset18": lambda: one_node("Mish", ["x"], {"x": f32(2, 3, low=-5, high=5)}, opset=18),
    "sin": lambda: one_node("Sin", ["x"], {"x": f32(2, 3)}),
    "cos": lambda: one_node("Cos", ["x"], {"x": f32(2, 3)}),
    "sign": lambda: one_node("Sign", ["x"], {"x": f32(2, 3)}),
    "round_half_even": lambda: one_node(
        "Round", ["x"], {"x": np.array([[-2.5, -0.5, 0.5, 1.5, 2.5, 0.7]], np.float32)}
    ),
    "celu": lambda: one_node("Celu", ["x"], {"x": f32(2, 3, low=-3, high=3)}, alpha=0.5),
    "maxpool_ceil_dilated": lambda: one_node(
        "MaxPool",
        ["x"],
        {"x": f32(2, 3, 9, 9)},
        kernel_shape=[3, 3],
        strides=[2, 2],
        dilations=[2, 1],
        ceil_mode=1,
    ),
    "maxpool_asymmetric_pads": lambda: one_node(
        "MaxPool",
        ["x"],
        {"x": f32(2, 3, 8, 8)},
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=[0, 1, 1, 0],
    ),
    "maxpool_same_upper": lambda: one_node(
        "MaxPool",
        ["x"],
        {"x": f32(2, 3, 7, 8)},
        kernel_shape=[3, 3],
        strides=[2, 2],
        auto_pad="SAME_UPPER",
    ),
    "avgpool_exclude_pad": lambda: one_node(
        "AveragePool",
        ["x"],
        {"x": f32(2, 3, 8, 8)},
        kernel_shape=[3, 3],
        pads=[1, 1, 1, 1],
    ),
    "avgpool_include_pad": lambda: one_node(
        "AveragePool",
        ["x"],
        {"x": f32(2, 3, 8, 8)},
        kernel_shape=[3, 3],
        pads=[1, 1, 1, 1],
        count_include_pad=1,
    ),
    "avgpool_ceil_mode": lambda: one_node(
        "AveragePool",
        ["x"],
        {"x": f32(2, 3, 9, 9)},
        kernel_shape=[2, 2],
        strides=[2, 2],
        ceil_mode=1,
    ),
    "avgpool_asymmetric_exclude_pad": lambda: one_node(
        "AveragePool",
        ["x"],
        {"x": f32(2, 3, 8, 8)},
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=[0, 1, 1, 0],
    ),
    "avgpool_asymmetric_include_pad": lambda: one_node(
        "AveragePool",
        ["x"],
        {"x": f32(2, 3, 8, 8)},
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=[0, 1, 1, 0],
        count_include_pad=1,
    ),
    "global_average_pool": lambda: one_node("GlobalAveragePool", ["x"], {"x": f32(2, 3, 4, 5)}),
    "global_max_pool": lambda: one_node("GlobalMaxPool", ["x"], {"x": f32(2, 3, 4, 5)}),
    "flatten_axis0": lambda: one_node("Flatten", ["x"], {"x": f32(2, 3, 4)}, axis=0),
    "flatten_axis2": lambda: one_node("Flatten", ["x"], {"x": f32(2, 3, 4, 5)}, axis=2),
    "flatten_negative_axis": lambda: one_node("Flatten", ["x"], {"x": f32(2, 3, 4)}, axis=-1),
    "reshape_zero_and_infer": lambda: one_node(
        "Reshape", ["x", "s"], {"x": f32(2, 3, 4)}, {"s": i64(0, -1, 2)}
    ),
    "transpose_default": lambda: one_node("Transpose", ["x"], {"x": f32(2, 3, 4)}),
    "transpose_perm": lambda: one_node(
        "Transpose", ["x"], {"x": f32(2, 3, 4, 5)}, perm=[0, 2, 3, 1]
    ),
    "squeeze_axes_input": lambda: one_node(
        "Squeeze", ["x", "a"], {"x": f32(2, 1, 3, 1)}, {"a": i64(1, -1)}
    ),
    "squeeze_axes_attribute_opset11": lambda: one_node(
        "Squeeze", ["x"], {"x": f32(2, 1, 3, 1)}, opset=11, axes=[3]
    ),
    "squeeze_all": lambda: one_node("Squeeze", ["x"], {"x": f32(2, 1, 3, 1)}),
    "unsqueeze_axes_input": lambda: one_node(
        "Unsqueeze", ["x", "a"], {"x": f32(2, 3)}, {"a": i64(-1, 1)}
    ),
    "unsqueeze_attribute_opset11": lambda: one_node(
        "Unsqueeze", ["x"], {"x": f32(2, 3)}, opset=11, axes=[0, 3]
    ),
    "concat": lambda: one_node(
        "Concat",
        ["x", "z", "c"],
        {"x": f32(2, 3), "z": f32(2, 2, seed=1)},
        {"c": f32(2, 1, seed=2)},
        axis=-1,
    ),
    "split_sizes_input": lambda: one_node(
        "Split", ["x", "s"], {"x": f32(2, 6)}, {"s": i64(1, 2, 3)}, n_outputs=3, axis=1
    ),
    "split_attribute_opset11": lambda: one_node(
        "Split", ["x"], {"x": f32(2, 6)}, opset=11, n_outputs=2, axis=1, split=[4, 2]
    ),
    "split_equal": lambda: one_node("Split", ["x"], {"x": f32(2, 6)}, n_outputs=3, axis=1),
    "split_num_outputs_opset18": lambda: one_node(
        "Split", ["x"], {"x": f32(2, 7)}, opset=18, n_outputs=3, axis=1, num_outputs=3
    ),
    "slice_steps_and_negatives": lambda: one_node(
        "Slice",
        ["x", "st", "en", "ax", "sp"],
        {"x": f32(2, 8, 6)},
        {"st": i64(-1, 1), "en": i64(-100, 10**9), "ax": i64(1, -1), "sp": i64(-2, 2)},
    ),
    "slice_attributes_opset9": lambda: one_node(
        "Slice", ["x"], {"x": f32(2, 8, 6)}, opset=9, starts=[1, 0], ends=[-1, 3], axes=[1, 2]
    ),
    "gather_2d_negative_indices": lambda: one_node(
        "Gather",
        ["x", "i"],
        {"x": f32(2, 5, 3)},
        {"i": np.array([[0, -1], [2, 1]], np.int64)},
        axis=1,
    ),
    "gather_scalar": lambda: one_node(
        "Gather", ["x", "i"], {"x": f32(2, 5)}, {"i": np.array(3, np.int64)}, axis=1
    ),
    "shape_start_end": lambda: one_node("Shape", ["x"], {"x": f32(2, 3, 4)}, start=1, end=-1),
    "cast_to_int64": lambda: one_node(
        "Cast", ["x"], {"x": f32(2, 3, low=-9, high=9)}, to=TensorProto.INT64
    ),
    "pad_constant_inputs": lambda: one_node(
        "Pad",
        ["x", "p", "v"],
        {"x": f32(2, 3, 4)},
        {"p": i64(0, 1, 2, 0, 0, 1), "v": np.array(0.5, np.float32)},
    ),
    "pad_reflect": lambda: one_node(
        "Pad",
        ["x", "p"],
        {"x": f32(2, 3, 5, 5)},
        {"p": i64(0, 0, 1, 2, 0, 0, 2, 1)},
        mode="reflect",
    ),
    "pad_edge_axes_opset18": lambda: one_node(
        "Pad",
        ["x", "p", "", "a"],
        {"x": f32(2, 3, 5, 5)},
        {"p": i64(1, 2, 0, 1), "a": i64(2, 3)},
        opset=18,
        mode="edge",
    ),
    "pad_attributes_opset2": lambda: one_node(
        "Pad", ["x"], {"x": f32(2, 3, 4)}, opset=2, pads=[0, 0, 1, 0, 0, 2], value=-1.0
    ),
    "resize_nearest_asymmetric_floor": lambda: one_node(
        "Resize",
        ["x", "", "sc"],
        {"x": f32(2, 3, 4, 5)},
        {"sc": np.array([1, 1, 2, 3], np.float32)},
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    ),
    "resize_nearest_half_pixel_integer_scale": lambda: one_node(
        "Resize",
        ["x", "", "sc"],
        {"x": f32(2, 3, 4, 5)},
        {"sc": np.array([1, 1, 2, 2], np.float32)},
        mode="nearest",
    ),
    "resize_nearest_half_pixel_round_prefer_ceil": lambda: one_node(
        "Resize",
        ["x", "", "sc"],
        {"x": f32(2, 3, 4, 5)},
        {"sc": np.array([1, 1, 3, 2], np.float32)},
        mode="nearest",
        nearest_mode="round_prefer_ceil",
    ),
    "resize_linear_half_pixel_sizes": lambda: one_node(
        "Resize",
        ["x", "", "", "sz"],
        {"x": f32(2, 3, 4, 5)},
        {"sz": i64(2, 3, 7, 9)},
        mode="linear",
    ),
    "resize_linear_align_corners": lambda: one_node(
        "Resize",
        ["x", "", "sc"],
        {"x": f32(2, 3, 4, 5)},
        {"sc": np.array([1, 1, 2, 2], np.float32)},
        mode="linear",
        coordinate_transformation_mode="align_corners",
    ),
    "resize_cubic": lambda: one_node(
        "Resize",
        ["x", "", "sc"],
        {"x": f32(2, 3, 4, 5)},
        {"sc": np.array([1, 1, 2, 2], np.float32)},
        mode="cubic",
    ),
    "upsample_nearest_opset9": lambda: one_node(
        "Upsample",
        ["x", "sc"],
        {"x": f32(2, 3, 4, 5)},
        {"sc": np.array([1, 1, 2, 2], np.float32)},
        opset=9,
    ),
    "reduce_mean_attribute_axes": lambda: one_node(
        "ReduceMean", ["x"], {"x": f32(2, 3, 4)}, axes=[1, -1], keepdims=0
    ),
    "reduce_mean_axes_input_opset18": lambda: one_node(
        "ReduceMean", ["x", "a"], {"x": f32(2, 3, 4)}, {"a": i64(2)}, opset=18
    ),
    "reduce_sum_axes_input": lambda: one_node(
        "ReduceSum", ["x", "a"], {"x": f32(2, 3, 4)}, {"a": i64(1)}, keepdims=0
    ),
    "reduce_sum_all": lambda: one_node("ReduceSum", ["x"], {"x": f32(2, 3, 4)}),
    "reduce_sum_noop_empty_axes": lambda: one_node(
        "ReduceSum", ["x"], {"x": f32(2, 3, 4)}, noop_with_empty_axes=1
    ),
    "sum_variadic": lambda: one_node(
        "Sum", ["x", "z", "c"], {"x": f32(2, 3), "z": f32(2, 3, seed=1)}, {"c": f32(3, seed=2)}
    ),
    "max_variadic": lambda: one_node(
        "Max", ["x", "z", "c"], {"x": f32(2, 3), "z": f32(2, 3, seed=1)}, {"c": f32(3, seed=2)}
    ),
    "min_binary": lambda: one_node("Min", ["x", "z"], {"x": f32(2, 3), "z": f32(2, 3, seed=1)}),
    "identity": lambda: one_node("Identity", ["x"], {"x": f32(2, 3)}),
    "dropout_ratio_input_eval": lambda: one_node(
        "Dropout", ["x", "r"], {"x": f32(2, 3)}, {"r": np.array(0.3, np.float32)}
    ),
    "constant_of_shape_runtime": lambda: (
        graph_model(
            [
                helper.make_node("Shape", ["x"], ["s"]),
                helper.make_node(
                    "ConstantOfShape",
                    ["s"],
                    ["y"],
                    value=numpy_helper.from_array(np.array([2.5], np.float32)),
                ),
            ],
            {"x": f32(2, 3)},
        ),
        {"x": f32(2, 3)},
    ),
    "lstm_forward_all_outputs": lambda: one_node(
        "LSTM",
        ["x", "w", "r", "b"],
        {"x": f32(5, 2, 3)},
        {"w": f32(1, 16, 3, seed=1), "r": f32(1, 16, 4, seed=2), "b": f32(1, 32, seed=3)},
        n_outputs=3,
        hidden_size=4,
    ),
    "lstm_bidirectional_initial_states": lambda: one_node(
        "LSTM",
        ["x", "w", "r", "", "", "h0", "c0"],
        {"x": f32(5, 2, 3)},
        {
            "w": f32(2, 16, 3, seed=1),
            "r": f32(2, 16, 4, seed=2),
            "h0": f32(2, 2, 4, seed=3),
            "c0": f32(2, 2, 4, seed=4),
        },
        opset=14,
        n_outputs=3,
        hidden_size=4,
        direction="bidirectional",
    ),
    "gru_linear_before_reset": lambda: one_node(
        "GRU",
        ["x", "w", "r", "b"],
        {"x": f32(5, 2, 3)},
        {"w": f32(1, 12, 3, seed=1), "r": f32(1, 12, 4, seed=2), "b": f32(1, 24, seed=3)},
        n_outputs=2,
        hidden_size=4,
        linear_before_reset=1,
    ),
    "gru_bidirectional_explicit_activations": lambda: one_node(
        "GRU",
        ["x", "w", "r"],
        {"x": f32(5, 2, 3)},
        {"w": f32(2, 12, 3, seed=1), "r": f32(2, 12, 4, seed=2)},
        hidden_size=4,
        linear_before_reset=1,
        direction="bidirectional",
        activations=["Sigmoid", "Tanh", "Sigmoid", "Tanh"],
    ),
    "rnn_tanh": lambda: one_node(
        "RNN",
        ["x", "w", "r", "b"],
        {"x": f32(5, 2, 3)},
        {"w": f32(1, 4, 3, seed=1), "r": f32(1, 4, 4, seed=2), "b": f32(1, 8, seed=3)},
        n_outputs=2,
        hidden_size=4,
    ),
    "rnn_relu": lambda: one_node(
        "RNN",
        ["x", "w", "r"],
        {"x": f32(5, 2, 3)},
        {"w": f32(1, 4, 3, seed=1), "r": f32(1, 4, 4, seed=2, low=-0.5, high=0.5)},
        hidden_size=4,
        activations=["Relu"],
    ),
    "constant_equal_where": lambda: (
        graph_model(
            [
                _const_node("k", np.array(0.0, np.float32)),
                helper.make_node("Relu", ["x"], ["r"]),
                helper.make_node("Equal", ["r", "k"], ["e"]),
                helper.make_node("Where", ["e", "z", "x"], ["y"]),
            ],
            {"x": f32(2, 6), "z": f32(2, 6, seed=1)},
        ),
        {"x": f32(2, 6), "z": f32(2, 6, seed=1)},
    ),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_single_op_matches_onnxruntime(case: str) -> None:
    model, feeds = OP_CASES[case]()
    assert_matches_ort(model, feeds)


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_single_op_exports_back(case: str) -> None:
    """Every supported op survives torch -> ONNX with the original names and results."""
    model, feeds = OP_CASES[case]()
    module = onnx_to_torch(model)
    opset = model.opset_import[0].version
    examples = tuple(torch.from_numpy(value) for value in feeds.values())
    out = export_onnx(module, examples, module.input_names, module.output_names, opset, None)
    assert [v.name for v in out.graph.input] == module.input_names
    for want, got in zip(run_ort(model, feeds), run_ort(out, feeds)):
        np.testing.assert_allclose(got, want, **TOL)


def test_every_registered_op_has_a_case() -> None:
    """The registry and the op-level cases grow together."""
    covered = set()
    for build in OP_CASES.values():
        covered |= op_types(build()[0])
    untested = (
        set(HANDLERS)
        - covered
        - {
            "Exp",
            "Log",
            "Abs",
            "Reciprocal",
            "Floor",
            "Ceil",
            "Not",
            "IsNaN",  # bool output; covered by test_isnan_imputation_matches_onnxruntime
            "Greater",
            "Less",
            "Mean",
            "ReduceMax",
        }
    )
    assert not untested
    assert "Constant" in supported_ops()


@pytest.mark.parametrize("op", ["Exp", "Abs", "Floor", "Ceil", "Reciprocal"])
def test_simple_unary_ops(op: str) -> None:
    model, feeds = one_node(op, ["x"], {"x": f32(2, 5, low=0.5, high=3)})
    assert_matches_ort(model, feeds)


@pytest.mark.parametrize("op", ["Greater", "Less", "Mean", "Max"])
def test_simple_binary_ops(op: str) -> None:
    model, feeds = one_node(op, ["x", "z"], {"x": f32(2, 5), "z": f32(2, 5, seed=1)})
    assert_matches_ort(model, feeds)


# --------------------------------------------------------------------------- real models


class ConvNet(nn.Module):
    """conv + relu + BN (kept: it follows a ReLU) + pool + flatten + dense."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, 4)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(torch.relu(self.conv1(x)))
        x = nn.functional.max_pool2d(x, 2)
        x = nn.functional.avg_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc2(torch.relu(self.fc1(x)))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.branch = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.branch(x))
        return self.head(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


class Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.fuse = nn.Conv2d(10, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([torch.relu(self.a(x)), torch.sigmoid(self.b(x))], dim=1))


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dw(nn.functional.relu6(self.pw(x))))


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.reduce = nn.Conv2d(8, 2, 1)
        self.expand = nn.Conv2d(2, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        scale = torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return x * scale


class SoftmaxHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc2(torch.relu(self.fc1(x))), dim=-1)


class DynamicFlatten(nn.Module):
    """x.view(x.size(0), -1) exports as Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        return self.fc(x.view(x.size(0), -1))


def keras_dense_head() -> onnx.ModelProto:
    """What tf2onnx emits for Dense layers: MatMul + Add, ending in Softmax."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="dense/MatMul"),
        helper.make_node("Add", ["h1", "b1"], ["h2"], name="dense/BiasAdd"),
        helper.make_node("Relu", ["h2"], ["h3"], name="dense/Relu"),
        helper.make_node("MatMul", ["h3", "w2"], ["h4"], name="dense_1/MatMul"),
        helper.make_node("Add", ["h4", "b2"], ["h5"], name="dense_1/BiasAdd"),
        helper.make_node("Softmax", ["h5"], ["probs"], name="dense_1/Softmax", axis=-1),
    ]
    consts = {
        "w1": f32(20, 16, seed=1),
        "b1": f32(16, seed=2),
        "w2": f32(16, 4, seed=3),
        "b2": f32(4, seed=4),
    }
    return graph_model(nodes, {"x": f32(1, 20)}, consts, outputs=("probs",), opset=13)


def gemm_trans_b0() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Gemm", ["a", "w", "c"], ["y"], name="fc", alpha=0.7, beta=1.3, transB=0)
    ]
    consts = {"w": f32(6, 3, seed=1), "c": f32(3, seed=2)}
    return graph_model(nodes, {"a": f32(1, 6)}, consts)


def opset9_graph() -> onnx.ModelProto:
    """An old-style graph: opset 9, weights also listed as graph inputs."""
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization",
            ["c", "s", "bb", "m", "v"],
            ["n"],
            name="bn",
            epsilon=1e-3,
            momentum=0.99,
        ),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("Sum", ["r", "c"], ["t"], name="sum"),
        helper.make_node("Flatten", ["t"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], name="fc", transB=1),
    ]
    consts = {
        "cw": f32(4, 3, 3, 3, seed=1),
        "cb": f32(4, seed=2),
        **_bn_consts(4),
        "gw": f32(5, 4 * 5 * 5, seed=7),
        "gb": f32(5, seed=8),
    }
    return graph_model(nodes, {"x": f32(1, 3, 5, 5)}, consts, opset=9, initializers_as_inputs=True)


IMAGE = (3, 8, 8)
TORCH_MODELS = {
    "conv_bn_pool_dense": (ConvNet, IMAGE),
    "residual_add": (Residual, IMAGE),
    "concat_branches": (Branches, IMAGE),
    "depthwise": (Depthwise, IMAGE),
    "se_block": (SqueezeExcite, IMAGE),
    "softmax_head": (SoftmaxHead, (10,)),
    "dynamic_flatten": (DynamicFlatten, (3, 6, 6)),
}


def exported(name: str) -> tuple[onnx.ModelProto, tuple[int, ...]]:
    factory, shape = TORCH_MODELS[name]
    torch.manual_seed(0)
    return torch_to_onnx(factory(), torch.randn(2, *shape)), shape


@pytest.mark.parametrize("name", sorted(TORCH_MODELS))
def test_torch_exported_model_matches_ort(name: str) -> None:
    model, shape = exported(name)
    assert_matches_at_batches(model, shape)


def test_conv_model_keeps_batchnorm_and_pools() -> None:
    model, _ = exported("conv_bn_pool_dense")
    assert {"BatchNormalization", "MaxPool", "AveragePool", "Gemm"} <= op_types(model)
    module = onnx_to_torch(model)
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def test_dynamic_shape_subgraph_is_kept_and_works() -> None:
    model, shape = exported("dynamic_flatten")
    assert {"Shape", "Gather", "Concat", "Reshape"} <= op_types(model)
    assert_matches_at_batches(model, shape)


def test_keras_dense_head_matches_and_trains_biases() -> None:
    model = keras_dense_head()
    module = assert_matches_at_batches(model, (20,))
    assert sorted(module.initializer_names.values()) == ["b1", "b2", "w1", "w2"]
    assert all(p.requires_grad for p in module.parameters())
    assert module.ends_with_probabilities


def test_gemm_trans_b0_matches() -> None:
    module = assert_matches_at_batches(gemm_trans_b0(), (6,))
    assert module.fc.weight.shape == (6, 3)  # ONNX layout kept


def test_opset9_graph_matches() -> None:
    model = opset9_graph()
    module = assert_matches_at_batches(model, IMAGE[:1] + (5, 5))
    assert module.input_names == ["x"]  # initializer inputs are not module inputs
    assert module.bn.momentum == pytest.approx(0.01)
    assert module.bn.eps == pytest.approx(1e-3)


def test_parameters_map_back_to_initializers() -> None:
    model, _ = exported("conv_bn_pool_dense")
    module = onnx_to_torch(model)
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    names = dict(module.named_parameters())
    assert set(names) <= set(module.initializer_names)
    for onnx_name, value in module.initializer_values().items():
        np.testing.assert_array_equal(value, initializers[onnx_name])
    assert any(q.endswith("running_mean") for q in module.initializer_names)
    assert all("." in q and "/" not in q for q in names)  # owned by named submodules


def test_multiple_outputs_including_a_constant() -> None:
    """Several outputs come back as a tuple in graph order, constant ones included."""
    nodes = [
        helper.make_node("Relu", ["x"], ["act"]),
        _const_node("version", np.array([3], np.int64)),
        helper.make_node("Split", ["act"], ["a", "b"], axis=1),
    ]
    model = graph_model(nodes, {"x": f32(2, 4)}, outputs=("b", "version", "a"))
    module = assert_matches_at_batches(model, (4,))
    assert module.output_names == ["b", "version", "a"]
    assert isinstance(module(torch.zeros(1, 4)), tuple)


def test_shared_initializer_stays_one_parameter() -> None:
    nodes = [
        helper.make_node("Identity", ["w"], ["w_alias"], name="tie"),
        helper.make_node("MatMul", ["x", "w"], ["h"], name="first"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w_alias"], ["y"], name="second"),
    ]
    model = graph_model(nodes, {"x": f32(2, 4)}, {"w": f32(4, 4, seed=1)})
    module = assert_matches_at_batches(model, (4,))
    assert len(list(module.parameters())) == 1
    assert list(module.initializer_names.values()) == ["w"]


def test_activation_constants_stay_fixed() -> None:
    """GELU's scalars and input normalisation are not learned; a dense bias is."""
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["centred"]),
        helper.make_node("MatMul", ["centred", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["hb"]),
        helper.make_node("Div", ["hb", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["hb", "e1"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["y"]),
    ]
    consts = {
        "mean": f32(3),
        "w": f32(3, 5, seed=1),
        "b": np.array([0.1], np.float32),
        "sqrt2": np.array(1.4142135, np.float32),
        "one": np.array(1.0, np.float32),
        "half": np.array(0.5, np.float32),
    }
    module = assert_matches_at_batches(graph_model(nodes, {"x": f32(2, 3)}, consts), (3,))
    assert sorted(module.initializer_names.values()) == ["b", "w"]


# --------------------------------------------------------------------------- training


def test_parameters_train() -> None:
    model, shape = exported("conv_bn_pool_dense")
    module = onnx_to_torch(model).train()
    torch.manual_seed(1)
    x, target = torch.randn(16, *shape), torch.randn(16, 4)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(module(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if len(losses) == 1:
            changed = {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}
            assert changed == set(before)
    assert losses[-1] < losses[0]


def test_batchnorm_running_stats_update_only_in_train_mode() -> None:
    model, shape = exported("conv_bn_pool_dense")
    module = onnx_to_torch(model)
    bn = next(m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    assert bn.momentum == pytest.approx(0.1)  # torch 0.1 -> ONNX 0.9 -> torch 0.1
    x = torch.randn(8, *shape) + 3.0
    stats = bn.running_mean.clone()
    with torch.no_grad():
        module.eval()(x)
        assert torch.equal(bn.running_mean, stats)
        module.train()(x)
    assert not torch.equal(bn.running_mean, stats)


def test_dropout_is_active_only_in_train_mode() -> None:
    model, feeds = one_node(
        "Dropout",
        ["x", "r"],
        {"x": np.ones((4, 100), np.float32)},
        {"r": np.array(0.5, np.float32)},
    )
    module = onnx_to_torch(model)
    x = torch.ones(4, 100)
    assert torch.equal(module.eval()(x), x)
    assert (module.train()(x) == 0).any()


def test_return_logits_skips_final_softmax() -> None:
    model, shape = exported("softmax_head")
    module = onnx_to_torch(model)
    assert module.ends_with_probabilities and module.return_logits is False
    x = torch.randn(3, *shape)
    with torch.no_grad():
        probs = module(x)
        module.return_logits = True
        logits = module(x)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    assert not torch.allclose(logits.sum(-1), torch.ones(3))
    torch.testing.assert_close(torch.softmax(logits, -1), probs)


def test_models_without_softmax_say_so() -> None:
    model, _ = exported("residual_add")
    assert onnx_to_torch(model).ends_with_probabilities is False


# --------------------------------------------------------------------------- export


def assert_round_trip(model: onnx.ModelProto, shape: tuple[int, ...]) -> onnx.ModelProto:
    """Export the converted module; the result is valid, keeps names, batch is dynamic."""
    module = onnx_to_torch(model)
    inputs, outputs = module.input_names, module.output_names
    assert outputs == [value.name for value in model.graph.output]
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    out = export_onnx(module, (torch.randn(2, *shape),), inputs, outputs, opset, None)
    onnx.checker.check_model(out, full_check=True)
    assert [v.name for v in out.graph.input] == inputs
    assert [v.name for v in out.graph.output] == outputs
    for value in [*out.graph.input, *out.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param
    for batch in (1, 3):
        feeds = {inputs[0]: f32(batch, *shape, seed=batch)}
        assert_matches_ort(out, feeds, module)
    return out


@pytest.mark.parametrize("name", ["conv_bn_pool_dense", "dynamic_flatten", "se_block"])
def test_export_round_trip_torch_models(name: str) -> None:
    model, shape = exported(name)
    assert_round_trip(model, shape)


def test_export_round_trip_keeps_softmax_and_restores_state() -> None:
    model = keras_dense_head()
    module = onnx_to_torch(model).train()
    module.return_logits = True
    out = export_onnx(module, (torch.randn(2, 20),), ["x"], ["probs"], 13, None)
    assert module.training and module.return_logits  # caller's state restored
    assert "Softmax" in op_types(out)
    np.testing.assert_allclose(
        run_ort(out, {"x": f32(4, 20)})[0], run_ort(model, {"x": f32(4, 20)})[0], **TOL
    )


def test_export_round_trip_old_opset_and_file(tmp_path) -> None:
    model = opset9_graph()
    out = assert_round_trip(model, (3, 5, 5))
    assert out.opset_import[0].version == 13
    path = tmp_path / "finetuned.onnx"
    module = onnx_to_torch(model)
    export_onnx(module, (torch.randn(1, 3, 5, 5),), ["x"], ["y"], 9, path)
    onnx.checker.check_model(onnx.load(str(path)))


def test_export_opset_minimum() -> None:
    assert export_opset(9) == 13
    assert export_opset(17) == 17
    assert export_opset(23) == 20  # the TorchScript exporter's maximum


# --------------------------------------------------------------------------- errors


def test_unsupported_op_names_op_and_node() -> None:
    nodes = [helper.make_node("LRN", ["x"], ["y"], name="norm1", size=3)]
    model = graph_model(nodes, {"x": f32(1, 3, 4, 4)})
    with pytest.raises(ModelError, match=r"op type LRN \(node norm1\) is not supported"):
        onnx_to_torch(model)


def test_custom_domain_op_is_unsupported() -> None:
    node = helper.make_node("FusedConv", ["x"], ["y"], name="fused", domain="com.microsoft")
    model = graph_model([node], {"x": f32(1, 3, 4, 4)})
    with pytest.raises(ModelError, match="com.microsoft.FusedConv"):
        onnx_to_torch(model)


def test_module_copies_pickles_and_reloads_state() -> None:
    """Trainers keep best weights by deepcopy/state_dict; both must work."""
    model, shape = exported("conv_bn_pool_dense")
    module = onnx_to_torch(model)
    clone = copy.deepcopy(module)
    pickle.loads(pickle.dumps(module))
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(1.0)
    clone.load_state_dict(module.state_dict())
    x = torch.randn(2, *shape)
    torch.testing.assert_close(clone(x), module(x))


def test_half_pixel_nearest_with_fractional_scale_is_unsupported() -> None:
    model, _ = one_node(
        "Resize",
        ["x", "", "sc"],
        {"x": f32(1, 3, 4, 4)},
        {"sc": np.array([1, 1, 1.5, 1.5], np.float32)},
        mode="nearest",
    )
    with pytest.raises(ModelError, match="non-integer scales"):
        onnx_to_torch(model)


def test_unsupported_variant_is_a_model_error() -> None:
    model, _ = one_node(
        "Resize",
        ["x", "", "sc"],
        {"x": f32(1, 3, 4, 4)},
        {"sc": np.array([1, 1, 2, 2], np.float32)},
        mode="linear",
        coordinate_transformation_mode="asymmetric",
    )
    with pytest.raises(ModelError, match="op type Resize .*asymmetric"):
        onnx_to_torch(model)


@pytest.mark.parametrize(
    ("op", "attrs", "message"),
    [
        ("GRU", {}, "linear_before_reset=0"),  # ONNX's default; torch resets after R
        ("LSTM", {"direction": "reverse"}, "direction=reverse"),
        ("LSTM", {"clip": 1.0}, "clip"),
        ("RNN", {"activations": ["Sigmoid"]}, "activation sigmoid"),
    ],
)
def test_recurrent_variants_torch_cannot_run_are_refused(op, attrs, message) -> None:
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    model, _ = one_node(
        op,
        ["x", "w", "r"],
        {"x": f32(5, 2, 3)},
        {"w": f32(1, 4 * gates, 3), "r": f32(1, 4 * gates, 4)},
        hidden_size=4,
        **attrs,
    )
    with pytest.raises(ModelError, match=f"op type {op} .*{message}"):
        onnx_to_torch(model)


def test_input_model_is_not_modified() -> None:
    model = opset9_graph()
    before = model.SerializeToString()
    onnx_to_torch(model)
    assert model.SerializeToString() == before


def test_isnan_imputation_matches_onnxruntime() -> None:
    """The MLPs onnxprune builds impute NaN in the graph: IsNaN -> Where -> Sub."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])
    mean = numpy_helper.from_array(np.array([0.5, -1.0, 2.0], np.float32), "mean")
    nodes = [
        helper.make_node("IsNaN", ["x"], ["missing"]),
        helper.make_node("Where", ["missing", "mean", "x"], ["filled"]),
        helper.make_node("Sub", ["filled", "mean"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "impute", [x], [y], [mean])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = f32(4, 3)
    data[1, 2] = np.nan
    data[3, 0] = np.nan
    assert_matches_ort(model, {"x": data})
