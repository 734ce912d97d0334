"""A finished run as data: its config, its round records, and every circuit view as a series over rounds.

Figures (:mod:`fedmi_flower.views.plots`) draw these series and reports
(:mod:`fedmi_flower.views.report`) summarise them, so a figure and a table of the same run
read the same numbers. Every series is a numpy array aligned with :attr:`Run.rounds`;
an undefined value (JSON ``null``, a client that did not report, a view that a round
does not carry, a round whose analysis failed) is NaN, never zero.

No Flower imports here.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedmi_flower.config import ConfigError, ExperimentConfig
from fedmi_flower.records.results import CONFIG_FILE, ROUNDS_FILE, RunDirectory
from fedmi_flower.records.round_record import FLOOR_OF_VIEW, IoU, RecordError, RoundRecord, View, number
from fedmi_flower.science.circuits import SCORE_NAMES


def record_sites(records: Sequence[RoundRecord]) -> tuple[str, ...]:
    """The circuit sites the records' circuits name, in the model's order (every circuit names every site)."""
    for r in records:
        for circuit in [
            *r.global_model.circuits.values(),
            *(c for e in r.clients.values() for c in e.circuits.values()),
        ]:
            if circuit:
                return tuple(circuit)
    return ()


"""The per-layer IoU keys of a record, and ``mean`` (their average, as the record stores it)."""

Record = RoundRecord
SeriesKey = Any
"""A series' key: a class, a ``"a-b"`` pair, ``"overall"``, or a tuple of those with a client and a layer."""
Series = dict[SeriesKey, np.ndarray]


class RunError(ValueError):
    """A path is not a usable run directory; the message names the problem and the fix."""


