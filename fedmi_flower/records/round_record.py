"""The round record: everything one round of a run says, typed and versioned (one line of ``rounds.jsonl``).

The server's analysis (:mod:`fedmi_flower.analysis.round_analyst`) and the strategy
build a :class:`RoundRecord`; the run directory writes it with :meth:`RoundRecord.to_json`;
every reader (series, figures, graphs, reports, the CLI) gets it back with
:meth:`RoundRecord.from_json` and reads attributes. This module is the only one that
spells a key of the JSON layout, so a renamed field fails loudly, in one place.

JSON layout (schema :data:`SCHEMA_VERSION`; class and client ids are string keys,
undefined values ``null``)::

    {"schema": 4, "round": t, "classes": [...],
     "clients": {pid: ClientEntry}, "global": GlobalEntry,
     "noise_floor": {"seed": {cls: IoU}, "source": {cls: IoU}, "source_client": pid,
                     "source_clients": {cls: pid}, "clients": {pid: {cls: IoU}},
                     "seed_circuits": {cls: circuit}, "source_circuits": {cls: circuit}},
     "inter_client_iou": {cls: IoU}, "class_pair_iou": {"a-b": IoU},
     "local_global_iou": {pid: {cls: IoU}}, "stability": {pid: {cls: IoU}},
     "aligned_inter_client_iou": {cls: IoU}, "aligned_local_global_iou": {pid: {cls: IoU}},
     "dominance": {cls: {"winner": pid, "lead": .., "entropy": ..}},
     "stability_gap": {pid: {cls: IoU}}, "cross_eval": {pid: {cls: CrossEvaluation}},
     "summary": {name: scalar, view: {"mean": .., "pairs": .., "chance": .., "floor": .., ...}},
     "timings": RoundTimings,
     "aggregated": bool, "not_aggregated_because": str, "sampled": n,
     "failures": [...], "silent_clients": [...], "rejected": [...]}

An :class:`IoU` is flat: ``{"conv1": .., "conv2": .., "conv3": .., "mean": .., "chance":
{same layers}, "pairs": n, "clients": [...], "previous_round": t}`` (the last four where
they apply). A round whose analysis failed carries ``analysis_error`` and none of the
analysis fields. Records written before the schema had a version read as version 1:
the same layout, with the views added later simply absent.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fedmi_flower.records.codec import Coded, decode, decode_fields, encode, encode_fields
from fedmi_flower.science.circuits import Circuit, CircuitScores
from fedmi_flower.science.metrics import MEAN

SCHEMA_VERSION = 4
"""Version written into every new record.

4 (issue 26): the summary groups each IoU view's numbers into one object (:class:`ViewSummary`: mean,
pairs, chance, non-degenerate mean and pairs, entries, floor, what the floor covers and what it is
compared with) instead of flat ``<view>_*`` fields; :meth:`RoundSummary.scalars` still gives the flat
names, so ``summary.csv``, Flower's metrics and the digests are unchanged.

3 (issue 24): the summary's floors are each view's own, over its non-degenerate classes (with
``*_covers``, ``*_against`` and ``<view>_entries``), its faithfulness means leave degenerate circuits
out, ``polysemantic_global`` is the global model's share over each client's own classes, and
``label_emd`` is against the partition's label counts; the noise floor keeps its circuits. Version 2
records read as they were written: the same field names held the older definitions.
"""
KNOWN_VERSIONS = (1, 2, 3, 4)
"""Versions this package reads; 1 is a record without a ``schema`` field (written before it existed)."""

Json = dict[str, Any]


class RecordError(ValueError):
    """A round record this package cannot read; the message names the problem and the fix."""


class Step(StrEnum):
    """The round's optional analysis steps: each is timed into ``timings.<step>`` and fails alone into
    ``step_errors[<step>]``."""

    NOISE_FLOOR = "noise_floor"
    INTEGRATED_FAITHFULNESS = "integrated_faithfulness"
    CONTROL = "control"
    ALIGNMENT = "alignment"
    SUPPORT_CONSENSUS = "support_consensus"
    COUNTERFACTUAL = "counterfactual"
    OVERWRITE_SHARES = "overwrite_shares"
    STITCHING = "stitching"
    CKA = "cka"
    SECOND_METHOD = "second_method"
    ABLATIONS = "ablations"
    CASCADE = "cascade"
    LABEL_CONTROL = "label_control"


class View(StrEnum):
    """The circuit-preservation views of paper section 2.3 that a round record carries as IoUs."""

    INTER_CLIENT_IOU = "inter_client_iou"
    CLASS_PAIR_IOU = "class_pair_iou"
    STABILITY = "stability"
    LOCAL_GLOBAL_IOU = "local_global_iou"


class FloorKind(StrEnum):
    """The noise floors of a round (see :mod:`fedmi_flower.analysis.round_analyst`)."""

    SEED = "seed"
    SOURCE = "source"
    CLIENTS = "clients"


FLOOR_OF_VIEW: dict[View, FloorKind] = {
    View.INTER_CLIENT_IOU: FloorKind.SEED,
    View.STABILITY: FloorKind.CLIENTS,
    View.LOCAL_GLOBAL_IOU: FloorKind.SOURCE,
}
"""Which noise floor scales which IoU view (class-pair IoU has none: it compares different classes)."""


def number(value: Any) -> float:
    """A record value as a float; ``None`` (JSON null) and anything non-numeric is NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return float("nan")
    return float(value)


def _keyed(raw: Mapping[str, Any] | None, convert: Any = lambda v: v) -> dict[int, Any]:
    return {int(k): convert(v) for k, v in (raw or {}).items()}


def _nested(raw: Mapping[str, Any] | None, convert: Any) -> dict[int, dict[int, Any]]:
    return {int(p): _keyed(per, convert) for p, per in (raw or {}).items()}


def _str_keyed(values: Mapping[int, Any], convert: Any = lambda v: v) -> Json:
    return {str(k): convert(v) for k, v in sorted(values.items())}


def _circuit(raw: Mapping[str, Any]) -> Circuit:
    return {layer: [int(c) for c in channels] for layer, channels in raw.items()}


# ---------------------------------------------------------------------- IoU entries

_IOU_EXTRAS = ("chance", "pairs", "clients", "previous_round")


