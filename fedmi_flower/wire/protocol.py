"""What crosses the wire between server and clients, and the checks on it.

Server to client: the fit instructions (train, discovery and analysis settings of the
experiment, the round and the seed) as a flat Flower config.

Client to server: weights, plus a :class:`ClientReport` carried in the fit metrics:
the circuits as packed bit masks (``circuits``, bytes), scalars Flower tools can read
as they are (``partition_id``, ``train_loss``, ...), and the nested rest as one JSON
string (``report``). The server treats all of it as untrusted: every decode checks
sizes, ranges and types and raises :class:`PayloadError` naming what is wrong.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedmi_flower.config import ConfigError, ExperimentConfig
from fedmi_flower.science.circuits import SCORE_NAMES, SCORE_RANGE, Circuit, CircuitScores

FIT_SECTIONS = ("train", "discovery", "analysis", "faults")
FIT_SCALARS = ("clients", "rounds")
"""Top-level fields a client needs beside the sections: its config is validated against the run's own."""
CIRCUITS_MAGIC = b"FMC1"
MAX_REPORT_BYTES = 64 * 1024
MAX_CIRCUIT_BYTES = 64 * 1024
MAX_METRICS_BYTES = 256 * 1024
TIMING_KEYS = ("t_train", "t_discovery", "t_floor", "t_evaluate", "t_total")
"""A client's seconds. The floor client finds its floor in the loop of its own circuits (issue 29): ``t_discovery``
holds both, ``t_floor`` the comparison alone (before: the floor's discovery)."""


class PayloadError(ValueError):
    """A client's payload is malformed; the message says what is wrong with it."""


# ---------------------------------------------------------------------------- server -> client


CLASS_CIRCUITS = "class_circuits"
"""Fit config key: every class's union of its clients' circuits of the previous round, as :func:`encode_circuits`
packs them (``train.disjoint = "circuits"``, :mod:`fedmi_flower.science.disjoint`)."""


def fit_instructions(
    config: ExperimentConfig, server_round: int, class_circuits: bytes | None = None
) -> dict[str, bool | int | float | str | bytes]:
    """The fit config of one round: the experiment's train, discovery and analysis settings, and the previous
    round's circuits of every class where disjoint-circuit training asks for them."""
    flat: dict[str, bool | int | float | str | bytes] = {
        k: v for k, v in config.to_run_config().items() if k.split(".", 1)[0] in FIT_SECTIONS or k in FIT_SCALARS
    }
    flat.update(seed=config.seed, server_round=int(server_round))
    if class_circuits:
        flat[CLASS_CIRCUITS] = class_circuits
    return flat


@dataclass(frozen=True)
class FitInstructions:
    """A client's view of :func:`fit_instructions`, validated."""

    server_round: int
    config: ExperimentConfig  # its clients, rounds, train, discovery, analysis, faults and seed are the server's
    proximal_mu: float = 0.0  # set by FedProx's configure_fit (legacy) or configure_train (Message API)
    class_circuits: bytes = b""
    """The previous round's circuits of every class, packed (:data:`CLASS_CIRCUITS`); empty when none were sent."""

    @classmethod
    def parse(cls, fit_config: Mapping[str, Any]) -> FitInstructions:
        """Validate and decode a fit config; raise :class:`ConfigError` naming the bad field."""
        rest = dict(fit_config)
        server_round = rest.pop("server_round", 0)
        rest.pop("server-round", None)  # the Message API's FedAvg adds it; server_round says the same
        mu = rest.pop("proximal_mu", rest.pop("proximal-mu", 0.0))  # FedProx: legacy API's key, Message API's key
        if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 0:
            raise ConfigError(f"fit config: server_round = {server_round!r} must be a non-negative integer")
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu) or mu < 0:
            raise ConfigError(f"fit config: proximal_mu = {mu!r} must be a finite number >= 0")
        packed = rest.pop(CLASS_CIRCUITS, b"")
        if not isinstance(packed, bytes):
            raise ConfigError(
                f"fit config: {CLASS_CIRCUITS} must be bytes (encode_circuits), got {type(packed).__name__}"
            )
        return cls(server_round, ExperimentConfig.from_run_config(rest), float(mu), packed)


