"""The torch trainer: real data, best-epoch restore, determinism, softmax heads, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from paths import SHARED_DATA as DATA  # noqa: E402
from torch import nn

from onnxprune.errors import DataError, ParameterError
from onnxprune.finetune.trainer import LRSchedule, TrainData, TrainResult, evaluate, train
from onnxprune.mlp import build_mlp
from onnxprune.tabular import Standardizer, split_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train many times faster on one thread, above all on a busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    data = np.load(DATA / "iris.npz")
    return split_dataset(data["X"], data["y"], test_fraction=0.3, seed=0)


@pytest.fixture(scope="module")
def pole() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """2000 rows of Pole, targets standardised with the training statistics."""
    data = np.load(DATA / "pole.npz")
    rows = np.random.default_rng(0).permutation(len(data["y"]))[:2000]
    x_tr, x_te, y_tr, y_te = split_dataset(data["X"][rows], data["y"][rows], 0.25, seed=0)
    mean, std = y_tr.mean(), y_tr.std()
    return x_tr, x_te, ((y_tr - mean) / std).astype(np.float32), ((y_te - mean) / std)


def iris_mlp(x_train: np.ndarray, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_mlp(4, 3, 2, 16, standardizer=Standardizer.fit(x_train))


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- learning


def test_iris_reaches_90_percent_quickly(iris) -> None:
    x_tr, x_te, y_tr, y_te = iris
    module = iris_mlp(x_tr)
    start = time.perf_counter()
    result = train(
        module,
        TrainData(x_tr, y_tr),
        TrainData(x_te, y_te),
        "classification",
        epochs=60,
        lr=1e-2,
        batch_size=16,
        progress=False,
    )
    elapsed = time.perf_counter() - start
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.metric == "accuracy"
    assert evaluate(module, TrainData(x_te, y_te), "classification") >= 0.9
    assert elapsed < 30, f"60 Iris epochs took {elapsed:.1f}s"


def test_best_epoch_is_restored(iris) -> None:
    """An eval set with shifted labels gets worse as the model learns: best is early."""
    x_tr, x_te, y_tr, y_te = iris
    adversarial = TrainData(x_te, (y_te + 1) % 3)
    module = iris_mlp(x_tr)
    result = train(
        module,
        TrainData(x_tr, y_tr),
        adversarial,
        "classification",
        epochs=25,
        lr=1e-2,
        batch_size=16,
        progress=False,
    )
    final = result.history[-1]["eval_metric"]
    assert final is not None and final < result.best_metric
    assert result.best_epoch < len(result.history)
    assert result.history[result.best_epoch - 1]["eval_metric"] == result.best_metric
    assert evaluate(module, adversarial, "classification") == result.best_metric


def test_best_metric_matches_evaluate_for_regression(pole) -> None:
    x_tr, x_te, y_tr, y_te = pole
    torch.manual_seed(0)
    module = build_mlp(26, 1, 2, 32, standardizer=Standardizer.fit(x_tr))
    held_out = TrainData(x_te, y_te)
    result = train(
        module, TrainData(x_tr, y_tr), held_out, "regression", epochs=12, lr=3e-3, progress=False
    )
    assert result.metric == "mse"
    assert evaluate(module, held_out, "regression") == pytest.approx(result.best_metric, rel=1e-9)


def test_regression_beats_the_mean_on_pole(pole) -> None:
    x_tr, x_te, y_tr, y_te = pole
    torch.manual_seed(0)
    module = build_mlp(26, 1, 2, 32, standardizer=Standardizer.fit(x_tr))
    result = train(
        module, TrainData(x_tr, y_tr), None, "regression", epochs=12, lr=3e-3, progress=False
    )
    baseline = float(np.mean((y_te - y_tr.mean()) ** 2))
    mse = evaluate(module, TrainData(x_te, y_te), "regression")
    assert mse < 0.3 * baseline
    assert result.metric == "train_loss"
    assert result.best_metric == min(row["loss"] for row in result.history)


def test_early_stopping_counts_epochs_without_improvement(iris) -> None:
    x_tr, x_te, y_tr, y_te = iris
    module = iris_mlp(x_tr)
    result = train(
        module,
        TrainData(x_tr, y_tr),
        TrainData(x_te, (y_te + 1) % 3),
        "classification",
        epochs=50,
        lr=5e-2,
        batch_size=16,
        patience=3,
        progress=False,
    )
    assert result.stopped_early
    assert result.epochs_run == result.best_epoch + 3
    assert result.epochs_run < 50


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_weights(iris) -> None:
    x_tr, x_te, y_tr, y_te = iris

    def run(seed: int) -> tuple[dict[str, torch.Tensor], TrainResult]:
        module = iris_mlp(x_tr, seed=0)
        result = train(
            module,
            TrainData(x_tr, y_tr),
            TrainData(x_te, y_te),
            "classification",
            epochs=8,
            batch_size=8,
            seed=seed,
            progress=False,
        )
        return state(module), result

    first, result_a = run(3)
    second, result_b = run(3)
    other, _ = run(4)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert result_a.history == result_b.history
    assert any(not torch.equal(first[k], other[k]) for k in first if "weight" in k)


def test_global_flags_are_restored(iris) -> None:
    x_tr, _, y_tr, _ = iris
    module = iris_mlp(x_tr)
    module.train(False)
    before = torch.are_deterministic_algorithms_enabled()
    train(module, TrainData(x_tr, y_tr), None, "classification", epochs=1, progress=False)
    assert torch.are_deterministic_algorithms_enabled() == before
    assert module.training is False


# ----------------------------------------------------------------------------- lr schedule


def test_schedule_values_warm_up_linearly_then_decay_by_cosine() -> None:
    plan = LRSchedule(0.1, total_steps=100, schedule="cosine", warmup=0.1)
    values = [plan(step) for step in range(100)]
    assert plan.warmup_steps == 10
    assert values[:10] == pytest.approx([0.01 * (i + 1) for i in range(10)])
    assert values[10] == 0.1  # the peak, then a cosine over the remaining 90 steps
    assert values[55] == pytest.approx(0.05)  # halfway through the decay
    assert all(a > b for a, b in zip(values[10:], values[11:]))
    assert 0 < values[-1] < 1e-3 * 0.1  # ~0, never exactly 0
    constant = LRSchedule(0.1, total_steps=100, schedule="constant", warmup=0.05)
    assert [constant(step) for step in (0, 4, 5, 99)] == pytest.approx([0.02, 0.1, 0.1, 0.1])
    assert LRSchedule(0.1, total_steps=7, warmup=0.01).warmup_steps == 1  # at least one step


def test_optimizer_steps_with_the_scheduled_learning_rate(iris) -> None:
    """Plain SGD moves each weight by exactly lr_t * grad_t: the schedule reaches the optimizer."""
    x_tr, _, y_tr, _ = iris
    module = iris_mlp(x_tr)
    weight = next(module.parameters())
    previous = [weight.detach().clone()]
    seen: list[tuple[int, float]] = []
    applied: list[float] = []

    def hook(step: int, lr: float, loss: float) -> None:
        seen.append((step, lr))
        assert weight.grad is not None
        moved = previous[-1] - weight.detach()
        applied.append(float((moved * weight.grad).sum() / (weight.grad * weight.grad).sum()))
        previous.append(weight.detach().clone())

    epochs, batch = 4, 16
    result = train(
        module,
        TrainData(x_tr, y_tr),
        None,
        "classification",
        epochs=epochs,
        lr=0.05,
        batch_size=batch,
        optimizer="sgd",
        schedule="cosine",
        warmup=0.2,
        progress=False,
        on_step=hook,
    )
    steps_per_epoch = -(-len(y_tr) // batch)
    plan = LRSchedule(0.05, epochs * steps_per_epoch, "cosine", 0.2)
    assert [s for s, _ in seen] == list(range(1, epochs * steps_per_epoch + 1))
    assert [lr for _, lr in seen] == [plan(step) for step in range(len(seen))]
    assert applied == pytest.approx([lr for _, lr in seen], rel=2e-3)  # float32 steps
    peak = max(lr for _, lr in seen)
    assert seen[0][1] < 0.2 * peak and seen[-1][1] < 0.01 * peak
    assert [row["lr"] for row in result.history] == [
        seen[epoch * steps_per_epoch - 1][1] for epoch in range(1, epochs + 1)
    ]


def test_constant_schedule_keeps_the_learning_rate_and_the_old_results(iris) -> None:
    x_tr, x_te, y_tr, y_te = iris
    lrs: list[float] = []
    runs = []
    for options in ({}, {"schedule": "constant", "warmup": 0.0}, {"schedule": "cosine"}):
        module = iris_mlp(x_tr)
        result = train(
            module,
            TrainData(x_tr, y_tr),
            TrainData(x_te, y_te),
            "classification",
            epochs=3,
            lr=1e-2,
            batch_size=16,
            progress=False,
            on_step=lambda step, lr, loss: lrs.append(lr),
            **options,
        )
        runs.append((state(module), result.history))
    steps = 3 * -(-len(y_tr) // 16)
    assert lrs[: 2 * steps] == [1e-2] * (2 * steps)
    assert runs[0][1] == runs[1][1]
    assert all(torch.equal(runs[0][0][k], runs[1][0][k]) for k in runs[0][0])
    assert runs[2][1] != runs[0][1]  # cosine really changes training


def test_cosine_schedule_is_deterministic_per_seed(iris) -> None:
    x_tr, _, y_tr, _ = iris

    def run() -> dict[str, torch.Tensor]:
        module = iris_mlp(x_tr)
        options = dict(epochs=3, batch_size=8, schedule="cosine", warmup=0.1, progress=False)
        train(module, TrainData(x_tr, y_tr), None, "classification", **options)
        return state(module)

    first, second = run(), run()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize(
    "options, word",
    [
        ({"schedule": "step"}, "schedule"),
        ({"schedule": None}, "schedule"),
        ({"warmup": -0.1}, "warmup"),
        ({"warmup": 1.0}, "warmup"),
        ({"warmup": float("nan")}, "warmup"),
        ({"momentum": -0.5, "optimizer": "sgd"}, "momentum"),
    ],
)
def test_bad_schedule_options_are_one_line_parameter_errors(iris, options, word) -> None:
    x_tr, _, y_tr, _ = iris
    module = iris_mlp(x_tr)
    before = state(module)
    with pytest.raises(ParameterError, match=word) as raised:
        train(module, TrainData(x_tr, y_tr), None, "classification", epochs=1, **options)
    assert "\n" not in str(raised.value)
    assert all(torch.equal(before[k], v) for k, v in state(module).items())


# ----------------------------------------------------------------------------- softmax heads


class SoftmaxHead(nn.Module):
    """Like a converted ONNX classifier: Softmax at the end, switchable to logits."""

    ends_with_probabilities = True

    def __init__(self, body: nn.Module, switchable: bool) -> None:
        super().__init__()
        self.body = body
        self.calls_with_logits: list[bool] = []
        if switchable:
            self.return_logits = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.body(x)
        use_logits = bool(getattr(self, "return_logits", False))
        if self.training:
            self.calls_with_logits.append(use_logits)
        return logits if use_logits else torch.softmax(logits, dim=1)


@pytest.mark.parametrize("switchable", [True, False])
def test_softmax_model_trains(iris, switchable: bool) -> None:
    x_tr, x_te, y_tr, y_te = iris
    module = SoftmaxHead(iris_mlp(x_tr), switchable)
    train(
        module,
        TrainData(x_tr, y_tr),
        TrainData(x_te, y_te),
        "classification",
        epochs=60,
        lr=1e-2,
        batch_size=16,
        progress=False,
    )
    assert module.calls_with_logits and all(c == switchable for c in module.calls_with_logits)
    if switchable:
        assert module.return_logits is False  # restored: the export keeps its Softmax
    with torch.no_grad():
        probs = module(torch.from_numpy(x_te[:5]))
    assert torch.allclose(probs.sum(dim=1), torch.ones(5), atol=1e-5)
    assert evaluate(module, TrainData(x_te, y_te), "classification") >= 0.9


def test_softmax_switch_uses_cross_entropy_on_logits(iris) -> None:
    """First-epoch loss of the switchable head equals plain CE training of its body."""
    x_tr, _, y_tr, _ = iris
    kwargs = dict(epochs=2, batch_size=16, progress=False, seed=1)
    head = SoftmaxHead(iris_mlp(x_tr), switchable=True)
    plain = iris_mlp(x_tr)
    a = train(head, TrainData(x_tr, y_tr), None, "classification", **kwargs)
    b = train(plain, TrainData(x_tr, y_tr), None, "classification", **kwargs)
    assert a.history == b.history


class SigmoidHead(SoftmaxHead):
    """A converted model ending in Sigmoid: one unit (binary) or a [0, 1] regressor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.body(x)[:, :1]
        use_logits = bool(self.return_logits)
        if self.training:
            self.calls_with_logits.append(use_logits)
        return logits if use_logits else torch.sigmoid(logits)


