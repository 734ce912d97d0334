"""A Grid that collects the clients' replies promptly: the ServerApp's side of a fast deployment round."""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.superlink.grid import HttpGrid


class PromptGrid(Grid):
    """Flower's Grid, with ``send_and_receive`` checking for replies every ``poll_interval`` seconds.

    On the deployment runtime the ServerApp talks to the SuperLink through Flower 1.41's
    ``HttpGrid``, whose ``send_and_receive`` sleeps 3 s between two pulls of the replies:
    every message exchange (each client's ``fit`` in every round, each query) ends on
    average 1.5 s after its last reply arrived. This class keeps everything else of the
    grid it wraps and pulls with the same public ``pull_messages`` every second: 0.5 s
    on average. More often costs more than it saves on a small machine: each pull is an
    HTTPS request that the ServerApp and the SuperLink both serve, once per client in
    flight, while the clients compute. Use :func:`prompt`, which wraps only that grid:
    Flower's simulation (``InMemoryGrid``) already pulls every 0.1 s.

    Parameters
    ----------
    grid : Grid
        The grid the runtime handed the ServerApp.
    poll_interval : float
        Seconds between two pulls while replies are missing.
    """

    def __init__(self, grid: Grid, poll_interval: float = 1.0) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval}")
        self.grid = grid
        self.poll_interval = poll_interval

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages``; return their replies once all arrived or ``timeout`` seconds passed (as Flower's)."""
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            arrived = list(self.pull_messages(pending))
            replies.extend(arrived)
            pending.difference_update(m.metadata.reply_to_message_id for m in arrived)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.poll_interval)
        return replies


def prompt(grid: Grid) -> Grid:
    """``grid`` as a :class:`PromptGrid` when it is the deployment runtime's ``HttpGrid``; else itself."""
    return PromptGrid(grid) if isinstance(grid, HttpGrid) else grid
