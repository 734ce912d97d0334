"""The wire format: circuits and reports survive a round trip; malformed payloads are refused by name."""

from __future__ import annotations

import json
import math

import pytest

from fedmi_flower.config import ConfigError, load_experiment
from fedmi_flower.science.circuits import CircuitScores
from fedmi_flower.wire.protocol import (
    ClientReport,
    FitInstructions,
    PayloadError,
    decode_circuits,
    encode_circuits,
    fit_instructions,
    report_from_metrics,
    report_to_metrics,
)

SIZES = {"conv1": 32, "conv2": 64, "conv3": 128}
CIRCUITS = {0: {"conv1": [0, 31], "conv2": [], "conv3": [5, 127]}, 7: {"conv1": [], "conv2": [63], "conv3": []}}


def test_circuits_round_trip_compactly():
    blob = encode_circuits(CIRCUITS, SIZES)
    assert len(blob) == 6 + 2 * (1 + 28)
    assert decode_circuits(blob, SIZES) == CIRCUITS


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: "not bytes", "must be bytes"),
        (lambda b: b"XXXX" + b[4:], "FMC1 header"),
        (lambda b: b[:-1], "need 64"),
        (lambda b: b + b"\x00", "need 64"),
        (lambda b: b[:6] + bytes([12]) + b[7:], "class 12"),
        (lambda b: b[:35] + bytes([0]) + b[36:], "repeats class 0"),
        (lambda b: b"FMC1" + b"\xff\xff" + b"\x00" * 70000, "over the"),
    ],
)
def test_malformed_circuits_are_refused_with_a_reason(mutate, message):
    with pytest.raises(PayloadError, match=message):
        decode_circuits(mutate(encode_circuits(CIRCUITS, SIZES)), SIZES, num_classes=10)


def test_channel_beyond_the_model_is_refused():
    blob = bytearray(encode_circuits({1: {"conv1": [], "conv2": [], "conv3": []}}, {"conv1": 30}))
    blob[-1] |= 0b11  # bits 30 and 31: padding of a 30-channel model
    with pytest.raises(PayloadError, match="beyond the model"):
        decode_circuits(bytes(blob), {"conv1": 30})


def _report() -> ClientReport:
    return ClientReport(
        partition_id=2,
        num_examples=100,
        circuits=CIRCUITS,
        train_loss=0.5,
        train_accuracy=0.9,
        sparsity=0.99,
        timings={"t_train": 1.0, "t_discovery": 2.0},
        class_counts=[10] * 10,
        local_scores={0: CircuitScores(sufficiency=1.0, specificity=float("nan"), necessity=0.1, cpr=0.8, cmd=0.25)},
        discovery_steps={0: 200, 7: 120},
    )


def test_report_round_trip():
    metrics = report_to_metrics(_report(), SIZES)
    assert all(isinstance(v, (int, float, str, bytes, bool)) for v in metrics.values())
    back = report_from_metrics(metrics, 100, num_clients=3, layer_sizes=SIZES, num_classes=10)
    assert back.circuits == CIRCUITS and back.partition_id == 2 and back.discovery_steps == {0: 200, 7: 120}
    assert '"specificity": null' in str(metrics["report"])  # NaN travels as null
    assert back.local_scores[0].sufficiency == 1.0 and math.isnan(back.local_scores[0].specificity)
    assert (back.local_scores[0].cpr, back.local_scores[0].cmd) == (0.8, 0.25)  # a client's integrated faithfulness
    assert back.timings == {"t_train": 1.0, "t_discovery": 2.0}


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"partition_id": 3}, "partition_id = 3 must be an integer in 0..2"),
        ({"partition_id": "0"}, "partition_id"),
        ({"train_accuracy": 1.5}, r"train_accuracy = 1.5 is outside"),
        ({"train_loss": "low"}, "train_loss must be a number"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"t_train": -1.0}, "t_train"),
        ({"report": "{not json"}, "not valid JSON"),
        ({"report": "[]"}, "must be a JSON object"),
        ({"report": "x" * 70000}, "over the"),
        ({"report": json.dumps({"class_counts": [1, 2]})}, "class_counts"),
        ({"report": json.dumps({"local_scores": {"5": {"sufficiency": 1.0}}})}, "class 5, which has no circuit"),
        ({"report": json.dumps({"local_scores": {"0": {"sufficiency": 2.0}}})}, r"sufficiency must be a fraction"),
        ({"report": json.dumps({"discovery_steps": {"zero": 1}})}, "not a class"),
        ({"circuits": b"FMC1"}, "FMC1 header"),
        # Found by tests/test_fuzz.py: a field that must be an object, given a scalar, crashed the decoder.
        ({"report": json.dumps({"local_scores": True})}, "local_scores must be a JSON object, got bool"),
        ({"report": json.dumps({"noise_floor": [1]})}, "noise_floor must be a JSON object, got list"),
        ({"report": json.dumps({"discovery_steps": "7"})}, "discovery_steps must be a JSON object, got str"),
    ],
)
def test_malformed_reports_are_refused_with_a_reason(patch, message):
    metrics = {**report_to_metrics(_report(), SIZES), **patch}
    with pytest.raises(PayloadError, match=message):
        report_from_metrics(metrics, 100, num_clients=3, layer_sizes=SIZES, num_classes=10)


def test_missing_partition_id_and_bad_example_count():
    metrics = report_to_metrics(_report(), SIZES)
    with pytest.raises(PayloadError, match="num_examples"):
        report_from_metrics(metrics, 0, num_clients=3, layer_sizes=SIZES, num_classes=10)
    del metrics["partition_id"]
    with pytest.raises(PayloadError, match="partition_id = None"):
        report_from_metrics(metrics, 100, num_clients=3, layer_sizes=SIZES, num_classes=10)


def test_fit_instructions_round_trip_and_validate():
    config = load_experiment("quickstart", {"train.sparsity": 0.95, "discovery.steps": 17})
    sent = fit_instructions(config, server_round=4)
    assert all(isinstance(v, (bool, int, float, str)) for v in sent.values())
    got = FitInstructions.parse({**sent, "proximal_mu": 0.1})
    assert got.server_round == 4 and got.proximal_mu == 0.1
    assert (
        got.config.train == config.train
        and got.config.discovery == config.discovery
        and got.config.analysis == config.analysis
    )
    assert got.config.seed == config.seed
    with pytest.raises(ConfigError, match="train.sparsity"):
        FitInstructions.parse({**sent, "train.sparsity": 7.0})
    with pytest.raises(ConfigError, match="proximal_mu"):
        FitInstructions.parse({**sent, "proximal_mu": -1.0})
