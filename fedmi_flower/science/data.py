"""Datasets as in-memory tensors, and the partitioners that split them among clients.

Each split is read once per process from torchvision's layout (``<root>/MNIST/raw``, the
uncompressed IDX files) and kept as a uint8 tensor; a client or the server takes the
rows it needs as normalised float32 and batches by index. No per-sample PIL transform
runs in any training loop. torchvision is imported only to download a missing dataset:
importing it costs about a second (it imports ``torch._dynamo``), and Flower's SuperNode
starts a new ClientApp process for every message, which would pay it every round.

Partitioners return plain lists of sorted indices, one list per client, and depend
only on the labels, their parameters and a seed.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import hashlib
import itertools
import json
import os
import pickle
import shutil
import struct
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmi_flower.science.catalog import DATASETS, DatasetSpec
from fedmi_flower.science.seeding import derive_seed, numpy_rng

DATA_ROOT_ENV = "FEDMI_DATA_ROOT"

_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801


class DatasetError(RuntimeError):
    """A dataset could not be found or read; the message says where and how to fix it."""


_IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class ImageSplit:
    """Normalised images and their labels, kept together.

    Attributes
    ----------
    images : torch.Tensor
        float32, shape (N, C, H, W), normalised with the dataset's mean and std.
    labels : torch.Tensor
        int64, shape (N,).
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: Sequence[int] | torch.Tensor | np.ndarray) -> ImageSplit:
        """Return the rows at ``indices`` (a copy)."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=self.labels.device)
        return ImageSplit(self.images[idx], self.labels[idx])

    def of_class(self, cls: int) -> ImageSplit:
        """Return the rows labelled ``cls``."""
        return self.subset(torch.nonzero(self.labels == cls).flatten())

    def first_per_class(self, n: int) -> ImageSplit:
        """The first ``n`` rows of every class, in their order (for rows that are already a seeded random draw)."""
        labels = self.labels.cpu()
        keep = [i for cls in torch.unique(labels).tolist() for i in torch.nonzero(labels == cls).flatten()[:n].tolist()]
        return self.subset(sorted(keep))

    def to(self, device: torch.device | str) -> ImageSplit:
        """Return the split on ``device`` (itself when already there)."""
        return ImageSplit(self.images.to(device), self.labels.to(device))

    def class_counts(self, num_classes: int) -> list[int]:
        """Return the number of examples of each of ``num_classes`` classes."""
        return torch.bincount(self.labels.cpu(), minlength=num_classes).tolist()


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """Return the data root: the argument, else ``$FEDMI_DATA_ROOT``, else ``./data``."""
    if data_root:
        return Path(data_root).expanduser()
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser()
    return Path("data")


def dataset_spec(name: str) -> DatasetSpec:
    """Return the spec of a dataset by name, or raise a clear ``ValueError``."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}") from None


def _check_idx_file(path: Path, magic: int, dims: int) -> tuple[int, ...]:
    """Check an IDX file's header against its size; return the shape it announces.

    A bad header or a truncated body is reported here, naming the broken file, before
    :func:`_read_idx` maps it.
    """
    fix = (
        f"delete {path} and provide the dataset again (a complete copy of the original file, "
        "or let torchvision download it on a machine with internet access)"
    )
    size = path.stat().st_size
    with path.open("rb") as fh:
        header = fh.read(4 + 4 * dims)
    if len(header) < 4 + 4 * dims:
        raise DatasetError(f"dataset file {path} is truncated ({size} bytes, not even a header); {fix}")
    found_magic, *shape = struct.unpack(f">I{dims}I", header)
    if found_magic != magic:
        raise DatasetError(
            f"dataset file {path} is not an IDX file of the expected kind (magic "
            f"{found_magic:#010x}, expected {magic:#010x}); {fix}"
        )
    expected = 4 + 4 * dims + int(np.prod(shape))
    if size != expected:
        raise DatasetError(
            f"dataset file {path} is corrupt or truncated: {size} bytes, its header announces {expected}; {fix}"
        )
    return tuple(int(n) for n in shape)


