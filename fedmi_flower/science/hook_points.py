"""Named circuit sites: where a model's activations can be read, gated and filled.

The model interface every analysis speaks (docs/your-own-model.md). A model marks each
place whose output channels (or units) a circuit can hold with a :class:`HookPoint`,
an identity module that carries the site's name and width, in the spirit of
TransformerLens's ``hook_points.py``. Analysis never touches a layer attribute: it
gates the sites through :func:`gated` and reads them through :func:`captured`, two
context managers that register forward hooks on the hook points and always remove
them, and it runs the model through :func:`stem` and :func:`head`.

A site's activation has its channels on dimension 1: ``(batch, channels, ...)``, a
conv feature map ``(B, C, H, W)`` or a layer's units ``(B, C)``. A gate is ``(C,)``
for every sample or ``(B, C)`` per sample, 1 keeping a channel and 0 ablating it;
an ablated channel outputs zero, or its ``fill`` value: ``(C,)`` or ``(B, C)`` (mean ablation)
or the activation's own shape (resample ablation: the channel's value on another image).

Optional capabilities a model may add, each only for speed (the results are the same):

- ``stem(x)`` and ``head(h, gates, fill)``: the part before the first site, which no
  gate changes, computed once for many circuits; without them the stem is the input
  and every pass runs the whole model.
- ``circuit_logits(h, circuit, fill=None)``: logits with only the circuit's channels
  active, computed on the circuit's sub-network alone; closed channels output zero, or
  their ``fill`` (one value per channel of each site: mean ablation) where the method
  takes that argument (one without it serves zero ablation only).
- ``circuit_edge_strengths(circuit, target_class)``: the weights between a circuit's
  channels of consecutive sites, for circuit graphs; without it graphs show nodes only.
- ``permutation_spec()``: which parameters produce and consume each site's channels
  (:mod:`fedmi_flower.science.permutation_spec`), for channel alignment and the
  channel-wise aggregation rules; without it those are refused with a clear error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn as nn

Gates = Mapping[str, torch.Tensor]


class HookPoint(nn.Identity):
    """An identity module that marks a circuit site: ``width`` channels on dimension 1 of its output.

    Parameters
    ----------
    site : str
        The site's name, as records, wire masks and figures show it (``"conv1"``, ``"block2"``).
    width : int
        Channels (or units) of the activation that passes through.
    """

    def __init__(self, site: str, width: int) -> None:
        super().__init__()
        if not site or not isinstance(site, str):
            raise ValueError(f"a hook point needs a site name, got {site!r}")
        if int(width) < 1:
            raise ValueError(f"site {site!r} needs a positive width, got {width}")
        self.site = site
        self.width = int(width)

    def extra_repr(self) -> str:
        return f"site={self.site!r}, width={self.width}"


class InterfaceError(TypeError):
    """A model does not speak the circuit interface; the message names what it lacks and how to add it."""


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """The model's hook points by site name, in the order the model registers them (its forward order)."""
    found: dict[str, HookPoint] = {}
    for module in model.modules():
        if isinstance(module, HookPoint):
            if module.site in found:
                raise InterfaceError(f"two hook points are named {module.site!r}; give every site its own name")
            found[module.site] = module
    return found


def site_sizes(model: nn.Module) -> dict[str, int]:
    """Width of every circuit site, in order: what a circuit's channels index."""
    return {name: point.width for name, point in hook_points(model).items()}


