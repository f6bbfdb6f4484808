"""Deterministic smooth noise fields (band-limited Gaussian-filtered white
noise). Everything takes an explicit ``numpy.random.Generator``: no global
RNG, so a seed reproduces the same arrays bit for bit."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std noise of the given 2-D ``shape``, smoothed with a
    Gaussian of ``sigma`` pixels (wrap mode: no edge artefacts)."""
    field = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)), sigma, mode="wrap")
    std = field.std()
    return (field - field.mean()) / (std if std > 0 else 1.0)


def fractal_noise(
    rng: np.random.Generator, shape: Sequence[int], sigmas: Sequence[float], gain: float = 0.55
) -> np.ndarray:
    """Sum of :func:`smooth_noise` octaves (coarse to fine), amplitudes
    ``gain**k``; normalised to zero mean and unit std."""
    total = np.zeros(tuple(shape))
    for k, sigma in enumerate(sigmas):
        total += gain**k * smooth_noise(rng, shape, sigma)
    std = total.std()
    return (total - total.mean()) / (std if std > 0 else 1.0)


def smooth_path(rng: np.random.Generator, n: int, n_knots: int, scale: float = 1.0) -> np.ndarray:
    """A smooth 1-D random trajectory of length ``n`` (cubic interpolation of
    ``n_knots`` uniform random knots in [-scale, scale])."""
    from scipy.interpolate import CubicSpline

    n_knots = max(2, int(n_knots))
    knots = rng.uniform(-scale, scale, n_knots)
    if n <= 1:
        return knots[:1].copy() if n == 1 else np.zeros(0)
    spline = CubicSpline(np.linspace(0.0, 1.0, n_knots), knots, bc_type="natural")
    return np.clip(spline(np.linspace(0.0, 1.0, n)), -1.5 * scale, 1.5 * scale)
