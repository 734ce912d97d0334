"""One-page report of a run, of a run's seeds, or of a sweep: config, figures, RQ1 and RQ2 tables, collapse.

The numbers are plain functions of a run's round records (:func:`rq_table` and the
functions it joins), so tests recompute them independently. Each returns
:data:`Numbers`, a flat ``{(table, row, column): value}`` map; over several runs of
one configuration (seeds) every entry is summarised by :func:`spread` as mean, sample
standard deviation and min-max. The page is built once as a list of blocks and
rendered to Markdown and to a small HTML file (standard library only).

Definitions used on every page (paper sections 2.3 and 3):

- A local circuit **collapses** in a round when it works on its own model (verdict
  ``working``) and its sufficiency on the global weights of that round
  (cross-evaluation) is below :data:`COLLAPSE_THRESHOLD` (10%): collapse always means
  collapsed after working. A circuit that never worked cannot collapse.
- The **collapse rate** is the share of the client-class-rounds working on their own
  model that collapse. The paper's count, sufficiency alone below the threshold
  whether or not the circuit worked before, is reported apart under that name.
- A circuit, one client's circuit of one class, **never recovers** when it collapsed
  after working in some round and is still below the threshold in the last round it
  was evaluated (the run's last round for a client that reported then).
- The local-global IoU **peaks, then declines** (paper Fig. 5) when the round of its
  highest value (the first, on ties) comes before the last round and the last value
  lies at least :data:`DECLINE` below the peak.
- **Spread** over n runs: mean, sample standard deviation (n - 1 in the denominator,
  undefined for one run) and [min, max] of the values the runs define; when some run
  leaves a value undefined, the cell says how many runs define it.

No Flower imports here.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shlex
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedmi_flower.config import make_model
from fedmi_flower.records.results import CONFIG_FILE
from fedmi_flower.records.round_record import RoundSummary, View
from fedmi_flower.records.series import (
    GLOBAL,
    OVERALL,
    Record,
    Run,
    RunError,
    accuracy_series,
    circuit_size_series,
    class_pair_series,
    cross_eval_series,
    differing_settings,
    finite,
    group_runs,
    inter_client_series,
    layer_curve,
    local_global_series,
    record_sites,
    setting_label,
    stability_series,
)
from fedmi_flower.science.hook_points import site_sizes
from fedmi_flower.science.law import fit_line
from fedmi_flower.science.metrics import nanmean
from fedmi_flower.science.models import ModelError
from fedmi_flower.science.verdicts import COLLAPSE_THRESHOLD, WORKING_THRESHOLD

DECLINE = 0.05
"""How far below its peak the last local-global IoU must be to count as a decline."""
TREND_ROUNDS = 5
"""Fewer rounds than this, and the page warns that its trend verdicts rest on too few points."""

QUESTIONS = [
    "**RQ1, inter-client consistency**: do clients that hold the same class find the same circuit for it, and do "
    "circuits of different classes stay apart? (paper Fig. 1, 3, 6, 14)",
    "**RQ2, stability and preservation**: does a client keep its circuit of a class from round to round, does the "
    "global model keep the clients' circuits (local-global IoU: does it peak, then decline?), and do the clients' "
    "circuits still work on the global weights, or collapse? (paper Fig. 2, 4, 5, 8, 10, 15-19)",
]
"""The research questions the tables answer, in words."""

Key = tuple[str, str, str]
Numbers = dict[Key, float]
"""``{(table, row, column): value}``; NaN where the run leaves a value undefined."""

OVERVIEW = "Overview"
RQ1 = "RQ1: inter-client consistency (Fig. 1, 3, 6, 14)"
RQ2_STABILITY = "RQ2: intra-client stability (Fig. 10)"
RQ2_TREND = "RQ2: local-global IoU trend (Fig. 2, 5, 8, 15-18)"
COLLAPSE = "Cross-evaluation collapse (Fig. 4, 7, 9, 19)"
COLLAPSE_RATE = "collapse rate: collapsed after working / working on their own model"
"""The collapse table's first row: collapse means collapsed after working, wherever the page says it."""
SUFFICIENCY_BELOW = (
    f"sufficiency below {COLLAPSE_THRESHOLD:.0%} on the global weights, whether or not the circuit worked before "
    "(the paper's count)"
)
"""The paper's count, by sufficiency alone: it includes circuits that never worked on their own model, so the page
never calls it collapse."""
SCALE = "Scale: is a change above the noise floor?"
FAITHFUL = "Faithfulness: do the circuits behave like their model? (final round)"
ALIGNED = "Aligned IoU, degenerate circuits, the global model: what aggregation changes (final round)"
OPEN = "Skew, circuit bloat, polysemanticity, dominance: the paper's open questions"
INTERFERENCE = "Interference, causally: counterfactual aggregation (analysis.counterfactual, all rounds)"
METHODS = "A second discovery method: attribution beside the learned gates (analysis.second_method)"
LEARNED, ATTRIBUTION = "learned gates", "attribution"
ROBUSTNESS = "Robustness: other ablations, CKA, circuit stitching, randomisation controls"
ROBUSTNESS_COUNTS = (
    "working on their own model (all rounds)",
    "preserved on the global weights (all rounds)",
    "collapsed after working (all rounds)",
    "cross-evaluation verdicts compared (all rounds)",
    "verdicts compared with another ablation (all rounds)",
    "verdicts another ablation changes (all rounds)",
    "collapsed after working under zero ablation (all rounds)",
    "collapsed after working under mean ablation (all rounds)",
    "collapsed after working under resample ablation (all rounds)",
    "class-rounds stitched",
    "class-rounds with a working stitched circuit",
    "of those, with no client's own circuit working",
    "cascading randomisation: rounds measured",
    "cascading randomisation: rounds where sufficiency falls monotonically",
    "label-randomised control: circuits",
    "label-randomised control: degenerate circuits",
)
INTERFERENCE_ROWS = (
    "collapsed after working, analysed",
    "restored by leaving out one other client",
    "restored by leaving out a client that holds none of the circuit's class",
)
NONDEGENERATE = "over circuits that are not degenerate"
SCALE_VIEWS = (
    ("inter-client IoU", View.INTER_CLIENT_IOU),
    ("intra-client stability", View.STABILITY),
    ("local-global IoU", View.LOCAL_GLOBAL_IOU),
    ("class-pair IoU", View.CLASS_PAIR_IOU),
)
"""Each IoU view of the summary and its label.

Its noise floor is the view's own (class pairs compare different classes: chance only).
"""
FLOOR, CHANCE, PAIRS, BELOW, ROUNDS_BELOW, AGAINST, COVERS, ENTRIES = (
    "noise floor",
    "chance level",
    "pairs",
    "below the floor",
    "rounds below the floor",
    "value the floor is against",
    "floor covers",
    "of entries",
)

FINAL, MEAN_OVER_ROUNDS = "final round", "mean over rounds"
PEAK_ROUND, PEAK, LAST, DROP, DECLINES = (
    "peak round",
    "peak",
    "final round",
    "drop (peak - final)",
    "peaks, then declines",
)
VALUE = "value"

