"""FedRS's restricted softmax, a baseline for label skew (Li and Zhan, "FedRS: Federated Learning with
Restricted Softmax for Label Distribution Non-IID Data", KDD 2021, Eq. 6).

A client that never sees a class still pushes that class's classifier row away from every image it
trains on (the softmax's denominator), and the average of such pushes is what FedRS blames for label
skew's damage. FedRS scales the logits of the classes a client lacks by ``alpha`` in [0, 1] during
local training: 1 is plain softmax, 0 stops the push altogether. The reference code of the paper this
package reproduces (ha405/FedMI) uses it as its label-skew baseline.
"""

from __future__ import annotations

import torch


def present_classes(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A boolean mask over the classes: which occur in this client's training labels."""
    present = torch.zeros(num_classes, dtype=torch.bool, device=labels.device)
    present[labels.unique()] = True
    return present


def restricted_logits(logits: torch.Tensor, present: torch.Tensor, alpha: float) -> torch.Tensor:
    """Scale the logits of the absent classes by ``alpha`` (FedRS Eq. 6), leaving the present ones.

    Scaling the logit scales the gradient that reaches an absent class's row by ``alpha`` too, which is
    the point: at ``alpha = 0`` a client's training leaves the rows of classes it lacks untouched.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"restricted softmax: alpha = {alpha} must lie in [0, 1] (1 is plain softmax)")
    if present.shape != logits.shape[1:]:
        raise ValueError(f"restricted softmax: {present.numel()} class flags for logits of shape {tuple(logits.shape)}")
    scale = torch.where(present, torch.ones((), device=logits.device), torch.full((), alpha, device=logits.device))
    return logits * scale
