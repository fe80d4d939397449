"""An exact, bounded LRU cache from observation frames to the features a frozen module computes.

Frozen maps (CLIP's image encoder, HELM's FrozenHopfield) give the same output for the same frame
every time, and environments such as MiniGrid revisit the same frames constantly, so each distinct
frame needs computing once. Keys are a 128-bit digest of the frame's shape and bytes (collisions
are astronomically unlikely, and a key is 16 bytes instead of a frame copy).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch


def frame_key(frame: np.ndarray) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.asarray(frame.shape, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(frame).tobytes())
    return digest.digest()


class FrameCache:
    """Feature rows by frame, at most `capacity` of them, least recently used evicted first."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._rows: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        self._rows.clear()

    def reset_stats(self) -> None:
        self.hits = self.misses = 0

    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def interval_log(self, prefix: str) -> dict[str, float]:
        """`<prefix>/cache_hit_rate` since the previous call and `<prefix>/cache_entries`, for TensorBoard."""
        last_hits, last_misses = getattr(self, "_logged", (0, 0))
        hits, misses = self.hits - last_hits, self.misses - last_misses
        self._logged = (self.hits, self.misses)
        logs = {f"{prefix}/cache_entries": float(len(self))}
        if hits + misses > 0:
            logs[f"{prefix}/cache_hit_rate"] = hits / (hits + misses)
        return logs

    def lookup(self, frames: np.ndarray, compute: Callable[[list[int]], torch.Tensor]) -> list[torch.Tensor]:
        """One feature row per frame; `compute(indices)` is called once, on the distinct misses only.

        A frame repeated within the batch is computed once (and counted as a hit after its first
        occurrence). Cached rows are the very values `compute` returned the first time.
        """
        keys = [frame_key(frames[i]) for i in range(len(frames))]
        rows: list[torch.Tensor | None] = [None] * len(keys)
        first_miss: dict[bytes, int] = {}  # key -> position among the computed rows
        to_compute: list[int] = []
        for i, key in enumerate(keys):
            cached = self._rows.get(key)
            if cached is not None:
                self._rows.move_to_end(key)
                rows[i] = cached
                self.hits += 1
            elif key in first_miss:
                self.hits += 1
            else:
                first_miss[key] = len(to_compute)
                to_compute.append(i)
                self.misses += 1
        if to_compute:
            new = compute(to_compute)
            for key, j in first_miss.items():
                # clone: a view would pin the whole batch's storage for as long as one row lives
                if self.capacity:
                    self._rows[key] = new[j].clone()
            for i, key in enumerate(keys):
                if rows[i] is None:
                    rows[i] = new[first_miss[key]]
            while len(self._rows) > self.capacity:
                self._rows.popitem(last=False)
        return rows  # type: ignore[return-value]