_COUNTS = {
    "rounds",
    COVERS,
    ENTRIES,
    "empty local circuits (final round)",
    "client-class-rounds evaluated",
    f"{SUFFICIENCY_BELOW}: client-class-rounds",
    "circuits (client, class)",
    "circuits collapsed after working, at least once",
    "never recovered",
    "working on their own model",
    "not scored on their own model",
    "preserved (working on the global weights too)",
    "collapsed after working on their own model",
    "indiscriminate on the global weights",
    PEAK_ROUND,
    PAIRS,
    ROUNDS_BELOW,
    "degenerate local circuits",
    "degenerate global circuits",
    "random-weight control: circuits",
    "random-weight control: degenerate circuits",
    *INTERFERENCE_ROWS,
    *ROBUSTNESS_COUNTS,
}
_VERDICTS = {DECLINES, BELOW}


def _last(curve: np.ndarray) -> float:
    return float(curve[-1]) if len(curve) else float("nan")


# ---------------------------------------------------------------------- the numbers


def overview_numbers(records: Sequence[Record]) -> Numbers:
    """Rounds, global accuracy, and circuit sizes (empty circuits mark a degenerate run)."""
    n = len(records)
    acc = accuracy_series(records).get(OVERALL, np.full(n, np.nan))
    sizes = circuit_size_series(records)
    local_final = [v[-1] for k, v in sizes.items() if k[0] != GLOBAL]
    global_final = [v[-1] for k, v in sizes.items() if k[0] == GLOBAL]
    return {
        (OVERVIEW, "rounds", VALUE): float(n),
        (OVERVIEW, "global accuracy (final round)", VALUE): _last(acc),
        (OVERVIEW, "global accuracy (best round)", VALUE): max(finite(acc), default=float("nan")),
        (OVERVIEW, "local circuit size, channels (final round mean)", VALUE): nanmean(local_final),
        (OVERVIEW, "global circuit size, channels (final round mean)", VALUE): nanmean(global_final),
        (OVERVIEW, "empty local circuits (final round)", VALUE): float(sum(1 for v in finite(local_final) if v == 0)),
    }


def rq1_numbers(records: Sequence[Record]) -> Numbers:
    """RQ1, inter-client consistency, per layer: the last round's value and the mean over rounds.

    A round's value is the mean over classes of the mean pairwise IoU of the clients
    holding the class (``same class``), and the mean over class pairs of the IoU of
    different classes' circuits on different clients (``class pair``; the only
    inter-client view under disjoint label skew, paper Fig. 3 and 14).
    """
    n, out = len(records), {}
    for label, series in (("same class", inter_client_series(records)), ("class pair", class_pair_series(records))):
        for layer in (*record_sites(records), "mean"):
            curve = layer_curve(series, layer, n)
            out[(RQ1, f"{label}, {layer}", FINAL)] = _last(curve)
            out[(RQ1, f"{label}, {layer}", MEAN_OVER_ROUNDS)] = nanmean(curve)
    return out


def rq2_numbers(records: Sequence[Record]) -> Numbers:
    """RQ2: intra-client stability per layer (last round, mean over rounds), and the local-global IoU trend.

    Both curves are round-wise means over clients and classes. The trend gives the
    round of the peak, the peak, the last value, the drop (peak minus last) and
    whether the curve peaks, then declines (see the module's definitions).
    """
    n, out = len(records), {}
    rounds = [r.round for r in records]
    stab = stability_series(records)
    for layer in (*record_sites(records), "mean"):
        curve = layer_curve(stab, layer, n)
        out[(RQ2_STABILITY, layer, FINAL)] = _last(curve)
        out[(RQ2_STABILITY, layer, MEAN_OVER_ROUNDS)] = nanmean(curve)
    lg = local_global_series(records)
    for layer in (*record_sites(records), "mean"):
        curve = layer_curve(lg, layer, n)
        defined = ~np.isnan(curve)
        if not defined.any():
            peak_round = peak = float("nan")
        else:
            i = int(np.flatnonzero(curve == np.nanmax(curve))[0])
            peak_round, peak = float(rounds[i]), float(curve[i])
        last = _last(curve)
        drop = peak - last
        declines = float("nan") if math.isnan(drop) else float(peak_round < rounds[-1] and drop >= DECLINE)
        out.update(
            {
                (RQ2_TREND, layer, PEAK_ROUND): peak_round,
                (RQ2_TREND, layer, PEAK): peak,
                (RQ2_TREND, layer, LAST): last,
                (RQ2_TREND, layer, DROP): drop,
                (RQ2_TREND, layer, DECLINES): declines,
            }
        )
    return out


def collapse_numbers(records: Sequence[Record], threshold: float = COLLAPSE_THRESHOLD) -> Numbers:
    """Cross-evaluation collapse, led by the collapse rate: the share of circuits working on their own model that
    collapse on the global weights.

    From every cross-evaluation entry of the records (one client's circuit of one class
    in one round): whether it worked on its own model (``local_verdict`` ``working``),
    collapsed after working (and its sufficiency on the global weights below
    ``threshold``), stayed working there (preserved) or turned indiscriminate; per
    circuit, whether it collapsed after working in some round and never recovered. The
    paper's collapse, sufficiency alone below ``threshold`` whether or not the circuit
    worked before, is given apart under that name. See the module's definitions.
    """
    worked = preserved = after_working = indiscriminate = unscored = 0
    ever: set[Any] = set()
    for record in records:
        for pid, per in record.cross_eval.items():
            for cls, s in per.items():
                indiscriminate += s.verdict == "indiscriminate"
                unscored += s.local_verdict in ("unscored", "")
                if s.local_verdict != "working":
                    continue  # a circuit that never worked cannot collapse: its low score is its own model's
                worked += 1
                preserved += s.verdict == "working"
                if not math.isnan(s.sufficiency) and s.sufficiency < threshold:
                    after_working += 1
                    ever.add((pid, cls))
    suff = cross_eval_series(records, "sufficiency")
    spec = cross_eval_series(records, "specificity")
    values = [v for series in suff.values() for v in finite(series)]
    below = sum(1 for v in values if v < threshold)
    never = [k for k in ever if finite(suff[k]) and finite(suff[k])[-1] < threshold]
    nan = float("nan")
    return {
        (COLLAPSE, COLLAPSE_RATE, VALUE): after_working / worked if worked else nan,
        (COLLAPSE, "working on their own model", VALUE): float(worked),
        # Without scores from their own model it is unknown whether they worked: neither working nor collapsed.
        (COLLAPSE, "not scored on their own model", VALUE): float(unscored),
        (COLLAPSE, "collapsed after working on their own model", VALUE): float(after_working),
        (COLLAPSE, "preserved (working on the global weights too)", VALUE): float(preserved),
        (COLLAPSE, "preservation rate (of those working)", VALUE): preserved / worked if worked else nan,
        (COLLAPSE, "indiscriminate on the global weights", VALUE): float(indiscriminate),
        (COLLAPSE, "circuits (client, class)", VALUE): float(sum(1 for s in suff.values() if finite(s))),
        (COLLAPSE, "circuits collapsed after working, at least once", VALUE): float(len(ever)),
        (COLLAPSE, "never recovered", VALUE): float(len(never)),
        (COLLAPSE, "client-class-rounds evaluated", VALUE): float(len(values)),
        (COLLAPSE, f"{SUFFICIENCY_BELOW}: client-class-rounds", VALUE): float(below),
        (COLLAPSE, f"{SUFFICIENCY_BELOW}: share of those evaluated", VALUE): below / len(values) if values else nan,
        (COLLAPSE, "sufficiency (final round mean)", VALUE): nanmean([s[-1] for s in suff.values()]),
        (COLLAPSE, "specificity (final round mean)", VALUE): nanmean([s[-1] for s in spec.values()]),
    }


