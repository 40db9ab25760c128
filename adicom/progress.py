"""What the command line shows while work goes on: a bar on a terminal, lines elsewhere.

On a terminal, :class:`Progress` draws a tqdm bar on standard error (so
standard output stays for results), and lines about single items (a failed
instance) are printed above it. Elsewhere (a pipe, a log file, CI) it prints
one plain line every ``every`` seconds and a last one at the end. With
``quiet`` it shows nothing but the notes.

tqdm rather than rich: tqdm has no dependencies and imports in a fraction of
the time (rich brings markdown-it-py and pygments), and a bar is all the
command line needs. It is imported only when a bar is drawn.
"""

from __future__ import annotations

import sys
import time
from typing import IO, TYPE_CHECKING, Never

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["Progress"]


class Progress:
    """A progress display for ``what`` (``"C-STORE"``, ``"C-GET"``), ``total`` items if known."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        *,
        quiet: bool = False,
        stream: IO[str] | None = None,
        every: float = 5.0,
        unit: str = "instances",
    ) -> None:
        self.what = what
        self.total = total
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.unit = unit
        self.done = 0
        self.failed = 0
        self._bar: tqdm[Never] | None = None
        self._last_line = time.monotonic()
        isatty = getattr(self.stream, "isatty", None)
        if not quiet and callable(isatty) and isatty():
            from tqdm import tqdm

            # tqdm starts a monitor thread for bars that stall, unless told
            # not to; adicom starts no thread, and updates its bars itself.
            tqdm.monitor_interval = 0
            self._bar = tqdm(
                total=total, desc=what, unit=f" {unit}", file=self.stream, leave=True, delay=0.5
            )

    def update(self, done: int, *, failed: int = 0, total: int | None = None) -> None:
        """Items done so far (``failed`` of them failed), and the total when it became known."""
        if total is not None and total != self.total:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
                self._bar.refresh()
        step, self.done, self.failed = done - self.done, done, failed
        if self._bar is not None:
            if step > 0:
                self._bar.update(step)
            if failed:
                self._bar.set_postfix(failed=failed, refresh=False)
        elif not self.quiet and time.monotonic() - self._last_line >= self.every:
            self._line()

    @property
    def is_bar(self) -> bool:
        """True while a bar is drawn (on a terminal, not quiet)."""
        return self._bar is not None

    def note(self, line: str) -> None:
        """A line about one item, printed above the bar (even when quiet)."""
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """The work ended: finish the bar, or print the last line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif not self.quiet and self.done:
            self._line()

    def _line(self) -> None:
        self._last_line = time.monotonic()
        of = f" of {self.total}" if self.total is not None else ""
        failed = f", {self.failed} failed" if self.failed else ""
        print(f"{self.what}: {self.done}{of} {self.unit}{failed}", file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
