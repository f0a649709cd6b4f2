"""The `onnxprune` command: parse options, call the Python API, print, exit with a code.

One module per command; each registers itself on ``main``. Exit codes: 0 success,
1 internal error, 2 bad option, 3 bad model, 4 bad data, 5 output cannot be written.
"""

from __future__ import annotations

import sys

import click

from .. import __version__

EXIT_CODES = """\b
Exit codes:
  0 success            3 bad model (missing, corrupt, nothing to prune)
  1 internal error     4 bad data (missing, shape, NaN, no labels)
  2 bad option         5 output cannot be written (exists, not writable, disk full)
"""


NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class OneLineErrors(click.Group):
    """Usage errors (unknown option, bad value) end in one line too, like every error."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except NO_ARGS_IS_HELP as exc:  # bare `onnxprune` / `onnxprune sweep`: the help
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()} (see --help)", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(
    cls=OneLineErrors,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EXIT_CODES,
)
@click.version_option(__version__, prog_name="onnxprune")
def main() -> None:
    """Make trained networks smaller: data-driven structured pruning of ONNX models.

    Every error is one line on stderr (--verbose adds the traceback) and no partial
    output file is ever left; the input files are never modified.
    """


def _register() -> None:
    from . import finetune, inspect, ocnna, odf2nna, quantize, sweep  # noqa: F401


_register()

__all__ = ["main"]
