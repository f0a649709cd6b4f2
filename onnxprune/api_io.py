"""Writing a pipeline result: the model, then the report; each atomically."""

from __future__ import annotations

from pathlib import Path

from . import progress
from .io import save_model
from .pipeline import PruneResult
from .report import print_summary, write_report


def save_outputs(result: PruneResult, output: Path, report: Path | None, force: bool) -> None:
    """Write the pruned model (and report), then show the summary table."""
    save_model(result.model, output, force=force)
    result.report["output"] = str(output)
    if report is not None:
        write_report(result.report, report, force=force)
    if not progress.is_quiet():
        print_summary(result.report)
    progress.info(f"wrote {output}" + (f" and {report}" if report else ""))
