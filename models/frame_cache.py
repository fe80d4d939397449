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
    """Feature rows by frame, at most `capacity` of them, least recently used evicted first.

    The rows live in one table of slots (grown by doubling up to `capacity`), not one small tensor
    each: on envs whose frames never repeat (POPGym's continuous observations) a tensor per row,
    allocated between a step's large temporaries, fragmented the heap until the process held
    ~400 KB per cached row (16 GB, then the OOM killer, within one HELM run).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._slots: OrderedDict[bytes, int] = OrderedDict()  # frame key -> its row of the table
        self._table: torch.Tensor | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._slots)

    def clear(self) -> None:
        self._slots.clear()
        self._table = None

    def reset_stats(self) -> None:
        self.hits = self.misses = 0

    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def interval_log(self, prefix: str) -> dict[str, float]:
        """`<prefix>/cache_entries` and `<prefix>/cache_hit_rate` since the previous call, for TensorBoard."""
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
        occurrence). Cached rows are the very values `compute` returned the first time; the rows
        returned are copies, which later lookups never change.
        """
        keys = [frame_key(frames[i]) for i in range(len(frames))]
        rows: list[torch.Tensor | None] = [None] * len(keys)
        hit_at: list[int] = []  # frame indices found in the table, and their slots
        hit_slots: list[int] = []
        first_miss: dict[bytes, int] = {}  # key -> position among the computed rows
        to_compute: list[int] = []
        for i, key in enumerate(keys):
            slot = self._slots.get(key)
            if slot is not None:
                self._slots.move_to_end(key)
                hit_at.append(i)
                hit_slots.append(slot)
                self.hits += 1
            elif key in first_miss:
                self.hits += 1
            else:
                first_miss[key] = len(to_compute)
                to_compute.append(i)
                self.misses += 1
        if hit_at:  # read before this call's new rows can take any slot
            found = self._table[torch.as_tensor(hit_slots, device=self._table.device)]
            for n, i in enumerate(hit_at):
                rows[i] = found[n]
        if to_compute:
            new = compute(to_compute)
            for i, key in enumerate(keys):
                if rows[i] is None:
                    rows[i] = new[first_miss[key]]
            if self.capacity:
                self._store(first_miss, new)
        return rows  # type: ignore[return-value]

    def _store(self, first_miss: dict[bytes, int], new: torch.Tensor) -> None:
        """Put the computed rows in free slots, or in those of the least recently used frames."""
        written: dict[int, int] = {}  # slot -> row of `new` (a later row wins a slot reused in this call)
        for key, j in first_miss.items():
            if len(self._slots) < self.capacity:
                slot = len(self._slots)
            else:
                _, slot = self._slots.popitem(last=False)
            self._slots[key] = slot
            written[slot] = j
        needed = max(written) + 1
        if self._table is None or self._table.shape[0] < needed:
            rows = min(self.capacity, max(needed, 2 * (0 if self._table is None else self._table.shape[0]), 1024))
            table = new.new_empty((rows, *new.shape[1:]))
            if self._table is not None:
                table[:self._table.shape[0]] = self._table
            self._table = table
        slots = torch.as_tensor(list(written), device=new.device)
        self._table[slots] = new[torch.as_tensor(list(written.values()), device=new.device)].detach()
