"""FedBABU's frozen head: the classifier found by running the model, kept while the body trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fedmi_flower.config import load_experiment
from fedmi_flower.science.data import ImageSplit
from fedmi_flower.science.frozen_head import HeadError, classifier
from fedmi_flower.science.models import build_model
from fedmi_flower.science.sparsity import train_sparse


def _split(classes: list[int], n: int, seed: int) -> ImageSplit:
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes * (n // len(classes)))
    return ImageSplit(torch.randn(len(labels), 1, 28, 28, generator=g) + labels.view(-1, 1, 1, 1) * 0.1, labels)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["simple-cnn", "mlp", "resnet10"])
def test_the_classifier_is_the_linear_layer_whose_output_is_the_logits(name):
    model = build_model(name, in_channels=1, num_classes=10, image_size=28)
    head = classifier(model, torch.randn(2, 1, 28, 28))
    assert isinstance(head, nn.Linear) and head.out_features == 10
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert head is last


@pytest.mark.parametrize(("sparsity", "scope"), [(None, "tensor"), (0.9, "tensor"), (0.9, "global")])
def test_two_clients_of_different_classes_keep_one_head_and_train_different_bodies(sparsity, scope):
    """Neither training nor pruning touches the head: under a global budget its mask would follow each client's
    body, and the clients' heads would part."""
    start = build_model("simple-cnn", in_channels=1, num_classes=10, image_size=28, seed=3)
    head_name = [n for n, m in start.named_modules() if m is classifier(start, torch.randn(2, 1, 28, 28))][0]
    trained = []
    for pid, (classes, n) in enumerate([([0, 1], 40), ([5, 6, 7], 60)]):  # different classes and sizes
        model = build_model("simple-cnn", in_channels=1, num_classes=10, image_size=28, seed=3)
        model.load_state_dict(_state(start))
        train_sparse(model, _split(classes, n, pid), epochs=2, batch_size=16, sparsity=sparsity, scope=scope,
                     generator=torch.Generator().manual_seed(pid), frozen_head=True)  # fmt: skip
        trained.append(_state(model))
    for key, value in _state(start).items():
        if key.startswith(head_name + "."):
            assert all(torch.equal(t[key], value) for t in trained), f"{key} moved"
        else:
            assert not torch.equal(trained[0][key], trained[1][key]), f"{key} did not train"
    # Without the setting the head trains: the test can fail.
    model = build_model("simple-cnn", in_channels=1, num_classes=10, image_size=28, seed=3)
    train_sparse(model, _split([0, 1], 40, 0), epochs=1, batch_size=16, sparsity=None)
    assert not torch.equal(_state(model)[head_name + ".weight"], _state(start)[head_name + ".weight"])


class _PooledLogits(nn.Module):
    """Logits straight out of a conv and a pool: no classifier layer to freeze."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


def test_a_model_without_a_linear_classifier_is_refused_with_the_fix():
    with pytest.raises(HeadError, match="train.frozen_head = false"):
        classifier(_PooledLogits(), torch.randn(2, 1, 8, 8))


def test_the_setting_reaches_the_config():
    assert load_experiment("quickstart", {"train.frozen_head": True}).train.frozen_head is True
