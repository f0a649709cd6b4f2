"""Random scores: the floor every real criterion has to beat in the comparisons."""

from __future__ import annotations

import numpy as np

from onnxprune.importance.base import Importance


class RandomImportance(Importance):
    """Uniform random scores from a seeded generator.

    One generator per instance, advanced on every call: the same seed and the same call
    order give the same scores, while different layers still get different rankings.
    """

    name = "random"
    needs_activations = False

    def __init__(self, seed: int | None = 0) -> None:
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def channel_scores(self, num_channels: int) -> np.ndarray:
        """Scores for ``num_channels`` channels when no producer weight is at hand."""
        if num_channels < 0:
            raise ValueError(f"num_channels must be >= 0, got {num_channels}")
        return self._rng.random(num_channels)

    def weight_scores(self, weight: np.ndarray) -> np.ndarray:
        return self.channel_scores(np.shape(weight)[0])
