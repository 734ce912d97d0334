"""FedBABU's frozen head, a baseline that keeps the classifier out of the collision (Oh, Kim and Yun,
"FedBABU: Toward Enhanced Representation for Federated Image Classification", ICLR 2022, section 4).

Under label skew each client pulls the classifier rows of its own classes up and every other row
down, and averaging those pulls is where FedRS and FedBABU locate the damage. FedBABU trains only the
body: the classifier keeps the global model's random initial weights on every client, so all
clients share one head and the average is over bodies alone. That keeps the global model whole (it
has a head, the shared one), so its circuits can be discovered and every client circuit
cross-evaluated on it like FedAvg's; FedBABU's fine-tuning of the head after training is a
personalisation step the instrument does not measure.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class HeadError(ValueError):
    """The model has no classifier this baseline can freeze; the message says what it needs."""


def classifier(model: nn.Module, x: torch.Tensor) -> nn.Linear:
    """The model's classifier: the last ``nn.Linear`` its forward pass on ``x`` calls that yields the logits.

    Found by running the model rather than by attribute name, so that any model of the interface
    (docs/your-own-model.md) works whatever it calls its layers. The pass runs in eval mode, without
    gradients, so batch-norm statistics do not move.
    """
    calls: list[tuple[nn.Linear, torch.Tensor]] = []
    handles = [
        m.register_forward_hook(lambda mod, _inp, out: calls.append((mod, out)))
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            logits = model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    for module, out in reversed(calls):
        if out.shape == logits.shape and torch.equal(out, logits):
            return module
    raise HeadError(
        f"train.frozen_head: {type(model).__name__}'s logits do not come straight out of an nn.Linear, so there is "
        "no classifier to freeze; end the model with one (docs/your-own-model.md) or set train.frozen_head = false"
    )
