"""L1 weight magnitude: the classic data-free baseline (Li et al., "Pruning Filters")."""

from __future__ import annotations

import numpy as np

from onnxprune.importance.base import Importance


class L1Magnitude(Importance):
    """Score = sum of |w| of each output channel's weights; needs no data at all."""

    name = "l1"
    needs_activations = False

    def weight_scores(self, weight: np.ndarray) -> np.ndarray:
        w = np.asarray(weight)
        if w.ndim == 0:
            raise ValueError("weight must have an output-channel axis 0")
        flat = w.reshape(w.shape[0], int(np.prod(w.shape[1:])))
        return np.abs(flat.astype(np.float64, copy=False)).sum(axis=1)
