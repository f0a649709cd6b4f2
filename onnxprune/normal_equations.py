"""Streamed ridge least squares: the normal equations X^T X, X^T Y of a multi-output
regression with intercept, accumulated batch by batch in float64.

Memory is the d x d and d x m sums (plus one chunk of rows), whatever the number of rows,
which is what lets reconstruction use every position of every D_var sample.
"""

from __future__ import annotations

import numpy as np

#: float64 elements per chunk of regression rows (bounds the temporaries).
CHUNK_ELEMENTS = 1 << 22


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

    def _moments(self):
        n = self.count
        mx, my = self.sx / n, self.sy / n
        cov_x = self.xx / n - mx[:, :, None] * mx[:, None, :]
        cov_xy = self.xy / n - mx[:, :, None] * my[:, None, :]
        var_y = self.yy / n - my**2
        return mx + self.shift_x, my + self.shift_y, cov_x, cov_xy, var_y

    def solve(self, w0: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
        """argmin mean|xW + b - y|^2 + lam |W - w0|^2, lam = ridge * mean input variance.

        Solved for the change W - w0, so ridge = 0 gives the least-squares solution
        closest to w0 (minimum-norm change) when the inputs are collinear.
        """
        mx, my, cov_x, cov_xy, _ = self._moments()
        weights = np.empty_like(w0, dtype=np.float64)
        for g in range(cov_x.shape[0]):
            scale = float(np.mean(np.diag(cov_x[g])))
            lam = ridge * scale if scale > 0 else ridge
            system = cov_x[g] + lam * np.eye(cov_x.shape[1])
            rhs = cov_xy[g] - cov_x[g] @ w0[g]
            try:
                if lam <= 0:
                    raise np.linalg.LinAlgError
                change = np.linalg.solve(system, rhs)
            except np.linalg.LinAlgError:
                change = np.linalg.lstsq(system, rhs, rcond=None)[0]
            weights[g] = w0[g] + change
        bias = my - np.einsum("gd,gdm->gm", mx, weights)
        return weights, bias

    def relative_error(self, w: np.ndarray, b: np.ndarray) -> float:
        """Mean squared error of x W + b against y over its variance, from the sums."""
        mx, my, cov_x, cov_xy, var_y = self._moments()
        spread = np.einsum("gdm,gdm->gm", cov_x @ w, w) - 2 * np.einsum("gdm,gdm->gm", w, cov_xy)
        offset = np.einsum("gd,gdm->gm", mx, w) + b - my
        mse = np.maximum(spread + var_y + offset**2, 0.0).sum()
        return float(mse / max(var_y.sum(), 1e-30))