# ---------------------------------------------------------------------------- circuits


def encode_circuits(circuits: Mapping[int, Circuit], layer_sizes: Mapping[str, int]) -> bytes:
    """Pack circuits into bytes: magic, class count, then per class its id and its bit mask.

    The mask of a class concatenates the sites in ``layer_sizes`` order, one bit a
    channel, padded to whole bytes.
    """
    total = sum(layer_sizes.values())
    parts = [CIRCUITS_MAGIC, struct.pack(">H", len(circuits))]
    for cls in sorted(circuits):
        bits = np.zeros(total, dtype=np.uint8)
        offset = 0
        for layer, size in layer_sizes.items():
            channels = circuits[cls].get(layer, [])
            if channels:
                bits[offset + np.asarray(channels, dtype=np.int64)] = 1
            offset += size
        parts.append(struct.pack(">B", int(cls)))
        parts.append(np.packbits(bits).tobytes())
    return b"".join(parts)


def decode_circuits(blob: Any, layer_sizes: Mapping[str, int], num_classes: int | None = None) -> dict[int, Circuit]:
    """Unpack :func:`encode_circuits` output, checking every byte of it.

    Raises
    ------
    PayloadError
        Wrong type, size, magic or padding; a class id out of range (``num_classes``,
        when given) or repeated.
    """
    if not isinstance(blob, (bytes, bytearray)):
        raise PayloadError(f"circuits must be bytes, got {type(blob).__name__}")
    if len(blob) > MAX_CIRCUIT_BYTES:
        raise PayloadError(f"circuits payload is {len(blob)} bytes, over the {MAX_CIRCUIT_BYTES}-byte limit")
    if len(blob) < 6 or blob[:4] != CIRCUITS_MAGIC:
        raise PayloadError("circuits payload does not start with the FMC1 header")
    (count,) = struct.unpack(">H", blob[4:6])
    total = sum(layer_sizes.values())
    mask_bytes = (total + 7) // 8
    expected = 6 + count * (1 + mask_bytes)
    if len(blob) != expected:
        raise PayloadError(
            f"circuits payload is {len(blob)} bytes; {count} classes of {total} channels need {expected}"
        )
    out: dict[int, Circuit] = {}
    pos = 6
    for _ in range(count):
        cls = blob[pos]
        if num_classes is not None and cls >= num_classes:
            raise PayloadError(f"circuits payload names class {cls}; classes are 0..{num_classes - 1}")
        if cls in out:
            raise PayloadError(f"circuits payload repeats class {cls}")
        bits = np.unpackbits(np.frombuffer(bytes(blob[pos + 1 : pos + 1 + mask_bytes]), dtype=np.uint8))
        if bits[total:].any():
            raise PayloadError(f"circuit of class {cls} sets channels beyond the model's {total}")
        circuit, offset = {}, 0
        for layer, size in layer_sizes.items():
            circuit[layer] = np.flatnonzero(bits[offset : offset + size]).tolist()
            offset += size
        out[int(cls)] = circuit
        pos += 1 + mask_bytes
    return out


# ---------------------------------------------------------------------------- client report


@dataclass
class ClientReport:
    """Everything a client reports about its round besides its weights."""

    partition_id: int
    num_examples: int
    circuits: dict[int, Circuit]
    train_loss: float = float("nan")
    train_accuracy: float = float("nan")
    sparsity: float = float("nan")
    timings: dict[str, float] = field(default_factory=dict)
    class_counts: list[int] = field(default_factory=list)
    local_scores: dict[int, CircuitScores] = field(default_factory=dict)
    discovery_steps: dict[int, int] = field(default_factory=dict)
    device: str = "cpu"
    sparsity_per_tensor: dict[str, float] = field(default_factory=dict)
    noise_floor: dict[int, dict[str, float]] = field(default_factory=dict)
    """Per class: IoU (per layer and mean) of this client's circuit and the same model's circuit found again
    (another seed and draw of its rows).
    """
    report_bytes: int = 0
    """Measured by the server on arrival (:func:`payload_bytes`), not sent."""
    weights_bytes: int = 0
    """Measured by the server on arrival, not sent."""


