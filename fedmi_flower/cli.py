"""The ``fedmi`` command: run experiments and list them.

    fedmi run EXPERIMENT [--set KEY=VALUE ...] [--out DIR] [--seed N] [--data-root DIR]
    fedmi run --resume RUN_DIR
    fedmi list
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import ConfigError, list_experiments, load_experiment, load_sweep, parse_override
from .data import DatasetError
from .results import RunDirectory


def _cmd_list(args: argparse.Namespace) -> int:
    experiments = list_experiments()
    if not experiments:
        print("no experiments found (set FEDMI_EXPERIMENTS to a folder of TOML files)")
        return 1
    width = max(len(n) for n in experiments)
    for name in experiments:
        config = load_experiment(name)
        print(f"{name:<{width}}  {config.clients} clients x {config.rounds} rounds, {config.strategy.name}, sparsity {config.train.sparsity:g}: {config.description}")
    return 0


def _resume(args: argparse.Namespace) -> int:
    from .simulation import simulate

    run = RunDirectory(args.resume)
    if not (run.path / "config.toml").is_file():
        raise ConfigError(f"{run.path} is not a run directory (no config.toml); give the folder `fedmi run` wrote")
    if args.experiment or args.set or args.seed is not None:
        raise ConfigError("--resume continues a run with its own config.toml; drop EXPERIMENT, --set and --seed")
    config = run.read_config()
    checkpoint = run.read_checkpoint()
    done = checkpoint.server_round if checkpoint else 0
    if done >= config.rounds:
        print(f"fedmi: {run.path} already finished all {config.rounds} rounds")
        return 0
    print(f"fedmi: resuming {config.name} after round {done} of {config.rounds} -> {run.path}", flush=True)
    simulate(config, run.path, args.data_root, verbose=args.verbose, resume=True)
    print(f"fedmi: {config.name} finished {len(run.read_rounds())} rounds; results in {run.path}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .simulation import simulate  # Flower and Ray load only when a run starts

    if args.resume:
        return _resume(args)
    if not args.experiment:
        raise ConfigError("name an experiment (see `fedmi list`) or give --resume RUN_DIR")
    overrides = dict(parse_override(text) for text in args.set)
    if args.seed is not None:
        overrides["seed"] = args.seed
    configs = load_sweep(args.experiment, overrides)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(args.out) if args.out else Path("runs") / f"{configs[0].name if len(configs) == 1 else args.experiment}-{stamp}"
    for i, config in enumerate(configs):
        out = base / config.name if len(configs) > 1 else base
        print(f"fedmi: running {config.name} ({i + 1}/{len(configs)}) -> {out}", flush=True)
        began = time.perf_counter()
        simulate(config, out, args.data_root, verbose=args.verbose)
        rounds = RunDirectory(out).read_rounds()
        print(f"fedmi: {config.name} finished {len(rounds)} rounds in {time.perf_counter() - began:.0f} s; results in {out}")
        if rounds:
            s = rounds[-1].get("summary", {})
            print("  last round: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items() if v is not None))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmi", description="Circuit preservation in federated learning, on Flower.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment as a Flower simulation (Ray virtual clients)")
    run.add_argument("experiment", nargs="?", help="experiment name (see `fedmi list`) or path to a TOML file")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run after its last finished round")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting, e.g. --set train.sparsity=0.995 (repeatable)")
    run.add_argument("--out", help="run directory (default: runs/<experiment>-<date>-<time>)")
    run.add_argument("--seed", type=int, help="the run's seed (overrides the experiment's)")
    run.add_argument("--data-root", help="folder holding MNIST/raw (default: $FEDMI_DATA_ROOT, else ./data)")
    run.add_argument("--verbose", action="store_true", help="Flower's debug logging")
    run.set_defaults(func=_cmd_run)

    lst = sub.add_parser("list", help="list the bundled experiments")
    lst.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DatasetError, FileExistsError, FileNotFoundError) as err:
        print(f"fedmi: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
