"""The run directory: what a run leaves behind, written so that a crash never corrupts it.

::

    RUN_DIR/
      config.toml          the resolved experiment (what to rerun it with)
      strategy.json        the strategy class that ran, and its Flower API (legacy or message)
      partitions.json      each client's training and held-out rows, the server's probe and evaluation rows
      rounds.jsonl         one JSON object per finished round: every circuit, every metric
      summary.csv          one row per round of the scalar summaries
      weights/round-<t>/   compressed global.npz and client-<id>.npz of every round: the weights each
                           round's circuits were found on, for circuit graphs (paper Fig. 11-13)
      global_weights.npz   the global model after the last finished round
      checkpoint.npz       what `fedmi run --resume` needs: round, global weights, strategy and analysis state

Every file is replaced atomically (written beside, flushed, renamed), so an
interrupted run leaves every finished round readable. The checkpoint is written
last: it is the commit point of a round, and a resumed run redoes any round recorded
after it. Undefined values (NaN) are
written as JSON ``null``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedmi_flower.config import ExperimentConfig
from fedmi_flower.records.round_record import RecordError, RoundRecord, check_written_record
from fedmi_flower.science.data import ClientPartition

CONFIG_FILE = "config.toml"
PARTITIONS_FILE = "partitions.json"
STRATEGY_FILE = "strategy.json"
ROUNDS_FILE = "rounds.jsonl"
SUMMARY_FILE = "summary.csv"
ROUND_WEIGHTS_DIR = "weights"
WEIGHTS_FILE = "global_weights.npz"
CHECKPOINT_FILE = "checkpoint.npz"
ROUND_COLUMN = "round"
"""The first column of ``summary.csv``."""

RUNS_DIR = Path("runs")
"""Where runs go when no --out is given."""


def default_run_dir(name: str, stamp: str | None = None) -> Path:
    """``runs/<name>-<YYYYmmdd-HHMMSS>``: a new folder for a run (or a sweep) named ``name``."""
    return RUNS_DIR / f"{name}-{stamp or time.strftime('%Y%m%d-%H%M%S')}"


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are for sharing
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_safe(value: Any) -> Any:
    """Replace NaN and infinities by None, recursively, and tuples by lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table: a model builder's arguments
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} to TOML")


def config_to_toml(config: ExperimentConfig) -> str:
    """The experiment as a TOML file that :func:`~fedmi_flower.config.load_experiment` reads back.

    Written by hand because the standard library reads TOML but does not write it; the
    config holds only scalars, lists and one level of tables. ``None`` fields are left out.
    """
    top, tables = [], []
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            lines = [f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None]
            tables.append(f"[{key}]\n" + "\n".join(lines))
        elif value is not None:
            top.append(f"{key} = {_toml_value(value)}")
    return "\n".join(top) + "\n\n" + "\n\n".join(tables) + "\n"


@dataclass
class Checkpoint:
    """Everything a run needs to continue after ``server_round``.

    There is no random-number-generator state to keep: every random choice derives
    from ``(seed, purpose, round, client, class)`` (see :mod:`fedmi_flower.science.seeding`).
    """

    server_round: int
    weights: list[np.ndarray]
    strategy_state: dict[str, list[np.ndarray]] = field(default_factory=dict)
    analyst_state: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


