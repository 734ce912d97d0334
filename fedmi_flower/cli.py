"""The ``fedmi`` command: run experiments and list them.

fedmi run EXPERIMENT [--set KEY=VALUE ...] [--out DIR] [--seed N] [--data-root DIR]
fedmi run --resume RUN_DIR
fedmi deploy-local EXPERIMENT [--clients N] [--set KEY=VALUE ...] [--out DIR] [--seed N] [--data-root DIR]
                   [--workdir DIR] [--insecure]
fedmi credentials OUT_DIR --supernodes N [--host NAME ...] [--days D]
fedmi list
fedmi run EXPERIMENT --seeds 0,1,2 [...]
fedmi plot RUN_DIR [--out DIR] [--graph-class C] [--graph-round T]
fedmi plot --compare RUN_DIR... [--out DIR]
fedmi report RUN_DIR... [--out FILE_OR_DIR]
fedmi view RUN_DIR... [--out FILE_OR_DIR]
fedmi tensorboard RUN_DIR... --logdir DIR
fedmi frontier RUN_DIR [--round N] [--lambdas L,L,...]
fedmi study NAME [--short] [--dry-run] [--out DIR] [--seeds 0,1,2] [--parallel N] [--set KEY=VALUE ...]
fedmi claims NAME DIGESTS... [--update FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fedmi_flower import __version__
from fedmi_flower.apps.deploy import LocalDeployment
from fedmi_flower.config import (
    ConfigError,
    ExperimentConfig,
    config_keys,
    list_experiments,
    load_sweep,
    parse_override,
)


def _cmd_keys(args: argparse.Namespace) -> int:
    found = config_keys(args.table)
    width = max(len(k.key) for k in found)
    shown = [(k, json.dumps(k.default) if k.default is not None else "(none)") for k in found]
    value_width = max(len(v) for _, v in shown)
    allowed_width = max(len(k.allowed) for k in found)
    for k, value in shown:
        print(f"{k.key:<{width}}  {value:<{value_width}}  {k.allowed:<{allowed_width}}  {k.doc}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    experiments = list_experiments()
    if not experiments:
        print("no experiments found (set FEDMI_EXPERIMENTS to a folder of TOML files)")
        return 1
    width = max(len(n) for n in experiments)
    for name in experiments:
        configs = load_sweep(name)
        config = configs[0]
        sparsity = f"sparsity {config.train.sparsity:g}"
        if len(configs) > 1:  # a sweep: one run per point, named after its values
            points = " / ".join(c.name.removeprefix(f"{name}-") for c in configs)
            sparsity = f"a sweep of {len(configs)} runs: {points}"
        minutes = (
            f"~{config.measured_minutes:g} min on 2 cores"
            if config.measured_minutes is not None
            else "time not measured"
        )
        print(
            f"{name:<{width}}  {config.clients} clients x {config.rounds} rounds, {config.strategy.name}, "
            f"{sparsity}, {minutes}: {config.description}"
        )
    return 0


def _resume(args: argparse.Namespace) -> int:
    from fedmi_flower.apps.simulation import simulate
    from fedmi_flower.records.results import RunDirectory

    run = RunDirectory(args.resume)
    if not (run.path / "config.toml").is_file():
        raise ConfigError(f"{run.path} is not a run directory (no config.toml); give the folder `fedmi run` wrote")
    if args.experiment or args.set or args.seed is not None or args.seeds is not None:
        raise ConfigError(
            "--resume continues a run with its own config.toml; drop EXPERIMENT, --set, --seed and --seeds"
        )
    config = run.read_config()
    checkpoint = run.read_checkpoint()
    done = checkpoint.server_round if checkpoint else 0
    if done >= config.rounds:
        print(f"fedmi: {run.path} already finished all {config.rounds} rounds")
        return 0
    print(f"fedmi: resuming {config.name} after round {done} of {config.rounds} -> {run.path}", flush=True)
    began = time.perf_counter()
    with _interruptible(lambda: f"fedmi run --resume {run.path}"):
        simulate(config, run.path, args.data_root, verbose=args.verbose, resume=True)
    return 0 if _report(config.name, run.path, began) else 1


@contextlib.contextmanager
def _interruptible(resume_with: Callable[[], str]) -> Iterator[None]:
    """Ctrl-C or ``kill`` (SIGTERM) stop the run and every process it started; say how to resume it.

    SIGINT is set explicitly too: a shell without job control starts background commands
    with SIGINT ignored, and Python keeps it ignored, so ``kill -INT`` would do nothing.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    except KeyboardInterrupt:
        print(
            f"fedmi: interrupted; every process of the run is stopped. Continue it with `{resume_with()}`",
            file=sys.stderr,
        )
        raise SystemExit(130) from None


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted-key overrides of ``--set`` and ``--seed``."""
    overrides = dict(parse_override(text) for text in args.set)
    if getattr(args, "seed", None) is not None:
        overrides["seed"] = args.seed
    if isinstance(overrides.get("logging.tensorboard"), str):  # the ServerApp may run in another working directory
        overrides["logging.tensorboard"] = str(Path(overrides["logging.tensorboard"]).resolve())
    return overrides


def _report(name: str, out: Path, began: float) -> bool:
    """Say where a finished run is; False (and why, on stderr) when no round aggregated any client's update."""
    from fedmi_flower.records.results import RunDirectory

    rounds = RunDirectory(out).read_rounds()
    print(f"fedmi: {name} finished {len(rounds)} rounds in {time.perf_counter() - began:.0f} s; results in {out}")
    # The last round's line above has its numbers; summary.csv has every one of every round.
    print(f"  next: `fedmi report {out}` (what the numbers say), `fedmi plot {out}` (figures); log in {out}/run.log")
    if rounds and not any(r.aggregated for r in rounds):
        errors = sorted({f.error for r in rounds for f in r.failures} | {x.reason for r in rounds for x in r.rejected})
        first = f"; the first: {errors[0][:300]}" if errors else ""
        print(
            f"fedmi: error: {name}: no round aggregated any client's update ({len(errors)} distinct client "
            f"error(s){first}); the run is kept, read {out}/run.log",
            file=sys.stderr,
        )
        return False
    return True


