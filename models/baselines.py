"""The agents whose every part trains: CNN-PPO and MLP-PPO (no memory), and a trained memory behind
a small encoder.

The trained memories (LSTM-PPO / Impala-PPO, GRU-PPO, TrXL-PPO) share one builder: an encoder of
each observation (the papers' Impala-PPO CNN, 16/32 channels and 256 units, for images; POPGym's
MLP for vectors) and the registry's memory class, built from the config by its
`from_config(in_dim, cfg)`.
"""

from __future__ import annotations

from models.base import MemoryAgent
from models.memory import Memory, NoMemory
from models.networks import SmallImpalaCNN, VectorEncoder, is_vector
from utils.errors import UserError

TRAINED_MEMORY_INPUT = 256  # the width of the papers' Impala-PPO CNN, and of its LSTM


def cnn_ppo(obs_shape: tuple[int, ...], n_actions: int, cfg: dict) -> MemoryAgent:
    """The papers' memory-free baseline: the CNN of HELM's query (64/128 channels, 1024 units) and the heads."""
    if is_vector(obs_shape):
        raise UserError(f"CNN-PPO reads images; {cfg['env']} gives vector observations: use MLP-PPO")
    cnn = SmallImpalaCNN(obs_shape, channel_scale=4, hidden=1024, precision=cfg.get("precision", "fp32"))
    return MemoryAgent(cnn, NoMemory(cnn.out_dim), n_actions)


def mlp_ppo(obs_shape: tuple[int, ...], n_actions: int, cfg: dict) -> MemoryAgent:
    """The memory-free floor on vector observations (POPGym): the trained memories' MLP and the heads."""
    if not is_vector(obs_shape):
        raise UserError(f"MLP-PPO reads vectors; {cfg['env']} gives images: use CNN-PPO")
    mlp = VectorEncoder(obs_shape[0])
    return MemoryAgent(mlp, NoMemory(mlp.out_dim), n_actions)


def trained_memory_agent(obs_shape: tuple[int, ...], n_actions: int, cfg: dict, memory_cls: type[Memory]) -> MemoryAgent:
    """The papers' Impala-PPO layout with any trained memory in place of its LSTM (an MLP for vectors)."""
    if is_vector(obs_shape):
        encoder = VectorEncoder(obs_shape[0])
    else:
        encoder = SmallImpalaCNN(obs_shape, channel_scale=1, hidden=TRAINED_MEMORY_INPUT,
                                 precision=cfg.get("precision", "fp32"))
    return MemoryAgent(encoder, memory_cls.from_config(encoder.out_dim, cfg), n_actions)