def scale_numbers(records: Sequence[Record]) -> Numbers:
    """Every IoU view against its scale, from the round summaries.

    Per view: its final-round value, the noise floor and chance level of that round,
    the defined pairs behind the value, whether the value lies below the floor (the
    circuits differ by more than discovery noise explains) and in how many rounds it
    does. Records without a floor (``analysis.noise_floor = false``, or written before
    floors existed) leave the floor columns undefined.
    """
    out: Numbers = {}
    summaries = [r.summary for r in records if r.analysed]  # a round whose analysis failed has no summary
    last = summaries[-1] if summaries else RoundSummary()
    for label, view in SCALE_VIEWS:
        numbers = last.view(view)
        floor = numbers.floor
        out[(SCALE, label, FINAL)] = numbers.mean
        out[(SCALE, label, FLOOR)] = floor
        out[(SCALE, label, CHANCE)] = numbers.chance
        out[(SCALE, label, PAIRS)] = float(numbers.pairs) if summaries else float("nan")
        # The floor is taken over the view's non-degenerate classes that have one: the verdict compares the
        # view's mean over exactly those entries with it, and says how many of the view's entries that is.
        clean = last.against_floor(view)
        covers, entries = numbers.floor_covers, numbers.entries
        out[(SCALE, label, AGAINST)] = clean
        out[(SCALE, label, COVERS)] = float(covers) if entries else float("nan")
        out[(SCALE, label, ENTRIES)] = float(entries) if entries else float("nan")
        out[(SCALE, label, BELOW)] = float("nan") if math.isnan(clean) or math.isnan(floor) else float(clean < floor)
        pairs = [(s.against_floor(view), s.view(view).floor) for s in summaries]
        defined = [(v, f) for v, f in pairs if not (math.isnan(v) or math.isnan(f))]
        out[(SCALE, label, ROUNDS_BELOW)] = float(sum(1 for v, f in defined if v < f)) if defined else float("nan")
    return out


def faithfulness_numbers(records: Sequence[Record]) -> Numbers:
    """Faithfulness and degenerate circuits of the final analysed round, and every IoU view over the others.

    Records written before faithfulness existed leave these undefined.
    """
    analysed = [r for r in records if r.analysed]
    if not analysed or analysed[-1].schema < 2:  # written before faithfulness and verdicts of degeneracy existed
        return {}
    last = analysed[-1]
    s = last.summary
    control = last.control
    out: Numbers = {
        (FAITHFUL, "faithfulness of local circuits (own model)", VALUE): s.local_faithfulness,
        (FAITHFUL, "faithfulness of global circuits", VALUE): s.global_faithfulness,
        (FAITHFUL, "faithfulness of local circuits on the global weights", VALUE): s.cross_faithfulness,
        (FAITHFUL, "degenerate local circuits", VALUE): float(s.degenerate_local),
        (FAITHFUL, "degenerate global circuits", VALUE): float(s.degenerate_global),
        (FAITHFUL, "random-weight control: circuits", VALUE): float(len(control.circuits)) if control else math.nan,
        (FAITHFUL, "random-weight control: degenerate circuits", VALUE): float(s.control_degenerate)
        if control
        else math.nan,
        (FAITHFUL, "random-weight control: faithfulness of its circuits that are not degenerate", VALUE): (
            s.control_faithfulness
        ),
        # MIB's area under faithfulness over circuit size (analysis.integrated_faithfulness): the ranking, not one cut.
        (FAITHFUL, "integrated faithfulness (CPR) of the local rankings", VALUE): s.local_cpr,
        (FAITHFUL, "integrated faithfulness (CPR) of the global rankings", VALUE): s.global_cpr,
        (FAITHFUL, "random-weight control: integrated faithfulness (CPR)", VALUE): s.control_cpr,
    }
    for label, view in SCALE_VIEWS:
        out[(FAITHFUL, f"{label} {NONDEGENERATE}", VALUE)] = s.view(view).nondegenerate
        out[(FAITHFUL, f"{label} {NONDEGENERATE}: pairs", VALUE)] = float(s.view(view).nondegenerate_pairs)
    return out


def alignment_numbers(records: Sequence[Record]) -> Numbers:
    """Raw against aligned IoU, how far alignment moved channels, and the global model's sparsity (final round).

    Aligned IoU compares masks after each client's channels are matched to the global
    model's (``analysis.alignment``); raw IoU low and aligned IoU high means the same
    circuit in other channels. Records without alignment leave the aligned rows undefined.
    """
    analysed = [r for r in records if r.analysed]
    if not analysed:
        return {}
    last = analysed[-1]
    s = last.summary
    return {
        (ALIGNED, "inter-client IoU, raw", VALUE): s.inter_client_iou.mean,
        (ALIGNED, "inter-client IoU, aligned", VALUE): s.aligned_inter_client_iou.mean,
        (ALIGNED, "local-global IoU, raw", VALUE): s.local_global_iou.mean,
        (ALIGNED, "local-global IoU, aligned", VALUE): s.aligned_local_global_iou.mean,
        (ALIGNED, "channels moved by the alignment, per client", VALUE): s.channels_moved,
        (ALIGNED, "share of local circuits degenerate", VALUE): last.local_degenerate_share,
        (ALIGNED, "share of global circuits degenerate", VALUE): last.global_degenerate_share,
        (ALIGNED, "global model sparsity", VALUE): last.global_model.sparsity,
    }


def open_question_numbers(records: Sequence[Record]) -> Numbers:
    """Label skew, circuit bloat, induced polysemanticity and dominance (final round; persistence over rounds).

    ``one client keeps winning``: per class held by two or more clients, the share of
    rounds its most frequent winner won, averaged over those classes (1: the same
    client every round). Records written before these measures leave them undefined.
    """
    analysed = [r for r in records if r.analysed]
    if not analysed:
        return {}
    s = analysed[-1].summary
    winners: dict[int, list[int]] = {}
    for record in analysed:
        for cls, d in record.dominance.items():
            if d.winner is not None and not math.isnan(d.lead):  # held by two or more clients
                winners.setdefault(cls, []).append(d.winner)
    persistence = [max(w.count(k) for k in set(w)) / len(w) for w in winners.values() if w]
    return {
        (OPEN, "label skew: mean EMD of the clients to the pooled labels (0 to 2)", VALUE): s.mean_label_emd,
        (OPEN, "circuit bloat: global / local circuit size, mean over classes", VALUE): s.circuit_bloat,
        (OPEN, "channels used by 2+ classes, share: local models", VALUE): s.polysemantic_local,
        (OPEN, "channels used by 2+ classes, share: global model", VALUE): s.polysemantic_global,
        (OPEN, "dominance: the winning client's local-global IoU lead", VALUE): s.dominance_lead,
        (OPEN, "dominance: entropy over the holders (0: one client, 1: all alike)", VALUE): s.dominance_entropy,
        (OPEN, "one client keeps winning: its share of the rounds", VALUE): nanmean(persistence),
    }


SKEW_LAW_MIN_SPREAD = 0.05
"""Runs whose mean label EMDs span less than this make no skew law (one skew, several seeds)."""