def _cmd_run(args: argparse.Namespace) -> int:
    if args.resume:
        return _resume(args)
    if not args.experiment:
        raise ConfigError("name an experiment (see `fedmi list`) or give --resume RUN_DIR")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    configs = load_sweep(args.experiment, _overrides(args), seeds=seeds)
    from fedmi_flower.apps.preflight import check_devices

    for config in configs:  # first, and without torch: a GPU asked for on a machine without one is one line at once
        check_devices(config)
    from fedmi_flower.records.results import RunDirectory, default_run_dir

    swept = len(configs) > 1 or seeds is not None  # every point of a sweep (or seed) in its own folder under --out
    base = Path(args.out) if args.out else default_run_dir(args.experiment if swept else configs[0].name)
    for config in configs:  # every folder refused before the first run starts, not after hours of it
        RunDirectory(base / config.name if swept else base).check_new()
    # Torch loads only once the config is known to be good; Flower and Ray once the machine can run it.
    from fedmi_flower.apps.preflight import preflight

    for config in configs:
        preflight(config)
    from fedmi_flower.apps.simulation import SimulationRuntime

    out = base
    all_good = True
    with _interruptible(lambda: f"fedmi run --resume {out}"), SimulationRuntime(args.verbose) as runtime:  # one for all
        for i, config in enumerate(configs):
            out = base / config.name if swept else base
            if swept:
                print(f"fedmi: running {config.name} ({i + 1}/{len(configs)}) -> {out}", flush=True)
            began = time.perf_counter()
            runtime.run(config, out, args.data_root)
            all_good = _report(config.name, out, began) and all_good
    if swept:
        print(f"fedmi: {len(configs)} runs in {base}; `fedmi report {base}` summarises them")
    return 0 if all_good else 1


def _deployment_run_config(experiment: str, overrides: dict[str, Any], config: ExperimentConfig) -> dict[str, str]:
    """The run config (``experiment`` and ``set``) from which the ServerApp and every ClientApp rebuild ``config``.

    An experiment name resolves inside the app that ``flwr run`` ships (its
    ``experiments/`` folder travels with it); a TOML file is passed by absolute path.
    """
    ref = str(Path(experiment).resolve()) if experiment.endswith(".toml") or Path(experiment).is_file() else experiment
    run_config = {"experiment": ref, "set": " ".join(f"{key}={json.dumps(value)}" for key, value in overrides.items())}
    try:
        survives = ExperimentConfig.from_run_config(run_config) == config
    except ConfigError:
        survives = False
    if not survives:
        raise ConfigError(
            f"the overrides {run_config['set']!r} do not survive the run config's `set` string; "
            "write string values without spaces and '='"
        )
    return run_config


