"""A run's digest: every round's scalar summaries in one small JSON file, what a study's claims are judged on.

A run directory holds megabytes (every circuit of every round); a claim reads a handful of scalars
per round. The digest keeps those, for every round, beside what identifies the run in its study
(experiment, discovery objective, seed, swept values), so that a study's claim table can be made
again from files small enough to commit (``docs/claims/``) without the runs themselves.

Besides :class:`~fedmi_flower.records.round_record.RoundSummary`'s fields a digest holds
:data:`HOLDING_COUNTS`, the cross-evaluation split by how many clients hold the class (paper 3.2.2:
a class two clients share against a class one client holds).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedmi_flower.records.results import RunDirectory, atomic_write
from fedmi_flower.records.round_record import RoundRecord, RoundSummary
from fedmi_flower.records.series import settings
from fedmi_flower.science.verdicts import VERDICTS

DIGEST_FILE = "digest.json"
DIGEST_VERSION = 1
WORKING = VERDICTS[4]

HOLDING_COUNTS = (
    "shared_working_locally",
    "shared_preserved",
    "distinct_working_locally",
    "distinct_preserved",
)
"""Cross-evaluated circuits of classes two or more clients hold (``shared_*``) and of classes one client holds
(``distinct_*``): those that work on their own model, and of them those that still work on the global weights."""


def digest_scalars() -> set[str]:
    """Every scalar a digest holds: the summary's fields and :data:`HOLDING_COUNTS` (what a claim may read)."""
    return {*RoundSummary().scalars(), *HOLDING_COUNTS}


class DigestError(ValueError):
    """A digest file is missing, corrupt or of another version; the message names the file and the fix."""


def holding_counts(record: RoundRecord) -> dict[str, float]:
    """:data:`HOLDING_COUNTS` of one round: preservation of shared and of distinct classes (paper 3.2.2)."""
    holders = Counter(c for per in record.cross_eval.values() for c in per)
    counts = dict.fromkeys(HOLDING_COUNTS, 0.0)
    for per in record.cross_eval.values():
        for cls, entry in per.items():
            if entry.local_verdict != WORKING:
                continue
            group = "shared" if holders[cls] >= 2 else "distinct"
            counts[f"{group}_working_locally"] += 1
            counts[f"{group}_preserved"] += entry.verdict == WORKING
    return counts


def round_scalars(record: RoundRecord) -> dict[str, float]:
    """One round's row of a digest: its summaries and holding counts; NaN throughout when it was not analysed."""
    if not record.analysed:
        return dict.fromkeys([*RoundSummary().scalars(), *HOLDING_COUNTS], math.nan)
    return {**{k: float(v) for k, v in record.summary.scalars().items()}, **holding_counts(record)}


@dataclass
class RunDigest:
    """The scalars of one run of a study.

    Attributes
    ----------
    name : str
        The run's folder name in its study.
    experiment : str
        The study entry (experiment name) the run belongs to.
    objective : str
        Its discovery objective (``paper`` or ``faithful``).
    seed : int
        Its seed.
    point : dict
        The swept values of its experiment's ``[sweep]`` (empty for an experiment without one).
    rounds : list of int
        Round numbers.
    scalars : dict
        Scalar name -> one value per round (NaN where not analysed).
    seconds : float or None
        Wall time of the run, when the study measured it.
    settings : dict or None
        The run's config as flat dotted keys (``records.series.settings``): a study knows by them that a
        digest is of the run it plans, without the run's folder (a study continued from committed digests).
    """

    name: str
    experiment: str
    objective: str
    seed: int
    point: dict[str, Any] = field(default_factory=dict)
    rounds: list[int] = field(default_factory=list)
    scalars: dict[str, list[float]] = field(default_factory=dict)
    seconds: float | None = None
    settings: dict[str, Any] | None = None

    def series(self, metric: str) -> np.ndarray:
        """One scalar over rounds; a ``"a / b"`` metric is the ratio of the two, round by round."""
        if "/" in metric:
            num, den = (self.series(part.strip()) for part in metric.split("/", 1))
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(den > 0, num / np.where(den > 0, den, 1.0), math.nan)
        if metric not in self.scalars:
            known = ", ".join(sorted(self.scalars))
            raise DigestError(f"{self.name}: no scalar {metric!r} in its digest; known: {known}")
        return np.asarray(self.scalars[metric], dtype=float)

    def to_json(self) -> dict[str, Any]:
        def safe(v: float) -> float | None:
            return None if math.isnan(v) else round(v, 6)

        return {
            "version": DIGEST_VERSION,
            "name": self.name,
            "experiment": self.experiment,
            "objective": self.objective,
            "seed": self.seed,
            "point": self.point,
            "seconds": self.seconds,
            "settings": self.settings,
            "rounds": self.rounds,
            "scalars": {k: [safe(v) for v in vs] for k, vs in sorted(self.scalars.items())},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "digest") -> RunDigest:
        if not isinstance(data, Mapping) or data.get("version") != DIGEST_VERSION:
            found = data.get("version") if isinstance(data, Mapping) else type(data).__name__
            raise DigestError(
                f"{source}: digest version {found!r}, this fedmi reads {DIGEST_VERSION}; "
                "write it again from its run with `fedmi study ... ` (it digests finished runs)"
            )
        try:
            rounds = [int(r) for r in data["rounds"]]
            scalars = {
                str(k): [math.nan if v is None else float(v) for v in vs] for k, vs in dict(data["scalars"]).items()
            }
            if any(len(vs) != len(rounds) for vs in scalars.values()):
                raise ValueError("a scalar's values do not match its rounds")
            return cls(
                name=str(data["name"]),
                experiment=str(data["experiment"]),
                objective=str(data["objective"]),
                seed=int(data["seed"]),
                point=dict(data.get("point") or {}),
                rounds=rounds,
                scalars=scalars,
                seconds=None if data.get("seconds") is None else float(data["seconds"]),
                settings=dict(data["settings"]) if data.get("settings") is not None else None,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise DigestError(f"{source}: not a run digest ({err}); delete it and digest its run again") from None

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> RunDigest:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DigestError(f"{path} does not exist; digest the run first") from None
        except json.JSONDecodeError as err:
            raise DigestError(f"{path}: not valid JSON ({err}); delete it and digest its run again") from None
        return cls.from_json(data, str(path))


def digest_run(
    run_dir: str | os.PathLike,
    experiment: str,
    point: Mapping[str, Any] | None = None,
    seconds: float | None = None,
) -> RunDigest:
    """Digest a run directory: every round's scalars, named after the folder and identified by its config."""
    run = RunDirectory(run_dir)
    config = run.read_config()
    records = run.read_rounds()
    rows = [round_scalars(r) for r in records]
    names = list(rows[0]) if rows else [*RoundSummary().scalars(), *HOLDING_COUNTS]
    return RunDigest(
        name=run.path.name,
        experiment=experiment,
        objective=config.discovery.objective,
        seed=config.seed,
        point=dict(point or {}),
        rounds=[r.round for r in records],
        scalars={k: [row[k] for row in rows] for k in names},
        seconds=seconds,
        settings=settings(config),
    )


def read_digests(paths: Sequence[str | os.PathLike]) -> list[RunDigest]:
    """Every digest in these files or folders (a folder: its ``*.json`` files, and ``*/digest.json`` below it)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(p.glob("*.json")) + sorted(p.glob(f"*/{DIGEST_FILE}"))
        elif p.is_file():
            found.append(p)
        else:
            raise DigestError(f"{p} does not exist; give a study folder or digest files")
    return [RunDigest.read(p) for p in found]
