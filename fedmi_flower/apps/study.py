"""A study: experiments x discovery objectives x seeds, planned, run where not yet done, judged by its claims.

A study is a TOML file (the bundled ones in ``experiments/studies/``; ``fedmi study --list``)::

    description = "..."
    seeds = [0, 1, 2]
    objectives = ["paper", "faithful"]      # discovery.objective of every run
    [settings]                               # overrides for every run, short or not
    "analysis.cka" = false
    [short]                                  # --short: overrides for every run (CPU settings)
    rounds = 4
    [[experiment]]
    name = "iid"                             # an experiment (``fedmi list``), its [sweep] included
    label = "iid-fedprox"                    # optional: the entry's name in the study (default: name), so
    settings = { "strategy.name" = "fedprox" }  # one experiment can run as variants, each with its settings
    short = { "train.sparsity" = 0.9 }       # --short: this experiment's own overrides
    short_sweep = { "train.sparsity" = [0.8, 0.9, 0.95] }
    short_minutes = 2.0                      # measured minutes a run, for --dry-run's plan
    [[claim]]                                # views/claims.py: what the runs are judged on
    ...

Every run goes to ``OUT/<experiment point>-<objective>-seed=<s>`` and, once finished, its digest to
``OUT/digests/`` (records/digest.py); ``OUT/claims.md`` is the generated claim table, written again
after every run. A second call runs what is not done: finished runs are skipped, an interrupted one
is resumed after its last finished round.
"""

from __future__ import annotations

import json
import re
import threading
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fedmi_flower.config import ConfigError, ExperimentConfig, experiments_dir, load_sweep, point_name
from fedmi_flower.records.digest import RunDigest, digest_run, digest_scalars, read_digests
from fedmi_flower.records.results import RUNS_DIR, RunDirectory, atomic_write
from fedmi_flower.records.series import RunError, load_run, settings
from fedmi_flower.science.objectives import OBJECTIVES
from fedmi_flower.views.claims import Claim, ClaimError, claims_table, evaluate_all
from fedmi_flower.views.paper_figures import PaperFigure

STUDIES = "studies"
DIGESTS = "digests"
CLAIMS_FILE = "claims.md"
DONE, PARTIAL, NEW = "done", "interrupted", "new"
SAFE_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]*")
"""What an entry's label may be: it names run folders, so no path separators and no leading dot."""


def studies_dir() -> Path:
    """Folder of the bundled studies: ``studies/`` inside the experiments folder."""
    return experiments_dir() / STUDIES


def list_studies() -> dict[str, Path]:
    folder = studies_dir()
    return {p.stem: p for p in sorted(folder.glob("*.toml"))} if folder.is_dir() else {}


@dataclass(frozen=True)
class StudyEntry:
    """One experiment of a study, as the study names it, with its own settings and its shorter ones."""

    name: str
    label: str = ""
    """The entry's name in the study (its runs' folders, digests, claims and figures): ``name`` unless a
    study runs one experiment as several variants."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Settings of every run of the entry, short or not (a variant's: ``strategy.name``, ...)."""
    short: Mapping[str, Any] = field(default_factory=dict)
    short_sweep: Mapping[str, list[Any]] = field(default_factory=dict)
    short_minutes: float | None = None
    objectives: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)