def _slope_over_rounds(curve: np.ndarray) -> float:
    rounds = np.arange(len(curve), dtype=float)
    kept = ~np.isnan(curve)
    return float(np.polyfit(rounds[kept], curve[kept], 1)[0]) if kept.sum() >= 2 else float("nan")


def _law_runs(runs: Sequence[Run]) -> list[Run]:
    """The runs a skew law counts: those with an analysed round (:func:`skew_law_points`, :func:`skew_law_groups`)."""
    return [run for run in runs if any(r.analysed for r in run.records)]


def skew_law_points(runs: Sequence[Run]) -> dict[str, tuple[list[float], list[float]]]:
    """Per metric, every run's mean label EMD (of its final round) and its value: the points a skew law is fitted to.

    Empty when the runs do not span :data:`SKEW_LAW_MIN_SPREAD` of EMD (or predate the measure).
    """
    emd: list[float] = []
    values: dict[str, list[float]] = {}
    for run in _law_runs(runs):
        analysed = [r for r in run.records if r.analysed]
        s = analysed[-1].summary
        n = len(run.records)
        emd.append(s.mean_label_emd)
        for name, value in (
            ("global accuracy", s.global_accuracy),
            ("inter-client IoU", s.inter_client_iou.mean),
            ("local-global IoU", s.local_global_iou.mean),
            (
                "local-global IoU slope per round",
                _slope_over_rounds(layer_curve(local_global_series(run.records), "mean", n)),
            ),
            ("collapse rate after working", collapse_numbers(run.records)[(COLLAPSE, COLLAPSE_RATE, VALUE)]),
            ("share of global circuits degenerate", analysed[-1].global_degenerate_share),
            ("circuit bloat", s.circuit_bloat),
            ("channels used by 2+ classes, global", s.polysemantic_global),
        ):
            values.setdefault(name, []).append(value)
    defined = finite(emd)
    if len(defined) < 3 or max(defined) - min(defined) < SKEW_LAW_MIN_SPREAD:
        return {}
    return {name: (emd, ys) for name, ys in values.items()}


def skew_law_groups(runs: Sequence[Run]) -> list[str]:
    """The setting of every run :func:`skew_law_points` counts, in its order: the run's name without its seed.

    Runs of one setting (a sweep point's seeds) share a label, so that a figure can show
    their mean and spread beside the single runs.
    """
    return [re.sub(r"-seed=\d+$", "", run.config.name) for run in _law_runs(runs)]


def interference_numbers(records: Sequence[Record]) -> Numbers:
    """Counterfactual aggregation over all rounds: collapsed circuits, how many one client's absence restores,
    whether that client holds the circuit's class at all, and how often IoU dominance names it.

    Empty for a run without ``analysis.counterfactual``.
    """
    if not any(r.interference for r in records):
        return {}
    collapsed = restored = outsider = agree = 0
    for r in records:
        holders = {cls: {p for p, c in r.clients.items() if cls in c.circuits} for cls in r.classes}
        for per in r.interference.values():
            for cls, entry in per.items():
                collapsed += 1
                if not entry.restored_by:
                    continue
                restored += 1
                outsider += entry.strongest not in holders.get(cls, set())
                winner = r.dominance[cls].winner if cls in r.dominance else None
                agree += winner == entry.strongest
    return {
        (INTERFERENCE, INTERFERENCE_ROWS[0], VALUE): float(collapsed),
        (INTERFERENCE, INTERFERENCE_ROWS[1], VALUE): float(restored),
        (INTERFERENCE, "restored: share of those analysed", VALUE): restored / collapsed if collapsed else math.nan,
        (INTERFERENCE, INTERFERENCE_ROWS[2], VALUE): float(outsider),
        (INTERFERENCE, "the strongest overwriter is the class's IoU-dominant client: share", VALUE): (
            agree / restored if restored else math.nan
        ),
    }


def method_numbers(records: Sequence[Record]) -> Numbers:
    """The learned gates' conclusions beside the attribution method's: cross-evaluation counts over all rounds,
    inter-client IoU, faithfulness and CPR in the final round, and how much the two methods' circuits overlap.

    Empty for a run without ``analysis.second_method``.
    """
    measured = [r for r in records if r.analysed and r.second_method is not None]
    if not measured:
        return {}
    last = measured[-1]
    s = last.summary
    counts = {LEARNED: [0, 0, 0], ATTRIBUTION: [0, 0, 0]}
    agree = compared = 0
    for r in measured:
        method = r.second_method
        assert method is not None
        for pid, per in r.cross_eval.items():
            for cls, e in per.items():
                theirs = method.clients.get(pid, {}).get(cls)
                if theirs is None:
                    continue  # a client whose weights the analysis lacked: compared like with like only
                # The learned circuit's verdict on the same rows as the attribution circuit's (like with like).
                learned = theirs.learned_verdict if theirs.learned_verdict is not None else e.verdict
                for name, local, on_global in (
                    (LEARNED, e.local_verdict, learned),
                    (ATTRIBUTION, theirs.own_verdict, theirs.global_verdict),
                ):
                    if local == "working":
                        counts[name][0] += 1
                        counts[name][1] += on_global == "working"
                        counts[name][2] += on_global == "collapsed"
                compared += 1
                agree += theirs.global_verdict == learned
    out: Numbers = {}
    for name, (worked, preserved, collapsed) in counts.items():
        out[(METHODS, ROBUSTNESS_COUNTS[0], name)] = float(worked)
        out[(METHODS, ROBUSTNESS_COUNTS[1], name)] = float(preserved)
        out[(METHODS, ROBUSTNESS_COUNTS[2], name)] = float(collapsed)
        out[(METHODS, COLLAPSE_RATE + " (all rounds)", name)] = collapsed / worked if worked else math.nan
    out[(METHODS, "inter-client IoU (final round)", LEARNED)] = s.inter_client_iou.mean
    out[(METHODS, "inter-client IoU (final round)", ATTRIBUTION)] = s.attribution_inter_client_iou
    out[(METHODS, "inter-client IoU: chance (final round)", LEARNED)] = s.inter_client_iou.chance
    out[(METHODS, "inter-client IoU: chance (final round)", ATTRIBUTION)] = s.attribution_inter_client_iou_chance
    out[(METHODS, "global circuits' faithfulness (final round)", LEARNED)] = s.global_faithfulness
    out[(METHODS, "global circuits' faithfulness (final round)", ATTRIBUTION)] = s.attribution_faithfulness
    out[(METHODS, "CPR of the channel ranking (final round)", LEARNED)] = nanmean(last.global_model.cpr.values())
    out[(METHODS, "CPR of the channel ranking (final round)", ATTRIBUTION)] = s.attribution_cpr
    out[(METHODS, "IoU with the other method's circuit, global model (final round)", ATTRIBUTION)] = s.method_iou
    out[(METHODS, "IoU with the other method's circuit: chance", ATTRIBUTION)] = s.method_iou_chance
    out[(METHODS, "IoU with the other method's circuit, clients' models (final round)", ATTRIBUTION)] = (
        s.method_client_iou
    )
    out[(METHODS, "channels for the learned circuit's faithfulness / its size (final round)", ATTRIBUTION)] = (
        s.attribution_size_ratio
    )
    out[(METHODS, ROBUSTNESS_COUNTS[3], ATTRIBUTION)] = float(compared)
    out[(METHODS, "cross-evaluation verdicts the methods agree on: share", ATTRIBUTION)] = (
        agree / compared if compared else math.nan
    )
    return out