@dataclass
class IoU:
    """An IoU of two circuits, or a mean over pairs of them, per layer and over layers (``MEAN``).

    Attributes
    ----------
    layers : dict
        Layer name (and ``"mean"``) to IoU; NaN where undefined (both sets empty).
    chance : dict, optional
        The chance level: the expected IoU of random circuits of the same sizes, keyed as ``layers``.
    pairs : int, optional
        For a mean over pairs: how many pairs have a defined mean.
    clients : list of int, optional
        Inter-client IoU: the clients holding the class.
    previous_round : int, optional
        Stability: the round the circuit was compared with.
    """

    layers: dict[str, float]
    chance: dict[str, float] | None = None
    pairs: int | None = None
    clients: list[int] | None = None
    previous_round: int | None = None

    @property
    def mean(self) -> float:
        """The IoU over layers (NaN when undefined)."""
        return number(self.layers.get(MEAN))

    @property
    def chance_mean(self) -> float:
        """The chance level over layers (NaN when not recorded)."""
        return number((self.chance or {}).get(MEAN))

    def layer(self, name: str) -> float:
        return number(self.layers.get(name))

    def chance_layer(self, name: str) -> float:
        return number((self.chance or {}).get(name))

    # Hand-written, unlike every other section (records/codec.py): the keys are the model's sites, flat
    # beside the extras, the most repeated object of a record and the layout of every schema.
    def to_json(self) -> Json:
        out: Json = dict(self.layers)
        for name in _IOU_EXTRAS:
            value = getattr(self, name)
            if value is not None:
                out[name] = dict(value) if name == "chance" else value
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> IoU:
        return cls(
            layers={k: number(v) for k, v in raw.items() if k not in _IOU_EXTRAS},
            chance={k: number(v) for k, v in raw["chance"].items()} if raw.get("chance") is not None else None,
            pairs=raw.get("pairs"),
            clients=raw.get("clients"),
            previous_round=raw.get("previous_round"),
        )


# ---------------------------------------------------------------------- scores and entries


Scores = CircuitScores
"""A circuit's scores in a record: the one scores type, :class:`~fedmi_flower.science.circuits.CircuitScores`,
which the scoring pass returns and a client reports; written field by field (records/codec.py)."""


@dataclass
class CrossEvaluation(Coded, CircuitScores):
    """A local circuit scored on the global weights.

    With its verdict there (``verdict``) and on its own model (``local_verdict``), and why
    it is degenerate on the global weights (``degenerate``, None when it is not).
    """

    verdict: str = "unscored"
    local_verdict: str = "unscored"
    degenerate: str | None = None


@dataclass
class Interference(Coded):
    """Counterfactual aggregation of one collapsed circuit (issue 28): whose update broke it.

    The circuit (a client's, of one class) works on its own model and collapses on the
    global weights. The server aggregates the round again with each other client left
    out (the same rule, no retraining) and scores the circuit there.
    """

    sufficiency: float = math.nan
    """On the real global weights."""
    without: dict[int, float] = field(default_factory=dict)
    """Left-out client -> the circuit's sufficiency on the aggregate of the others."""
    restored_by: list[int] = field(default_factory=list)
    """Left-out clients whose absence makes the circuit work again (verdict ``working``): its overwriters."""
    overwrite_share: dict[int, float] = field(default_factory=dict)
    """Client -> its share of the round's change to the circuit's own parameters (they add up to 1)."""

    @property
    def strongest(self) -> int | None:
        """The left-out client whose absence gives the circuit its highest sufficiency, if that restores it."""
        if not self.restored_by:
            return None
        return max(self.restored_by, key=lambda k: (self.without.get(k, -1.0), -k))


@dataclass
class Dominance(Coded):
    """Which client's circuit of a class the global circuit follows (:func:`fedmi_flower.science.metrics.dominance`)."""

    winner: int | None = None
    lead: float = math.nan
    entropy: float = math.nan


STITCHINGS = ("union", "intersection", "majority")
"""How :class:`StitchedCircuit` combines the holders' circuits of a class: every channel some holder's circuit
has, those all have, those more than half have."""


@dataclass
class StitchedCircuit:
    """The holders' circuits of one class combined (:data:`STITCHINGS`) and scored on the global weights.

    Circuit stitching (issue 27, item 6; the reference code's union / intersection /
    majority): does the federation hold a working circuit that no single client's is?
    """

    size: int = 0
    holders: int = 0
    scores: Scores = field(default_factory=lambda: Scores())
    verdict: str = "unscored"


@dataclass
class Cka:
    """Linear CKA of one client's model with the global model on the same reference images (issue 27, item 5).

    Per circuit site (``sites``, the reference's latent tier) and per class with the
    activations masked to each model's own circuit of the class (``circuits``, its circuit
    tier; mean over the sites where both circuits hold channels). Measured on one random
    half of the reference images; ``*_again`` on the other half (the estimate's own
    noise: the same two models on another draw) and ``*_chance`` with the halves unpaired
    (client on one, global on the other: what CKA reads between unrelated images, its
    small-sample bias). CKA is invariant to permuting channels, so it is the natural
    partner of raw and aligned IoU.
    """

    sites: dict[str, float] = field(default_factory=dict)
    again: dict[str, float] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)
    circuits: dict[int, float] = field(default_factory=dict)
    circuits_again: dict[int, float] = field(default_factory=dict)
    circuits_chance: dict[int, float] = field(default_factory=dict)
    untrained: dict[str, float] = field(default_factory=dict)
    """Per site: a never-trained model of the same architecture against the global model, on the same images as
    ``sites``: what two unrelated models read (the images' structure passes through any network), the baseline
    a client's CKA must clear to say more than "both see the same images"."""


@dataclass
class AttributionCircuit:
    """A circuit of the second discovery method (attribution, :mod:`fedmi_flower.science.attribution`).

    ``iou`` compares it with the learned circuit of the same class on the same model (with
    the chance level of circuits of these sizes); ``own`` scores it on that model, and for
    a client's circuit ``on_global`` on the global weights (cross-evaluation), each with
    its verdict.
    """

    size: int = 0
    iou: IoU | None = None
    own: Scores = field(default_factory=lambda: Scores())
    own_verdict: str = "unscored"
    on_global: Scores | None = None
    global_verdict: str | None = None
    learned_verdict: str | None = None
    """For a client's circuit: its learned circuit's verdict on the global weights, on the same rows as
    ``global_verdict`` (the two methods compared like with like)."""


@dataclass
class SecondMethod:
    """Attribution discovery beside the learned gates, and their agreement (issue 27, item 2).

    The global model's attribution circuit of each class at the learned circuit's size
    (``same_size``) and at the fewest channels that reach the learned circuit's
    faithfulness (``same_faithfulness``), the area under its faithfulness curve
    (``cpr``), each client's attribution circuit at its learned circuit's size found on
    the client's model (``clients``, cross-evaluated on the global weights), and
    inter-client IoU of those (``inter_client_iou``): the conclusions again, by another method.
    """

    same_size: dict[int, AttributionCircuit] = field(default_factory=dict)
    same_faithfulness: dict[int, AttributionCircuit] = field(default_factory=dict)
    cpr: dict[int, float] = field(default_factory=dict)
    clients: dict[int, dict[int, AttributionCircuit]] = field(default_factory=dict)
    inter_client_iou: dict[int, IoU] = field(default_factory=dict)


