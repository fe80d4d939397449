"""Generalised advantage estimation over a rollout."""

from __future__ import annotations

import torch


def compute_gae(
    rewards: torch.Tensor,  # [T, N]
    values: torch.Tensor,  # [T, N]
    dones: torch.Tensor,  # [T, N] bool: the episode ended after step t (terminated or truncated)
    last_values: torch.Tensor,  # [N] value of the observation after the last step
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (advantages + values).

    A truncated episode must already carry ``gamma * V(final_obs)`` in its last reward: here every
    episode end cuts the bootstrap, which is only right for terminations without that correction.
    """
    steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_values)
    not_done = (~dones).float()
    for t in reversed(range(steps)):
        next_values = last_values if t == steps - 1 else values[t + 1]
        delta = rewards[t] + gamma * next_values * not_done[t] - values[t]
        running = delta + gamma * gae_lambda * not_done[t] * running
        advantages[t] = running
    return advantages, advantages + values
