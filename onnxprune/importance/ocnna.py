"""OCNNA: coefficient of variation of the PCA(0.95)-reduced Frobenius norm of feature maps.

For each sample n and channel c the feature map A (H x W, rows = samples, columns =
features, as scikit-learn's PCA sees it) is reduced to
``F[n, c] = ||PCA(n_components=0.95).fit_transform(A)||_F`` and channel c scores
``std_n(F[:, c]) / mean_n(F[:, c])``. A channel whose response barely changes from one
input to the next carries little information and is pruned first.

``||PCA(0.95).fit_transform(A)||_F^2`` is the sum of the first r eigenvalues of the
centred Gram matrix, so instead of one SVD per map we build all Gram matrices of a chunk
with one batched matmul and get every spectrum from one batched ``eigvalsh`` call.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import numpy as np

from onnxprune.errors import DataError, ParameterError
from onnxprune.importance.base import ChannelAccumulator, Importance

#: Fraction of variance the kept principal components must exceed (the paper's 95%).
EXPLAINED_VARIANCE = 0.95

#: float64 bytes a chunk of maps may use for its centred copy plus its Gram matrices.
#: Timing is roughly flat from 512 to 4096 maps per chunk, so this mostly bounds memory.
CHUNK_BYTES = 32 * 2**20


@functools.cache
def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS, built once (a fresh scan costs ~0.5 ms)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl is optional
        return None
    return ThreadpoolController()


def _one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """Run BLAS/LAPACK single-threaded while solving thousands of tiny matrices.

    OpenBLAS splits even a 64 x 64 eigvalsh or matmul across its threads, and the
    synchronisation costs several times the work: 256 x 64 maps of 64 x 64 took 26 s
    with 2 threads and 1.6 s with one. Without threadpoolctl nothing changes.
    """
    controller = _blas_controller()
    if controller is None:  # pragma: no cover - threadpoolctl is optional
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


def _components_needed(ratio_cumsum: np.ndarray) -> np.ndarray:
    """Components to keep, scikit-learn's rule: first index where the cumsum is > 0.95.

    ``searchsorted(cumsum, 0.95, side="right") + 1`` on a non-decreasing cumsum is the
    count of entries <= 0.95 plus one; we count instead so it works on a batch. Capped at
    the number of components (rounding can leave the last cumsum a hair under 1).
    """
    k = ratio_cumsum.shape[-1]
    count = np.count_nonzero(ratio_cumsum <= EXPLAINED_VARIANCE, axis=-1)
    return np.minimum(count + 1, k)


def _pca95_chunk(maps: np.ndarray) -> np.ndarray:
    """F for a (B, H, W) chunk with H, W >= 2; float64 result of shape (B,)."""
    b, h, w = maps.shape
    x = maps.astype(np.float64)  # the one float64 copy of the chunk
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf are reported below
        # Shift by the first row before centring: the column variance is unchanged and a
        # constant column becomes exactly 0, so constant maps give exactly F = 0.
        x -= x[:, :1, :]
        x -= x.mean(axis=1, keepdims=True)
        # The nonzero spectrum of Xc^T Xc and Xc Xc^T is the same; take the smaller one.
        xt = x.transpose(0, 2, 1)
        gram = np.matmul(x, xt) if h <= w else np.matmul(xt, x)
    del x, xt
    if not np.isfinite(gram).all():
        raise DataError("activations contain NaN or infinity; cannot score channels")

    out = np.zeros(b, dtype=np.float64)
    total = np.trace(gram, axis1=1, axis2=2)  # = sum of eigenvalues, >= 0
    live = total > 0
    if not live.any():
        return out  # every map constant: skip the eigen-solver entirely
    if not live.all():
        gram = gram[live]  # dead (post-ReLU all-zero) maps are common: don't solve them
    eig = np.linalg.eigvalsh(gram)[:, ::-1]  # descending, like singular values
    np.maximum(eig, 0.0, out=eig)  # roundoff can make tiny eigenvalues negative
    # trace > 0 means some eigenvalue is > 0, so the total below is > 0 too. The ratio is
    # formed before the cumsum, as scikit-learn does, so roundoff at 0.95 matches it.
    ratio = eig / eig.sum(axis=1, keepdims=True)
    r = _components_needed(np.cumsum(ratio, axis=1))
    kept = np.take_along_axis(np.cumsum(eig, axis=1), (r - 1)[:, None], axis=1)[:, 0]
    out[live] = np.sqrt(kept)
    return out


def _frobenius(maps: np.ndarray) -> np.ndarray:
    """Plain Frobenius norm over the last two axes, accumulated in float64."""
    sq = np.einsum("...ij,...ij->...", maps, maps, dtype=np.float64)
    return np.sqrt(sq)


def pca95_frobenius(maps: np.ndarray, *, chunk_size: int | None = None) -> np.ndarray:
    """``||PCA(n_components=0.95).fit_transform(A)||_F`` for every H x W map A in ``maps``.

    ``maps`` has shape (..., H, W); the result has shape (...), float64. Matches
    scikit-learn (rows are samples, columns features; components needed = first where the
    cumulative explained-variance ratio is strictly above 0.95, at most min(H, W)).

    Defined edge cases: an all-zero or constant map gives 0; when H == 1 or W == 1 PCA
    is trivial (one sample, or one feature) and the result is the plain, uncentred
    Frobenius norm of A -- so a 1 x 1 map gives |a|. (scikit-learn would give 0 for
    1 x W and the centred norm for H x 1; a dense unit's or Conv1d row's energy is more
    useful, and does not depend on which way the single row/column is laid out.)

    ``chunk_size`` (maps per chunk) only bounds memory; the result does not depend on it.
    """
    maps = np.asarray(maps)
    if maps.ndim < 2:
        raise ValueError(f"maps must have shape (..., H, W), got {maps.shape}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not np.issubdtype(maps.dtype, np.floating):
        maps = maps.astype(np.float64)
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    if h == 1 or w == 1:
        out = _frobenius(maps)
        if not np.isfinite(out).all():
            raise DataError("activations contain NaN or infinity; cannot score channels")
        return out

    if chunk_size is None:
        k = min(h, w)
        chunk_size = max(1, CHUNK_BYTES // (8 * (h * w + k * k)))
    # (A, B, H, W) with A the first leading axis: slicing A before flattening copies at
    # most one chunk when the caller passes a strided view (observe's moveaxis of NHWC).
    per_row = int(np.prod(lead[1:]))
    rows = maps.reshape(lead[0] if lead else 1, per_row, h, w)
    out = np.empty(rows.shape[0] * per_row, dtype=np.float64)
    step = max(1, chunk_size // max(per_row, 1))
    with _one_blas_thread():
        for r0 in range(0, rows.shape[0], step):
            flat = rows[r0 : r0 + step].reshape(-1, h, w)
            base = r0 * per_row
            for start in range(0, flat.shape[0], chunk_size):
                part = flat[start : start + chunk_size]
                out[base + start : base + start + part.shape[0]] = _pca95_chunk(part)
    return out.reshape(lead)


def coefficient_of_variation(frobenius: np.ndarray) -> np.ndarray:
    """OCNNA score per channel from an (N, C) F matrix: std_n / mean_n, 0 for dead channels.

    F >= 0, so mean 0 means F is 0 for every sample: the channel never responds and gets
    the lowest possible score instead of 0/0.
    """
    f = np.asarray(frobenius, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] == 0:
        raise DataError("OCNNA needs at least one observed sample per channel")
    mean = f.mean(axis=0)
    std = (f - f[:1]).std(axis=0)  # shift-invariant; exactly 0 for a constant F
    return np.divide(std, mean, out=np.zeros_like(mean), where=mean > 0)


def _as_maps(activation: np.ndarray) -> np.ndarray:
    """(N, C, *spatial) -> (N, C, H, W) view: dense = 1 x 1, 1-D = 1 x L, 3-D+ = (D*H) x W."""
    n, c, *spatial = activation.shape
    if not spatial:
        return activation.reshape(n, c, 1, 1)
    if len(spatial) == 1:
        return activation.reshape(n, c, 1, spatial[0])
    return activation.reshape(n, c, int(np.prod(spatial[:-1])), spatial[-1])


class OCNNAAccumulator(ChannelAccumulator):
    """Keeps only the N x C matrix of F, so shards can be concatenated exactly."""

    def __init__(self, num_channels: int, chunk_size: int | None = None) -> None:
        self.num_channels = num_channels
        self.chunk_size = chunk_size
        self._parts: list[np.ndarray] = []

    def update(self, activation: np.ndarray) -> None:
        activation = np.asarray(activation)
        if activation.ndim < 2 or activation.shape[1] != self.num_channels:
            raise ValueError(
                f"expected activation (N, {self.num_channels}, ...), got {activation.shape}"
            )
        if activation.shape[0] == 0:
            return
        self.update_frobenius(pca95_frobenius(_as_maps(activation), chunk_size=self.chunk_size))

    def update_frobenius(self, frobenius: np.ndarray) -> None:
        """Fold in F rows computed elsewhere (another shard or process)."""
        f = np.asarray(frobenius, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.num_channels:
            raise ValueError(f"expected F of shape (N, {self.num_channels}), got {f.shape}")
        self._parts.append(f)

    @property
    def frobenius(self) -> np.ndarray:
        """The (N, C) matrix of F seen so far, in update order."""
        if len(self._parts) != 1:
            parts = self._parts or [np.empty((0, self.num_channels))]
            self._parts = [np.concatenate(parts, axis=0)]
        return self._parts[0]

    def scores(self) -> np.ndarray:
        return coefficient_of_variation(self.frobenius)


class OCNNA(Importance):
    """Coefficient of variation of per-sample PCA(0.95) Frobenius norms (Balderas et al.)."""

    name = "ocnna"
    needs_activations = True

    def __init__(self, chunk_size: int | None = None) -> None:
        if chunk_size is not None and chunk_size < 1:
            raise ParameterError(f"ocnna chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size

    def accumulator(self, num_channels: int) -> OCNNAAccumulator:
        return OCNNAAccumulator(num_channels, chunk_size=self.chunk_size)
