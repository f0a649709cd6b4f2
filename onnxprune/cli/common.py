"""Shared CLI plumbing: one-line errors with exit codes, output path checks.

Exit codes: 0 success, 1 internal error, 2 bad option, 3 bad model, 4 bad data,
5 output cannot be written.
"""

from __future__ import annotations

import functools
import sys
import traceback
from pathlib import Path

import click

from .. import progress
from ..errors import OnnxPruneError, OutputError


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


def k_tag(k: float) -> str:
    return f"k{int(k)}" if float(k).is_integer() else f"k{k:g}"