def _cmd_credentials(args: argparse.Namespace) -> int:
    import datetime

    from fedmi_flower.apps.credentials import ALWAYS_COVERED, make_credentials

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; give a new folder (credentials are never overwritten)")
    if args.days <= 0:
        raise ConfigError(f"--days {args.days}: certificates must be valid for at least one day")
    if args.supernodes < 1:
        raise ConfigError(f"--supernodes {args.supernodes}: make a key pair for at least one SuperNode")
    made = make_credentials(out, args.supernodes, args.host, datetime.timedelta(days=args.days))
    hosts = ", ".join(dict.fromkeys([*args.host, *ALWAYS_COVERED]))
    print(f"wrote into {out} (certificates valid {args.days} days, for {hosts}):")
    print(f"  {made.ca_certificate.name}  the CA: every SuperNode host and every machine that runs `flwr` trusts it")
    print(f"  {made.server_certificate.name} {made.server_key.name}  the SuperLink's --ssl-certfile and --ssl-keyfile")
    for i, key in enumerate(made.supernode_keys):
        print(f"  {key.name} {made.public_key(i).name}  SuperNode {i}'s key pair (`flwr supernode register` the .pub)")
    print("see docs/deployment.md, 'Across hosts', for the commands that use them")
    return 0


def _cmd_deploy_local(args: argparse.Namespace) -> int:
    overrides = _overrides(args)
    configs = load_sweep(args.experiment, overrides)
    if len(configs) > 1:
        raise ConfigError(
            f"{args.experiment} is a sweep of {len(configs)} runs; "
            "deploy-local runs one: fix the swept key with --set, or use `fedmi run`"
        )
    (config,) = configs
    if args.clients is not None and args.clients != config.clients:
        raise ConfigError(
            f"--clients {args.clients} but experiment {config.name!r} has clients = {config.clients}; "
            f"drop --clients, or add --set clients={args.clients} to change the experiment"
        )
    run_config = _deployment_run_config(args.experiment, overrides, config)
    from fedmi_flower.records.results import RunDirectory, default_run_dir
    from fedmi_flower.science.data import load_labels

    # Fail on a missing dataset here, with the loader's message, before any process starts.
    load_labels(config.data.dataset, True, args.data_root)
    load_labels(config.data.dataset, False, args.data_root)
    out = Path(args.out) if args.out else default_run_dir(config.name)
    RunDirectory(out).check_new()  # the ServerApp would refuse it too, but in a log
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fedmi-deploy-"))
    # `kill` (SIGTERM) stops the deployment like Ctrl-C does, instead of leaving its processes behind.
    # SIGINT too, explicitly: a shell without job control starts background commands with SIGINT
    # ignored, and Python then keeps it ignored, so `kill -INT` would leave the deployment running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    began = time.perf_counter()
    print(f"fedmi: starting a SuperLink and {config.clients} SuperNodes; state and logs in {workdir}", flush=True)
    try:
        with LocalDeployment(workdir, config.clients, args.data_root, secure=not args.insecure) as deployment:
            security = (
                "TLS and SuperNode authentication off (--insecure)"
                if args.insecure
                else f"TLS on (CA in {workdir / 'credentials'}), SuperNode authentication on "
                f"({config.clients} keys registered)"
            )
            print(
                f"fedmi: SuperLink on {deployment.address}, {config.clients} SuperNodes online after "
                f"{time.perf_counter() - began:.1f} s; {security}; running {config.name} -> {out}",
                flush=True,
            )
            deployment.run(run_config, out, timeout=args.timeout, echo=sys.stdout, import_paths=config.import_paths())
    except KeyboardInterrupt:
        print(
            f"fedmi: interrupted; every process of the deployment is stopped; logs in {workdir / 'logs'}",
            file=sys.stderr,
        )
        return 130
    return 0 if _report(config.name, out, began) else 1


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; distinct non-negative whole numbers."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r} must be whole numbers separated by commas, e.g. --seeds 0,1,2") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r} must list distinct non-negative seeds, e.g. --seeds 0,1,2")
    return seeds


