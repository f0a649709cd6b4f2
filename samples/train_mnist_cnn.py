"""Train the small MNIST CNN shipped in samples/ and export it, with its data files, for onnxprune.

Deterministic (fixed seeds, 2 CPU threads, deterministic kernels). Run from anywhere:

    python samples/train_mnist_cnn.py [--data PATH/TO/mnist.npz] [--out-dir samples]

Writes ``mnist_cnn.onnx`` (input ``input``: float32 raw pixel values 0..255, N x 1 x 28 x 28;
output ``logits``: N x 10) plus ``mnist_dvar.npz`` (500 balanced training images for the
importance pass), ``mnist_test.npz`` (first 2000 test images) and ``mnist_train.npz`` (6000
balanced training images, disjoint from dvar, for fine-tuning). ``x`` is stored as uint8.
"""

from __future__ import annotations

import argparse
import collections
import random
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

SEED = 0
EPOCHS = 4  # fine-tuning after pruning uses 10-15 % of this
BATCH_SIZE = 128
LR = 1e-3
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
DVAR_PER_CLASS = 50
TRAIN_PER_CLASS = 600
N_TEST = 2000
OPSET = 17
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/mnist.npz"
DEFAULT_OUT = Path(__file__).resolve().parent


class MnistCNN(nn.Module):
    """Four 3x3 conv blocks (BN + ReLU, two max-pools) and a two-layer classifier head.

    Takes raw pixel values (0..255) as float32; normalisation happens inside the graph.
    """

    def __init__(self, dropout: float = 0.3) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, 16),
            *block(16, 32),
            nn.MaxPool2d(2),
            *block(32, 64),
            nn.MaxPool2d(2),
            *block(64, 64),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(128, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map raw pixels (N, 1, 28, 28) to class logits (N, 10)."""
        x = (x / 255.0 - MNIST_MEAN) / MNIST_STD
        return self.classifier(self.features(x))


def seed_everything(seed: int) -> None:
    """Fix every RNG and make torch single-process deterministic on 2 threads."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)


def balanced_splits(
    y: np.ndarray, per_class_a: int, per_class_b: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint, class-balanced, shuffled index sets drawn from labels ``y``."""
    rng = np.random.default_rng(seed)
    part_a, part_b = [], []
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        part_a.append(idx[:per_class_a])
        part_b.append(idx[per_class_a : per_class_a + per_class_b])
    a = rng.permutation(np.concatenate(part_a))
    b = rng.permutation(np.concatenate(part_b))
    assert not np.intersect1d(a, b).size
    return a, b


@torch.no_grad()
def torch_predict(model: nn.Module, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    """Logits for uint8 images ``x`` (cast to float32), in eval mode."""
    model.eval()
    out = [
        model(torch.from_numpy(x[i : i + batch].astype(np.float32))).numpy()
        for i in range(0, len(x), batch)
    ]
    return np.concatenate(out)


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    epochs: int,
) -> None:
    """Adam training; prints per-epoch mean loss, train accuracy and test accuracy."""
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    xt = torch.from_numpy(x.astype(np.float32))
    yt = torch.from_numpy(y)
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(xt), generator=gen)
        total_loss, correct = 0.0, 0
        for i in range(0, len(perm), BATCH_SIZE):
            idx = perm[i : i + BATCH_SIZE]
            logits = model(xt[idx])
            loss = loss_fn(logits, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yt[idx]).sum())
        test_acc = float((torch_predict(model, x_test).argmax(1) == y_test).mean())
        print(
            f"epoch {epoch}/{epochs}: loss {total_loss / len(xt):.4f}  "
            f"train acc {100 * correct / len(xt):.2f}%  test acc {100 * test_acc:.2f}%  "
            f"({time.perf_counter() - t0:.1f}s)",
            flush=True,
        )


def export_onnx(model: nn.Module, path: Path) -> None:
    """TorchScript-based export (dynamo=False), opset 17, dynamic batch axis."""
    model.eval()
    dummy = torch.zeros(1, 1, 28, 28, dtype=torch.float32)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def verify_onnx(path: Path, x: np.ndarray, y: np.ndarray, torch_logits: np.ndarray) -> float:
    """Check the model, compare onnxruntime with torch on (x, y), print op types; return acc."""
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    print("onnx.checker: OK")
    ops = collections.Counter(node.op_type for node in proto.graph.node)
    print("ONNX op types:", dict(sorted(ops.items())), f"({len(proto.graph.node)} nodes)")
    folded = "BatchNormalization" not in ops
    print("BatchNorm folded into Conv by exporter:", folded)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ort_logits = sess.run(None, {"input": x.astype(np.float32)})[0]
    ort_acc = float((ort_logits.argmax(1) == y).mean())
    torch_acc = float((torch_logits.argmax(1) == y).mean())
    max_diff = float(np.abs(ort_logits - torch_logits).max())
    print(
        f"{path.name} on {len(x)} test images: torch {100 * torch_acc:.2f}%  "
        f"onnxruntime {100 * ort_acc:.2f}%  max |logit diff| {max_diff:.2e}"
    )
    if abs(ort_acc - torch_acc) > 0.001:
        raise SystemExit("onnxruntime and torch accuracies differ by more than 0.1 pt")
    return ort_acc


def main() -> None:
    """Train, export, write the data files and verify."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MNIST .npz")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args()

    seed_everything(SEED)
    data = np.load(args.data)
    x_train, y_train = data["X_train"], data["y_train"]
    x_test, y_test = data["X_test"], data["y_test"]

    model = MnistCNN()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,}  training on {len(x_train)} images for {EPOCHS} epochs")
    t0 = time.perf_counter()
    train(model, x_train, y_train, x_test, y_test, EPOCHS)
    print(f"training time: {time.perf_counter() - t0:.1f}s")
    model.eval()
    full_acc = float((torch_predict(model, x_test).argmax(1) == y_test).mean())
    print(f"torch accuracy on full test set ({len(x_test)}): {100 * full_acc:.2f}%")

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "mnist_cnn.onnx"
    export_onnx(model, onnx_path)

    dvar_idx, ft_idx = balanced_splits(y_train, DVAR_PER_CLASS, TRAIN_PER_CLASS, SEED)
    splits = {
        "mnist_dvar.npz": (x_train[dvar_idx], y_train[dvar_idx]),
        "mnist_test.npz": (x_test[:N_TEST], y_test[:N_TEST]),
        "mnist_train.npz": (x_train[ft_idx], y_train[ft_idx]),
    }
    for name, (x, y) in splits.items():
        np.savez_compressed(out / name, x=x.astype(np.uint8), y=y.astype(np.int64))

    x_small, y_small = splits["mnist_test.npz"]
    verify_onnx(onnx_path, x_small, y_small, torch_predict(model, x_small))
    for name in ["mnist_cnn.onnx", *splits]:
        print(f"{name}: {(out / name).stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
