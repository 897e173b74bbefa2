"""Feature statistics (mean, covariance) in float64, and reference-statistics files.

A reference file is an npz with `mu` (D,) and `sigma` (D, D): the layout of the ADM evaluation
suite's reference batches (e.g. VIRTUAL_imagenet64_labeled.npz, which also holds the images as
`arr_0`) and of what `python -m mcm_jax.eval.fid.reference` writes. Both are read and written
through etils.epath (local or gs://).
"""

from __future__ import annotations

import numpy as np
from etils import epath

from mcm_jax import files

REFERENCE_KEYS = ("mu", "sigma")


class StatisticsAccumulator:
    """Streaming mean and covariance (ddof=1, as np.cov) of feature batches, on host in float64.

    Sums are taken around the first batch's mean, so a large common offset of the features
    does not cancel catastrophically in the covariance.
    """

    def __init__(self) -> None:
        self.count = 0
        self._shift: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._sum_outer: np.ndarray | None = None

    def update(self, features: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add a (batch, dim) batch; rows where `mask` is False (padding) are skipped."""
        features = np.asarray(features, np.float64)
        if features.ndim != 2:
            raise ValueError(f"features: expected shape (batch, dim), got {features.shape}")
        if mask is not None:
            features = features[np.asarray(mask, bool)]
        if not len(features):
            return
        if self._shift is None:
            self._shift = features.mean(axis=0)
            self._sum = np.zeros_like(self._shift)
            self._sum_outer = np.zeros((self._shift.size, self._shift.size))
        elif features.shape[1] != self._shift.size:
            raise ValueError(f"features: expected dim {self._shift.size}, got {features.shape[1]}")
        centered = features - self._shift
        self._sum += centered.sum(axis=0)
        self._sum_outer += centered.T @ centered
        self.count += len(features)

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) in float64 of everything added so far (at least two rows)."""
        if self.count < 2:
            raise ValueError(f"need at least 2 feature rows for a covariance, got {self.count}")
        mean_offset = self._sum / self.count
        scatter = self._sum_outer - self.count * np.outer(mean_offset, mean_offset)
        sigma = scatter / (self.count - 1)
        return self._shift + mean_offset, sigma


def compute_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) in float64 of (N, dim) features: np.mean and np.cov(rowvar=False)."""
    accumulator = StatisticsAccumulator()
    accumulator.update(features)
    return accumulator.finalize()


def load_reference_statistics(path: epath.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) float64 from an npz with `mu` and `sigma` (ADM's reference batches, or ours).

    Only those two members are read, not a reference batch's images.
    """
    members = files.read_npz_members(
        path, REFERENCE_KEYS, what="reference statistics",
        hint="an FID reference npz holds 'mu' (D,) and 'sigma' (D, D)",
    )
    mu, sigma = members["mu"].astype(np.float64), members["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise ValueError(
            f"reference statistics {path}: expected mu (D,) and sigma (D, D), "
            f"got {mu.shape} and {sigma.shape}"
        )
    return mu, sigma


def save_reference_statistics(path: epath.PathLike, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Write `mu` and `sigma` (float64) atomically as a pickle-free npz, the layout of ADM's."""
    files.save_npz(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))
