"""Where a circuit is overwritten: on the weights that make its channels, or on those that read them (issue 28).

Counterfactual aggregation (:mod:`fedmi_flower.analysis.counterfactual`) names the client
whose update broke a circuit and how much of the change to the circuit's own parameters it
made. This module splits that share by side (:func:`overwrite_by_side`) and measures what
the global model does with the circuit's channels on the circuit's own class: a circuit
whose channels still fire as on its own model was broken downstream (what reads them); one
whose channels fall silent was broken where they are made. It reads a finished run's saved
weights (``weights/round-<t>/``), so it asks nothing of the run that made them, and it
takes every circuit, so the collapsed ones are read against the preserved ones of the same
rounds (its summary, against the circuits that worked on their own model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedmi_flower.analysis.counterfactual import overwrite_by_side
from fedmi_flower.config import make_model
from fedmi_flower.records.results import RunDirectory
from fedmi_flower.records.round_record import RecordError, RoundRecord
from fedmi_flower.science.alignment import layout_of
from fedmi_flower.science.circuits import Circuit, circuit_size
from fedmi_flower.science.data import ImageSplit, load_split
from fedmi_flower.science.hook_points import activations
from fedmi_flower.science.model import set_weights
from fedmi_flower.science.permutation_spec import WeightLayout


@dataclasses.dataclass(frozen=True)
class OverwriteSite:
    """One client circuit of a round, seen from one other client of the same round."""

    round: int
    client: int
    cls: int
    size: int
    local_verdict: str
    """On its own model, as the run recorded it; :func:`summarise_sites` reads only the ``working`` ones."""
    verdict: str
    """On the global weights: ``collapsed``, ``working`` (preserved), ...; as the run recorded it."""
    other: int
    restores: bool
    """Leaving ``other`` out of the aggregate made the circuit work again (the run's counterfactual)."""
    strongest: bool
    """``other`` is the circuit's strongest overwriter (:attr:`Interference.strongest`)."""
    writes: float
    """``other``'s share of the change to the circuit's own parameters, on the weights that make its channels."""
    reads: float
    """The same on the weights that read them (the next layer, the classifier)."""
    activity_local: float
    """Mean activation of the circuit's channels on its class's evaluation images, on its own model."""
    activity_global: float
    """The same on the round's global model."""
    activity_other: float
    """The same on ``other``'s model of the round."""


def channel_activity(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per site, each channel's mean activation over ``images`` and positions: one forward pass for every circuit."""
    with torch.no_grad():
        acts = activations(model, images)
    return {site: a.reshape(len(images), a.shape[1], -1).mean(dim=(0, 2)) for site, a in acts.items()}


def circuit_activity(model: nn.Module, images: torch.Tensor, circuit: Circuit) -> float:
    """Mean over ``images`` and the circuit's channels of each channel's mean activation at its site."""
    return activity_of(channel_activity(model, images), circuit)


def activity_of(per_channel: Mapping[str, torch.Tensor], circuit: Circuit) -> float:
    """The circuit's mean over its channels of :func:`channel_activity`; NaN for a circuit of no channel."""
    picked = [per_channel[site][list(channels)] for site, channels in circuit.items() if channels]
    return float(torch.cat(picked).mean()) if picked else float("nan")


def where_overwritten(
    run_path: str | Path, data_root: str | None = None, rounds: Sequence[int] | None = None
) -> list[OverwriteSite]:
    """Every client circuit of every analysed round whose start weights the run kept, from each other client.

    A round's start is the global model of the round before, so round 1 (whose start the run
    does not keep) is left out. Raises ``RecordError`` when no round can be read.
    """
    run = RunDirectory(Path(run_path))
    config = run.read_config()
    records = [r for r in run.read_rounds() if r.analysed and r.cross_eval and (rounds is None or r.round in rounds)]
    evaluation = load_split(config.data.dataset, False, data_root, run.read_partitions()["server"]["evaluation"])
    model = make_model(config)
    model.eval()
    layout = layout_of(model)
    sites: list[OverwriteSite] = []
    kept = 0
    for record in records:
        start = run.read_round_weights(record.round - 1)
        global_weights = run.read_round_weights(record.round)
        # The clients whose weights the run kept (a failed or silent client sent none): the updates decomposed.
        found = {pid: run.read_round_weights(record.round, pid) for pid in record.clients}
        weights = {pid: w for pid, w in found.items() if w is not None}
        if start is None or global_weights is None or len(weights) < 2:
            continue
        kept += 1
        counts = {pid: record.clients[pid].num_examples for pid in weights}
        sites += _round_sites(record, model, layout, start, global_weights, weights, counts, evaluation)
    if not kept:
        raise RecordError(
            f"{run.path} keeps the weights of no analysed round after the first (weights/round-<t>/ with the "
            "global model of the round before and every client's): nothing to decompose"
        )
    return sites


def _round_sites(
    record: RoundRecord,
    model: nn.Module,
    layout: WeightLayout,
    start: Sequence[np.ndarray],
    global_weights: Sequence[np.ndarray],
    local: Mapping[int, Sequence[np.ndarray]],
    counts: Mapping[int, int],
    evaluation: ImageSplit,
) -> list[OverwriteSite]:
    # One forward pass a model and class, read by every circuit of the class: the global model and each client's.
    models: dict[int | None, Sequence[np.ndarray]] = {None: global_weights}
    models.update((pid, w) for pid, w in local.items())
    classes = sorted({cls for per in record.cross_eval.values() for cls in per})
    per_channel: dict[tuple[int | None, int], dict[str, torch.Tensor]] = {}
    for key, weights in models.items():
        set_weights(model, weights)
        for cls in classes:
            per_channel[key, cls] = channel_activity(model, evaluation.images[evaluation.labels == cls])

    def activity_on(key: int | None, cls: int, circuit: Circuit) -> float:
        return activity_of(per_channel[key, cls], circuit)

    sites = []
    for pid, per in sorted(record.cross_eval.items()):
        for cls, scores in sorted(per.items()):
            circuit = record.clients[pid].circuits.get(cls)
            if not circuit or pid not in local:
                continue
            sides = overwrite_by_side(layout, start, local, counts, circuit)
            found = record.interference.get(pid, {}).get(cls)
            restored_by = set(found.restored_by) if found is not None else set()
            own, on_global = activity_on(pid, cls, circuit), activity_on(None, cls, circuit)
            for other in sorted(local):
                if other == pid:
                    continue
                sites.append(
                    OverwriteSite(
                        round=record.round,
                        client=pid,
                        cls=cls,
                        size=circuit_size(circuit),
                        local_verdict=scores.local_verdict,
                        verdict=scores.verdict,
                        other=other,
                        restores=other in restored_by,
                        strongest=found is not None and found.strongest == other,
                        writes=sides[other]["writes"],
                        reads=sides[other]["reads"],
                        activity_local=own,
                        activity_global=on_global,
                        activity_other=activity_on(other, cls, circuit),
                    )
                )
    return sites


@dataclasses.dataclass(frozen=True)
class OverwriteSummary:
    """The circuits of one verdict on the global weights, over a run's rounds."""

    verdict: str
    circuits: int
    activity_ratio: float
    """Median over circuits of their channels' activity on the global model over that on their own."""
    others_writes: float
    """Mean over circuits of the other clients' summed share of the change, on the weights that make the channels."""
    others_reads: float
    """The same on the weights that read them."""
    restorers: int
    """Of these circuits, how many a left-out client restored."""
    restorer_writes: float
    """Mean over restored circuits of the strongest overwriter's share on the making side."""
    restorer_reads: float
    restorer_activity_ratio: float
    """Median of the channels' activity on the strongest overwriter's model over that on the circuit's own."""


def summarise_sites(sites: Sequence[OverwriteSite]) -> list[OverwriteSummary]:
    """One :class:`OverwriteSummary` per verdict on the global weights, collapsed first, of the circuits that work
    on their own model (the others' verdicts on the global weights say nothing of an overwrite)."""
    circuits: dict[tuple[int, int, int], list[OverwriteSite]] = {}
    for site in (s for s in sites if s.local_verdict == "working"):
        circuits.setdefault((site.round, site.client, site.cls), []).append(site)
    verdicts = sorted({views[0].verdict for views in circuits.values()}, key=lambda v: (v != "collapsed", v))
    out = []
    for verdict in verdicts:
        group = [views for views in circuits.values() if views[0].verdict == verdict]
        restorers = [v for views in group for v in views if v.strongest]
        out.append(
            OverwriteSummary(
                verdict=verdict,
                circuits=len(group),
                activity_ratio=_median(_ratio(v[0].activity_global, v[0].activity_local) for v in group),
                others_writes=_mean(sum(s.writes for s in views) for views in group),
                others_reads=_mean(sum(s.reads for s in views) for views in group),
                restorers=len(restorers),
                restorer_writes=_mean(r.writes for r in restorers),
                restorer_reads=_mean(r.reads for r in restorers),
                restorer_activity_ratio=_median(_ratio(r.activity_other, r.activity_local) for r in restorers),
            )
        )
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def _finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if np.isfinite(v)]


def _mean(values: Iterable[float]) -> float:
    kept = _finite(values)
    return float(np.mean(kept)) if kept else float("nan")


def _median(values: Iterable[float]) -> float:
    kept = _finite(values)
    return float(np.median(kept)) if kept else float("nan")