def _common_folder(paths: list[Path]) -> Path:
    """The folder holding all ``paths`` (a sweep's output folder); the current one if that is the filesystem root."""
    from os.path import commonpath

    common = Path(commonpath([p.resolve().parent for p in paths]))
    return common if common != Path(common.anchor) else Path.cwd()


def _cmd_plot(args: argparse.Namespace) -> int:
    from fedmi_flower.views.graphs import paper_titles  # matplotlib loads only for plotting

    with paper_titles() if args.paper else contextlib.nullcontext():
        return _draw(args)


def _draw(args: argparse.Namespace) -> int:
    from fedmi_flower.records.series import RunError, comparison, find_runs, load_run, setting_label
    from fedmi_flower.views.plots import plot_compare, plot_run, plot_skew_law
    from fedmi_flower.views.report import skew_law_groups, skew_law_points

    paths = find_runs(args.runs)

    if args.compare:
        runs = [load_run(p) for p in paths]
        out = Path(args.out) if args.out else _common_folder(paths) / "figures-compare"
        law = skew_law_points(runs)
        try:
            setting, groups = comparison(runs)
        except RunError:
            if not law:
                raise
            # Runs of several partitions (a Dirichlet sweep and its IID end): one axis, their label skew.
            made = plot_skew_law(law, out, groups=skew_law_groups(runs))
            print(f"fedmi: {len(runs)} runs differ in more than one setting; drawn against their label skew only")
        else:
            labels = [setting_label(g[0].config, [setting]) for g in groups]
            made = plot_compare(groups, labels, setting, out)
            if law:  # a skew sweep: every metric against the runs' label skew too
                made += plot_skew_law(law, out, groups=skew_law_groups(runs))
            print(f"fedmi: {len(runs)} runs side by side by {setting} ({', '.join(labels)})")
    else:
        if len(paths) != 1:
            raise RunError(
                f"fedmi plot draws one run, but {' '.join(args.runs)} holds {len(paths)}; "
                "name one of them, or add --compare to set them side by side"
            )
        run = load_run(paths[0])
        out = Path(args.out) if args.out else run.path / "figures"
        made = plot_run(run, out, graph_class=args.graph_class, graph_round=args.graph_round)
    print(f"fedmi: wrote {len(made)} files to {out}: " + ", ".join(sorted({p.stem for p, _ in made})))
    return 0


def report_path(out: str) -> Path:
    """The Markdown file ``--out`` names: ``out/report.md`` for a folder (existing, or a name without a suffix)."""
    path = Path(out)
    if path.is_dir() or not path.suffix:
        return path / "report.md"
    if path.suffix.lower() != ".md":
        raise ConfigError(
            f"--out {out}: a report is a Markdown file with its HTML beside it; "
            f"give a folder or a .md file, e.g. --out {path.with_suffix('.md')}"
        )
    return path


def _cmd_report(args: argparse.Namespace) -> int:
    from fedmi_flower.records.series import find_runs, load_run
    from fedmi_flower.views.report import write_report

    out = report_path(args.out) if args.out else None
    paths = find_runs(args.runs)
    runs = [load_run(p) for p in paths]
    out = out or (paths[0] if len(paths) == 1 else _common_folder(paths)) / "report" / "report.md"
    md, html = write_report(runs, out)
    print(f"fedmi: report on {len(runs)} run{'s' if len(runs) > 1 else ''}: {md} and {html}")
    return 0


def _cmd_view(args: argparse.Namespace) -> int:
    from fedmi_flower.records.series import find_runs, load_run
    from fedmi_flower.views.explorer import write_explorer

    paths = find_runs(args.runs)
    runs = [load_run(p) for p in paths]
    if args.out:
        out = Path(args.out)
    elif len(runs) == 1:
        out = runs[0].path / "view.html"
    else:
        out = _common_folder(paths) / "views"
    for page in write_explorer(runs, out):
        print(f"fedmi: wrote {page} (one file, works offline: open it in a browser)")
    return 0


def _cmd_tensorboard(args: argparse.Namespace) -> int:
    from fedmi_flower.records.series import find_runs, load_run
    from fedmi_flower.views.tensorboard import TensorBoardScalars

    paths = find_runs(args.runs)
    for path in paths:
        run = load_run(path)
        scalars = TensorBoardScalars(args.logdir, run.path.name)
        try:
            for record in run.records:
                scalars(record)
        finally:
            scalars.close()
        print(f"fedmi: {len(run.records)} rounds of {run.path} -> {scalars.path}")
    print(f"  next: `tensorboard --logdir {args.logdir}`")
    return 0