def payload_bytes(values: Mapping[str, Any]) -> int:
    """Bytes a report's values take on the wire: bytes and strings as they are, every number as 8, lists by item."""

    def size(value: Any) -> int:
        if isinstance(value, (bytes, bytearray)):
            return len(value)
        if isinstance(value, str):
            return len(value.encode())
        if isinstance(value, (list, tuple)):
            return sum(size(v) for v in value)
        return 8

    return sum(len(key.encode()) + size(value) for key, value in values.items())


def report_to_metrics(
    report: ClientReport, layer_sizes: Mapping[str, int]
) -> dict[str, bool | int | float | str | bytes]:
    """Encode a report as Flower fit metrics."""
    nested = {
        "class_counts": report.class_counts,
        "local_scores": {str(c): s.wire() for c, s in report.local_scores.items()},
        "discovery_steps": {str(c): n for c, n in report.discovery_steps.items()},
        "device": report.device,
        "sparsity_per_tensor": report.sparsity_per_tensor,
        "noise_floor": {
            str(c): {k: None if math.isnan(v) else v for k, v in f.items()} for c, f in report.noise_floor.items()
        },
    }
    metrics: dict[str, bool | int | float | str | bytes] = {
        "partition_id": int(report.partition_id),
        "train_loss": float(report.train_loss),
        "train_accuracy": float(report.train_accuracy),
        "sparsity": float(report.sparsity),
        "circuits": encode_circuits(report.circuits, layer_sizes),
        "report": json.dumps(nested, allow_nan=False, default=_json_none),
    }
    metrics.update({k: float(report.timings[k]) for k in TIMING_KEYS if k in report.timings})
    return metrics


def scalars(record: Mapping[str, Any]) -> dict[str, Any]:
    """A Message API ``ConfigRecord`` as the legacy API's config or metrics.

    Its single values: a list has no legacy form.
    """
    return {key: value for key, value in record.items() if not isinstance(value, list)}


def _json_none(value: Any) -> Any:
    raise TypeError(f"not JSON: {value!r}")


