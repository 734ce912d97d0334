"""The paper's claims as data: small declarative checks over run digests, evaluated into verdicts.

A claim names the runs it reads (a study entry and, unless it fixes one, each discovery objective
in turn), the scalar it reads (a :class:`~fedmi_flower.records.round_record.RoundSummary` field, a
digest count, or a ratio ``"a / b"`` of two, summed over the rounds first), the rounds, and a test:

``at-least`` / ``at-most``
    The mean over seeds against ``value``.
``peak-then-decline``
    The seed-mean curve peaks before the last round and falls by at least ``tolerance`` (paper
    3.2, Fig. 5 and 8).
``greater-than`` / ``less-than``
    The mean against the mean of another scalar or experiment (``than``), by more than ``tolerance``.
``increasing`` / ``decreasing``
    The mean along a swept key (``sweep``, e.g. ``train.sparsity``), first point against last.

The verdict is one of :data:`VERDICTS`, decided on the seeds' mean: **holds**; **flips** (the test fails: the
opposite, or no difference); **artefact** (the test was decided on numbers a guard discredits, ``artefact_if``,
e.g. degenerate circuits or circuits that answer their class for every input; or it fails only by
less than the instrument's own noise floor, ``floor``); **not testable here** (no run, or no defined value: every
circuit degenerate). Beside it, each seed's own verdict (the same check on that seed's runs alone, compared
with the same seed's runs where the test reads another experiment), so that a mean carried by one seed shows.
A claim's table is generated from the digests, never typed.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedmi_flower.records.digest import RunDigest

HOLDS, FLIPS, ARTEFACT, NOT_TESTABLE = "holds", "flips", "artefact", "not testable here"
VERDICTS = (HOLDS, FLIPS, ARTEFACT, NOT_TESTABLE)
TESTS = ("at-least", "at-most", "peak-then-decline", "greater-than", "less-than", "increasing", "decreasing")
ROUNDS = ("all", "last", "late", "first")
"""Which rounds a claim reads: every round, the last, the second half, the first."""


class ClaimError(ValueError):
    """A claim's declaration is malformed; the message names the claim, the key and the fix."""


@dataclass(frozen=True)
class Guard:
    """A condition that discredits a claim that holds: ``metric`` below (or above) ``value`` on the same runs."""

    metric: str
    below: float | None = None
    above: float | None = None
    why: str = ""
    """What a triggered guard means, in words (``every circuit degenerate``)."""

    def triggered(self, measured: float) -> bool:
        if math.isnan(measured):
            return False
        return (self.below is not None and measured < self.below) or (self.above is not None and measured > self.above)

    def describe(self, measured: float) -> str:
        side = f"< {self.below:g}" if self.below is not None else f"> {self.above:g}"
        return f"{self.metric} {measured:.2f} {side}" + (f": {self.why}" if self.why else "")