def _write_rows(path: Path, row_type: type, rows: Sequence[Any]) -> None:
    """A CSV of dataclass rows, one column a field, in field order."""
    fields = [f.name for f in dataclasses.fields(row_type)]
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(fields)
        writer.writerows([getattr(row, name) for name in fields] for row in rows)


def _cmd_frontier(args: argparse.Namespace) -> int:
    from fedmi_flower.analysis.frontier import FrontierPoint, frontier
    from fedmi_flower.records.round_record import RecordError
    from fedmi_flower.records.series import RunError, load_run
    from fedmi_flower.views.plots import fig_frontier, save

    try:
        lambdas = [float(x) for x in args.lambdas.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--lambdas {args.lambdas!r} must be numbers separated by commas, e.g. 0.003,0.01") from None
    if not lambdas or any(v < 0 for v in lambdas):
        raise ConfigError(f"--lambdas {args.lambdas!r} must list non-negative L0 coefficients")
    try:
        server_round, points = frontier(args.run, args.server_round, lambdas, data_root=args.data_root)
    except RecordError as err:
        raise RunError(str(err)) from None
    out = Path(args.out) if args.out else Path(args.run) / "frontier"
    title = f"Circuit size against faithfulness: global model of round {server_round} of {Path(args.run).name}"
    analysed = {r.round: r for r in load_run(args.run).records}.get(server_round)
    ranking = analysed.global_model if analysed is not None else None
    made = save(fig_frontier(points, title, ranking), out, "frontier")
    _write_rows(out / "frontier.csv", FrontierPoint, points)
    print(
        f"fedmi: {len(points)} circuits of round {server_round}; "
        f"wrote {', '.join(str(p) for p in made)} and frontier.csv"
    )
    return 0


def _cmd_overwrite(args: argparse.Namespace) -> int:
    from fedmi_flower.analysis.overwrite_sites import OverwriteSite, summarise_sites, where_overwritten
    from fedmi_flower.records.round_record import RecordError
    from fedmi_flower.records.series import RunError
    from fedmi_flower.science.alignment import AlignmentError

    try:
        sites = where_overwritten(args.run, data_root=args.data_root)
    except (RecordError, AlignmentError) as err:  # a model without a permutation spec has no circuit parameters
        raise RunError(str(err)) from None
    out = Path(args.out) if args.out else Path(args.run) / "overwrite"
    out.mkdir(parents=True, exist_ok=True)
    _write_rows(out / "overwrite.csv", OverwriteSite, sites)
    print(
        "verdict on the global model | circuits | activity global/own | others' share: makes, reads "
        "| restored | strongest overwriter: makes, reads, activity on its model/own"
    )
    summaries = summarise_sites(sites)
    if not summaries:
        print("(no circuit worked on its own model in these rounds: the csv has every circuit, with its verdicts)")
    for g in summaries:
        print(
            f"{g.verdict} | {g.circuits} | {g.activity_ratio:.2f} | {g.others_writes:.2f}, {g.others_reads:.2f} "
            f"| {g.restorers} | {g.restorer_writes:.2f}, {g.restorer_reads:.2f}, {g.restorer_activity_ratio:.2f}"
        )
    print(f"fedmi: {len(sites)} circuit-client pairs; wrote {out / 'overwrite.csv'}")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from fedmi_flower.apps.study import (
        Study,
        default_study_dir,
        describe_plan,
        list_studies,
        plan,
        run_state,
        study_seconds,
        write_claims,
    )

    if args.list:
        for name, path in list_studies().items():
            print(f"{name:<12} {Study.load(str(path)).description}")
        return 0
    if not args.study:
        raise ConfigError("name a study (`fedmi study --list` shows the bundled ones) or a study TOML file")
    study = Study.load(args.study)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    overrides = _overrides(args)
    if {"seed", "discovery.objective"} & set(overrides):
        raise ConfigError("a study sets seed and discovery.objective itself: use --seeds, or its objectives")
    runs = plan(study, args.short, seeds, overrides)
    out = Path(args.out) if args.out else default_study_dir(study, args.short)
    for line in describe_plan(study, runs, out, args.short):  # every folder checked before anything runs
        print(line)
    if args.dry_run:
        return 0
    from fedmi_flower.apps.preflight import check_devices, preflight
    from fedmi_flower.apps.study import gpu_shares, run_study

    gpu_shares(runs, args.parallel)
    todo = [r for r in runs if run_state(r, out) != "done"]
    for run in todo:
        check_devices(run.config)
        preflight(run.config)
    from fedmi_flower.apps.simulation import SimulationRuntime

    # One runtime (a SuperLink and its Ray) per concurrent run, started on first use, all stopped at the end.
    runtimes: dict[int, SimulationRuntime] = {}
    lock = threading.Lock()

    def run_one(run: Any, folder: Path, resume: bool) -> None:
        with lock:
            runtime = runtimes.get(threading.get_ident())
            if runtime is None:
                runtime = SimulationRuntime(args.verbose, echo=args.parallel == 1)
                runtime.start()  # a failed start leaves nothing behind for this thread's next run to trip on
                runtimes[threading.get_ident()] = runtime
        runtime.run(run.config, folder, args.data_root, resume)

    try:
        again = " ".join(["fedmi study", args.study, *(["--short"] if args.short else []), "--out", str(out)])
        with _interruptible(lambda: again):
            failed = run_study(study, runs, out, run_one, sys.stdout, args.parallel) if todo else []
    finally:
        for runtime in runtimes.values():
            runtime.stop()
    claims = write_claims(study, runs, out)
    from fedmi_flower.apps.study import draw_figures

    made, skipped = draw_figures(study, runs, out)
    if study.figures:
        print(f"fedmi study: {len({p.stem for p in made})} figures of the paper in {out / 'figures'}")
        for why in skipped:
            print(f"  not drawn: {why}")
    print(
        f"fedmi study: {len(runs) - len(failed)} of {len(runs)} runs done ({study_seconds(out) / 60:.1f} min of runs); "
        f"claims in {claims}" + (f"; failed: {', '.join(failed)} (a second call retries them)" if failed else "")
    )
    return 1 if failed else 0


def _cmd_claims(args: argparse.Namespace) -> int:
    from fedmi_flower.apps.study import Study
    from fedmi_flower.records.digest import read_digests
    from fedmi_flower.views.claims import claims_table, evaluate_all, replace_table

    study = Study.load(args.study)
    digests = read_digests(args.digests)
    table = claims_table(evaluate_all(study.claims, digests, study.objectives_of))
    if args.update:
        target = Path(args.update)
        target.write_text(replace_table(target.read_text(), table, str(target)))
        print(f"fedmi: {len(study.claims)} claims on {len(digests)} runs -> the generated table of {target}")
    else:
        print(table, end="")
    return 0


def _add_set(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable): a setting overridden, read by :func:`_overrides`."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_study_commands(sub: argparse._SubParsersAction) -> None:
    """``fedmi study`` and ``fedmi claims``: a whole study in one command, and its claims judged."""
    study = sub.add_parser(
        "study",
        help="run a study (experiments x objectives x seeds; `paper` is the whole paper) and judge its claims",
    )
    study.add_argument("study", nargs="?", help="a bundled study (--list) or a study TOML file")
    study.add_argument("--list", action="store_true", help="list the bundled studies")
    study.add_argument("--short", action="store_true", help="the study's shorter settings, for 2 CPU cores")
    study.add_argument("--dry-run", action="store_true", help="print the plan (runs, states, expected minutes)")
    study.add_argument(
        "--out", help="the study's folder (default: runs/study-NAME[-short]; a second call continues it)"
    )
    study.add_argument("--seeds", metavar="S,S,...", help="these seeds instead of the study's")
    _add_set(study, "override a setting of every run, e.g. --set resources.client_gpus=0.25 (repeatable)")
    study.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="runs at once (each its own SuperLink and Ray; clients asking for a GPU share one): "
        "for a GPU, or more cores than one run uses (default: 1)",
    )
    study.add_argument("--data-root", help="folder holding the datasets (default: $FEDMI_DATA_ROOT, else ./data)")
    study.add_argument("--verbose", action="store_true", help="Flower's debug logging")
    study.set_defaults(func=_cmd_study)

    claims = sub.add_parser("claims", help="judge a study's claims on run digests; print the table or --update a page")
    claims.add_argument("study", help="a bundled study or a study TOML file (its [[claim]] tables)")
    claims.add_argument("digests", nargs="+", metavar="DIGESTS", help="digest files or folders (a study's OUT/digests)")
    claims.add_argument("--update", metavar="FILE", help="replace the generated block of this Markdown file")
    claims.set_defaults(func=_cmd_claims)


