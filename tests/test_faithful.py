"""The faithful objective on a network whose answer is planted: evidence channels, and a shortcut that answers 3."""

from __future__ import annotations

import math

import pytest
import torch
from planted import BRAKE, EVIDENCE, SHORTCUT, concat, half_bright_images, shortcut_model

from fedmi_flower.science.circuits import evaluate_circuits
from fedmi_flower.science.data import ImageSplit
from fedmi_flower.science.discovery import discover_circuits, find_circuits
from fedmi_flower.science.hook_points import site_sizes
from fedmi_flower.science.metrics import circuit_iou
from fedmi_flower.science.models import build_model
from fedmi_flower.science.sparsity import prune_
from fedmi_flower.science.verdicts import ALWAYS_TARGET, EMPTY, NEVER_TARGET, UNRECOGNISED, degenerate_reason

CLASSES = [3, 8]


def mixed_data(n: int = 64, seed: int = 0):
    """Images of the two evidence classes and of two classes the network calls its default class."""
    return concat(*(half_bright_images(n, c, seed) for c in (3, 8, 0, 5)))


def test_the_paper_objective_takes_the_shortcut_where_the_faithful_one_finds_the_evidence():
    model, data = shortcut_model(), mixed_data()
    paper = discover_circuits(model, data, CLASSES, seed=1, objective="paper", ablation="zero")
    (paper3, _) = evaluate_circuits(model, data, list(paper.items()), ablation="zero")
    assert SHORTCUT["conv3"][0] in paper[3]["conv3"] and BRAKE["conv3"][0] not in paper[3]["conv3"]
    assert paper3.sufficiency == 1.0 and paper3.specificity == 0.0 and paper3.faithfulness == 0.5

    faithful = discover_circuits(model, data, CLASSES, seed=1, objective="faithful")  # its defaults: mean ablation
    scores = evaluate_circuits(model, mixed_data(seed=1), list(faithful.items()), ablation="mean")
    for cls, s in zip(CLASSES, scores):
        assert circuit_iou(faithful[cls], EVIDENCE[cls])["mean"] >= 0.9, (cls, faithful[cls])
        assert s.specificity >= 0.9 and s.sufficiency >= 0.9 and s.faithfulness == 1.0


def test_a_client_holding_one_class_finds_its_circuit_through_reference_negatives():
    model, only3 = shortcut_model(), half_bright_images(64, 3)
    reference = concat(half_bright_images(32, 8, seed=2), half_bright_images(32, 0, seed=2))
    with pytest.raises(ValueError, match="discovery.negatives = 'reference'"):
        discover_circuits(model, only3, [3], objective="faithful")
    found = discover_circuits(model, only3, [3], seed=1, objective="faithful", negatives=reference)
    (s,) = evaluate_circuits(model, mixed_data(seed=3), list(found.items()), ablation="mean")
    assert circuit_iou(found[3], EVIDENCE[3])["mean"] >= 0.9 and s.specificity >= 0.9


def test_target_faithfulness_gives_the_smallest_circuit_that_agrees_with_the_model():
    model, data = shortcut_model(), mixed_data()
    found, _ = find_circuits(model, data, CLASSES, seed=1, objective="faithful", target_faithfulness=0.99)
    assert found == {3: EVIDENCE[3], 8: EVIDENCE[8]}  # three channels each: fewer cannot carry the evidence


def test_faithfulness_is_the_balanced_agreement_with_the_models_decision():
    model, data = shortcut_model(), mixed_data()
    whole = {layer: list(range(n)) for layer, n in site_sizes(model).items()}
    only_shortcut = {"conv1": [], "conv2": [], "conv3": SHORTCUT["conv3"]}
    w, s = evaluate_circuits(model, data, [(3, whole), (3, only_shortcut)], ablation="zero")
    assert w.faithfulness == 1.0 and (w.model_sufficiency, w.model_specificity) == (1.0, 1.0)
    # The shortcut alone says 3 for everything: it agrees on the 64 images the model calls 3, never on the 192 others.
    assert s.sufficiency == 1.0 and s.specificity == 0.0 and s.faithfulness == 0.5


