"""ODF2NNA: a unit whose output hardly varies over the data can be replaced by its mean.

Score = standard deviation (ddof=0) of each channel's activation over samples and, for
spatial tensors, positions. The pipeline keeps a unit iff its std > epsilon and folds a
removed unit's mean into the next layer's bias, so the accumulator exposes the mean too.
Moments are streamed per batch and merged with Chan et al.'s parallel formula in float64,
which stays accurate where the naive sum(x^2) - n*mean^2 cancels catastrophically.
"""

from __future__ import annotations

import numpy as np

from onnxprune.errors import DataError
from onnxprune.importance.base import ChannelAccumulator, Importance

#: Elements per float64 temporary when computing a batch's squared deviations.
CHUNK_ELEMENTS = 4 * 2**20


def chunk_moments(x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, M2) per channel of one (N, C, positions) chunk, in float64."""
    nb = x.shape[0] * x.shape[2]
    # Deviations from the first value, then from their mean: the same M2, but a
    # constant unit gets exactly std 0 and its exact value as mean, so epsilon = 0
    # removes it and folding its mean into the next bias is exact.
    ref = x[0, :, 0].astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf are reported below
        dev = np.subtract(x, ref[None, :, None], dtype=np.float64)
        shift = dev.mean(axis=(0, 2))
        dev -= shift[None, :, None]
        mean_b = ref + shift
        m2_b = np.einsum("ncp,ncp->c", dev, dev)
    if not (np.isfinite(mean_b).all() and np.isfinite(m2_b).all()):
        raise DataError("activations contain NaN or infinity; cannot score units")
    return nb, mean_b, m2_b


class MomentsAccumulator(ChannelAccumulator):
    """Streaming per-channel count, mean and sum of squared deviations (M2)."""

    def __init__(self, num_channels: int) -> None:
        self.num_channels = num_channels
        self.count = 0
        self._mean = np.zeros(num_channels, dtype=np.float64)
        self._m2 = np.zeros(num_channels, dtype=np.float64)

    def update(self, activation: np.ndarray) -> None:
        activation = np.asarray(activation)
        if activation.ndim < 2 or activation.shape[1] != self.num_channels:
            raise ValueError(
                f"expected activation (N, {self.num_channels}, ...), got {activation.shape}"
            )
        n, c = activation.shape[:2]
        x = activation.reshape(n, c, int(np.prod(activation.shape[2:])))  # (N, C, positions)
        if x.size == 0:
            return
        # Whole samples per chunk so the float64 deviations never exceed CHUNK_ELEMENTS.
        step = max(1, CHUNK_ELEMENTS // (c * x.shape[2]))
        for start in range(0, n, step):
            self.combine(*chunk_moments(x[start : start + step]))

    def combine(self, nb: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        """Chan et al.: fold one chunk's (count, mean, M2) into the running ones. A shard
        worker's chunks replayed here in order give the single-process state bit for bit."""
        total = self.count + nb
        delta = mean_b - self._mean
        self._mean += delta * (nb / total)
        self._m2 += m2_b + delta * delta * (self.count * nb / total)
        self.count = total

    def shard_twin(self) -> MomentsLog:
        return MomentsLog(self.num_channels)

    def merge_shard(self, part: ChannelAccumulator) -> None:
        """Replay a shard's logged chunks: the very combines one process would make."""
        assert isinstance(part, MomentsLog)
        for chunk in part.chunks:
            self.combine(*chunk)

    def _require_data(self) -> None:
        if self.count == 0:
            raise DataError("ODF2NNA needs at least one observed sample per unit")

    @property
    def mean(self) -> np.ndarray:
        """Per-channel mean over samples and positions: what a removed unit is folded as."""
        self._require_data()
        return self._mean.copy()

    @property
    def std(self) -> np.ndarray:
        """Per-channel population standard deviation (ddof=0)."""
        self._require_data()
        return np.sqrt(np.maximum(self._m2, 0.0) / self.count)

    def scores(self) -> np.ndarray:
        return self.std


class MomentsLog(MomentsAccumulator):
    """A worker's moments: each chunk's (count, mean, M2) logged in order, not combined,
    so the coordinator replays them after the earlier shards' (bit-identical)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__(num_channels)
        self.chunks: list[tuple[int, np.ndarray, np.ndarray]] = []

    def combine(self, nb: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        self.chunks.append((nb, mean_b, m2_b))


class ODF2NNA(Importance):
    """Standard deviation of each unit's output over the data (Balderas et al.)."""

    name = "odf2nna"
    needs_activations = True

    def accumulator(self, num_channels: int) -> MomentsAccumulator:
        return MomentsAccumulator(num_channels)
