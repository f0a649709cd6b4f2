"""APoZ (Hu et al. 2016): channels that are mostly zero after ReLU do little work.

Importance = 1 - APoZ = fraction of non-zero activations per channel over samples and
positions, so that, like every criterion here, higher means more important.
"""

from __future__ import annotations

import numpy as np

from onnxprune.errors import DataError
from onnxprune.importance.base import ChannelAccumulator, Importance


class NonZeroAccumulator(ChannelAccumulator):
    """Streaming exact counts of non-zero activations per channel."""

    def __init__(self, num_channels: int) -> None:
        self.num_channels = num_channels
        self.count = 0
        self._nonzero = np.zeros(num_channels, dtype=np.int64)

    def update(self, activation: np.ndarray) -> None:
        activation = np.asarray(activation)
        if activation.ndim < 2 or activation.shape[1] != self.num_channels:
            raise ValueError(
                f"expected activation (N, {self.num_channels}, ...), got {activation.shape}"
            )
        n, c = activation.shape[:2]
        x = activation.reshape(n, c, int(np.prod(activation.shape[2:])))
        self._nonzero += np.count_nonzero(x, axis=(0, 2))
        self.count += n * x.shape[2]

    def shard_twin(self) -> NonZeroAccumulator:
        return NonZeroAccumulator(self.num_channels)

    def merge_shard(self, part: ChannelAccumulator) -> None:
        """Add a shard's counts: integers, so exact in any order."""
        assert isinstance(part, NonZeroAccumulator)
        self._nonzero += part._nonzero
        self.count += part.count

    @property
    def apoz(self) -> np.ndarray:
        """Average percentage of zeros per channel, as a fraction in [0, 1]."""
        return 1.0 - self.scores()

    def scores(self) -> np.ndarray:
        if self.count == 0:
            raise DataError("APoZ needs at least one observed activation per channel")
        return self._nonzero / np.float64(self.count)


class APoZ(Importance):
    """1 - Average Percentage of Zeros of each channel's activation."""

    name = "apoz"
    needs_activations = True

    def accumulator(self, num_channels: int) -> NonZeroAccumulator:
        return NonZeroAccumulator(num_channels)
