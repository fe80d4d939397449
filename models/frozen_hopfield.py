"""HELM's FrozenHopfield: observations to points in the frozen LM's token-embedding space.

The map is fixed (never trained): a random projection puts the observation into the embedding
space, and one step of Hopfield retrieval with the LM's vocabulary as stored patterns turns it
into a convex combination of real token embeddings, which the frozen LM can read.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_EPS = 1e-8


class FrozenHopfield(nn.Module):
    """HELM's fixed map from an observation to a convex combination of LM token embeddings."""

    def __init__(self, input_dim: int, token_embeddings: torch.Tensor, beta: float, seed: int) -> None:
        super().__init__()
        if token_embeddings.dim() != 2:
            raise ValueError(f"token_embeddings must be [vocab, d_embed], got {tuple(token_embeddings.shape)}")
        d_embed = token_embeddings.shape[1]
        self.input_dim = input_dim
        self.beta = float(beta)
        # Entries N(0, 1/d_embed), as in HELM. Drawn on the CPU from its own generator so the same
        # seed gives the same projection on any device and regardless of the global RNG state.
        generator = torch.Generator().manual_seed(seed)
        projection = torch.randn(d_embed, input_dim, generator=generator) / math.sqrt(d_embed)
        projection = projection.to(device=token_embeddings.device, dtype=token_embeddings.dtype)
        # Persistent: the projection is part of the agent and must survive a checkpoint round trip.
        self.register_buffer("projection", projection)
        # Non-persistent: both are rebuilt from the LM, so checkpoints need not carry the vocabulary.
        embeddings = token_embeddings.detach()
        norms = embeddings.norm(dim=1, keepdim=True).clamp_min(_EPS)  # all-zero rows (padding) give cos 0
        self.register_buffer("embeddings", embeddings, persistent=False)
        self.register_buffer("unit_embeddings", embeddings / norms, persistent=False)

    def similarities(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine similarity between each projected observation and every token embedding, [B, vocab]."""
        query = x.to(self.projection.dtype).flatten(1) @ self.projection.T  # [B, d_embed]
        # The embeddings are unit length, so |Px||E_i| + eps reduces to |Px| + eps.
        return (query @ self.unit_embeddings.T) / (query.norm(dim=1, keepdim=True) + _EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, input_dim] -> softmax(beta * cos(Px, E)) @ E, [B, d_embed]."""
        weights = torch.softmax(self.beta * self.similarities(x), dim=1)
        return weights @ self.embeddings

    def nearest_tokens(self, x: torch.Tensor, k: int = 1) -> torch.Tensor:
        """Ids of the k tokens with the largest retrieval weight, [B, k] (what HELM "writes" into memory)."""
        return self.similarities(x).topk(k, dim=1).indices
