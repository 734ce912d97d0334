"""The live progress line: a run's stream echoed with its progress updates drawn in place on a terminal."""

from __future__ import annotations

import shutil
import time
from typing import IO

from fedmi_flower.analysis.progress import ENDED, ProgressState, decode

CLEAR_LINE = "\r\x1b[2K"
"""Back to the line's start and erase it: how the live line is redrawn and taken away."""


class StreamEcho:
    """Echoes a run's stream: its lines as they come, its progress updates as one live line under them.

    On a terminal the latest update (``analysis/progress.py``) is drawn in place under the lines
    already printed, its elapsed time kept current by :meth:`tick`, and erased before the next
    line (a round's line ends the round's updates). Anywhere else (a pipe, a file) updates are
    dropped: a log holds nothing extra.

    Parameters
    ----------
    out : IO[str]
        Where to echo.
    terminal : bool, optional
        Whether ``out`` is a terminal (default: ``out.isatty()``).
    """

    def __init__(self, out: IO[str], terminal: bool | None = None) -> None:
        self.out = out
        self.terminal = bool(out.isatty()) if terminal is None else terminal
        self.live: ProgressState | None = None
        self.received = 0.0
        self._partial = ""
        self._shown = False

    def line(self, text: str) -> bool:
        """Echo one line of the stream; False when it was a progress update (not part of the run's transcript)."""
        state = decode(text)
        if state is not None:
            if state.phase == ENDED:
                self.live = None
                self._erase()
            elif self.terminal:
                self.live, self.received = state, time.monotonic()
                self._draw()
            return False
        self._erase()
        self.out.write(text + "\n")
        if self.live is not None:
            self._draw()  # the live line stays under what was printed, until the round ends
        self.out.flush()
        return True

    def write(self, chunk: str) -> None:
        """Echo a chunk of a stream read in pieces (a log file followed): whole lines only, the rest kept."""
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()
        for text in lines:
            self.line(text)

    def tick(self) -> None:
        """Redraw the live line with the time elapsed since its update."""
        if self.live is not None:
            self._draw()

    def close(self) -> None:
        """Erase the live line; echo what is left of a chunked stream."""
        if self._partial:
            self.line(self._partial)
            self._partial = ""
        self.live = None
        self._erase()

    def _draw(self) -> None:
        assert self.live is not None
        width = shutil.get_terminal_size((100, 24)).columns
        text = self.live.line(self.live.elapsed + time.monotonic() - self.received)
        self.out.write(CLEAR_LINE + text[: max(width - 1, 10)])
        self.out.flush()
        self._shown = True

    def _erase(self) -> None:
        if self._shown:
            self.out.write(CLEAR_LINE)
            self._shown = False
