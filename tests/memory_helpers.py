"""Test helpers for the memories."""

from __future__ import annotations

import torch

from models.memory import Memory


class Fed:
    """A memory and the state the caller feeds it (`step` and `peek` as they were when the memory held it)."""

    def __init__(self, memory: Memory, n: int) -> None:
        self.memory, self.state = memory, memory.initial_state(n)

    def step(self, x: torch.Tensor, starts) -> torch.Tensor:
        out, self.state = self.memory.step(x, self.state, starts)
        return out

    def peek(self, x: torch.Tensor, starts) -> torch.Tensor:
        return self.memory.peek(x, self.state, starts)
