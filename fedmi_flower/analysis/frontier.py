"""Circuit size against faithfulness: discovery swept over its L0 coefficient on one round's global model.

A fixed L0 coefficient says nothing about how small a circuit can be and still behave
like its model; the frontier does. For each objective and each coefficient the global
model's circuits of the round's classes are found on the server's probe rows and scored
on its evaluation rows, as the run's own analysis does (``fedmi frontier``): with the run's
reference set as the other images where its ``discovery.negatives`` says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedmi_flower.analysis.reference import reference_images
from fedmi_flower.config import make_model
from fedmi_flower.records.results import RunDirectory
from fedmi_flower.records.round_record import RecordError
from fedmi_flower.science.circuits import Circuit, channel_means, circuit_size, evaluate_circuits
from fedmi_flower.science.data import load_split
from fedmi_flower.science.discovery import Discovery
from fedmi_flower.science.model import set_weights
from fedmi_flower.science.objectives import OBJECTIVES
from fedmi_flower.science.seeding import derive_seed

LAMBDAS = (0.001, 0.003, 0.01, 0.03, 0.1)
"""The L0 coefficients of a sweep by default."""


@dataclasses.dataclass(frozen=True)
class FrontierPoint:
    """One circuit found at one setting: its size and how it behaves on the evaluation rows."""

    objective: str
    l0_lambda: float
    cls: int
    size: int
    sufficiency: float
    specificity: float
    faithfulness: float


def frontier(
    run_path: str | Path,
    server_round: int | None = None,
    lambdas: Sequence[float] = LAMBDAS,
    objectives: Sequence[str] = OBJECTIVES,
    data_root: str | None = None,
) -> tuple[int, list[FrontierPoint]]:
    """Sweep ``lambdas`` for each objective on the global model of ``server_round`` (default: the last analysed).

    Discovery takes its other images as the run's did (``DiscoveryConfig.uses_reference``):
    the run's reference set with ``discovery.negatives = "reference"``, else the probe's rows
    of other classes.

    Returns the round and every point. Raises ``RecordError`` when the run holds no such round
    or no weights for it.
    """
    run = RunDirectory(Path(run_path))
    config = run.read_config()
    analysed = [r for r in run.read_rounds() if r.analysed]
    if not analysed:
        raise RecordError(f"{run.path} has no analysed round; run the experiment first")
    record = analysed[-1] if server_round is None else next((r for r in analysed if r.round == server_round), None)
    if record is None:
        raise RecordError(
            f"{run.path} has no analysed round {server_round}; choose one of {[r.round for r in analysed]}"
        )
    weights = run.read_round_weights(record.round)
    if weights is None:
        raise RecordError(f"{run.path} kept no weights of round {record.round} (weights/round-{record.round}/)")
    model = make_model(config)
    set_weights(model, weights)
    server = run.read_partitions()["server"]
    probe = load_split(config.data.dataset, False, data_root, server["probe"])
    evaluation = load_split(config.data.dataset, False, data_root, server["evaluation"])
    # Channel means on the run's reference images, as its own analysis measures them.
    reference = reference_images(config, data_root)
    means = channel_means(model, reference)
    held = sum(1 for n in probe.class_counts(config.num_classes) if n >= config.analysis.min_class_examples)
    run_recipe = config.discovery.recipe()
    points = []
    for objective in objectives:
        # The run's recipe with the sweep's own knobs: the objective, its gate, ablation and batch, the L0
        # coefficient, and no target faithfulness (the sweep reads the learned circuits).
        swept = run_recipe.replace(
            objective=objective,
            gate=None,
            ablation=None,
            batch_per_class=None,
            l0_lambda=None,
            target_faithfulness=None,
        )
        # The other images the run's own discovery takes for this objective: the reference set with
        # discovery.negatives = "reference" (or a probe of one class), else the probe's rows of other classes.
        negatives = reference if swept.uses_reference(held) else None
        ablation = str(swept.ablation)
        for lam in lambdas:
            circuits = discover(
                swept.replace(l0_lambda=lam),
                model,
                probe,
                record.classes,
                seed=derive_seed(config.seed, "frontier", record.round),
                means=means if ablation == "mean" else None,
                negatives=negatives,
            )
            pairs = sorted(circuits.items())
            scored = evaluate_circuits(model, evaluation, pairs, ablation=ablation, means=means)
            for (cls, circuit), s in zip(pairs, scored):
                points.append(
                    FrontierPoint(
                        objective, lam, cls, circuit_size(circuit), s.sufficiency, s.specificity, s.faithfulness
                    )
                )
    return record.round, points


def discover(recipe: Discovery, model: Any, data: Any, classes: Any, **given: Any) -> dict[int, Circuit]:
    """One point's circuits (a function of its own, so that a test can watch what each point is given)."""
    return recipe.find(model, data, classes, **given)[0]
