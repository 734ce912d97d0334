"""Shared fixtures. Real-data tests need MNIST: they fail (never skip) when it is missing.

The real runs are made once per session through the `fedmi` command and shared by
every test that reads a run directory: a small IID quickstart, and a small non-IID
run with two seeds (``fedmi run --seeds``), so that multi-seed reports get real runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from runs import NONIID_SEEDS, SMALL_IID, SMALL_NONIID, fedmi, sets

from fedmi_flower.analysis.round_analyst import RoundAnalyst
from fedmi_flower.config import ExperimentConfig
from fedmi_flower.science.data import CACHE_ENV, load_raw, load_split, resolve_data_root
from fedmi_flower.science.models import build_model


@pytest.fixture(scope="session", autouse=True)
def partition_cache(tmp_path_factory) -> Path:
    """The suite's own partition cache (every process it starts inherits it), not the user's ``~/.cache``."""
    folder = tmp_path_factory.mktemp("fedmi-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="session")
def mnist_root() -> str:
    """The data root holding MNIST; a missing dataset fails the test with the loader's own message."""
    root = str(resolve_data_root())
    load_raw("mnist", True, root)  # raises DatasetError naming where it looked and how to fix it
    load_raw("mnist", False, root)
    return root


@pytest.fixture(scope="session")
def iid_run(tmp_path_factory, mnist_root) -> Path:
    """`fedmi run quickstart` with :data:`runs.SMALL_IID`: 3 IID clients x 2 rounds.

    Its TensorBoard scalars go to ``tensorboard/`` beside the run directory.
    """
    out = tmp_path_factory.mktemp("iid") / "run"
    board = f"logging.tensorboard={out.parent / 'tensorboard'}"
    proc = fedmi("run", "quickstart", *sets([*SMALL_IID, board]), "--out", str(out), "--data-root", mnist_root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[round 2/2] 3/3 clients |" in proc.stdout + proc.stderr
    (out / "console.log").write_text(proc.stdout + proc.stderr)  # what the user saw, for the tests that read it
    return out


@pytest.fixture(scope="session")
def noniid_runs(tmp_path_factory, mnist_root) -> list[Path]:
    """`fedmi run noniid-2class --seeds 0,1` with :data:`runs.SMALL_NONIID`: one run directory per seed."""
    base = tmp_path_factory.mktemp("noniid") / "seeds"
    seeds = ",".join(map(str, NONIID_SEEDS))
    proc = fedmi(
        "run", "noniid-2class", *sets(SMALL_NONIID), "--seeds", seeds, "--out", str(base), "--data-root", mnist_root
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [base / f"noniid-2class-seed={s}" for s in NONIID_SEEDS]


@pytest.fixture(scope="session")
def noniid_run(noniid_runs) -> Path:
    """The first seed's run of :func:`noniid_runs`."""
    return noniid_runs[0]


@pytest.fixture(scope="session")
def random_model_analyst(mnist_root):
    """A seeded random model: which channels discovery keeps depends on the draw, so no floor is 1."""
    rows = load_split("mnist", False, mnist_root, np.arange(900))
    train = load_split("mnist", True, mnist_root, np.arange(1200))
    # Client 0 holds classes 0 and 1, client 1 classes 2 and 3.
    halves = [
        train.subset(torch.nonzero(train.labels < 2).flatten()),
        train.subset(torch.nonzero((train.labels >= 2) & (train.labels < 4)).flatten()),
    ]
    config = ExperimentConfig.from_dict(
        {
            "clients": 2,
            "analysis": {"classes": [0, 1, 2, 3], "floor_client": 0, "min_class_examples": 5},
            "discovery": {"steps": 30, "objective": "paper"},
        }
    )
    analyst = RoundAnalyst(
        config, rows.subset(range(450)), rows.subset(range(450, 900)), client_rows=lambda pid: halves[pid]
    )
    return analyst, build_model(seed=3)
