"""Progress that shows wherever the output goes: a tqdm bar on a terminal, plain lines in a log.

Written to a file or a pipe, a bar would be one long line of carriage returns (or, with tqdm's
``disable=None``, nothing at all); :func:`progress_bar` then prints one line per step, or per percent
for more than 100 steps, each with the count, the elapsed time and the description.
"""

from __future__ import annotations

import sys
import time


QUIET = 10.0   # seconds: the longest a long step stays silent in a log


class LineProgress:
    """The part of tqdm's interface fxai uses, printing a line per step (per percent beyond 100 steps)."""

    def __init__(self, iterable=None, *, total=None, initial: int = 0, desc: str = "", unit: str = "it",
                 file=None):
        self.iterable = iterable
        self.total = len(iterable) if total is None and hasattr(iterable, "__len__") else total
        self.n, self.desc, self.unit, self.postfix = initial, desc or "", unit, ""
        self.file = file or sys.stderr
        self.start = self._last = time.perf_counter()
        self._shown = -1

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def _step(self) -> int:
        if not self.total:
            return self.n
        return self.n if self.total <= 100 else self.n * 100 // self.total

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._step() != self._shown:
            self._shown = self._step()
            self._line()

    def _line(self) -> None:
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" {100 * self.n // self.total:3d}%" if self.total else ""
        text = f"{self.desc}:{share} {count} {self.unit} [{time.perf_counter() - self.start:.0f} s]"
        print(text + (f" {self.postfix}" if self.postfix else ""), file=self.file, flush=True)
        self._last = time.perf_counter()

    def refresh(self) -> None:
        pass

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc, self.postfix = desc, ""

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """The text after the count; within a long step, a line at most every :data:`QUIET` seconds."""
        self.postfix = s
        if refresh and time.perf_counter() - self._last >= QUIET:
            self._line()

    def set_postfix(self, refresh: bool = True, **kwargs) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def write(self, text: str) -> None:
        print(text, file=sys.stdout, flush=True)

    def close(self) -> None:
        pass


def progress_bar(iterable=None, *, total=None, initial: int = 0, desc: str = "", unit: str = "it",
                 disable: bool = False, file=None):
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a :class:`LineProgress`; ``disable``
    gives a silent tqdm (its ``write`` still prints).

    Example:
        >>> bar = progress_bar(total=3, desc="maps", unit="map", disable=True)
        >>> bar.update(3); bar.close()
    """
    from tqdm.auto import tqdm

    stream = file or sys.stderr
    if disable or (hasattr(stream, "isatty") and stream.isatty()):
        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, disable=disable,
                    dynamic_ncols=True, file=file)
    return LineProgress(iterable, total=total, initial=initial, desc=desc, unit=unit, file=file)
