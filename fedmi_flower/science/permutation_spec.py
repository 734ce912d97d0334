"""Which parameters produce and consume each group of interchangeable channels (a permutation spec).

A network's hidden channels can be reordered without changing what it computes, as long
as every parameter that produces a channel (a conv's filters, its bias, a BatchNorm's
scale, shift and running statistics) and every one that reads it (the next layer's
input side) take the same order. Git Re-Basin (Ainsworth et al. 2023, section 3)
describes a network by this map; here it is a model's ``permutation_spec()``
capability, and channel alignment (:mod:`fedmi_flower.science.alignment`) and the
channel-wise aggregation rules (:mod:`fedmi_flower.science.aggregation`) read only it.

``axes`` gives, for each state-dict tensor, the permutation group of each of its axes
(``None``: not permuted). A group is usually one circuit site; in a residual network
the stream's channels tie several sites and every tensor that writes to the stream to
one group (``site_groups`` maps each site to its group). An axis longer than its group
(a linear layer reading a flattened ``(C, H, W)`` map) holds the group's channels in
channel-major blocks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Permutation = dict[str, np.ndarray]
"""Per group, an int array: position ``i`` of the reference frame takes channel ``perm[i]``."""


@dataclass(frozen=True)
class PermutationSpec:
    """The permutation groups of a model's tensors (see the module docstring).

    Attributes
    ----------
    axes : mapping of tensor name to tuple
        Per axis, the group that permutes it, or None. Tensors not named are not permuted.
    site_groups : mapping of site name to group
        The group that orders each circuit site's channels.
    """

    axes: Mapping[str, tuple[str | None, ...]]
    site_groups: Mapping[str, str]

    @property
    def groups(self) -> list[str]:
        """Every group, in the order its first producer appears."""
        seen: dict[str, None] = {}
        for per_axis in self.axes.values():
            for group in per_axis:
                if group is not None:
                    seen.setdefault(group, None)
        return list(seen)

    def entries(self, group: str) -> list[tuple[str, int]]:
        """``(tensor, axis)`` of every axis the group permutes, in tensor order."""
        return [(name, axis) for name, per_axis in self.axes.items() for axis, g in enumerate(per_axis) if g == group]

    def producers(self, group: str) -> list[str]:
        """The tensors whose first axis the group orders: what makes the channels."""
        return [name for name, per_axis in self.axes.items() if per_axis and per_axis[0] == group]

    def readouts(self, group: str) -> list[tuple[str, int]]:
        """Axes of the group in tensors no group produces (a classifier reading the channels)."""
        return [(name, axis) for name, axis in self.entries(group) if axis > 0 and self.axes[name][0] is None]


class WeightLayout:
    """A spec bound to one model's tensors: names in weight order, and each group's size.

    Parameters
    ----------
    spec : PermutationSpec
    names : sequence of str
        The state-dict names of the weight arrays, in their order (:func:`weight_names`).
    shapes : sequence of tuple
        Their shapes.
    """

    def __init__(self, spec: PermutationSpec, names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> None:
        self.spec = spec
        self.index = {name: k for k, name in enumerate(names)}
        self.shapes = {name: tuple(shape) for name, shape in zip(names, shapes)}
        missing = [name for name in spec.axes if name not in self.index]
        if missing:
            raise ValueError(f"the permutation spec names tensors the model does not have: {missing}")
        self.sizes: dict[str, int] = {}
        for group in spec.groups:
            producers = spec.producers(group)
            if not producers:
                raise ValueError(f"permutation group {group!r} has no tensor that produces it (first axis)")
            self.sizes[group] = self.shapes[producers[0]][0]
        for name, per_axis in spec.axes.items():
            shape = self.shapes[name]
            if len(per_axis) != len(shape):
                raise ValueError(f"the permutation spec gives {len(per_axis)} axes for {name!r} of shape {shape}")
            for axis, ordered_by in enumerate(per_axis):
                if ordered_by is not None and shape[axis] % self.sizes[ordered_by]:
                    raise ValueError(
                        f"axis {axis} of {name!r} has {shape[axis]} entries, not a multiple of group {ordered_by!r}'s "
                        f"{self.sizes[ordered_by]} channels"
                    )
        for site, group in spec.site_groups.items():
            if group not in self.sizes:
                raise ValueError(f"site {site!r} is ordered by group {group!r}, which no tensor has")

    def take(self, array: np.ndarray, name: str, axis: int, order: np.ndarray) -> np.ndarray:
        """``array`` (tensor ``name``) with ``axis`` reordered by ``order`` (channel-major blocks kept together)."""
        group = self.spec.axes[name][axis]
        assert group is not None
        n = self.sizes[group]
        if array.shape[axis] == n:
            return np.take(array, order, axis=axis)
        blocks = array.reshape(*array.shape[:axis], n, -1, *array.shape[axis + 1 :])
        return np.take(blocks, order, axis=axis).reshape(array.shape)

    def channel_major(self, array: np.ndarray, name: str, axis: int) -> np.ndarray:
        """``array`` as (channels of the axis's group, everything else), channel-major blocks unfolded."""
        group = self.spec.axes[name][axis]
        assert group is not None
        n = self.sizes[group]
        blocks = array.reshape(*array.shape[:axis], n, -1, *array.shape[axis + 1 :])
        return np.moveaxis(blocks, axis, 0).reshape(n, -1)