@dataclass
class Run:
    """One run directory, read.

    Attributes
    ----------
    path : Path
        The run directory.
    config : ExperimentConfig
        Its ``config.toml``.
    records : list of RoundRecord
        Its ``rounds.jsonl``, in round order (at least one).
    """

    path: Path
    config: ExperimentConfig
    records: list[RoundRecord]

    @property
    def rounds(self) -> np.ndarray:
        """Round numbers, the x axis of every series."""
        return np.array([r.round for r in self.records], dtype=int)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def layers(self) -> tuple[str, ...]:
        """The model's circuit sites, then ``"mean"``: the panels of every per-site figure."""
        return (*record_sites(self.records), "mean")


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` looks like a folder ``fedmi run`` wrote."""
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def load_run(path: str | os.PathLike) -> Run:
    """Read a run directory, with an error naming the problem and the fix when it is not one.

    Raises
    ------
    RunError
        When ``path`` is missing, is not a run directory, holds no finished round, a
        corrupt ``rounds.jsonl`` or a record of an unknown schema version, or no round
        with a circuit analysis.
    """
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path} does not exist; pass a run directory written by `fedmi run` (its --out)")
    if not is_run_dir(path):
        raise RunError(
            f"{path} is not a run directory (no {CONFIG_FILE}); pass a folder written by `fedmi run` (its --out)"
        )
    try:
        records = RunDirectory(path).read_rounds()
    except RecordError as err:
        raise RunError(str(err)) from None
    if not records:
        raise RunError(
            f"{path} has no finished round yet ({ROUNDS_FILE} is missing or empty); "
            f"wait for its first round, or rerun it: fedmi run {path / CONFIG_FILE}"
        )
    if not any(r.analysed for r in records):
        raise RunError(
            f"{path}: the circuit analysis failed in every round (see analysis_error in "
            f"{ROUNDS_FILE}); there is nothing to plot"
        )
    try:
        config = RunDirectory(path).read_config()
    except ConfigError as err:
        raise RunError(f"{path}: cannot read {CONFIG_FILE}: {err}") from None
    return Run(path, config, records)


def _runs_below(folder: Path, depth: int) -> list[Path]:
    """The run directories under ``folder``, ``depth`` levels down at most, in name order (not inside a run)."""
    found: list[Path] = []
    for child in sorted(c for c in folder.iterdir() if c.is_dir() and not c.name.startswith(".")):
        if is_run_dir(child):
            found.append(child)
        elif depth > 1:
            found.extend(_runs_below(child, depth - 1))
    return found


def find_runs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories named by ``paths``: a run directory itself, or a folder holding them up to 3 levels down
    (a sweep's output, or a study's folder of sweeps such as ``runs/skew/{dirichlet,iid}``).

    Raises
    ------
    RunError
        When a path is neither.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if is_run_dir(p):
            found.append(p)
        elif p.is_dir() and (children := _runs_below(p, depth=3)):
            found.extend(children)
        elif not p.exists():
            raise RunError(
                f"{p} does not exist; pass run directories written by `fedmi run` (or the "
                "folder a sweep wrote them into)"
            )
        else:
            raise RunError(
                f"{p} is not a run directory (no {CONFIG_FILE}) and holds none; pass folders written by `fedmi run`"
            )
    return found


# ---------------------------------------------------------------------- series


def collect(records: Sequence[Record], entries: Callable[[Record], Iterable[tuple[Hashable, Any]]]) -> Series:
    """Build series from ``entries(record)``, which yields ``(key, value)`` pairs of one round.

    Returns ``{key: values over rounds}``, sorted by key; a key a round does not yield is NaN there.
    """
    out: Series = {}
    for i, record in enumerate(records):
        for key, value in entries(record):
            out.setdefault(key, np.full(len(records), np.nan))[i] = number(value)
    return dict(sorted(out.items(), key=lambda kv: _sort_key(kv[0])))


def _sort_key(key: Hashable) -> tuple:
    parts = key if isinstance(key, tuple) else (key,)
    return tuple((0, p, "") if isinstance(p, (int, float)) else (1, 0, str(p)) for p in parts)


def _names(values: Mapping[str, Any]) -> list[str]:
    """The sites of a per-site result, then ``"mean"``."""
    return [*(k for k in values if k != "mean"), "mean"]


def _layers(iou: IoU) -> Iterable[tuple[str, float]]:
    return ((layer, iou.layer(layer)) for layer in _names(iou.layers))


def grouped_series(records: Sequence[Record], view: View) -> Series:
    """A view of means over pairs: ``(class or "a-b" pair, layer) ->`` mean IoU (see :func:`inter_client_series`)."""
    return collect(
        records, lambda r: (((k, layer), v) for k, e in r.grouped_view(view).items() for layer, v in _layers(e))
    )


def inter_client_series(records: Sequence[Record]) -> Series:
    """Inter-client consistency (RQ1; paper Fig. 1, 6).

    ``(class, layer) ->`` mean pairwise IoU of the clients holding the class.
    """
    return grouped_series(records, View.INTER_CLIENT_IOU)


def class_pair_series(records: Sequence[Record]) -> Series:
    """Class-pair IoU (paper Fig. 3, 14).

    ``("a-b", layer) ->`` IoU of class a's and class b's circuits on different clients.

    Under disjoint label skew no class has two holders and this is the only
    inter-client comparison. Records written before the view existed yield nothing.
    """
    return grouped_series(records, View.CLASS_PAIR_IOU)


def per_client_series(records: Sequence[Record], view: View) -> Series:
    """A per-client view: ``(client, class, layer) ->`` IoU (see :func:`stability_series`)."""
    return collect(
        records,
        lambda r: (
            ((p, c, layer), v)
            for p, per in r.per_client_view(view).items()
            for c, e in per.items()
            for layer, v in _layers(e)
        ),
    )


def stability_series(records: Sequence[Record]) -> Series:
    """Intra-client stability (RQ2; paper Fig. 10).

    ``(client, class, layer) ->`` IoU of the client's circuit with its previous one.
    """
    return per_client_series(records, View.STABILITY)


def local_global_series(records: Sequence[Record]) -> Series:
    """Local-global preservation (paper Fig. 2, 5, 8, 15-18).

    ``(client, class, layer) ->`` IoU of local and global circuit.
    """
    return per_client_series(records, View.LOCAL_GLOBAL_IOU)


def view_floor_series(records: Sequence[Record], view: View) -> Series:
    """The noise floor behind each entry of an IoU view, keyed as the view's own series.

    Inter-client IoU gives ``(class, layer)``, local-global IoU and stability
    ``(client, class, layer)``: the floor :meth:`RoundRecord.floor_entries` gives each entry
    of the view's non-degenerate mean, the same entries the summary's floor averages. An
    entry without a floor yields nothing: a figure averages these over the classes it draws
    and never borrows another class's floor. Class-pair IoU has none.
    """
    if FLOOR_OF_VIEW.get(view) is None:
        return {}
    by_round = {r.round: r for r in records}

    def entries(r: Record) -> Iterable[tuple[Hashable, Any]]:
        before = by_round.get(r.round - 1)
        dead = {p: set(c.degenerate) for p, c in before.clients.items()} if before is not None else {}
        for key, f in r.floor_entries(view, dead):
            if f is not None:
                head = key if isinstance(key, tuple) else (key,)
                yield from (((*head, layer), v) for layer, v in _layers(f))

    return collect(records, entries)


def chance_series(records: Sequence[Record], view: View) -> Series:
    """Chance level of an IoU view, keyed as the view's own series: expected IoU of random circuits of the same sizes.

    Inter-client and class-pair IoU give ``(class or pair, layer)`` keys, stability and
    local-global IoU ``(client, class, layer)``. Records written before chance levels
    existed yield nothing.
    """

    def entries(r: Record) -> Iterable[tuple[Hashable, Any]]:
        if view in (View.INTER_CLIENT_IOU, View.CLASS_PAIR_IOU):
            for key, e in r.grouped_view(view).items():
                if e.chance is not None:
                    yield from (((key, layer), e.chance_layer(layer)) for layer in _names(e.chance))
        else:
            for p, per in r.per_client_view(view).items():
                for c, e in per.items():
                    if e.chance is not None:
                        yield from (((p, c, layer), e.chance_layer(layer)) for layer in _names(e.chance))

    return collect(records, entries)


def cross_eval_series(records: Sequence[Record], score: str = "sufficiency") -> Series:
    """Cross-evaluation (paper Fig. 4, 7, 9).

    ``(client, class) ->`` ``score`` of the local circuit on the global weights.

    ``score`` is ``sufficiency`` (the paper's circuit accuracy), ``specificity`` or ``necessity``.
    """
    if score not in SCORE_NAMES:
        raise ValueError(f"score {score!r} is none of {', '.join(SCORE_NAMES)}")
    return collect(
        records, lambda r: (((p, c), getattr(s, score)) for p, per in r.cross_eval.items() for c, s in per.items())
    )


OVERALL = "overall"
"""The key of the overall accuracy in :func:`accuracy_series` (the classes are int keys)."""


def accuracy_series(records: Sequence[Record]) -> Series:
    """Global model accuracy: :data:`OVERALL` and each class (an int key) over rounds."""

    def entries(r: Record) -> Iterable[tuple[Hashable, Any]]:
        if not r.analysed:
            return
        yield OVERALL, r.global_model.accuracy
        yield from r.global_model.per_class_accuracy.items()

    return collect(records, entries)


GLOBAL = "global"
"""The client key of the global model's circuits in :func:`circuit_size_series`."""


def circuit_size_series(records: Sequence[Record]) -> Series:
    """Circuit sizes in channels: ``(client, class)`` for local circuits, ``(GLOBAL, class)`` for the global model's."""

    def entries(r: Record) -> Iterable[tuple[Hashable, Any]]:
        for pid, client in r.clients.items():
            yield from (((pid, c), n) for c, n in client.circuit_sizes.items())
        yield from (((GLOBAL, c), n) for c, n in r.global_model.circuit_sizes.items())

    return collect(records, entries)


def summary_series(records: Sequence[Record], name: str) -> np.ndarray:
    """One scalar summary (a :class:`~fedmi_flower.records.round_record.RoundSummary` field) over rounds.

    NaN where not analysed.
    """
    return np.array([r.summary.scalar(name) if r.analysed else math.nan for r in records], dtype=float)


# ---------------------------------------------------------------------- reductions


def nanmean_rows(rows: Iterable[np.ndarray], length: int) -> np.ndarray:
    """Round-wise mean of several series, ignoring NaN; NaN where every series is NaN."""
    stack = [np.asarray(r, dtype=float) for r in rows]
    if not stack:
        return np.full(length, np.nan)
    a = np.vstack(stack)
    counts = np.sum(~np.isnan(a), axis=0)
    sums = np.nansum(a, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def layer_curve(series: Series, layer: str, length: int) -> np.ndarray:
    """Round-wise mean over every key of ``series`` (classes, clients) at ``layer``: one curve per layer."""
    return nanmean_rows((v for k, v in series.items() if k[-1] == layer), length)


def finite(values: Iterable[float]) -> list[float]:
    """The values that are numbers (not NaN)."""
    return [float(v) for v in values if not math.isnan(float(v))]


# ---------------------------------------------------------------------- comparing runs

IGNORED_SETTINGS: tuple[str, ...] = ("name", "description", "measured_minutes", "resources.", "logging.")
"""Config keys (or key prefixes) that do not tell runs apart: labels, where clients ran, where numbers were logged."""


def settings(config: ExperimentConfig) -> dict[str, Any]:
    """The config as flat dotted keys (``train.sparsity``), without :data:`IGNORED_SETTINGS`."""
    return {
        k: v
        for k, v in config.to_run_config().items()
        if not any(k == i or (i.endswith(".") and k.startswith(i)) for i in IGNORED_SETTINGS)
    }


def differing_settings(configs: Sequence[ExperimentConfig]) -> list[str]:
    """Keys whose values are not the same in every config (a key one config leaves unset counts)."""
    flat = [settings(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    return [k for k in keys if len({json.dumps(f.get(k)) for f in flat}) > 1]


def group_runs(runs: Sequence[Run], ignore: Sequence[str] = ("seed",)) -> list[list[Run]]:
    """Runs whose settings are equal but for ``ignore`` (by default: the seeds of one configuration), in
    order of appearance.
    """
    groups: dict[str, list[Run]] = {}
    for run in runs:
        key = json.dumps({k: v for k, v in settings(run.config).items() if k not in ignore}, sort_keys=True)
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def setting_label(config: ExperimentConfig, keys: Sequence[str]) -> str:
    """``"train.sparsity = 0.95"``: the values of ``keys`` in ``config``, for legends and column heads."""
    flat = settings(config)
    return ", ".join(f"{k} = {flat.get(k, 'unset')}" for k in keys)


def comparison(runs: Sequence[Run]) -> tuple[str, list[list[Run]]]:
    """Split runs that differ in one setting into groups by its value (seeds of a group stay together).

    Returns the setting and the groups, sorted by its value. Runs that differ only
    in their seed are compared by seed.

    Raises
    ------
    RunError
        When fewer than two runs are given, when they do not differ at all, or when
        they differ in more than one setting besides the seed.
    """
    if len(runs) < 2:
        raise RunError("--compare needs at least two run directories (or a folder holding a sweep's runs)")
    groups = group_runs(runs)
    if len(groups) > 1:
        keys = [k for k in differing_settings([g[0].config for g in groups]) if k != "seed"]
    elif differing_settings([r.config for r in runs]) == ["seed"]:
        groups, keys = [[r] for r in runs], ["seed"]
    else:
        raise RunError(
            f"the runs {', '.join(str(r.path) for r in runs)} have the same settings; "
            "--compare shows runs that differ in one setting"
        )
    if len(keys) != 1:
        raise RunError(
            "--compare needs runs that differ in one setting (seeds aside), "
            f"but these differ in {len(keys)}: {', '.join(keys)}; "
            "pass runs that share every other setting, e.g. the runs of one sweep"
        )
    key = keys[0]
    groups.sort(key=lambda g: _sort_key(settings(g[0].config).get(key, "")))
    return key, groups
