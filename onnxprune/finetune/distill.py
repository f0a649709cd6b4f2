"""Stage `distill` (the last step of `recover`, opt-in): train the pruned model on D_var to
reproduce the original model's layer outputs, with no labels.

The least-squares refit fits one linear layer at a time; what it cannot express (the
ReLUs between layers, channels no linear map of the kept ones recovers) is left as
error that accumulates through deep residual nets. Distillation trains all layers
jointly by gradient descent against the original network as teacher, on the same
unlabelled D_var: every Conv/Gemm/MatMul output (its kept channels, each tap's squared
error divided by the teacher's variance there, so wide and narrow layers weigh alike)
and every model output. A few hundred samples give thousands of targets each, which is
why D_var suffices where a labelled fine-tune would need a training set.

Choices and why:
- Mixup pairs (a random convex mix of two samples, float inputs only) are extra teacher
  queries near the data, so 500 samples go further without knowing what they are.
- Both networks stay in eval mode: BatchNorm keeps its statistics and Dropout is off, so
  the student is trained as it will run.
- The trained values are written back into the pruned model's own initializers (by
  name), so the graph, its node names and its opset stay exactly as they were.
- Adam with a cosine decay from ``lr`` to 0, seeded: the same inputs give the same model.
- After every epoch the loss over all of D_var (unmixed) is measured and the best epoch's
  weights are returned; when no epoch beats the refit weights (too few steps: Adam's first
  steps move every weight by about ``lr``), those come back unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from .. import progress
from ..io import Dataset
from ..reconstruct import kept_output_index, paired_layers
from ..recovery import DistillOptions
from ..refit_layers import Skip, channel_axis, output_units, weights_of
from .convert import OnnxModule, onnx_to_torch
from .round_trip import resolve_device

#: Samples distillation holds in memory (evenly spaced over D_var, like the refit's).
MAX_SAMPLES = 2048


@dataclasses.dataclass(frozen=True)
class Tap:
    """One tensor compared between student and teacher: the teacher's ``index`` channels
    along ``axis`` are the student's channels there."""

    name: str
    axis: int
    index: np.ndarray | None  # None: every channel, same shape in both


def taps(
    original: onnx.ModelProto, pruned: onnx.ModelProto, kept: Mapping[str, np.ndarray]
) -> list[Tap]:
    """The Conv/Gemm/MatMul outputs both models compute (``reconstruct.paired_layers``),
    with the original channels the pruned one keeps, then the float model outputs."""
    before, after = weights_of(original), weights_of(pruned)
    found: list[Tap] = []
    for source, node in paired_layers(original, pruned):
        if (
            source.op_type != node.op_type
            or source.output[0] != node.output[0]
            or not node.output[0]
        ):
            continue
        if len(node.input) < 2 or node.input[1] not in after or source.input[1] not in before:
            continue  # a MatMul of two runtime tensors (attention) has no channels to pair
        try:
            units, original_units = output_units(node, after), output_units(source, before)
            index = kept_output_index(node.name, units, original_units, kept)
        except Skip:
            continue
        whole = len(index) == original_units  # nothing to select
        found.append(Tap(node.output[0], channel_axis(node.op_type), None if whole else index))
    tapped = {tap.name for tap in found}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
    for value in pruned.graph.output:
        if value.name not in tapped and value.type.tensor_type.elem_type in floats:
            found.append(Tap(value.name, 1, None))
    return found


def _trainable(module: OnnxModule) -> list[torch.nn.Parameter]:
    """Float parameters that come from exactly one initializer; the rest stay fixed (a
    folded constant has no initializer to write back to; a tied one has two owners)."""
    owners = Counter(module.initializer_names.values())
    params = []
    for name, param in module.named_parameters():
        onnx_name = module.initializer_names.get(name)
        if onnx_name is not None and owners[onnx_name] == 1 and param.is_floating_point():
            params.append(param)
        else:
            param.requires_grad_(False)
    return params


def _tensors(dataset: Dataset, batch_size: int) -> list[torch.Tensor]:
    """D_var as one tensor per model input (at most MAX_SAMPLES, evenly spaced)."""
    parts = list(dataset.spread(MAX_SAMPLES).batches(batch_size))
    return [
        torch.from_numpy(np.concatenate([feed[spec.name] for feed in parts]))
        for spec in dataset.specs
    ]


def _select(value: torch.Tensor, tap: Tap, device: torch.device) -> torch.Tensor:
    if tap.index is None:
        return value
    index = torch.from_numpy(tap.index).to(device)
    return value.index_select(tap.axis % value.dim(), index)


def _mix(inputs: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """Each sample mixed with a random partner by a random weight (the same for every
    input of a sample)."""
    count = len(inputs[0])
    weight = torch.rand(count, generator=generator)
    partner = torch.randperm(count, generator=generator)
    mixed = []
    for x in inputs:
        w = weight.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))
        mixed.append(w * x + (1 - w) * x[partner.to(x.device)])
    return mixed