def test_sigmoid_regressor_trains_through_its_sigmoid(iris) -> None:
    """Targets in [0, 1] behind a final Sigmoid: MSE on the probabilities, never logits."""
    x_tr, _, y_tr, _ = iris
    head = SigmoidHead(iris_mlp(x_tr), switchable=True)
    targets = (y_tr == 2).astype(np.float32)
    train(head, TrainData(x_tr, targets), None, "regression", epochs=2, progress=False)
    assert head.calls_with_logits and not any(head.calls_with_logits)


def test_one_sigmoid_unit_trains_on_logits_with_binary_cross_entropy(iris) -> None:
    x_tr, x_te, y_tr, y_te = iris
    head = SigmoidHead(iris_mlp(x_tr), switchable=True)
    binary_tr, binary_te = (y_tr == 2).astype(np.int64), (y_te == 2).astype(np.int64)
    kwargs = dict(epochs=40, lr=1e-2, batch_size=16, progress=False)
    train(head, TrainData(x_tr, binary_tr), TrainData(x_te, binary_te), "classification", **kwargs)
    assert head.calls_with_logits and all(head.calls_with_logits)
    assert head.return_logits is False
    assert evaluate(head, TrainData(x_te, binary_te), "classification") >= 0.9


# ----------------------------------------------------------------------- inputs, errors, output


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(2, 8)
        self.right = nn.Linear(2, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.left(a) + self.right(b)))


