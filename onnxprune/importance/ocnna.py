"""OCNNA: coefficient of variation of the PCA(0.95)-reduced Frobenius norm of feature maps.

For each sample n and channel c the feature map A (H x W, rows = samples, columns =
features, as scikit-learn's PCA sees it) is reduced to
``F[n, c] = ||PCA(n_components=0.95).fit_transform(A)||_F`` and channel c scores
``std_n(F[:, c]) / mean_n(F[:, c])``. A channel whose response barely changes from one
input to the next carries little information and is pruned first.

``||PCA(0.95).fit_transform(A)||_F^2`` is the sum of the first r eigenvalues of the
centred Gram matrix, so instead of one SVD per map we build all Gram matrices of a chunk
with one batched matmul and get every spectrum from one batched ``eigvalsh`` call. Gram
matrices of at most 3 x 3 (maps with 4 rows or 3 columns or fewer, common deep in a CNN)
use closed-form spectra instead, since LAPACK's per-matrix overhead dominates there; on a
GPU torch solves them all (``device="cuda"``). docs/performance.md has the timings.
"""

from __future__ import annotations

import functools

import numpy as np

from onnxprune import progress
from onnxprune.blas import one_blas_thread
from onnxprune.errors import DataError, ParameterError
from onnxprune.importance.base import ChannelAccumulator, Importance
from onnxprune.importance.odf2nna import MomentsAccumulator

#: Fraction of variance the kept principal components must exceed (the paper's 95%).
EXPLAINED_VARIANCE = 0.95

#: float64 bytes a chunk of maps may use for its centred copy plus its Gram matrices.
#: Timing is roughly flat from 512 to 4096 maps per chunk, so this mostly bounds memory.
CHUNK_BYTES = 32 * 2**20

#: Maps with at most this many rows (and no more rows than columns) are centred with a
#: Helmert projection, one row fewer; past it the saving no longer pays for the product.
HELMERT_MAX_ROWS = 16


def _components_needed(ratio_cumsum: np.ndarray) -> np.ndarray:
    """Components to keep, scikit-learn's rule: first index where the cumsum is > 0.95.

    ``searchsorted(cumsum, 0.95, side="right") + 1`` on a non-decreasing cumsum is the
    count of entries <= 0.95 plus one; we count instead so it works on a batch. Capped at
    the number of components (rounding can leave the last cumsum a hair under 1).
    """
    k = ratio_cumsum.shape[-1]
    count = np.count_nonzero(ratio_cumsum <= EXPLAINED_VARIANCE, axis=-1)
    return np.minimum(count + 1, k)


@functools.cache
def _helmert(h: int) -> np.ndarray:
    """(h-1, h) orthonormal rows orthogonal to ones: ``Q @ A`` centres A's columns and
    drops the direction centring zeroes, so 4 x 4 maps get a closed-form 3 x 3 Gram."""
    q = np.zeros((h - 1, h))
    for k in range(1, h):
        q[k - 1, :k] = 1.0
        q[k - 1, k] = -float(k)
        q[k - 1] /= np.sqrt(k * (k + 1.0))
    q.flags.writeable = False
    return q


def _centred_gram(maps: np.ndarray) -> np.ndarray:
    """(B, m, m) float64 Gram matrices whose spectra are the maps' PCA variances."""
    b, h, w = maps.shape
    x = maps.astype(np.float64)  # the one float64 copy of the chunk
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf are reported later
        # Shift by the first row before centring: the column variance is unchanged and a
        # constant column becomes exactly 0, so constant maps give exactly F = 0.
        x -= x[:, :1, :]
        if h - 1 <= w and h <= HELMERT_MAX_ROWS:
            y = np.matmul(_helmert(h), x)
            return np.matmul(y, y.transpose(0, 2, 1))
        x -= x.mean(axis=1, keepdims=True)
        # The nonzero spectrum of Xc^T Xc and Xc Xc^T is the same; take the smaller one.
        xt = x.transpose(0, 2, 1)
        return np.matmul(x, xt) if h <= w else np.matmul(xt, x)


