"""Train the small VGG-style CNNs on the CIFAR-10 subset that the fine-tune benchmark prunes.

Why a script: the fine-tune recovery table (docs/finetune.md) needs a second, harder real
model than the MNIST sample, and no weights can be downloaded here. Deterministic (seed 0,
one thread, deterministic kernels); the result is cached under ``.cache/cifar/``
(gitignored), so `finetune_recovery.py` trains it only once:

    python benchmarks/train_cifar_cnn.py [--epochs 15] [--force]
    python benchmarks/train_cifar_cnn.py --wide
    python benchmarks/train_cifar_cnn.py --stages 20/39,39/77,77 --hidden 77

``--wide`` trains the over-parameterised variant, twice the channels and dense width of the
default (2.16 M instead of 0.54 M parameters, ~3x the compute per step; cached as
``cifar_cnn_wide``): pruning papers report their small losses on networks with capacity to
spare, and the default net has none at k = 40. ``--stages``/``--hidden`` train any other
widths with the same recipe from scratch (cached as ``cifar_cnn_<widths>``): with the widths
OCNNA k = 40 leaves, it shows what the pruned architecture reaches with the full training
budget, the ceiling a short fine-tune can hope for.

Writes ``cifar_cnn.onnx`` (input ``input``: float32 raw pixel values 0..255, N x 3 x 32 x
32; output ``logits``: N x 10; opset 17, TorchScript exporter, dynamic batch) and
``cifar_cnn.json`` (recipe, per-epoch log, accuracy, timings); likewise ``cifar_cnn_wide.*``.
Data: the 10,000 training images of ``cifar10_subset.npz``; accuracy is measured on its
2,000 test images.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "cifar"
DATA = REPO.parent / "shared" / "data" / "cifar10_subset.npz"
if not DATA.exists():
    DATA = Path("/work/shared/data/cifar10_subset.npz")

SEED = 0
EPOCHS = 15  # the fine-tune benchmark uses 10-15 % of this
BATCH_SIZE = 128
LR = 2e-3
WEIGHT_DECAY = 5e-4
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
STAGES = ((32,), (64, 64), (128, 128))  # conv widths per stage; a max-pool ends each
HIDDEN = 128  # width of the dense hidden layer
WIDE_STAGES = ((64,), (128, 128), (256, 256))  # --wide: twice the channels
WIDE_HIDDEN = 256
THREADS = 1  # on 2 contended cores 1 thread trained ~3x faster than 2
OPSET = 17


class CifarCNN(nn.Module):
    """Stages of 3x3 conv + BN + ReLU, a max-pool after each, then a two-layer dense head.

    Takes raw pixel values (0..255) as float32; normalisation is part of the graph. The
    first stage has one conv only: full-resolution convs dominate CPU training time.
    """

    def __init__(
        self,
        stages: tuple[tuple[int, ...], ...] = STAGES,
        dropout: float = 0.3,
        hidden: int = HIDDEN,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for widths in stages:
            for width in widths:
                layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
                c_in = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * 4 * 4, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 10),
        )
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features((x - self.mean) / self.std))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32x32 crops of the 4-pixel zero-padded images and random horizontal flips."""
    n = len(x)
    padded = nn.functional.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=generator)
    dy = torch.randint(0, 9, (n,), generator=generator)
    crops = torch.stack([padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(n)])
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), crops.flip(3), crops)


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    model.eval()
    hits = 0
    for i in range(0, len(x), batch):
        logits = model(torch.from_numpy(x[i : i + batch].astype(np.float32)))
        hits += int((logits.argmax(1).numpy() == y[i : i + batch]).sum())
    return hits / len(x)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, x_test, y_test, epochs: int) -> list:
    """AdamW with a one-cycle learning rate; crop + flip augmentation; per-epoch log."""
    steps = -(-len(x) // BATCH_SIZE)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, LR, epochs=epochs, steps_per_epoch=steps)
    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(SEED)
    log = []
    for epoch in range(1, epochs + 1):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(xt), generator=generator)
        loss_sum = 0.0
        for i in range(0, len(order), BATCH_SIZE):
            idx = order[i : i + BATCH_SIZE]
            loss = nn.functional.cross_entropy(model(augment(xt[idx], generator)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
        row = {
            "epoch": epoch,
            "loss": loss_sum / len(xt),
            "test_accuracy": accuracy(model, x_test, y_test),
            "seconds": time.perf_counter() - started,
        }
        log.append(row)
        print(
            f"epoch {epoch}/{epochs}: loss {row['loss']:.4f}  test acc "
            f"{100 * row['test_accuracy']:.2f}%  ({row['seconds']:.1f}s)",
            flush=True,
        )
    return log


def export(model: nn.Module, path: Path) -> None:
    """TorchScript exporter (dynamo=False, deliberately: its deprecation notice is muted)."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 32, 32),),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x.astype(np.float32)})[0]
    return float((logits.argmax(1) == y).mean())


def cache_name(stages: tuple[tuple[int, ...], ...], hidden: int) -> str:
    """``cifar_cnn`` for the default widths, ``cifar_cnn_wide``, else the widths spelled out."""
    if stages == STAGES and hidden == HIDDEN:
        return "cifar_cnn"
    if stages == WIDE_STAGES and hidden == WIDE_HIDDEN:
        return "cifar_cnn_wide"
    widths = "_".join("-".join(str(w) for w in stage) for stage in stages)
    return f"cifar_cnn_{widths}_h{hidden}"


def ensure_model(
    epochs: int = EPOCHS,
    force: bool = False,
    stages: tuple[tuple[int, ...], ...] = STAGES,
    hidden: int = HIDDEN,
) -> tuple[Path, dict]:
    """The cached model and its training record; trains (minutes) only when missing."""
    name = cache_name(stages, hidden)
    onnx_path, record_path = CACHE / f"{name}.onnx", CACHE / f"{name}.json"
    if onnx_path.exists() and record_path.exists() and not force:
        record = json.loads(record_path.read_text())
        if record["epochs"] == epochs:
            return onnx_path, record
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    data = np.load(DATA)
    x, y, x_test, y_test = data["X_train"], data["y_train"], data["X_test"], data["y_test"]
    model = CifarCNN(stages, hidden=hidden)
    started = time.perf_counter()
    log = train(model, x, y, x_test, y_test, epochs)
    seconds = time.perf_counter() - started
    torch_acc = accuracy(model, x_test, y_test)
    tmp = onnx_path.with_suffix(".tmp.onnx")
    export(model, tmp)
    ort_acc = onnx_accuracy(tmp, x_test, y_test)
    if abs(ort_acc - torch_acc) > 0.001:
        raise SystemExit(f"onnxruntime {ort_acc:.4f} and torch {torch_acc:.4f} disagree")
    tmp.replace(onnx_path)
    record = {
        "epochs": epochs,
        "batch_size": BATCH_SIZE,
        "optimizer": f"AdamW lr {LR} (one-cycle), weight decay {WEIGHT_DECAY}",
        "augmentation": "random crop (pad 4) + horizontal flip",
        "stages": [list(stage) for stage in stages],
        "hidden": hidden,
        "train_images": int(len(x)),
        "test_images": int(len(x_test)),
        "params": int(sum(p.numel() for p in model.parameters())),
        "test_accuracy_torch": torch_acc,
        "test_accuracy_onnx": ort_acc,
        "train_seconds": seconds,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "log": log,
    }
    record_path.write_text(json.dumps(record, indent=2))
    return onnx_path, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--force", action="store_true", help="retrain even if cached")
    parser.add_argument(
        "--stages",
        default="32/64,64/128,128",
        help="conv widths: stages split by /, widths in a stage by ,",
    )
    parser.add_argument("--hidden", type=int, default=HIDDEN, help="dense hidden width")
    parser.add_argument(
        "--wide",
        action="store_true",
        help="the over-parameterised variant: twice the channels and dense width",
    )
    args = parser.parse_args()
    stages = tuple(tuple(int(w) for w in stage.split(",")) for stage in args.stages.split("/"))
    if args.wide:
        stages, args.hidden = WIDE_STAGES, WIDE_HIDDEN
    path, record = ensure_model(args.epochs, args.force, stages, args.hidden)
    print(
        f"{path}: {record['params']:,} parameters, test accuracy "
        f"{100 * record['test_accuracy_onnx']:.2f}% (onnxruntime), "
        f"trained {record['epochs']} epochs in {record['train_seconds']:.0f}s"
    )


if __name__ == "__main__":
    main()