def test_multi_input_module(iris) -> None:
    x_tr, x_te, y_tr, y_te = iris
    scale = Standardizer.fit(x_tr)
    x_tr, x_te = scale.transform(x_tr), scale.transform(x_te)
    torch.manual_seed(0)
    module = TwoInputs()
    data = TrainData((x_tr[:, :2], x_tr[:, 2:].astype(np.float64)), y_tr)
    result = train(
        module,
        data,
        TrainData((x_te[:, :2], x_te[:, 2:]), y_te),
        "classification",
        epochs=40,
        lr=1e-2,
        batch_size=16,
        progress=False,
    )
    assert result.best_metric >= 0.9


def test_evaluate_matches_numpy(iris) -> None:
    x_tr, x_te, y_tr, y_te = iris
    module = iris_mlp(x_tr)
    with torch.no_grad():
        logits = module(torch.from_numpy(x_te)).numpy()
    expected = float(np.mean(logits.argmax(axis=1) == y_te))
    assert evaluate(module, TrainData(x_te, y_te), "classification", batch_size=7) == expected
    targets = np.random.default_rng(0).normal(size=logits.shape).astype(np.float32)
    mse = float(np.mean((logits.astype(np.float64) - targets) ** 2))
    assert evaluate(module, TrainData(x_te, targets), "regression") == pytest.approx(mse)