def add_plot_and_report_commands(sub: argparse._SubParsersAction) -> None:
    """``fedmi plot`` and ``fedmi report``: figures and pages from run directories."""
    plot = sub.add_parser("plot", help="draw every figure of the paper from a run directory (PNG and SVG)")
    plot.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="a run directory; with --compare several (or a folder holding a sweep's runs)",
    )
    plot.add_argument(
        "--compare", action="store_true", help="set runs that differ in one setting side by side (paper Fig. 19)"
    )
    plot.add_argument(
        "--out",
        help="folder for the figures (default: RUN_DIR/figures; with --compare: figures-compare beside the runs)",
    )
    plot.add_argument(
        "--graph-class", type=int, help="class whose circuit graphs to draw (default: one that two clients hold)"
    )
    plot.add_argument("--graph-round", type=int, help="round whose circuit graphs to draw (default: the last)")
    plot.add_argument("--paper", action="store_true", help="figures for a paper: no run folder names in their titles")
    plot.set_defaults(func=_cmd_plot)

    report = sub.add_parser(
        "report",
        help=(
            "one-page Markdown and HTML report of runs: "
            "config, figures, RQ1/RQ2 tables, collapse; seeds as mean and spread"
        ),
    )
    report.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="run directories, or folders holding them (a sweep's or --seeds output)",
    )
    report.add_argument(
        "--out",
        help=(
            "the Markdown file; the HTML goes beside it (default: "
            "RUN_DIR/report/report.md, or report/report.md beside several runs)"
        ),
    )
    report.set_defaults(func=_cmd_report)

    view = sub.add_parser(
        "view", help="an interactive page per run: round slider, client / class / layer selectors (one HTML file)"
    )
    view.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or folders holding them")
    view.add_argument(
        "--out", help="the .html file (one run), or a folder for one page per run (default: RUN_DIR/view.html)"
    )
    view.set_defaults(func=_cmd_view)

    board = sub.add_parser(
        "tensorboard",
        help="write finished runs' round scalars as TensorBoard events (a running run: --set logging.tensorboard=DIR)",
    )
    board.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or folders holding them")
    board.add_argument(
        "--logdir", required=True, help="TensorBoard's folder; each run goes to LOGDIR/<run folder name>"
    )
    board.set_defaults(func=_cmd_tensorboard)

    frontier = sub.add_parser(
        "frontier",
        help="circuit size against faithfulness: discovery swept over its L0 coefficient on a round's global model",
    )
    frontier.add_argument("run", metavar="RUN_DIR", help="a run directory")
    frontier.add_argument("--round", type=int, dest="server_round", help="the round (default: the last analysed)")
    frontier.add_argument("--lambdas", default="0.001,0.003,0.01,0.03,0.1", help="L0 coefficients, comma-separated")
    frontier.add_argument("--data-root", help="folder holding MNIST/raw (default: $FEDMI_DATA_ROOT, else ./data)")
    frontier.add_argument("--out", help="folder for frontier.png, .svg and .csv (default: RUN_DIR/frontier)")
    frontier.set_defaults(func=_cmd_frontier)

    overwrite = sub.add_parser(
        "overwrite",
        help="where each working circuit was overwritten: the change to the weights that make or read its channels, "
        "and its channels' activity on the global model",
    )
    overwrite.add_argument("run", metavar="RUN_DIR", help="a run directory (its weights/round-<t>/ are read)")
    overwrite.add_argument("--data-root", help="folder holding the run's dataset (default: $FEDMI_DATA_ROOT)")
    overwrite.add_argument("--out", help="folder for overwrite.csv (default: RUN_DIR/overwrite)")
    overwrite.set_defaults(func=_cmd_overwrite)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmi", description="Circuit preservation in federated learning, on Flower.")
    parser.add_argument("--version", action="version", version=f"fedmi-flower {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment as a Flower simulation (Ray virtual clients)")
    run.add_argument("experiment", nargs="?", help="experiment name (see `fedmi list`) or path to a TOML file")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run after its last finished round")
    _add_set(run, "override a setting, e.g. --set train.sparsity=0.995 (repeatable)")
    run.add_argument("--out", help="run directory (default: runs/<experiment>-<date>-<time>)")
    seed = run.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=int, help="the run's seed (overrides the experiment's)")
    seed.add_argument(
        "--seeds",
        metavar="S,S,...",
        help="run once per seed, each into <out>/<name>-seed=<s> (with a [sweep]: every point once per seed)",
    )
    run.add_argument("--data-root", help="folder holding MNIST/raw (default: $FEDMI_DATA_ROOT, else ./data)")
    run.add_argument("--verbose", action="store_true", help="Flower's debug logging")
    run.set_defaults(func=_cmd_run)

    dep = sub.add_parser(
        "deploy-local",
        help=(
            "run an experiment on Flower's deployment runtime: a SuperLink and one SuperNode per client on this machine"
        ),
    )
    dep.add_argument("experiment", help="experiment name (see `fedmi list`) or path to a TOML file")
    dep.add_argument(
        "--clients", type=int, help="SuperNodes to start; must equal the experiment's clients (the default)"
    )
    _add_set(dep, "override a setting, e.g. --set rounds=2 (repeatable)")
    dep.add_argument("--out", help="run directory (default: runs/<experiment>-<date>-<time>)")
    dep.add_argument("--seed", type=int, help="the run's seed (overrides the experiment's)")
    dep.add_argument(
        "--data-root",
        help=(
            "folder holding MNIST/raw, given to the ServerApp and every SuperNode "
            "(default: $FEDMI_DATA_ROOT, else ./data)"
        ),
    )
    dep.add_argument("--workdir", help="folder for the processes' state and logs (default: a new temporary folder)")
    dep.add_argument("--timeout", type=float, help="seconds the run may take before it is stopped (default: no limit)")
    dep.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS and no SuperNode authentication (default: both on, with throwaway credentials)",
    )
    dep.set_defaults(func=_cmd_deploy_local)

    cred = sub.add_parser(
        "credentials",
        help="write a CA, the SuperLink's TLS certificate and SuperNode key pairs, for a deployment across hosts",
    )
    cred.add_argument("out", metavar="OUT_DIR", help="a new folder to write them into")
    cred.add_argument("--supernodes", type=int, required=True, help="SuperNode key pairs to make")
    cred.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="name or IP address by which SuperNodes and flwr reach the SuperLink (repeatable); "
        "localhost and 127.0.0.1 are always covered",
    )
    cred.add_argument("--days", type=int, default=30, help="how long the certificates stay valid (default: 30)")
    cred.set_defaults(func=_cmd_credentials)

    lst = sub.add_parser("list", help="list the bundled experiments")
    lst.set_defaults(func=_cmd_list)

    keys = sub.add_parser("keys", help="every config key: default, what is allowed, what it does")
    keys.add_argument("table", nargs="?", help="one table only: model, data, train, discovery, analysis, ...")
    keys.set_defaults(func=_cmd_keys)
    add_plot_and_report_commands(sub)
    add_study_commands(sub)
    return parser