def test_degenerate_circuits_say_why():
    assert degenerate_reason(0, 1.0, 1.0, 1.0) == EMPTY
    assert degenerate_reason(5, 0.9, 0.2, 0.95) == UNRECOGNISED  # the model misses the class
    assert degenerate_reason(5, 0.9, 1.0, 0.0) == UNRECOGNISED  # the model calls everything the class
    assert degenerate_reason(5, 0.1, 0.9, 0.95) == ALWAYS_TARGET
    assert degenerate_reason(5, 0.1, 0.9, 0.6) is None  # a model that is not specific itself: no verdict
    assert degenerate_reason(5, math.nan, math.nan, math.nan) is None
    assert degenerate_reason(5, 1.0, 0.69, 0.95, sufficiency=0.0) == NEVER_TARGET  # discovery failed on its own model
    assert degenerate_reason(5, 1.0, 0.69, 0.95, sufficiency=0.3) is None  # weakened, not degenerate
    assert degenerate_reason(5, 1.0, 0.95, 0.95, sufficiency=0.0, own_model=False) is None  # collapse: the finding


def test_an_untrained_network_recognises_no_class_and_its_circuits_are_degenerate():
    """The random-weight control (Adebayo et al. 2018): whatever discovery finds there, no circuit passes."""
    model = build_model(seed=0)
    prune_(model, 0.9)
    g = torch.Generator().manual_seed(0)
    data = ImageSplit(torch.rand(400, 1, 28, 28, generator=g), torch.arange(10).repeat_interleave(40))
    with torch.no_grad():
        favoured = int(model(data.images).argmax(1).mode().values)  # what the random network answers most
    classes = sorted({favoured, 1, 2, 7})
    for objective in ("paper", "faithful"):
        found = discover_circuits(model, data, classes, seed=0, objective=objective, steps=50)
        scores = dict(zip(classes, evaluate_circuits(model, data, list(found.items()), ablation="mean")))
        assert scores[favoured].model_specificity < 0.5  # the network calls (nearly) everything its favourite
        for cls, s in scores.items():
            size = sum(map(len, found[cls].values()))
            assert degenerate_reason(size, s.specificity, s.model_sufficiency, s.model_specificity) is not None


def test_the_faithful_objectives_other_images_come_from_one_seeded_pool_of_bounded_size():
    from fedmi_flower.science.circuits import NEGATIVE_POOL, _negative_pool

    pool = _negative_pool(5000, seed=3, device=torch.device("cpu"))
    assert pool.numel() == NEGATIVE_POOL == torch.unique(pool).numel()
    assert bool((pool[1:] > pool[:-1]).all()) and int(pool.max()) < 5000
    assert torch.equal(pool, _negative_pool(5000, seed=3, device=torch.device("cpu")))
    assert not torch.equal(pool, _negative_pool(5000, seed=4, device=torch.device("cpu")))
    assert torch.equal(_negative_pool(300, seed=3, device=torch.device("cpu")), torch.arange(300))


def test_discovery_draws_other_images_from_the_pool_and_from_every_other_row_when_the_pool_has_too_few(monkeypatch):
    from fedmi_flower.science import circuits, discovery

    given: dict[int, torch.Tensor] = {}
    real_draws = discovery._draws

    def recording_draws(rows, steps, n, seed, stream, cls):
        if stream == "negatives":
            given[cls] = rows.clone()
        return real_draws(rows, steps, n, seed, stream, cls)

    monkeypatch.setattr(discovery, "_draws", recording_draws)
    model = shortcut_model()
    # 800 rows, balanced: the pool (512 of them) holds plenty of other images for each class.
    data = mixed_data(n=200)
    discovery.learn_gate_scores(model, data, CLASSES, objective="faithful", steps=2, seed=5)
    pool = set(circuits._negative_pool(len(data), 5, torch.device("cpu")).tolist())
    for cls in CLASSES:
        rows = set(given[cls].tolist())
        assert rows <= pool and all(int(data.labels[r]) != cls for r in rows)
        assert len(rows) == sum(int(data.labels[r]) != cls for r in pool)  # every pooled row of another class
    # 620 rows of class 3 and 20 of class 8: the pool holds fewer than MIN_POOLED_OTHERS others for class 3,
    # so class 3 draws from all 20 rows of class 8, not only from those the pool happened to take.
    skewed = concat(half_bright_images(620, 3), half_bright_images(20, 8))
    given.clear()
    discovery.learn_gate_scores(model, skewed, [3], objective="faithful", steps=2, seed=5)
    assert set(given[3].tolist()) == set(range(620, 640))
    assert circuits.MIN_POOLED_OTHERS > 20