@dataclasses.dataclass
class _Objective:
    """Teacher, taps and per-tap scales: the loss of a student on a batch."""

    teacher: OnnxModule
    taps: list[Tap]
    scales: list[float]
    device: torch.device

    def loss(self, student: OnnxModule, inputs: list[torch.Tensor]) -> torch.Tensor:
        names = [tap.name for tap in self.taps]
        with torch.no_grad():
            wanted = self.teacher.values(names, *inputs)
        got = student.values(names, *inputs)
        terms = [
            torch.mean(torch.square(g - _select(w, tap, self.device))) / scale
            for g, w, tap, scale in zip(got, wanted, self.taps, self.scales)
        ]
        return torch.stack(terms).mean()

    def mean_loss(self, student: OnnxModule, data: list[torch.Tensor], batch: int) -> float:
        """The loss over all of D_var (no mixing, no gradients): what the epochs are
        judged by."""
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(data[0]), batch):
                inputs = [x[start : start + batch].to(self.device) for x in data]
                total += self.loss(student, inputs).item() * len(inputs[0])
        return total / len(data[0])


def _scales(
    teacher: OnnxModule,
    found: list[Tap],
    data: list[torch.Tensor],
    batch: int,
    device: torch.device,
) -> list[float]:
    """Each tap's variance in the teacher over D_var (kept channels), floored above 0."""
    sums = np.zeros(len(found))
    squares = np.zeros(len(found))
    counts = np.zeros(len(found))
    names = [tap.name for tap in found]
    with torch.no_grad():
        for start in range(0, len(data[0]), batch):
            inputs = [x[start : start + batch].to(device) for x in data]
            for i, (value, tap) in enumerate(zip(teacher.values(names, *inputs), found)):
                v = _select(value, tap, device).double()
                sums[i] += float(v.sum())
                squares[i] += float(torch.square(v).sum())
                counts[i] += v.numel()
    means = sums / np.maximum(counts, 1)
    variance = squares / np.maximum(counts, 1) - np.square(means)
    floor = 1e-12 * max(float(np.max(np.abs(variance), initial=0.0)), 1e-30)
    return [float(max(v, floor)) for v in variance]


def distill(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    dataset: Dataset,
    kept_outputs: Mapping[str, np.ndarray],
    options: DistillOptions,
) -> tuple[onnx.ModelProto, dict]:
    """Train ``pruned``'s weights for ``options.epochs`` passes over ``dataset``
    (unlabelled) so its layer and model outputs match ``original``'s; returns the model
    and a report."""
    epochs, lr = options.epochs, options.lr
    torch_device = torch.device(resolve_device(options.device))
    generator = torch.Generator().manual_seed(options.seed)  # the only randomness: order, mixing
    teacher = onnx_to_torch(original).to(torch_device).eval()
    student = onnx_to_torch(pruned).to(torch_device).eval()
    found = taps(original, pruned, kept_outputs)
    params = _trainable(student)
    batch = dataset.batch_size(options.batch_size)
    data = _tensors(dataset, batch)
    floats = all(x.is_floating_point() for x in data)
    scales = _scales(teacher, found, data, batch, torch_device)
    objective = _Objective(teacher, found, scales, torch_device)
    optimizer = torch.optim.Adam(params, lr=lr)
    steps = epochs * math.ceil(len(data[0]) / batch)
    step, history = 0, [objective.mean_loss(student, data, batch)]
    best = (history[0], 0, [param.detach().clone() for param in params])
    label = f"distilling on {len(data[0])} D_var samples ({len(found)} layer outputs)"
    for epoch in progress.track(range(1, epochs + 1), label, total=epochs):
        order = torch.randperm(len(data[0]), generator=generator)
        for start in range(0, len(order), batch):
            inputs = [x[order[start : start + batch]].to(torch_device) for x in data]
            loss = objective.loss(student, inputs)
            if floats:
                loss = (loss + objective.loss(student, _mix(inputs, generator))) / 2
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        history.append(objective.mean_loss(student, data, batch))
        if history[-1] < best[0]:
            best = (history[-1], epoch, [param.detach().clone() for param in params])
    model = pruned  # no epoch beat the refit: it comes back untouched
    if best[1]:
        with torch.no_grad():
            for param, value in zip(params, best[2]):
                param.copy_(value)
        model = _write_back(pruned, student)
    report = {
        "epochs": epochs,
        "lr": lr,
        "samples": len(data[0]),
        "mixup": floats,
        "layers": len(found),
        "loss": history,
        "best_epoch": best[1],
    }
    return model, report


def _write_back(pruned: onnx.ModelProto, student: OnnxModule) -> onnx.ModelProto:
    """A copy of ``pruned`` whose trained initializers hold the student's values."""
    trained = {
        student.initializer_names[name]: param.detach().cpu().numpy()
        for name, param in student.named_parameters()
        if param.requires_grad
    }
    model = onnx.ModelProto()
    model.CopyFrom(pruned)
    for init in model.graph.initializer:
        if init.name in trained:
            dtype = numpy_helper.to_array(init).dtype
            init.CopyFrom(numpy_helper.from_array(trained[init.name].astype(dtype), init.name))
    return model
