"""Shared CLI plumbing: one-line errors with exit codes, output path checks, and the
option blocks several commands share (so one option reads the same everywhere).

Exit codes: 0 success, 1 internal error, 2 bad option, 3 bad model, 4 bad data,
5 output cannot be written.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from .. import progress
from ..errors import OnnxPruneError, OutputError, ParameterError
from ..recovery import DISTILL_LR

F = TypeVar("F", bound=Callable[..., Any])
FILE = click.Path(dir_okay=False)
REPORT_HELP = "Write the JSON report here (and a Markdown copy beside it)."


def options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several click options as one decorator; --help lists them in the order given."""

    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


force_option = click.option("--force", is_flag=True, help="Overwrite existing output files.")
batch_size_option = click.option("--batch-size", type=int, default=64, show_default=True)
device_option = click.option(
    "--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True
)
seed_option = click.option("--seed", type=int, default=0, show_default=True)
run_options = options(batch_size_option, device_option, seed_option, force_option)

training_options = options(
    click.option(
        "--optimizer",
        type=click.Choice(["adam", "adamw", "sgd"]),
        default="adam",
        show_default=True,
        help="adamw decouples --weight-decay from the gradient (as torch.optim.AdamW).",
    ),
    click.option("--weight-decay", type=float, default=0.0, show_default=True),
    click.option("--momentum", type=float, default=0.0, show_default=True, help="SGD momentum."),
    click.option(
        "--schedule",
        type=click.Choice(["constant", "cosine"]),
        default="constant",
        show_default=True,
        help="Learning rate per step: constant, or cosine decay from --lr to ~0 over all epochs.",
    ),
    click.option(
        "--warmup",
        type=float,
        default=0.0,
        show_default=True,
        help="Fraction of all steps (0 <= w < 1) spent rising linearly to --lr.",
    ),
)
"""The fine-tune's optimiser settings (set them to the original training's, as the papers
do), the same for `finetune` and `ocnna --finetune`."""


distill_options = options(
    click.option(
        "--distill",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        metavar="EPOCHS",
        help="Then train the pruned model this many epochs on D_var to match the "
        "original's layer outputs: no labels needed (torch).",
    ),
    click.option(
        "--distill-lr",
        type=float,
        default=DISTILL_LR,
        show_default=True,
        help="Adam learning rate of --distill.",
    ),
)
"""Label-free distillation on D_var after pruning (`ocnna`, `odf2nna`)."""


def distill_arguments(epochs: int, lr: float, keras_finetune: bool) -> dict[str, Any]:
    """The API keywords of --distill: none when it is off, since the Keras routes (which
    fine-tune in Keras instead) take no such keywords."""
    if not epochs:
        return {}
    if keras_finetune:
        raise ParameterError(
            "--distill trains the ONNX model in torch; with --framework keras fine-tune only"
        )
    return {"distill": epochs, "distill_lr": lr}


def data_options(
    data_help: str,
    eval_help: str,
    *,
    data_required: bool = False,
    eval_required: bool = False,
    folders: bool = False,
) -> Callable[[F], F]:
    """``--data`` (samples to observe; ``folders``: image folders too) and ``--eval``."""
    return options(
        click.option(
            "--data",
            required=data_required,
            type=click.Path() if folders else FILE,
            help=data_help,
        ),
        click.option("--eval", "eval_data", required=eval_required, type=FILE, help=eval_help),
    )


def output_options(
    output_help: str | None, report_help: str = REPORT_HELP, *, prefix: bool = False
) -> Callable[[F], F]:
    """``-o/--output`` (a path, or with ``prefix`` a free-form stem) and ``--report``.

    ``output_help`` None: the command has no ``-o``, only the report.
    """
    report = click.option("--report", "report_path", type=FILE, help=report_help)
    if output_help is None:
        return report
    output = click.option("-o", "--output", type=None if prefix else FILE, help=output_help)
    return options(output, report)


ocnna_options = options(
    click.option(
        "--criterion",
        default="ocnna",
        show_default=True,
        type=click.Choice(["ocnna", "l1", "random", "apoz"]),
        help="Importance criterion (baselines share groups and selection).",
    ),
    click.option("--convs-only", is_flag=True, help="Prune conv filters only, keep dense units."),
    click.option(
        "--round-to",
        type=int,
        default=1,
        show_default=True,
        help="Round kept channel counts up to a multiple of this (8 or 16 for speed).",
    ),
    click.option(
        "--compensate/--no-compensate",
        default=True,
        show_default=True,
        help="Fold removed channels' mean activation into the next layers' biases.",
    ),
    click.option(
        "--reconstruct/--no-reconstruct",
        default=True,
        show_default=True,
        help="Refit the layers that lost inputs by least squares on D_var to match the "
        "original (--no-reconstruct --no-compensate: OCNNA exactly as the paper).",
    ),
    click.option(
        "--keep",
        multiple=True,
        metavar="LAYER",
        help="Keep the channel group of this layer whole (a name as `onnxprune inspect` "
        "lists it, or a shell pattern such as '/features.0/*'); repeatable.",
    ),
    click.option(
        "--workers",
        type=int,
        default=1,
        show_default=True,
        metavar="N",
        help="Score D_var in N local processes (CPU), each on a contiguous shard; the "
        "results are identical to one process. Pays off on many cores.",
    ),
)
"""OCNNA's selection, recovery and scoring settings, the same for one k and for a sweep."""


