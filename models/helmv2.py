"""HELMv2: HELM with a frozen CLIP image encoder in place of the FrozenHopfield (Paischer et al., 2022).

Each observation is embedded by frozen CLIP (vision tower + projection), mapped into the LM's
token-embedding space by a fixed affine map, and enters the LM as one token; the rest is HELM.

The map is the paper's "adopted and fixed batch-norm": standardise each CLIP feature, then
rescale it to the per-dimension std and shift it to the per-dimension mean of the LM's input
token embeddings. Where CLIP's width differs from the LM's, a fixed random projection (seeded by
``seed``, Gaussian) first maps the CLIP feature to the LM's width; the standardisation is then
done on the projected features, so every LM input dimension has exactly the LM's spread on the
statistics sample, whatever the correlations between CLIP features.

Fixed statistics, not batch statistics. The original standardised with the statistics of the
current batch, i.e. of the n_envs observations of one step: one env's embedding then depends on
what the other envs see, and it changes with n_envs (a single eval env has no batch std at all).
Here the mean and std are estimated once, on the first use of the agent (the first ``act``), from
the CLIP features of ``STATS_FRAMES`` observations of the configured env played by a uniformly
random policy (``STATS_ENVS`` envs, reset with the run's seed), and are then frozen. A random
policy's frames are what the agent sees early in training, they do not depend on the agent, and
the estimate is deterministic for a seed. The statistics (with the projection and the LM's
embedding statistics) are buffers of the agent, so they are saved in every checkpoint, and an
agent restored from one (eval, resume) embeds every observation exactly as in training and never
re-estimates.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.clip_encoder import CLIPImageEncoder, load_clip
from models.helm import FrozenEncoder, LMMemoryAgent, frozen_memory
from models.vocabulary import Vocabulary
from utils.errors import UserError

STATS_FRAMES = 256  # observations whose CLIP features give the fixed statistics
STATS_ENVS = 8
EPS = 1e-5  # added to variances, as in batch-norm


def random_policy_frames(env_id: str, n_frames: int, seed: int, n_envs: int = STATS_ENVS) -> np.ndarray:
    """``n_frames`` observations [N, H, W, C] of ``env_id`` under a uniformly random policy."""
    from envs import make_env

    envs = make_env(env_id, n_envs, "sync")
    try:
        rng = np.random.default_rng(seed)
        obs, _ = envs.reset(seed=seed)
        frames = [obs]
        while sum(len(f) for f in frames) < n_frames:
            obs, *_ = envs.step(rng.integers(envs.single_action_space.n, size=n_envs))
            frames.append(obs)
    finally:
        envs.close()
    return np.concatenate(frames)[:n_frames]


class CLIPToTokenSpace(nn.Module):
    """CLIP image features -> LM input embeddings: fixed projection, fixed standardisation, LM rescaling."""

    def __init__(self, clip_dim: int, token_embeddings: torch.Tensor, seed: int) -> None:
        super().__init__()
        d_embed = token_embeddings.shape[1]
        if clip_dim == d_embed:
            projection = torch.eye(d_embed)
        else:
            # Drawn on the CPU from its own generator: the same seed gives the same map anywhere.
            generator = torch.Generator().manual_seed(seed)
            projection = torch.randn(d_embed, clip_dim, generator=generator) / clip_dim**0.5
        tokens = token_embeddings.detach().float().cpu()
        # All persistent: a checkpoint alone reproduces the map.
        self.register_buffer("projection", projection)
        self.register_buffer("feature_mean", torch.zeros(d_embed))
        self.register_buffer("feature_std", torch.ones(d_embed))
        self.register_buffer("token_mean", tokens.mean(dim=0))
        self.register_buffer("token_std", tokens.std(dim=0))
        self.register_buffer("ready", torch.tensor(False))  # statistics estimated (or loaded)?

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return features.float() @ self.projection.T

    @torch.no_grad()
    def set_statistics(self, features: torch.Tensor) -> None:
        """Freeze the standardisation at the statistics of these CLIP features [N, clip_dim]."""
        if features.shape[0] < 2:
            raise ValueError("need at least two feature vectors to estimate a std")
        projected = self.project(features.to(self.projection.device))
        self.feature_mean.copy_(projected.mean(dim=0))
        self.feature_std.copy_((projected.var(dim=0, unbiased=False) + EPS).sqrt())
        self.ready.fill_(True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, clip_dim] -> [B, d_embed]."""
        if not bool(self.ready):
            raise RuntimeError("statistics not set: call set_statistics() first")
        z = (self.project(features) - self.feature_mean) / self.feature_std
        return z * self.token_std + self.token_mean


class CLIPTokenEncoder(FrozenEncoder):
    """HELMv2's map: frozen CLIP image features, fixed-standardised into the LM's token space (one token)."""

    def __init__(self, vocabulary: Vocabulary, clip_model: str, cache_size: int, env_id: str, seed: int) -> None:
        super().__init__(vocabulary)
        self.env_id, self.seed = env_id, seed
        self.image_encoder = CLIPImageEncoder(load_clip(clip_model), cache_size)
        self.to_tokens = CLIPToTokenSpace(self.image_encoder.embed_dim, vocabulary.embeddings().float(), seed)

    def estimate_statistics(self, frames: np.ndarray | torch.Tensor | None = None) -> None:
        """Fix the standardisation from these uint8 frames (default: a random policy in the configured env)."""
        if frames is None:
            frames = random_policy_frames(self.env_id, STATS_FRAMES, self.seed)
        features = torch.cat([self.image_encoder(chunk) for chunk in torch.as_tensor(frames).split(64)])
        self.to_tokens.set_statistics(features)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if not bool(self.to_tokens.ready):
            self.estimate_statistics()
        return self.to_tokens(self.image_encoder(obs)).to(self.vocabulary.embeddings().dtype).unsqueeze(1)

    def step_log(self) -> dict[str, float]:
        return clip_cache_log(self)


def clip_agent_memory(model: str, obs_shape: tuple[int, ...], cfg: dict):
    """The frozen LM memory and vocabulary of a CLIP-fed agent, which needs image observations."""
    if len(obs_shape) != 3:
        raise UserError(f"{model} needs image observations for CLIP; {cfg['env']} gives vectors: use HELM")
    return frozen_memory(cfg)


class HELMv2(LMMemoryAgent):
    frozen_prefixes = ("encoder.image_encoder.clip.",)

    def __init__(self, obs_shape: tuple[int, int, int], n_actions: int, cfg: dict):
        memory, vocabulary = clip_agent_memory("HELMv2", obs_shape, cfg)
        encoder = CLIPTokenEncoder(vocabulary, cfg["clip_model"], cfg["clip_cache_size"], cfg["env"], int(cfg["seed"] or 0))
        super().__init__(obs_shape, n_actions, cfg, encoder, memory)


def clip_cache_log(encoder) -> dict[str, float]:
    """CLIP feature-cache hit rate since the previous call, and its size, for TensorBoard."""
    return encoder.image_encoder.cache.interval_log("clip")