def robustness_numbers(records: Sequence[Record]) -> Numbers:
    """Verdicts under every ablation (all rounds), CKA (final round), circuit stitching (all rounds) and the
    randomisation controls. Empty for a run that measured none of them."""
    analysed = [r for r in records if r.analysed]
    out: Numbers = {}
    with_ablations = [r for r in analysed if r.ablation_verdicts is not None]
    if with_ablations:
        changed = compared = 0
        collapsed: dict[str, int] = {}
        for r in with_ablations:
            verdicts = r.ablation_verdicts
            assert verdicts is not None
            c, n = verdicts.changed()
            changed, compared = changed + c, compared + n
            for ablation, per_client in verdicts.cross_verdicts.items():
                collapsed.setdefault(ablation, 0)
                for pid, per in per_client.items():
                    for cls, verdict in per.items():
                        local = r.cross_eval.get(pid, {}).get(cls)
                        collapsed[ablation] += (
                            local is not None and local.local_verdict == "working" and (verdict == "collapsed")
                        )
        out[(ROBUSTNESS, ROBUSTNESS_COUNTS[4], VALUE)] = float(compared)
        out[(ROBUSTNESS, ROBUSTNESS_COUNTS[5], VALUE)] = float(changed)
        out[(ROBUSTNESS, "verdicts another ablation changes: share", VALUE)] = (
            changed / compared if compared else math.nan
        )
        for ablation in ("zero", "mean", "resample"):
            if ablation in collapsed:
                out[(ROBUSTNESS, f"collapsed after working under {ablation} ablation (all rounds)", VALUE)] = float(
                    collapsed[ablation]
                )
    with_cka = [r for r in analysed if r.cka]
    if with_cka:
        s = with_cka[-1].summary
        out[(ROBUSTNESS, "CKA of client and global model, mean over sites (final round)", VALUE)] = s.cka
        out[(ROBUSTNESS, "CKA on the other half of the images (the estimate's noise)", VALUE)] = s.cka_again
        out[(ROBUSTNESS, "CKA with the images unpaired (chance)", VALUE)] = s.cka_chance
        out[(ROBUSTNESS, "CKA of a never-trained model with the global model (the baseline)", VALUE)] = s.cka_untrained
        out[(ROBUSTNESS, "CKA masked to each class's circuits (final round)", VALUE)] = s.circuit_cka
        out[(ROBUSTNESS, "CKA masked to circuits, images unpaired (chance)", VALUE)] = s.circuit_cka_chance
    with_stitching = [r for r in analysed if r.stitched]
    if with_stitching:
        out[(ROBUSTNESS, "class-rounds stitched", VALUE)] = float(
            sum(r.summary.stitched_classes for r in with_stitching)
        )
        out[(ROBUSTNESS, "class-rounds with a working stitched circuit", VALUE)] = float(
            sum(r.summary.stitched_working for r in with_stitching)
        )
        out[(ROBUSTNESS, "of those, with no client's own circuit working", VALUE)] = float(
            sum(r.summary.stitched_working_no_client for r in with_stitching)
        )
    with_cascade = [r for r in analysed if r.cascade is not None and r.cascade.sufficiency]
    if with_cascade:
        last = with_cascade[-1].cascade
        assert last is not None
        out[(ROBUSTNESS, "cascading randomisation: rounds measured", VALUE)] = float(len(with_cascade))
        out[(ROBUSTNESS, "cascading randomisation: rounds where sufficiency falls monotonically", VALUE)] = float(
            sum(1 for r in with_cascade if r.cascade is not None and r.cascade.monotone)
        )
        out[(ROBUSTNESS, "cascading randomisation: sufficiency, trained (final round)", VALUE)] = last.sufficiency[0]
        out[(ROBUSTNESS, "cascading randomisation: sufficiency, every layer randomised", VALUE)] = last.sufficiency[-1]
    control = next((r.label_control for r in reversed(analysed) if r.label_control is not None), None)
    if control is not None:
        out[(ROBUSTNESS, "label-randomised control: circuits", VALUE)] = float(len(control.circuits))
        out[(ROBUSTNESS, "label-randomised control: degenerate circuits", VALUE)] = float(len(control.degenerate))
    return out


def rq_table(records: Sequence[Record]) -> Numbers:
    """Every number a report shows for one run, in page order."""
    return {
        **overview_numbers(records),
        **rq1_numbers(records),
        **rq2_numbers(records),
        **collapse_numbers(records),
        **interference_numbers(records),
        **scale_numbers(records),
        **faithfulness_numbers(records),
        **alignment_numbers(records),
        **open_question_numbers(records),
        **method_numbers(records),
        **robustness_numbers(records),
    }


@dataclass(frozen=True)
class Spread:
    """One number over several runs: mean, sample std, min, max of the ``n`` runs (of ``total``) that define it."""

    mean: float
    std: float
    min: float
    max: float
    n: int
    total: int


def spread(values: Sequence[float]) -> Spread:
    """Summarise one number over runs; NaN values (undefined in a run) are left out and counted."""
    kept = finite(values)
    if not kept:
        nan = float("nan")
        return Spread(nan, nan, nan, nan, 0, len(values))
    std = statistics.stdev(kept) if len(kept) > 1 else float("nan")
    return Spread(statistics.fmean(kept), std, min(kept), max(kept), len(kept), len(values))


def aggregate(tables: Sequence[Numbers]) -> dict[Key, Spread]:
    """:func:`spread` of every entry over several runs' :func:`rq_table` results."""
    keys = list(dict.fromkeys(k for t in tables for k in t))
    return {k: spread([t.get(k, float("nan")) for t in tables]) for k in keys}


# ---------------------------------------------------------------------- formatting


def _kind(key: Key) -> str:
    _, row, column = key
    if column in _VERDICTS:
        return "verdict"
    if "circuit size, channels" in row or "channels moved" in row:
        return "channels"
    return "count" if row in _COUNTS or column in _COUNTS or row.endswith(": pairs") else "float"


def _of_total(total: int | None) -> str:
    return f" of {total} channels" if total else " channels"


def format_value(key: Key, value: float, total_channels: int | None = None) -> str:
    """One run's value as the page shows it; undefined is an em dash.

    Circuit sizes read "71 of 224 channels" with the model's channel total when given.
    """
    if math.isnan(value):
        return "—"
    kind = _kind(key)
    if kind == "verdict":
        return "yes" if value else "no"
    if kind == "channels":  # a mean over circuits: one decimal unless whole ("0.4", not "0", for near-empty ones)
        number = f"{value:.0f}" if value == round(value) else f"{value:.1f}"
        return number + _of_total(total_channels)
    return f"{value:.0f}" if kind == "count" else f"{value:.3f}"