def test_bad_arguments_raise_user_errors(iris) -> None:
    x_tr, _, y_tr, _ = iris
    module = iris_mlp(x_tr)
    data = TrainData(x_tr, y_tr)
    with pytest.raises(ParameterError):
        train(module, data, None, "ranking", epochs=1)  # type: ignore[arg-type]
    with pytest.raises(ParameterError):
        train(module, data, None, "classification", epochs=0)
    with pytest.raises(ParameterError):
        train(module, data, None, "classification", epochs=1, optimizer="lbfgs")  # type: ignore[arg-type]
    with pytest.raises(DataError):
        train(module, TrainData(x_tr, y_tr.astype(np.float32)), None, "classification", epochs=1)
    with pytest.raises(DataError):
        train(module, TrainData(x_tr, y_tr + 5), None, "classification", epochs=1, progress=False)
    with pytest.raises(DataError):
        TrainData(x_tr, y_tr[:-1])


def test_progress_lines_on_non_tty(iris, capfd) -> None:
    x_tr, x_te, y_tr, y_te = iris
    module = iris_mlp(x_tr)
    train(module, TrainData(x_tr, y_tr), TrainData(x_te, y_te), "classification", epochs=3)
    err = capfd.readouterr().err
    assert "epoch 1/3 loss" in err and "accuracy" in err and "best epoch" in err
    train(module, TrainData(x_tr, y_tr), None, "classification", epochs=2, progress=False)
    assert capfd.readouterr().err == ""