USER_ERRORS = (
    ("fedmi_flower.config", "ConfigError"),
    ("fedmi_flower.science.data", "DatasetError"),
    ("fedmi_flower.science.models", "ModelError"),
    ("fedmi_flower.apps.processes", "DeploymentError"),
    ("fedmi_flower.records.series", "RunError"),
    ("fedmi_flower.records.digest", "DigestError"),
    ("fedmi_flower.views.claims", "ClaimError"),
    ("builtins", "FileExistsError"),
    ("builtins", "FileNotFoundError"),
    ("builtins", "NotADirectoryError"),
    ("builtins", "PermissionError"),
)
"""The errors that are the user's to fix: one line naming the problem and the fix, no traceback."""


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is one of :data:`USER_ERRORS`.

    Looked up among the modules already loaded rather than imported here: importing
    them would load torch, and `fedmi --help` or a config error must answer without it
    (an error of a module that was never loaded cannot have been raised).
    """
    for module, name in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(err, cls):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # `model.name` and `strategy.name` may name a module beside the user's work ("my_nets:build"), as
    # `python -m` would find it; appended, so that it never shadows an installed module.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return args.func(args)
    except BrokenPipeError:  # `fedmi list | head`
        return 0
    except Exception as err:
        if not is_user_error(err):
            raise
        print(f"fedmi: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
