"""Random CNN DAGs written with onnx.helper, drawn by hypothesis, for fuzzing the engine.

A drawn architecture is a list of steps; each step reads earlier tensors by index and adds
new ones (conv, depthwise and grouped conv, ConvTranspose, BN, InstanceNorm, activation,
residual Add, SE gate, Concat, Split, Slice, pooling, padding, Resize, channel shuffle,
NHWC round trip, and barriers: LRN, Softmax or a mean over channels), then a head
(GAP/Flatten/NHWC reshape into Gemm or MatMul, or the feature map itself) makes the
output. Building is a pure function of the steps and a seed, so hypothesis can shrink a
failure to a small graph.

``zero_preserving`` draws only ops with f(0) = 0 on a channel, the condition under which
pruning exactly-dead channels (tests/dead.py) must leave the outputs unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

ZERO_PRESERVING_ACTS = ("Relu", "LeakyRelu", "Tanh", "HardSwish", "Relu6", "Swish")
OTHER_ACTS = ("Sigmoid", "Softplus", "Elu")
STEPS = (
    "conv",
    "conv",
    "depthwise",
    "grouped",
    "bn",
    "act",
    "residual",
    "add",
    "se",
    "concat",
    "split",
    "slice",
    "pool",
    "scale",
    "pad",
    "resize",
    "shuffle",
    "nhwc",
    "center",
    "upconv",
    "lrn",
    "instnorm",
    "chanmix",
)
HEADS = ("gap_gemm", "flatten_gemm", "nhwc_matmul", "reduce_gemm", "feature_map")


@dataclass
class Tensor:
    """An NCHW activation of the graph under construction."""

    name: str
    c: int
    h: int
    w: int


@dataclass
class Net:
    """The graph under construction: nodes, initializers, available NCHW tensors."""

    rng: np.random.Generator
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    tensors: list[Tensor] = field(default_factory=list)

    @classmethod
    def start(cls, channels: int, side: int, seed: int = 0) -> tuple[Net, Tensor]:
        """A new graph with an (N, channels, side, side) input named ``input``."""
        net = cls(np.random.default_rng(seed))
        net.tensors.append(Tensor("input", channels, side, side))
        return net, net.tensors[0]

    def name(self, kind: str) -> str:
        return f"{kind}_{len(self.nodes)}"

    def const(self, kind: str, values: np.ndarray) -> str:
        name = f"{kind}_{len(self.inits)}_c"
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(values), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: int = 1, **attrs) -> list[str]:
        name = self.name(op.lower())
        outs = [f"{name}_out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name, **attrs))
        return outs

    def weight(self, *shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:])) or 1
        return (self.rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    def small(self, *shape: int) -> np.ndarray:
        return (0.1 * self.rng.standard_normal(shape)).astype(np.float32)

    def positive(self, *shape: int) -> np.ndarray:
        return (0.5 + self.rng.random(shape)).astype(np.float32)

    # ------------------------------------------------------------------ layers

    def conv(self, x: Tensor, out: int, k: int, stride: int, bias: bool, group: int = 1) -> Tensor:
        inputs = [x.name, self.const("w", self.weight(out, x.c // group, k, k))]
        if bias:
            inputs.append(self.const("b", self.small(out)))
        pad = k // 2
        attrs = {"kernel_shape": [k, k], "pads": [pad] * 4, "strides": [stride] * 2}
        (y,) = self.node("Conv", inputs, group=group, **attrs)
        side = lambda n: (n + 2 * pad - k) // stride + 1  # noqa: E731
        return Tensor(y, out, side(x.h), side(x.w))

    def bn(self, x: Tensor) -> Tensor:
        params = [self.positive(x.c), self.small(x.c), self.small(x.c), self.positive(x.c)]
        names = [self.const(p, v) for p, v in zip(("g", "b", "m", "v"), params)]
        (y,) = self.node("BatchNormalization", [x.name, *names], epsilon=1e-5)
        return Tensor(y, x.c, x.h, x.w)

    def act(self, x: Tensor, kind: str) -> Tensor:
        if kind == "Relu6":
            lo, hi = self.const("lo", np.float32(0)), self.const("hi", np.float32(6))
            (y,) = self.node("Clip", [x.name, lo, hi])
        elif kind == "Swish":
            (s,) = self.node("Sigmoid", [x.name])
            (y,) = self.node("Mul", [x.name, s])
        else:
            (y,) = self.node(kind, [x.name])
        return Tensor(y, x.c, x.h, x.w)

    def binary(self, op: str, a: Tensor, b: Tensor) -> Tensor:
        (y,) = self.node(op, [a.name, b.name])
        return Tensor(y, max(a.c, b.c), max(a.h, b.h), max(a.w, b.w))

    def reshape(self, x: str, shape: list[int]) -> str:
        return self.node("Reshape", [x, self.const("shape", np.array(shape, np.int64))])[0]

    def transpose(self, x: str, perm: list[int]) -> str:
        return self.node("Transpose", [x], perm=perm)[0]

    def model(self, outputs: list[tuple[str, list]], opset: int = 17) -> onnx.ModelProto:
        """A checked model from input ``self.tensors[0]`` to ``outputs`` (name, shape)."""
        x = self.tensors[0]
        graph = helper.make_graph(
            self.nodes,
            "fuzz",
            [helper.make_tensor_value_info(x.name, TensorProto.FLOAT, ["N", x.c, x.h, x.w])],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model

    def gemm(self, x: str, features: int, units: int) -> str:
        trans_b = int(self.rng.integers(2))
        w = self.weight(units, features)
        w = w if trans_b else np.ascontiguousarray(w.T)
        return self.node(
            "Gemm", [x, self.const("fc", w), self.const("fcb", self.small(units))], transB=trans_b
        )[0]


def producer(tensor: Tensor) -> str:
    """Name of the node that made ``tensor`` (what reports and analyses call a layer)."""
    return tensor.name.rsplit("_out", 1)[0]


def _pick(net: Net, index: int) -> Tensor:
    """Mostly one of the newest tensors, so steps chain into deep graphs."""
    recent = net.tensors[-4:]
    return recent[-1 - index % len(recent)] if index < 12 else net.tensors[index % len(net.tensors)]


def _partner(net: Net, x: Tensor, index: int, same_c: bool) -> Tensor | None:
    """Another tensor of the same spatial size (and channel count if ``same_c``)."""
    fits = [t for t in net.tensors if (t.h, t.w) == (x.h, x.w) and (t.c == x.c or not same_c)]
    return fits[index % len(fits)] if fits else None


def apply_step(net: Net, step: tuple, acts: tuple[str, ...]) -> None:
    kind, index, other, size, flag = step
    x = _pick(net, index)
    new: list[Tensor] = []
    if kind == "conv":
        stride = 2 if flag and x.h >= 4 else 1
        new.append(net.conv(x, size, 3 if other % 2 else 1, stride, bias=other % 3 == 0))
    elif kind == "depthwise":
        new.append(net.conv(x, x.c * (1 + flag), 3, 1, bias=bool(other % 2), group=x.c))
    elif kind == "grouped" and x.c % 2 == 0 and size % 2 == 0:
        new.append(net.conv(x, size, 1, 1, bias=False, group=2))
    elif kind == "bn":
        new.append(net.bn(x))
    elif kind == "act":
        new.append(net.act(x, acts[other % len(acts)]))
    elif kind == "residual":  # conv-BN-act branch added back to its input
        branch = net.act(net.bn(net.conv(x, x.c, 3, 1, bias=False)), acts[other % len(acts)])
        new.append(net.binary("Add", x, branch))
    elif kind == "add":
        partner = _partner(net, x, other, same_c=True)
        if partner is not None:
            new.append(net.binary("Add" if flag else "Mul", x, partner))
    elif kind == "se":
        (pooled,) = net.node("GlobalAveragePool", [x.name])
        squeeze = net.conv(Tensor(pooled, x.c, 1, 1), max(1, size // 2), 1, 1, bias=True)
        gate = net.act(net.conv(net.act(squeeze, "Relu"), x.c, 1, 1, bias=True), "Sigmoid")
        new.append(net.binary("Mul", x, gate))
    elif kind == "concat":
        partner = _partner(net, x, other, same_c=False)
        (y,) = net.node("Concat", [x.name, partner.name], axis=1)
        new.append(Tensor(y, x.c + partner.c, x.h, x.w))
    elif kind == "split" and x.c >= 2:
        first = 1 + other % (x.c - 1)
        sizes = net.const("split", np.array([first, x.c - first], np.int64))
        outs = net.node("Split", [x.name, sizes], outputs=2, axis=1)
        new += [Tensor(outs[0], first, x.h, x.w), Tensor(outs[1], x.c - first, x.h, x.w)]
    elif kind == "slice" and x.c >= 2:
        start = other % (x.c - 1)
        stop = start + 1 + size % (x.c - start)
        bounds = [net.const(n, np.array([v], np.int64)) for n, v in (("st", start), ("en", stop))]
        (y,) = net.node("Slice", [x.name, *bounds, net.const("ax", np.array([1], np.int64))])
        new.append(Tensor(y, stop - start, x.h, x.w))
    elif kind == "pool" and x.h >= 2 and x.w >= 2:
        op = "MaxPool" if flag else "AveragePool"
        (y,) = net.node(op, [x.name], kernel_shape=[2, 2], strides=[2, 2])
        new.append(Tensor(y, x.c, x.h // 2, x.w // 2))
    elif kind == "scale":
        shape = (x.c, 1, 1) if other % 2 else (1, x.c, 1, 1)
        (y,) = net.node("Mul", [x.name, net.const("scale", net.positive(*shape))])
        (y,) = net.node("Add" if flag else "Sub", [y, net.const("shift", net.small(*shape))])
        new.append(Tensor(y, x.c, x.h, x.w))
    elif kind == "pad":
        pads = net.const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
        (y,) = net.node("Pad", [x.name, pads], mode="reflect" if flag and x.h > 1 else "constant")
        new.append(Tensor(y, x.c, x.h + 2, x.w + 2))
    elif kind == "resize" and x.h <= 8:
        scales = net.const("scales", np.array([1, 1, 2, 2], np.float32))
        (y,) = net.node("Resize", [x.name, "", scales], mode="nearest")
        new.append(Tensor(y, x.c, 2 * x.h, 2 * x.w))
    elif kind == "shuffle" and x.c % 2 == 0:
        grouped = net.reshape(x.name, [0, 2, x.c // 2, x.h, x.w])
        swapped = net.transpose(grouped, [0, 2, 1, 3, 4])
        new.append(Tensor(net.reshape(swapped, [0, x.c, x.h, x.w]), x.c, x.h, x.w))
    elif kind == "nhwc":  # tf2onnx wraps channel-last ops in transposes
        nhwc = net.transpose(x.name, [0, 2, 3, 1])
        (y,) = net.node("Relu", [nhwc])
        new.append(Tensor(net.transpose(y, [0, 3, 1, 2]), x.c, x.h, x.w))
    elif kind == "upconv" and x.h <= 8:  # ConvTranspose 2x2 stride 2 (decoder upsampling)
        weight = net.const("wt", net.weight(x.c, size, 2, 2))
        (y,) = net.node("ConvTranspose", [x.name, weight], kernel_shape=[2, 2], strides=[2, 2])
        new.append(Tensor(y, size, 2 * x.h, 2 * x.w))
    elif kind == "lrn":  # mixes neighbouring channels: a barrier
        (y,) = net.node("LRN", [x.name], size=3)
        new.append(Tensor(y, x.c, x.h, x.w))
    elif kind == "instnorm":
        scale, shift = net.const("is", net.positive(x.c)), net.const("ib", net.small(x.c))
        (y,) = net.node("InstanceNormalization", [x.name, scale, shift])
        new.append(Tensor(y, x.c, x.h, x.w))
    elif kind == "chanmix":  # Softmax or a mean over the channel axis: barriers
        if flag:
            (y,) = net.node("Softmax", [x.name], axis=1)
            new.append(Tensor(y, x.c, x.h, x.w))
        else:
            (y,) = net.node("ReduceMean", [x.name], axes=[1], keepdims=1)
            new.append(Tensor(y, 1, x.h, x.w))
    elif kind == "center":  # x - mean over H, W: an activation joined with its own reduction
        (mean,) = net.node("ReduceMean", [x.name], axes=[2, 3], keepdims=1)
        new.append(net.binary("Sub", x, Tensor(mean, x.c, 1, 1)))
    net.tensors.extend(new)


def apply_head(net: Net, head: str, x: Tensor, units: int, hidden: bool) -> tuple[str, list]:
    """The output tensor name and its shape (batch symbolic)."""
    if head == "feature_map":
        return x.name, ["N", x.c, x.h, x.w]
    if head == "nhwc_matmul":
        flat = net.reshape(net.transpose(x.name, [0, 2, 3, 1]), [-1, x.h * x.w * x.c])
        w = net.const("mm", net.weight(units, x.h * x.w * x.c).T.copy())
        (y,) = net.node("MatMul", [flat, w])
        (y,) = net.node("Add", [y, net.const("mmb", net.small(units))])
        return y, ["N", units]
    if head == "flatten_gemm":
        features = x.c * x.h * x.w
        (flat,) = net.node("Flatten", [x.name], axis=1)
    else:
        features = x.c
        if head == "gap_gemm":
            (pooled,) = net.node("GlobalAveragePool", [x.name])
            (flat,) = net.node("Flatten", [pooled], axis=1)
        else:
            (flat,) = net.node("ReduceMean", [x.name], axes=[2, 3], keepdims=0)
    if hidden:
        flat = net.node("Relu", [net.gemm(flat, features, 2 * units)])[0]
        features = 2 * units
    return net.gemm(flat, features, units), ["N", units]


def build_model(arch: dict) -> onnx.ModelProto:
    """The ONNX model (opset 17) of an architecture drawn by ``architectures``."""
    net, _ = Net.start(*arch["input"], seed=arch["seed"])
    net.tensors.append(net.conv(net.tensors[0], arch["stem"], 3, 1, bias=arch["seed"] % 2 == 0))
    acts = ZERO_PRESERVING_ACTS if arch["zero_preserving"] else ZERO_PRESERVING_ACTS + OTHER_ACTS
    for step in arch["steps"]:
        apply_step(net, step, acts)
    last = net.tensors[-1]
    output, shape = apply_head(net, arch["head"], last, arch["units"], arch["hidden"])
    (final,) = net.node("Identity", [output])
    outputs = [(final, shape)]
    if arch["second_output"] and len(net.tensors) > 2:
        extra = net.tensors[len(net.tensors) // 2]
        (copy,) = net.node("Identity", [extra.name])
        outputs.append((copy, ["N", extra.c, extra.h, extra.w]))
    return net.model(outputs)


@st.composite
def architectures(draw, zero_preserving: bool = False, max_steps: int = 10) -> dict:
    """A random architecture description (see ``build_model``)."""
    step = st.tuples(
        st.sampled_from(STEPS),
        st.integers(0, 15),
        st.integers(0, 15),
        st.integers(2, 10),
        st.integers(0, 1),
    )
    return {
        "seed": draw(st.integers(0, 2**16)),
        "input": (draw(st.integers(1, 3)), draw(st.sampled_from([4, 8, 12]))),
        "stem": draw(st.integers(2, 8)),
        "steps": draw(st.lists(step, min_size=2, max_size=max_steps)),
        "head": draw(st.sampled_from(HEADS)),
        "units": draw(st.integers(2, 6)),
        "hidden": draw(st.booleans()),
        "second_output": draw(st.booleans()),
        "zero_preserving": zero_preserving,
    }


def finish(net: Net, x: Tensor, head: str = "gap_gemm", units: int = 3) -> onnx.ModelProto:
    """A hand-written graph's classifier head and model (for the topology tests)."""
    output, shape = apply_head(net, head, x, units, hidden=False)
    return net.model([(output, shape)])
