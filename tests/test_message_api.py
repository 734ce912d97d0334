"""The Message API (flwr.serverapp Strategy, @app.train ClientApp) gives the legacy API's records, to the last digit."""

from __future__ import annotations

import pytest
from runs import SMALL_IID, fedmi, rounds_json, sets

from fedmi_flower.config import ConfigError, load_experiment


def _without_timings(record: dict) -> dict:
    record = {k: v for k, v in record.items() if k != "timings"}
    record["clients"] = {pid: {k: v for k, v in c.items() if k != "timings"} for pid, c in record["clients"].items()}
    return record


def test_the_message_api_gives_the_legacy_records(iid_run, tmp_path, mnist_root):
    out = tmp_path / "message"
    proc = fedmi(
        "run", "quickstart", *sets([*SMALL_IID, "strategy.api=message"]), "--out", str(out), "--data-root", mnist_root
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[round 2/2] 3/3 clients |" in proc.stdout
    log = (out / "run.log").read_text()
    # Flower's Message API loop ran (its own log lines), not the legacy one.
    assert "Starting CircuitMessageStrategy strategy" in log and "configure_train: Sampled" not in log
    legacy, message = rounds_json(iid_run), rounds_json(out)
    assert [r["round"] for r in message] == [1, 2]
    assert [_without_timings(r) for r in message] == [_without_timings(r) for r in legacy]


def test_the_message_api_refuses_federated_evaluation():
    with pytest.raises(ConfigError, match="strategy.fraction_evaluate = 0.5 asks for federated evaluation"):
        load_experiment(
            "quickstart", {"strategy.api": "message", "strategy.fraction_evaluate": 0.5, "data.holdout_fraction": 0.1}
        )
    with pytest.raises(ConfigError, match="strategy.api"):
        load_experiment("quickstart", {"strategy.api": "grpc"})