def _small_gram(maps: np.ndarray) -> np.ndarray:
    """(m, m, B) Gram matrices for m = min(H - 1, W) <= 3, maps in the last axis: one
    vectorised pass per step instead of numpy's ~0.3 us per-matrix matmul loop."""
    h, w = maps.shape[1:]
    x = np.moveaxis(maps, 0, -1).astype(np.float64, order="C")  # (H, W, B) copy
    with np.errstate(invalid="ignore", over="ignore"):
        x -= x[:1]  # exact zeros for constant columns, as in _centred_gram
        if h - 1 <= w:
            y = np.tensordot(_helmert(h), x, axes=1)  # (H - 1, W, B), centred
            return np.einsum("iwb,jwb->ijb", y, y)
        x -= x.mean(axis=0)
        return np.einsum("hib,hjb->ijb", x, x)


def _spectrum_2x2(g: np.ndarray) -> np.ndarray:
    """Descending eigenvalues (2, B) of symmetric matrices given as (2, 2, B)."""
    a, c, b = g[0, 0], g[1, 1], g[0, 1]
    top = 0.5 * (a + c) + np.hypot(0.5 * (a - c), b)
    return np.stack([top, (a + c) - top])


def _spectrum_3x3(g: np.ndarray) -> np.ndarray:
    """Descending eigenvalues (3, B) of symmetric matrices given as (3, 3, B).

    The trigonometric closed form (Smith 1961): far faster than LAPACK on tiny matrices
    and accurate to ~1e-8 of the largest eigenvalue even for repeated eigenvalues.
    """
    a, b, c = g[0, 0], g[1, 1], g[2, 2]
    d, e, f = g[0, 1], g[0, 2], g[1, 2]
    q = (a + b + c) / 3.0
    p = np.sqrt(((a - q) ** 2 + (b - q) ** 2 + (c - q) ** 2 + 2 * (d * d + e * e + f * f)) / 6)
    s = np.where(p > 0, p, 1.0)  # p == 0: a multiple of I, every eigenvalue is q
    a, b, c, d, e, f = (a - q) / s, (b - q) / s, (c - q) / s, d / s, e / s, f / s
    det = a * (b * c - f * f) - d * (d * c - f * e) + e * (d * f - b * e)
    phi = np.arccos(np.clip(0.5 * det, -1.0, 1.0)) / 3.0
    top = q + 2 * p * np.cos(phi)
    low = q + 2 * p * np.cos(phi + 2 * np.pi / 3)
    return np.stack([top, 3 * q - top - low, low])


def _kept_energy(eig: np.ndarray) -> np.ndarray:
    """Sum of the first r of each column of descending ``eig`` (m, B), r by the 0.95 rule.

    Only maps with trace > 0 get here, so the totals are > 0. The ratio is formed before
    the cumsum, as scikit-learn does, so roundoff at 0.95 matches it.
    """
    eig = np.maximum(eig, 0.0)  # roundoff can make tiny eigenvalues negative
    ratio = eig / eig.sum(axis=0)
    r = _components_needed(np.cumsum(ratio, axis=0).T)
    return np.take_along_axis(np.cumsum(eig, axis=0), (r - 1)[None, :], axis=0)[0]


