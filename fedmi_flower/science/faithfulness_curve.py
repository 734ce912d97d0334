"""Integrated faithfulness: faithfulness over circuit size, and its areas CPR and CMD (issue 27, item 1).

Faithfulness at one circuit size is one point of a curve. The MIB benchmark (Mueller et
al., ICML 2025) scores a circuit-finding method by the area under faithfulness over
circuit sizes (CPR, higher is better) and by the area between that curve and 1 (CMD,
lower is better). Here the curve of a class takes, at each size of :data:`SIZE_GRID`
(a share of the model's circuit channels), the top-scored channels of the gate scores
discovery already learned (no further optimisation), and scores them with
:func:`~fedmi_flower.science.circuits.evaluate_circuits`. Our faithfulness (agreement
with the model's decision, balanced over the class's images and others) lies in [0, 1],
so CMD is 1 - CPR here; MIB's normalised faithfulness can leave [0, 1], and both are
recorded so that the two read alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from fedmi_flower.science.circuits import evaluate_circuits, top_channels
from fedmi_flower.science.data import ImageSplit

SIZE_GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
"""Circuit sizes of the curve, as shares of the model's circuit channels (rounded up to whole channels)."""

CURVE_ROWS_PER_CLASS = 32
"""Rows per class a curve is scored on: 9 sizes x every class is many circuits, and the curve's shape, not its
third decimal, is what its area reads."""


def grid_sizes(total: int, grid: Sequence[float] = SIZE_GRID) -> list[int]:
    """The channel counts of ``grid`` for a model of ``total`` circuit channels (at least one each)."""
    return [max(1, math.ceil(share * total)) for share in grid]


@torch.no_grad()
def faithfulness_curves(
    model: nn.Module,
    data: ImageSplit,
    scores: Mapping[str, torch.Tensor],
    classes: Sequence[int],
    *,
    grid: Sequence[float] = SIZE_GRID,
    ablation: str = "zero",
    means: Mapping[str, torch.Tensor] | None = None,
) -> dict[int, list[float]]:
    """Each class's faithfulness at every size of ``grid``: its top-scored channels, scored on ``data``.

    ``scores`` are discovery's learned gate scores, one row per class of ``classes``
    (:meth:`~fedmi_flower.science.discovery.Discovery.learn`). Every point of every
    curve is scored in one batched evaluation.
    """
    total = sum(int(s.shape[1]) for s in scores.values())
    sizes = grid_sizes(total, grid)
    pairs = [(int(cls), top_channels(scores, row, k)) for row, cls in enumerate(classes) for k in sizes]
    scored = evaluate_circuits(model, data, pairs, ablation=ablation, means=means, necessity=False)
    out: dict[int, list[float]] = {}
    for i, cls in enumerate(classes):
        out[int(cls)] = [s.faithfulness for s in scored[i * len(sizes) : (i + 1) * len(sizes)]]
    return out


def cpr_cmd(curve: Sequence[float], grid: Sequence[float] = SIZE_GRID) -> tuple[float, float]:
    """CPR (area under the curve) and CMD (area between the curve and 1) over ``grid``, normalised by its span.

    Trapezoids between the grid's sizes; NaN when any point is undefined.
    """
    values = np.asarray(curve, dtype=float)
    if len(values) != len(grid) or not np.all(np.isfinite(values)):
        return math.nan, math.nan
    x = np.asarray(grid, dtype=float)
    span = float(x[-1] - x[0])
    cpr = float(np.trapezoid(values, x)) / span
    cmd = float(np.trapezoid(np.abs(1.0 - values), x)) / span
    # Both lie in [0, 1] for faithfulness in [0, 1]; the division can leave 1 + 2e-16, which a report's range
    # check would refuse (and with it the client's circuits of the round).
    return min(max(cpr, 0.0), 1.0), min(max(cmd, 0.0), 1.0)
