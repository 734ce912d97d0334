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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from flwr.common.logger import FLOWER_LOGGER, console_handler

from fedmi_flower.analysis.progress import PROGRESS_KEY
from fedmi_flower.strategies import CONSOLE_KEY

RUN_LOG = "run.log"


SIMULATION_ENGINE = f"{os.sep}fleet{os.sep}vce{os.sep}"
"""Where Flower's simulation engine logs; :data:`CLIENT_EXCEPTION_LOGGERS` name its functions that log a client's
exception, which the strategy reports as a failure."""
CLIENT_EXCEPTION_LOGGERS = ("worker", "process_message")


def is_client_exception(record: logging.LogRecord) -> bool:
    """Whether ``record`` is the simulation engine logging one client's exception (its message, then tracebacks)."""
    return SIMULATION_ENGINE in record.pathname and record.funcName in CLIENT_EXCEPTION_LOGGERS


class QuietConsole(logging.StreamHandler):
    """The console of a run without ``--verbose``.

    fedmi's own lines (records marked with :data:`fedmi_flower.strategies.CONSOLE_KEY`) as they are;
    any other warning or error on one line, its first, with a pointer to ``run.log``
    when there was more; Flower's INFO lines not at all. A client's exception, which
    Flower's simulation engine logs with two tracebacks, is left to ``run.log``: the
    round's line counts it and the strategy's warning names it. The engine's other
    errors (it failed to start, it crashed) do reach the console.
    """

    def __init__(self, stream: TextIO, log_path: Path) -> None:
        super().__init__(stream)
        self.log_path = log_path
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, CONSOLE_KEY, False) or getattr(record, PROGRESS_KEY, False):
            return super().emit(record)
        if record.levelno < logging.WARNING or is_client_exception(record):
            return None
        try:
            text = record.getMessage().strip()
            first = text.splitlines()[0] if text else ""
            more = f" (more in {self.log_path})" if "\n" in text or record.exc_info else ""
            self.stream.write(f"{record.levelname}: {first}{more}{self.terminator}")
            self.flush()
        except Exception:  # the logging module's own rule: a failing handler must not stop the program
            self.handleError(record)
        return None


def install_console(run_dir: Path, verbose: bool = False) -> Callable[[], None]:
    """From now on Flower's logger writes everything to ``run_dir/run.log`` and the console only fedmi's lines.

    With ``verbose`` the console shows Flower's own lines too (and its debug level, which
    Flower's simulation turns on): through Flower's handler on a terminal, and through a
    plain one otherwise, since Flower's handler forces colour codes on. Returns the
    function that puts everything back; the ServerApp of ``fedmi run``, alone in its
    process, never calls it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RUN_LOG
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setLevel(logging.DEBUG if verbose else logging.INFO)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    to_file.addFilter(lambda record: not getattr(record, PROGRESS_KEY, False))  # live-line updates are no log
    stream = console_handler.stream
    terminal = bool(getattr(stream, "isatty", lambda: False)())
    replacement: logging.Handler | None = None
    if not verbose:
        replacement = QuietConsole(stream, path)
    elif not terminal:
        replacement = logging.StreamHandler(stream)
        replacement.setFormatter(logging.Formatter("%(levelname)s %(asctime)s: %(message)s"))
    saved = (console_handler.level, console_handler.colored, console_handler.timestamps, FLOWER_LOGGER.level)
    FLOWER_LOGGER.addHandler(to_file)
    if replacement is not None:
        FLOWER_LOGGER.removeHandler(console_handler)
        FLOWER_LOGGER.addHandler(replacement)

    def restore() -> None:
        if replacement is not None:
            FLOWER_LOGGER.removeHandler(replacement)
            FLOWER_LOGGER.addHandler(console_handler)
        console_handler.setLevel(saved[0])
        console_handler.colored, console_handler.timestamps = saved[1], saved[2]
        FLOWER_LOGGER.setLevel(saved[3])
        FLOWER_LOGGER.removeHandler(to_file)
        to_file.close()

    return restore


@contextmanager
def run_console(run_dir: Path, verbose: bool = False) -> Iterator[Path]:
    """:func:`install_console` for the block; everything is put back on exit. Yields the log's path."""
    restore = install_console(run_dir, verbose)
    try:
        yield run_dir / RUN_LOG
    finally:
        restore()
