"""Trained recurrent memories: an LSTM (the papers' Impala-PPO baseline) and a GRU.

The state is a dict of [n_envs, hidden] tensors; an env's state is zeroed where its episode
starts. `scan` runs the cell over whole stretches between episode starts (one fused call each)
instead of step by step; it equals a loop of `step`.
"""

from __future__ import annotations

import torch
from torch import nn

from models.memory import Memory, State

HIDDEN = 256  # the papers' Impala-PPO LSTM, and POPGym's memories


class _RecurrentMemory(Memory):
    """A one-layer torch RNN (`nn.LSTM` or `nn.GRU`) behind the memory interface."""

    trainable = True
    state_names: tuple[str, ...] = ()

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.rnn = rnn
        self.in_dim, self.out_dim = rnn.input_size, rnn.hidden_size

    def initial_state(self, n: int) -> State:
        weight = self.rnn.weight_hh_l0
        return {name: weight.new_zeros(n, self.out_dim) for name in self.state_names}

    def _run(self, xs: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        """The RNN over xs [T, B, in] from `state`, rows marked in `reset` [B] zeroed first."""
        keep = (~reset).to(xs.dtype)[:, None]
        carried = tuple((state[name] * keep)[None] for name in self.state_names)
        out, new = self.rnn(xs, carried if len(carried) > 1 else carried[0])
        new = new if isinstance(new, tuple) else (new,)
        return out, {name: value[0] for name, value in zip(self.state_names, new)}

    def step(self, x: torch.Tensor, state: State, starts: torch.Tensor) -> tuple[torch.Tensor, State]:
        out, state = self._run(x[None], state, starts)
        return out[0], state

    def scan(self, xs: torch.Tensor, state: State, starts: torch.Tensor) -> tuple[torch.Tensor, State]:
        steps = xs.shape[0]
        cuts = torch.nonzero(starts[1:].any(dim=1)).flatten().add(1).tolist()
        outs = []
        for begin, end in zip([0, *cuts], [*cuts, steps]):
            out, state = self._run(xs[begin:end], state, starts[begin])
            outs.append(out)
        return torch.cat(outs), state


class LSTMMemory(_RecurrentMemory):
    """One LSTM layer: the papers' Impala-PPO memory (LSTM-PPO)."""

    state_names = ("h", "c")

    def __init__(self, in_dim: int, hidden: int = 256) -> None:
        super().__init__(nn.LSTM(in_dim, hidden))

    @classmethod
    def from_config(cls, in_dim: int, cfg: dict) -> LSTMMemory:
        return cls(in_dim, HIDDEN)


class GRUMemory(_RecurrentMemory):
    """One GRU layer, the same width as the LSTM: POPGym's strongest memory."""

    state_names = ("h",)

    def __init__(self, in_dim: int, hidden: int = 256) -> None:
        super().__init__(nn.GRU(in_dim, hidden))

    @classmethod
    def from_config(cls, in_dim: int, cfg: dict) -> GRUMemory:
        return cls(in_dim, HIDDEN)
