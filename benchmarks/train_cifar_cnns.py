"""Train the real models the recovery benchmark (benchmarks/recovery.py) prunes.

No weights can be downloaded here, so the benchmark's CIFAR models are trained from the
shared CIFAR-10 subset (10,000 training / 2,000 test images), plus an MLP on Spambase:

- ``cifar_cnn``: 4 conv (3x3, BN, ReLU; max-pool after convs 2-4) + one hidden dense layer
  of 128 + the 10-way output: the kind of model the issue measured;
- ``cifar_resnet``: a ResNet-style net: stem conv, three basic residual blocks (16, 32, 64
  channels; 1x1 projection shortcuts when the shape changes), global average pool, linear;
- ``cifar_resnet20``: He et al.'s CIFAR ResNet-20 (three stages of three basic blocks);
- ``spambase_mlp``: 57 -> 64 -> 32 -> 2 with ReLU, on a stratified 80/20 split.

Inputs are raw values (CIFAR: pixels 0..255 as float32; Spambase: the raw features);
normalisation is part of each graph. Deterministic (seed 0, 2 threads); results are cached
under ``.cache/recovery/`` (gitignored) with a JSON log each, so they train only once:

    python benchmarks/train_cifar_cnns.py [--force] [--epochs 10]
"""

from __future__ import annotations

import argparse
import io
import json
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from onnxprune.select import percentile_mask

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "recovery"
SHARED = REPO.parent / "shared" / "data"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")

SEED = 0
CIFAR_EPOCHS = 10
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


# ----------------------------------------------------------------------------- data


def cifar() -> dict[str, np.ndarray]:
    with np.load(SHARED / "cifar10_subset.npz") as data:
        return {key: data[key] for key in ("X_train", "y_train", "X_test", "y_test")}


def spambase() -> dict[str, np.ndarray]:
    """Stratified 80/20 split (onnxprune.tabular.split_dataset, seed 0)."""
    from onnxprune.tabular import split_dataset

    with np.load(SHARED / "spambase.npz") as data:
        x, y = data["X"].astype(np.float32), data["y"].astype(np.int64)
    x_train, x_test, y_train, y_test = split_dataset(x, y, 0.2, seed=SEED)
    return {"X_train": x_train, "y_train": y_train, "X_test": x_test, "y_test": y_test}


# ----------------------------------------------------------------------------- models


class Normalize(nn.Module):
    """(x * scale - mean) / std inside the graph, so the ONNX model takes raw values."""

    def __init__(self, mean, std, scale: float = 1.0, shape=(1, -1, 1, 1)):
        super().__init__()
        self.scale = scale
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(shape))

    def forward(self, x):
        return (x * self.scale - self.mean) / self.std


def kept(width: int, k: float) -> int:
    """The channels OCNNA at percentile k leaves of ``width`` (the library's own selection
    rule), so a builder called with k is the pruned architecture."""
    return int(percentile_mask(np.zeros(width), k).sum())


def recipe_epochs(augment: bool) -> int:
    """Training epochs of a recipe: the CIFAR ones augment and train shorter."""
    return CIFAR_EPOCHS if augment else 30


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


def cifar_cnn(k: float = 0) -> nn.Module:
    c1, c2, c3, hidden = (kept(w, k) for w in (16, 32, 64, 128))
    return nn.Sequential(
        Normalize(MEAN, STD, 1 / 255),
        conv_bn(3, c1),
        conv_bn(c1, c2),
        nn.MaxPool2d(2),
        conv_bn(c2, c3),
        nn.MaxPool2d(2),
        conv_bn(c3, c3),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c3 * 4 * 4, hidden),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(hidden, 10),
    )


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(c_in, c_out, stride),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


def cifar_resnet(k: float = 0) -> nn.Module:
    c1, c2, c3 = (kept(w, k) for w in (16, 32, 64))
    return nn.Sequential(
        Normalize(MEAN, STD, 1 / 255),
        conv_bn(3, c1),
        BasicBlock(c1, c1, 1),
        BasicBlock(c1, c2, 2),
        BasicBlock(c2, c3, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c3, 10),
    )


def cifar_resnet20(k: float = 0) -> nn.Module:
    """He et al.'s CIFAR ResNet-20: three stages of three basic blocks (16, 32, 64)."""
    stem = kept(16, k)
    blocks, c_in = [], stem
    for c_out, stride in ((kept(16, k), 1), (kept(32, k), 2), (kept(64, k), 2)):
        for i in range(3):
            blocks.append(BasicBlock(c_in, c_out, stride if i == 0 else 1))
            c_in = c_out
    return nn.Sequential(
        Normalize(MEAN, STD, 1 / 255),
        conv_bn(3, stem),
        *blocks,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c_in, 10),
    )


