"""Property-based fuzz of what the server decodes: a client's fit payload, a run config, a ``--set`` override.

Thousands of random inputs (hypothesis), most of them a valid payload or config with a
few random mutations so that the checks deep inside are reached: each is accepted or
refused with the package's own error and a reason, never anything else.
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmi_flower.config import ConfigError, ExperimentConfig, parse_override
from fedmi_flower.science.circuits import SCORE_NAMES, CircuitScores
from fedmi_flower.wire.protocol import ClientReport, PayloadError, report_from_metrics, report_to_metrics

SIZES = {"conv1": 32, "conv2": 64, "conv3": 128}
PAYLOADS, CONFIGS, OVERRIDES = 1500, 1000, 1000
"""Random inputs per test run (docs/deployment.md gives these counts)."""
SETTINGS = {"deadline": None, "derandomize": True, "database": None}
"""The same inputs on every run (a CI failure reproduces), and no example database written into the checkout."""

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
metric_values = scalars | st.binary(max_size=300)


def valid_metrics() -> dict:
    report = ClientReport(
        partition_id=1,
        num_examples=100,
        circuits={0: {"conv1": [1, 2], "conv2": [3], "conv3": [5, 9]}, 7: {"conv1": [], "conv2": [4], "conv3": []}},
        train_loss=0.4,
        train_accuracy=0.8,
        sparsity=0.99,
        timings={"t_train": 1.0},
        class_counts=[10] * 10,
        local_scores={0: CircuitScores(sufficiency=0.9, specificity=0.8, faithfulness=0.85)},
        discovery_steps={0: 200, 7: 150},
    )
    return dict(report_to_metrics(report, SIZES))


@st.composite
def mutated_metrics(draw) -> tuple[dict, int]:
    metrics = valid_metrics()
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(sorted(metrics) + ["unknown_key"]))
        kind = draw(st.sampled_from(["replace", "delete", "bytes", "report"]))
        if kind == "replace":
            metrics[key] = draw(metric_values)
        elif kind == "delete":
            metrics.pop(key, None)
        elif kind == "bytes" and isinstance(metrics.get("circuits"), bytes):
            blob = bytearray(metrics["circuits"])
            if blob and draw(st.booleans()):
                i = draw(st.integers(0, len(blob) - 1))
                blob[i] = draw(st.integers(0, 255))  # a flipped byte
            else:
                blob = blob[: draw(st.integers(0, len(blob)))]  # a truncated blob
            metrics["circuits"] = bytes(blob)
        else:
            try:
                nested = json.loads(metrics["report"])
            except (KeyError, TypeError, ValueError):  # the report was replaced or deleted above
                nested = {}
            if not isinstance(nested, dict):
                nested = {}
            field = draw(st.sampled_from(["class_counts", "local_scores", "discovery_steps", "device", "noise_floor"]))
            nested[field] = draw(json_values)
            metrics["report"] = json.dumps(nested)
    num_examples = draw(st.sampled_from([100, 0, -1, 10**12]) | st.integers())
    return metrics, num_examples


@settings(max_examples=PAYLOADS, suppress_health_check=[HealthCheck.too_slow], **SETTINGS)
@given(mutated_metrics())
def test_every_payload_is_decoded_or_refused_with_a_reason(case):
    metrics, num_examples = case
    try:
        report = report_from_metrics(metrics, num_examples, num_clients=3, layer_sizes=SIZES, num_classes=10)
    except PayloadError as err:
        assert str(err)
        return
    # Accepted: what the server then relies on holds.
    assert 0 <= report.partition_id < 3 and report.num_examples >= 1
    for circuit in report.circuits.values():
        assert all(0 <= ch < SIZES[layer] for layer, channels in circuit.items() for ch in channels)
    for scores in report.local_scores.values():
        assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in (getattr(scores, name) for name in SCORE_NAMES))


config_keys = st.sampled_from(sorted(ExperimentConfig().to_run_config()) + ["train.sparsty", "nope", "data."])
config_values = (
    st.booleans()
    | st.integers(-10, 10**6)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["[1, 2]", "[]", "null"])
)


@settings(max_examples=CONFIGS, **SETTINGS)
@given(st.dictionaries(config_keys, config_values, max_size=5))
def test_every_run_config_is_built_or_refused_with_a_reason(overrides):
    try:
        config = ExperimentConfig.from_run_config({"experiment": "quickstart", **overrides})
    except ConfigError as err:
        assert str(err)
        return
    assert 0.0 <= config.train.sparsity < 1.0 and config.rounds >= 1 and config.clients >= 1
    assert math.isfinite(config.train.lr)


@settings(max_examples=OVERRIDES, **SETTINGS)
@given(st.text(max_size=40) | st.builds(lambda k, v: f"{k}={v}", config_keys, st.text(max_size=20)))
def test_every_override_is_parsed_or_refused_with_a_reason(text):
    try:
        key, _ = parse_override(text)
    except ConfigError as err:
        assert str(err)
        return
    assert key
