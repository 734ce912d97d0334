"""Does a round's conclusion survive another method, another ablation, a randomised model? (issue 27, items 2-6)

Circuit metrics are not robust to the method ("Transformer Circuit Metrics are not
Robust", 2024: results move with the ablation and the discovery method), so each round
can measure its conclusions again:

- **stitching** (:func:`stitched_circuits`): the holders' circuits of a class combined
  and scored on the global weights;
- **CKA** (:func:`client_cka`): how alike each client's representations are to the
  global model's, whatever the channel order;
- **a second method** (:func:`second_method`): attribution circuits beside the learned
  ones, their IoU, and the verdicts again;
- **ablations** (:func:`ablation_verdicts`): every verdict under zero, mean and resample
  ablation;
- **randomisation controls** (:func:`cascade`, :func:`label_randomised_model`): Adebayo
  et al.'s (2018) cascading randomisation and label randomisation.

Each function takes what it needs explicitly; :class:`~fedmi_flower.analysis.round_analyst.RoundAnalyst`
runs them as optional, timed analysis steps.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from fedmi_flower.records.round_record import (
    AblationVerdicts,
    AttributionCircuit,
    Cascade,
    Cka,
    IoU,
    SecondMethod,
    StitchedCircuit,
)
from fedmi_flower.science.attribution import attribution_scores
from fedmi_flower.science.circuits import (
    Circuit,
    CircuitScores,
    circuit_size,
    evaluate_circuits,
    smallest_faithful_circuit,
    top_channels,
)
from fedmi_flower.science.cka import ChannelGrams
from fedmi_flower.science.data import ImageSplit
from fedmi_flower.science.faithfulness_curve import cpr_cmd, faithfulness_curves
from fedmi_flower.science.hook_points import activations
from fedmi_flower.science.metrics import chance_circuit_iou, circuit_iou, nanmean
from fedmi_flower.science.model import evaluate
from fedmi_flower.science.objectives import SCORING_ABLATIONS
from fedmi_flower.science.seeding import derive_seed, torch_generator
from fedmi_flower.science.stitching import RULES, stitch
from fedmi_flower.science.verdicts import circuit_verdict

Scorer = Callable[[nn.Module, Sequence[tuple[int, Circuit]]], list[CircuitScores]]
"""Scores ``(class, circuit)`` pairs on a model, on the run's evaluation rows with the run's ablation."""

CKA_IMAGES = 512
"""Reference images CKA is measured on (two halves of this many)."""


def _compare(a: Circuit, b: Circuit, sizes: Mapping[str, int]) -> IoU:
    return IoU(circuit_iou(a, b, list(sizes)), chance=chance_circuit_iou(a, b, sizes))


def _verdict(circuit: Circuit, s: CircuitScores) -> str:
    return circuit_verdict(circuit_size(circuit), s.sufficiency, s.specificity)


# ---------------------------------------------------------------------- stitching (item 6)


def stitched_circuits(
    model: nn.Module, client_circuits: Mapping[int, Mapping[int, Circuit]], classes: Sequence[int], score: Scorer
) -> dict[int, dict[str, StitchedCircuit]]:
    """Per class held by two or more clients: its holders' circuits stitched by every rule, scored on ``model``.

    ``client_circuits`` maps client -> class -> circuit; every stitched circuit of every
    class is scored in one batched evaluation.
    """
    found: list[tuple[int, str, int, Circuit]] = []
    for cls in classes:
        held = [per[cls] for _, per in sorted(client_circuits.items()) if cls in per]
        if len(held) >= 2:
            found += [(cls, rule, len(held), stitch(held, rule)) for rule in RULES]
    scores = score(model, [(cls, circuit) for cls, _, _, circuit in found])
    out: dict[int, dict[str, StitchedCircuit]] = {}
    for (cls, rule, holders, circuit), s in zip(found, scores):
        out.setdefault(cls, {})[rule] = StitchedCircuit(circuit_size(circuit), holders, s, _verdict(circuit, s))
    return out


# ---------------------------------------------------------------------- CKA (item 5)


def client_cka(
    global_model: nn.Module,
    client_models: Mapping[int, nn.Module],
    images: torch.Tensor,
    global_circuits: Mapping[int, Circuit],
    client_circuits: Mapping[int, Mapping[int, Circuit]],
    seed: int,
    untrained: nn.Module | None = None,
) -> dict[int, Cka]:
    """Linear CKA of each client's model with the global model, per site and per class's circuits (:class:`Cka`).

    ``images`` are split at random (``seed``) into two halves: the value on the first,
    ``again`` on the second, ``chance`` with the client on the first and the global
    model on the second (unpaired images), and ``untrained``: a never-trained model of
    the same architecture against the global model on the first half (what CKA reads
    between two unrelated models on the same images: far above the unpaired chance,
    because the images' own structure passes through any network). Each model's per-channel Gram matrices are
    computed once per half (:class:`~fedmi_flower.science.cka.ChannelGrams`), so every
    circuit's masked CKA is a sum of them, not another pass over the features.
    """
    n = min(len(images), CKA_IMAGES) // 2
    if n < 2:
        return {}
    order = torch.randperm(len(images), generator=torch_generator(seed, "cka-halves"))
    device = next(global_model.parameters()).device
    halves = images[order[:n]].to(device), images[order[n : 2 * n]].to(device)

    def grams(model: nn.Module) -> tuple[ChannelGrams, ChannelGrams]:
        with torch.no_grad():
            first, second = (ChannelGrams(activations(model.eval(), half)) for half in halves)
        return first, second

    g1, g2 = grams(global_model)
    baseline = grams(untrained)[0].cka(g1) if untrained is not None else {}
    out: dict[int, Cka] = {}
    for pid, client in sorted(client_models.items()):
        c1, c2 = grams(client)
        entry = Cka(sites=c1.cka(g1), again=c2.cka(g2), chance=c1.cka(g2), untrained=dict(baseline))
        for cls, circuit in sorted(client_circuits.get(pid, {}).items()):
            if cls in global_circuits:
                theirs = global_circuits[cls]
                entry.circuits[cls] = c1.circuit_cka(g1, circuit, theirs)
                entry.circuits_again[cls] = c2.circuit_cka(g2, circuit, theirs)
                entry.circuits_chance[cls] = c1.circuit_cka(g2, circuit, theirs)
        out[pid] = entry
    return out


# ---------------------------------------------------------------------- a second method (item 2)


def second_method(
    model: nn.Module,
    probe: ImageSplit,
    global_circuits: Mapping[int, Circuit],
    global_scores: Mapping[int, CircuitScores],
    client_models: Mapping[int, nn.Module],
    client_circuits: Mapping[int, Mapping[int, Circuit]],
    sizes: Mapping[str, int],
    score: Scorer,
    *,
    fill: Callable[[nn.Module], Mapping[str, torch.Tensor] | None],
    ablation: str,
    curve_rows: ImageSplit | None,
    negatives: ImageSplit | None,
    seed: int,
) -> SecondMethod:
    """Attribution circuits (:mod:`fedmi_flower.science.attribution`) beside the learned ones.

    For the global model, per class: the attribution circuit of the learned circuit's
    size and the smallest one as faithful as the learned circuit (bisection on the
    attribution ranking, on the probe rows), both scored on the evaluation rows, and the
    CPR of the attribution ranking's faithfulness curve (on ``curve_rows``; none when
    None). For every client model, per class of its circuits: the attribution circuit of
    its learned circuit's size, found on the probe rows of the class (the server holds
    no client's rows), scored on its own model and on the global weights. Each with its
    IoU to the learned circuit and the chance level of circuits of these sizes.
    """
    out = SecondMethod()
    classes = sorted(global_circuits)
    if classes:
        means = fill(model)  # the global model's channel means: one pass over the reference images, used thrice
        ranked = attribution_scores(model, probe, classes, fill=means, seed=seed)
        same_size = {c: top_channels(ranked, row, circuit_size(global_circuits[c])) for row, c in enumerate(classes)}
        same_faith = {}
        for row, c in enumerate(classes):
            target = global_scores[c].faithfulness if c in global_scores else float("nan")
            if np.isfinite(target):
                same_faith[c] = smallest_faithful_circuit(
                    model,
                    probe,
                    ranked,
                    row,
                    c,
                    target,
                    ablation=ablation,
                    means=means,
                    negatives=negatives,
                    seed=seed,
                )
        pairs = [(c, circ) for c, circ in same_size.items()] + [(c, circ) for c, circ in same_faith.items()]
        scored = score(model, pairs)
        for (c, circ), s in zip(pairs[: len(same_size)], scored[: len(same_size)]):
            out.same_size[c] = AttributionCircuit(
                circuit_size(circ), _compare(circ, global_circuits[c], sizes), s, _verdict(circ, s)
            )
        for (c, circ), s in zip(pairs[len(same_size) :], scored[len(same_size) :]):
            out.same_faithfulness[c] = AttributionCircuit(
                circuit_size(circ), _compare(circ, global_circuits[c], sizes), s, _verdict(circ, s)
            )
        if curve_rows is not None:
            curves = faithfulness_curves(model, curve_rows, ranked, classes, ablation=ablation, means=means)
            out.cpr = {c: cpr_cmd(curve)[0] for c, curve in curves.items()}
    found: dict[int, dict[int, Circuit]] = {}
    for pid, client in sorted(client_models.items()):
        own = client_circuits.get(pid, {})
        mine = sorted(own)
        if not mine:
            continue
        ranked = attribution_scores(client, probe, mine, fill=fill(client), seed=seed)
        found[pid] = {c: top_channels(ranked, row, circuit_size(own[c])) for row, c in enumerate(mine)}
        pairs = list(found[pid].items())
        on_own = score(client, pairs)
        out.clients[pid] = {
            c: AttributionCircuit(circuit_size(circ), _compare(circ, own[c], sizes), s, _verdict(circ, s))
            for (c, circ), s in zip(pairs, on_own)
        }
    # Both methods' circuits on the global weights, on the same rows: their verdicts compare like with like.
    keys = [(pid, c) for pid, per in found.items() for c in per]
    on_global = score(
        model, [(c, found[pid][c]) for pid, c in keys] + [(c, client_circuits[pid][c]) for pid, c in keys]
    )
    for (pid, c), s, learned in zip(keys, on_global, on_global[len(keys) :]):
        entry = out.clients[pid][c]
        entry.on_global, entry.global_verdict = s, _verdict(found[pid][c], s)
        entry.learned_verdict = _verdict(client_circuits[pid][c], learned)
    for cls in sorted({c for per in found.values() for c in per}):
        holders = [per[cls] for _, per in sorted(found.items()) if cls in per]
        pair_ious = [_compare(a, b, sizes) for a, b in itertools.combinations(holders, 2)]
        if pair_ious:
            out.inter_client_iou[cls] = IoU(
                {"mean": nanmean(p.mean for p in pair_ious)},
                chance={"mean": nanmean(p.chance_mean for p in pair_ious)},
                pairs=sum(1 for p in pair_ious if np.isfinite(p.mean)),
                clients=sorted(pid for pid, per in found.items() if cls in per),
            )
    return out


# ---------------------------------------------------------------------- ablations (item 3)


def ablation_verdicts(
    model: nn.Module,
    rows: ImageSplit,
    global_circuits: Mapping[int, Circuit],
    client_circuits: Mapping[int, Mapping[int, Circuit]],
    *,
    run_ablation: str,
    means: Mapping[str, torch.Tensor] | None,
    resample_from: torch.Tensor,
    seed: int,
) -> AblationVerdicts:
    """The global circuits' and the clients' circuits' verdicts on ``model`` under every scoring ablation.

    Every ablation, the run's own included, scores every circuit on the same ``rows``
    (one batched evaluation each), so that a changed verdict is the ablation's doing.
    """
    out = AblationVerdicts(run_ablation=run_ablation)
    keys: list[tuple[int | None, int, Circuit]] = [(None, c, circ) for c, circ in sorted(global_circuits.items())]
    keys += [(pid, c, circ) for pid, per in sorted(client_circuits.items()) for c, circ in sorted(per.items())]
    for ablation in SCORING_ABLATIONS:
        scored = evaluate_circuits(
            model,
            rows,
            [(c, circ) for _, c, circ in keys],
            ablation=ablation,
            means=means if ablation == "mean" else None,
            resample=resample_from,
            seed=seed,
        )
        out.global_verdicts[ablation] = {}
        out.cross_verdicts[ablation] = {}
        for (pid, c, circ), s in zip(keys, scored):
            if pid is None:
                out.global_verdicts[ablation][c] = _verdict(circ, s)
            else:
                out.cross_verdicts[ablation].setdefault(pid, {})[c] = _verdict(circ, s)
    return out


# ---------------------------------------------------------------------- randomisation controls (item 4)


def parameterised_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's modules that own parameters and can re-initialise them, in registration (forward) order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if any(True for _ in m.parameters(recurse=False)) and callable(getattr(m, "reset_parameters", None))
    ]


def cascade(
    model: nn.Module,
    circuits: Mapping[int, Circuit],
    evaluation: ImageSplit,
    score: Scorer,
    seed: int,
) -> Cascade:
    """Cascading randomisation of ``model`` (a copy is randomised; ``model`` is left as it is).

    Stage k re-initialises the top k parameterised layers (the layer's own
    ``reset_parameters``, under a generator seeded from ``seed`` and k), each keeping the
    trained layer's zero weights at zero so that only trained values are lost, never
    sparsity. The circuits of ``circuits`` stay those of the trained model.
    """
    randomised = copy.deepcopy(model)
    layers = parameterised_layers(randomised)
    out = Cascade()

    def measure(stage: str) -> None:
        out.stages.append(stage)
        out.accuracy.append(evaluate(randomised, evaluation).accuracy)
        scored = score(randomised, list(circuits.items()))
        out.sufficiency.append(nanmean(s.sufficiency for s in scored))
        out.faithfulness.append(nanmean(s.faithfulness for s in scored))

    measure("trained")
    for k, (name, layer) in enumerate(reversed(layers), start=1):
        support = {pname: p.detach() != 0 for pname, p in layer.named_parameters(recurse=False) if p.dim() >= 2}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "cascade-layer", k))
            layer.reset_parameters()  # type: ignore[operator]
        with torch.no_grad():
            for pname, p in layer.named_parameters(recurse=False):
                if pname in support:
                    p.mul_(support[pname].to(p.dtype))
        measure(name)
    return out


def label_randomised_model(
    model: nn.Module, train_rows: ImageSplit, train: Callable[[nn.Module, ImageSplit], object], seed: int
) -> nn.Module:
    """``model`` (untrained, modified in place and returned) trained by ``train`` on ``train_rows`` with their labels
    shuffled (a seeded permutation): the label-randomised control of Adebayo et al. (2018).

    The model can only memorise: it recognises no class on held-out images, so every
    circuit found on it must come out degenerate.
    """
    shuffled = train_rows.labels[torch.randperm(len(train_rows), generator=torch_generator(seed, "label-control"))]
    train(model, ImageSplit(train_rows.images, shuffled.to(train_rows.labels.device)))
    return model