@dataclass
class AblationVerdicts:
    """The round's verdicts again under every ablation (issue 27, item 3): what a closed channel outputs.

    ``global_verdicts``: ablation -> class -> the global circuit's verdict; ``cross_verdicts``:
    ablation -> client -> class -> its circuit's verdict on the global weights.
    ``run_ablation`` is the one the run's own verdicts use.
    """

    run_ablation: str = ""
    global_verdicts: dict[str, dict[int, str]] = field(default_factory=dict)
    cross_verdicts: dict[str, dict[int, dict[int, str]]] = field(default_factory=dict)

    def changed(self) -> tuple[int, int]:
        """``(changed, compared)``: verdicts under another ablation that differ from the run's own."""
        base_global = self.global_verdicts.get(self.run_ablation, {})
        base_cross = self.cross_verdicts.get(self.run_ablation, {})
        changed = compared = 0
        for ablation in sorted(set(self.global_verdicts) | set(self.cross_verdicts)):
            if ablation == self.run_ablation:
                continue
            pairs = [(v, base_global.get(c)) for c, v in self.global_verdicts.get(ablation, {}).items()]
            for pid, per in self.cross_verdicts.get(ablation, {}).items():
                pairs += [(v, base_cross.get(pid, {}).get(c)) for c, v in per.items()]
            for verdict, base in pairs:
                if base is not None:
                    compared += 1
                    changed += verdict != base
        return changed, compared


@dataclass
class Cascade:
    """Cascading randomisation (Adebayo et al. 2018; issue 27, item 4), the global model's circuits kept fixed.

    Stage 0 is the trained global model; stage k has its top k parameterised layers
    re-initialised (``stages[k]`` names the layer added at stage k), each keeping the
    trained layer's sparsity pattern. Per stage: the model's accuracy and the mean
    sufficiency and faithfulness of the trained model's circuits of every analysed class.
    A circuit that reflects the trained model degrades as its layers lose their training.
    """

    stages: list[str] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    sufficiency: list[float] = field(default_factory=list)
    faithfulness: list[float] = field(default_factory=list)

    @property
    def monotone(self) -> bool:
        """Whether sufficiency never rises from one stage to the next by more than a sampling step (0.02)."""
        values = [v for v in self.sufficiency if not math.isnan(v)]
        return all(b <= a + 0.02 for a, b in zip(values, values[1:]))


@dataclass
class ClientEntry(Coded):
    """One client's part of a round: what it reported, with its circuits' sizes and local verdicts."""

    num_examples: int = 0
    train_loss: float = math.nan
    train_accuracy: float = math.nan
    sparsity: float = math.nan
    sparsity_per_tensor: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    class_counts: list[int] = field(default_factory=list)
    device: str = "cpu"
    circuits: dict[int, Circuit] = field(default_factory=dict)
    circuit_sizes: dict[int, int] = field(default_factory=dict)
    local_scores: dict[int, Scores] = field(default_factory=dict)
    local_verdicts: dict[int, str] = field(default_factory=dict)
    discovery_steps: dict[int, int] = field(default_factory=dict)
    degenerate: dict[int, str] = field(default_factory=dict)
    """Why a circuit is degenerate on its own model, for each circuit that is (:mod:`fedmi_flower.science.verdicts`)."""
    channels_moved: dict[str, int] = field(default_factory=dict)
    """Per layer, how many of the client's channels its alignment to the global model moved (empty: not aligned)."""
    label_emd: float = math.nan
    """Label skew: EMD of the client's label distribution to the run's (every partition's, partitions.json)."""
    polysemantic_share: float = math.nan
    """Of the channels the client's circuits use, the share used by two or more classes."""
    global_polysemantic_share: float = math.nan
    """The same share for the global model's circuits of this client's classes (like with like)."""
    report_bytes: int = 0
    """Bytes of the client's report as it arrived (circuits as packed masks, scores; the interpretability's
    cost on the wire), 0 where not measured."""
    weights_bytes: int = 0
    """Bytes of the weights it sent, as dense arrays (what Flower's NumPy serialisation carries)."""


@dataclass
class GlobalEntry(Coded):
    """The global model of a round: accuracy, achieved sparsity, its circuits, their scores and verdicts."""

    accuracy: float = math.nan
    loss: float = math.nan
    per_class_accuracy: dict[int, float] = field(default_factory=dict)
    sparsity: float = math.nan
    sparsity_per_tensor: dict[str, float] = field(default_factory=dict)
    circuits: dict[int, Circuit] = field(default_factory=dict)
    circuit_sizes: dict[int, int] = field(default_factory=dict)
    scores: dict[int, Scores] = field(default_factory=dict)
    verdicts: dict[int, str] = field(default_factory=dict)
    degenerate: dict[int, str] = field(default_factory=dict)
    """Why a circuit is degenerate, for each circuit that is."""
    polysemantic_share: float = math.nan
    """Of the channels the global circuits of every analysed class use, the share used by two or more classes
    (not comparable with a client's share over fewer classes: :attr:`ClientEntry.global_polysemantic_share` is)."""
    bloat: dict[int, float] = field(default_factory=dict)
    """Per class: the global circuit's size over the mean size of the clients' circuits of the class."""
    faithfulness_curve: dict[int, list[float]] = field(default_factory=dict)
    """Per class: faithfulness of its top-scored channels at each size of ``curve_sizes`` (integrated faithfulness,
    :mod:`fedmi_flower.science.faithfulness_curve`)."""
    curve_sizes: list[int] = field(default_factory=list)
    """The channel counts of the curves' points."""
    cpr: dict[int, float] = field(default_factory=dict)
    """Per class: area under the faithfulness curve (MIB's CPR; higher is better)."""
    cmd: dict[int, float] = field(default_factory=dict)
    """Per class: area between the curve and 1 (MIB's CMD; lower is better)."""