def _broadcast(value: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """A (C,) or (B, C) tensor shaped to multiply a (B, C, ...) activation; one of the activation's own shape
    (a fill per sample and position: resample ablation) as it is."""
    if value.dim() == output.dim():
        return value
    return value.view(*value.shape, *([1] * (output.dim() - 2)))


def _gate_hook(gate: torch.Tensor, fill: torch.Tensor | None) -> Any:
    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        g = _broadcast(gate, output)
        if fill is None:
            return output * g
        return output * g + _broadcast(fill, output) * (1.0 - g)

    return hook


@contextlib.contextmanager
def gated(model: nn.Module, gates: Gates | None = None, fill: Gates | None = None) -> Iterator[None]:
    """Within the block, every named site's output is multiplied by its gate (and filled where closed).

    Sites not named in ``gates`` stay open. The hooks are removed on leaving the block,
    whatever happens inside it.
    """
    gates = gates or {}
    fill = fill or {}
    points = hook_points(model)
    unknown = set(gates) - set(points)
    if unknown:
        raise KeyError(f"no circuit site named {sorted(unknown)}; the model's sites are {list(points)}")
    handles = [points[site].register_forward_hook(_gate_hook(gate, fill.get(site))) for site, gate in gates.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def captured(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward pass stores each site's output in the yielded dict, by site name.

    Hooks run in the order they were registered: opened inside a :func:`gated` block it
    stores the gated outputs, outside it the outputs before the gates.
    """
    store: dict[str, torch.Tensor] = {}

    def keep(site: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            store[site] = output

        return hook

    handles = [point.register_forward_hook(keep(site)) for site, point in hook_points(model).items()]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


class StemHeadModel(nn.Module):
    """A model with the ``stem``/``head`` capability: subclasses write :meth:`stem` and :meth:`rest`.

    :meth:`stem` is the part before the first site, which no gate changes; :meth:`rest`
    the remainder from there, calling the hook points. :meth:`head` runs :meth:`rest`
    with the sites gated, :meth:`forward` both parts ungated.
    """

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rest(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head(self, h: torch.Tensor, gates: Gates | None = None, fill: Gates | None = None) -> torch.Tensor:
        """Logits from a :meth:`stem` output, each named site gated (see :func:`gated`)."""
        if not gates:
            return self.rest(h)
        with gated(self, gates, fill):
            return self.rest(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x``."""
        return self.rest(self.stem(x))


def capability(model: nn.Module, name: str) -> Any:
    """The model's method ``name`` (an optional capability), or None.

    A submodule of that name is not the capability: a network may well call its first
    layers ``stem`` or its classifier ``head`` without meaning the interface's methods.
    """
    found = getattr(model, name, None)
    return found if callable(found) and not isinstance(found, nn.Module) else None


def has_stem_and_head(model: nn.Module) -> bool:
    """Whether the model has the ``stem``/``head`` fast path."""
    return capability(model, "stem") is not None and capability(model, "head") is not None


def stem(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's ungated prefix of ``x`` (its ``stem`` capability), or ``x`` itself."""
    prefix = capability(model, "stem") if has_stem_and_head(model) else None
    return prefix(x) if prefix is not None else x


def head(model: nn.Module, h: torch.Tensor, gates: Gates | None = None, fill: Gates | None = None) -> torch.Tensor:
    """Logits from a :func:`stem` output, each named site gated (``fill`` where closed)."""
    if has_stem_and_head(model):
        return capability(model, "head")(h, gates, fill)
    if not gates:
        return model(h)
    with gated(model, gates, fill):
        return model(h)


def logits(model: nn.Module, x: torch.Tensor, gates: Gates | None = None, fill: Gates | None = None) -> torch.Tensor:
    """The model's logits for ``x`` with its sites gated."""
    return head(model, stem(model, x), gates, fill)


def activations(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The ungated output of every site for ``x``, by site name."""
    with captured(model) as store:
        model(x)
    return dict(store)


def check_circuit_model(model: Any, where: str = "the model") -> nn.Module:
    """Return ``model`` when it marks circuit sites, else raise :class:`InterfaceError` saying what is missing."""
    if not isinstance(model, nn.Module):
        raise InterfaceError(f"{where} is a {type(model).__name__}, not a torch.nn.Module")
    points = hook_points(model)
    if not points:
        raise InterfaceError(
            f"{where} ({type(model).__name__}) has no circuit sites: mark each activation a circuit can hold with "
            "fedmi_flower.HookPoint(site, width), e.g. `self.hook1 = HookPoint('conv1', 32)` and "
            "`h = self.hook1(torch.relu(self.conv1(x)))` in forward (docs/your-own-model.md)"
        )
    has_stem, has_head = capability(model, "stem") is not None, capability(model, "head") is not None
    if has_stem != has_head:
        raise InterfaceError(
            f"{where} ({type(model).__name__}) defines {'stem' if has_stem else 'head'} without "
            f"{'head' if has_stem else 'stem'}: the fast path needs both (or neither)"
        )
    return model
