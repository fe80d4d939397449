"""The small interface through which the one PPO trainer drives every agent.

An agent owns whatever memory it carries between env steps (an LSTM state, a language model's
cache) and updates it in ``act``. Whatever ``act`` returns in ``features`` is stored with the
rollout and handed back to ``evaluate`` in the update, so an expensive frozen computation (HELM's
language model) runs once per env step and never in the PPO epochs. A recurrent agent sets
``recurrent = True``: the trainer then gives ``evaluate`` whole per-env sequences, shaped
``[T, B, ...]``, with the state saved by ``rollout_state`` at the start of the rollout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.distributions import Categorical


@dataclass
class ActOutput:
    actions: torch.Tensor  # [B]
    values: torch.Tensor  # [B]
    log_probs: torch.Tensor  # [B]
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # [B, ...] each, stored per step


class Agent(nn.Module):
    recurrent: bool = False
    # state_dict prefixes of frozen pretrained weights that are reloaded from their source
    # instead of being written into every checkpoint
    frozen_prefixes: tuple[str, ...] = ()

    def reset_memory(self, n_envs: int) -> None:
        """Forget everything (start of training or evaluation)."""

    def act(self, obs: torch.Tensor, episode_start: torch.Tensor, deterministic: bool = False) -> ActOutput:
        """Choose actions for one env step; rows with ``episode_start`` begin a new episode."""
        raise NotImplementedError

    def peek_values(self, obs: torch.Tensor, episode_start: torch.Tensor) -> torch.Tensor:
        """V(obs) as if ``act`` were called next, without changing the agent's memory."""
        raise NotImplementedError

    def rollout_state(self) -> dict[str, torch.Tensor]:
        """Memory state to store at the start of a rollout (recurrent agents re-run from it)."""
        return {}

    def evaluate(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probs of ``batch['actions']``, entropies and values, with gradients."""
        raise NotImplementedError

    def step_log(self) -> dict[str, float]:
        """Extra scalars for TensorBoard (e.g. a feature-cache hit rate)."""
        return {}

    def step_text(self) -> dict[str, str]:
        """Text for TensorBoard, logged every few updates (e.g. the words in env 0's memory)."""
        return {}

    # -- checkpoints: everything but the frozen pretrained weights ---------------------------
    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith(self.frozen_prefixes)}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(self.frozen_prefixes)]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the agent: missing {missing[:3]}, unexpected {unexpected[:3]}")


def distribution(logits: torch.Tensor) -> Categorical:
    return Categorical(logits=logits)


def sample(logits: torch.Tensor, values: torch.Tensor, deterministic: bool, features: dict[str, Any] | None = None) -> ActOutput:
    dist = distribution(logits)
    actions = logits.argmax(-1) if deterministic else dist.sample()
    return ActOutput(actions, values, dist.log_prob(actions), features or {})
