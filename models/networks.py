"""Building blocks shared by all agents: the papers' small Impala-style CNN and actor/critic heads."""

from __future__ import annotations

import math

import torch
from torch import nn


def to_float_image(obs: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, C] -> float [B, C, H, W] in [0, 1]."""
    return obs.permute(0, 3, 1, 2).float().div_(255.0)


class SmallImpalaCNN(nn.Module):
    """Conv(3->16s, k8 s4) - ReLU - Conv(16s->32s, k4 s2) - ReLU - Linear(->hidden) - ReLU.

    Tiny inputs (9 px or less, e.g. RandomMaze's view) use k4 s2 then k2 s1 so the convolutions fit.
    ``precision="bf16"`` runs it under bfloat16 autocast (weights, gradients and the output stay
    fp32): the convolutions' backward pass is most of a PPO update, and bf16 makes it 2-3x
    cheaper on GPUs and on CPUs with AMX/AVX512-BF16.
    """

    def __init__(self, obs_shape: tuple[int, int, int], channel_scale: int = 1, hidden: int = 256,
                 precision: str = "fp32"):
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.bf16 = precision == "bf16"
        height, width, channels = obs_shape
        small = min(height, width) <= 9
        (k1, s1), (k2, s2) = ((4, 2), (2, 1)) if small else ((8, 4), (4, 2))
        self.convs = nn.Sequential(
            nn.Conv2d(channels, 16 * channel_scale, k1, s1), nn.ReLU(),
            nn.Conv2d(16 * channel_scale, 32 * channel_scale, k2, s2), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, channels, height, width)).shape[1]
        self.fc = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU())
        self.out_dim = hidden
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight, gain=nn.init.calculate_gain("relu"))
                nn.init.zeros_(module.bias)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # no cast cache: each weight is used once per forward, and a captured CUDA graph must not keep casts
        with torch.autocast(obs.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            features = self.fc(self.convs(to_float_image(obs)))
        return features.float()  # a no-op in fp32


class VectorEncoder(nn.Module):
    """Vector observations (POPGym's one-hot and scalar features) -> features, as POPGym's models
    read them: Linear, LayerNorm (no affine), Linear, LeakyReLU; orthogonal weights, zero bias."""

    def __init__(self, obs_dim: int, hidden: int = 128):  # POPGym's preprocessed width
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.LayerNorm(hidden, elementwise_affine=False),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU())
        self.out_dim = hidden
        for module in self.net:
            if isinstance(module, nn.Linear):
                nn.init.orthogonal_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.float())


def is_vector(obs_shape: tuple[int, ...]) -> bool:
    """Vector observations (one axis), as opposed to images [H, W, C]."""
    return len(obs_shape) == 1


HEAD_GAIN = math.sqrt(2)  # ReLU's gain, on every Linear of both heads as in the original model.py


def _head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    head = nn.Sequential(
        nn.Linear(in_dim, hidden), nn.LayerNorm(hidden, elementwise_affine=False), nn.ReLU(),
        nn.Linear(hidden, out_dim),
    )
    for layer in (head[0], head[3]):
        nn.init.orthogonal_(layer.weight, gain=HEAD_GAIN)
        nn.init.zeros_(layer.bias)
    return head


class ActorCritic(nn.Module):
    """The papers' heads: actor Linear(->128)-LN-ReLU-Linear, critic Linear(->512)-LN-ReLU-Linear.

    Initialised as the original: every Linear, output layers included, orthogonal with gain
    sqrt(2) and zero bias (not SB3's 0.01 / 1 output gains), so the initial policy is not uniform.
    """

    def __init__(self, in_dim: int, n_actions: int):
        super().__init__()
        self.actor = _head(in_dim, 128, n_actions)
        self.critic = _head(in_dim, 512, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor(x), self.critic(x).squeeze(-1)
