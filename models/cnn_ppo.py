"""CNN-PPO: the memory-free baseline, acting on the current observation only."""

from __future__ import annotations

import torch

from models.base import ActOutput, Agent, distribution, sample
from models.networks import ActorCritic, SmallImpalaCNN


class CNNPPO(Agent):
    def __init__(self, obs_shape: tuple[int, int, int], n_actions: int, cfg: dict):
        super().__init__()
        self.cnn = SmallImpalaCNN(obs_shape, channel_scale=4, hidden=1024, precision=cfg.get("precision", "fp32"))
        self.heads = ActorCritic(self.cnn.out_dim, n_actions)

    def act(self, obs: torch.Tensor, episode_start: torch.Tensor, deterministic: bool = False) -> ActOutput:
        logits, values = self.heads(self.cnn(obs))
        return sample(logits, values, deterministic)

    def peek_values(self, obs: torch.Tensor, episode_start: torch.Tensor) -> torch.Tensor:
        return self.heads(self.cnn(obs))[1]

    def evaluate(self, batch):
        logits, values = self.heads(self.cnn(batch["obs"]))
        dist = distribution(logits)
        return dist.log_prob(batch["actions"]), dist.entropy(), values