class RunDirectory:
    """Reads and writes one run's directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def check_new(self) -> None:
        """Raise ``FileExistsError`` when a new run must not write here: the folder holds a run's rounds, or
        files that are not a fedmi run's (a new run would overwrite them: a user's own config.toml, say);
        ``NotADirectoryError`` when the path is a file; ``PermissionError`` when nothing can be written there.
        """
        if (self.path / ROUNDS_FILE).exists():
            raise FileExistsError(f"{self.path} already holds a run; choose another --out (or resume it)")
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"--out {self.path} is a file, not a folder; choose a new or empty folder")
        if self.path.is_dir() and not (self.path / PARTITIONS_FILE).exists():
            foreign = sorted(p.name for p in self.path.iterdir())
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                raise FileExistsError(
                    f"--out {self.path} is not empty ({shown}) and is not a fedmi run; a run would write over "
                    "what is there: choose a new or empty folder"
                )
        existing = next(p for p in (self.path, *self.path.parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"--out {self.path}: {existing} is not writable; choose a folder you can write to")

    def create(self, exist_ok: bool = False) -> RunDirectory:
        """Create the folder; refuse to write into a run that already has rounds unless ``exist_ok``."""
        if not exist_ok:
            self.check_new()
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    # ------------------------------------------------------------------ writing

    def write_config(self, config: ExperimentConfig) -> None:
        atomic_write(self.path / CONFIG_FILE, config_to_toml(config))

    def write_strategy(self, strategy: Mapping[str, str]) -> None:
        """Record the strategy that runs: the name the config gave, its class (``module.Class``) and API."""
        atomic_write(self.path / STRATEGY_FILE, json.dumps(dict(strategy), indent=1) + "\n")

    def read_strategy(self) -> dict[str, str] | None:
        """What :meth:`write_strategy` recorded; None for a run written before it existed."""
        path = self.path / STRATEGY_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def write_partitions(
        self,
        partitions: Sequence[ClientPartition],
        probe: Sequence[int],
        evaluation: Sequence[int],
        labels: np.ndarray | None = None,
        num_classes: int | None = None,
    ) -> None:
        clients = {}
        for pid, part in enumerate(partitions):
            entry: dict[str, Any] = {"train": list(part.train), "holdout": list(part.holdout)}
            if labels is not None:
                entry["class_counts"] = np.bincount(labels[part.train], minlength=num_classes or 0).tolist()
            clients[str(pid)] = entry
        atomic_write(
            self.path / PARTITIONS_FILE,
            json.dumps({"clients": clients, "server": {"probe": list(probe), "evaluation": list(evaluation)}}),
        )

    def append_round(self, record: RoundRecord) -> None:
        """Add a finished round (replacing a record of the same round, as a resumed run does)."""
        records = [r for r in self.read_rounds() if r.round != record.round]
        records.append(record)
        self._write_rounds(records)

    def _write_rounds(self, records: list[RoundRecord]) -> None:
        records = sorted(records, key=lambda r: r.round)
        lines = "".join(json.dumps(json_safe(r.to_json()), allow_nan=False) + "\n" for r in records)
        atomic_write(self.path / ROUNDS_FILE, lines)
        atomic_write(self.path / SUMMARY_FILE, summary_csv(records))

    def write_weights(self, arrays: Sequence[np.ndarray], server_round: int) -> None:
        buf = io.BytesIO()
        np.savez(buf, *arrays, round=np.asarray(server_round))
        atomic_write(self.path / WEIGHTS_FILE, buf.getvalue())

    def write_checkpoint(self, checkpoint: Checkpoint) -> None:
        arrays: dict[str, np.ndarray] = {f"weights/{i}": w for i, w in enumerate(checkpoint.weights)}
        for name, values in checkpoint.strategy_state.items():
            arrays.update({f"strategy/{name}/{i}": v for i, v in enumerate(values)})
        meta = {
            "round": checkpoint.server_round,
            "seed": checkpoint.seed,
            "weights": len(checkpoint.weights),
            "strategy": {name: len(v) for name, v in checkpoint.strategy_state.items()},
            "analyst": checkpoint.analyst_state,
        }
        buf = io.BytesIO()
        arrays["meta"] = np.asarray(json.dumps(json_safe(meta)))
        np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as its allow_pickle flag
        atomic_write(self.path / CHECKPOINT_FILE, buf.getvalue())

    def finished_round(self) -> int:
        """The last finished round (0 before the first), from the checkpoint's metadata alone: no weights loaded."""
        path = self.path / CHECKPOINT_FILE
        if not path.exists():
            return 0
        with np.load(path) as npz:  # an npz loads lazily: only the meta entry is read
            return int(json.loads(str(npz["meta"]))["round"])

    def read_checkpoint(self) -> Checkpoint | None:
        """The last checkpoint, or None when no round has finished."""
        path = self.path / CHECKPOINT_FILE
        if not path.exists():
            return None
        with np.load(path) as npz:
            meta = json.loads(str(npz["meta"]))
            return Checkpoint(
                server_round=int(meta["round"]),
                weights=[npz[f"weights/{i}"] for i in range(meta["weights"])],
                strategy_state={
                    name: [npz[f"strategy/{name}/{i}"] for i in range(n)] for name, n in meta["strategy"].items()
                },
                analyst_state=meta["analyst"],
                seed=int(meta["seed"]),
            )

    def truncate_rounds(self, last_round: int) -> None:
        """Drop the records of rounds after ``last_round`` (redone by a resumed run)."""
        self._write_rounds([r for r in self.read_rounds() if r.round <= last_round])

    # ------------------------------------------------------------------ reading

    def read_rounds(self) -> list[RoundRecord]:
        """All finished rounds, in order; an empty list for a run with none.

        Raises
        ------
        RecordError
            When a line is not JSON, lacks a key every analysed round has, or is a record of
            a schema version this package does not read; the message names the line.

        A last line cut short (the run was killed while writing it; every round is written
        whole and atomically, so only a copy or an edit does this) is reported as a warning
        and left out: the rounds before it are read.
        """
        path = self.path / ROUNDS_FILE
        if not path.exists():
            return []
        records: list[RoundRecord] = []
        text = path.read_text()
        lines = text.splitlines()
        last = max((n for n, line in enumerate(lines, 1) if line.strip()), default=0)
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                if n == last and not text.endswith("\n"):
                    warnings.warn(
                        f"{path} line {n} is cut short ({err}): left out; the {len(records)} rounds before it are read",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    break
                raise RecordError(
                    f"{path} line {n} is not JSON ({err}); the file was edited or truncated by hand"
                ) from None
            try:
                check_written_record(raw)
                records.append(RoundRecord.from_json(raw))
            except RecordError as err:
                raise RecordError(f"{path} line {n}: {err}") from None
        return sorted(records, key=lambda r: r.round)

    def read_config(self) -> ExperimentConfig:
        from fedmi_flower.config import load_experiment

        return load_experiment(str(self.path / CONFIG_FILE))

    def read_partitions(self) -> dict[str, Any]:
        return json.loads((self.path / PARTITIONS_FILE).read_text())

    def read_weights(self) -> tuple[list[np.ndarray], int]:
        with np.load(self.path / WEIGHTS_FILE) as npz:
            arrays = [npz[f"arr_{i}"] for i in range(len(npz.files) - 1)]
            return arrays, int(npz["round"])

    def write_round_weights(
        self, server_round: int, global_arrays: Sequence[np.ndarray], client_arrays: Mapping[int, Sequence[np.ndarray]]
    ) -> None:
        """Keep this round's global weights and each client's local weights (what its circuits were found on).

        Circuit graphs (paper Fig. 11-13) draw a circuit's edges, the nonzero weights
        between its channels, and those are only honest on the weights the circuit was
        discovered on. Sparse weights compress well (about 10 KB at 99.5% sparsity, 80 KB
        at 90%), so every round keeps them.
        """
        folder = self.path / ROUND_WEIGHTS_DIR / f"round-{int(server_round)}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, arrays in [
            ("global", global_arrays),
            *((f"client-{int(pid)}", a) for pid, a in sorted(client_arrays.items())),
        ]:
            buf = io.BytesIO()
            np.savez_compressed(buf, *arrays)
            atomic_write(folder / f"{name}.npz", buf.getvalue())

    def read_round_weights(self, server_round: int, client: int | None = None) -> list[np.ndarray] | None:
        """The global weights (``client=None``) or a client's local weights of a round; None if not kept."""
        path = (
            self.path
            / ROUND_WEIGHTS_DIR
            / f"round-{int(server_round)}"
            / ("global.npz" if client is None else f"client-{int(client)}.npz")
        )
        if not path.exists():
            return None
        with np.load(path) as npz:
            return [npz[f"arr_{i}"] for i in range(len(npz.files))]


def summary_rows(records: Iterable[RoundRecord]) -> list[dict[str, Any]]:
    """One flat row per round: the round, its summaries (when analysed) and its server timings."""
    rows = []
    for r in records:
        row: dict[str, Any] = {ROUND_COLUMN: r.round, **(r.summary.scalars() if r.analysed else {})}
        row.update({f"t_{k}": v for k, v in r.timings.to_json().items()})
        rows.append(json_safe(row))
    return rows


def summary_csv(records: Iterable[RoundRecord]) -> str:
    rows = summary_rows(records)
    if not rows:
        return ""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return out.getvalue()
