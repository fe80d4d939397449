"""The agents whose every part trains: CNN-PPO (no memory) and a trained memory behind a small CNN.

The trained memories (LSTM-PPO / Impala-PPO, GRU-PPO, TrXL-PPO) share one builder: the papers'
Impala-PPO CNN (16/32 channels, 256 units) encodes each frame and the registry's memory class,
built from the config by its `from_config(in_dim, cfg)`, remembers.
"""

from __future__ import annotations

from models.base import MemoryAgent
from models.memory import Memory, NoMemory
from models.networks import SmallImpalaCNN

TRAINED_MEMORY_INPUT = 256  # the width of the papers' Impala-PPO CNN, and of its LSTM


def cnn_ppo(obs_shape: tuple[int, ...], n_actions: int, cfg: dict) -> MemoryAgent:
    """The papers' memory-free baseline: the CNN of HELM's query (64/128 channels, 1024 units) and the heads."""
    cnn = SmallImpalaCNN(obs_shape, channel_scale=4, hidden=1024, precision=cfg.get("precision", "fp32"))
    return MemoryAgent(cnn, NoMemory(cnn.out_dim), n_actions)


def trained_memory_agent(obs_shape: tuple[int, ...], n_actions: int, cfg: dict, memory_cls: type[Memory]) -> MemoryAgent:
    """The papers' Impala-PPO layout with any trained memory in place of its LSTM."""
    cnn = SmallImpalaCNN(obs_shape, channel_scale=1, hidden=TRAINED_MEMORY_INPUT, precision=cfg.get("precision", "fp32"))
    return MemoryAgent(cnn, memory_cls.from_config(cnn.out_dim, cfg), n_actions)