def _number(metrics: Mapping[str, Any], key: str, lo: float, hi: float) -> float:
    value = metrics.get(key, float("nan"))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PayloadError(f"{key} must be a number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        return value
    if not lo <= value <= hi:
        raise PayloadError(f"{key} = {value} is outside [{lo}, {hi}]")
    return value


def _score(value: Any, where: str) -> float | None:
    if value is None:
        return None
    low, high = SCORE_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= float(value) <= high:
        raise PayloadError(f"{where} must be a fraction in [{low:g}, {high:g}] or null, got {value!r}")
    return float(value)


def report_from_metrics(
    metrics: Mapping[str, Any],
    num_examples: int,
    *,
    num_clients: int,
    layer_sizes: Mapping[str, int],
    num_classes: int,
) -> ClientReport:
    """Decode and validate a client's fit metrics.

    Raises
    ------
    PayloadError
        Naming the first field that is missing, of the wrong type, out of range or too big.
    """
    size = sum(len(k) + (len(v) if isinstance(v, (str, bytes, bytearray)) else 8) for k, v in metrics.items())
    if size > MAX_METRICS_BYTES:
        raise PayloadError(f"fit metrics hold {size} bytes, over the {MAX_METRICS_BYTES}-byte limit")
    pid = metrics.get("partition_id")
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < num_clients:
        raise PayloadError(f"partition_id = {pid!r} must be an integer in 0..{num_clients - 1}")
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        raise PayloadError(f"num_examples = {num_examples!r} must be a positive integer")
    circuits = decode_circuits(metrics.get("circuits"), layer_sizes, num_classes)
    raw = metrics.get("report", "{}")
    if not isinstance(raw, str):
        raise PayloadError(f"report must be a JSON string, got {type(raw).__name__}")
    if len(raw) > MAX_REPORT_BYTES:
        raise PayloadError(f"report is {len(raw)} characters, over the {MAX_REPORT_BYTES} limit")
    try:
        nested = json.loads(raw)
    except json.JSONDecodeError as err:
        raise PayloadError(f"report is not valid JSON: {err}") from None
    if not isinstance(nested, dict):
        raise PayloadError("report must be a JSON object")
    counts = nested.get("class_counts", [])
    if (
        not isinstance(counts, list)
        or len(counts) not in (0, num_classes)
        or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts)
    ):
        raise PayloadError(f"class_counts must be {num_classes} non-negative integers")
    local_scores: dict[int, CircuitScores] = {}
    for key, scores in _object(nested, "local_scores").items():
        cls = _class_key(key, circuits, "local_scores")
        if not isinstance(scores, dict):
            raise PayloadError(f"local_scores[{key}] must be an object")
        checked = {name: _score(scores.get(name), f"local_scores[{key}].{name}") for name in SCORE_NAMES}
        local_scores[cls] = CircuitScores.from_wire(checked)
    steps: dict[int, int] = {}
    for key, n in _object(nested, "discovery_steps").items():
        cls = _class_key(key, circuits, "discovery_steps")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise PayloadError(f"discovery_steps[{key}] must be a non-negative integer")
        steps[cls] = n
    per_tensor = nested.get("sparsity_per_tensor") or {}
    if (
        not isinstance(per_tensor, dict)
        or len(per_tensor) > 64
        or any(not isinstance(k, str) or len(k) > 64 for k in per_tensor)
    ):
        raise PayloadError("sparsity_per_tensor must map at most 64 tensor names to fractions")
    per_tensor = {k: _score(v, f"sparsity_per_tensor[{k}]") for k, v in per_tensor.items()}
    floor: dict[int, dict[str, float]] = {}
    for key, entry in _object(nested, "noise_floor").items():
        cls = _class_key(key, circuits, "noise_floor")
        if not isinstance(entry, dict) or set(entry) - {*layer_sizes, "mean"}:
            raise PayloadError(f"noise_floor[{key}] must map layers and 'mean' to IoUs")
        floor[cls] = {k: math.nan if (v := _score(entry[k], f"noise_floor[{key}].{k}")) is None else v for k in entry}
    device = nested.get("device", "cpu")
    if not isinstance(device, str) or len(device) > 64:
        raise PayloadError("device must be a short string")
    timings = {k: _number(metrics, k, 0.0, 1e7) for k in TIMING_KEYS if k in metrics}
    return ClientReport(
        partition_id=pid,
        num_examples=num_examples,
        circuits=circuits,
        train_loss=_number(metrics, "train_loss", 0.0, 1e6),
        train_accuracy=_number(metrics, "train_accuracy", 0.0, 1.0),
        sparsity=_number(metrics, "sparsity", 0.0, 1.0),
        timings=timings,
        class_counts=counts,
        local_scores=local_scores,
        discovery_steps=steps,
        device=device,
        sparsity_per_tensor={k: v for k, v in per_tensor.items() if v is not None},
        noise_floor=floor,
    )


def _object(nested: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """The report's field ``name``: a JSON object (an empty one when missing or null)."""
    value = nested.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PayloadError(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


def _class_key(key: str, circuits: Mapping[int, Circuit], where: str) -> int:
    try:
        cls = int(key)
    except (TypeError, ValueError):
        raise PayloadError(f"{where} has a key {key!r} that is not a class") from None
    if cls not in circuits:
        raise PayloadError(f"{where} names class {cls}, which has no circuit in the payload")
    return cls
