"""A round's progress, said while it runs: phase, clients done of sampled, elapsed, and what the last round took.

Under ``fedmi run`` (only there: see :attr:`RoundProgress.enabled`) the ServerApp logs one record
marked :data:`PROGRESS_KEY` whenever the round's state changes (a round starts, a client's update
arrives, an analysis step begins). Its console writes the record as
one line, :data:`PROGRESS_MARK` then JSON; ``run.log`` leaves it out. The process that follows the
run's stream (``fedmi run``) draws it as a live line on a terminal and drops it anywhere else
(``apps/console.py``), so a log or a pipe holds nothing extra.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass

PROGRESS_KEY = "fedmi_progress"
"""A log record whose ``extra`` sets this key is a progress update: for a live console line, never for a log."""
PROGRESS_MARK = "fedmi-progress "
"""How a progress update starts on the run's stream."""

logger = logging.getLogger("flwr")


@dataclass
class ProgressState:
    """What a round is doing now."""

    round: int
    rounds: int
    phase: str
    done: int | None
    sampled: int
    elapsed: float
    expected: float | None
    """Seconds the last round took (the estimate for this one); None in a run's first round."""

    def line(self, elapsed: float | None = None) -> str:
        """The live line: ``round 3/10 | training: 1/3 clients done | 42 s, ~80 s left (last round 122 s)``."""
        seconds = self.elapsed if elapsed is None else elapsed
        if self.phase == TRAINING:
            clients = f"{self.done}/{self.sampled} clients done" if self.done is not None else f"{self.sampled} clients"
            phase = f"training: {clients}"
        else:
            phase = f"server: {self.phase} ({self.done} of {self.sampled} updates in)"
        left = ""
        if self.expected:
            remaining = self.expected - seconds
            left = f", ~{remaining:.0f} s left" if remaining >= 1 else ", longer than"
            left += f" (last round {self.expected:.0f} s)"
        return f"round {self.round}/{self.rounds} | {phase} | {seconds:.0f} s{left}"


TRAINING, ENDED = "training", "ended"


def encode(state: ProgressState) -> str:
    return PROGRESS_MARK + json.dumps(asdict(state))


def decode(line: str) -> ProgressState | None:
    """The progress update a stream line carries (anywhere in it: a verbose console prefixes its level), or None."""
    at = line.find(PROGRESS_MARK)
    if at < 0:
        return None
    try:
        return ProgressState(**json.loads(line[at + len(PROGRESS_MARK) :]))
    except (TypeError, ValueError):
        return None


class RoundProgress:
    """Says a round's progress through Flower's logger (see the module docstring).

    Parameters
    ----------
    rounds : int
        The experiment's rounds (the ``/10`` of the line).
    """

    def __init__(self, rounds: int, enabled: bool = False) -> None:
        self.rounds = rounds
        self.enabled = enabled
        """Off unless the process that follows the run's stream draws the line (``fedmi run``): anywhere else
        (``flwr run .``, a deployment) the updates would be raw lines in a console or a stored log."""
        self.state: ProgressState | None = None
        self.began = time.perf_counter()
        self.last_round: float | None = None
        self._lock = threading.Lock()  # clients finish on Flower's threads

    def start(self, rnd: int, sampled: int, counted: bool = True, began: float | None = None) -> None:
        """A round started (at ``began``, a ``perf_counter`` time; default now) with ``sampled`` clients;
        ``counted``: their updates will be counted as they arrive."""
        self.began = time.perf_counter() if began is None else began
        self.state = ProgressState(rnd, self.rounds, TRAINING, 0 if counted else None, sampled, 0.0, self.last_round)
        self._say()

    def client_done(self) -> None:
        with self._lock:
            if self.state is not None and self.state.done is not None:
                self.state.done += 1
                self._say()

    def phase(self, name: str) -> None:
        """The round's server part moved on to ``name`` (an analysis step)."""
        if self.state is not None:
            if self.state.done is None:
                self.state.done = self.state.sampled  # the server's part starts once the replies are in
            self.state.phase = name
            self._say()

    def end(self) -> None:
        """The round ended: the live line goes (before the round's own line); its time is the next round's estimate."""
        if self.state is not None:
            self.state.phase = ENDED
            self._say()
        self.last_round = time.perf_counter() - self.began
        self.state = None

    def _say(self) -> None:
        assert self.state is not None
        if not self.enabled:
            return
        self.state.elapsed = time.perf_counter() - self.began
        logger.info("%s", encode(self.state), extra={PROGRESS_KEY: True})
