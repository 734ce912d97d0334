"""Partitioners: sizes, disjointness, class sets, determinism, and errors on bad requests."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from fedmi_flower.science.data import (
    cap_partition,
    classes_per_client_map,
    partition_by_class_map,
    partition_classes_per_client,
    partition_dirichlet,
    partition_iid,
    partition_shared_class,
    shared_class_map,
    split_holdout,
)

LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 100))  # 100 per class, shuffled


def classes_of(parts):
    return [sorted(set(LABELS[p].tolist())) for p in parts]


def assert_disjoint(parts):
    flat = [i for p in parts for i in p]
    assert len(flat) == len(set(flat))


def test_iid_splits_evenly_and_covers_everything():
    parts = partition_iid(LABELS, 3, seed=1)
    assert sorted(len(p) for p in parts) == [333, 333, 334]
    assert_disjoint(parts)
    assert sorted(i for p in parts for i in p) == list(range(1000))
    assert all(p == sorted(p) and all(isinstance(i, int) for i in p) for p in parts)
    assert all(len(c) == 10 for c in classes_of(parts))


@pytest.mark.parametrize(
    "k, expected", [(1, [[0], [1], [2]]), (2, [[0, 1], [2, 3], [4, 5]]), (3, [[0, 1, 2], [3, 4, 5], [6, 7, 8]])]
)
def test_classes_per_client_gives_the_paper_class_sets(k, expected):
    parts = partition_classes_per_client(LABELS, 3, k, seed=0)
    assert classes_of(parts) == expected
    assert [len(p) for p in parts] == [100 * k] * 3  # every example of its classes
    assert_disjoint(parts)


def test_shared_class_gives_the_paper_class_sets_and_splits_the_shared_class():
    parts = partition_shared_class(LABELS, 3, shared=0, k_distinct=2, seed=0)
    assert classes_of(parts) == [[0, 1, 2], [0, 3, 4], [0, 5, 6]]
    assert_disjoint(parts)
    zeros = [int((LABELS[p] == 0).sum()) for p in parts]
    assert sorted(zeros) == [33, 33, 34]
    assert shared_class_map(3, 5, 2, 10) == [[5, 0, 1], [5, 2, 3], [5, 4, 6]]


def test_explicit_class_map():
    parts = partition_by_class_map(LABELS, [[0, 9], [9], [4]], seed=0)
    assert classes_of(parts) == [[0, 9], [9], [4]]
    assert [int((LABELS[p] == 9).sum()) for p in parts[:2]] == [50, 50]
    assert_disjoint(parts)


def test_dirichlet_is_skewed_for_small_alpha_and_respects_min_size():
    parts = partition_dirichlet(LABELS, 4, alpha=0.1, seed=3, min_client_size=20)
    assert_disjoint(parts)
    assert sum(len(p) for p in parts) == 1000
    assert min(len(p) for p in parts) >= 20
    shares = np.array([[int((LABELS[p] == c).sum()) for c in range(10)] for p in parts]) / 100
    assert shares.max(axis=0).mean() > 0.6  # most of a class lands on one client
    flat = partition_dirichlet(LABELS, 4, alpha=1000.0, seed=3)
    flat_shares = np.array([[int((LABELS[p] == c).sum()) for c in range(10)] for p in flat]) / 100
    assert flat_shares.max(axis=0).mean() < 0.4


def test_dirichlet_partitions_are_flwr_datasets_own(mnist_root):
    """data.partition = "dirichlet" gives each client exactly the rows flwr-datasets' DirichletPartitioner gives it."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    from fedmi_flower.config import DataConfig
    from fedmi_flower.science.data import dirichlet_seed, experiment_partitions, load_labels

    labels = load_labels("mnist", True, mnist_root)
    seed, clients, alpha = 4, 5, 0.3
    data = dataclasses.asdict(DataConfig(partition="dirichlet", alpha=alpha, holdout_fraction=0.0, max_per_client=None))
    ours = experiment_partitions(data, clients, seed, mnist_root)
    theirs = DirichletPartitioner(
        num_partitions=clients,
        partition_by="label",
        alpha=alpha,
        min_partition_size=data["min_client_size"],
        seed=dirichlet_seed(seed),
    )
    theirs.dataset = Dataset.from_dict({"label": labels.tolist(), "i": list(range(len(labels)))})
    for pid, part in enumerate(ours):
        assert sorted(part.train) == sorted(theirs.load_partition(pid)["i"])


