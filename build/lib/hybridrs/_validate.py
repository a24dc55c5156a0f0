"""Argument checks shared by the public functions.

Every check raises ``ValueError`` naming the argument, so that bad input never becomes a silently
wrong certificate.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np


def probability(value, name: str, *, allow_array: bool = True) -> np.ndarray:
    """Return ``value`` as a float64 array after checking that it lies in [0, 1] with no NaN."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number or an array of numbers, got {value!r}") from exc
    if arr.ndim > 1 or (arr.ndim == 1 and not allow_array):
        raise ValueError(f"{name} must be a scalar{' or a 1-D array' if allow_array else ''}, "
                         f"got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    if ((arr < 0) | (arr > 1)).any():
        bad = arr[(arr < 0) | (arr > 1)].ravel()[0]
        raise ValueError(f"{name} must lie in [0, 1], got {bad!r}")
    return arr


def open_unit(value, name: str) -> float:
    """A float strictly inside (0, 1) (used for τ and α)."""
    v = real(value, name)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
    return v


def real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)):
        try:
            value = float(np.asarray(value, dtype=np.float64).item())
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be a real number, got {value!r}") from exc
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"{name} is NaN")
    return v


def positive(value, name: str) -> float:
    v = real(value, name)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def nonnegative(value, name: str) -> float:
    v = real(value, name)
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def beta(value, name: str = "beta") -> float:
    v = real(value, name)
    if not 0.0 < v <= 1.0:
        raise ValueError(f"{name} must lie in (0, 1], got {value!r}")
    return v


def integer(value, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (Integral, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v
