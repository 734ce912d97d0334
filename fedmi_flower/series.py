"""A finished run as data: its config, its round records, and every circuit view as a series over rounds.

Figures (:mod:`fedmi_flower.plots`) draw these series and reports
(:mod:`fedmi_flower.report`) summarise them, so a figure and a table of the same run
read the same numbers. Every series is a numpy array aligned with :attr:`Run.rounds`;
an undefined value (JSON ``null``, a client that did not report, a view that a round
does not carry, a round whose analysis failed) is NaN, never zero.

No Flower imports here.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np

from .config import ConfigError, ExperimentConfig
from .model import CIRCUIT_LAYERS
from .results import CONFIG_FILE, ROUNDS_FILE, RunDirectory

LAYERS: tuple[str, ...] = (*CIRCUIT_LAYERS, "mean")
"""The per-layer IoU keys of a record, and ``mean`` (their average, as the record stores it)."""

Record = Mapping[str, Any]
Series = dict[Hashable, np.ndarray]


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
    records : list of dict
        Its ``rounds.jsonl``, in round order (at least one).
    """

    path: Path
    config: ExperimentConfig
    records: list[dict[str, Any]]

    @property
    def rounds(self) -> np.ndarray:
        """Round numbers, the x axis of every series."""
        return np.array([r["round"] for r in self.records], dtype=int)

    @property
    def name(self) -> str:
        return self.path.name


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` looks like a folder ``fedmi run`` wrote."""
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def load_run(path: str | os.PathLike) -> Run:
    """Read a run directory, with an error naming the problem and the fix when it is not one.

    Raises
    ------
    RunError
        When ``path`` is missing, is not a run directory, holds no finished round or a
        corrupt ``rounds.jsonl``, or no round with a circuit analysis.
    """
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path} does not exist; pass a run directory written by `fedmi run` (its --out)")
    if not is_run_dir(path):
        raise RunError(f"{path} is not a run directory (no {CONFIG_FILE}); pass a folder written by `fedmi run` (its --out)")
    rounds_file = path / ROUNDS_FILE
    records: list[dict[str, Any]] = []
    if rounds_file.exists():
        for n, line in enumerate(rounds_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise RunError(f"{rounds_file} line {n} is not JSON ({err}); the file was edited or truncated by hand") from None
    if not records:
        raise RunError(f"{path} has no finished round yet ({ROUNDS_FILE} is missing or empty); wait for its first round, or rerun it: fedmi run {path / CONFIG_FILE}")
    if not any("clients" in r for r in records):
        raise RunError(f"{path}: the circuit analysis failed in every round (see analysis_error in {ROUNDS_FILE}); there is nothing to plot")
    try:
        config = RunDirectory(path).read_config()
    except ConfigError as err:
        raise RunError(f"{path}: cannot read {CONFIG_FILE}: {err}") from None
    records.sort(key=lambda r: r["round"])
    return Run(path, config, records)


def find_runs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories named by ``paths``: a run directory itself, or a folder of them (a sweep's output).

    Raises
    ------
    RunError
        When a path is neither.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if is_run_dir(p):
            found.append(p)
        elif p.is_dir() and (children := sorted(c for c in p.iterdir() if is_run_dir(c))):
            found.extend(children)
        elif not p.exists():
            raise RunError(f"{p} does not exist; pass run directories written by `fedmi run` (or the folder a sweep wrote them into)")
        else:
            raise RunError(f"{p} is not a run directory (no {CONFIG_FILE}) and holds none; pass folders written by `fedmi run`")
    return found


# ---------------------------------------------------------------------- series


def number(value: Any) -> float:
    """A record value as a float; ``None`` (JSON null) and anything non-numeric is NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return float("nan")
    return float(value)


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


def _int(key: str) -> int | str:
    return int(key) if key.lstrip("-").isdigit() else key


def inter_client_series(records: Sequence[Record]) -> Series:
    """Inter-client consistency (RQ1; paper Fig. 1, 6): ``(class, layer) ->`` mean pairwise IoU of the clients holding the class."""
    return collect(records, lambda r: (((_int(c), layer), e.get(layer)) for c, e in (r.get("inter_client_iou") or {}).items() for layer in LAYERS))


def class_pair_series(records: Sequence[Record]) -> Series:
    """Class-pair IoU (paper Fig. 3, 14): ``("a-b", layer) ->`` IoU of class a's and class b's circuits on different clients.

    Under disjoint label skew no class has two holders and this is the only
    inter-client comparison. Records written before the view existed yield nothing.
    """
    return collect(records, lambda r: (((pair, layer), e.get(layer)) for pair, e in (r.get("class_pair_iou") or {}).items() for layer in LAYERS))


def _per_client_iou(view: str) -> Callable[[Record], Iterable[tuple[Hashable, Any]]]:
    def entries(r: Record) -> Iterable[tuple[Hashable, Any]]:
        for pid, per_class in (r.get(view) or {}).items():
            for c, e in per_class.items():
                for layer in LAYERS:
                    yield (_int(pid), _int(c), layer), e.get(layer)

    return entries


def stability_series(records: Sequence[Record]) -> Series:
    """Intra-client stability (RQ2; paper Fig. 10): ``(client, class, layer) ->`` IoU of the client's circuit with its previous one."""
    return collect(records, _per_client_iou("stability"))


def local_global_series(records: Sequence[Record]) -> Series:
    """Local-global preservation (paper Fig. 2, 5, 8, 15-18): ``(client, class, layer) ->`` IoU of local and global circuit."""
    return collect(records, _per_client_iou("local_global_iou"))


FLOOR_OF_VIEW = {"inter_client_iou": "seed", "stability": "clients", "local_global_iou": "source"}
"""Which noise floor scales which IoU view (see :mod:`fedmi_flower.analysis`)."""


def floor_series(records: Sequence[Record], kind: str) -> Series:
    """Noise floor ``kind``: a model's circuit found twice, ``(class, layer) ->`` IoU.

    ``seed`` and ``source`` are the global model's floors; ``clients`` the floor
    client's own (keyed ``(client, class, layer)``).
    """

    def entries(r: Record) -> Iterable[tuple[Hashable, Any]]:
        found = (r.get("noise_floor") or {}).get(kind) or {}
        if kind == "clients":
            yield from (((_int(p), _int(c), layer), e.get(layer)) for p, per in found.items() for c, e in per.items() for layer in LAYERS)
        else:
            yield from (((_int(c), layer), e.get(layer)) for c, e in found.items() for layer in LAYERS)

    return collect(records, entries)


def chance_series(records: Sequence[Record], view: str) -> Series:
    """Chance level of an IoU view, keyed as the view's own series: expected IoU of random circuits of the same sizes.

    ``view`` is a record key: ``inter_client_iou`` and ``class_pair_iou`` give ``(class
    or pair, layer)`` keys, ``stability`` and ``local_global_iou`` ``(client, class, layer)``.
    Records written before chance levels existed yield nothing.
    """

    def entries(r: Record) -> Iterable[tuple[Hashable, Any]]:
        for key, e in (r.get(view) or {}).items():
            if view in ("inter_client_iou", "class_pair_iou"):
                for layer in LAYERS:
                    yield (_int(key), layer), (e.get("chance") or {}).get(layer)
            else:
                for c, pair in e.items():
                    for layer in LAYERS:
                        yield (_int(key), _int(c), layer), (pair.get("chance") or {}).get(layer)

    return collect(records, entries)


def cross_eval_series(records: Sequence[Record], score: str = "sufficiency") -> Series:
    """Cross-evaluation (paper Fig. 4, 7, 9): ``(client, class) ->`` ``score`` of the local circuit on the global weights.

    ``score`` is ``sufficiency`` (the paper's circuit accuracy), ``specificity`` or ``necessity``.
    """
    return collect(records, lambda r: (((_int(p), _int(c)), s.get(score)) for p, per in (r.get("cross_eval") or {}).items() for c, s in per.items()))


def accuracy_series(records: Sequence[Record]) -> Series:
    """Global model accuracy: ``"overall"`` and each class (an int key) over rounds."""

    def entries(r: Record) -> Iterable[tuple[Hashable, Any]]:
        g = r.get("global") or {}
        yield "overall", g.get("accuracy")
        for c, a in (g.get("per_class_accuracy") or {}).items():
            yield _int(c), a

    return collect(records, entries)


def circuit_size_series(records: Sequence[Record]) -> Series:
    """Circuit sizes in channels: ``(client, class)`` for local circuits, ``("global", class)`` for the global model's."""

    def entries(r: Record) -> Iterable[tuple[Hashable, Any]]:
        for pid, client in (r.get("clients") or {}).items():
            for c, n in (client.get("circuit_sizes") or {}).items():
                yield (_int(pid), _int(c)), n
        for c, n in ((r.get("global") or {}).get("circuit_sizes") or {}).items():
            yield ("global", _int(c)), n

    return collect(records, entries)


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

IGNORED_SETTINGS: tuple[str, ...] = ("name", "description", "resources.")
"""Config keys (or key prefixes) that do not tell runs apart: labels, and where clients ran."""


def settings(config: ExperimentConfig) -> dict[str, Any]:
    """The config as flat dotted keys (``train.sparsity``), without :data:`IGNORED_SETTINGS`."""
    return {k: v for k, v in config.to_run_config().items() if not any(k == i or (i.endswith(".") and k.startswith(i)) for i in IGNORED_SETTINGS)}


def differing_settings(configs: Sequence[ExperimentConfig]) -> list[str]:
    """Keys whose values are not the same in every config (a key one config leaves unset counts)."""
    flat = [settings(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    return [k for k in keys if len({json.dumps(f.get(k)) for f in flat}) > 1]


def group_runs(runs: Sequence[Run], ignore: Sequence[str] = ("seed",)) -> list[list[Run]]:
    """Runs whose settings are equal but for ``ignore`` (by default: the seeds of one configuration), in order of appearance."""
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
        raise RunError(f"the runs {', '.join(str(r.path) for r in runs)} have the same settings; --compare shows runs that differ in one setting")
    if len(keys) != 1:
        raise RunError(
            f"--compare needs runs that differ in one setting (seeds aside), but these differ in {len(keys)}: {', '.join(keys)}; "
            "pass runs that share every other setting, e.g. the runs of one sweep"
        )
    key = keys[0]
    groups.sort(key=lambda g: _sort_key(settings(g[0].config).get(key, "")))
    return key, groups
