"""CLIPImageEncoder: preprocessing, the LRU feature cache and its counters, load_clip errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tiny_clip  # noqa: F401  (puts the repo root on sys.path)
from tiny_clip import make_clip_tokenizer, make_tiny_clip, save_tiny_clip

from models.clip_encoder import CLIP_MEAN, CLIP_STD, CLIPImageEncoder, encode_texts, load_clip
from utils.errors import UserError


@pytest.fixture(scope="module")
def clip():
    return make_tiny_clip(seed=0)  # image_size 32, projection 16


def _frames(n: int, seed: int, h: int = 24, w: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def _normalised(rgb: tuple[int, int, int]) -> torch.Tensor:
    return torch.tensor([(c / 255 - m) / s for c, m, s in zip(rgb, CLIP_MEAN, CLIP_STD)])


def test_preprocess_normalisation_square(clip):
    enc = CLIPImageEncoder(clip)
    frame = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    frame[0] = (255, 0, 128)
    frame[1] = (10, 200, 30)
    x = enc.preprocess(torch.from_numpy(frame))
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    for i, rgb in enumerate([(255, 0, 128), (10, 200, 30)]):
        expected = _normalised(rgb).view(3, 1, 1).expand(3, 32, 32)
        torch.testing.assert_close(x[i], expected, atol=1e-6, rtol=0)


def test_preprocess_square_resize_is_plain_resize(clip):
    enc = CLIPImageEncoder(clip)
    frames = torch.from_numpy(_frames(2, 1, 56, 56))
    ref = torch.nn.functional.interpolate(
        frames.permute(0, 3, 1, 2).float() / 255, size=(32, 32), mode="bicubic", align_corners=False, antialias=True
    )
    ref = (ref - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(enc.preprocess(frames), ref)


@pytest.mark.parametrize("wide", [True, False])
def test_preprocess_non_square_is_center_cropped(clip, wide):
    """16x32 frame: red | green | blue in quarters/half. Short side -> 32 then a centre crop keeps
    only the green half; squashing would keep red and blue at the borders."""
    enc = CLIPImageEncoder(clip)
    frame = np.zeros((1, 16, 32, 3), dtype=np.uint8)
    frame[:, :, :8] = (255, 0, 0)
    frame[:, :, 8:24] = (0, 255, 0)
    frame[:, :, 24:] = (0, 0, 255)
    if not wide:
        frame = frame.transpose(0, 2, 1, 3).copy()  # 32x16, bands now horizontal
    x = enc.preprocess(torch.from_numpy(frame))[0]
    assert x.shape == (3, 32, 32)
    green = _normalised((0, 255, 0)).view(3, 1, 1)
    # Bicubic ringing only reaches a few output pixels from the colour edges at the crop border.
    inner = x[:, :, 4:-4] if wide else x[:, 4:-4, :]
    torch.testing.assert_close(inner, green.expand_as(inner), atol=1e-4, rtol=0)
    border = x[:, :, 0] if wide else x[:, 0, :]
    red = _normalised((255, 0, 0)).view(3, 1)
    assert (border - green.view(3, 1)).abs().max() < (border - red).abs().max()


def test_cached_equals_uncached_and_counts(clip):
    cached = CLIPImageEncoder(clip, cache_size=100)
    plain = CLIPImageEncoder(clip, cache_size=0)
    f = _frames(6, 2)

    first = cached(f[:4])
    assert first.shape == (4, 16) and first.dtype == torch.float32
    # All misses, no duplicates: the same batched forward as uncached -> bit-exact.
    assert torch.equal(first, plain(f[:4]))
    assert (cached.hits, cached.misses, cached.images_encoded, cached.forward_calls) == (0, 4, 4, 1)

    # Mixed batch: f0, f1 cached, f4 new, f0 again.
    batch = np.stack([f[0], f[1], f[4], f[0]])
    out = cached(batch)
    assert (cached.hits, cached.misses, cached.images_encoded, cached.forward_calls) == (3, 5, 5, 2)
    # Cached rows are exactly the values computed the first time.
    assert torch.equal(out[0], first[0]) and torch.equal(out[1], first[1]) and torch.equal(out[3], first[0])
    # Against an uncached forward of the same batch only the batch size differs: documented
    # last-bit tolerance (CPU kernels round differently for different batch sizes).
    torch.testing.assert_close(out, plain(batch), atol=1e-5, rtol=1e-5)

    # Duplicates inside a batch of new frames go through CLIP once.
    cached.reset_stats()
    dup = cached(np.stack([f[5], f[5]]))
    assert (cached.hits, cached.misses, cached.images_encoded) == (1, 1, 1)
    assert torch.equal(dup[0], dup[1])
    assert cached.hit_rate() == pytest.approx(0.5)

    # Uncached encoder: everything is a miss.
    assert plain.hits == 0 and plain.misses == 8 and plain.images_encoded == 8 and plain.hit_rate() == 0.0


def test_torch_and_numpy_inputs_agree_and_output_is_autograd_ready(clip):
    enc = CLIPImageEncoder(clip, cache_size=0)
    f = _frames(3, 3)
    out = enc(torch.from_numpy(f))
    assert torch.equal(out, enc(f))
    assert not out.is_inference() and not out.requires_grad
    w = torch.ones(16, requires_grad=True)
    (out * w).sum().backward()
    assert w.grad is not None
    cached_out = CLIPImageEncoder(clip)(f)
    assert not cached_out.is_inference()


def test_lru_bound_evicts_least_recently_used(clip):
    enc = CLIPImageEncoder(clip, cache_size=3)
    f = _frames(5, 4)
    enc(f[0:3])  # cache: 0 1 2
    enc(f[0:1])  # hit on 0 -> order 1 2 0
    enc(f[3:4])  # miss, evicts 1 -> 2 0 3
    assert enc.cache_len() == 3
    enc.reset_stats()
    enc(f[0:1])
    enc(f[2:3])
    enc(f[3:4])
    assert (enc.hits, enc.misses) == (3, 0)
    enc(f[1:2])  # 1 was evicted
    assert (enc.hits, enc.misses) == (3, 1)
    assert enc.cache_len() == 3
    # A batch larger than the cache keeps only the most recent entries.
    enc(f)
    assert enc.cache_len() == 3


def test_bad_frames_rejected(clip):
    enc = CLIPImageEncoder(clip)
    with pytest.raises(ValueError):
        enc(np.zeros((2, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError):
        enc(np.zeros((2, 8, 8, 3), dtype=np.float32))


def test_encode_texts_normalised(tmp_path):
    tok = make_clip_tokenizer(tmp_path)
    clip = make_tiny_clip(tok)
    emb = encode_texts(clip, tok, ["a cat", "a red ball", "dog"], batch_size=2)
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    # batch-of-one gives the same direction (up to last-bit differences)
    torch.testing.assert_close(emb[2:], encode_texts(clip, tok, ["dog"]), atol=1e-5, rtol=1e-5)


def test_load_clip_frozen_and_errors(tmp_path, monkeypatch):
    save_tiny_clip(tmp_path / "clip")
    clip = load_clip(str(tmp_path / "clip"))
    assert not clip.training and not any(p.requires_grad for p in clip.parameters())

    with pytest.raises(UserError, match="does not exist"):
        load_clip(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="CLIP model directory .* has no config.json"):
        load_clip(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="local directory") as info:
        load_clip("no-such-org/no-such-clip-model")
    assert "\n" not in str(info.value)
