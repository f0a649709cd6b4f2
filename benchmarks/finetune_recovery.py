"""Does a light fine-tune recover OCNNA k = 40? Two real CNNs, measured end to end.

For each model: prune with OCNNA at k (500 balanced training images as D_var), then
fine-tune the pruned ONNX through onnxprune's round trip (ONNX -> torch -> ONNX) for a
budget of 10-15 % of the original training, counted in images seen (epochs x images), and
measure test accuracy with onnxruntime before, after pruning and after fine-tuning.

- MNIST sample CNN (samples/mnist_cnn.onnx, 4 epochs x 60,000 images): 1 pass over 30,000
  training images = 12.5 %. Test: the full 10,000-image MNIST test set.
- CIFAR-10 subset CNN (benchmarks/train_cifar_cnn.py, 15 epochs x 10,000 images with crop +
  flip augmentation): 1 pass over 2 augmented copies of the 10,000 images = 13.3 %.
  Test: the subset's 2,000 test images.

One pass means the eval set (the test set) selects nothing; it only reports. Each model is
run in variants: plain pruning or pruning + least-squares reconstruction (``reconstruct``),
and a few fine-tune learning rates; every variant run is a row of the table.

    python benchmarks/finetune_recovery.py [--models mnist,cifar] [--k 40] [--threads 1]

Prints a Markdown table and rewrites the results block of docs/finetune.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_cifar_cnn  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.finetune.round_trip import finetune  # noqa: E402
from onnxprune.io import input_specs, load_data, load_model  # noqa: E402
from onnxprune.metrics import evaluate  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")
DOC = REPO / "docs" / "finetune.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


@dataclass(frozen=True)
class Variant:
    """How the pruned model starts (``reconstruct``) and how it is fine-tuned."""

    reconstruct: bool
    optimizer: str
    lr: float
    batch_size: int = 128
    momentum: float = 0.0


@dataclass
class Case:
    """One model, its original training budget and the fine-tune set that fits 10-15 %."""

    name: str
    model: Path
    original: str
    original_images: int  # images seen in the original training (epochs x set size)
    dvar: dict
    train: dict
    test: dict
    variants: list[Variant]


def balanced(y: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]
    return rng.permutation(np.concatenate(picks))


def mnist_case() -> Case:
    data = np.load(SHARED / "mnist.npz")
    x, y = data["X_train"], data["y_train"]
    dvar = np.load(REPO / "samples" / "mnist_dvar.npz")
    rows = np.random.default_rng(0).permutation(len(y))[:30_000]
    return Case(
        "MNIST sample CNN",
        REPO / "samples" / "mnist_cnn.onnx",
        "4 epochs x 60,000 images, Adam 1e-3, batch 128",
        4 * 60_000,
        {"x": dvar["x"]},
        {"x": x[rows], "y": y[rows]},
        {"x": data["X_test"], "y": data["y_test"]},
        [Variant(False, "adam", 1e-3), Variant(True, "adam", 1e-3)],
    )


def cifar_case() -> Case:
    path, record = train_cifar_cnn.ensure_model()
    data = np.load(train_cifar_cnn.DATA)
    x, y = data["X_train"], data["y_train"]
    generator = torch.Generator().manual_seed(1)
    copies = [
        train_cifar_cnn.augment(torch.from_numpy(x), generator).numpy().astype(np.uint8)
        for _ in range(2)
    ]
    return Case(
        "CIFAR-10 subset CNN",
        path,
        f"{record['epochs']} epochs x {record['train_images']:,} images, "
        f"{record['optimizer']}, batch {record['batch_size']}, crop + flip",
        record["epochs"] * record["train_images"],
        {"x": x[balanced(y, 50)]},
        {"x": np.concatenate(copies), "y": np.concatenate([y, y])},
        {"x": data["X_test"], "y": data["y_test"]},
        [
            Variant(False, "adam", 1e-3),
            Variant(False, "adam", 3e-4),
            Variant(True, "adam", 1e-3),
            Variant(True, "adam", 3e-4),
            Variant(True, "adam", 1e-4),
        ],
    )


def measure(case: Case, k: float) -> list[dict]:
    """One row per variant; each pruning (with or without reconstruction) is done once."""
    original = load_model(str(case.model))
    test = load_data(case.test, input_specs(original), require_labels=True)
    original_acc = evaluate(original, test, 500)["accuracy"]
    pruned: dict[bool, tuple] = {}
    rows = []
    for variant in case.variants:
        if variant.reconstruct not in pruned:
            start = time.perf_counter()
            model, report = onnxprune.ocnna(
                str(case.model), k=k, data=case.dvar, reconstruct=variant.reconstruct
            )
            seconds = time.perf_counter() - start
            accuracy = evaluate(model, test, 500)["accuracy"]
            pruned[variant.reconstruct] = (model, report, seconds, accuracy)
        model, report, prune_s, pruned_acc = pruned[variant.reconstruct]
        start = time.perf_counter()
        tuned, extra = finetune(
            model,
            case.train,
            case.test,
            epochs=1,
            lr=variant.lr,
            batch_size=variant.batch_size,
            optimizer=variant.optimizer,
            momentum=variant.momentum,
        )
        finetune_s = time.perf_counter() - start
        tuned_acc = evaluate(tuned, test, 500)["accuracy"]
        assert abs(tuned_acc - extra["accuracy_finetuned"]) < 1e-12
        rows.append(
            {
                "case": case,
                "variant": variant,
                "acc": {"original": original_acc, "pruned": pruned_acc, "finetuned": tuned_acc},
                "rpr": report["remaining_params_ratio"],
                "flops": report["flops_after"] / report["flops_before"],
                "params": (report["params_before"], report["params_after"]),
                "budget": len(case.train["y"]) / case.original_images,
                "images": len(case.train["y"]),
                "prune_s": prune_s,
                "finetune_s": finetune_s,
            }
        )
        print(row_line(rows[-1]), flush=True)
    return rows


def row_line(row: dict) -> str:
    """One table row: accuracies, change against the original, budget, timings."""
    case, acc, variant = row["case"], row["acc"], row["variant"]
    change = 100 * (acc["finetuned"] - acc["original"])
    return (
        f"| {case.name} | {'+ reconstruction' if variant.reconstruct else 'plain'} | "
        f"{variant.optimizer} lr {variant.lr:g}, batch {variant.batch_size} | "
        f"{row['params'][0]:,} -> {row['params'][1]:,} ({row['rpr']:.3f}) | "
        f"{row['flops']:.3f} | {100 * acc['original']:.2f}% | {100 * acc['pruned']:.2f}% | "
        f"{100 * acc['finetuned']:.2f}% | {change:+.2f} pt | "
        f"{row['images']:,} images = {100 * row['budget']:.1f}% | {row['prune_s']:.1f} | "
        f"{row['finetune_s']:.1f} | {'yes' if change >= -1 else 'no'} |"
    )


def table(rows: list[dict], k: float, threads: int) -> str:
    lines = [
        f"OCNNA k = {k:g} with mean compensation; 500 balanced training images as D_var; "
        '"+ reconstruction" also refits the layers that lost inputs by least squares on '
        "D_var (`--reconstruct`). Fine-tune: 1 pass over the fine-tune set, seed 0, "
        "cross-entropy. Accuracy measured with onnxruntime on the test sets. Machine: "
        f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs, "
        f"{threads} torch thread(s), Python {platform.python_version()}, torch "
        f"{torch.__version__}, onnxruntime {onnxruntime.__version__}.",
        "",
        "| model | pruning | fine-tune | params before -> after (RPR) | FLOPs ratio | "
        "original | pruned | fine-tuned | change | fine-tune budget | prune (s) | "
        "fine-tune (s) | within 1 pt |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    lines += [row_line(row) for row in rows]
    lines += ["", "Original training:", ""]
    seen = []
    for row in rows:
        if row["case"].name not in seen:
            seen.append(row["case"].name)
            lines.append(f"- {row['case'].name}: {row['case'].original}.")
    return "\n".join(lines)


def write_doc(text: str) -> None:
    """Replace the results block of docs/finetune.md (append one if it has none)."""
    block = f"{START}\n{text}\n{END}"
    doc = DOC.read_text() if DOC.exists() else "# Fine-tuning after pruning\n"
    if START in doc and END in doc:
        head, rest = doc.split(START, 1)
        doc = head + block + rest.split(END, 1)[1]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mnist,cifar")
    parser.add_argument("--k", type=float, default=40.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on busy CPUs)")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    makers = {"mnist": mnist_case, "cifar": cifar_case}
    rows = [row for name in args.models.split(",") for row in measure(makers[name](), args.k)]
    text = table(rows, args.k, args.threads)
    print(text)
    if not args.no_doc:
        write_doc(text)
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