@dataclass(frozen=True)
class Study:
    """A study file, read (see the module docstring)."""

    name: str
    description: str
    seeds: tuple[int, ...]
    objectives: tuple[str, ...]
    short: Mapping[str, Any]
    entries: tuple[StudyEntry, ...]
    claims: tuple[Claim, ...]
    path: Path
    figures: tuple[PaperFigure, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Overrides of every run, short or not (under ``[short]`` and each entry's own)."""

    @property
    def objectives_of(self) -> dict[str, tuple[str, ...]]:
        """Experiment -> the objectives the study runs it with."""
        return {e.label: e.objectives or self.objectives for e in self.entries}

    @classmethod
    def load(cls, name_or_path: str) -> Study:
        """Read a study by name (``paper``) or TOML path, with errors naming the key and the fix."""
        path = Path(name_or_path)
        if path.suffix != ".toml":
            known = list_studies()
            if name_or_path not in known:
                raise ConfigError(f"unknown study {name_or_path!r}; the bundled ones: {', '.join(known) or 'none'}")
            path = known[name_or_path]
        if not path.is_file():
            raise ConfigError(f"study file {path} does not exist")
        try:
            table = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from None
        known_keys = {"description", "seeds", "objectives", "settings", "short", "experiment", "claim", "figure"}
        if unknown := set(table) - known_keys:
            listed = ", ".join(sorted(known_keys))
            raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; known: {listed}")
        seeds = table.get("seeds", [0])
        if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ConfigError(f"{path}: seeds must list distinct non-negative whole numbers, e.g. seeds = [0, 1, 2]")
        objectives = table.get("objectives", ["faithful"])

        def check_objectives(found: Sequence[Any], where: str) -> tuple[str, ...]:
            if not found or any(o not in OBJECTIVES for o in found):
                raise ConfigError(f"{path}: {where} must list objectives among {', '.join(OBJECTIVES)}")
            return tuple(found)

        entries = []
        for i, e in enumerate(table.get("experiment", [])):
            allowed = {"name", "label", "settings", "short", "short_sweep", "short_minutes", "objectives"}
            if not isinstance(e, dict) or "name" not in e or set(e) - allowed:
                listed = ", ".join(sorted(allowed))
                raise ConfigError(f"{path}: [[experiment]] {i + 1} needs `name` and may set {listed}")
            entries.append(
                StudyEntry(
                    name=str(e["name"]),
                    label=str(e.get("label", "")),
                    settings=dict(e.get("settings", {})),
                    short=dict(e.get("short", {})),
                    short_sweep=dict(e.get("short_sweep", {})),
                    short_minutes=e.get("short_minutes"),
                    objectives=(
                        check_objectives(e["objectives"], f"{e['name']}'s objectives") if "objectives" in e else None
                    ),
                )
            )
        if not entries:
            raise ConfigError(f'{path}: a study lists at least one [[experiment]] with a name, e.g. name = "iid"')
        try:
            claims = tuple(Claim.from_table(c, f"{path} claim") for c in table.get("claim", []))
        except ClaimError as err:
            raise ConfigError(str(err)) from None
        try:
            figures = tuple(PaperFigure.from_table(f, f"{path}") for f in table.get("figure", []))
        except ValueError as err:
            raise ConfigError(str(err)) from None
        for e in entries:
            if e.label != e.name and not SAFE_LABEL.fullmatch(e.label):  # a label given; a name is the file's
                raise ConfigError(
                    f"{path}: label {e.label!r} names the entry's run folders: letters, digits, '.', '_', '=' and '-' "
                    "only, starting with a letter or digit"
                )
        names = {e.label for e in entries}
        if len(names) < len(entries):
            raise ConfigError(
                f"{path}: two [[experiment]] entries share a name; give variants of one experiment each its own label"
            )
        if stray := sorted({c.experiment for c in claims} - names):
            raise ConfigError(f"{path}: claims read experiments the study does not run: {', '.join(stray)}")
        if stray := sorted({f.experiment for f in figures} - names):
            raise ConfigError(f"{path}: figures draw experiments the study does not run: {', '.join(stray)}")
        objectives_of = {e.label: e.objectives or check_objectives(objectives, "objectives") for e in entries}
        scalars = digest_scalars()
        try:
            for c in claims:
                c.check(scalars, objectives_of, f"{path} claim")
        except ClaimError as err:
            raise ConfigError(str(err)) from None
        return cls(
            name=path.stem,
            description=str(table.get("description", "")),
            seeds=tuple(seeds),
            objectives=check_objectives(objectives, "objectives"),
            short=dict(table.get("short", {})),
            settings=dict(table.get("settings", {})),
            entries=tuple(entries),
            claims=claims,
            path=path,
            figures=figures,
        )


@dataclass
class PlannedRun:
    """One run of a study: an experiment's sweep point with one objective and one seed."""

    entry: StudyEntry
    config: ExperimentConfig
    point: dict[str, Any]
    folder: str
    minutes: float | None

    @property
    def objective(self) -> str:
        return self.config.discovery.objective

    @property
    def seed(self) -> int:
        return self.config.seed


def plan(
    study: Study, short: bool, seeds: Sequence[int] | None = None, overrides: Mapping[str, Any] | None = None
) -> list[PlannedRun]:
    """Every run of the study, seed by seed (one seed of everything first, so that a part of a study already
    tests every claim), then experiment by experiment, objective by objective, sweep point by sweep point.

    ``overrides`` (``--set``) apply to every run last, e.g. ``resources.client_gpus``."""
    runs = []
    for seed in seeds if seeds is not None else study.seeds:
        for entry in study.entries:
            sweep = entry.short_sweep if short else None
            swept = _swept_keys(load_sweep(entry.name, sweep=sweep))
            # The study's common settings never fix what the experiment sweeps; its own may.
            common = dict(study.settings) | (dict(study.short) if short else {})
            common = {k: v for k, v in common.items() if k not in swept}
            for objective in entry.objectives or study.objectives:
                fixed = common | dict(entry.settings) | dict(entry.short if short else {}) | dict(overrides or {})
                fixed |= {"discovery.objective": objective, "seed": seed}
                configs = load_sweep(entry.name, fixed, sweep=sweep)
                swept = [k for k in swept if k not in fixed]
                for config in configs:
                    flat = config.to_run_config()
                    point = {k: flat[k] for k in swept}
                    if entry.label != entry.name:  # a variant's runs go by its label, whatever the file names itself
                        config.name = point_name(entry.label, point)
                    minutes = entry.short_minutes if short else _full_minutes(config, len(configs))
                    runs.append(PlannedRun(entry, config, point, f"{config.name}-{objective}-seed={seed}", minutes))
    folders = [r.folder for r in runs]
    if clash := sorted({f for f in folders if folders.count(f) > 1}):
        raise ConfigError(
            f"{study.path}: two runs of the study would share the folder {clash[0]}; label the entries apart"
        )
    return runs


def _swept_keys(configs: Sequence[ExperimentConfig]) -> list[str]:
    flat = [c.to_run_config() for c in configs]
    return [k for k in flat[0] if len({json.dumps(f.get(k)) for f in flat}) > 1 and k != "name"]


def _full_minutes(config: ExperimentConfig, points: int) -> float | None:
    # An experiment's measured_minutes is for the whole file: with a [sweep], all its points.
    return None if config.measured_minutes is None else config.measured_minutes / points


def run_state(run: PlannedRun, out: Path) -> str:
    """Whether the run is done, interrupted (its folder holds some rounds) or new; refuse a folder of other settings.

    A run whose folder is gone is done when its digest is of the same settings: a study continues
    from digests alone (copied from an earlier machine, or committed).
    """
    folder = RunDirectory(out / run.folder)
    if not (folder.path / "config.toml").is_file():
        if folder.path.exists() and any(folder.path.iterdir()):
            folder.check_new()  # a folder that is not a run: its own error
        digest = _digest_path(out, run)
        if digest.is_file() and same_settings(RunDigest.read(digest).settings, run.config):
            return DONE
        return NEW
    theirs, ours = settings(folder.read_config()), settings(run.config)
    if theirs != ours:
        changed = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise ConfigError(
            f"{folder.path} holds a run of other settings ({', '.join(changed[:4])}); the study changed since it "
            "ran: move that folder away, or give the study another --out"
        )
    return DONE if folder.finished_round() >= run.config.rounds else PARTIAL


def same_settings(recorded: Mapping[str, Any] | None, config: ExperimentConfig) -> bool:
    """Whether a digest's settings are a run's. A key the config gained after the digest was made counts at its
    default, which keeps the earlier behaviour (``train.disjoint = "off"``): a new setting does not undo a study.
    A digest without settings (made before digests kept them) is no run's."""
    if recorded is None:
        return False
    try:
        theirs = settings(ExperimentConfig.from_run_config(dict(recorded)))
    except ConfigError:
        return False
    return theirs == settings(config)


def _digest_path(out: Path, run: PlannedRun) -> Path:
    return out / DIGESTS / f"{run.folder}.json"


def expected_minutes(runs: Sequence[PlannedRun], out: Path) -> dict[str, float | None]:
    """Minutes each run is expected to take: measured by this study where a run of its experiment finished
    (its digest), else the study's (or experiment's) measured minutes; None where nothing was measured."""
    measured: dict[str, list[float]] = {}
    for run in runs:
        path = _digest_path(out, run)
        if path.is_file():
            seconds = RunDigest.read(path).seconds
            if seconds is not None:
                measured.setdefault(run.entry.label, []).append(seconds / 60)
    return {
        run.folder: (sum(measured[run.entry.label]) / len(measured[run.entry.label]))
        if run.entry.label in measured
        else run.minutes
        for run in runs
    }


def describe_plan(study: Study, runs: Sequence[PlannedRun], out: Path, short: bool) -> list[str]:
    """The lines of ``--dry-run``: every run, its state and expected minutes, and the total still to run."""
    minutes = expected_minutes(runs, out)
    states = [run_state(r, out) for r in runs]
    width = max(len(r.folder) for r in runs)
    lines = [
        f"study {study.name}{' (--short)' if short else ''}: {len(runs)} runs "
        f"({len(study.entries)} experiments, objectives {', '.join(study.objectives)}, seeds "
        f"{', '.join(map(str, sorted({r.seed for r in runs})))}) -> {out}"
    ]
    for run, state in zip(runs, states, strict=True):
        m = minutes[run.folder]
        expect = f"~{m:.1f} min" if m is not None else "time not measured"
        lines.append(f"  {run.folder:<{width}}  {state:<11}  {expect}")
    todo = [minutes[r.folder] for r, s in zip(runs, states, strict=True) if s != DONE]
    known = [m for m in todo if m is not None]
    unknown = len(todo) - len(known)
    total = f"~{sum(known):.0f} min" + (f" plus {unknown} run(s) not measured" if unknown else "")
    lines.append(f"{len(runs) - len(todo)} of {len(runs)} done; to run: {len(todo)}, {total} on this machine's measure")
    return lines


def default_study_dir(study: Study, short: bool) -> Path:
    """``runs/study-<name>[-short]``: the same folder every call, so that a second call continues the first."""
    return RUNS_DIR / f"study-{study.name}{'-short' if short else ''}"


def write_claims(study: Study, runs: Sequence[PlannedRun], out: Path) -> Path:
    """``OUT/claims.md``: the generated claim table over the digests written so far, with the study's state."""
    planned = {r.folder for r in runs}  # a digest of a run outside this plan (other seeds) is not counted
    digests = [d for d in (read_digests([out / DIGESTS]) if (out / DIGESTS).is_dir() else []) if d.name in planned]
    results = evaluate_all(study.claims, digests, study.objectives_of)
    seconds = [d.seconds for d in digests if d.seconds is not None]
    text = (
        f"# Study {study.name}: the claims, judged\n\n{study.description}\n\n"
        f"{len(digests)} of {len(runs)} runs done ({sum(seconds) / 60:.0f} min of runs); "
        f"generated by `fedmi study` from {out / DIGESTS}.\n\n" + claims_table(results)
    )
    path = out / CLAIMS_FILE
    atomic_write(path, text)
    return path


def run_study(
    study: Study,
    runs: Sequence[PlannedRun],
    out: Path,
    run_one: Callable[[PlannedRun, Path, bool], None],
    echo: TextIO,
    parallel: int = 1,
) -> list[str]:
    """Run every run not yet done with ``run_one(run, folder, resume)``; digest each and rewrite the claims.

    ``parallel`` runs go at once, each on a thread of its own (``run_one`` must then give each
    thread its own runtime); one at a time, the runs go on the calling thread. Returns the folders
    of the runs that failed (the study goes on past them; their error is in their folder's log and
    on ``echo``).
    """
    if parallel < 1:
        raise ConfigError(f"--parallel {parallel}: run at least one run at a time")
    states = {r.folder: run_state(r, out) for r in runs}
    minutes = expected_minutes(runs, out)
    todo = [r for r in runs if states[r.folder] != DONE]
    for run in runs:  # finished runs whose digest was lost, or lacks what a study now keeps
        path = _digest_path(out, run)
        kept = RunDigest.read(path) if path.is_file() else None
        if states[run.folder] == DONE and (kept is None or not same_settings(kept.settings, run.config)):
            seconds = kept.seconds if kept is not None else None
            digest_run(out / run.folder, run.entry.label, run.point, seconds=seconds).write(path)
    failed: list[str] = []
    finished: list[str] = []
    began = time.perf_counter()
    lock = threading.Lock()  # one run's bookkeeping at a time: the claims page reads every digest
    # Minutes expected and taken by the runs this call finished: the measure may come from another machine
    # (a digest made elsewhere, a study's measured minutes), so the ETA follows this call's own pace.
    pace = {"expected": 0.0, "taken": 0.0}

    def one(i: int, run: PlannedRun) -> None:
        with lock:
            eta = sum(m for m in (minutes[r.folder] for r in todo[i:]) if m is not None) / parallel
            note = ""
            if pace["expected"] > 0:
                eta, note = eta * pace["taken"] / pace["expected"], " at this call's pace"
            print(
                f"fedmi study: {len(runs) - len(todo) + len(finished)} of {len(runs)} runs done, "
                f"{time.perf_counter() - began:.0f} s so far, ~{eta:.0f} min to go{note}; "
                f"{'resuming' if states[run.folder] == PARTIAL else 'running'} {run.folder}",
                file=echo,
                flush=True,
            )
        if states[run.folder] == PARTIAL:  # the ServerApp resumes the very config it saved (its resources too)
            run.config = RunDirectory(out / run.folder).read_config()
        started = time.perf_counter()
        try:
            run_one(run, out / run.folder, states[run.folder] == PARTIAL)
        except Exception as err:  # one failed run does not stop the study; a second call retries it
            if isinstance(err, ConfigError):
                raise
            with lock:
                failed.append(run.folder)
                print(f"fedmi study: {run.folder} failed: {str(err).splitlines()[0]}", file=echo, flush=True)
            return
        seconds = time.perf_counter() - started
        with lock:
            digest_run(out / run.folder, run.entry.label, run.point, seconds=seconds).write(_digest_path(out, run))
            finished.append(run.folder)
            expected = minutes[run.folder]
            if expected and states[run.folder] != PARTIAL:  # a resumed run did only part of its work
                pace["expected"] += expected
                pace["taken"] += seconds / 60
            write_claims(study, runs, out)

    if parallel == 1:
        for i, run in enumerate(todo):
            one(i, run)
    else:
        pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="fedmi-study")
        try:
            pending = {pool.submit(one, i, run) for i, run in enumerate(todo)}
            while pending:
                # A timed wait: a Ctrl-C the kernel hands to a run's thread is only acted on when the main thread
                # runs Python again, and an untimed wait would hold it until a run ends.
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_EXCEPTION)
                for future in done:
                    future.result()  # a run's error that stops the study (a bad config), raised here
        finally:
            # Ctrl-C: queued runs never start, and the caller stops the runtimes the running ones are on,
            # which ends their threads; waiting for them here would wait for their runs.
            pool.shutdown(wait=False, cancel_futures=True)
    write_claims(study, runs, out)
    return sorted(failed, key=[r.folder for r in todo].index)


