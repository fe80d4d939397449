"""Our agents against the original HELM code's formulas, on the same inputs.

The original trainer subclassed SB3 1.4, so what its model received is what SB3 made of the env's
observations: `VecTransposeImage` turned every uint8 [0, 255] image into CHW. The reference
functions below are written from the original's formulas applied to such CHW batches.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from models import build_agent
from models.helm import HELM, hopfield_input, hopfield_layout
from models.networks import ActorCritic, SmallImpalaCNN
from tests.tiny_lms import tiny_gpt2
from utils.config import defaults
from utils.errors import UserError


def sb3_vec_transpose_image(obs_hwc: np.ndarray) -> np.ndarray:
    """What SB3 1.4's VecTransposeImage does to a batch of channels-last uint8 frames: [B, C, H, W]."""
    return np.transpose(obs_hwc, (0, 3, 1, 2))


def original_frozen_hopfield(obs_chw: torch.Tensor, projection: torch.Tensor, word_embs: torch.Tensor, beta: float):
    """The original FrozenHopfield.forward on the trainer's input (obs / 255): mean over dim 1, flatten,
    project, cosine similarity with every token embedding (1e-8 on the norm product), softmax, mix."""
    x = obs_chw.float() / 255.0
    x = x.mean(1)
    x = torch.stack([o.view(-1) for o in x])
    x = x @ projection.T
    sims = x @ word_embs.T / (x.norm(dim=-1).unsqueeze(1) @ word_embs.norm(dim=-1).unsqueeze(0) + 1e-8)
    return torch.softmax(beta * sims, dim=-1) @ word_embs


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return tiny_gpt2(str(tmp_path_factory.mktemp("lm") / "gpt2"), n_positions=64)


def _helm(lm_dir, env="MiniGrid-KeyCorridorS3R1-v0", obs_shape=(56, 56, 3), seed=3):
    cfg = defaults() | {"model": "HELM", "env": env, "lm": lm_dir, "mem_len": 8, "seed": seed, "beta": 100.0}
    return build_agent("HELM", obs_shape, 7, cfg)


@pytest.mark.parametrize("shape", [(56, 56, 3), (64, 64, 3), (9, 9, 3), (60, 80, 3)])
def test_hopfield_input_is_the_grayscale_frame_sb3_handed_the_original(shape):
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, size=(4, *shape), dtype=np.uint8)
    chw = torch.as_tensor(sb3_vec_transpose_image(obs))
    expected = torch.stack([o.view(-1) for o in (chw.float() / 255.0).mean(1)])
    ours = hopfield_input(torch.as_tensor(obs))
    assert ours.shape == (4, shape[0] * shape[1])  # 3136 for MiniGrid, 4096 for Procgen
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


def test_psychlab_keeps_the_original_height_mean():
    """Psychlab's original observations were float32, which SB3 does not transpose: dim 1 was height."""
    assert hopfield_layout("Psychlab-ContinuousRecognition-v0") == "height_mean"
    for env in ("MiniGrid-KeyCorridorS3R1-v0", "MiniWorld-Sign-v0", "maze", "RandomMaze-v0", "CueRecall-v0"):
        assert hopfield_layout(env) == "grayscale"
    obs = torch.randint(0, 256, (2, 80, 80, 3), dtype=torch.uint8)
    torch.testing.assert_close(hopfield_input(obs, "height_mean"), (obs.float() / 255).mean(1).flatten(1))


def test_helm_memory_input_equals_the_original_frozen_hopfield(lm_dir):
    agent = _helm(lm_dir)
    hopfield = agent.encoder.hopfield
    assert hopfield.projection.shape == (agent.memory.in_dim, 56 * 56)
    # N(0, 1/d): the original's std = 1/sqrt(hidden_dim)
    assert abs(hopfield.projection.std().item() * math.sqrt(agent.memory.in_dim) - 1) < 0.02
    obs = np.random.default_rng(1).integers(0, 256, size=(5, 56, 56, 3), dtype=np.uint8)
    expected = original_frozen_hopfield(
        torch.as_tensor(sb3_vec_transpose_image(obs)), hopfield.projection, agent.vocabulary.embeddings(), 100.0
    )
    ours = agent.encoder(torch.as_tensor(obs))[:, 0]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


def test_checkpoint_of_the_old_height_mean_layout_is_refused_in_one_line(lm_dir):
    agent = _helm(lm_dir)
    state = agent.checkpoint_state()
    state["encoder.hopfield.projection"] = torch.randn(agent.memory.in_dim, 56 * 3)  # W*C: the old input
    with pytest.raises(UserError, match="older layout"):
        _helm(lm_dir).load_checkpoint_state(state)


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _is_orthogonal_with_gain(weight: torch.Tensor, gain: float) -> bool:
    w = weight / gain
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-4)


def test_heads_are_orthogonal_with_relu_gain_and_zero_bias_on_every_linear():
    """The original applies orthogonal_init (gain sqrt 2, zero bias) to every Linear of actor and critic."""
    heads = ActorCritic(64, 7)
    for head in (heads.actor, heads.critic):
        layers = _linears(head)
        assert len(layers) == 2
        for layer in layers:
            assert _is_orthogonal_with_gain(layer.weight, math.sqrt(2))
            assert torch.count_nonzero(layer.bias) == 0


def test_cnn_is_xavier_uniform_with_relu_gain_and_zero_bias():
    torch.manual_seed(0)
    cnn = SmallImpalaCNN((56, 56, 3), channel_scale=4, hidden=1024)
    for module in cnn.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            fan_out = module.weight.shape[0] * module.weight[0, 0].numel()
            bound = math.sqrt(2) * math.sqrt(6 / (fan_in + fan_out))
            assert module.weight.abs().max() <= bound + 1e-6
            assert module.weight.abs().max() > 0.9 * bound  # uniform over the whole range
            assert torch.count_nonzero(module.bias) == 0


def test_every_agent_uses_the_original_initialisation(lm_dir):
    for name in ("CNN-PPO", "Impala-PPO"):
        agent = build_agent(name, (56, 56, 3), 7, defaults() | {"model": name, "seed": 0})
        for layer in _linears(agent.heads):
            assert _is_orthogonal_with_gain(layer.weight, math.sqrt(2))
    agent = _helm(lm_dir)
    assert isinstance(agent, HELM)
    for layer in _linears(agent.heads):
        assert _is_orthogonal_with_gain(layer.weight, math.sqrt(2))
