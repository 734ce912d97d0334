"""A client proxy that says when its client's update arrives: the live progress line's "clients done"."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.common import (
    DisconnectRes,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetParametersIns,
    GetParametersRes,
    GetPropertiesIns,
    GetPropertiesRes,
    ReconnectIns,
)
from flwr.server.client_proxy import ClientProxy


class CountingProxy(ClientProxy):
    """Wraps the proxy Flower sampled; calls ``on_fit_done`` once ``fit`` returns or fails, from Flower's thread.

    Flower's server loop calls every sampled proxy's ``fit`` on a thread of its own and hands the
    strategy the results only once all are in; this is the one place a legacy strategy can see each
    client finish. Everything else is the wrapped proxy's (attributes included), so ``aggregate_fit``
    reads the same ``cid`` and ``node_id``.
    """

    def __init__(self, proxy: ClientProxy, on_fit_done: Callable[[], None]) -> None:
        super().__init__(proxy.cid)
        self.proxy = proxy
        self.properties = proxy.properties
        self.on_fit_done = on_fit_done

    def __getattr__(self, name: str) -> Any:
        if name == "proxy":  # not set yet (a copy or an unpickling): no recursion, the usual error
            raise AttributeError(name)
        return getattr(self.proxy, name)

    def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
        try:
            return self.proxy.fit(ins, timeout, group_id)
        finally:
            self.on_fit_done()

    def get_properties(self, ins: GetPropertiesIns, timeout: float | None, group_id: int | None) -> GetPropertiesRes:
        return self.proxy.get_properties(ins, timeout, group_id)

    def get_parameters(self, ins: GetParametersIns, timeout: float | None, group_id: int | None) -> GetParametersRes:
        return self.proxy.get_parameters(ins, timeout, group_id)

    def evaluate(self, ins: EvaluateIns, timeout: float | None, group_id: int | None) -> EvaluateRes:
        return self.proxy.evaluate(ins, timeout, group_id)

    def reconnect(self, ins: ReconnectIns, timeout: float | None, group_id: int | None) -> DisconnectRes:
        return self.proxy.reconnect(ins, timeout, group_id)
