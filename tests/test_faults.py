"""Faults: injected client failures, accept-failures semantics, untrusted payloads, seeded client sampling."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import ROUND1, SIZES, Proxy, fit_res, make_strategy
from flwr.common import Code, GetPropertiesRes, Status
from flwr.server.client_manager import SimpleClientManager
from planted import planted_model
from runs import rounds_json

from fedmi_flower.clients.faults import should_fail
from fedmi_flower.config import ExperimentConfig, FaultsConfig
from fedmi_flower.science.model import get_weights
from fedmi_flower.strategies.seeded_client_manager import SeededClientManager
from fedmi_flower.wire.protocol import encode_circuits


def test_listed_clients_fail_in_listed_rounds_and_probability_is_seeded():
    faults = FaultsConfig(fail_clients=[1], fail_rounds=[2, 3])
    assert [should_fail(faults, 0, r, 1) for r in (1, 2, 3, 4)] == [False, True, True, False]
    assert not should_fail(faults, 0, 2, 0)
    assert should_fail(FaultsConfig(fail_clients=[0]), 0, 7, 0)
    coin = FaultsConfig(fail_probability=0.5)
    draws = [should_fail(coin, 3, r, p) for r in range(1, 21) for p in range(5)]
    assert draws == [should_fail(coin, 3, r, p) for r in range(1, 21) for p in range(5)]
    assert 30 < sum(draws) < 70
    with pytest.raises(ValueError, match="faults.fail_clients"):
        ExperimentConfig.from_dict({"clients": 3, "faults": {"fail_clients": [3]}})


def test_failures_not_accepted_keep_the_global_model_and_record_why(tmp_path):
    strategy, run_dir = make_strategy(tmp_path, steps=10)
    strategy.accept_failures = False
    params, _ = strategy.aggregate_fit(
        1, [fit_res(0, ROUND1[0]), fit_res(2, ROUND1[2])], [RuntimeError("client 1 died")]
    )
    assert params is None
    (record,) = rounds_json(run_dir)
    assert record["aggregated"] is False and "accept_failures is false" in record["not_aggregated_because"]
    assert record["clients"] == {} and record["failures"][0]["error"] == "RuntimeError: client 1 died"
    checkpoint = run_dir.read_checkpoint()
    assert checkpoint.server_round == 1
    assert all(np.array_equal(a, b) for a, b in zip(checkpoint.weights, get_weights(planted_model())))


def _with_metrics(pid, **patch):
    return fit_res(pid, ROUND1[pid], **patch)


CIRCUITS_OK = encode_circuits(ROUND1[1], SIZES)
BAD_PAYLOADS = {
    "mask too short": (dict(circuits=CIRCUITS_OK[:-3]), True, "need"),
    "mask too long (channels beyond the layers)": (dict(circuits=CIRCUITS_OK + b"\x01"), True, "need"),
    "unknown class id": (dict(circuits=b"FMC1\x00\x01" + bytes([42]) + b"\x00" * 28), True, "class 42"),
    "circuits of the wrong type": (dict(circuits="0,1,2"), True, "must be bytes"),
    # A result that names no partition cannot be checked against one: its weights are left out too.
    "partition id of the wrong type": (dict(partition_id=1.0), False, "partition_id"),
    "partition id out of range": (dict(partition_id=7), False, "partition_id = 7"),
    "oversized metrics": (dict(padding="x" * 300_000), True, "over the 262144-byte limit"),
    "oversized report": (dict(report="{" + " " * 70_000 + "}"), True, "over the 65536 limit"),
}


@pytest.mark.parametrize("case", sorted(BAD_PAYLOADS))
def test_each_bad_report_is_rejected_by_name_and_the_round_goes_on(tmp_path, case):
    patch, weights_aggregated, reason = BAD_PAYLOADS[case]
    strategy, run_dir = make_strategy(tmp_path, steps=5)
    results = [fit_res(0, ROUND1[0]), fit_res(1, ROUND1[1], **patch), fit_res(2, ROUND1[2])]
    assert strategy.aggregate_fit(1, results, [])[0] is not None
    (record,) = rounds_json(run_dir)
    assert sorted(record["clients"]) == ["0", "2"]
    (rejected,) = record["rejected"]
    assert (
        rejected["client"] == "node-1"
        and rejected["weights_aggregated"] is weights_aggregated
        and reason in rejected["reason"]
    )


def _bad_weights():
    good = get_weights(planted_model())
    inf = [w.copy() for w in good]
    inf[6][0, 0] = np.inf
    ints = [w.astype(np.int64) for w in good]
    shape = [w.copy() for w in good]
    shape[0] = np.zeros((32, 1, 5, 5), dtype=np.float32)
    return {
        "infinite weight": (inf, "NaN or infinite"),
        "integer weights": (ints, "dtype int64"),
        "wrong shape": (shape, "shape (32, 1, 5, 5)"),
    }


@pytest.mark.parametrize("case", ["infinite weight", "integer weights", "wrong shape"])
def test_each_bad_weight_payload_is_left_out_of_the_aggregate(tmp_path, case):
    weights, reason = _bad_weights()[case]
    strategy, run_dir = make_strategy(tmp_path, steps=5)
    params, _ = strategy.aggregate_fit(1, [fit_res(0, ROUND1[0]), fit_res(1, ROUND1[1], weights=weights)], [])
    (record,) = rounds_json(run_dir)
    (rejected,) = record["rejected"]
    assert rejected["weights_aggregated"] is False and reason in rejected["reason"]
    assert sorted(record["clients"]) == ["0"]


class PropProxy(Proxy):
    """A node that answers get_properties with its partition id."""

    def __init__(self, cid: str, partition_id: int) -> None:
        super().__init__(cid)
        self.pid = partition_id

    def get_properties(self, ins, timeout, group_id):
        return GetPropertiesRes(Status(Code.OK, ""), {"partition_id": self.pid})


def _sample(node_ids: list[str], seed: int, rnd: int, k: int) -> list[int]:
    manager = SimpleClientManager()
    for cid, pid in zip(node_ids, range(len(node_ids))):
        manager.register(PropProxy(cid, pid))
    sampled = SeededClientManager(manager, seed, rnd, {}).sample(k, k)
    return sorted(p.pid for p in sampled)


def test_client_sampling_depends_on_seed_and_round_not_on_node_ids():
    a = _sample([f"node-{i}" for i in range(10)], seed=1, rnd=3, k=4)
    b = _sample([f"other-{i * 7919}" for i in range(10)], seed=1, rnd=3, k=4)
    assert a == b and len(a) == 4
    assert {tuple(_sample([f"n{i}" for i in range(10)], 1, r, 4)) for r in range(1, 8)} != {tuple(a)}
    assert _sample([f"n{i}" for i in range(3)], 1, 1, 3) == [0, 1, 2]
