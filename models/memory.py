"""The memory interface every agent's memory implements, trained or frozen (after POPGym's).

A memory turns a sequence of per-step inputs into per-step outputs that can depend on the past.
Its state is explicit and owned by the caller (the rollout, the evaluation loop, eval.py):

* ``initial_state(n)``: the state of an empty memory for ``n`` envs;
* ``step(x, state, starts) -> (y, state)``: one env step; rows where ``starts`` is True begin a
  new episode and forget everything first;
* ``scan(xs, state, starts) -> (ys, state)``: a whole ``[T, B, ...]`` sequence, equal to a loop of
  ``step`` (trained memories run it at once, which is how the PPO update re-runs them);
* ``peek(x, state, starts) -> y``: what ``step`` would return, with no effect on ``state``;
* ``trainable``: trained memories are re-run over whole env sequences in the update; frozen ones
  (the pretrained LMs) are run once per env step and their outputs stored with the rollout.

A trained memory's state is a dict of tensors with the env rows first, so the trainer can slice
and store it. A frozen LM's state may be a richer object whose key/value buffers its ``step``
updates in place for speed; those buffers belong to the state, never to the module.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

State = Any  # a dict of [n_envs, ...] tensors for trained memories; memory-specific for frozen LMs


class Memory(nn.Module):
    """Per-env memory of a stream of inputs. Subclasses set `in_dim`, `out_dim` and implement
    `initial_state` and `step`; `scan` and `peek` have correct (if slow) defaults."""

    trainable: bool = False
    in_dim: int
    out_dim: int

    def initial_state(self, n: int) -> State:
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: State, starts: torch.Tensor) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def scan(self, xs: torch.Tensor, state: State, starts: torch.Tensor) -> tuple[torch.Tensor, State]:
        """xs [T, B, ...], starts [T, B] -> ys [T, B, out_dim] and the state after the last step."""
        ys = []
        for x, start in zip(xs, starts):
            y, state = self.step(x, state, start)
            ys.append(y)
        return torch.stack(ys), state

    def peek(self, x: torch.Tensor, state: State, starts: torch.Tensor) -> torch.Tensor:
        """`step`'s output, its new state discarded. Memories whose `step` writes into the state in
        place override this with a path that never writes."""
        return self.step(x, state, starts)[0]


class NoMemory(Memory):
    """The identity: a memory-free agent (CNN-PPO) acts on its current input alone."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_dim = self.out_dim = dim

    def initial_state(self, n: int) -> State:
        return {}

    def step(self, x: torch.Tensor, state: State, starts: torch.Tensor) -> tuple[torch.Tensor, State]:
        return x, state


def select_rows(state: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The state of some envs (a trained memory's state dict; env rows first)."""
    return {name: value[rows] for name, value in state.items()}


def detached(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of a trained memory's state that later steps cannot change (a CUDA graph writes its state in place)."""
    return {name: value.detach().clone() for name, value in state.items()}