@dataclass
class NoiseFloor:
    """A round's noise floors: the same model's circuit found twice, compared the way each view compares.

    ``seed``: the global model, another seed and draw of the probe rows (inter-client
    IoU's floor). ``source``: the global model on a holder's rows against the probe rows,
    per class (``source_clients`` says whose; local-global IoU's floor; None when not
    measured; ``source_client`` is the floor client, which is asked first). ``clients``: the floor
    client's own model found twice, as it reported it (stability's floor).
    """

    seed: dict[int, IoU] = field(default_factory=dict)
    source: dict[int, IoU] | None = None
    source_client: int | None = None
    source_clients: dict[int, int] = field(default_factory=dict)
    """Per class of ``source``: the client whose rows its floor was found on (records before it: ``source_client``)."""
    clients: dict[int, dict[int, IoU]] = field(default_factory=dict)
    seed_circuits: dict[int, Circuit] = field(default_factory=dict)
    """The global model's circuits found again for the seed floor (so that a reader can recompute it)."""
    source_circuits: dict[int, Circuit] = field(default_factory=dict)
    """The global model's circuits found on ``source_clients``' rows for the source floor."""
    measured: bool = True

    def of(self, kind: FloorKind) -> dict[int, IoU] | dict[int, dict[int, IoU]]:
        """The floor of one kind (``clients`` is keyed by client, then class)."""
        if kind is FloorKind.SEED:
            return self.seed
        if kind is FloorKind.SOURCE:
            return self.source or {}
        return self.clients

    def to_json(self) -> Json:
        # A round without floors writes an empty object, as every schema has.
        return {k: v for k, v in encode_fields(self).items() if k != "measured"} if self.measured else {}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> NoiseFloor:
        return typing.cast(NoiseFloor, decode_fields(cls, raw)) if raw else cls(measured=False)

    def source_of_class(self, cls: int) -> IoU | None:
        """The source floor of class ``cls`` (local-global IoU's scale for that class), or None."""
        return (self.source or {}).get(cls)

    def client_measuring(self, cls: int) -> int | None:
        """The first client (by partition id) that measured its own floor of class ``cls``, or None."""
        return next((p for p, per in sorted(self.clients.items()) if cls in per), None)


# ---------------------------------------------------------------------- summary, timings, bookkeeping


@dataclass
class ViewSummary(Coded):
    """One IoU view of a round in numbers (paper section 2.3; issue 26 item 4): its mean, what the mean rests on,
    and what to read it against (README, "Reading the numbers").
    """

    mean: float = math.nan
    """Mean over classes (inter-client, class-pair) or over (client, class) pairs of the view's IoUs."""
    pairs: int = 0
    """Defined pairs behind the mean."""
    chance: float = math.nan
    """What random circuits of the same sizes share."""
    nondegenerate: float = math.nan
    """The mean over pairs of circuits that are not degenerate."""
    nondegenerate_pairs: int = 0
    entries: int = 0
    """Classes (inter-client) or (client, class) pairs behind the non-degenerate mean: what the floor should cover."""
    floor: float = math.nan
    """The view's noise floor over its own non-degenerate entries (NaN for a view without one)."""
    floor_covers: int = 0
    """How many of ``entries`` the floor is averaged over (the rest have none)."""
    floor_against: float = math.nan
    """The non-degenerate mean over exactly the entries the floor covers: what the floor verdict compares."""