def format_spread(key: Key, s: Spread, total_channels: int | None = None) -> str:
    """Several runs' value: ``mean ± std [min, max]`` (verdicts: ``k of n runs``)."""
    if s.n == 0:
        return "—"
    kind = _kind(key)
    if kind == "verdict":
        text = f"{s.mean * s.n:.0f} of {s.n} runs"
    else:
        digits = 1 if kind in ("count", "channels") else 3
        whole = kind in ("count", "channels")
        low, high = (f"{s.min:.0f}", f"{s.max:.0f}") if whole else (f"{s.min:.3f}", f"{s.max:.3f}")
        std = "—" if math.isnan(s.std) else f"{s.std:.{digits}f}"
        text = f"{s.mean:.{digits}f} ± {std} [{low}, {high}]"
        if kind == "channels":
            text += _of_total(total_channels)
    return text if s.n == s.total else f"{text} (defined in {s.n} of {s.total} runs)"


# ---------------------------------------------------------------------- the page as blocks

Block = tuple[Any, ...]
"""``("h", level, text)``, ``("p", text)``, ``("list", items)``, ``("code", text)``, ``("table", header, rows)``,
``("img", path, caption)``.
"""

DEFINITIONS = [
    "**Faithfulness**: how often a circuit's decision about its class (is it the class?) agrees with its model's, "
    "balanced: the mean of the agreement on the images the model calls the class and on those it does not. 1 is the "
    "whole network; 0.5 is a circuit that answers the class for every input, or never. A circuit is **degenerate** "
    "when it is empty, when the model itself does not recognise the class (its own sufficiency or specificity below "
    f"{WORKING_THRESHOLD:.0%}), when it is always-target (specificity below {WORKING_THRESHOLD:.0%} where the "
    f"model's is at least 90%) or never-target (sufficiency below {COLLAPSE_THRESHOLD:.0%} on the model it was found "
    f"on, whose own is at least {WORKING_THRESHOLD:.0%}); every IoU view is also given over the circuits that are not. "
    "The **random-weight "
    "control** runs the same discovery on a never-trained model of the same architecture and sparsity: its circuits "
    "should all be degenerate.",
    "**Collapse** means collapsed after working: a local circuit collapses in a round when it works on its own "
    f"model (see working, below) and its sufficiency on that round's global weights (cross-evaluation) is below "
    f"{COLLAPSE_THRESHOLD:.0%}. The **collapse rate** is the share of the client-class-rounds working on their own "
    "model that collapse. A circuit that never worked on its own model cannot collapse: its low score on the global "
    "weights repeats its own model's (the heatmap hatches it). The paper counts sufficiency below "
    f"{COLLAPSE_THRESHOLD:.0%} alone, whether or not the circuit worked before; that count is given apart, as "
    "the paper's count.",
    "**Never recovered**: a circuit (one client's circuit of one class) that collapsed after working in some round "
    f"and is still below {COLLAPSE_THRESHOLD:.0%} sufficiency "
    "in the last round it was evaluated (the run's last round for a client that reported then).",
    "**Peaks, then declines**: the round-wise mean local-global IoU reaches its highest value (first on ties) before "
    f"the last round and ends at least {DECLINE} below it.",
    "**Round-wise curves** average over classes (RQ1, same class), class pairs (RQ1, class pair) "
    "or clients and classes (RQ2); "
    "`mean` is the average of the per-layer IoUs as each record stores it. "
    "A value is undefined (—) when every compared circuit is empty, "
    "or no class has two holders (same class, under disjoint label skew).",
    "**Spread** over runs: mean ± sample standard deviation (n − 1) [min, max] of the runs that define the value.",
    "Sufficiency alone is satisfied by a circuit that answers its class for every input: read it with specificity. "
    f"A circuit is **working** when its sufficiency and specificity are both at least {WORKING_THRESHOLD:.0%}, "
    "**indiscriminate** when its specificity is below that "
    "(it calls most other images its class); it is **preserved** when it works on its own model "
    "and on the global weights. Empty and indiscriminate circuits are never preserved.",
    "**Noise floor**: the IoU of the same model's circuit found twice, the way the view compares circuits: "
    "the global model on another seed and another draw of the probe rows "
    "(inter-client IoU), the floor client's own model on another seed and draw of its rows (stability), "
    "or the global model on a holder's training rows against the server's probe rows "
    "(local-global IoU). Floors differ by class, so each view's floor is averaged over exactly the classes "
    "(or client-class pairs) of the view's mean over non-degenerate circuits, and **below the floor** compares "
    "that mean with it; a class without a floor is left out, never given another's. "
    "A value **below the floor** means the circuits differ by more than discovery itself does; "
    "a value above it is as stable as discovery. "
    "Each floor is one draw per round, so a difference of a few hundredths is within its own noise. "
    "**Chance level**: the expected IoU of random channel sets of the same sizes "
    "in the same layers. **Pairs**: the defined pairs behind the mean.",
]


def caveats(runs: Sequence[Run]) -> list[str]:
    """What to keep in mind before the numbers: too few rounds for a trend, degenerate circuits, a failing control.

    Counts are over the final analysed round of every run.
    """
    out = []
    rounds = min(sum(r.analysed for r in run.records) for run in runs)
    if rounds < TREND_ROUNDS:
        out.append(
            f"**Only {rounds} round{'s' if rounds != 1 else ''}**: the trend verdicts (peaks, then declines; never "
            f"recovered) rest on {rounds} point{'s' if rounds != 1 else ''} each; read them as a first look, "
            "not as a trend."
        )
    local = global_ = local_all = global_all = control = control_all = 0
    for run in runs:
        last = next((r for r in reversed(run.records) if r.analysed), None)
        if last is None:
            continue
        local += last.summary.degenerate_local
        local_all += sum(len(c.circuits) for c in last.clients.values())
        global_ += last.summary.degenerate_global
        global_all += len(last.global_model.circuits)
        if last.control is not None:
            control += len(last.control.circuits) - last.summary.control_degenerate
            control_all += len(last.control.circuits)
    where = " (over all runs)" if len(runs) > 1 else ""
    out.append(
        f"**Degenerate circuits** in the final round{where}: {local} of {local_all} local and {global_} of "
        f"{global_all} global (empty, of a class the model does not recognise, always-target or never-target; "
        "see Definitions)."
    )
    if local + global_ > (local_all + global_all) / 2:
        out.append(
            "**Most circuits are degenerate**: the IoUs of this page mostly compare channel sets that do not "
            "behave like their model. Read the rows over circuits that are not degenerate, and the Faithfulness "
            "table, before any IoU."
        )
    if control:
        out.append(
            f"**The random-weight control found {control} of {control_all} circuits that are not degenerate** on a "
            "never-trained model: discovery is manufacturing behaviour the model lacks; distrust the circuits."
        )
    return out


def _against_floor(numbers: Mapping[Key, float], label: str) -> tuple[float, float, float]:
    """A view's final non-degenerate value (the one its floor verdict reads), its floor and its chance level."""
    return (
        numbers.get((SCALE, label, AGAINST), math.nan),
        numbers.get((SCALE, label, FLOOR), math.nan),
        numbers.get((SCALE, label, CHANCE), math.nan),
    )


def _scaled_answer(question: str, numbers: Mapping[Key, float], label: str, same: str, differ: str) -> str:
    value, floor, chance = _against_floor(numbers, label)
    if math.isnan(value):
        return f"**{question}** Not measured in the final round: no pair of non-degenerate circuits defines {label}."
    scale = f"{label} {value:.2f}, noise floor {floor:.2f}, chance {chance:.2f}"
    above_chance = "" if math.isnan(chance) else (" though above chance" if value > chance else " and at chance")
    if math.isnan(floor):
        return f"**{question}** No floor to judge by ({label} {value:.2f}, chance {chance:.2f})."
    if value < floor:
        verdict = f"below the floor,{above_chance}"
        return f"**{question}** No: {differ} by more than discovery noise explains ({scale}; {verdict})."
    return f"**{question}** Yes, as far as the instrument can tell: {same} ({scale}; at or above the floor)."


