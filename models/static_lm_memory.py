"""The frozen LM memory with a static-shape step, so that a CUDA graph can capture it.

`LMMemory`'s step decides on the host how many slots to read, when to move the live tokens to
the front and when to re-encode: cheap decisions in eager mode, but each one reads a device
value (a device-host sync) or changes a tensor's shape, and a captured graph can do neither.
Here nothing depends on the data:

* every row keeps its keys and values in a ring of `capacity` slots per layer (token a lives in
  slot a % capacity), written in place; `capacity` is the window's mem_len - 1 old tokens plus
  the k new ones, rounded up to a multiple of 16 (aligned rows suit the fused attention kernels);
* every step reads all slots and masks what a row may not see (empty, stale, another episode's,
  beyond the window), so the keys' shape never changes;
* the token count `t`, the episode starts and the slot labels are device tensors updated in place.

Attention does not depend on where a key sits, so this equals `LMMemory`'s causal step up to
summation order. What it cannot do is re-encode: positions count from each row's episode start
and must stay inside the LM's position table, which rotary LMs (Pythia, Llama) do not have and
absolute ones (GPT-2) must be told is long enough (`StaticLMMemory.unsupported_reason`).
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import PreTrainedModel

from models.lm_memory import LMMemory, _SlotCache
from utils.errors import UserError

ALIGN = 16  # slots per row rounded up to this


@dataclasses.dataclass
class StaticLMState:
    """What a `StaticLMMemory` remembers for `n` envs; every tensor is updated in place."""

    n: int
    capacity: int
    slot_token: torch.Tensor  # [capacity] the token each slot holds (-1: none)
    start: torch.Tensor  # [n] first token of each row's episode
    t: torch.Tensor  # [] tokens appended so far
    cache: _SlotCache  # per layer, [n, heads, capacity, d_head] keys and values

    def to(self, device: torch.device | str) -> StaticLMState:
        """This memory on another device (in place; returns itself)."""
        self.slot_token, self.start, self.t = self.slot_token.to(device), self.start.to(device), self.t.to(device)
        self.cache.to_device(torch.device(device))
        return self


class StaticLMMemory(LMMemory):
    """A causal `LMMemory` whose step has fixed shapes and no host syncs (see the module docstring).

    `tokens_per_step` is fixed for the memory's life (1 for HELM and HELMv2, SHELM's top-k).
    """

    static = True

    def __init__(self, model: PreTrainedModel, mem_len: int, tokens_per_step: int = 1, name: str | None = None) -> None:
        super().__init__(model, mem_len, mode="causal", name=name)
        if isinstance(tokens_per_step, bool) or not isinstance(tokens_per_step, int) or tokens_per_step < 1:
            raise UserError(f"tokens_per_step must be a positive integer, got {tokens_per_step!r}")
        self.tokens_per_step = tokens_per_step

    def unsupported_reason(self, episode_limit: int | None) -> str | None:
        """Why this memory cannot serve episodes of up to `episode_limit` steps exactly (None: it can).

        An absolute position table must hold every position of the longest episode; `LMMemory`
        re-encodes past it, which a static step cannot.
        """
        if self.position_limit is None:
            return None
        needed = None if episode_limit is None else episode_limit * self.tokens_per_step
        if needed is not None and needed <= self.position_limit:
            return None
        length = "of unknown length" if needed is None else f"of up to {needed} tokens"
        return (f"episodes {length} outgrow the LM's {self.position_limit} absolute positions, which only the "
                "eager step can re-encode; use an LM with rotary positions (Pythia, Llama)")

    def initial_state(self, n: int) -> StaticLMState:
        device = self._lm.get_input_embeddings().weight.device
        capacity = -(-(self.mem_len - 1 + self.tokens_per_step) // ALIGN) * ALIGN
        cache = _SlotCache(capacity)
        cache.visible = slice(None)
        return StaticLMState(
            n=n,
            capacity=capacity,
            slot_token=torch.full((capacity,), -1, dtype=torch.long, device=device),
            start=torch.zeros(n, dtype=torch.long, device=device),
            t=torch.zeros((), dtype=torch.long, device=device),
            cache=cache,
        )

    def step(self, embeds: torch.Tensor, state: StaticLMState, starts: torch.Tensor) -> tuple[torch.Tensor, StaticLMState]:
        """Append the step's tokens per env (rows with `starts` forget first); hidden state of the newest, [B, d_model]."""
        embeds = self._checked(embeds, state)
        state.start.copy_(self._restarted_start(state, starts))
        new = state.t + torch.arange(self.tokens_per_step, device=state.t.device)
        slots = new % state.capacity
        state.slot_token.index_copy_(0, slots, new)
        state.cache.write_at = slots
        out = self._forward(embeds, new, state.slot_token, state.start, state.cache)
        state.t.add_(self.tokens_per_step)
        return out, state

    @torch.no_grad()
    def peek(self, embeds: torch.Tensor, state: StaticLMState, starts: torch.Tensor) -> torch.Tensor:
        """What `step` would return; nothing remembered changes (to bootstrap final observations)."""
        embeds = self._checked(embeds, state)
        start = self._restarted_start(state, starts)
        new = state.t + torch.arange(self.tokens_per_step, device=state.t.device)
        remembered = bool(state.cache.layers)  # False only before the first step
        keys = torch.cat([state.slot_token, new]) if remembered else new
        return self._forward(embeds, new, keys, start, state.cache.reader(slice(None)))

    def _checked(self, embeds: torch.Tensor, state: StaticLMState) -> torch.Tensor:
        if embeds.dim() == 2:
            embeds = embeds[:, None]
        expected = (state.n, self.tokens_per_step, self.in_dim)
        if tuple(embeds.shape) != expected:
            raise ValueError(f"embeds must be {list(expected)}, got {tuple(embeds.shape)}")
        return embeds.to(dtype=self._lm.get_input_embeddings().weight.dtype)

    def _restarted_start(self, state: StaticLMState, starts) -> torch.Tensor:
        rows = torch.as_tensor(starts, device=state.start.device).to(torch.bool).reshape(state.n)
        return torch.where(rows, state.t, state.start)

    @torch.no_grad()
    def _forward(self, embeds: torch.Tensor, new: torch.Tensor, keys: torch.Tensor, start: torch.Tensor,
                 cache: _SlotCache) -> torch.Tensor:
        positions = new[None, :] - start[:, None]
        if self.position_limit is not None:  # never beyond the table (see unsupported_reason)
            positions = positions.clamp(max=self.position_limit - 1)
        out = self._lm(
            inputs_embeds=embeds,
            attention_mask=self._window_mask(new, keys, start, embeds.dtype),
            position_ids=positions,
            **{self._cache_kwarg: cache},
            use_cache=True,
        )
        return out.last_hidden_state[:, -1].contiguous()
