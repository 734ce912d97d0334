"""Issue 24, items 5 and 8a: what a circuit is scored against when its rows hold one class.

Item 5: a client holding one class has no images of other classes of its own; under any
objective, the paper's included, its circuits are scored with the run's reference set beside
its rows, so their specificity (and verdict) is defined, while the paper's discovery still sees
target images only. Item 8a: ``fedmi frontier`` gives discovery the run's reference set as the
other images when the run's ``discovery.negatives`` (or a probe of one class) says so.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fedmi_flower.analysis.frontier as frontier_module
import fedmi_flower.apps.client_app as client_app
from fedmi_flower.analysis.reference import reference_images
from fedmi_flower.apps.client_app import build_client
from fedmi_flower.config import load_experiment
from fedmi_flower.records.results import RunDirectory
from fedmi_flower.records.round_record import RoundRecord
from fedmi_flower.science.data import load_labels, server_splits
from fedmi_flower.science.discovery import Discovery
from fedmi_flower.science.model import get_weights
from fedmi_flower.science.models import build_model
from fedmi_flower.science.verdicts import circuit_verdict
from fedmi_flower.wire.protocol import fit_instructions, report_from_metrics

LAYER_SIZES = {"conv1": 32, "conv2": 64, "conv3": 128}
SMALL = {
    "data.max_per_client": 400,
    "train.epochs": 1,
    "train.batch_size": 64,
    "train.sparsity": 0.9,
    "discovery.steps": 20,
    "discovery.reference_size": 200,
    "analysis.noise_floor": False,
}
"""The paper's 1-class experiment, small enough for a unit test on two shared cores."""


def _recording(monkeypatch, module, name: str) -> list[dict]:
    """Wrap ``module.name`` so that every call's keyword arguments are kept; returns the list they go to."""
    calls: list[dict] = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_specificity_for_every_client(mnist_root, monkeypatch):
    """A one-class client under the paper's objective reports a defined specificity and a verdict."""
    config = load_experiment("noniid-1class", SMALL)
    assert config.discovery.objective == "paper" and config.data.classes_per_client == 1
    node = {"partition-id": 0, "num-partitions": config.clients, "data-root": mnist_root}
    client = build_client(config.to_run_config(), node)
    assert len(torch.unique(client.train.labels)) == 1  # the split holds one class, as the experiment says
    discovered: list = []  # every discovery runs its jobs through learn_jobs
    learn_jobs = Discovery.learn_jobs
    monkeypatch.setattr(
        Discovery,
        "learn_jobs",
        lambda self, model, jobs, **kw: discovered.extend(jobs) or learn_jobs(self, model, jobs, **kw),
    )
    _, _, metrics = client.fit(get_weights(build_model(seed=0)), fit_instructions(config, 1))

    # Discovery is the paper's Eq. 3 as before: target images only, no other images given.
    assert discovered and all(job.negatives is None for job in discovered)
    report = report_from_metrics(
        metrics, len(client.train), num_clients=config.clients, layer_sizes=LAYER_SIZES, num_classes=10
    )
    (cls,) = report.circuits
    assert report.local_scores, "the client scored none of its circuits"
    scores = report.local_scores[cls]
    spec, suff = scores.specificity, scores.sufficiency
    # Before the fix: None (no image of another class to score it on), so the verdict was "unscored".
    assert spec is not None and not math.isnan(spec) and 0.0 <= spec <= 1.0
    assert suff is not None and 0.0 <= suff <= 1.0
    size = sum(map(len, report.circuits[cls].values()))
    assert circuit_verdict(max(size, 1), suff, spec) != "unscored"  # as if non-empty: the scores decide
    assert circuit_verdict(size, suff, spec) != "unscored"