@dataclass
class RoundSummary:
    """Scalar summaries of a round: what Flower metrics, ``summary.csv`` and the progress line carry.

    Each IoU view is one :class:`ViewSummary` (``summary.inter_client_iou.floor``): its mean
    with the pairs behind it, its chance level, its mean over non-degenerate circuits, and
    its noise floor (the seed floor for inter-client IoU, the client floor for stability,
    the source floor for local-global IoU). :meth:`scalars` flattens them into the names
    ``summary.csv`` and Flower's metrics carry (``inter_client_iou_pairs``, ``seed_floor``).
    """

    clients: int = 0
    stitched_classes: int = 0
    """Classes held by two or more clients, whose circuits were stitched (union, intersection, majority)."""
    stitched_working: int = 0
    """Of those, the classes with a stitched circuit that works on the global weights."""
    stitched_working_no_client: int = 0
    """Classes with a working stitched circuit where no client's own circuit of the class works there."""
    cka: float = math.nan
    """Linear CKA of the clients' models with the global model, mean over clients and sites."""
    cka_again: float = math.nan
    """The same on the other half of the reference images (the estimate's own noise)."""
    cka_chance: float = math.nan
    """The same with the halves unpaired (what CKA reads between unrelated images)."""
    cka_untrained: float = math.nan
    """A never-trained model's CKA with the global model on the same images (the baseline that matters)."""
    circuit_cka: float = math.nan
    """CKA with each model's activations masked to its circuit of a class, mean over clients and classes."""
    circuit_cka_chance: float = math.nan
    method_iou: float = math.nan
    """IoU of the global model's attribution circuit (same size) with its learned circuit, mean over classes."""
    method_iou_chance: float = math.nan
    method_client_iou: float = math.nan
    """The same for the clients' circuits on their own models."""
    method_client_iou_chance: float = math.nan
    attribution_faithfulness: float = math.nan
    """Faithfulness of the global attribution circuits of the learned circuits' sizes."""
    attribution_size_ratio: float = math.nan
    """Channels an attribution circuit needs to be as faithful as the learned one, over the learned one's."""
    attribution_cpr: float = math.nan
    """CPR of the attribution ranking's faithfulness curve (``global_cpr`` is the learned scores')."""
    attribution_working_locally: int = 0
    attribution_preserved: int = 0
    attribution_collapsed_after_working: int = 0
    """Cross-evaluation again with the clients' attribution circuits (``cross_*`` are the learned ones')."""
    attribution_inter_client_iou: float = math.nan
    attribution_inter_client_iou_chance: float = math.nan
    ablation_verdicts_changed: int = 0
    """Verdicts (global and cross-evaluation) that differ under another ablation than the run's."""
    ablation_verdicts_compared: int = 0
    cascade_monotone: float = math.nan
    """1 when the trained circuits' sufficiency falls (never rises by more than 0.02) as layers are randomised."""
    cascade_final_sufficiency: float = math.nan
    label_control_degenerate: int = 0
    """Degenerate circuits of the label-randomised control (every one should be)."""
    support_inter_client_iou: float = math.nan
    """Weight-support consensus between clients, mean over tensors and client pairs (beside circuit IoU)."""
    support_inter_client_iou_chance: float = math.nan
    support_local_global_iou: float = math.nan
    """Each client's weight support against the global model's, mean over tensors and clients."""
    support_local_global_iou_chance: float = math.nan
    global_cpr: float = math.nan
    """Integrated faithfulness of the global model's circuits: CPR, mean over classes (higher is better)."""
    global_cmd: float = math.nan
    """Its CMD, mean over classes (lower is better)."""
    local_cpr: float = math.nan
    """The clients' own circuits' CPR (each ranking on its own model), mean over clients and classes."""
    local_cmd: float = math.nan
    control_cpr: float = math.nan
    """The random-weight control's CPR: a ranking of a model that recognises nothing should integrate to little."""
    control_cmd: float = math.nan
    report_bytes: float = math.nan
    """Mean bytes of a client's report this round (its circuits and scores)."""
    report_to_weights: float = math.nan
    """Mean ratio of a client's report bytes to its weights' bytes: what the interpretability adds to the traffic."""
    interference_collapsed: int = 0
    """Circuits that worked on their own model and collapsed on the global weights, counterfactually analysed."""
    interference_restored: int = 0
    """Of those, how many leaving out one other client's update restores (``analysis.counterfactual``)."""
    interference_restorer_moved_most: float = math.nan
    """Share of the restored circuits whose strongest overwriter also contributed the largest share of the change
    to the circuit's own parameters (NaN when none was restored)."""
    interference_agrees_with_dominance: float = math.nan
    """Share of the restored circuits whose strongest overwriter is the client the IoU-based dominance names for
    the class (NaN when none was restored): does resemblance name the cause?"""
    global_accuracy: float = math.nan
    global_loss: float = math.nan
    inter_client_iou: ViewSummary = field(default_factory=ViewSummary)
    class_pair_iou: ViewSummary = field(default_factory=ViewSummary)
    local_global_iou: ViewSummary = field(default_factory=ViewSummary)
    stability: ViewSummary = field(default_factory=ViewSummary)
    stability_gaps: int = 0
    aligned_inter_client_iou: ViewSummary = field(default_factory=ViewSummary)
    """Inter-client IoU after every client's channels are matched to the global model's (``analysis.alignment``)."""
    aligned_local_global_iou: ViewSummary = field(default_factory=ViewSummary)
    """Local-global IoU after the same alignment."""
    channels_moved: float = math.nan
    """Mean over aligned clients of how many of their channels the alignment moved."""
    mean_label_emd: float = math.nan
    """Label skew of the round's clients: the mean of their ``label_emd``."""
    circuit_bloat: float = math.nan
    """Mean over classes of the global circuit's size over the clients' mean circuit size."""
    polysemantic_local: float = math.nan
    """Mean over clients of the share of their circuits' channels used by two or more classes."""
    polysemantic_global: float = math.nan
    """Mean over the same clients of the same share for the global model's circuits of each client's own classes
    (like with like; records written before issue 24 hold the share over every analysed class here, which
    ``global.polysemantic_share`` still is)."""
    dominance_lead: float = math.nan
    """Mean over classes held by two or more clients of the winning client's local-global IoU lead."""
    dominance_entropy: float = math.nan
    """Mean over those classes of the normalised entropy of the local-global IoUs (0: one client, 1: all alike)."""
    cross_sufficiency: float = math.nan
    cross_specificity: float = math.nan
    cross_collapsed: int = 0
    """The paper's collapse: sufficiency alone below the collapse threshold."""
    cross_working_locally: int = 0
    cross_preserved: int = 0
    cross_collapsed_after_working: int = 0
    cross_indiscriminate: int = 0
    global_circuit_channels: float = math.nan
    local_circuit_channels: float = math.nan
    empty_local_circuits: int = 0
    local_faithfulness: float = math.nan
    """Mean faithfulness of the local circuits that are not degenerate, on their own models, as the clients scored
    them (NaN when every circuit is degenerate)."""
    global_faithfulness: float = math.nan
    """Mean faithfulness of the global circuits that are not degenerate."""
    cross_faithfulness: float = math.nan
    """Mean faithfulness of the local circuits on the global weights (to the global model), over those degenerate
    neither there nor on their own model."""
    degenerate_local: int = 0
    """Local circuits that are degenerate on their own model."""
    degenerate_global: int = 0
    control_degenerate: int = 0
    """Circuits of the random-weight control that are degenerate (all of them, for an instrument that works)."""
    control_faithfulness: float = math.nan
    """Mean faithfulness of the control's circuits that are not degenerate (NaN when none: what should happen)."""

    def view(self, view: View) -> ViewSummary:
        """The summary of one IoU view."""
        return typing.cast(ViewSummary, getattr(self, view.value))

    def set_view(self, view: View, **parts: Any) -> None:
        """Replace some numbers of one view's summary (the analyst adds the floors after the means)."""
        setattr(self, view.value, dataclasses.replace(self.view(view), **parts))

    def against_floor(self, view: View) -> float:
        """The view's value its floor verdict reads: the non-degenerate mean over exactly the entries the floor
        covers (the plain mean for records written before floors were taken per view; NaN without a floor)."""
        if view not in FLOOR_OF_VIEW:
            return math.nan
        v = self.view(view)
        return v.mean if (v.floor_covers, v.entries) == (0, 0) else v.floor_against

    def scalars(self) -> dict[str, float | int]:
        """Every summary by one flat name (the columns of ``summary.csv``, the metrics Flower receives, the digests'
        scalars): a view's parts as ``<view>``, ``<view>_pairs``, ..., its floor under the floor's name
        (:data:`SUMMARY_FLOOR`), as every schema before 4 wrote them."""
        out: dict[str, float | int] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ViewSummary):
                out.update(_flat_view(f.name, value))
            else:
                out[f.name] = value
        return out

    def scalar(self, name: str) -> float:
        """One of :meth:`scalars` by its flat name (NaN for a name this summary does not have)."""
        return number(self.scalars().get(name))

    def to_json(self) -> Json:
        """Schema 4: scalars by name, and each view as an object of its :class:`ViewSummary`."""
        return encode_fields(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None, version: int = SCHEMA_VERSION) -> RoundSummary:
        """Read a summary of schema ``version``: grouped per view from 4 on, flat before (:meth:`scalars`' names)."""
        if version >= 4:
            return typing.cast(RoundSummary, decode_fields(cls, raw))
        flat = raw or {}
        grouped = {
            **flat,
            **{name: {p: flat[k] for p, k in parts.items() if k in flat} for name, parts in _FLAT_PARTS.items()},
        }
        return typing.cast(RoundSummary, decode_fields(cls, grouped))