# ----------------------------------------------------------------------------- distributed

DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch, torch.distributed as dist
    from onnxprune.finetune.trainer import TrainData, evaluate, train
    from onnxprune.mlp import build_mlp
    from onnxprune.tabular import Standardizer, split_dataset

    out = sys.argv[1]
    data = np.load(sys.argv[2])
    x_tr, x_te, y_tr, y_te = split_dataset(data["X"], data["y"], 0.3, seed=0)
    torch.manual_seed(int(__import__("os").environ["RANK"]))  # DDP must sync the start
    model = build_mlp(4, 3, 2, 16, standardizer=Standardizer.fit(x_tr))
    result = train(model, TrainData(x_tr, y_tr), TrainData(x_te, y_te), "classification",
                   epochs=30, lr=1e-2, batch_size=16, schedule="cosine", warmup=0.1)
    rank = dist.get_rank()
    torch.save(model.state_dict(), f"{out}/rank{rank}.pt")
    with open(f"{out}/rank{rank}.json", "w") as handle:
        json.dump({"world": dist.get_world_size(), "history": result.history,
                   "best": result.best_metric,
                   "local": evaluate(model, TrainData(x_te, y_te), "classification")}, handle)
    dist.destroy_process_group()
    """
)


def test_ddp_two_processes_on_cpu(tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(tmp_path),
        str(DATA / "iris.npz"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert all(r["world"] == 2 for r in reports)
    assert reports[0]["history"] == reports[1]["history"]  # same decisions on both ranks
    lrs = [row["lr"] for row in reports[0]["history"]]  # one schedule over both shards' steps
    assert lrs[0] < 1e-2 and lrs[-1] < 1e-4 and max(lrs) > 0.9e-2
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert reports[0]["local"] == reports[0]["best"] >= 0.9
    output = done.stdout + done.stderr
    assert output.count("epoch 1/30 loss") == 1  # only rank 0 reports
