"""FedRS's restricted softmax: planted on a linear classifier whose absent classes are known."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fedmi_flower.config import ConfigError, load_experiment
from fedmi_flower.science.data import ImageSplit
from fedmi_flower.science.restricted_softmax import present_classes, restricted_logits
from fedmi_flower.science.sparsity import train_sparse


def _client(seed: int = 0) -> tuple[nn.Module, ImageSplit]:
    """A 4-class linear classifier and a client holding classes 0 and 2 only, 30 and 10 images."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(40, 1, 2, 2, generator=g)
    labels = torch.tensor([0] * 30 + [2] * 10)
    images[labels == 0] += 1.0  # separable enough to learn
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4))
    torch.manual_seed(seed)
    model[1].reset_parameters()
    return model, ImageSplit(images, labels)


def _rows_moved(alpha: float) -> torch.Tensor:
    model, data = _client()
    before = model[1].weight.detach().clone()
    train_sparse(model, data, epochs=3, batch_size=8, sparsity=None, generator=torch.Generator().manual_seed(1),
                 restricted_alpha=alpha)  # fmt: skip
    return (model[1].weight.detach() - before).abs().sum(1)


def test_the_absent_classes_rows_stay_put_at_alpha_0_and_move_above_it():
    plain, half, none = _rows_moved(1.0), _rows_moved(0.5), _rows_moved(0.0)
    absent = [1, 3]
    assert (plain[absent] > 0).all()
    assert (none[absent] == 0).all(), "at alpha 0 no gradient reaches a class the client lacks"
    # Adam normalises a gradient's size, so alpha 0.5 need not move them less than 1; it must move them.
    assert (half[absent] > 0).all()
    assert (none[[0, 2]] > 0).all(), "the present classes still learn"


def test_the_logits_of_absent_classes_are_scaled_and_the_present_ones_kept():
    present = present_classes(torch.tensor([2, 0, 2]), 4)
    assert present.tolist() == [True, False, True, False]
    logits = torch.tensor([[1.0, 2.0, 3.0, -4.0]])
    assert restricted_logits(logits, present, 0.25).tolist() == [[1.0, 0.5, 3.0, -1.0]]
    with pytest.raises(ValueError, match="alpha = 1.5 must lie in"):
        restricted_logits(logits, present, 1.5)
    with pytest.raises(ValueError, match="3 class flags"):
        restricted_logits(logits, present[:3], 0.5)


def test_the_setting_is_checked_and_reaches_the_trainer():
    with pytest.raises(ConfigError, match="train.restricted_softmax"):
        load_experiment("quickstart", {"train.restricted_softmax": 1.5})
    assert load_experiment("quickstart", {"train.restricted_softmax": 0.5}).train.restricted_softmax == 0.5