def _view_parts(name: str) -> dict[str, str]:
    """Flat names (schemas 1-3, :meth:`RoundSummary.scalars`) of the parts of the summary's view field ``name``."""
    parts = {"mean": name, "pairs": f"{name}_pairs", "chance": f"{name}_chance"}
    if name.startswith("aligned_"):
        return parts
    parts.update(nondegenerate=f"{name}_nondegenerate", nondegenerate_pairs=f"{name}_nondegenerate_pairs")
    kind = FLOOR_OF_VIEW.get(View(name))
    if kind is not None:
        floor = SUMMARY_FLOOR[kind]
        parts.update(entries=f"{name}_entries", floor=floor, floor_covers=f"{floor}_covers")
        parts.update(floor_against=f"{floor}_against")
    return parts


def _flat_view(name: str, view: ViewSummary) -> dict[str, float | int]:
    return {key: getattr(view, part) for part, key in _FLAT_PARTS[name].items()}


SUMMARY_GROUPS = ("accuracy", "iou", "cross_eval", "faithfulness", "degenerate", "circuits", "skew", "robustness")
ROBUSTNESS_PREFIXES = (
    "stitched",
    "cka",
    "circuit_cka",
    "method_",
    "attribution_",
    "ablation_",
    "cascade",
    "label_control",
)
"""What a :class:`RoundSummary` field can summarise (TensorBoard files each round's scalars under these)."""


def summary_group(name: str) -> str:
    """Which of :data:`SUMMARY_GROUPS` the :class:`RoundSummary` field ``name`` belongs to."""
    if name in ("global_accuracy", "global_loss"):
        return "accuracy"
    if name.startswith(ROBUSTNESS_PREFIXES):
        return "robustness"
    if name.startswith("cross_"):
        return "cross_eval"
    if name.endswith("_faithfulness"):
        return "faithfulness"
    if name.startswith((*View, "aligned_", *SUMMARY_FLOOR.values())) or name == "channels_moved":
        return "iou"
    if name.startswith(("degenerate", "control", "empty")):
        return "degenerate"
    if name == "mean_label_emd":
        return "skew"
    return "circuits"


ALIGNED_SUMMARY: dict[View, str] = {
    View.INTER_CLIENT_IOU: "aligned_inter_client_iou",
    View.LOCAL_GLOBAL_IOU: "aligned_local_global_iou",
}
"""The :class:`RoundSummary` field of each view measured again after alignment; its chance level is the
same name with ``_chance``."""

SUMMARY_FLOOR: dict[FloorKind, str] = {
    FloorKind.SEED: "seed_floor",
    FloorKind.SOURCE: "source_floor",
    FloorKind.CLIENTS: "client_seed_floor",
}
"""The flat name (schemas 1-3, :meth:`RoundSummary.scalars`) of each noise floor's mean."""

_FLAT_PARTS: dict[str, dict[str, str]] = {
    name: _view_parts(name) for name in (*(v.value for v in View), *ALIGNED_SUMMARY.values())
}
"""Each view field of :class:`RoundSummary`: its parts' flat names."""


@dataclass
class RoundTimings:
    """Where a round's server time went, in seconds (NaN where a step did not run)."""

    global_discovery: float = math.nan
    """The global model's discovery loop; since issue 29 the noise floor's discoveries run in it too."""
    noise_floor: float = math.nan
    """Choosing the noise floor's rows and comparing its circuits (before issue 29: its discoveries as well)."""
    evaluation: float = math.nan
    analysis: float = math.nan
    control: float = math.nan
    """The random-weight control (its first round only: it is computed once)."""
    alignment: float = math.nan
    """Matching every client's channels to the global model's (aligned IoU)."""
    counterfactual: float = math.nan
    """Aggregating again without each client and scoring the collapsed circuits there."""
    support_consensus: float = math.nan
    """The IoU of the clients' and the global model's nonzero weights, tensor by tensor."""
    overwrite_shares: float = math.nan
    """Each client's share of the change to every collapsed circuit's own parameters."""
    integrated_faithfulness: float = math.nan
    """Scoring the global circuits' faithfulness curves over circuit size."""
    stitching: float = math.nan
    """Scoring the union, intersection and majority of the clients' circuits of each class."""
    cka: float = math.nan
    """Linear CKA of every client's model with the global model."""
    second_method: float = math.nan
    """Attribution discovery on the global and every client's model, and its scoring."""
    ablations: float = math.nan
    """Scoring every circuit again under the other ablations."""
    cascade: float = math.nan
    """Cascading randomisation of the global model."""
    label_control: float = math.nan
    """Training the label-randomised control (its first round only) and finding its circuits."""
    server: float = math.nan
    """Screening, aggregation, analysis and writing, inside ``aggregate_fit``."""
    round: float = math.nan
    """From ``configure_fit`` to the end of ``aggregate_fit``: the clients' work included."""

    def to_json(self) -> Json:
        return {k: v for k, v in dataclasses.asdict(self).items() if not math.isnan(v)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> RoundTimings:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: number(v) for k, v in (raw or {}).items() if k in names})


@dataclass
class Failure:
    """A client that failed in a round (``client`` None when Flower did not say which)."""

    client: str | None
    error: str


@dataclass
class SilentClient:
    """A sampled client that neither answered nor failed."""

    client: str
    partition_id: int | None


@dataclass
class Rejection:
    """A client result the server screened out, why, and whether its weights were still aggregated."""

    client: str
    reason: str
    weights_aggregated: bool


# ---------------------------------------------------------------------- the record


ANALYSED_KEYS = ("classes", "clients", "global", "summary")
"""Keys every analysed round's record has in rounds.jsonl, in every schema version: a record without one was
damaged (:func:`check_written_record`; a record built in code may leave out what it does not need)."""


def check_written_record(raw: Mapping[str, Any]) -> None:
    """Raise :class:`RecordError` when a record read from a run directory lacks a key every analysed round has."""
    if "analysis_error" in raw:
        return
    missing = [key for key in ANALYSED_KEYS if key not in raw]
    if missing:
        raise RecordError(
            f"the record of round {raw.get('round')} lacks {', '.join(map(repr, missing))}, which every analysed "
            "round has; the file was edited by hand: restore it, or delete the line to drop the round"
        )


