"""The Fréchet distance between two Gaussians (feature statistics), in float64."""

from __future__ import annotations

import numpy as np
import scipy.linalg


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix; round-off negatives count as 0."""
    eigenvalues, eigenvectors = scipy.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance ||mu1 - mu2||² + tr(S1 + S2 - 2 (S1 S2)^½) between two Gaussians.

    tr (S1 S2)^½ is the sum of the square roots of the eigenvalues of S1^½ S2 S1^½, a symmetric
    PSD matrix with the same spectrum as S1 S2. That takes two `eigh` instead of a general
    `sqrtm`, so singular products and round-off give no imaginary parts or NaNs, and no eps
    offset is needed (pytorch-fid and ADM retry sqrtm with 1e-6 on the diagonal for those).
    """
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(
            f"mu1, mu2: expected two vectors of one length, got {mu1.shape}, {mu2.shape}"
        )
    expected = (mu1.size, mu1.size)
    if sigma1.shape != expected or sigma2.shape != expected:
        raise ValueError(
            f"sigma1, sigma2: expected shape {expected}, got {sigma1.shape}, {sigma2.shape}"
        )
    sqrt_sigma1 = _psd_sqrt((sigma1 + sigma1.T) / 2)
    product = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    product_eigenvalues = scipy.linalg.eigvalsh((product + product.T) / 2)
    trace_sqrt_product = np.sqrt(np.clip(product_eigenvalues, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product)
