"""Which channels a tensor carries, position by position, along one axis.

Every channel a producer (conv filter, dense unit) creates is an *atom* with a global id.
A tensor's ``Layout`` lists the atom at each position of its channel axis. Pass-through ops
copy it, Concat concatenates it, Split/Slice cut it, Flatten repeats each atom H*W times.
Removing an atom removes every position that carries it, in every tensor at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layout:
    axis: int
    atoms: np.ndarray  # int64, one atom id per position along ``axis``

    @property
    def size(self) -> int:
        return int(self.atoms.shape[0])

    def moved(self, axis: int) -> Layout:
        return Layout(axis, self.atoms)

    def same_as(self, other: Layout | None) -> bool:
        return (
            other is not None
            and other.axis == self.axis
            and other.size == self.size
            and bool(np.array_equal(other.atoms, self.atoms))
        )


def expand(layout: Layout, shape: tuple[int, ...]) -> np.ndarray:
    """An index tensor of ``shape`` holding each position's atom id (batch of 1)."""
    view = [1] * len(shape)
    view[layout.axis] = layout.size
    return np.broadcast_to(layout.atoms.reshape(view), shape)


def collapse(ids: np.ndarray) -> Layout | None:
    """The layout of an index tensor, or None if atoms vary along more than one axis.

    The batch axis (0) never carries channels: a tensor whose atoms vary along it (batch
    merged with channels) cannot be described and is a barrier.
    """
    if ids.size == 0:
        return None
    varying = []
    for axis in range(ids.ndim):
        if ids.shape[axis] > 1:
            first = np.take(ids, [0], axis=axis)
            if not np.all(ids == first):
                varying.append(axis)
    if len(varying) != 1 or varying[0] == 0:
        return None
    axis = varying[0]
    index = [0] * ids.ndim
    index[axis] = slice(None)
    return Layout(axis, np.ascontiguousarray(ids[tuple(index)], dtype=np.int64))
