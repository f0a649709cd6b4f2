"""Streamed ridge least squares: the normal equations X^T X, X^T Y of a multi-output
regression with intercept, accumulated batch by batch in float64.

Memory is the d x d and d x m sums (plus one chunk of rows), whatever the number of rows,
which is what lets reconstruction use every position of every D_var sample. The ridge is
chosen on held-out rows when asked (``choose_ridge``), from the same kind of sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: float64 elements per chunk of regression rows (bounds the temporaries).
CHUNK_ELEMENTS = 1 << 22
#: Relative ridge strengths ``choose_ridge`` tries.
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass
class Moments:
    """Row count, means and (population) covariances of x and y, one set per conv group."""

    count: int
    mean_x: np.ndarray  # (G, d)
    mean_y: np.ndarray  # (G, m)
    cov_x: np.ndarray  # (G, d, d)
    cov_xy: np.ndarray  # (G, d, m)
    var_y: np.ndarray  # (G, m)

    def __add__(self, other: Moments) -> Moments:
        """The moments of both row sets together (pooled, with the between-means term)."""
        n1, n2 = self.count, other.count
        n = n1 + n2
        if n1 == 0 or n2 == 0:
            return self if n2 == 0 else other
        dx, dy = other.mean_x - self.mean_x, other.mean_y - self.mean_y
        between = n1 * n2 / n**2
        return Moments(
            n,
            self.mean_x + dx * (n2 / n),
            self.mean_y + dy * (n2 / n),
            (n1 * self.cov_x + n2 * other.cov_x) / n + between * dx[:, :, None] * dx[:, None, :],
            (n1 * self.cov_xy + n2 * other.cov_xy) / n + between * dx[:, :, None] * dy[:, None, :],
            (n1 * self.var_y + n2 * other.var_y) / n + between * dy**2,
        )

    def solve(self, w0: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
        """argmin mean|xW + b - y|^2 + lam |W - w0|^2, lam = ridge * mean input variance.

        Solved for the change W - w0, so ridge = 0 gives the least-squares solution
        closest to w0 (minimum-norm change) when the inputs are collinear.
        """
        weights = np.empty_like(w0, dtype=np.float64)
        for g in range(self.cov_x.shape[0]):
            cov_x = self.cov_x[g]
            scale = float(np.mean(np.diag(cov_x)))
            lam = ridge * scale if scale > 0 else ridge
            system = cov_x + lam * np.eye(cov_x.shape[0])
            rhs = self.cov_xy[g] - cov_x @ w0[g]
            try:
                if lam <= 0:
                    raise np.linalg.LinAlgError
                change = np.linalg.solve(system, rhs)
            except np.linalg.LinAlgError:
                change = np.linalg.lstsq(system, rhs, rcond=None)[0]
            weights[g] = w0[g] + change
        bias = self.mean_y - np.einsum("gd,gdm->gm", self.mean_x, weights)
        return weights, bias

    def relative_error(self, w: np.ndarray, b: np.ndarray) -> float:
        """Mean squared error of x W + b against y over the variance of y."""
        spread = np.einsum("gdm,gdm->gm", self.cov_x @ w, w)
        spread -= 2 * np.einsum("gdm,gdm->gm", w, self.cov_xy)
        offset = np.einsum("gd,gdm->gm", self.mean_x, w) + b - self.mean_y
        mse = np.maximum(spread + self.var_y + offset**2, 0.0).sum()
        return float(mse / max(self.var_y.sum(), 1e-30))


class NormalEquations:
    """Streaming sums for a ridge regression with intercept, one system per conv group.

    Rows arrive as x (R, G, d) and y (R, G, m). Sums are taken around the first batch's
    means (a fixed shift), which keeps X^T X well conditioned in float64.
    """

    def __init__(self, groups: int, features: int, outputs: int):
        self.count = 0
        self.shift_x = np.zeros((groups, features))
        self.shift_y = np.zeros((groups, outputs))
        self.sx = np.zeros((groups, features))
        self.sy = np.zeros((groups, outputs))
        self.xx = np.zeros((groups, features, features))
        self.xy = np.zeros((groups, features, outputs))
        self.yy = np.zeros((groups, outputs))

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        if x.shape[0] == 0:
            return
        if self.count == 0:
            self.shift_x = x.mean(axis=0, dtype=np.float64)
            self.shift_y = y.mean(axis=0, dtype=np.float64)
        step = max(1, CHUNK_ELEMENTS // (x.shape[1] * (x.shape[2] + y.shape[2])))
        for start in range(0, x.shape[0], step):
            xc = x[start : start + step] - self.shift_x  # (r, G, d) float64
            yc = y[start : start + step] - self.shift_y
            self.sx += xc.sum(axis=0)
            self.sy += yc.sum(axis=0)
            self.yy += np.einsum("rgm,rgm->gm", yc, yc)
            if xc.shape[1] == 1:  # one system: plain BLAS products
                self.xx[0] += xc[:, 0].T @ xc[:, 0]
                self.xy[0] += xc[:, 0].T @ yc[:, 0]
            else:  # grouped / depthwise: many small systems at once
                self.xx += np.einsum("rgd,rge->gde", xc, xc, optimize=True)
                self.xy += np.einsum("rgd,rgm->gdm", xc, yc, optimize=True)
            self.count += xc.shape[0]

    def moments(self) -> Moments:
        n = max(self.count, 1)
        mx, my = self.sx / n, self.sy / n
        return Moments(
            self.count,
            mx + self.shift_x,
            my + self.shift_y,
            self.xx / n - mx[:, :, None] * mx[:, None, :],
            self.xy / n - mx[:, :, None] * my[:, None, :],
            self.yy / n - my**2,
        )


def choose_ridge(
    fit: Moments, held: Moments, w0: np.ndarray, grid: Sequence[float] = RIDGE_GRID
) -> float:
    """The ridge whose solution on ``fit`` has the smallest error on the held-out rows."""
    errors = [held.relative_error(*fit.solve(w0, ridge)) for ridge in grid]
    return float(grid[int(np.argmin(errors))])
