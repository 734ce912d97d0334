"""Loading real datasets, and clear errors for missing or corrupt files."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmi_flower.science import data as data_mod
from fedmi_flower.science.data import DatasetError, DatasetSpec, load_labels, load_raw, load_split, resolve_data_root

FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def test_mnist_loads_normalised_tensors(mnist_root):
    test = load_split("mnist", train=False, data_root=mnist_root)
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.float32
    assert (
        test.labels.dtype == torch.int64
        and test.class_counts(10) == np.bincount(load_labels("mnist", False, mnist_root)).tolist()
    )
    assert abs(float(test.images.mean())) < 0.05 and abs(float(test.images.std()) - 1.0) < 0.05
    part = load_split("mnist", train=True, data_root=mnist_root, indices=[0, 5, 59999])
    assert len(part) == 3 and part.labels.tolist() == load_labels("mnist", True, mnist_root)[[0, 5, 59999]].tolist()


@pytest.mark.parametrize("train", [True, False])
def test_the_idx_reader_reads_what_torchvision_reads(mnist_root, train):
    """The loader reads the IDX files itself (importing torchvision costs a second per ClientApp process)."""
    import torchvision

    images, labels = load_raw("mnist", train, mnist_root)
    reference = torchvision.datasets.MNIST(mnist_root, train=train, download=False)
    assert torch.equal(images, reference.data) and torch.equal(labels, reference.targets.to(torch.int64))


def test_the_client_path_does_not_import_torchvision_or_the_server():
    """A deployment starts a ClientApp process per message: what it imports is paid every round."""
    code = (
        "import sys, fedmi_flower.apps.client_app; "
        "print(sorted(m for m in ('torchvision', 'scipy', 'fedmi_flower.strategies', 'datasets', 'matplotlib') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_data_root_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDMI_DATA_ROOT", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root() == tmp_path / "env"
    monkeypatch.delenv("FEDMI_DATA_ROOT")
    assert resolve_data_root() == Path("data")


def test_missing_dataset_names_where_it_looked(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_raw("mnist", True, str(tmp_path))
    message = str(err.value)
    assert (
        str(tmp_path / "MNIST" / "raw") in message
        and "FEDMI_DATA_ROOT" in message
        and "train-images-idx3-ubyte" in message
    )
    assert list(tmp_path.iterdir()) == []  # the failed lookup created nothing (torchvision's download makes MNIST/raw)
    with pytest.raises(DatasetError):
        load_raw("mnist", True, str(tmp_path / "absent"))
    assert not (tmp_path / "absent").exists()


def _copy_mnist(src_root: str, dst: Path) -> Path:
    raw = dst / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (Path(src_root) / "MNIST" / "raw").glob("*-ubyte"):
        shutil.copy(f, raw / f.name)
    return raw


def test_truncated_file_is_reported_by_name(mnist_root, tmp_path):
    raw = _copy_mnist(mnist_root, tmp_path)
    victim = raw / "t10k-images-idx3-ubyte"
    victim.write_bytes(victim.read_bytes()[:5000])
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte is corrupt or truncated"):
        load_raw("mnist", False, str(tmp_path))


def test_wrong_file_kind_is_reported(mnist_root, tmp_path):
    raw = _copy_mnist(mnist_root, tmp_path)
    shutil.copy(raw / "t10k-labels-idx1-ubyte", raw / "t10k-images-idx3-ubyte")
    with pytest.raises(DatasetError, match="not an IDX file of the expected kind"):
        load_raw("mnist", False, str(tmp_path))


def _write_idx_gz(path: Path, array: np.ndarray) -> None:
    magic = 0x00000800 | array.ndim
    with gzip.open(path, "wb") as fh:
        fh.write(struct.pack(f">I{array.ndim}I", magic, *array.shape))
        fh.write(array.astype(np.uint8).tobytes())


def test_distribution_package_gzip_files_are_staged(monkeypatch, tmp_path):
    system = tmp_path / "system"
    system.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 50), ("t10k", 20)):
        _write_idx_gz(system / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx_gz(system / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    spec = data_mod.DATASETS["fashion-mnist"]
    monkeypatch.setitem(
        data_mod.DATASETS,
        "fashion-mnist",
        DatasetSpec(spec.torchvision_class, spec.folder, spec.mean, spec.std, system_dirs=(str(system),)),
    )
    images, labels = load_raw("fashion-mnist", False, str(tmp_path / "root"))
    assert images.shape == (20, 28, 28) and labels.shape == (20,)
    assert (tmp_path / "root" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()


REQUIRE_SYSTEM_DATASETS = "FEDMI_REQUIRE_SYSTEM_DATASETS"
"""Set to 1 (as .ci/run does) to make a missing system dataset fail its test instead of skipping it."""


def test_real_fashion_mnist_from_the_debian_package(tmp_path):
    if not (FASHION_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        install = "apt-get install dataset-fashion-mnist"
        if os.environ.get(REQUIRE_SYSTEM_DATASETS) == "1":
            pytest.fail(
                f"{REQUIRE_SYSTEM_DATASETS}=1 but Debian's dataset-fashion-mnist is not installed; run `{install}`"
            )
        pytest.skip(
            f"Debian's dataset-fashion-mnist is not installed (`{install}` as root); "
            ".ci/run installs it and runs this test"
        )
    split = load_split("fashion-mnist", train=False, data_root=tmp_path)
    assert split.images.shape == (10000, 1, 28, 28) and split.class_counts(10) == [1000] * 10