#: Fine-tune settings only the PyTorch route has, at their neutral values.
TORCH_ONLY = {"weight_decay": 0.0, "schedule": "constant", "warmup": 0.0}


def finetune_pruned(
    result, framework: str, train_data: str, eval_data: str | None, **settings
) -> bool:
    """``--finetune`` of a pruning command: the user's rebuilt Keras model in Keras, or the
    pruned ONNX model in PyTorch; the result then holds the trained export. False on a
    torchrun rank other than 0 (rank 0 writes the outputs)."""
    if framework == "keras":
        from ..keras import finetune_result

        changed = [k for k, neutral in TORCH_ONLY.items() if settings.pop(k, neutral) != neutral]
        if settings.get("optimizer") == "adamw" or changed:
            raise ParameterError(
                "--framework keras fine-tunes with adam or sgd at a constant --lr: "
                "--optimizer adamw, --weight-decay, --schedule and --warmup are torch only"
            )
        settings.pop("device", None)  # Keras trains on the CPU here
        finetune_result(result, train_data, eval_data, **settings)
        return True
    from ..finetune.round_trip import finetune_result

    return finetune_result(result, train_data, eval_data, **settings)


def handle_errors(command):
    """One line and a non-zero exit for every failure; a traceback only with --verbose."""

    @functools.wraps(command)
    def wrapper(*args, verbose: bool = False, quiet: bool = False, **kwargs):
        was_quiet = progress.is_quiet()  # restored after: in-process callers keep their setting
        progress.set_quiet(quiet)
        try:
            return command(*args, **kwargs)
        except OnnxPruneError as exc:
            if verbose:
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # a bug: still one line unless --verbose
            if verbose:
                traceback.print_exc()
            first = (str(exc).strip().splitlines() or [""])[0]
            click.echo(
                f"error: internal error: {type(exc).__name__}: {first} "
                "(run with --verbose for the traceback)",
                err=True,
            )
            sys.exit(1)
        finally:
            progress.set_quiet(was_quiet)

    wrapper = click.option("--verbose", is_flag=True, help="Show tracebacks on errors.")(wrapper)
    return click.option("--quiet", "-q", is_flag=True, help="No progress output.")(wrapper)


def default_output(model: str, tag: str) -> Path:
    path = Path(model)
    return path.with_name(f"{path.stem}.{tag}.onnx")


def check_outputs(paths: list[Path | None], force: bool, model: str) -> None:
    """Refuse before any work: existing outputs without --force, missing directories."""
    source = Path(model).resolve()
    for path in paths:
        if path is None:
            continue
        if path.resolve() == source:
            raise OutputError(f"refusing to overwrite the input model: {path}")
        if path.exists() and not force:
            raise OutputError(f"output exists (use --force to overwrite): {path}")
        if not path.parent.resolve().is_dir():
            raise OutputError(f"output directory does not exist: {path.parent}")
        try:  # a real probe: permission bits say nothing to root or on read-only mounts
            tempfile.TemporaryFile(dir=path.parent.resolve()).close()
        except OSError as exc:
            raise OutputError(f"cannot write to {path.parent}: {exc.strerror or exc}") from None


def check_suffix(path: Path | None, suffix: str, what: str) -> None:
    """``-o report.json`` for a model (or the reverse) is a slip worth catching early."""
    if path is not None and path.suffix.lower() != suffix:
        raise ParameterError(f"{what} must end in {suffix}: {path}")


@contextlib.contextmanager
def rollback_on_error(paths: list[Path | None]) -> Iterator[None]:
    """Outputs this block creates are removed again if it fails: all of them or none."""
    fresh = [p for p in paths if p is not None and not p.exists()]
    try:
        yield
    except BaseException:
        for path in fresh:
            path.unlink(missing_ok=True)
        raise


def output_prefix(output: str | None, fallback: str) -> str:
    """``-o`` as a prefix for several files: ``out/run`` as given, ``.onnx`` / ``.json``
    dropped, and an existing directory gets the fallback's name inside it."""
    if output is None:
        return fallback
    if output.endswith(("/", "\\")) or Path(output).is_dir():
        return str(Path(output) / Path(fallback).name)
    for suffix in (".onnx", ".json"):
        if output.endswith(suffix):
            return output[: -len(suffix)]
    return output


def k_tag(k: float) -> str:
    return f"k{int(k)}" if float(k).is_integer() else f"k{k:g}"


def eps_tag(epsilon: float) -> str:
    return f"e{epsilon:g}"
