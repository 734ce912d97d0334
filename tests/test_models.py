"""Any model, any dataset (issue 25): the circuit interface, the shipped models, a researcher's own, CIFAR-10.

Answers are planted: a network with its channels permuted in a known way computes the
same function, and weight matching must find the permutation (residual ties included);
the fast paths of a model must give exactly what the hooks give; a CIFAR-10 folder
written here in torchvision's layout must load, and a batch file that would run code
must be refused; the docs' own example model must run a federated round by import path.
"""

from __future__ import annotations

import ast
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from runs import REPO, flat_summary, rounds_json, sets

from fedmi_flower.config import ConfigError, ExperimentConfig, make_model
from fedmi_flower.science.alignment import identity, inverse, layout_of, match_weights, permute, site_permutation
from fedmi_flower.science.catalog import MODEL_NAMES
from fedmi_flower.science.circuits import circuit_only_logits, circuit_size, evaluate_circuits
from fedmi_flower.science.data import DatasetError, ImageSplit, load_cifar_batch, load_split
from fedmi_flower.science.discovery import discover_circuits
from fedmi_flower.science.hook_points import HookPoint, captured, gated, head, hook_points, site_sizes, stem
from fedmi_flower.science.model import get_weights, set_weights
from fedmi_flower.science.models import ModelError, build_model, check_model

SHAPES = {"mnist": (1, 28), "cifar10": (3, 32)}
MNIST = {"in_channels": 1, "image_size": 28, "num_classes": 10}


