"""Small test architectures and the helpers every structural test uses.

Each torch builder returns a tiny ``nn.Module`` with random, seeded weights and randomized
BatchNorm statistics (so BN is never an identity and a wrong fold shows up numerically).
Two builders (``nhwc_style``, ``old_zoo_style``) produce ``onnx.ModelProto`` directly because
their point is graph shapes torch never exports (tf2onnx layouts, opset-9 zoo quirks).

BatchNorm and export: in eval mode the TorchScript exporter (``training=EVAL``, the default)
runs an "eval peephole" that folds every BN that directly follows a Conv into that Conv's
weight and bias, so those BN nodes vanish. BNs that follow something else (ReLU, Concat,
as in pre-activation DenseNet) stay. ``export(..., keep_bn=True)`` passes
``training=TrainingMode.PRESERVE`` with the module in eval mode: the peephole is skipped and
every BN is exported as ``BatchNormalization(training_mode=0)`` with the running statistics.

Killing channels: ``kill_channels`` edits the ONNX BN (gamma = beta = 0), so it needs a
model exported with ``keep_bn=True`` (or a BN that was not fused). ``kill_bn_channels_torch``
edits the torch BN before export and works with both variants: after folding, the Conv has
all-zero weight rows and a zero bias for those channels, so the channels are exactly zero.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

Shape = tuple[int, ...]
IMAGE: Shape = (1, 3, 32, 32)

# ----------------------------------------------------------------------------- export


def export(
    module: nn.Module,
    input_shape: Sequence[int] = IMAGE,
    opset: int = 17,
    path: str | os.PathLike | None = None,
    *,
    keep_bn: bool = False,
    do_constant_folding: bool = True,
) -> onnx.ModelProto:
    """Export with the legacy TorchScript exporter, the one most real-world ONNX came from.

    Batch is dynamic on ``input`` and ``output``. ``keep_bn=True`` keeps every BatchNorm as
    its own node (see the module docstring); the default lets conv-BN pairs fold.
    """
    module = module.eval()
    generator = torch.Generator().manual_seed(1234)
    dummy = torch.randn(*input_shape, generator=generator)
    training = torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Deprecation of the TorchScript exporter, tracer warnings on shape arithmetic and
        # the constant-folding-in-PRESERVE hint are all expected here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (dummy,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            do_constant_folding=do_constant_folding,
            training=training,
        )
    model = onnx.load_from_string(buffer.getvalue())
    if path is not None:
        save(model, path)
    return model


def save(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write atomically so parallel test workers never read a half-written cache file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".onnx.tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(model.SerializeToString())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


# ----------------------------------------------------------------------------- blocks


def _randomize_bn(module: nn.Module, generator: torch.Generator) -> None:
    """Give every BN non-trivial statistics so folding or slicing errors change outputs."""
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                n = sub.num_features
                sub.weight.copy_(0.5 + torch.rand(n, generator=generator))
                sub.bias.copy_(0.1 * torch.randn(n, generator=generator))
                sub.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                sub.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def _seeded(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build under a private RNG so builders are deterministic and leave global state alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = factory()
        _randomize_bn(module, torch.Generator().manual_seed(seed + 1))
    return module.eval()


def conv_bn(
    cin: int,
    cout: int,
    k: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    """Conv (no bias, as in most CNNs) -> BN -> optional activation; index 1 is the BN."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class Swish(nn.Module):
    """SiLU written out as x * sigmoid(x): exports as Sigmoid + Mul of the same tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class SEConv(nn.Module):
    """Squeeze-excitation with 1x1 convs: GAP -> conv -> act -> conv -> sigmoid -> Mul."""

    def __init__(self, channels: int, squeeze: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(self.pool(x)))))


class SELinear(nn.Module):
    """Squeeze-excitation with Linear layers: ReduceMean -> Gemm ... -> Unsqueeze -> Mul."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        return x * s.unsqueeze(-1).unsqueeze(-1)


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv-BN shortcut when shape changes, identity otherwise."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3, 1, act=None)
        self.shortcut = (
            conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1 reduce, 3x3, 1x1 expand x4) with projection when needed."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = conv_bn(cin, width, 1)
        self.conv2 = conv_bn(width, width, 3, stride)
        self.conv3 = conv_bn(width, cout, 1, act=None)
        self.shortcut = (
            conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (skipped at t=1), depthwise 3x3, linear 1x1 project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            conv_bn(hidden, cout, 1, act=None),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class DenseLayer(nn.Module):
    """Pre-activation dense layer: BN-ReLU-1x1-BN-ReLU-3x3, output concatenated to input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * growth)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(torch.relu(self.bn1(x)))
        y = self.conv2(torch.relu(self.bn2(y)))
        return torch.cat([x, y], 1)


class Inception(nn.Module):
    """Four parallel branches (1x1, 1x1->3x3, 1x1->5x5, pool->1x1) joined by Concat."""

    def __init__(self, cin: int, b1: int, b2: tuple[int, int], b3: tuple[int, int], b4: int):
        super().__init__()
        self.b1 = conv_bn(cin, b1, 1)
        self.b2 = nn.Sequential(conv_bn(cin, b2[0], 1), conv_bn(b2[0], b2[1], 3))
        self.b3 = nn.Sequential(conv_bn(cin, b3[0], 1), conv_bn(b3[0], b3[1], 5))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, b4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class Fire(nn.Module):
    """SqueezeNet fire: 1x1 squeeze, then 1x1 and 3x3 expands concatenated (conv has bias)."""

    def __init__(self, cin: int, squeeze: int, e1: int, e3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1 = nn.Conv2d(squeeze, e1, 1)
        self.expand3 = nn.Conv2d(squeeze, e3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.expand1(s)), torch.relu(self.expand3(s))], 1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's permutation: view (N, g, C/g, H, W), swap axes 1-2, view back."""
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNet-v2 unit; stride 1 splits channels in half, stride 2 uses both branches."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        branch_in = cin if stride == 2 else cin // 2
        self.branch2 = nn.Sequential(
            conv_bn(branch_in, half, 1),
            conv_bn(half, half, 3, stride, groups=half, act=None),
            conv_bn(half, half, 1),
        )
        self.branch1 = (
            nn.Sequential(
                conv_bn(cin, cin, 3, stride, groups=cin, act=None),
                conv_bn(cin, half, 1),
            )
            if stride == 2
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch1 is None:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch2(x2)], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return channel_shuffle(out, 2)


class MBConv(nn.Module):
    """EfficientNet block: expand, depthwise, SE (swish), project, residual add."""

    def __init__(self, channels: int, expand: int = 4) -> None:
        super().__init__()
        hidden = channels * expand
        self.expand = conv_bn(channels, hidden, 1, act=Swish)
        self.depthwise = conv_bn(hidden, hidden, 3, groups=hidden, act=Swish)
        self.se = SEConv(hidden, max(1, channels // 4), act=Swish)
        self.project = conv_bn(hidden, channels, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.se(self.depthwise(self.expand(x))))


class GAPHead(nn.Module):
    """GlobalAveragePool -> Flatten -> Linear, the classifier of most modern CNNs."""

    def __init__(self, channels: int, classes: int = 10) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


class ReshapeHead(nn.Module):
    """Conv then ``x.reshape(x.shape[0], -1)``: exports Shape/Gather/Concat/Reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv(x)))
        return self.fc(x.reshape(x.shape[0], -1))


# ----------------------------------------------------------------------------- torch builders


def vgg_like(seed: int = 0) -> nn.Module:
    """Plain conv-BN-ReLU stacks, maxpools, a big Flatten -> Linear hidden head."""
    return _seeded(
        lambda: nn.Sequential(
            conv_bn(3, 8),
            conv_bn(8, 8),
            nn.MaxPool2d(2),
            conv_bn(8, 16),
            conv_bn(16, 16),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 8 * 8, 32),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(32, 10),
        ),
        seed,
    )


def resnet_basic(seed: int = 0) -> nn.Module:
    """Two basic blocks: one identity shortcut, one 1x1-conv downsample shortcut."""
    return _seeded(
        lambda: nn.Sequential(
            conv_bn(3, 16), BasicBlock(16, 16), BasicBlock(16, 32, 2), GAPHead(32)
        ),
        seed,
    )


def resnet_bottleneck(seed: int = 0) -> nn.Module:
    """Bottlenecks (expansion 4): projection, identity, then strided projection."""
    return _seeded(
        lambda: nn.Sequential(
            conv_bn(3, 16),
            Bottleneck(16, 8),
            Bottleneck(32, 8),
            Bottleneck(32, 16, 2),
            GAPHead(64),
        ),
        seed,
    )


def mobilenet_v2_like(seed: int = 0) -> nn.Module:
    """Inverted residuals with ReLU6, depthwise convs and residual adds where shapes match."""
    return _seeded(
        lambda: nn.Sequential(
            conv_bn(3, 16, 3, 2, act=nn.ReLU6),
            InvertedResidual(16, 8, 1, 1),
            InvertedResidual(8, 16, 2, 4),
            InvertedResidual(16, 16, 1, 4),
            conv_bn(16, 32, 1, act=nn.ReLU6),
            GAPHead(32),
        ),
        seed,
    )


def densenet_like(seed: int = 0) -> nn.Module:
    """Dense blocks (Concat growing the channel axis) and a 1x1 + avgpool transition."""

    def make() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False),
            DenseLayer(16, 8),
            DenseLayer(24, 8),
            DenseLayer(32, 8),
            nn.BatchNorm2d(40),
            nn.ReLU(),
            nn.Conv2d(40, 20, 1, bias=False),
            nn.AvgPool2d(2),
            DenseLayer(20, 8),
            DenseLayer(28, 8),
            nn.BatchNorm2d(36),
            nn.ReLU(),
            GAPHead(36),
        )

    return _seeded(make, seed)


def se_net(seed: int = 0) -> nn.Module:
    """Squeeze-excitation twice: once with 1x1 convs, once with Linear layers."""
    return _seeded(
        lambda: nn.Sequential(
            conv_bn(3, 16),
            SEConv(16, 4),
            conv_bn(16, 32, 3, 2),
            SELinear(32, 8),
            GAPHead(32),
        ),
        seed,
    )


def inception_like(seed: int = 0) -> nn.Module:
    """Two inception modules whose four branches are concatenated."""
    return _seeded(
        lambda: nn.Sequential(
            conv_bn(3, 16),
            Inception(16, 8, (8, 12), (4, 6), 6),
            nn.MaxPool2d(2),
            Inception(32, 8, (8, 8), (4, 8), 8),
            GAPHead(32),
        ),
        seed,
    )


def squeezenet_fire(seed: int = 0) -> nn.Module:
    """Fire modules and a conv classifier (conv -> ReLU -> GAP -> flatten), no Gemm at all."""
    return _seeded(
        lambda: nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1),
            nn.ReLU(),
            Fire(16, 4, 8, 8),
            Fire(16, 4, 8, 8),
            nn.MaxPool2d(2),
            Fire(16, 8, 16, 16),
            nn.Dropout(0.5),
            nn.Conv2d(32, 10, 1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        ),
        seed,
    )


def flatten_gemm_head(seed: int = 0) -> nn.Module:
    """Conv -> Flatten -> Linear -> Linear: one channel feeds H*W rows of the first Gemm."""
    return _seeded(
        lambda: nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * 16 * 16, 32),
            nn.ReLU(),
            nn.Linear(32, 10),
        ),
        seed,
    )


def gap_gemm_head(seed: int = 0) -> nn.Module:
    """Conv -> GlobalAveragePool -> Flatten -> Linear: one channel feeds one Gemm row."""
    return _seeded(lambda: nn.Sequential(conv_bn(3, 16), conv_bn(16, 16), GAPHead(16)), seed)


def reshape_head(seed: int = 0) -> nn.Module:
    """Flatten via a traced reshape, so the channel mapping must go through Shape ops."""
    return _seeded(ReshapeHead, seed)


def grouped_conv_net(seed: int = 0) -> nn.Module:
    """A groups=2 conv between plain convs: a structure the rewrite must respect or freeze."""
    return _seeded(
        lambda: nn.Sequential(
            conv_bn(3, 16),
            conv_bn(16, 32, 3, groups=2),
            conv_bn(32, 16, 1),
            GAPHead(16),
        ),
        seed,
    )


def channel_shuffle_net(seed: int = 0) -> nn.Module:
    """ShuffleNet-v2 units: Split, branch, Concat, then Reshape-Transpose-Reshape shuffle."""
    return _seeded(
        lambda: nn.Sequential(
            conv_bn(3, 16),
            ShuffleUnit(16, 16, 1),
            ShuffleUnit(16, 32, 2),
            ShuffleUnit(32, 32, 1),
            conv_bn(32, 32, 1),
            GAPHead(32),
        ),
        seed,
    )


def mlp(seed: int = 0) -> nn.Module:
    """Dense only (ODF2NNA's home ground): Linear-ReLU-Linear-Tanh-Linear on (N, 16)."""
    return _seeded(
        lambda: nn.Sequential(
            nn.Linear(16, 32),
            nn.ReLU(),
            nn.Linear(32, 24),
            nn.Tanh(),
            nn.Linear(24, 3),
        ),
        seed,
    )


def efficient_se(seed: int = 0) -> nn.Module:
    """EfficientNet-style: explicit swish (Sigmoid + Mul), depthwise, SE and residual."""
    return _seeded(
        lambda: nn.Sequential(
            conv_bn(3, 16, act=Swish),
            MBConv(16),
            conv_bn(16, 32, 1, act=Swish),
            GAPHead(32),
        ),
        seed,
    )


def conv1d_net(seed: int = 0) -> nn.Module:
    """Conv1d + BatchNorm1d on (N, 4, 64): the channel axis is still 1, spatial rank is 1."""
    return _seeded(
        lambda: nn.Sequential(
            nn.Conv1d(4, 8, 5, padding=2),
            nn.BatchNorm1d(8),
            nn.ReLU(),
            nn.Conv1d(8, 16, 3, padding=1),
            nn.BatchNorm1d(16),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            nn.Linear(16, 3),
        ),
        seed,
    )


class ConvLSTM(nn.Module):
    """Conv1d features over time into an LSTM read at its last step (keyword spotting)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 16, 5, padding=2)
        self.lstm = nn.LSTM(16, 12, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.relu(self.conv(x)).transpose(1, 2)  # (N, T, 16)
        out, _ = self.lstm(steps)
        return self.head(out[:, -1])


class DenseGRU(nn.Module):
    """A per-step dense layer into a bidirectional GRU, averaged over time (sensor series)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.gru = nn.GRU(16, 8, batch_first=True, bidirectional=True)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(torch.relu(self.embed(x)))
        return self.head(out.mean(1))


class DenseRNN(nn.Module):
    """Two dense layers into a plain tanh RNN read at its last step."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.rnn = nn.RNN(16, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(x))
        return self.head(out[:, -1])


def conv_lstm(seed: int = 0) -> nn.Module:
    return _seeded(ConvLSTM, seed)


def dense_gru(seed: int = 0) -> nn.Module:
    return _seeded(DenseGRU, seed)


def dense_rnn(seed: int = 0) -> nn.Module:
    return _seeded(DenseRNN, seed)


# ----------------------------------------------------------------------------- ONNX builders


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def nhwc_style(seed: int = 0) -> onnx.ModelProto:
    """What tf2onnx makes of a Keras CNN: NHWC input, Transposes around convs, MatMul+Add.

    input (N,32,32,3) -> Transpose NCHW -> Conv 8 -> Relu -> Conv 16 s2 -> Relu ->
    Transpose NHWC -> Reshape (N, -1) -> MatMul+Add 32 -> Relu -> MatMul+Add 10 -> output.
    The flattened order is H, W, C, so one channel maps to a strided set of MatMul rows.
    """
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    def b(n: int) -> np.ndarray:
        return (0.1 * rng.standard_normal(n)).astype(np.float32)

    p = "sequential/"
    inits = [
        _init(p + "conv2d/Conv2D/ReadVariableOp:0", w(8, 3, 3, 3)),
        _init(p + "conv2d/BiasAdd/ReadVariableOp:0", b(8)),
        _init(p + "conv2d_1/Conv2D/ReadVariableOp:0", w(16, 8, 3, 3)),
        _init(p + "conv2d_1/BiasAdd/ReadVariableOp:0", b(16)),
        _init("const_fold_opt__flatten", np.array([0, -1], dtype=np.int64)),
        _init(p + "dense/MatMul/ReadVariableOp:0", w(16 * 16 * 16, 32)),
        _init(p + "dense/BiasAdd/ReadVariableOp:0", b(32)),
        _init(p + "dense_1/MatMul/ReadVariableOp:0", w(32, 10)),
        _init(p + "dense_1/BiasAdd/ReadVariableOp:0", b(10)),
    ]
    n = helper.make_node
    nodes = [
        n("Transpose", ["input"], ["input__nchw"], "Transpose__to_nchw", perm=[0, 3, 1, 2]),
        n(
            "Conv",
            ["input__nchw", inits[0].name, inits[1].name],
            [p + "conv2d/BiasAdd:0"],
            p + "conv2d/BiasAdd",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[1, 1],
        ),
        n("Relu", [p + "conv2d/BiasAdd:0"], [p + "conv2d/Relu:0"], p + "conv2d/Relu"),
        n(
            "Conv",
            [p + "conv2d/Relu:0", inits[2].name, inits[3].name],
            [p + "conv2d_1/BiasAdd:0"],
            p + "conv2d_1/BiasAdd",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[2, 2],
        ),
        n("Relu", [p + "conv2d_1/BiasAdd:0"], [p + "conv2d_1/Relu:0"], p + "conv2d_1/Relu"),
        n(
            "Transpose",
            [p + "conv2d_1/Relu:0"],
            [p + "conv2d_1/Relu__nhwc:0"],
            "Transpose__to_nhwc",
            perm=[0, 2, 3, 1],
        ),
        n(
            "Reshape",
            [p + "conv2d_1/Relu__nhwc:0", "const_fold_opt__flatten"],
            [p + "flatten/Reshape:0"],
            p + "flatten/Reshape",
        ),
        n(
            "MatMul",
            [p + "flatten/Reshape:0", inits[5].name],
            [p + "dense/MatMul:0"],
            p + "dense/MatMul",
        ),
        n("Add", [p + "dense/MatMul:0", inits[6].name], [p + "dense/BiasAdd:0"], p + "dense/Add"),
        n("Relu", [p + "dense/BiasAdd:0"], [p + "dense/Relu:0"], p + "dense/Relu"),
        n(
            "MatMul",
            [p + "dense/Relu:0", inits[7].name],
            [p + "dense_1/MatMul:0"],
            p + "dense_1/MatMul",
        ),
        n("Add", [p + "dense_1/MatMul:0", inits[8].name], ["output"], p + "dense_1/Add"),
    ]
    graph = helper.make_graph(
        nodes,
        "tf2onnx",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 32, 32, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tf2onnx"
    )
    model.ir_version = 7
    return model


def old_zoo_style(seed: int = 0) -> onnx.ModelProto:
    """An opset-9 model-zoo graph with the quirks normalisation must survive.

    Fixed batch 1; some weights come from Constant nodes (conv1, conv_b, bn2), the rest are
    initializers that are also listed as graph inputs; unfused BatchNormalization; a Sum
    joining two conv branches; Dropout with its mask output; Flatten + Gemm head; Softmax.
    Input ``data_0`` (1,3,32,32), output ``softmax_1`` (1,10).
    """
    rng = np.random.default_rng(seed)

    def f32(*shape: int, scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
        return (offset + scale * rng.standard_normal(shape)).astype(np.float32)

    def conv_w(cout: int, cin: int, k: int) -> np.ndarray:
        return f32(cout, cin, k, k, scale=1.0 / np.sqrt(cin * k * k))

    def bn_params(c: int) -> list[np.ndarray]:
        return [
            (0.5 + rng.random(c)).astype(np.float32),
            f32(c, scale=0.1),
            f32(c, scale=0.1),
            (0.5 + rng.random(c)).astype(np.float32),
        ]

    inits: list[TensorProto] = []
    consts: list[onnx.NodeProto] = []

    def as_init(name: str, array: np.ndarray) -> str:
        inits.append(_init(name, array))
        return name

    def as_const(name: str, array: np.ndarray) -> str:
        consts.append(
            helper.make_node("Constant", [], [name], name + "_const", value=_init(name, array))
        )
        return name

    n = helper.make_node
    bn1 = [
        as_init(f"bn1_{k}_0", v)
        for k, v in zip(("scale", "b", "mean", "var"), bn_params(16), strict=True)
    ]
    bn2 = [
        as_const(f"bn2_{k}_0", v)
        for k, v in zip(("scale", "b", "mean", "var"), bn_params(16), strict=True)
    ]
    nodes = [
        n(
            "Conv",
            ["data_0", as_const("conv1_w_0", conv_w(16, 3, 3)), as_const("conv1_b_0", f32(16))],
            ["conv1_1"],
            "conv1",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        n("BatchNormalization", ["conv1_1", *bn1], ["bn1_1"], "bn1", epsilon=1e-5),
        n("Relu", ["bn1_1"], ["relu1_1"], "relu1"),
        n(
            "Conv",
            ["relu1_1", as_init("conv_a_w_0", conv_w(16, 16, 3)), as_init("conv_a_b_0", f32(16))],
            ["conv_a_1"],
            "conv_a",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        n(
            "Conv",
            ["relu1_1", as_const("conv_b_w_0", conv_w(16, 16, 1))],
            ["conv_b_1"],
            "conv_b",
            kernel_shape=[1, 1],
        ),
        n("Sum", ["conv_a_1", "conv_b_1"], ["sum_1"], "sum"),
        n("BatchNormalization", ["sum_1", *bn2], ["bn2_1"], "bn2", epsilon=1e-5),
        n("Relu", ["bn2_1"], ["relu2_1"], "relu2"),
        n("MaxPool", ["relu2_1"], ["pool_1"], "pool", kernel_shape=[4, 4], strides=[4, 4]),
        n("Dropout", ["pool_1"], ["drop_1", "drop_mask_1"], "drop", ratio=0.5),
        n("Flatten", ["drop_1"], ["flat_1"], "flatten", axis=1),
        n(
            "Gemm",
            [
                "flat_1",
                as_init("fc1_w_0", f32(32, 16 * 8 * 8, scale=1 / 32)),
                as_init("fc1_b_0", f32(32)),
            ],
            ["fc1_1"],
            "fc1",
            transB=1,
        ),
        n("Relu", ["fc1_1"], ["relu3_1"], "relu3"),
        n(
            "Gemm",
            ["relu3_1", as_init("fc2_w_0", f32(10, 32, scale=0.2)), as_init("fc2_b_0", f32(10))],
            ["fc2_1"],
            "fc2",
            transB=1,
        ),
        n("Softmax", ["fc2_1"], ["softmax_1"], "softmax", axis=1),
    ]
    inputs = [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 32, 32])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(
        consts + nodes,
        "old_zoo",
        inputs,
        [helper.make_tensor_value_info("softmax_1", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 9)], producer_name="old-zoo-style"
    )
    model.ir_version = 4  # what ONNX 1.4 (opset 9) wrote
    return model


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Builder:
    """One test architecture: how to make it, what it takes, what it contains."""

    name: str
    make: Callable[[int], nn.Module | onnx.ModelProto]
    input_shape: Shape
    is_torch: bool = True


TORCH_BUILDERS: dict[str, Builder] = {
    b.name: b
    for b in [
        Builder("vgg_like", vgg_like, IMAGE),
        Builder("resnet_basic", resnet_basic, IMAGE),
        Builder("resnet_bottleneck", resnet_bottleneck, IMAGE),
        Builder("mobilenet_v2_like", mobilenet_v2_like, IMAGE),
        Builder("densenet_like", densenet_like, IMAGE),
        Builder("se_net", se_net, IMAGE),
        Builder("inception_like", inception_like, IMAGE),
        Builder("squeezenet_fire", squeezenet_fire, IMAGE),
        Builder("flatten_gemm_head", flatten_gemm_head, IMAGE),
        Builder("gap_gemm_head", gap_gemm_head, IMAGE),
        Builder("reshape_head", reshape_head, IMAGE),
        Builder("grouped_conv_net", grouped_conv_net, IMAGE),
        Builder("channel_shuffle_net", channel_shuffle_net, IMAGE),
        Builder("mlp", mlp, (1, 16)),
        Builder("efficient_se", efficient_se, IMAGE),
        Builder("conv1d_net", conv1d_net, (1, 4, 64)),
        Builder("conv_lstm", conv_lstm, (1, 4, 20)),
        Builder("dense_gru", dense_gru, (1, 10, 6)),
        Builder("dense_rnn", dense_rnn, (1, 10, 6)),
    ]
}
ONNX_BUILDERS: dict[str, Builder] = {
    "nhwc_style": Builder("nhwc_style", nhwc_style, (1, 32, 32, 3), is_torch=False),
    "old_zoo_style": Builder("old_zoo_style", old_zoo_style, (1, 3, 32, 32), is_torch=False),
}
BUILDERS: dict[str, Builder] = {**TORCH_BUILDERS, **ONNX_BUILDERS}


def build(
    name: str,
    *,
    keep_bn: bool = False,
    seed: int = 0,
    opset: int = 17,
    path: str | os.PathLike | None = None,
) -> onnx.ModelProto:
    """Any builder by name as ONNX; keep_bn/opset only apply to the torch ones."""
    spec = BUILDERS[name]
    if spec.is_torch:
        return export(spec.make(seed), spec.input_shape, opset, path, keep_bn=keep_bn)
    model = spec.make(seed)
    assert isinstance(model, onnx.ModelProto)
    if path is not None:
        save(model, path)
    return model


def _source_key() -> str:
    """Cache key: this file and the library versions that shape an export."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(f"{torch.__version__}|{onnx.__version__}".encode())
    return digest.hexdigest()[:12]


def cached_build(
    name: str, cache_dir: str | os.PathLike, *, keep_bn: bool = False, seed: int = 0
) -> onnx.ModelProto:
    """``build`` through an on-disk cache keyed by builder source and torch/onnx versions."""
    path = Path(cache_dir) / f"{name}-bn{int(keep_bn)}-s{seed}-{_source_key()}.onnx"
    if path.exists():
        return onnx.load(str(path))
    return build(name, keep_bn=keep_bn, seed=seed, path=path)


# ----------------------------------------------------------------------------- kill channels


def bn_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """BatchNormalization nodes in graph order (the index kill_channels accepts)."""
    return [node for node in model.graph.node if node.op_type == "BatchNormalization"]


def _find_bn(model: onnx.ModelProto, which: str | int) -> onnx.NodeProto:
    if isinstance(which, int):
        nodes = bn_nodes(model)
        if not -len(nodes) <= which < len(nodes):
            raise IndexError(f"BN index {which} out of range: model has {len(nodes)} BN nodes")
        return nodes[which]
    for node in model.graph.node:
        if node.name == which:
            if node.op_type != "BatchNormalization":
                raise ValueError(f"node {which!r} is {node.op_type}, not BatchNormalization")
            return node
    raise KeyError(f"no node named {which!r}")


def _constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray:
    """Value of a constant tensor: initializer, Constant node, or Identity of either."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if name in node.output:
            if node.op_type == "Constant":
                attr = next(a for a in node.attribute if a.name == "value")
                return numpy_helper.to_array(attr.t)
            if node.op_type == "Identity":
                return _constant_value(graph, node.input[0])
            raise ValueError(f"{name!r} is computed by {node.op_type}, not a constant")
    raise KeyError(f"no constant named {name!r}")


def _uses(graph: onnx.GraphProto, name: str) -> int:
    count = sum(list(node.input).count(name) for node in graph.node)
    return count + sum(out.name == name for out in graph.output)


def kill_channels(
    model: onnx.ModelProto, node_name_or_bn_index: str | int, channels: Iterable[int]
) -> onnx.ModelProto:
    """Copy of ``model`` whose BN makes ``channels`` exactly zero (gamma = beta = 0).

    The BN is named or indexed among BN nodes in graph order. Its scale/bias may be
    initializers, Constant nodes or Identity-aliased (torch deduplicates equal tensors);
    a tensor that anything else also reads is copied, never edited under the other reader.
    Needs a BN node in the ONNX graph: export with ``keep_bn=True``, or use
    ``kill_bn_channels_torch`` before a fusing export.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    node = _find_bn(out, node_name_or_bn_index)
    chans = sorted(set(int(c) for c in channels))
    graph_inputs = {vi.name for vi in graph.input}
    for slot in (1, 2):  # scale (gamma), B (beta)
        name = node.input[slot]
        value = _constant_value(graph, name).copy()
        if chans and not (-value.shape[0] <= min(chans) and max(chans) < value.shape[0]):
            raise IndexError(f"channels {chans} out of range for {value.shape[0]} channels")
        value[chans] = 0
        owned = _uses(graph, name) == 1 and any(i.name == name for i in graph.initializer)
        if owned:
            init = next(i for i in graph.initializer if i.name == name)
            init.CopyFrom(_init(name, value))
            continue
        taken = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
        new_name, k = f"{name}__killed", 1
        while new_name in taken:
            new_name, k = f"{name}__killed{k}", k + 1
        graph.initializer.append(_init(new_name, value))
        if name in graph_inputs:  # keep the old-zoo convention of listing initializers
            graph.input.append(
                helper.make_tensor_value_info(
                    new_name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)
                )
            )
        node.input[slot] = new_name
    return out


def kill_bn_channels_torch(
    module: nn.Module, bn_attr_path: str, channels: Iterable[int]
) -> nn.Module:
    """Zero gamma and beta of a torch BN in place (returns the module, for chaining).

    Works with both export variants: a fused export folds this into the conv as zero
    weight rows and zero bias, so the channel is exactly zero right after the Conv.
    """
    bn = module.get_submodule(bn_attr_path)
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"{bn_attr_path!r} is {type(bn).__name__}, not a BatchNorm")
    idx = torch.as_tensor(sorted(set(int(c) for c in channels)), dtype=torch.long)
    with torch.no_grad():
        bn.weight[idx] = 0.0
        bn.bias[idx] = 0.0
    return module


# ----------------------------------------------------------------------------- running


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: graph inputs that are not initializers (old zoo lists both)."""
    inits = {i.name for i in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def random_feeds(model: onnx.ModelProto, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs; symbolic dims become ``batch`` on axis 0 and 1 elsewhere."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for vi in graph_inputs(model):
        tensor_type = vi.type.tensor_type
        shape = [
            d.dim_value if d.HasField("dim_value") else (batch if axis == 0 else 1)
            for axis, d in enumerate(tensor_type.shape.dim)
        ]
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def session(model: onnx.ModelProto | str | os.PathLike) -> ort.InferenceSession:
    """CPU session; warnings (e.g. initializers listed as inputs) silenced."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run(
    model: onnx.ModelProto | str | os.PathLike,
    feeds: Mapping[str, np.ndarray] | np.ndarray,
    outputs: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Run with onnxruntime CPU; a bare array feeds the first real input."""
    sess = session(model)
    if isinstance(feeds, np.ndarray):
        feeds = {sess.get_inputs()[0].name: feeds}
    return list(sess.run(list(outputs) if outputs else None, dict(feeds)))


def expose(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """Copy of ``model`` with intermediate tensors added as graph outputs (to observe them)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for name in names:
        if name not in present:
            out.graph.output.append(helper.make_empty_tensor_value_info(name))
            present.add(name)
    return out


def run_tensors(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray] | np.ndarray, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Values of any intermediate tensors, by name."""
    return dict(zip(names, run(expose(model, names), feeds, names), strict=True))


def check(model: onnx.ModelProto, batch: int = 2) -> list[np.ndarray]:
    """Full onnx.checker plus an onnxruntime run on random data; outputs must be finite."""
    onnx.checker.check_model(model, full_check=True)
    results = run(model, random_feeds(model, batch))
    for vi, value in zip(model.graph.output, results, strict=True):
        if not np.all(np.isfinite(value)):
            raise AssertionError(f"output {vi.name} has non-finite values")
    return results