def test_a_client_of_several_classes_scores_on_its_own_rows_and_loads_no_reference(mnist_root, monkeypatch):
    """Where a client holds other classes, local scoring is as before: its own rows, no reference loaded."""
    config = load_experiment("noniid-2class", {**SMALL, "discovery.objective": "paper"})
    node = {"partition-id": 0, "num-partitions": config.clients, "data-root": mnist_root}
    loaded = _recording(monkeypatch, client_app, "reference_images")
    client = build_client(config.to_run_config(), node)
    rows = client.local_eval_split(config.seed)
    assert torch.equal(rows.labels, client.holdout.labels) and torch.equal(rows.images, client.holdout.images)
    client.fit(get_weights(build_model(seed=0)), fit_instructions(config, 1))
    assert loaded == []  # never needed under the paper's objective with classes of its own: never loaded


def test_a_one_class_client_scores_on_its_rows_and_the_run_reference_set(mnist_root):
    """The rows added for local scoring are the run's reference set, the same images the server derives."""
    config = load_experiment("noniid-1class", SMALL)
    node = {"partition-id": 1, "num-partitions": config.clients, "data-root": mnist_root}
    client = build_client(config.to_run_config(), node)
    rows = client.local_eval_split(config.seed)
    reference = reference_images(config, mnist_root)
    held = len(client.holdout)
    assert len(rows) == held + config.discovery.reference_size == held + len(reference)
    assert torch.equal(rows.images[held:], reference.images) and torch.equal(rows.labels[:held], client.holdout.labels)


# ---------------------------------------------------------------------------- item 8a


def _run_with_a_round(tmp_path, mnist_root, negatives: str) -> tuple[RunDirectory, object]:
    """A run directory holding what ``frontier`` reads: config, partitions, one analysed round and its weights."""
    config = load_experiment(
        "quickstart",
        {
            "discovery.objective": "faithful",
            "discovery.negatives": negatives,
            "discovery.reference_size": 100,
            "data.eval_per_class": 20,
            "analysis.classes": [3],
        },
    )
    run = RunDirectory(tmp_path / f"run-{negatives}").create()
    run.write_config(config)
    probe, evaluation = server_splits(
        load_labels("mnist", False, mnist_root), config.data.probe_fraction, config.seed, config.data.eval_per_class
    )
    run.write_partitions([], probe, evaluation)  # the frontier reads the server's rows only
    run.append_round(RoundRecord(round=1, classes=[3]))
    run.write_round_weights(1, get_weights(build_model(seed=0)), {})
    return run, config


@pytest.mark.parametrize("negatives", ["reference", "own"])
def test_frontier_uses_run_negatives(tmp_path, mnist_root, monkeypatch, negatives):
    """With ``discovery.negatives = "reference"`` the frontier's discovery takes the run's reference set."""
    run, config = _run_with_a_round(tmp_path, mnist_root, negatives)
    calls: list[dict] = []
    real_discover = frontier_module.discover

    def watched(recipe, *args, **kwargs):
        calls.append({"objective": recipe.objective, **kwargs})
        return real_discover(recipe, *args, **kwargs)

    monkeypatch.setattr(frontier_module, "discover", watched)
    # The sweep's own settings: every other setting is the run's (steps cut down for the test).
    monkeypatch.setattr(frontier_module, "LAMBDAS", (0.01,))
    real_recipe = type(config.discovery).recipe
    monkeypatch.setattr(type(config.discovery), "recipe", lambda self: real_recipe(self).replace(steps=3))
    server_round, points = frontier_module.frontier(
        run.path, lambdas=(0.01,), objectives=("faithful", "paper"), data_root=mnist_root
    )
    assert server_round == 1 and {p.objective for p in points} == {"faithful", "paper"}
    given = {call["objective"]: call.get("negatives") for call in calls}
    assert given["paper"] is None  # Eq. 3 uses no other images, whatever the run's setting
    if negatives == "reference":
        # Before the fix: None, the probe's own rows of other classes.
        reference = reference_images(config, mnist_root)
        assert given["faithful"] is not None
        assert torch.equal(given["faithful"].images.cpu(), reference.images)
    else:
        assert given["faithful"] is None
    assert all(np.isfinite(p.specificity) for p in points)