def random_batch(channels: int, size: int, n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def with_random_norms(model: nn.Module, seed: int) -> nn.Module:
    """BatchNorm's scale, shift and running statistics drawn at random: channels no longer alike."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


# ---------------------------------------------------------------------- the interface


@pytest.mark.parametrize("dataset", sorted(SHAPES))
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_shipped_model_speaks_the_interface_on_every_image_shape(name, dataset):
    channels, size = SHAPES[dataset]
    model = build_model(name, in_channels=channels, image_size=size, num_classes=7, seed=1).eval()
    sizes = site_sizes(model)
    assert sizes and all(w > 0 for w in sizes.values())
    x = random_batch(channels, size)
    logits = model(x)
    assert logits.shape == (6, 7)
    # The fast path (stem, head) gives the forward pass's logits, gated or not, with or without a fill.
    torch.testing.assert_close(head(model, stem(model, x)), logits)
    gates = {
        site: (torch.rand(w, generator=torch.Generator().manual_seed(3)) > 0.5).float() for site, w in sizes.items()
    }
    fill = {site: torch.rand(w) for site, w in sizes.items()}
    with gated(model, gates, fill):
        through_hooks = model(x)
    torch.testing.assert_close(head(model, stem(model, x), gates, fill), through_hooks)
    assert not any(p._forward_hooks for p in hook_points(model).values())  # the hooks are gone after the block
    # Weights round-trip, and a BatchNorm's batch counter is not one of them.
    weights = get_weights(model)
    assert all(np.issubdtype(w.dtype, np.floating) for w in weights)
    other = build_model(name, in_channels=channels, image_size=size, num_classes=7, seed=2).eval()
    set_weights(other, weights)
    torch.testing.assert_close(other(x), logits)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gating_a_site_to_zero_equals_removing_its_channels(name):
    model = build_model(name, **MNIST, seed=4).eval()
    sizes = site_sizes(model)
    x = random_batch(1, 28)
    circuit = {site: list(range(0, w, 3)) for site, w in sizes.items()}
    keep = {site: torch.zeros(w).index_fill_(0, torch.tensor(circuit[site]), 1.0) for site, w in sizes.items()}
    with torch.no_grad():
        h = stem(model, x)
        torch.testing.assert_close(circuit_only_logits(model, h, circuit), head(model, h, keep), rtol=1e-4, atol=1e-4)
        with gated(model, keep), captured(model) as seen:  # hooks run in the order they were registered
            model(x)
    for site, act in seen.items():  # every closed channel outputs exactly zero
        closed = torch.ones(sizes[site], dtype=torch.bool)
        closed[circuit[site]] = False
        assert act.transpose(0, 1)[closed].abs().max() == 0


def test_hooks_are_removed_when_the_block_raises():
    model = build_model("mlp", **MNIST, seed=0)
    with pytest.raises(RuntimeError), gated(model, {"fc1": torch.zeros(256)}):
        raise RuntimeError("boom")
    assert not any(p._forward_hooks for p in hook_points(model).values())
    with pytest.raises(KeyError, match="no circuit site named"), gated(model, {"conv9": torch.zeros(3)}):
        pass


@pytest.mark.parametrize("name", ["resnet10", "mlp", "plain-cnn"])
def test_discovery_and_scoring_run_on_every_model_and_name_its_sites(name):
    model = build_model(name, **MNIST, seed=5).eval()
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    data = ImageSplit(torch.randn(60, 1, 28, 28, generator=g) + labels.view(-1, 1, 1, 1).float(), labels)
    circuits = discover_circuits(model, data, [0, 1], steps=8, objective="faithful", seed=2)
    assert set(circuits) == {0, 1}
    assert all(set(c) == set(site_sizes(model)) for c in circuits.values())
    scores = evaluate_circuits(model, data, sorted(circuits.items()), ablation="mean")
    assert [s.num_target for s in scores] == [20, 20]


# ---------------------------------------------------------------------- permutations


@pytest.mark.parametrize("name", ["resnet10", "plain-cnn", "mlp", "simple-cnn"])
def test_a_permuted_copy_computes_the_same_function_and_weight_matching_recovers_it(name):
    model = with_random_norms(build_model(name, **MNIST, seed=6), seed=7)
    layout = layout_of(model)
    weights = get_weights(model)
    rng = np.random.default_rng(8)
    planted = {group: rng.permutation(n) for group, n in layout.sizes.items()}
    moved = permute(weights, planted, layout)
    copy = build_model(name, **MNIST).eval()
    set_weights(copy, moved)
    x = random_batch(1, 28)
    with torch.no_grad():
        torch.testing.assert_close(copy(x), model(x), rtol=1e-4, atol=1e-4)
    assert not np.allclose(moved[0], weights[0])
    found = match_weights(weights, moved, layout)
    for group in layout.sizes:
        np.testing.assert_array_equal(found[group], inverse(planted)[group], err_msg=group)
    # Each site's channels follow its group: what a circuit of the copy maps through.
    sites = site_permutation(found, layout.spec)
    assert set(sites) == set(site_sizes(model))


def test_resnet10_ties_its_residual_stream_in_one_group():
    model = build_model("resnet10", **MNIST)
    spec = model.permutation_spec()
    # Block 1's shortcut is the identity: the stem's channels and block 1's output are the same stream.
    assert spec.site_groups["stem"] == spec.site_groups["block1"]
    assert len(set(spec.site_groups.values())) == 4
    stream = spec.site_groups["stem"]
    made = spec.producers(stream)
    assert {"conv1.weight", "bn1.running_var", "block1.conv2.weight", "block1.bn2.weight"} <= set(made)
    # Permuting the stem's filters alone (the tie broken) changes what the network computes.
    layout = layout_of(model)
    with_random_norms(model, seed=1)
    weights = get_weights(model)
    broken = [w.copy() for w in weights]
    k = layout.index["conv1.weight"]
    broken[k] = broken[k][np.random.default_rng(0).permutation(64)]
    other = build_model("resnet10", **MNIST).eval()
    set_weights(other, broken)
    x = random_batch(1, 28)
    with torch.no_grad():
        assert not torch.allclose(other(x), model(x), atol=1e-3)
    assert identity(layout)[stream].tolist() == list(range(64))


# ---------------------------------------------------------------------- configs and a user's model


class NoSites(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels * image_size * image_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class WrongWidth(NoSites):
    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__(in_channels, num_classes, image_size)
        self.hook = HookPoint("logits", num_classes + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook(super().forward(x))


class LayersNamedStemAndHead(nn.Module):
    """A network whose first layers are called ``stem`` and whose classifier is ``head``, as many are."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.site = HookPoint("features", 8)
        self.head = nn.Linear(8 * (image_size // 2) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.site(self.stem(x)).flatten(1))


def test_submodules_named_stem_and_head_are_not_taken_for_the_fast_path():
    model = check_model(LayersNamedStemAndHead(1, 10, 28), (1, 28, 28), 10).eval()
    x = random_batch(1, 28)
    assert torch.equal(stem(model, x), x)  # no fast path: the stem is the input itself
    keep = {"features": torch.zeros(8).index_fill_(0, torch.tensor([1, 5]), 1.0)}
    with torch.no_grad(), gated(model, keep):
        expected = model(x)
    torch.testing.assert_close(head(model, x, keep), expected)
    assert set(discover_circuits(model, ImageSplit(x, torch.tensor([0, 1] * 3)), [0], steps=3, seed=0)[0]) == {
        "features"
    }


def test_a_model_that_lacks_the_interface_is_refused_naming_what_is_missing():
    with pytest.raises(ModelError, match="has no circuit sites: mark each activation .* HookPoint"):
        check_model(NoSites(1, 10, 28), (1, 28, 28), 10)
    with pytest.raises(ModelError, match="site 'logits' declares 11 channels but its activation has shape"):
        check_model(WrongWidth(1, 10, 28), (1, 28, 28), 10)
    with pytest.raises(ModelError, match="must return logits of shape \\(2, 3\\)"):
        check_model(build_model("mlp", **MNIST), (1, 28, 28), 3)
    with pytest.raises(ModelError, match="cannot import 'no_such_package.nets' \\(No module named"):
        build_model("no_such_package.nets:build")
    with pytest.raises(ModelError, match="unknown model 'resnet11'"):
        build_model("resnet11")


def test_the_model_config_names_the_dataset_shape_and_travels_with_the_run():
    config = ExperimentConfig.from_dict(
        {"model": {"name": "plain-cnn", "args": {"channels": [8, 16, 16, 16]}}, "data": {"dataset": "cifar10"}}
    )
    model = make_model(config)
    assert site_sizes(model) == {"conv1": 8, "conv2": 16, "conv3": 16, "conv4": 16}
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    # Through Flower's flat run config and back, the builder's arguments stay one table.
    flat = config.to_run_config()
    assert json.loads(str(flat["model.args"])) == {"channels": [8, 16, 16, 16]}
    assert ExperimentConfig.from_run_config(flat).model == config.model
    with pytest.raises(ConfigError, match="model.name = 'resnet 10' is not a model"):
        ExperimentConfig.from_dict({"model": {"name": "resnet 10"}})
    with pytest.raises(ConfigError, match=r"analysis.classes = \[10\] must be a non-empty list of classes in 0..9"):
        ExperimentConfig.from_dict({"analysis": {"classes": [10]}})


# ---------------------------------------------------------------------- CIFAR-10 in torchvision's layout


def write_cifar(root: Path, per_batch: int = 60, test: int = 200) -> Path:
    """A small CIFAR-10 in torchvision's ``cifar-10-batches-py`` layout; class c has a bright square at row 3c."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n: int, offset: int) -> dict:
        labels = [(i + offset) % 10 for i in range(n)]
        images = rng.integers(0, 60, size=(n, 3, 32, 32), dtype=np.uint8)
        for i, c in enumerate(labels):
            images[i, c % 3, 3 * c : 3 * c + 3, 4:12] = 250
        return {
            b"batch_label": b"fixture",
            b"labels": labels,
            b"data": images.reshape(n, -1),
            b"filenames": [b"x.png"] * n,
        }

    for k in range(1, 6):
        (folder / f"data_batch_{k}").write_bytes(pickle.dumps(batch(per_batch, k), protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(test, 0), protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c"] * 10}, protocol=2))
    return folder


class RunsCode:
    def __reduce__(self) -> tuple:
        return (subprocess.check_output, (["echo", "pwned"],))


def test_cifar10_loads_from_torchvision_layout_and_a_pickle_that_would_run_code_is_refused(tmp_path):
    folder = write_cifar(tmp_path)
    split = load_split("cifar10", False, tmp_path)
    assert split.images.shape == (200, 3, 32, 32) and split.class_counts(10) == [20] * 10
    assert split.images[:, :, 3:6, 4:12].mean() > split.images.mean()  # the planted squares, normalised
    train = load_split("cifar10", True, tmp_path)
    assert len(train) == 300
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": RunsCode(), b"labels": [0]}, protocol=4))
    with pytest.raises(DatasetError) as err:
        load_cifar_batch(folder / "data_batch_3")
    message = str(err.value)
    assert "\n" not in message and "refers to subprocess.check_output" in message and "data_batch_3" in message
    (folder / "test_batch").write_bytes(b"\x80\x02}q\x00(X")  # truncated
    with pytest.raises(DatasetError, match="test_batch is not a readable CIFAR-10 batch"):
        load_cifar_batch(folder / "test_batch")


def docs_example() -> str:
    """The worked example of docs/your-own-model.md, as the page shows it."""
    page = (REPO / "docs" / "your-own-model.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    (code,) = [b for b in blocks if b.startswith("# my_nets.py")]
    return code


def test_the_docs_model_runs_federated_rounds_on_cifar10_by_import_path(tmp_path):
    """The page's own 30-line model, not in the package, on a CIFAR-10 folder in torchvision's layout."""
    (tmp_path / "my_nets.py").write_text(docs_example())
    data = tmp_path / "data"
    write_cifar(data, per_batch=200, test=600)
    out = tmp_path / "run"
    overrides = [
        "model.name=my_nets:build",
        "model.args={width = 8}",
        "data.dataset=cifar10",
        "rounds=2",
        "train.batch_size=32",
        "discovery.steps=30",
        "data.eval_per_class=20",
        "analysis.classes=[0, 1, 2]",
    ]
    env = {"PYTHONPATH": f"{tmp_path}:{REPO}"}
    proc = subprocess.run(
        [sys.executable, "-m", "fedmi_flower.cli", "run", "quickstart", *sets(overrides)]
        + ["--out", str(out), "--data-root", str(data)],
        cwd=REPO,
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = rounds_json(out)
    assert len(records) == 2
    last = records[-1]
    circuits = last["global"]["circuits"]
    assert set(circuits) == {"0", "1", "2"} and all(set(c) == {"a", "b"} for c in circuits.values())
    some_client = next(iter(last["clients"].values()))
    assert set(next(iter(some_client["circuits"].values()))) == {"a", "b"}
    summary = flat_summary(last)
    for key in ("inter_client_iou", "local_global_iou", "stability", "aligned_local_global_iou"):
        assert summary[key] is not None, key
    assert last["noise_floor"]["seed"], "the floor is measured on the user's model too"
    assert 'name = "my_nets:build"' in (out / "config.toml").read_text()
    assert circuit_size({"a": [1], "b": [2, 3]}) == 3


# ---------------------------------------------------------------------- nothing welded to one network


def _code_constants(tree: ast.AST) -> list[ast.AST]:
    """Every node of a module but its docstrings."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [n for n in ast.walk(tree) if id(n) not in docstrings]


def test_no_simplecnn_name_position_channel_total_or_mnist_shape_outside_its_own_files():
    """SimpleCNN's layer names, weight positions and 224 channels live in its model files; 10 classes and
    1x28x28 in the dataset catalog (and the paper's CNN's own defaults)."""
    own = {
        Path("fedmi_flower/science/models/simple_cnn.py"),
        Path("fedmi_flower/science/models/conv_chain.py"),  # names its sites conv1..convN
        Path("fedmi_flower/science/catalog.py"),
    }
    found = []
    for package in ("fedmi_flower", "clients", "strategies"):
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO)
            if rel in own:
                continue
            for node in _code_constants(ast.parse(path.read_text())):
                bad = None
                if isinstance(node, ast.Constant) and node.value in ("conv1", "conv2", "conv3", 224, 28):
                    bad = repr(node.value)
                elif isinstance(node, ast.Name) and node.id in ("WEIGHT_INDEX", "FC_WEIGHT_INDEX", "fc_blocks"):
                    bad = node.id
                elif isinstance(node, ast.keyword) and node.arg in ("num_classes", "minlength"):
                    if isinstance(node.value, ast.Constant) and node.value.value == 10:
                        bad = f"{node.arg}=10"
                elif isinstance(node, ast.arg) and node.arg == "num_classes":
                    bad = None  # defaults are checked below
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    args = node.args.args + node.args.kwonlyargs
                    defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + list(node.args.defaults)
                    defaults += list(node.args.kw_defaults)
                    for a, d in zip(args, defaults):
                        if a.arg == "num_classes" and isinstance(d, ast.Constant) and d.value == 10:
                            bad = f"{node.name}(num_classes=10)"
                if bad:
                    found.append(f"{rel}:{getattr(node, 'lineno', '?')}: {bad}")
    assert found == []
