"""Decays of learning rate, entropy coefficient and clip range over training progress."""

from __future__ import annotations


def decayed(start: float, end: float, kind: str, progress: float) -> float:
    """Value at ``progress`` in [0, 1]: constant, linear from start to end, or exponential.

    The exponential decay interpolates geometrically, start * (end/start) ** progress, so both
    decays reach ``end`` exactly at the end of training.
    """
    progress = min(max(progress, 0.0), 1.0)
    if kind == "none":
        return start
    if kind == "linear":
        return start + (end - start) * progress
    if kind == "exponential":
        if start <= 0 or end <= 0:
            return start + (end - start) * progress  # geometric decay needs positive ends
        return start * (end / start) ** progress
    raise ValueError(f"unknown decay {kind!r}")
