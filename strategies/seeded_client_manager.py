"""SeededClientManager: client sampling that depends on the run's seed, not on node ids."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from logging import WARNING

from flwr.common import GetPropertiesIns, log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.criterion import Criterion

from fedmi_flower.analysis.round_core import sample_partitions

WAIT_SECONDS = 86400
"""How long sampling waits for enough nodes: Flower's own default (the strategy has already waited for them)."""


class SeededClientManager(ClientManager):
    """Wraps a Flower ``ClientManager`` so that partial participation is reproducible.

    Flower samples ``random.sample`` over node ids, which a simulation draws afresh
    every run: the same seed would train different clients. This manager asks each
    node once for its ``partition_id`` (``get_properties``) and samples partition ids
    with a stream derived from ``(seed, round)``. Everything else is delegated.

    Parameters
    ----------
    inner : ClientManager
        Flower's manager of the connected nodes.
    seed : int
        The run's seed.
    server_round : int
        The round being sampled for.
    partition_of : dict
        Shared cache ``cid -> partition id``, kept by the caller across rounds.
    """

    def __init__(self, inner: ClientManager, seed: int, server_round: int, partition_of: dict[str, int]) -> None:
        self.inner = inner
        self.seed = seed
        self.server_round = server_round
        self.partition_of = partition_of

    def partitions(self, proxies: dict[str, ClientProxy]) -> dict[int, ClientProxy]:
        """Ask each node not yet known for its partition id (once per run); return the known ones by partition."""
        unknown = [cid for cid in proxies if cid not in self.partition_of]

        def ask(cid: str) -> int:
            res = proxies[cid].get_properties(GetPropertiesIns({}), timeout=None, group_id=self.server_round)
            return int(res.properties["partition_id"])

        # All at once, as Flower sends fit messages: on the deployment runtime each answer
        # costs its node a ClientApp process start, and a hundred nodes asked in turn would wait minutes.
        with ThreadPoolExecutor(max_workers=min(32, max(1, len(unknown)))) as pool:
            futures = {cid: pool.submit(ask, cid) for cid in unknown}
        for cid in unknown:
            try:
                self.partition_of[cid] = futures[cid].result()
            except Exception as err:  # an unreachable node is simply not sampled this round
                log(WARNING, "node %s did not tell its partition id (%s); it is not sampled this round", cid, err)
        claimed: dict[int, list[str]] = {}
        for cid in proxies:
            if cid in self.partition_of:
                claimed.setdefault(self.partition_of[cid], []).append(cid)
        contested = {pid: sorted(cids) for pid, cids in claimed.items() if len(cids) > 1}
        for pid, cids in contested.items():
            log(WARNING, "nodes %s all say they hold partition %d; none of them is sampled", ", ".join(cids), pid)
        return {pid: proxies[cids[0]] for pid, cids in claimed.items() if pid not in contested}

    def sample(
        self, num_clients: int, min_num_clients: int | None = None, criterion: Criterion | None = None
    ) -> list[ClientProxy]:
        """Sample ``num_clients`` nodes, chosen by partition id from the seeded stream."""
        self.inner.wait_for(min_num_clients if min_num_clients is not None else num_clients, timeout=WAIT_SECONDS)
        proxies = self.inner.all()
        if criterion is not None:
            proxies = {cid: p for cid, p in proxies.items() if criterion.select(p)}
        if num_clients >= len(proxies):
            return list(proxies.values())
        by_partition = self.partitions(proxies)
        return [
            by_partition[pid]
            for pid in sample_partitions(self.seed, self.server_round, list(by_partition), num_clients)
        ]

    # Delegation: the rest of the ClientManager interface.
    def num_available(self) -> int:
        return self.inner.num_available()

    def register(self, client: ClientProxy) -> bool:
        return self.inner.register(client)

    def unregister(self, client: ClientProxy) -> None:
        self.inner.unregister(client)

    def all(self) -> dict[str, ClientProxy]:
        return self.inner.all()

    def wait_for(self, num_clients: int, timeout: int) -> bool:
        return self.inner.wait_for(num_clients, timeout)
