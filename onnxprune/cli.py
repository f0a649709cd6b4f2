"""The `onnxprune` command: parse options, call the Python API, print, exit with a code.

Exit codes: 0 success, 1 internal error, 2 bad option, 3 bad model, 4 bad data,
5 output cannot be written.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from pathlib import Path

import click

from . import __version__, progress
from .errors import OnnxPruneError, OutputError


def handle_errors(command):
    """One line and a non-zero exit for every failure; a traceback only with --verbose."""

    @functools.wraps(command)
    def wrapper(*args, verbose: bool = False, quiet: bool = False, **kwargs):
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

    wrapper = click.option("--verbose", is_flag=True, help="Show tracebacks on errors.")(wrapper)
    return click.option("--quiet", "-q", is_flag=True, help="No progress output.")(wrapper)


def _default_output(model: str, tag: str) -> Path:
    path = Path(model)
    return path.with_name(f"{path.stem}.{tag}.onnx")


def _check_outputs(paths: list[Path | None], force: bool, model: str) -> None:
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


def _k_tag(k: float) -> str:
    return f"k{int(k)}" if float(k).is_integer() else f"k{k:g}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxprune")
def main() -> None:
    """Make trained networks smaller: data-driven structured pruning of ONNX models."""


@main.command(
    epilog="""\b
Examples:
  onnxprune ocnna model.onnx --k 40 --data dvar.npz
  onnxprune ocnna model.onnx --k 40 --data dvar.npz --eval test.npz -o small.onnx --report r.json
"""
)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--k",
    "k",
    type=float,
    default=40.0,
    show_default=True,
    help="Percentile of significance: drop k% of each group's channels, 0 <= k < 100.",
)
@click.option(
    "--data",
    "data",
    type=click.Path(dir_okay=False),
    help="D_var samples (.npz with x/X, or .npy) used to score channels.",
)
@click.option(
    "--eval",
    "eval_data",
    type=click.Path(dir_okay=False),
    help="Labelled data (.npz with x and y): accuracy before and after.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Pruned model path [default: <model>.ocnna-k<k>.onnx beside the input].",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    help="Write the JSON report here (and a Markdown copy beside it).",
)
@click.option(
    "--criterion",
    default="ocnna",
    show_default=True,
    type=click.Choice(["ocnna", "l1", "random", "apoz"]),
    help="Importance criterion (baselines share groups and selection).",
)
@click.option("--convs-only", is_flag=True, help="Prune conv filters only, keep dense units.")
@click.option(
    "--round-to",
    type=int,
    default=1,
    show_default=True,
    help="Round kept channel counts up to a multiple of this (8 or 16 for speed).",
)
@click.option(
    "--compensate/--no-compensate",
    default=True,
    show_default=True,
    help="Fold removed channels' mean activation into the next layers' biases.",
)
@click.option(
    "--finetune",
    "finetune_data",
    type=click.Path(dir_okay=False),
    help="Labelled training data: fine-tune the pruned model (PyTorch) after pruning.",
)
@click.option("--epochs", type=int, default=1, show_default=True, help="Fine-tune epochs.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Fine-tune learning rate.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@handle_errors
def ocnna(
    model,
    k,
    data,
    eval_data,
    output,
    report_path,
    criterion,
    convs_only,
    round_to,
    compensate,
    finetune_data,
    epochs,
    lr,
    batch_size,
    device,
    seed,
    force,
) -> None:
    """Prune conv filters (and dense units) of MODEL with OCNNA."""
    from .api_io import save_outputs
    from .pipeline import ocnna as run_ocnna
    from .select import check_k

    check_k(k)
    output = Path(output) if output else _default_output(model, f"ocnna-{_k_tag(k)}")
    report = Path(report_path) if report_path else None
    _check_outputs([output, report], force, model)
    result = run_ocnna(
        model,
        k,
        data,
        eval_data=eval_data,
        criterion=criterion,
        convs_only=convs_only,
        batch_size=batch_size,
        device=device,
        round_to=round_to,
        seed=seed,
        compensate=compensate,
    )
    if finetune_data is not None:
        from .finetune.round_trip import finetune

        tuned, extra = finetune(
            result.model,
            finetune_data,
            eval_data,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            device=device,
        )
        tuned.metadata_props.extend(result.model.metadata_props)
        result.model = tuned
        result.report.update(extra)
    save_outputs(result, output, report, force)


@main.command(
    epilog="""\b
Examples:
  onnxprune inspect model.onnx
  onnxprune inspect model.onnx --data dvar.npz --json
"""
)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--data",
    type=click.Path(dir_okay=False),
    help="Sample data (needed when the model input has dynamic spatial sizes).",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@handle_errors
def inspect(model, data, as_json) -> None:
    """Show MODEL's channel groups: sizes, what can be pruned and why not, params, MACs."""
    from .inspection import inspect as run_inspect
    from .inspection import print_inspection

    info = run_inspect(model, data)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        print_inspection(info)


@main.command(
    epilog="""\b
Examples:
  onnxprune finetune pruned.onnx --train train.npz --eval test.npz --epochs 3
"""
)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--train",
    "train_data",
    required=True,
    type=click.Path(dir_okay=False),
    help="Labelled training data (.npz with x and y).",
)
@click.option(
    "--eval",
    "eval_data",
    type=click.Path(dir_okay=False),
    help="Labelled data to pick the best epoch and report accuracy / MSE.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Output path [default: <model>.finetuned.onnx beside the input].",
)
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@handle_errors
def finetune(
    model, train_data, eval_data, output, epochs, lr, batch_size, optimizer, device, seed, force
) -> None:
    """Fine-tune MODEL (ONNX) in PyTorch and write it back as ONNX."""
    from .finetune.round_trip import finetune as run_finetune
    from .io import save_model

    output = Path(output) if output else _default_output(model, "finetuned")
    _check_outputs([output], force, model)
    tuned, report = run_finetune(
        model,
        train_data,
        eval_data,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        optimizer=optimizer,
        seed=seed,
        device=device,
    )
    save_model(tuned, output, force=force)
    for key, value in report.items():
        if key != "finetune":
            click.echo(f"{key}: {value:.4f}")
    progress.info(f"wrote {output}")


if __name__ == "__main__":
    main()