def _pca95_chunk(maps: np.ndarray) -> np.ndarray:
    """F for a (B, H, W) chunk with H, W >= 2; float64 result of shape (B,)."""
    h, w = maps.shape[1:]
    small = min(h - 1, w) <= 3
    gram = _small_gram(maps) if small else _centred_gram(maps)
    if not np.isfinite(gram).all():
        raise DataError("activations contain NaN or infinity; cannot score channels")
    out = np.zeros(maps.shape[0], dtype=np.float64)
    total = np.einsum("iib->b", gram) if small else np.trace(gram, axis1=1, axis2=2)
    live = total > 0  # trace = sum of the eigenvalues, >= 0
    if not live.any():
        return out  # every map constant: skip the eigen-solver entirely
    if not live.all():  # dead (post-ReLU all-zero) maps are common: don't solve them
        gram = gram[..., live] if small else gram[live]
    m = gram.shape[1]
    if not small:
        eig = np.linalg.eigvalsh(gram)[:, ::-1].T  # one LAPACK call per map: the floor
    elif m == 3:
        eig = _spectrum_3x3(gram)
    elif m == 2:
        eig = _spectrum_2x2(gram)
    else:
        eig = gram[0]
    out[live] = np.sqrt(_kept_energy(eig))
    return out


def _frobenius(maps: np.ndarray) -> np.ndarray:
    """Plain Frobenius norm over the last two axes, accumulated in float64."""
    sq = np.einsum("...ij,...ij->...", maps, maps, dtype=np.float64)
    return np.sqrt(sq)


def _pca95_chunk_torch(maps: np.ndarray, device: str) -> np.ndarray:
    """F for a (B, H, W) chunk with torch (float32) on ``device``: the GPU path, where
    one batched eigvalsh call needs no closed forms (matches scikit-learn to ~1e-6)."""
    import torch

    x = torch.as_tensor(np.ascontiguousarray(maps)).to(device=device, dtype=torch.float32)
    h, w = x.shape[1:]
    x = x - x[:, :1]  # exact zeros for constant columns, as in _centred_gram
    x = x - x.mean(dim=1, keepdim=True)
    gram = x @ x.transpose(1, 2) if h <= w else x.transpose(1, 2) @ x
    if not bool(torch.isfinite(gram).all()):
        raise DataError("activations contain NaN or infinity; cannot score channels")
    live = gram.diagonal(dim1=1, dim2=2).sum(dim=-1) > 0
    out = np.zeros(maps.shape[0], dtype=np.float64)
    if bool(live.any()):
        eig = torch.linalg.eigvalsh(gram[live]).flip(-1)  # descending
        out[live.cpu().numpy()] = np.sqrt(_kept_energy(eig.double().cpu().numpy().T))
    return out


def _torch_has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # a missing or broken torch install: the CPU path needs none
        return False


def pca95_frobenius(
    maps: np.ndarray, *, chunk_size: int | None = None, device: str = "cpu"
) -> np.ndarray:
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
    ``device`` other than "cpu" computes the spectra with torch there (float32).
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
    with one_blas_thread():
        for r0 in range(0, rows.shape[0], step):
            flat = rows[r0 : r0 + step].reshape(-1, h, w)
            base = r0 * per_row
            for start in range(0, flat.shape[0], chunk_size):
                part = flat[start : start + chunk_size]
                out[base + start : base + start + part.shape[0]] = (
                    _pca95_chunk(part) if device == "cpu" else _pca95_chunk_torch(part, device)
                )
    return out.reshape(lead)