@pytest.mark.parametrize(
    "make",
    [
        lambda s: partition_iid(LABELS, 5, seed=s),
        lambda s: partition_dirichlet(LABELS, 5, 0.5, seed=s),
        lambda s: partition_shared_class(LABELS, 3, 0, 2, seed=s),
        lambda s: partition_by_class_map(LABELS, [[1, 2], [2, 3]], seed=s),
    ],
)
def test_partitions_are_deterministic_under_a_seed(make):
    assert make(7) == make(7)
    assert make(7) != make(8)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: partition_iid(LABELS, 0), "at least 1"),
        (lambda: partition_classes_per_client(LABELS, 4, 3), "12 classes"),
        (lambda: partition_classes_per_client(LABELS, 3, 0), "at least 1"),
        (lambda: partition_dirichlet(LABELS, 3, alpha=0.0), "alpha must be > 0"),
        (lambda: partition_dirichlet(LABELS, 3, alpha=-1.0), "alpha must be > 0"),
        (lambda: partition_shared_class(LABELS, 5, 0, 2), "only 9 exist"),
        (lambda: partition_by_class_map(LABELS, [[0, 11]]), "classes 0..9"),
        (lambda: partition_by_class_map(LABELS, [[]]), "no classes"),
        (lambda: classes_per_client_map(0, 1, 10), "at least 1"),
    ],
)
def test_invalid_requests_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_cap_and_holdout_are_seeded_subsets():
    idx = list(range(100, 200))
    capped = cap_partition(idx, 30, seed=1, partition_id=0)
    assert len(capped) == 30 and set(capped) <= set(idx) and capped == cap_partition(idx, 30, 1, 0)
    assert cap_partition(idx, None, 1, 0) == idx
    train, held = split_holdout(idx, 0.1, seed=1, partition_id=2)
    assert len(held) == 10 and not set(train) & set(held) and sorted(train + held) == idx
    with pytest.raises(ValueError):
        split_holdout(idx, 1.0, 1, 0)


# --------------------------------------------------------------------------- the partition cache on disk


def _dirichlet(alpha: float = 0.3) -> dict:
    from fedmi_flower.config import DataConfig

    return dataclasses.asdict(DataConfig(partition="dirichlet", alpha=alpha))


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    from fedmi_flower.science import data as data_mod

    monkeypatch.setenv("FEDMI_CACHE_DIR", str(tmp_path / "cache"))
    data_mod._experiment_partitions.cache_clear()
    yield tmp_path / "cache" / "partitions"
    data_mod._experiment_partitions.cache_clear()


def test_a_partition_is_drawn_once_and_read_back_from_disk(cache_dir, monkeypatch, mnist_root):
    from fedmi_flower.science import data as data_mod

    drawn = data_mod.experiment_partitions(_dirichlet(), 5, 7, mnist_root)
    (stored,) = cache_dir.iterdir()
    data_mod._experiment_partitions.cache_clear()

    def no_draw(*args, **kwargs):
        raise AssertionError("the partition was drawn again instead of read from the cache")

    monkeypatch.setattr(data_mod, "make_partitions", no_draw)
    assert data_mod.experiment_partitions(_dirichlet(), 5, 7, mnist_root) == drawn
    assert len({len(p.train) for p in drawn}) > 1  # a real skewed draw, not equal shares
    # Another seed, another alpha or another number of clients is another partition: drawn, not read.
    for args in ((_dirichlet(), 5, 8), (_dirichlet(0.5), 5, 7), (_dirichlet(), 4, 7)):
        with pytest.raises(AssertionError, match="drawn again"):
            data_mod.experiment_partitions(*args, mnist_root)
    assert list(cache_dir.iterdir()) == [stored]


def test_a_damaged_cache_file_is_drawn_again_and_replaced(cache_dir, mnist_root):
    from fedmi_flower.science import data as data_mod

    drawn = data_mod.experiment_partitions(_dirichlet(), 5, 7, mnist_root)
    (stored,) = cache_dir.iterdir()
    for damage in (b"not an npz file", stored.read_bytes()[:100]):
        stored.write_bytes(damage)
        data_mod._experiment_partitions.cache_clear()
        assert data_mod.experiment_partitions(_dirichlet(), 5, 7, mnist_root) == drawn
        assert np.load(stored)["bounds"].shape == (11,)
    # A well-formed file whose rows point outside the dataset is not trusted either.
    np.savez(stored, rows=np.array([0, 70000]), bounds=np.array([0, 1, 2] + [2] * 8))
    data_mod._experiment_partitions.cache_clear()
    assert data_mod.experiment_partitions(_dirichlet(), 5, 7, mnist_root) == drawn


def test_a_process_that_finds_the_cache_does_not_import_the_partitioner(cache_dir, mnist_root):
    from fedmi_flower.science import data as data_mod

    drawn = data_mod.experiment_partitions(_dirichlet(), 5, 7, mnist_root)
    code = (
        "import json, sys\n"
        "from fedmi_flower.science.data import experiment_partitions\n"
        "parts = experiment_partitions(json.loads(sys.argv[1]), 5, 7, sys.argv[2])\n"
        "print(json.dumps([[p.train[:3], len(p.holdout)] for p in parts]), 'datasets' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(_dirichlet()), mnist_root], capture_output=True, text=True, check=True
    ).stdout.rsplit(" ", 1)
    assert json.loads(out[0]) == [[p.train[:3], len(p.holdout)] for p in drawn] and out[1].strip() == "False"


def test_the_cache_can_be_turned_off(tmp_path, monkeypatch, mnist_root):
    from fedmi_flower.science import data as data_mod

    monkeypatch.setenv("FEDMI_CACHE_DIR", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    data_mod._experiment_partitions.cache_clear()
    data_mod.experiment_partitions(_dirichlet(), 5, 7, mnist_root)
    data_mod._experiment_partitions.cache_clear()
    assert list(tmp_path.iterdir()) == []