def answers(numbers: Mapping[Key, float]) -> list[str]:
    """One short answer per research question, in words, read off the same numbers (and floor verdicts) as the
    tables below it: the final round's value of each view against its noise floor, and the collapse counts."""
    out = [
        _scaled_answer(
            "RQ1: do clients that hold a class find the same circuit for it?",
            numbers,
            "inter-client IoU",
            "their circuits of a class overlap as much as one model's circuit found twice",
            "their circuits of a class differ",
        ),
        _scaled_answer(
            "RQ2: does a client keep its circuit from round to round?",
            numbers,
            "intra-client stability",
            "its circuits change no more than rediscovery on one model does",
            "its circuits change",
        ),
        _scaled_answer(
            "RQ2: is a client's circuit the global model's circuit of that class?",
            numbers,
            "local-global IoU",
            "the global model's circuit is the client's",
            "the global model's circuits differ from the clients'",
        ),
    ]
    worked = numbers.get((COLLAPSE, "working on their own model", VALUE), math.nan)
    preserved = numbers.get((COLLAPSE, "preserved (working on the global weights too)", VALUE), math.nan)
    rate = numbers.get((COLLAPSE, COLLAPSE_RATE, VALUE), math.nan)
    if math.isnan(worked) or worked == 0:
        out.append("**Do circuits survive aggregation?** Not measured: no client circuit worked on its own model.")
    else:
        out.append(
            f"**Do circuits survive aggregation?** {preserved:.0f} of {worked:.0f} client circuits that work on their "
            f"own model (over all rounds) still work on the global weights; the collapse rate is {rate:.2f}."
        )
    out += robustness_answers(numbers)
    return out


def robustness_answers(numbers: Mapping[Key, float]) -> list[str]:
    """In words: how much the conclusions depend on the discovery method and on the ablation (when measured)."""
    out = []
    compared = numbers.get((METHODS, ROBUSTNESS_COUNTS[3], ATTRIBUTION), math.nan)
    if not math.isnan(compared) and compared > 0:
        share = numbers.get((METHODS, "cross-evaluation verdicts the methods agree on: share", ATTRIBUTION), math.nan)
        rates = [numbers.get((METHODS, COLLAPSE_RATE + " (all rounds)", m), math.nan) for m in (LEARNED, ATTRIBUTION)]
        iou = numbers.get((METHODS, "IoU with the other method's circuit, clients' models (final round)", ATTRIBUTION))
        out.append(
            f"**Do the conclusions depend on the discovery method?** Attribution circuits of the learned circuits' "
            f"sizes get the same verdict on the global weights for {share:.0%} of {compared:.0f} client circuits; "
            f"collapse rate {rates[0]:.2f} with the learned gates, {rates[1]:.2f} with attribution; the two "
            f"methods' circuits of a client overlap by IoU {iou if iou is not None else math.nan:.2f} in the final "
            "round (the table gives its chance level)."
        )
    changed = numbers.get((ROBUSTNESS, ROBUSTNESS_COUNTS[5], VALUE), math.nan)
    total = numbers.get((ROBUSTNESS, ROBUSTNESS_COUNTS[4], VALUE), math.nan)
    if not math.isnan(total) and total > 0:
        out.append(
            f"**Do the verdicts depend on the ablation?** {changed:.0f} of {total:.0f} verdicts (all rounds) change "
            "when closed channels take zero, their mean, or their value on another image instead of the run's "
            "own ablation."
        )
    return out


def _table_blocks(title: str, numbers: Mapping[Key, str]) -> list[Block]:
    """One run or one group: rows by row label, columns by column label."""
    keys = [k for k in numbers if k[0] == title]
    if not keys:  # a table of a measurement the run did not make (counterfactual aggregation off)
        return []
    rows = list(dict.fromkeys(k[1] for k in keys))
    cols = list(dict.fromkeys(k[2] for k in keys))
    body = [[row] + [numbers.get((title, row, c), "") for c in cols] for row in rows]
    return [("h", 3, title), ("table", [""] + cols, body)]


def _group_table_blocks(title: str, groups: Sequence[Mapping[Key, str]], labels: Sequence[str]) -> list[Block]:
    """Several groups: one row per number, one column per group."""
    keys = list(dict.fromkeys(k for g in groups for k in g if k[0] == title))
    if not keys:
        return []
    body = [[k[1] if k[2] == VALUE else f"{k[1]}: {k[2]}"] + [g.get(k, "") for g in groups] for k in keys]
    return [("h", 3, title), ("table", [""] + list(labels), body)]


def channel_total(runs: Sequence[Run]) -> int | None:
    """The circuit channels of the runs' model (None when they differ or it cannot be built here)."""
    models = {
        (r.config.model.name, json.dumps(r.config.model.args, sort_keys=True), r.config.data.dataset) for r in runs
    }
    if len(models) != 1:
        return None
    try:
        return sum(site_sizes(make_model(runs[0].config)).values())
    except ModelError:  # a researcher's model not importable where the report is made
        return None


def _formatted(runs: Sequence[Run]) -> dict[Key, str]:
    tables = [rq_table(r.records) for r in runs]
    total = channel_total(runs)
    if len(tables) == 1:
        return {k: format_value(k, v, total) for k, v in tables[0].items()}
    return {k: format_spread(k, s, total) for k, s in aggregate(tables).items()}


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


TABLES = (
    OVERVIEW,
    RQ1,
    RQ2_STABILITY,
    RQ2_TREND,
    COLLAPSE,
    INTERFERENCE,
    SCALE,
    FAITHFUL,
    ALIGNED,
    OPEN,
    METHODS,
    ROBUSTNESS,
)
"""The report's tables, in page order."""