@dataclass(frozen=True)
class Claim:
    """One claim and its check (see the module docstring)."""

    id: str
    text: str
    section: str
    experiment: str
    metric: str
    test: str
    rounds: str = "all"
    value: float | None = None
    tolerance: float = 0.05
    floor: str | None = None
    than: Mapping[str, str] = field(default_factory=dict)
    sweep: str | None = None
    objective: str | None = None
    artefact_if: tuple[Guard, ...] = ()
    source: str = "paper"
    """``paper`` for the paper's claims, ``package`` for this package's own findings."""

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str = "claim") -> Claim:
        """A claim from its TOML table (``[[claim]]`` of a study), with errors naming the key and the fix."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(table) - known
        name = table.get("id", "?")
        if unknown:
            listed = ", ".join(sorted(known))
            raise ClaimError(f"{where} {name!r}: unknown key(s) {', '.join(sorted(unknown))}; known: {listed}")
        missing = [k for k in ("id", "text", "section", "experiment", "metric", "test") if k not in table]
        if missing:
            raise ClaimError(f"{where} {name!r}: missing {', '.join(missing)}")
        if table["test"] not in TESTS:
            raise ClaimError(f"{where} {name!r}: test {table['test']!r} is not one of {', '.join(TESTS)}")
        if table.get("rounds", "all") not in ROUNDS:
            raise ClaimError(f"{where} {name!r}: rounds {table['rounds']!r} is not one of {', '.join(ROUNDS)}")
        if table["test"] in ("at-least", "at-most") and not isinstance(table.get("value"), int | float):
            raise ClaimError(f"{where} {name!r}: test {table['test']} needs a number `value`")
        if table["test"] in ("greater-than", "less-than") and not table.get("than"):
            test = table["test"]
            raise ClaimError(f"{where} {name!r}: test {test} needs `than = {{metric = ..., experiment = ...}}`")
        if table["test"] in ("increasing", "decreasing") and not table.get("sweep"):
            raise ClaimError(f'{where} {name!r}: test {table["test"]} needs `sweep = "<swept key>"`')
        if "floor" in table and table["test"] not in ("at-least", "peak-then-decline"):
            test = table["test"]
            raise ClaimError(f"{where} {name!r}: a floor applies to at-least and peak-then-decline, not {test}")
        if table["test"] == "peak-then-decline" and table.get("rounds", "all") != "all":
            raise ClaimError(f"{where} {name!r}: peak-then-decline reads every round; drop `rounds`")
        if set(table.get("than", {})) - {"metric", "experiment", "objective"}:
            raise ClaimError(f"{where} {name!r}: `than` may set metric, experiment and objective only")
        if table.get("source", "paper") not in ("paper", "package"):
            raise ClaimError(f"{where} {name!r}: source must be paper or package")
        guards = []
        for g in table.get("artefact_if", []):
            if (
                not isinstance(g, Mapping)
                or "metric" not in g
                or ("below" in g) == ("above" in g)
                or set(g) - {"metric", "below", "above", "why"}
            ):
                raise ClaimError(
                    f"{where} {name!r}: each artefact_if is {{metric = ..., below = X}} or {{metric = ..., above = X}}"
                )
            guards.append(Guard(str(g["metric"]), g.get("below"), g.get("above"), str(g.get("why", ""))))
        values = {k: v for k, v in table.items() if k != "artefact_if"}
        if "than" in values:
            values["than"] = dict(values["than"])
        return cls(**values, artefact_if=tuple(guards))

    def check(self, known: set[str], experiments: Mapping[str, Sequence[str]], where: str = "claim") -> None:
        """Every scalar, experiment and objective the claim names exists (a typo would read as a verdict)."""
        for name in sorted(self.scalars() - known):
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ClaimError(f"{where} {self.id!r}: no scalar {name!r} in a run's digest{hint}")
        for experiment in (self.experiment, self.than.get("experiment", self.experiment)):
            if experiment not in experiments:
                raise ClaimError(f"{where} {self.id!r}: the study runs no experiment {experiment!r}")
        if self.objective is not None and self.objective not in experiments[self.experiment]:
            raise ClaimError(f"{where} {self.id!r}: {self.experiment} does not run with objective {self.objective!r}")

    def scalars(self) -> set[str]:
        """Every digest scalar the claim reads (to check them against the digests' before evaluating)."""
        names = {self.metric, *(g.metric for g in self.artefact_if), *([self.floor] if self.floor else [])}
        if self.than.get("metric"):
            names.add(self.than["metric"])
        return {part.strip() for n in names for part in n.split("/")}


@dataclass
class ClaimResult:
    """A claim's verdict on one objective's runs, with its numbers."""

    claim: Claim
    objective: str
    verdict: str
    mean: float = math.nan
    spread: float = math.nan
    seeds: int = 0
    other: float = math.nan
    why: str = ""
    by_seed: dict[int, str] = field(default_factory=dict)
    """Each seed's own verdict: the same check on that seed's runs alone."""

    def seed_tally(self) -> str:
        """How the seeds' own verdicts fall, e.g. ``holds 2, flips 1``; ``-`` where no seed ran."""
        counts = [(v, sum(1 for w in self.by_seed.values() if w == v)) for v in VERDICTS]
        return ", ".join(f"{v} {n}" for v, n in counts if n) or "-"


def _selected(rounds: Sequence[int], which: str) -> slice:
    n = len(rounds)
    return {"all": slice(0, n), "last": slice(n - 1, n), "late": slice(n // 2, n), "first": slice(0, 1)}[which]


def run_value(digest: RunDigest, metric: str, which: str) -> float:
    """A scalar over a run's rounds: the mean of the defined rounds, or for ``"a / b"`` the ratio of the sums."""
    chosen = _selected(digest.rounds, which)
    if "/" in metric:
        num, den = (np.nansum(digest.series(p.strip())[chosen]) for p in metric.split("/", 1))
        return float(num / den) if den > 0 else math.nan
    values = digest.series(metric)[chosen]
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def _mean_spread(values: Sequence[float]) -> tuple[float, float, int]:
    defined = [v for v in values if not math.isnan(v)]
    if not defined:
        return math.nan, math.nan, 0
    return float(np.mean(defined)), float(np.std(defined, ddof=1)) if len(defined) > 1 else 0.0, len(defined)


def _runs(digests: Sequence[RunDigest], experiment: str, objective: str) -> list[RunDigest]:
    return [d for d in digests if d.experiment == experiment and d.objective == objective]


def evaluate(claim: Claim, digests: Sequence[RunDigest], objective: str) -> ClaimResult:
    """The verdict of ``claim`` on the digests of its experiment run with ``objective``, and each seed's own."""
    result = _evaluate(claim, digests, objective)
    seeds = sorted({d.seed for d in _runs(digests, claim.experiment, objective)})
    for seed in seeds:
        # Every digest of the seed, not only the claim's experiment: a comparison with another experiment or
        # objective pairs the seed with itself (seed-means could hide that the seeds disagree).
        result.by_seed[seed] = _evaluate(claim, [d for d in digests if d.seed == seed], objective).verdict
    return result


def _evaluate(claim: Claim, digests: Sequence[RunDigest], objective: str) -> ClaimResult:
    runs = _runs(digests, claim.experiment, objective)
    result = ClaimResult(claim, objective, NOT_TESTABLE)
    if not runs:
        result.why = f"no run of {claim.experiment} with the {objective} objective"
        return result
    if claim.test in ("increasing", "decreasing"):
        return _along_sweep(claim, runs, result)
    if claim.test == "peak-then-decline":
        return _peak_then_decline(claim, runs, result)
    result.mean, result.spread, result.seeds = _mean_spread([run_value(d, claim.metric, claim.rounds) for d in runs])
    if result.seeds == 0:
        result.why = f"{claim.metric} undefined in every run (no circuit it can be read on)"
        return result
    if claim.test in ("greater-than", "less-than"):
        others = _runs(digests, claim.than.get("experiment", claim.experiment), claim.than.get("objective", objective))
        other_metric = claim.than.get("metric", claim.metric)
        result.other, _, n_other = _mean_spread([run_value(d, other_metric, claim.rounds) for d in others])
        if n_other == 0:
            result.verdict, result.why = NOT_TESTABLE, f"{other_metric} undefined on the runs it is compared with"
            return result
        gap = (result.mean - result.other) * (1 if claim.test == "greater-than" else -1)
        result.verdict = HOLDS if gap > claim.tolerance else FLIPS
        result.why = f"{result.mean:.2f} against {result.other:.2f} ({other_metric})"
    else:
        holds = result.mean >= claim.value if claim.test == "at-least" else result.mean <= claim.value  # type: ignore[operator]
        side = ">=" if claim.test == "at-least" else "<="
        result.verdict = HOLDS if holds else FLIPS
        result.why = f"{result.mean:.2f} {side if holds else 'not ' + side} {claim.value:g}"
        if not holds and claim.floor:
            floor, _, _ = _mean_spread([run_value(d, claim.floor, claim.rounds) for d in runs])
            if not math.isnan(floor) and result.mean >= floor - claim.tolerance:
                result.verdict = ARTEFACT
                result.why += f", but its noise floor ({claim.floor}) is {floor:.2f}: the instrument reads no more"
    return _guarded(claim, runs, result)


def _guarded(claim: Claim, runs: Sequence[RunDigest], result: ClaimResult) -> ClaimResult:
    """A claim decided (held or flipped) on numbers one of its guards discredits is an artefact: degenerate
    circuits can neither confirm a claim about circuits nor refute it."""
    if result.verdict not in (HOLDS, FLIPS):
        return result
    for guard in claim.artefact_if:
        measured, _, _ = _mean_spread([run_value(d, guard.metric, claim.rounds) for d in runs])
        if guard.triggered(measured):
            result.verdict = ARTEFACT
            result.why += f"; but {guard.describe(measured)}"
    return result


def _peak_then_decline(claim: Claim, runs: Sequence[RunDigest], result: ClaimResult) -> ClaimResult:
    """Holds when the seed-mean curve rises to a peak in an early round (after the first, in the first half of the
    rounds) and ends at least ``tolerance`` below it: a curve that only falls, or peaks late, does not."""
    length = min(len(d.rounds) for d in runs)
    curves = np.array([d.series(claim.metric)[:length] for d in runs])
    defined = ~np.isnan(curves).all(axis=0)
    if defined.sum() < 3:
        result.why = f"{claim.metric} defined in {int(defined.sum())} round(s); a peak needs 3"
        return result
    with np.errstate(invalid="ignore"):
        curve = np.nanmean(curves[:, defined], axis=0)
    peak = int(np.argmax(curve))
    result.seeds = len(runs)
    result.mean, result.other = float(curve[peak]), float(curve[-1])
    peaks = [float(np.nanmax(c[defined])) for c in curves]
    result.spread = float(np.nanstd(peaks, ddof=1)) if len(peaks) > 1 else 0.0
    decline = result.mean - result.other
    rounds = np.asarray(runs[0].rounds[:length])[defined]
    result.why = f"peak {result.mean:.2f} in round {rounds[peak]} of {len(curve)}, last {result.other:.2f}"
    early = 0 < peak <= (len(curve) - 1) / 2
    result.verdict = HOLDS if early and decline >= claim.tolerance else FLIPS
    if peak == 0:
        result.why += "; no rise first"
    elif not early:
        result.why += "; the peak is not early"
    if result.verdict == HOLDS and claim.floor:
        floors = np.array([d.series(claim.floor)[:length] for d in runs])[:, defined]
        noise = 1.0 - float(np.nanmean(floors[:, -1]))
        if not math.isnan(noise) and decline < noise:
            result.verdict = ARTEFACT
            result.why += f"; the decline {decline:.2f} is within its noise floor's reach ({noise:.2f})"
    return _guarded(claim, runs, result)


def _along_sweep(claim: Claim, runs: Sequence[RunDigest], result: ClaimResult) -> ClaimResult:
    key = claim.sweep or ""
    points = sorted({d.point[key] for d in runs if key in d.point})
    if len(points) < 2:
        result.why = f"fewer than two values of {key} among the runs"
        return result
    at_points = [
        _mean_spread([run_value(d, claim.metric, claim.rounds) for d in runs if d.point.get(key) == p]) for p in points
    ]
    means = [m for m, _, _ in at_points]
    if any(math.isnan(m) for m in (means[0], means[-1])):
        result.why = f"{claim.metric} undefined at {key} = {points[0] if math.isnan(means[0]) else points[-1]}"
        return result
    result.mean, result.spread, result.other = means[-1], at_points[-1][1], means[0]
    result.seeds = min(n for _, _, n in at_points)
    change = (means[-1] - means[0]) * (1 if claim.test == "increasing" else -1)
    result.verdict = HOLDS if change > claim.tolerance else FLIPS
    result.why = f"{key} {points[0]:g} -> {points[-1]:g}: " + " / ".join(_number(m) for m in means)
    return _guarded(claim, runs, result)


def evaluate_all(
    claims: Sequence[Claim], digests: Sequence[RunDigest], objectives: Mapping[str, Sequence[str]]
) -> list[ClaimResult]:
    """Every claim on every objective its experiment ran with (``objectives``: experiment -> objectives), in the
    claims' order; a claim that fixes its objective, on that one only."""
    return [
        evaluate(c, digests, o) for c in claims for o in ([c.objective] if c.objective else objectives[c.experiment])
    ]


def _number(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"


def claims_table(results: Sequence[ClaimResult]) -> str:
    """The generated Markdown table: one row per claim and objective."""
    lines = [
        "| claim | where | runs | objective | measured (mean ± sd, seeds) | verdict | each seed alone | reading |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r.claim
        measured = "-" if r.seeds == 0 else f"{_number(r.mean)} ± {_number(r.spread)} ({r.seeds})"
        where = c.section if c.source == "paper" else f"this package ({c.section})"
        lines.append(
            f"| {c.text} | {where} | {c.experiment}: `{c.metric}`, {c.rounds} rounds | {r.objective} | "
            f"{measured} | **{r.verdict}** | {r.seed_tally()} | {r.why} |"
        )
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- claims table: generated, do not edit -->", "<!-- end of claims table -->"


def replace_table(text: str, table: str, where: str = "the document") -> str:
    """``text`` with the block between :data:`BEGIN` and :data:`END` replaced by ``table``."""
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise ClaimError(f"{where} has no generated block; put the lines {BEGIN!r} and {END!r} where the table goes")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}{END}{tail}"
