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

from onnxprune.errors import ParameterError


class ChannelAccumulator(ABC):
    """Per-watched-tensor streaming state of a criterion."""

    @abstractmethod
    def update(self, activation: np.ndarray) -> None:
        """Fold in one batch. ``activation`` has shape (N, C, *spatial), channel axis 1."""

    @abstractmethod
    def scores(self) -> np.ndarray:
        """Importance per channel, shape (C,), float64, finite."""

    def shard_twin(self) -> ChannelAccumulator:
        """An empty accumulator a worker process fills from one shard of the samples
        (``--workers``); ``merge_shard`` folds it back. State without an exact merge
        is refused rather than merged approximately."""
        raise ParameterError(
            f"{type(self).__name__} cannot be merged exactly across worker processes: "
            "use --workers 1"
        )

    def merge_shard(self, part: ChannelAccumulator) -> None:
        """Fold in a filled ``shard_twin``; shards merged in order leave this state bit
        for bit as one process observing every sample would."""
        raise NotImplementedError


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