def _stage_system_copy(spec: DatasetSpec, raw_dir: Path) -> bool:
    """Decompress the gzip files of a distribution package into torchvision's layout.

    Returns True when every file was staged. Debian's ``dataset-fashion-mnist`` ships
    the original gzip files; torchvision's class reads only the decompressed ones.
    """
    names = _IDX_FILES[True] + _IDX_FILES[False]
    for system_dir in spec.system_dirs:
        sources = [Path(system_dir) / f"{n}.gz" for n in names]
        if not all(s.is_file() for s in sources):
            continue
        try:
            raw_dir.mkdir(parents=True, exist_ok=True)
            for src, name in zip(sources, names):
                dst = raw_dir / name
                if dst.exists():
                    continue
                tmp = dst.with_suffix(".partial")
                with gzip.open(src, "rb") as fin, tmp.open("wb") as fout:
                    shutil.copyfileobj(fin, fout)
                tmp.replace(dst)
        except (OSError, EOFError, gzip.BadGzipFile) as err:
            raise DatasetError(
                f"found {spec.folder} in {system_dir} but could not unpack it into {raw_dir}: {err}; "
                "make the data root writable (--data-root or $FEDMI_DATA_ROOT) or reinstall the package"
            ) from err
        return True
    return False


def _read_idx(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """The uint8 body of an IDX file that :func:`_check_idx_file` passed, as a tensor of ``shape``."""
    body = np.fromfile(path, dtype=np.uint8, offset=4 + 4 * len(shape))
    return torch.from_numpy(body.reshape(shape))


def _download(spec: DatasetSpec, root: Path, train: bool) -> None:
    import torchvision  # deferred: see the module docstring

    getattr(torchvision.datasets, spec.torchvision_class)(str(root), train=train, download=True)


@lru_cache(maxsize=8)
def load_raw(name: str, train: bool, data_root: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split as (uint8 images (N, H, W), int64 labels); cached per process.

    Looks in ``data_root/<Folder>/raw`` (torchvision's layout), then in the folders of
    a distribution package (Fashion-MNIST from Debian's ``dataset-fashion-mnist``),
    then tries torchvision's download. Raises :class:`DatasetError` naming every place
    it looked and how to provide the files.
    """
    spec = dataset_spec(name)
    root = Path(data_root)
    if spec.reader == "cifar":
        return _load_cifar(spec, root, train)
    raw_dir = root / spec.folder / "raw"
    image_file, label_file = (raw_dir / n for n in _IDX_FILES[train])

    if not (image_file.is_file() and label_file.is_file()):
        if not _stage_system_copy(spec, raw_dir):
            missing = [d for d in (raw_dir, raw_dir.parent, root) if not d.exists()]  # deepest first
            try:
                _download(spec, root, train)
            except Exception as err:  # offline: URLError, RuntimeError, OSError...
                for folder in missing:  # a failed lookup leaves nothing behind (the download made these)
                    with contextlib.suppress(OSError):
                        folder.rmdir()  # only when still empty
                looked = [str(raw_dir)] + list(spec.system_dirs)
                lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
                reason = next(
                    (ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else type(err).__name__
                )
                raise DatasetError(
                    f"{spec.folder} ({'train' if train else 'test'} split) not found; looked in "
                    f"{', '.join(looked)} and torchvision's download failed ({reason}). "
                    f"Put {image_file.name} and {label_file.name} (uncompressed IDX files) in {raw_dir}, "
                    f"or point --data-root / ${DATA_ROOT_ENV} at a folder that holds {spec.folder}/raw/"
                ) from err

    image_shape = _check_idx_file(image_file, _IDX_IMAGES_MAGIC, 3)
    label_shape = _check_idx_file(label_file, _IDX_LABELS_MAGIC, 1)
    n_images, n_labels = image_shape[0], label_shape[0]
    if n_images != n_labels:
        raise DatasetError(
            f"{image_file} holds {n_images} images but {label_file} holds {n_labels} labels; provide a matching pair"
        )
    images, labels = _read_idx(image_file, image_shape), _read_idx(label_file, label_shape).to(torch.int64)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes):
        raise DatasetError(
            f"{label_file} holds labels outside 0..{spec.num_classes - 1}; the file is corrupt, provide it again"
        )
    return images, labels


# Only these globals may appear in a CIFAR batch: the pieces numpy pickles an array with, and the
# codec Python 3's protocol 2 rebuilds a bytes object with (latin-1 text to bytes; it runs nothing else).
_CIFAR_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
CIFAR_FILES = {True: tuple(f"data_batch_{k}" for k in range(1, 6)), False: ("test_batch",)}


class _Refused(pickle.UnpicklingError):
    """A pickle named a global outside the CIFAR format's."""


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, bytes, strings, numbers and numpy arrays, and nothing else.

    CIFAR-10's python batches are pickles; ``pickle.load`` would run whatever callable a
    corrupt or malicious file names. Here any global outside :data:`_CIFAR_GLOBALS`
    raises instead of being imported.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_GLOBALS:
            raise _Refused(f"refers to {module}.{name}")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own array reconstructor, wherever it lives
        if module == "_codecs":
            return codecs.encode
        return getattr(np, name)


def load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file as (uint8 images (N, 3, 32, 32), int64 labels), read without running code.

    Raises
    ------
    DatasetError
        When the file is missing, is not a pickle of the batch format, or refers to
        anything but the types of the format (one line naming the file and the fix).
    """
    fix = f"delete {path} and provide the dataset again (torchvision's CIFAR10 download writes this layout)"
    try:
        with path.open("rb") as fh:
            batch = _CifarUnpickler(fh, encoding="bytes").load()
    except _Refused as err:
        raise DatasetError(f"refused {path}: the pickle {err}, which a CIFAR-10 batch never does; {fix}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        OverflowError,
    ) as err:
        raise DatasetError(f"{path} is not a readable CIFAR-10 batch ({type(err).__name__}: {err}); {fix}") from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{path} holds a {type(batch).__name__}, not a CIFAR-10 batch dict; {fix}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path} has no uint8 'data' array of shape (N, 3072); {fix}")
    if not isinstance(labels, list) or len(labels) != data.shape[0] or not all(isinstance(v, int) for v in labels):
        raise DatasetError(f"{path} has no list of {data.shape[0]} integer 'labels'; {fix}")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _load_cifar(spec: DatasetSpec, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    folder = root / spec.folder
    files = [folder / name for name in CIFAR_FILES[train]]
    if not all(f.is_file() for f in files):
        try:
            _download(spec, root, train)
        except Exception as err:  # offline
            missing = [f.name for f in files if not f.is_file()]
            raise DatasetError(
                f"CIFAR-10 ({'train' if train else 'test'} split) not found: {folder} lacks {', '.join(missing)}, "
                f"and torchvision's download failed ({type(err).__name__}). Put torchvision's "
                f"cifar-10-batches-py folder under --data-root / ${DATA_ROOT_ENV}"
            ) from err
    parts = [load_cifar_batch(f) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DatasetError(f"{folder} holds labels outside 0..{spec.num_classes - 1}; provide the dataset again")
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)


def load_labels(name: str, train: bool = True, data_root: str | os.PathLike | None = None) -> np.ndarray:
    """Return the labels of a split as an int64 numpy array (what partitioners take)."""
    return load_raw(name, train, str(resolve_data_root(data_root)))[1].numpy()


def load_split(
    name: str,
    train: bool = True,
    data_root: str | os.PathLike | None = None,
    indices: Sequence[int] | np.ndarray | None = None,
) -> ImageSplit:
    """Return a split (or the rows ``indices`` of it) as normalised float32 tensors.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS` (``"mnist"``, ``"fashion-mnist"``).
    train : bool
        The training split if True, else the test split.
    data_root : path, optional
        See :func:`resolve_data_root`.
    indices : sequence of int, optional
        Rows to take; all rows when omitted.
    """
    spec = dataset_spec(name)
    images, labels = load_raw(name, train, str(resolve_data_root(data_root)))
    if indices is not None:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= labels.shape[0]):
            raise IndexError(f"indices out of range for {name} ({labels.shape[0]} rows)")
        images, labels = images[idx], labels[idx]
    x = images.to(torch.float32).div_(255.0)
    x = x.unsqueeze(1) if x.dim() == 3 else x  # IDX files hold (N, H, W); CIFAR's reader gives (N, C, H, W)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return ImageSplit(((x - mean) / std).contiguous(), labels.clone())


# --------------------------------------------------------------------------- partitioners


def _num_classes(labels: np.ndarray, num_classes: int | None) -> int:
    return int(num_classes) if num_classes is not None else int(labels.max()) + 1


def _check_clients(num_clients: int) -> None:
    if int(num_clients) < 1:
        raise ValueError(f"num_clients must be at least 1, got {num_clients}")


def _split_evenly(indices: np.ndarray, parts: int, rng: np.random.Generator) -> list[np.ndarray]:
    return np.array_split(rng.permutation(indices), parts)


def _as_lists(parts: Sequence[np.ndarray]) -> list[list[int]]:
    return [np.sort(np.asarray(p, dtype=np.int64)).tolist() for p in parts]


def partition_iid(labels: np.ndarray, num_clients: int, seed: int = 0) -> list[list[int]]:
    """Shuffle all examples and split them evenly (sizes differ by at most one)."""
    _check_clients(num_clients)
    labels = np.asarray(labels)
    if len(labels) < num_clients:
        raise ValueError(f"cannot split {len(labels)} examples among {num_clients} clients")
    rng = numpy_rng(seed, "partition-iid")
    return _as_lists(_split_evenly(np.arange(len(labels)), num_clients, rng))


def partition_dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    seed: int = 0,
    min_client_size: int = 10,
    num_classes: int | None = None,
) -> list[list[int]]:
    """Split each class among clients with proportions drawn from Dirichlet(alpha) (label skew).

    Drawn by flwr-datasets' ``DirichletPartitioner`` (Yurochkin et al. 2019; the
    definition Flower's baselines use, so that a partition here is one a Flower user
    can reproduce), run offline on an in-memory ``datasets.Dataset`` of the labels,
    with a seed derived from ``seed``; without self-balancing. Small ``alpha`` gives
    strong label skew, large ``alpha`` approaches IID. The partitioner redraws until
    every client holds at least ``min_client_size`` examples. ``num_classes`` is
    accepted for symmetry with the other partitioners: the classes are those present.
    """
    _check_clients(num_clients)
    if not alpha > 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    labels = np.asarray(labels)
    if min_client_size * num_clients > len(labels):
        raise ValueError(
            f"min_client_size {min_client_size} x {num_clients} clients exceeds the {len(labels)} examples"
        )
    # Imported here: datasets brings pandas and pyarrow (about 2 s), which only this partitioner needs.
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    partitioner = DirichletPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        alpha=float(alpha),
        min_partition_size=min_client_size,
        self_balancing=False,
        shuffle=True,
        seed=dirichlet_seed(seed),
    )
    partitioner.dataset = Dataset.from_dict({"label": labels.tolist(), "row": np.arange(len(labels)).tolist()})
    try:
        return [list(partitioner.load_partition(i)["row"]) for i in range(num_clients)]
    except ValueError as err:  # flwr-datasets gives up after its own number of draws
        raise ValueError(
            f"no Dirichlet(alpha={alpha}) draw gave every one of {num_clients} clients >= {min_client_size} "
            f"examples ({err}); raise alpha or lower min_client_size"
        ) from None


def dirichlet_seed(seed: int) -> int:
    """The seed :func:`partition_dirichlet` gives flwr-datasets for a run's ``seed`` (numpy takes 32 bits)."""
    return derive_seed(seed, "partition-dirichlet") % 2**32


def partition_by_class_map(
    labels: np.ndarray, class_map: Sequence[Sequence[int]], seed: int = 0, num_classes: int | None = None
) -> list[list[int]]:
    """Give client i the classes ``class_map[i]``.

    A class held by several clients is split evenly at random among them (disjoint
    shares); a class held by one client goes to it whole.
    """
    labels = np.asarray(labels)
    n_classes = _num_classes(labels, num_classes)
    _check_clients(len(class_map))
    holders: dict[int, list[int]] = {}
    for client, classes in enumerate(class_map):
        if len(classes) == 0:
            raise ValueError(f"client {client} has no classes in the class map")
        if len(set(classes)) != len(classes):
            raise ValueError(f"client {client} lists a class twice: {list(classes)}")
        for cls in classes:
            if not 0 <= int(cls) < n_classes:
                raise ValueError(
                    f"client {client} asks for class {cls}, but the dataset has classes 0..{n_classes - 1}"
                )
            holders.setdefault(int(cls), []).append(client)
    rng = numpy_rng(seed, "partition-class-map")
    parts: list[list[np.ndarray]] = [[] for _ in class_map]
    for cls in sorted(holders):
        idx = np.flatnonzero(labels == cls)
        if len(idx) < len(holders[cls]):
            raise ValueError(f"class {cls} has {len(idx)} examples, too few for {len(holders[cls])} clients")
        for client, share in zip(holders[cls], _split_evenly(idx, len(holders[cls]), rng)):
            parts[client].append(share)
    return _as_lists([np.concatenate(p) for p in parts])


def classes_per_client_map(num_clients: int, k: int, num_classes: int) -> list[list[int]]:
    """Return the disjoint class map where client i holds classes i*k .. i*k+k-1."""
    _check_clients(num_clients)
    if k < 1:
        raise ValueError(f"classes per client must be at least 1, got {k}")
    if num_clients * k > num_classes:
        raise ValueError(
            f"{num_clients} clients x {k} disjoint classes = {num_clients * k} classes, "
            f"but the dataset has {num_classes}"
        )
    return [list(range(i * k, i * k + k)) for i in range(num_clients)]


def shared_class_map(num_clients: int, shared: int, k_distinct: int, num_classes: int) -> list[list[int]]:
    """Return the map where every client holds ``shared`` plus ``k_distinct`` classes of its own.

    Distinct classes are handed out in order, skipping the shared one: with shared 0 and
    two distinct classes, clients get {0,1,2}, {0,3,4}, {0,5,6} (paper section 3.2.2).
    """
    _check_clients(num_clients)
    if not 0 <= shared < num_classes:
        raise ValueError(f"shared class {shared} is not one of 0..{num_classes - 1}")
    if k_distinct < 0:
        raise ValueError(f"distinct classes per client must be >= 0, got {k_distinct}")
    others = [c for c in range(num_classes) if c != shared]
    if num_clients * k_distinct > len(others):
        raise ValueError(
            f"{num_clients} clients x {k_distinct} distinct classes need {num_clients * k_distinct} classes "
            f"besides {shared}, but only {len(others)} exist"
        )
    return [[shared] + others[i * k_distinct : (i + 1) * k_distinct] for i in range(num_clients)]


def partition_classes_per_client(
    labels: np.ndarray, num_clients: int, k: int, seed: int = 0, num_classes: int | None = None
) -> list[list[int]]:
    """Pathological label skew: client i holds all examples of classes i*k .. i*k+k-1."""
    n_classes = _num_classes(labels, num_classes)
    return partition_by_class_map(labels, classes_per_client_map(num_clients, k, n_classes), seed, n_classes)


def partition_shared_class(
    labels: np.ndarray, num_clients: int, shared: int, k_distinct: int, seed: int = 0, num_classes: int | None = None
) -> list[list[int]]:
    """Every client holds a share of ``shared`` plus ``k_distinct`` classes of its own."""
    n_classes = _num_classes(labels, num_classes)
    return partition_by_class_map(labels, shared_class_map(num_clients, shared, k_distinct, n_classes), seed, n_classes)


def cap_partition(indices: Sequence[int], max_size: int | None, seed: int, partition_id: int) -> list[int]:
    """Keep a seeded random subset of at most ``max_size`` indices (all when None)."""
    if max_size is None or len(indices) <= max_size:
        return list(indices)
    rng = numpy_rng(seed, "partition-cap", partition_id)
    return np.sort(rng.choice(np.asarray(indices, dtype=np.int64), size=max_size, replace=False)).tolist()


def split_holdout(indices: Sequence[int], fraction: float, seed: int, partition_id: int) -> tuple[list[int], list[int]]:
    """Split a client's indices into (train, held-out) with ``fraction`` held out."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    idx = numpy_rng(seed, "holdout", partition_id).permutation(np.asarray(indices, dtype=np.int64))
    n_out = int(round(fraction * len(idx)))
    return np.sort(idx[n_out:]).tolist(), np.sort(idx[:n_out]).tolist()


# --------------------------------------------------------------------------- experiment splits


@dataclass(frozen=True)
class ClientPartition:
    """One client's training rows and held-out rows (indices into the training split)."""

    train: list[int]
    holdout: list[int]


def make_partitions(
    labels: np.ndarray,
    scheme: str,
    num_clients: int,
    seed: int,
    *,
    alpha: float = 0.5,
    min_client_size: int = 10,
    classes_per_client: int = 2,
    shared_class: int = 0,
    distinct_per_client: int = 2,
    class_map: Sequence[Sequence[int]] | None = None,
    max_per_client: int | None = None,
    holdout_fraction: float = 0.1,
    num_classes: int | None = None,
) -> list[ClientPartition]:
    """Partition the training labels with ``scheme``, cap each client, split off its held-out rows.

    ``scheme`` is one of ``iid``, ``dirichlet``, ``classes-per-client``, ``shared-class``,
    ``class-map``; the keyword arguments are those of the matching partitioner.
    """
    if scheme == "iid":
        parts = partition_iid(labels, num_clients, seed)
    elif scheme == "dirichlet":
        parts = partition_dirichlet(labels, num_clients, alpha, seed, min_client_size, num_classes)
    elif scheme == "classes-per-client":
        parts = partition_classes_per_client(labels, num_clients, classes_per_client, seed, num_classes)
    elif scheme == "shared-class":
        parts = partition_shared_class(labels, num_clients, shared_class, distinct_per_client, seed, num_classes)
    elif scheme == "class-map":
        if class_map is None or len(class_map) != num_clients:
            raise ValueError(f"a class map with one entry per client ({num_clients}) is needed")
        parts = partition_by_class_map(labels, class_map, seed, num_classes)
    else:
        raise ValueError(f"unknown partition scheme {scheme!r}")
    out = []
    for pid, part in enumerate(parts):
        capped = cap_partition(part, max_per_client, seed, pid)
        train, holdout = split_holdout(capped, holdout_fraction, seed, pid)
        if not train:
            raise ValueError(
                f"client {pid} has no training examples left after the held-out split; lower holdout_fraction"
            )
        out.append(ClientPartition(train, holdout))
    return out


def server_splits(
    test_labels: np.ndarray, probe_fraction: float, seed: int, eval_per_class: int | None = None
) -> tuple[list[int], list[int]]:
    """Split the test set into the server's probe rows (global discovery) and evaluation rows.

    The evaluation rows are capped at ``eval_per_class`` per class (seeded) when given.
    """
    if not 0.0 < probe_fraction < 1.0:
        raise ValueError(f"probe fraction must be in (0, 1), got {probe_fraction}")
    test_labels = np.asarray(test_labels)
    order = numpy_rng(seed, "server-split").permutation(len(test_labels))
    n_probe = int(round(probe_fraction * len(order)))
    probe, evaluation = order[:n_probe], order[n_probe:]
    if eval_per_class is not None:
        evaluation = np.concatenate(
            [evaluation[test_labels[evaluation] == c][:eval_per_class] for c in np.unique(test_labels)]
        )
    return np.sort(probe).tolist(), np.sort(evaluation).tolist()


def reference_split(
    dataset: str,
    data_root: str | os.PathLike | None,
    *,
    probe_fraction: float,
    eval_per_class: int | None,
    seed: int,
    size: int,
) -> ImageSplit:
    """The faithful objective's reference images: ``size`` of the server's probe rows, seeded.

    A client that holds one class has no other images to show its circuits; these stand
    in (discovery never uses their labels: the model's own outputs are the targets; a
    one-class client's scoring does, to count specificity on other classes' images). They are
    never the server's evaluation rows, and every client derives the same ones from the
    run's seed, so nothing needs to be shipped.
    """
    probe, _ = server_splits(load_labels(dataset, False, data_root), probe_fraction, seed, eval_per_class)
    rows = numpy_rng(seed, "reference").choice(np.asarray(probe), size=min(size, len(probe)), replace=False)
    return load_split(dataset, False, data_root, sorted(int(r) for r in rows))


def experiment_partitions(
    data: Mapping[str, Any], clients: int, seed: int, data_root: str | os.PathLike | None = None
) -> list[ClientPartition]:
    """Every client's rows for an experiment's data settings (cached per process).

    ``data`` holds the experiment's ``[data]`` settings as plain values (the fields of
    ``fedmi_flower.config.DataConfig``). Deterministic from the settings and the seed, so
    that the server and each client compute the same partition independently.
    """
    key = json.dumps(dict(data), sort_keys=True)
    return _experiment_partitions(key, clients, seed, str(resolve_data_root(data_root)))


@lru_cache(maxsize=4)
def _experiment_partitions(data_json: str, clients: int, seed: int, data_root: str) -> list[ClientPartition]:
    d = json.loads(data_json)
    labels = load_labels(d["dataset"], True, data_root)
    cache = partition_cache_file(data_json, clients, seed, labels)
    if cache is not None and (parts := _read_partitions(cache, clients, len(labels))) is not None:
        return parts
    parts = make_partitions(
        labels,
        d["partition"],
        clients,
        seed,
        alpha=d["alpha"],
        min_client_size=d["min_client_size"],
        classes_per_client=d["classes_per_client"],
        shared_class=d["shared_class"],
        distinct_per_client=d["distinct_per_client"],
        class_map=d["class_map"],
        max_per_client=d["max_per_client"],
        holdout_fraction=d["holdout_fraction"],
        num_classes=dataset_spec(d["dataset"]).num_classes,
    )
    if cache is not None:
        _write_partitions(cache, parts)
    return parts


# --------------------------------------------------------------------------- partition cache
#
# On Flower's deployment runtime every message starts a new ClientApp process, which must
# find its partition again: a Dirichlet draw imports flwr-datasets and Hugging Face
# datasets (about 2 s) before it draws. The partitions are therefore kept on disk, keyed
# by everything they depend on, and a process that finds them reads a small file instead.

CACHE_ENV = "FEDMI_CACHE_DIR"
"""Folder for the partition cache; default ``$XDG_CACHE_HOME/fedmi-flower`` (``~/.cache/fedmi-flower``)."""


def cache_root() -> Path | None:
    """Where fedmi keeps what it can recompute: ``$FEDMI_CACHE_DIR``, else the user's cache folder; None if ``off``."""
    env = os.environ.get(CACHE_ENV, "")
    if env.lower() == "off":
        return None
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedmi-flower"


def partition_cache_file(data_json: str, clients: int, seed: int, labels: np.ndarray) -> Path | None:
    """The cache file of one partition: named by a digest of its inputs and of the code that draws it.

    The inputs are the data settings, the number of clients, the seed and the labels
    themselves; the code is this module, the seeding module and the installed versions
    of numpy, flwr-datasets and datasets. A change to any of them names another file.
    None when ``$FEDMI_CACHE_DIR`` is ``off``.
    """
    root = cache_root()
    if root is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    from fedmi_flower.science import seeding

    digest = hashlib.sha256()
    for part in (data_json, str(clients), str(seed)):
        digest.update(part.encode() + b"\0")
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    for source in (__file__, seeding.__file__):
        digest.update(Path(source).read_bytes())
    for package in ("numpy", "flwr-datasets", "datasets"):
        try:
            digest.update(version(package).encode())
        except PackageNotFoundError:
            digest.update(b"-")
    return root / "partitions" / f"{digest.hexdigest()[:32]}.npz"


def _read_partitions(path: Path, clients: int, rows: int) -> list[ClientPartition] | None:
    """The cached partition, or None when the file is missing or does not hold ``clients`` valid partitions."""
    try:
        with np.load(path) as stored:
            flat, bounds = stored["rows"], stored["bounds"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    if (
        bounds.shape != (2 * clients + 1,)
        or bounds[-1] != len(flat)
        or (len(flat) and not 0 <= flat.min() <= flat.max() < rows)
    ):
        return None
    lists = [flat[lo:hi].tolist() for lo, hi in itertools.pairwise(bounds)]
    return [ClientPartition(lists[2 * i], lists[2 * i + 1]) for i in range(clients)]


def _write_partitions(path: Path, parts: Sequence[ClientPartition]) -> None:
    """Write the cache file atomically; a cache folder that cannot be written only costs the next process time."""
    lists = [rows for p in parts for rows in (p.train, p.holdout)]
    bounds = np.cumsum([0, *map(len, lists)])
    flat = np.concatenate([np.asarray(rows, dtype=np.int64) for rows in lists]) if lists else np.zeros(0, np.int64)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.partial.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, rows=flat, bounds=bounds)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