def build_report(runs: Sequence[Run], out_file: Path, command: str = "") -> list[Block]:
    """Make the figures beside ``out_file`` and return the page's blocks.

    One configuration (one run, or its seeds): that configuration's figures (of its
    first run) and tables; with several seeds, also the seeds side by side and every
    number as a spread. Several configurations (a sweep): the comparison figures and
    one column per configuration.
    """
    from fedmi_flower.views.plots import plot_compare, plot_run, plot_skew_law  # matplotlib only for a page

    if not runs:
        raise RunError("no runs to report on")
    folder = out_file.parent
    figures = folder / "figures"
    groups = group_runs(runs)
    keys = [k for k in differing_settings([g[0].config for g in groups]) if k != "seed"]  # seeds are listed per run
    labels = [setting_label(g[0].config, keys) for g in groups]
    first = runs[0]

    if len(groups) == 1 and len(runs) == 1:
        title = f"Report: {first.name}"
    elif len(groups) == 1:
        title = f"Report: {first.config.name.rsplit('-seed=', 1)[0]}, {len(runs)} seeds"
    else:
        title = f"Report: {len(runs)} runs differing in {', '.join(keys)}"
    blocks: list[Block] = [("h", 1, title)]
    made = (
        f"Made by `{command}` on {time.strftime('%Y-%m-%d %H:%M')}."
        if command
        else f"Made on {time.strftime('%Y-%m-%d %H:%M')}."
    )
    blocks.append(
        (
            "p",
            made
            + " Every number below is computed from the runs' `rounds.jsonl` by `fedmi_flower.views.report.rq_table`.",
        )
    )
    blocks.append(
        (
            "table",
            ["run", "seed", "rounds", "experiment"],
            [
                [f"`{r.path}`", str(r.config.seed), str(len(r.records)), r.config.description or r.config.name]
                for r in runs
            ],
        )
    )

    blocks.append(("h", 2, "Answers"))
    if len(groups) == 1:
        tables = [rq_table(r.records) for r in runs]
        means = tables[0] if len(tables) == 1 else {k: sp.mean for k, sp in aggregate(tables).items()}
        note = "" if len(runs) == 1 else f" (means over the {len(runs)} seeds)"
        blocks.append(("p", f"Read off the final round's numbers below{note}; the tables give the rest."))
        blocks.append(("list", answers(means)))
    else:
        for label, group in zip(labels, groups):
            tables = [rq_table(r.records) for r in group]
            means = tables[0] if len(tables) == 1 else {k: sp.mean for k, sp in aggregate(tables).items()}
            blocks.append(("p", f"**{label}**"))
            blocks.append(("list", answers(means)))
    blocks.append(("h", 2, "What this page answers"))
    blocks.append(("list", QUESTIONS))
    blocks.append(("h", 2, "Read first"))
    blocks.append(("list", caveats(runs)))
    blocks.append(("h", 2, "Numbers"))
    if len(groups) == 1:
        numbers = _formatted(runs)
        if len(runs) > 1:
            blocks.append(("p", f"Each cell: mean ± standard deviation [min, max] over the {len(runs)} seeds."))
        for title_ in TABLES:
            blocks += _table_blocks(title_, numbers)
    else:
        per_group = [_formatted(g) for g in groups]
        seeds = max(len(g) for g in groups)
        if seeds > 1:
            blocks.append(("p", "Each cell: mean ± standard deviation [min, max] over the configuration's seeds."))
        heads = [f"{lab} ({len(g)} seeds)" if len(g) > 1 else lab for lab, g in zip(labels, groups)]
        for title_ in TABLES:
            blocks += _group_table_blocks(title_, per_group, heads)

    law = skew_law_points(runs)
    if law:
        blocks.append(("h", 2, "The skew law: each metric against label skew"))
        blocks.append(
            (
                "p",
                "Every run is one point: its clients' mean label EMD to the pooled labels (0: IID, 2: disjoint) "
                "against its final round's value (the slope: of the local-global IoU's mean over rounds). "
                "Fit: least-squares line with 95% confidence intervals (Student's t) and R^2 "
                "(`fedmi_flower.science.law.fit_line`); the figure shows the points beside it, and each "
                "setting's mean over its seeds with one standard deviation either way.",
            )
        )
        rows = []
        for name, (xs, ys) in law.items():
            fit = fit_line(xs, ys)
            rows.append(
                [
                    name,
                    # describe() says "R^2 undefined (no variation)" for a constant metric, never an R^2 of 1.
                    fit.describe() if fit is not None else "fewer than 3 runs define it, or they share one EMD",
                    str(len(finite(ys))),
                ]
            )
        blocks.append(("table", ["metric", "fit against mean EMD", "runs"], rows))
        for path, caption in plot_skew_law(law, figures / "skew-law", formats=("png",), groups=skew_law_groups(runs)):
            blocks.append(("img", _relative(path, folder), caption))

    blocks.append(("h", 2, "Definitions"))
    blocks.append(("list", DEFINITIONS))
    blocks.append(("h", 2, "Figures"))
    if len(groups) == 1:
        note = f" (of `{first.name}`; the tables summarise all {len(runs)} runs)" if len(runs) > 1 else ""
        for path, caption in plot_run(first, figures / first.name, formats=("png",)):
            blocks.append(("img", _relative(path, folder), caption + note))
    if len(runs) > 1:
        compare_key = ", ".join(keys) if len(groups) > 1 else "seed"
        compare_groups = groups if len(groups) > 1 else [[r] for r in runs]
        compare_labels = labels if len(groups) > 1 else [f"seed = {r.config.seed}" for r in runs]
        for path, caption in plot_compare(
            compare_groups, compare_labels, compare_key, figures / "compare", formats=("png",)
        ):
            blocks.append(("img", _relative(path, folder), caption))

    blocks.append(("h", 2, "Configuration"))
    blocks.append(
        (
            "p",
            f"`{CONFIG_FILE}` of `{first.name}`"
            + (" (the other runs differ only as listed below):" if len(runs) > 1 else ":"),
        )
    )
    blocks.append(("code", (first.path / CONFIG_FILE).read_text().strip()))
    differ = differing_settings([r.config for r in runs])
    if differ:
        blocks.append(
            (
                "table",
                ["run"] + differ,
                [[r.name] + [setting_label(r.config, [k]).split(" = ", 1)[1] for k in differ] for r in runs],
            )
        )

    return blocks


# ---------------------------------------------------------------------- rendering


def to_markdown(blocks: Sequence[Block]) -> str:
    """The page as GitHub-flavoured Markdown."""
    out: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append("#" * block[1] + " " + block[2])
        elif kind == "p":
            out.append(block[1])
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in block[1]))
        elif kind == "code":
            out.append("```toml\n" + block[1] + "\n```")
        elif kind == "table":
            header, rows = block[1], block[2]
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{Path(block[1]).stem}]({block[1]})\n\n*{block[2]}*")
    return "\n\n".join(out) + "\n"


def _inline_html(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


_CSS = (
    "body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em;line-height:1.4}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}"
    "td:first-child,th:first-child{text-align:left}pre{background:#f6f6f6;padding:.5em;overflow:auto;max-height:24em}"
    "figure{margin:1em 0}img{max-width:100%}figcaption{font-style:italic;color:#444}"
)


def to_html(blocks: Sequence[Block], title: str = "fedmi report") -> str:
    """The page as a standalone HTML file (no scripts, no dependencies)."""
    body: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            body.append(f"<h{block[1]}>{_inline_html(block[2])}</h{block[1]}>")
        elif kind == "p":
            body.append(f"<p>{_inline_html(block[1])}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "code":
            body.append(f"<pre><code>{html.escape(block[1])}</code></pre>")
        elif kind == "table":
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            body.append(
                f'<figure><img src="{html.escape(block[1])}" alt="{html.escape(Path(block[1]).stem)}">'
                f"<figcaption>{_inline_html(block[2])}</figcaption></figure>"
            )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(runs: Sequence[Run], out_file: str | os.PathLike, command: str | None = None) -> tuple[Path, Path]:
    """Write the page as ``out_file`` (Markdown) and beside it as ``.html``, figures under ``figures/``.

    Return both paths.
    """
    md_path = Path(out_file)
    if md_path.suffix.lower() in (".html", ".htm"):
        md_path = md_path.with_suffix(".md")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    command = command if command is not None else " ".join(shlex.quote(a) for a in ["fedmi", *sys.argv[1:]])
    blocks = build_report(runs, md_path, command)
    html_path = md_path.with_suffix(".html")
    md_path.write_text(to_markdown(blocks))
    html_path.write_text(to_html(blocks, title=blocks[0][2]))
    return md_path, html_path
