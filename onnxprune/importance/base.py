"""The one interface every importance criterion implements.

A criterion turns what the pipeline observed about one *watched tensor* (the activation
the rest of the net consumes from a group of channels) into one score per channel.
Higher score = more important = kept first. Criteria that need activations receive them
batch by batch through an accumulator (streaming: only small per-channel state is kept);
criteria that only need weights (L1 magnitude) score the producer's weight instead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np


class ChannelAccumulator(ABC):
    """Per-watched-tensor streaming state of a criterion."""

    @abstractmethod
    def update(self, activation: np.ndarray) -> None:
        """Fold in one batch. ``activation`` has shape (N, C, *spatial), channel axis 1."""

    @abstractmethod
    def scores(self) -> np.ndarray:
        """Importance per channel, shape (C,), float64, finite."""


class Importance(ABC):
    """An importance criterion: OCNNA, ODF2NNA, L1, random, APoZ, ..."""

    name: ClassVar[str]
    needs_activations: ClassVar[bool] = True

    def accumulator(self, num_channels: int) -> ChannelAccumulator:
        """A fresh accumulator for one watched tensor with ``num_channels`` channels."""
        raise NotImplementedError(f"{self.name} does not score activations")

    def weight_scores(self, weight: np.ndarray) -> np.ndarray:
        """Scores from a producer weight whose axis 0 is the output channel."""
        raise NotImplementedError(f"{self.name} does not score weights")
