"""What the pruned architecture itself can reach: issue 8's 3-point target, in context.

docs/recovery.md asks the label-free recovery (reconstruction, then distillation on D_var)
to bring a model pruned at k = 40 within 3 points of the original. That can only work
when the pruned architecture is able to hold the original's accuracy at all. Here the
exact k = 40 architecture of each CIFAR model (every layer keeps the channels OCNNA
keeps: M - floor(0.4 M)) is trained from scratch with the labelled training set and the
original's full recipe (benchmarks/train_cifar_cnns.py: 10 epochs, AdamW one-cycle,
crops and flips), over several initialisation seeds; beside it, the label-free recovery
of the pruned original over several draws of D_var (which 500 images it sees matters by
about a point on these small test sets).

    python benchmarks/recovery_capacity.py [--models cifar_resnet,...] [--seeds 0,1]
    # cifar_cnn + cifar_resnet: ~25 min on 2 cores (ResNet-20: add ~1 h);
    # runs are cached in .cache/recovery/capacity.json; writes docs/recovery-capacity.md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import recovery  # noqa: E402
import train_cifar_cnns as zoo  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune import progress  # noqa: E402

K = 40
RESULTS = zoo.CACHE / "capacity.json"


def scratch(name: str, seed: int) -> float:
    """Test accuracy of the k = 40 architecture of ``name`` trained from scratch."""
    load, make, lr, augment = zoo.RECIPES[name]
    data = load()
    torch.manual_seed(seed)
    module = make(data, K)
    epochs = zoo.CIFAR_EPOCHS if augment else 30
    print(f"training the k={K} architecture of {name} from scratch (seed {seed})", flush=True)
    return zoo.train(module, data, epochs, lr, augment)[-1]["test_accuracy"]


def _mean_se(values: list[float]) -> str:
    a = 100 * np.asarray(values)
    if len(a) == 1:
        return f"{a[0]:.1f}"
    return f"{a.mean():.1f} ± {a.std(ddof=1) / np.sqrt(len(a)):.1f}"


def label_free(name: str, draw: int, distill: int) -> float:
    """Accuracy right after OCNNA at k = 40 with reconstruction (and ``distill`` epochs of
    distillation) on D_var draw ``draw``: 500 training images without their labels, drawn
    by permutation seed ``draw`` (draw 0 is recovery.md's D_var)."""
    setup = recovery.task(name)
    train = setup["train"]["x"]
    dvar = train[np.random.default_rng(draw).permutation(len(train))[: recovery.DVAR_SIZE]]
    result = onnxprune.ocnna(
        str(setup["model"]), K, data=dvar, eval_data=setup["test"], distill=distill
    )
    return result.report["accuracy_after"]


COLUMNS = {"OCNNA + reconstruction": 0, "+ distillation": recovery.DISTILL_EPOCHS}


def table(runs: dict, models: list[str]) -> list[str]:
    lines = [
        f"| model | original | k={K} architecture from scratch, with labels | "
        + " | ".join(f"{column}, no labels" for column in COLUMNS)
        + " |",
        "|---|---:|---:|" + "---:|" * len(COLUMNS),
    ]
    for name in models:
        original = json.loads(zoo.ensure(name).with_suffix(".json").read_text())
        cells = [f"{100 * original['onnx_test_accuracy']:.1f}"]
        for column in ("scratch", *COLUMNS):
            values = list(runs.get(name, {}).get(column, {}).values())
            cells.append(f"{_mean_se(values)} ({len(values)})" if values else "-")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def _measure(runs: dict, name: str, column: str, key: str, compute, *args) -> None:
    """One cached run: ``compute(name, *args)`` unless ``runs`` holds it; saved at once."""
    done = runs.setdefault(name, {}).setdefault(column, {})
    if key not in done:
        done[key] = compute(name, *args)
        RESULTS.write_text(json.dumps(runs, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cifar_cnn,cifar_resnet")
    parser.add_argument("--seeds", default="0,1", help="initialisation seeds from scratch")
    parser.add_argument("--draws", default="0,1,2,3,4", help="D_var draws (permutation seeds)")
    parser.add_argument("--out", default=str(zoo.REPO / "docs" / "recovery-capacity.md"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    models = args.models.split(",")
    runs = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    progress.set_quiet(True)
    for name in models:
        for seed in args.seeds.split(","):
            _measure(runs, name, "scratch", seed, scratch, int(seed))
        for draw in args.draws.split(","):
            for column, epochs in COLUMNS.items():
                _measure(runs, name, column, draw, label_free, int(draw), epochs)
    lines = [
        f"# Capacity of the k = {K} architectures (issue 8's 3-point target)",
        "",
        "Generated by `benchmarks/recovery_capacity.py`. Top-1 test accuracy (%) on the "
        "2,000 CIFAR-10-subset test images. *From scratch*: the pruned architecture (each "
        f"layer keeps M - floor({K}% x M) channels, as OCNNA at k = {K} does) trained on "
        "the 10,000 labelled training images with the original's recipe, mean ± standard "
        "error over initialisation seeds (their count in brackets). The last two columns are "
        "the original pruned by OCNNA and recovered on 500 unlabelled training images "
        "(D_var, as in [recovery.md](recovery.md)), right after pruning, mean ± standard "
        "error over D_var draws (draw 0 is recovery.md's). "
        f"Machine: {platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}.",
        "",
        *table(runs, models),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
