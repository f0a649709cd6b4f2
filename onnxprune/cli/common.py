"""Shared CLI plumbing: one-line errors with exit codes, output path checks.

Exit codes: 0 success, 1 internal error, 2 bad option, 3 bad model, 4 bad data,
5 output cannot be written.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

import click

from .. import progress
from ..errors import OnnxPruneError, OutputError, ParameterError


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


def k_tag(k: float) -> str:
    return f"k{int(k)}" if float(k).is_integer() else f"k{k:g}"