@dataclass
class RoundRecord:
    """One round of a run: the global model, every client's report and every circuit view, with its scale.

    A round whose analysis failed has ``analysis_error`` and empty analysis fields;
    :attr:`analysed` tells them apart.
    """

    round: int
    classes: list[int] = field(default_factory=list)
    clients: dict[int, ClientEntry] = field(default_factory=dict)
    global_model: GlobalEntry = field(default_factory=GlobalEntry)
    control: GlobalEntry | None = None
    """The random-weight control: discovery on a never-trained model of the same architecture and sparsity."""
    noise_floor: NoiseFloor = field(default_factory=lambda: NoiseFloor(measured=False))
    inter_client_iou: dict[int, IoU] = field(default_factory=dict)
    class_pair_iou: dict[str, IoU] = field(default_factory=dict)
    local_global_iou: dict[int, dict[int, IoU]] = field(default_factory=dict)
    stability: dict[int, dict[int, IoU]] = field(default_factory=dict)
    stability_gap: dict[int, dict[int, IoU]] = field(default_factory=dict)
    aligned_inter_client_iou: dict[int, IoU] = field(default_factory=dict)
    """Inter-client IoU by class with every client's masks in the global model's channel indices."""
    aligned_local_global_iou: dict[int, dict[int, IoU]] = field(default_factory=dict)
    """Local-global IoU with the client's masks in the global model's channel indices."""
    dominance: dict[int, Dominance] = field(default_factory=dict)
    """Per class held by some client: which holder's circuit the global circuit follows."""
    cross_eval: dict[int, dict[int, CrossEvaluation]] = field(default_factory=dict)
    summary: RoundSummary = field(default_factory=RoundSummary)
    timings: RoundTimings = field(default_factory=RoundTimings)
    aggregated: bool = True
    not_aggregated_because: str | None = None
    sampled: int = 0
    failures: list[Failure] = field(default_factory=list)
    silent_clients: list[SilentClient] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    analysis_error: str | None = None
    alignment_error: str | None = None
    support_inter_client_iou: IoU | None = None
    """Weight-support consensus (issue 27): IoU of the clients' nonzero weights, tensor by tensor (``layers`` are
    weight tensors), mean over client pairs, with the chance level of random supports of the same sizes."""
    support_local_global_iou: IoU | None = None
    """The same between each client's support and the global model's, mean over clients."""
    interference_left_out: list[int] = field(default_factory=list)
    """The clients counterfactual aggregation left out in turn (all aggregated ones, or a seeded draw of
    ``analysis.counterfactual_clients`` of them)."""
    interference: dict[int, dict[int, Interference]] = field(default_factory=dict)
    """Counterfactual aggregation (``analysis.counterfactual``): client -> class -> :class:`Interference`, for
    every circuit that worked on its own model and collapsed on the global weights."""
    stitched: dict[int, dict[str, StitchedCircuit]] = field(default_factory=dict)
    """Circuit stitching (``analysis.stitching``): class -> :data:`STITCHINGS` rule -> the combined circuit."""
    cka: dict[int, Cka] = field(default_factory=dict)
    """Linear CKA of each client's model with the global model (``analysis.cka``)."""
    second_method: SecondMethod | None = None
    """Attribution discovery and its agreement with the learned gates (``analysis.second_method``)."""
    ablation_verdicts: AblationVerdicts | None = None
    """The verdicts under zero, mean and resample ablation (``analysis.ablations``)."""
    cascade: Cascade | None = None
    """Cascading randomisation of the global model (``analysis.cascade``)."""
    label_control: GlobalEntry | None = None
    """The label-randomised control (``analysis.label_control``): discovery on a model trained on shuffled labels."""
    step_errors: dict[str, str] = field(default_factory=dict)
    """Analysis steps that failed alone (step name -> traceback): their views are empty, the others stand.
    ``alignment_error`` is the ``alignment`` step's, kept under its own name for earlier readers."""
    """Why aligned IoU is missing from an analysed round (the alignment failed; the rest of the analysis stands)."""
    schema: int = SCHEMA_VERSION

    @property
    def analysed(self) -> bool:
        """Whether the round's circuit analysis ran (its views are meaningful)."""
        return self.analysis_error is None

    @property
    def local_degenerate_share(self) -> float:
        """Share of the clients' circuits that are degenerate on their own model (NaN when none was reported)."""
        total = sum(len(c.circuits) for c in self.clients.values())
        return self.summary.degenerate_local / total if total else math.nan

    @property
    def global_degenerate_share(self) -> float:
        """Share of the global model's circuits that are degenerate (NaN when none was found)."""
        total = len(self.global_model.circuits)
        return self.summary.degenerate_global / total if total else math.nan

    def per_client_view(self, view: View) -> dict[int, dict[int, IoU]]:
        """A per-client IoU view (stability or local-global IoU): client -> class -> IoU."""
        if view is View.STABILITY:
            return self.stability
        if view is View.LOCAL_GLOBAL_IOU:
            return self.local_global_iou
        raise ValueError(f"{view} is not a per-client view")

    def floor_entries(
        self, view: View, previous_degenerate: Mapping[int, set[int]] | None = None
    ) -> list[tuple[Any, IoU | None]]:
        """The entries behind a view's non-degenerate mean, each with the noise floor measured for it.

        The one place that decides which entries a view's floor covers, for the summary
        and the figures alike. Inter-client IoU: each class with two or more holders whose
        circuits are not degenerate (key: the class), with its seed floor. Local-global IoU
        and stability: each (client, class) pair whose local circuit is not degenerate
        (and, for local-global, whose global circuit is not; for stability, whose circuit of
        the previous round was not: ``previous_degenerate``, client -> classes), with the
        class's source floor, or a client floor (the client's own where it measured one,
        else the floor client's model's for the same class). A floor found on degenerate
        circuits is None, as is a class without one: floors differ by class, and none is
        ever borrowed from another class.
        """
        floor, dead = self.noise_floor, self.global_model.degenerate
        local_dead = {p: set(c.degenerate) for p, c in self.clients.items()}
        out: list[tuple[Any, IoU | None]] = []
        if view is View.INTER_CLIENT_IOU:
            for c, e in self.inter_client_iou.items():
                holders = [p for p in e.clients or [] if c not in local_dead.get(p, set())]
                if len(holders) >= 2:
                    out.append((c, floor.seed.get(c) if c not in dead else None))
        elif view is View.LOCAL_GLOBAL_IOU:
            for p, per in self.local_global_iou.items():
                for c in per:
                    if c not in local_dead.get(p, set()) and c not in dead:
                        out.append(((p, c), floor.source_of_class(c)))
        elif view is View.STABILITY:
            before = previous_degenerate or {}
            for p, per in self.stability.items():
                for c in per:
                    if c in local_dead.get(p, set()) or c in before.get(p, set()):
                        continue
                    measured_by = p if c in floor.clients.get(p, {}) else floor.client_measuring(c)
                    clean = measured_by is not None and c not in local_dead.get(measured_by, set())
                    out.append(((p, c), floor.clients[measured_by][c] if clean and measured_by is not None else None))
        return out

    def grouped_view(self, view: View) -> dict[Any, IoU]:
        """A view of means over pairs (inter-client IoU by class, class-pair IoU by ``"a-b"``)."""
        if view is View.INTER_CLIENT_IOU:
            return dict(self.inter_client_iou)
        if view is View.CLASS_PAIR_IOU:
            return dict(self.class_pair_iou)
        raise ValueError(f"{view} is not a view of means over pairs")

    def to_json(self) -> Json:
        """The JSON layout of the module docstring (NaN left as is: the run directory writes it as null)."""
        out: Json = {"schema": self.schema, "round": self.round}
        if self.analysed:
            per_client = lambda view: _str_keyed(view, lambda per: _str_keyed(per, IoU.to_json))
            out.update(
                {
                    "classes": list(self.classes),
                    "clients": _str_keyed(self.clients, ClientEntry.to_json),
                    "global": self.global_model.to_json(),
                    "control": self.control.to_json() if self.control is not None else None,
                    "noise_floor": self.noise_floor.to_json(),
                    View.INTER_CLIENT_IOU.value: _str_keyed(self.inter_client_iou, IoU.to_json),
                    View.CLASS_PAIR_IOU.value: {k: v.to_json() for k, v in self.class_pair_iou.items()},
                    View.LOCAL_GLOBAL_IOU.value: per_client(self.local_global_iou),
                    View.STABILITY.value: per_client(self.stability),
                    "stability_gap": per_client(self.stability_gap),
                    "aligned_inter_client_iou": _str_keyed(self.aligned_inter_client_iou, IoU.to_json),
                    "aligned_local_global_iou": per_client(self.aligned_local_global_iou),
                    "dominance": _str_keyed(self.dominance, Dominance.to_json),
                    "interference": _str_keyed(self.interference, lambda per: _str_keyed(per, Interference.to_json)),
                    "interference_left_out": list(self.interference_left_out),
                    "support_inter_client_iou": (
                        self.support_inter_client_iou.to_json() if self.support_inter_client_iou else None
                    ),
                    "support_local_global_iou": (
                        self.support_local_global_iou.to_json() if self.support_local_global_iou else None
                    ),
                    "cross_eval": _str_keyed(self.cross_eval, lambda per: _str_keyed(per, CrossEvaluation.to_json)),
                    **{name: encode(getattr(self, name)) for name in _CODEC_SECTIONS},
                    "summary": self.summary.to_json(),
                }
            )
            if self.alignment_error is not None:
                out["alignment_error"] = self.alignment_error
            if self.step_errors:
                out["step_errors"] = dict(self.step_errors)
        else:
            out["analysis_error"] = self.analysis_error
        out["timings"] = self.timings.to_json()
        out["aggregated"] = self.aggregated
        if self.not_aggregated_because is not None:
            out["not_aggregated_because"] = self.not_aggregated_because
        out["sampled"] = self.sampled
        out["failures"] = [dataclasses.asdict(f) for f in self.failures]
        out["silent_clients"] = [dataclasses.asdict(s) for s in self.silent_clients]
        out["rejected"] = [dataclasses.asdict(r) for r in self.rejected]
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RoundRecord:
        """Read a record; raise :class:`RecordError` for a schema version this package does not know."""
        version = raw.get("schema", 1)
        if version not in KNOWN_VERSIONS:
            raise RecordError(
                f"round record of schema version {version!r}; this fedmi-flower reads versions "
                f"{', '.join(map(str, KNOWN_VERSIONS))}: "
                "read it with the fedmi-flower that wrote it, or upgrade this one"
            )
        if "round" not in raw:
            raise RecordError(
                "round record without a round number; the file was edited by hand or is not a rounds.jsonl"
            )
        per_client = lambda key: _nested(raw.get(key), IoU.from_json)
        return cls(
            round=int(raw["round"]),
            classes=[int(c) for c in raw.get("classes") or []],
            clients=_keyed(raw.get("clients"), ClientEntry.from_json),
            global_model=GlobalEntry.from_json(raw.get("global") or {}),
            control=GlobalEntry.from_json(raw["control"]) if raw.get("control") else None,
            noise_floor=NoiseFloor.from_json(raw.get("noise_floor")),
            inter_client_iou=_keyed(raw.get(View.INTER_CLIENT_IOU.value), IoU.from_json),
            class_pair_iou={k: IoU.from_json(v) for k, v in (raw.get(View.CLASS_PAIR_IOU.value) or {}).items()},
            local_global_iou=per_client(View.LOCAL_GLOBAL_IOU.value),
            stability=per_client(View.STABILITY.value),
            stability_gap=per_client("stability_gap"),
            aligned_inter_client_iou=_keyed(raw.get("aligned_inter_client_iou"), IoU.from_json),
            aligned_local_global_iou=per_client("aligned_local_global_iou"),
            dominance=_keyed(raw.get("dominance"), Dominance.from_json),
            interference=_nested(raw.get("interference"), Interference.from_json),
            interference_left_out=[int(p) for p in raw.get("interference_left_out") or []],
            support_inter_client_iou=IoU.from_json(raw["support_inter_client_iou"])
            if raw.get("support_inter_client_iou")
            else None,
            support_local_global_iou=IoU.from_json(raw["support_local_global_iou"])
            if raw.get("support_local_global_iou")
            else None,
            cross_eval=_nested(raw.get("cross_eval"), CrossEvaluation.from_json),
            **{name: decode(hint, raw.get(name)) for name, hint in _codec_sections().items()},
            summary=RoundSummary.from_json(raw.get("summary"), version),
            timings=RoundTimings.from_json(raw.get("timings")),
            aggregated=bool(raw.get("aggregated", True)),
            not_aggregated_because=raw.get("not_aggregated_because"),
            sampled=int(raw.get("sampled", 0)),
            failures=[Failure(f.get("client"), f.get("error", "")) for f in raw.get("failures") or []],
            silent_clients=[
                SilentClient(s.get("client", ""), s.get("partition_id")) for s in raw.get("silent_clients") or []
            ],
            rejected=[
                Rejection(r.get("client", ""), r.get("reason", ""), bool(r.get("weights_aggregated")))
                for r in raw.get("rejected") or []
            ],
            analysis_error=raw.get("analysis_error"),
            alignment_error=raw.get("alignment_error"),
            step_errors={str(k): str(v) for k, v in (raw.get("step_errors") or {}).items()},
            schema=version,
        )


_CODEC_SECTIONS = ("stitched", "cka", "second_method", "ablation_verdicts", "cascade", "label_control")
"""The record's sections written and read by :mod:`fedmi_flower.records.codec` from their types."""


def _codec_sections() -> dict[str, Any]:
    hints = typing.get_type_hints(RoundRecord)
    return {name: hints[name] for name in _CODEC_SECTIONS}
