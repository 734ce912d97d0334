"""Real runs for the tests: the `fedmi` command in a subprocess, on a small slice of MNIST."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMALL_IID = [
    "rounds=2",
    "data.max_per_client=2000",
    "train.batch_size=64",
    "discovery.steps=30",
    "data.eval_per_class=100",
]
"""The quickstart, small: 3 IID clients x 2 rounds."""
SMALL_NONIID = [
    "train.sparsity=0.95",
    "rounds=3",
    "train.epochs=1",
    "data.max_per_client=1000",
    "train.batch_size=64",
    "discovery.steps=30",
    "data.eval_per_class=30",
    "analysis.second_method=false",
    "analysis.ablations=false",
]
"""noniid-2class, small: 3 clients x 3 rounds of 1 epoch, 2 disjoint classes each, at 95% sparsity (99.5% is
degenerate in 3 rounds). The costliest robustness steps are left to the IID run's tests (time).
"""
NONIID_SEEDS = (0, 1)


def fedmi(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``fedmi ARGS`` from the repository; return the finished process (output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "fedmi_flower.cli", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sets(overrides: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]``."""
    return list(itertools.chain.from_iterable(("--set", s) for s in overrides))


def rounds_json(run: object) -> list[dict]:
    """A run's ``rounds.jsonl`` as written, one dict per round: what a test checks against the JSON layout.

    ``run`` is a run directory path or a ``RunDirectory``.
    """
    path = Path(getattr(run, "path", run)) / "rounds.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def flat_summary(record: dict) -> dict:
    """A written record's summary by its flat names (``summary.csv``'s: ``stability_pairs``, ``seed_floor``), read
    through the schema (schema 4 groups each view; NaN as None, as the JSON has it)."""
    from fedmi_flower.records.results import json_safe
    from fedmi_flower.records.round_record import RoundRecord

    return json_safe(RoundRecord.from_json(record).summary.scalars())