def spambase_mlp(x_train: np.ndarray, k: float = 0) -> nn.Module:
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0
    h1, h2 = kept(64, k), kept(32, k)
    return nn.Sequential(
        Normalize(mean, std, shape=(1, -1)),
        nn.Linear(57, h1),
        nn.ReLU(),
        nn.Linear(h1, h2),
        nn.ReLU(),
        nn.Linear(h2, 2),
    )


# ----------------------------------------------------------------------------- training


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crops and horizontal flips (the usual CIFAR recipe)."""
    n = images.shape[0]
    padded = nn.functional.pad(images, (4, 4, 4, 4))
    offsets = torch.randint(0, 9, (n, 2), generator=generator)
    crops = torch.stack([padded[i, :, a : a + 32, b : b + 32] for i, (a, b) in enumerate(offsets)])
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], crops.flip(3), crops)


def accuracy(module: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    module.eval()
    with torch.no_grad():
        logits = torch.cat(
            [
                module(torch.from_numpy(x[i : i + 500].astype(np.float32)))
                for i in range(0, len(x), 500)
            ]
        )
    return float((logits.argmax(1).numpy() == y).mean())


def train(module: nn.Module, data: dict, epochs: int, lr: float, augment: bool) -> list[dict]:
    """AdamW with a one-cycle schedule, batch 128; returns the per-epoch log."""
    generator = torch.Generator().manual_seed(SEED)
    x = torch.from_numpy(data["X_train"].astype(np.float32))
    y = torch.from_numpy(data["y_train"])
    steps = epochs * -(-len(x) // 128)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    log = []
    for epoch in range(epochs):
        start = time.perf_counter()
        module.train()
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for i in range(0, len(x), 128):
            index = order[i : i + 128]
            batch = _augment(x[index], generator) if augment else x[index]
            loss = nn.functional.cross_entropy(module(batch), y[index])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            total += float(loss.detach()) * len(index)
        test = accuracy(module, data["X_test"], data["y_test"])
        log.append(
            {
                "epoch": epoch + 1,
                "loss": total / len(x),
                "test_accuracy": test,
                "seconds": time.perf_counter() - start,
            }
        )
        print(f"  epoch {epoch + 1}/{epochs}: {log[-1]}", flush=True)
    return log


def export(module: nn.Module, example: np.ndarray, path: Path) -> onnx.ModelProto:
    module.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.from_numpy(example[:1].astype(np.float32)),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(path)
    return model


def _onnx_accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x.astype(np.float32)})[0]
    return float((logits.argmax(1) == y).mean())


RECIPES = {
    "cifar_cnn": (cifar, lambda data, k=0: cifar_cnn(k), 3e-3, True),
    "cifar_resnet": (cifar, lambda data, k=0: cifar_resnet(k), 3e-3, True),
    "cifar_resnet20": (cifar, lambda data, k=0: cifar_resnet20(k), 3e-3, True),
    "spambase_mlp": (spambase, lambda data, k=0: spambase_mlp(data["X_train"], k), 3e-3, False),
}


def ensure(name: str, epochs: int | None = None, force: bool = False) -> Path:
    """The cached ONNX model ``name`` (trained first when missing or ``force``)."""
    path = CACHE / f"{name}.onnx"
    if path.exists() and not force:
        return path
    load, make, lr, augment = RECIPES[name]
    epochs = epochs or recipe_epochs(augment)
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    data = load()
    module = make(data)
    print(f"training {name} for {epochs} epochs", flush=True)
    start = time.perf_counter()
    log = train(module, data, epochs, lr, augment)
    seconds = time.perf_counter() - start
    model = export(module, data["X_test"], path)
    onnx_accuracy = _onnx_accuracy(model, data["X_test"], data["y_test"])
    record = {
        "model": name,
        "epochs": epochs,
        "lr": lr,
        "augment": augment,
        "train_seconds": seconds,
        "torch_test_accuracy": log[-1]["test_accuracy"],
        "onnx_test_accuracy": onnx_accuracy,
        "parameters": sum(p.numel() for p in module.parameters()),
        "log": log,
    }
    path.with_suffix(".json").write_text(json.dumps(record, indent=2))
    print(f"{name}: test accuracy {onnx_accuracy:.4f} ({seconds:.0f} s) -> {path}", flush=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(RECIPES))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    for name in args.models.split(","):
        ensure(name, args.epochs, args.force)


if __name__ == "__main__":
    main()
