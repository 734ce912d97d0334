"""What a run prints: fedmi's own lines on the console, everything in the run directory's ``run.log``.

Flower's logger says a lot a user reading along does not need (its INFO lines of
every round, "configure_evaluate: no clients selected", the whole metrics History at
the end). Without ``--verbose`` the console keeps fedmi's lines (one per round) and
the first line of every warning and error; ``run.log`` keeps all of it, without colour
codes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from flwr.common.logger import FLOWER_LOGGER, console_handler

from strategies import CONSOLE_KEY

RUN_LOG = "run.log"


SIMULATION_ENGINE = f"{os.sep}fleet{os.sep}vce{os.sep}"
"""Where Flower's simulation engine logs a client's exception: the strategy reports each one as a failure."""


class QuietConsole(logging.StreamHandler):
    """The console of a run without ``--verbose``.

    fedmi's own lines (records marked with :data:`strategies.CONSOLE_KEY`) as they are;
    any other warning or error on one line, its first, with a pointer to ``run.log``
    when there was more; Flower's INFO lines not at all. A client's exception, which
    Flower's simulation engine logs with two tracebacks, is left to ``run.log``: the
    round's line counts it and the strategy's warning names it.
    """

    def __init__(self, stream: TextIO, log_path: Path) -> None:
        super().__init__(stream)
        self.log_path = log_path
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, CONSOLE_KEY, False):
            return super().emit(record)
        if record.levelno < logging.WARNING or SIMULATION_ENGINE in record.pathname:
            return None
        text = record.getMessage().strip()
        first = text.splitlines()[0] if text else ""
        more = f" (more in {self.log_path})" if "\n" in text or record.exc_info else ""
        try:
            self.stream.write(f"{record.levelname}: {first}{more}{self.terminator}")
            self.flush()
        except Exception:  # the logging module's own rule: a failing handler must not stop the program
            self.handleError(record)
        return None


@contextmanager
def run_console(run_dir: Path, verbose: bool = False) -> Iterator[Path]:
    """Within the block, Flower's logger writes everything to ``run_dir/run.log`` and the console only fedmi's lines.

    With ``verbose`` the console keeps Flower's own handler and its INFO lines; its
    colour codes are switched on only when its stream is a terminal. Everything is put
    back on exit. Yields the log's path.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RUN_LOG
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setLevel(logging.DEBUG if verbose else logging.INFO)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    stream = console_handler.stream
    quiet = None if verbose else QuietConsole(stream, path)
    was_colored, was_level = console_handler.colored, FLOWER_LOGGER.level
    console_handler.colored = bool(getattr(stream, "isatty", lambda: False)())
    FLOWER_LOGGER.addHandler(to_file)
    if quiet is not None:
        FLOWER_LOGGER.removeHandler(console_handler)
        FLOWER_LOGGER.addHandler(quiet)
    try:
        yield path
    finally:
        if quiet is not None:
            FLOWER_LOGGER.removeHandler(quiet)
            FLOWER_LOGGER.addHandler(console_handler)
        console_handler.colored = was_colored
        FLOWER_LOGGER.removeHandler(to_file)
        FLOWER_LOGGER.setLevel(was_level)
        to_file.close()