def coefficient_of_variation(frobenius: np.ndarray) -> np.ndarray:
    """OCNNA score per channel from an (N, C) F matrix: std_n / mean_n, 0 for dead channels
    (F >= 0, so mean 0 means the channel never responds: the lowest score, not 0/0)."""
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
    """Keeps only the N x C matrix of F, so shards can be concatenated exactly.

    With ``keep_frobenius=False`` F is folded into running per-channel moments instead
    (Chan et al., as ODF2NNA does): memory stays O(C) however many samples stream by,
    and the scores agree with the exact ones to roundoff (~1e-15).
    """

    def __init__(
        self,
        num_channels: int,
        chunk_size: int | None = None,
        device: str = "cpu",
        keep_frobenius: bool = True,
    ) -> None:
        self.num_channels = num_channels
        self.chunk_size = chunk_size
        self.device = device
        self._parts: list[np.ndarray] = []
        self.moments = None if keep_frobenius else MomentsAccumulator(num_channels)

    def shard_twin(self) -> OCNNAAccumulator:
        keep = self.moments is None
        twin = OCNNAAccumulator(self.num_channels, self.chunk_size, self.device, keep)
        if not keep:
            twin.moments = self.moments.shard_twin()
        return twin

    def merge_shard(self, part: ChannelAccumulator) -> None:
        """A shard's F rows go after the earlier shards' (or its moments are replayed)."""
        assert isinstance(part, OCNNAAccumulator)
        if self.moments is not None:
            self.moments.merge_shard(part.moments)
        else:
            self.update_frobenius(part.frobenius)

    def update(self, activation: np.ndarray) -> None:
        activation = np.asarray(activation)
        if activation.ndim < 2 or activation.shape[1] != self.num_channels:
            raise ValueError(
                f"expected activation (N, {self.num_channels}, ...), got {activation.shape}"
            )
        if activation.shape[0] == 0:
            return
        maps = _as_maps(activation)
        self.update_frobenius(pca95_frobenius(maps, chunk_size=self.chunk_size, device=self.device))

    def update_frobenius(self, frobenius: np.ndarray) -> None:
        """Fold in F rows computed elsewhere (another shard or process)."""
        f = np.asarray(frobenius, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.num_channels:
            raise ValueError(f"expected F of shape (N, {self.num_channels}), got {f.shape}")
        if self.moments is not None:
            if len(f):
                self.moments.update(f)
            return
        self._parts.append(f)

    @property
    def frobenius(self) -> np.ndarray:
        """The (N, C) matrix of F seen so far, in update order."""
        if self.moments is not None:
            raise ValueError("this accumulator streams F into moments (keep_frobenius=False)")
        if len(self._parts) != 1:
            parts = self._parts or [np.empty((0, self.num_channels))]
            self._parts = [np.concatenate(parts, axis=0)]
        return self._parts[0]

    def scores(self) -> np.ndarray:
        if self.moments is None:
            return coefficient_of_variation(self.frobenius)
        if self.moments.count == 0:
            raise DataError("OCNNA needs at least one observed sample per channel")
        mean, std = self.moments.mean, self.moments.std
        return np.divide(std, mean, out=np.zeros_like(mean), where=mean > 0)


class OCNNA(Importance):
    """Coefficient of variation of per-sample PCA(0.95) Frobenius norms (Balderas et al.)."""

    name = "ocnna"
    needs_activations = True

    def __init__(
        self, chunk_size: int | None = None, device: str = "cpu", keep_frobenius: bool = True
    ) -> None:
        if chunk_size is not None and chunk_size < 1:
            raise ParameterError(f"ocnna chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        self.device = device
        self.keep_frobenius = keep_frobenius

    def accumulator(self, num_channels: int) -> OCNNAAccumulator:
        return OCNNAAccumulator(num_channels, self.chunk_size, self.device, self.keep_frobenius)


#: Largest N x C matrix of F (float64) a run keeps; past it F streams into moments.
FROBENIUS_BYTES = 256 * 2**20


def for_run(criterion: Importance, device: str, samples: int, channels: int) -> Importance:
    """``criterion`` set up for scoring ``samples`` x ``channels`` maps: OCNNA's spectra on
    the GPU via torch for ``device="cuda"`` (else a one-line notice and the CPU), and the
    exact F matrix kept only under FROBENIUS_BYTES so memory is flat in the sample count."""
    if not isinstance(criterion, OCNNA):
        return criterion
    keep = criterion.keep_frobenius and 8 * samples * channels <= FROBENIUS_BYTES
    where = criterion.device
    if device == "cuda":
        where = "cuda" if _torch_has_cuda() else "cpu"
        if where == "cpu":
            progress.info("note: torch cannot use CUDA here; computing OCNNA spectra on the CPU")
    return OCNNA(criterion.chunk_size, device=where, keep_frobenius=keep)
