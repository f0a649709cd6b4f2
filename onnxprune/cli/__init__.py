"""The `onnxprune` command: parse options, call the Python API, print, exit with a code.

One module per command; each registers itself on ``main``. Exit codes: 0 success,
1 internal error, 2 bad option, 3 bad model, 4 bad data, 5 output cannot be written.
"""

from __future__ import annotations

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxprune")
def main() -> None:
    """Make trained networks smaller: data-driven structured pruning of ONNX models."""


def _register() -> None:
    from . import finetune, inspect, ocnna  # noqa: F401  (each adds its command to main)


_register()

__all__ = ["main"]