def gpu_shares(runs: Sequence[PlannedRun], parallel: int) -> None:
    """Runs that go ``parallel`` at once share one GPU: each client that asks for a GPU (``resources.client_gpus``)
    gets at most ``1 / (parallel x clients)`` of it, so that every client of every concurrent run fits."""
    for run in runs:
        asked = run.config.resources.client_gpus
        if asked > 0:
            run.config.resources.client_gpus = min(asked, 1.0 / (parallel * run.config.clients))


FIGURES = "figures"


def draw_figures(study: Study, runs: Sequence[PlannedRun], out: Path) -> tuple[list[Path], list[str]]:
    """The study's ``[[figure]]`` tables drawn into ``OUT/figures`` from the lowest seed whose runs are all done
    with their folders here; returns the files written and, for each figure not drawn, why."""
    made: list[Path] = []
    skipped: list[str] = []
    for figure in study.figures:
        for objective in study.objectives_of[figure.experiment]:
            mine = [r for r in runs if r.entry.label == figure.experiment and r.objective == objective]
            seeds = sorted({r.seed for r in mine})
            ready = [
                s
                for s in seeds
                if all(
                    (out / r.folder / "config.toml").is_file() and run_state(r, out) == DONE
                    for r in mine
                    if r.seed == s
                )
            ]
            label = f"fig{figure.number:02d}-{objective}"
            if not ready:
                skipped.append(f"{label}: no seed of {figure.experiment} ({objective}) has all its runs here")
                continue
            try:
                loaded = [load_run(out / r.folder) for r in mine if r.seed == ready[0]]
                made += figure.write(loaded, out / FIGURES, objective)
            except (RunError, ValueError) as err:
                skipped.append(f"{label}: {err}")
    return made, skipped


def study_seconds(out: Path) -> float:
    """Seconds of runs the study's digests record (what `--short` took on this machine)."""
    if not (out / DIGESTS).is_dir():
        return 0.0
    return sum(d.seconds or 0.0 for d in read_digests([out / DIGESTS]))
