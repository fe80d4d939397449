"""FrozenHopfield against its formula, softmax(beta * cos(P x, E_i)) @ E."""

from __future__ import annotations

import math

import pytest
import torch

from models.frozen_hopfield import FrozenHopfield

VOCAB, D_EMBED, INPUT_DIM, B = 50, 16, 20, 4


@pytest.fixture
def embeddings() -> torch.Tensor:
    return torch.randn(VOCAB, D_EMBED, generator=torch.Generator().manual_seed(1))


def observations(n: int = B, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, INPUT_DIM, generator=torch.Generator().manual_seed(seed))


def test_forward_equals_formula(embeddings):
    hopfield = FrozenHopfield(INPUT_DIM, embeddings, beta=2.0, seed=0)
    x = observations()
    projected = x @ hopfield.projection.T
    cos = (projected @ embeddings.T) / (projected.norm(dim=1, keepdim=True) * embeddings.norm(dim=1) + 1e-8)
    expected = torch.softmax(2.0 * cos, dim=1) @ embeddings
    out = hopfield(x)
    assert out.shape == (B, D_EMBED)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


def test_projection_is_gaussian_with_variance_one_over_d_embed(embeddings):
    hopfield = FrozenHopfield(2000, embeddings, beta=1.0, seed=0)
    assert hopfield.projection.shape == (D_EMBED, 2000)
    assert abs(hopfield.projection.std().item() * math.sqrt(D_EMBED) - 1) < 0.03
    assert abs(hopfield.projection.mean().item()) < 0.01


def test_large_beta_retrieves_the_nearest_token(embeddings):
    hopfield = FrozenHopfield(INPUT_DIM, embeddings, beta=1e4, seed=0)
    x = observations(16)
    projected = x @ hopfield.projection.T
    cos = torch.nn.functional.cosine_similarity(projected[:, None], embeddings[None], dim=2)
    nearest = cos.argmax(dim=1)
    torch.testing.assert_close(hopfield(x), embeddings[nearest], atol=1e-4, rtol=0)
    assert torch.equal(hopfield.nearest_tokens(x)[:, 0], nearest)
    top3 = hopfield.nearest_tokens(x, k=3)
    assert top3.shape == (16, 3) and torch.equal(top3, cos.topk(3, dim=1).indices)


def test_seed_fixes_the_projection_and_state_dict_restores_it(embeddings):
    a = FrozenHopfield(INPUT_DIM, embeddings, beta=1.0, seed=7)
    b = FrozenHopfield(INPUT_DIM, embeddings, beta=1.0, seed=7)
    c = FrozenHopfield(INPUT_DIM, embeddings, beta=1.0, seed=8)
    assert torch.equal(a.projection, b.projection)
    assert not torch.equal(a.projection, c.projection)
    # Only the projection is saved; the vocabulary comes back from the LM.
    assert set(a.state_dict()) == {"projection"}
    c.load_state_dict(a.state_dict())
    assert torch.equal(c.projection, a.projection)
    x = observations()
    torch.testing.assert_close(c(x), a(x), atol=0, rtol=0)


def test_nothing_is_trainable_and_zero_embeddings_are_safe(embeddings):
    embeddings[0] = 0.0  # e.g. a padding token
    hopfield = FrozenHopfield(INPUT_DIM, embeddings, beta=1.0, seed=0)
    assert list(hopfield.parameters()) == []
    out = hopfield(observations())
    assert not out.requires_grad and torch.isfinite(out).all()
    # Observations of any shape are flattened, and integer pixels are accepted.
    image = torch.randint(0, 256, (B, 4, 5), dtype=torch.uint8)
    assert hopfield(image).shape == (B, D_EMBED)
