"""The deployment runtime's message exchange: replies collected promptly, nodes asked all at once."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from fakes import Proxy
from flwr.common import Code, GetPropertiesRes, Status
from flwr.server.client_manager import SimpleClientManager
from flwr.serverapp import Grid
from flwr.superlink.grid import HttpGrid

from fedmi_flower.apps.prompt_grid import PromptGrid, prompt
from fedmi_flower.strategies.seeded_client_manager import SeededClientManager


class SlowGrid(Grid):
    """A grid whose replies arrive after a given number of pulls; it records what each pull asked for."""

    def __init__(self, arrive_after: dict[str, int]) -> None:
        self.arrive_after = arrive_after
        self.asked: list[set[str]] = []

    def set_run(self, run):
        raise NotImplementedError

    @property
    def run(self):
        return "the run"

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        raise NotImplementedError

    def get_node_ids(self):
        return [7, 8]

    def push_messages(self, messages):
        return [m.id for m in messages]

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("HttpGrid's own send_and_receive (3 s between pulls) must not be used")

    def pull_messages(self, message_ids):
        self.asked.append(set(message_ids))
        pulls = len(self.asked)
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
            for i in message_ids
            if self.arrive_after[i] == pulls
        ]


def test_replies_are_collected_as_they_arrive_and_only_missing_ones_are_asked_for_again():
    inner = SlowGrid({"a": 1, "b": 3, "c": 3})
    grid = PromptGrid(inner, poll_interval=0.01)
    replies = grid.send_and_receive([SimpleNamespace(id=i) for i in "abc"])
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b", "c"]
    assert inner.asked == [{"a", "b", "c"}, {"b", "c"}, {"b", "c"}]
    assert grid.run == "the run" and list(grid.get_node_ids()) == [7, 8]  # the rest is the inner grid's


def test_a_timeout_returns_the_replies_that_arrived():
    inner = SlowGrid({"a": 2, "b": 10**9})
    began = time.monotonic()
    replies = PromptGrid(inner, poll_interval=0.01).send_and_receive(
        [SimpleNamespace(id="a"), SimpleNamespace(id="b")], timeout=0.2
    )
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    assert 0.2 <= time.monotonic() - began < 2.0


def test_only_the_deployment_runtimes_grid_is_wrapped():
    simulated = SlowGrid({})
    assert prompt(simulated) is simulated  # Flower's simulation pulls every 0.1 s already
    deployed = HttpGrid.__new__(HttpGrid)  # no connection needed to tell its type
    assert isinstance(prompt(deployed), PromptGrid) and prompt(deployed).grid is deployed


def test_nodes_are_asked_for_their_partition_all_at_once():
    """On the deployment runtime each answer starts a ClientApp process: asked in turn, 100 nodes wait minutes."""
    everyone = threading.Barrier(5, timeout=10)

    class Node(Proxy):
        def __init__(self, cid: str, pid: int) -> None:
            super().__init__(cid)
            self.pid = pid

        def get_properties(self, ins, timeout, group_id):
            everyone.wait()  # answers only once all five are asking: raises if they are asked one by one
            return GetPropertiesRes(Status(Code.OK, ""), {"partition_id": self.pid})

    manager = SimpleClientManager()
    for pid in range(5):
        manager.register(Node(f"node-{pid}", pid))
    known: dict[str, int] = {}
    sampled = SeededClientManager(manager, 0, 1, known).sample(2, 2)
    assert known == {f"node-{pid}": pid for pid in range(5)} and len(sampled) == 2
