"""HELM: a frozen pretrained language model as the agent's memory (Paischer et al., ICML 2022).

Each observation is mapped by the FrozenHopfield onto the LM's token-embedding space and enters
the LM as one token; the LM's output at that token summarises the episode so far. The policy
acts on [LM output || a trainable CNN of the current observation]. Only the CNN and the heads
train: the LM output is computed once per env step in the rollout and stored as a feature, so
the PPO update never runs the language model.
"""

from __future__ import annotations

import torch

from models.base import ActOutput, Agent, distribution, sample
from models.frozen_hopfield import FrozenHopfield
from models.lm_memory import LMMemory, load_frozen_lm
from models.networks import ActorCritic, SmallImpalaCNN


def hopfield_input(obs: torch.Tensor) -> torch.Tensor:
    """The original preprocessing: scale to [0, 1], average over image height, flatten (W*C)."""
    return obs.float().div(255.0).mean(dim=1).flatten(1)


class LMMemoryAgent(Agent):
    """Shared by HELM, HELMv2 and SHELM: memory tokens -> frozen LM -> [LM out || CNN] -> heads.

    Subclasses only say how an observation becomes the LM's input embeddings (``memory_inputs``).
    """

    def __init__(self, obs_shape: tuple[int, int, int], n_actions: int, cfg: dict):
        super().__init__()
        self.memory = LMMemory(load_frozen_lm(cfg["lm"], cfg["lm_layers"]), cfg["mem_len"], cfg["lm_mode"])
        self.cnn = SmallImpalaCNN(obs_shape, channel_scale=4, hidden=1024)
        self.heads = ActorCritic(self.memory.d_model + self.cnn.out_dim, n_actions)

    def memory_inputs(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 observations [B, H, W, C] -> LM input embeddings [B, k, d_embed]."""
        raise NotImplementedError

    def reset_memory(self, n_envs: int) -> None:
        self.memory.reset(n_envs)

    def _policy(self, lm_out: torch.Tensor, obs: torch.Tensor):
        return self.heads(torch.cat([lm_out, self.cnn(obs)], dim=-1))

    def act(self, obs: torch.Tensor, episode_start: torch.Tensor, deterministic: bool = False) -> ActOutput:
        lm_out = self.memory.step(self.memory_inputs(obs), episode_start)
        logits, values = self._policy(lm_out, obs)
        return sample(logits, values, deterministic, {"lm_out": lm_out})

    def peek_values(self, obs: torch.Tensor, episode_start: torch.Tensor) -> torch.Tensor:
        return self._policy(self.memory.peek(self.memory_inputs(obs), episode_start), obs)[1]

    def evaluate(self, batch):
        logits, values = self._policy(batch["lm_out"], batch["obs"])
        dist = distribution(logits)
        return dist.log_prob(batch["actions"]), dist.entropy(), values


class HELM(LMMemoryAgent):
    def __init__(self, obs_shape: tuple[int, int, int], n_actions: int, cfg: dict):
        super().__init__(obs_shape, n_actions, cfg)
        height, width, channels = obs_shape
        self.hopfield = FrozenHopfield(width * channels, self.memory.token_embeddings(), cfg["beta"], seed=cfg["seed"])

    def memory_inputs(self, obs: torch.Tensor) -> torch.Tensor:
        return self.hopfield(hopfield_input(obs)).unsqueeze(1)
