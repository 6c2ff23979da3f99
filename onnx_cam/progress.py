"""A progress bar on stderr for long runs, shown only to a person watching a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm


def wanted(quiet: bool = False) -> bool:
    """Bars are for people: not with --quiet, and not when stderr is a file or a pipe."""
    return not quiet and sys.stderr.isatty()


@contextmanager
def progress_bar(description: str, *, enabled: bool,
                 unit: str = "item") -> Iterator[Callable[[int, int], None]]:
    """Yields `update(done, total)`, the callback Explainer.explain(progress=...) takes."""
    bar = tqdm(desc=description, unit=unit, file=sys.stderr, disable=not enabled,
               dynamic_ncols=True, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()
