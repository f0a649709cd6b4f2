"""Progress reporting: rich bars on a terminal, terse plain lines elsewhere (CI logs)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence all progress output (``--quiet``)."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def is_interactive() -> bool:
    return sys.stderr.isatty()


def info(message: str) -> None:
    """One plain status line on stderr (suppressed by --quiet)."""
    if not _quiet:
        print(message, file=sys.stderr, flush=True)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` showing progress: a rich bar on a TTY, start/end lines otherwise."""
    if _quiet:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if is_interactive():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task(description, total=total)
            for item in items:
                yield item
                bar.advance(task)
        info(f"{description}: done")
        return
    start = time.perf_counter()
    count = 0
    for item in items:
        yield item
        count += 1
    info(f"{description}: {count} step(s) in {time.perf_counter() - start:.1f}s")
