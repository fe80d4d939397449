"""Frozen CLIP encoders for HELMv2 and SHELM.

CLIP is never trained here, so everything runs under ``torch.inference_mode`` and image
embeddings are memoised: environments such as MiniGrid revisit the same frames constantly, and a
ViT forward is by far the most expensive part of an env step.

Exactness of the cache: a cached embedding is, bit for bit, the value CLIP produced the first time
that frame was encoded. Only the cache misses of a batch go through CLIP, in one batched forward,
and CPU/GPU matmul kernels may round differently for different batch *sizes* (measured on CPU:
up to ~1e-6 absolute on unit-scale embeddings; same-size batches with other contents agree
exactly). So a batch with some hits can differ from an uncached forward of the full batch in the
last bits; a batch that is all misses (no duplicates) is bit-identical to the uncached forward.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import transformers

from models.frame_cache import FrameCache
from utils.hub import expect_clip, load_pretrained

# CLIP's normalisation constants (the values used by OpenAI CLIP and every HF CLIP checkpoint).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_clip(clip_model: str) -> transformers.CLIPModel:
    """Load a CLIP model (hub id or local directory), frozen and in eval mode.

    Fails with a one-line ``UserError`` rather than a hub traceback (see `utils.hub.load_pretrained`):
    the usual causes (a typo in a path, no network for an uncached hub id, a directory holding
    another kind of model) are fixed by the user.
    """
    clip = load_pretrained(transformers.CLIPModel, clip_model, "CLIP model", expect=expect_clip,
                           hint="point clip_model at a local directory that holds a saved CLIP model")
    clip.requires_grad_(False)
    clip.eval()
    return clip


def load_clip_tokenizer(clip_model: str):
    """The tokenizer saved with a CLIP model (hub id or directory), after checking that it is a CLIP."""
    return load_pretrained(transformers.AutoTokenizer, clip_model, "CLIP tokenizer", expect=expect_clip, model=False)


class CLIPImageEncoder(torch.nn.Module):
    """Frozen CLIP vision tower + projection: uint8 frames -> image embeddings, with an exact LRU feature cache."""

    def __init__(self, clip: transformers.CLIPModel, cache_size: int = 100_000) -> None:
        super().__init__()
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.clip = clip
        self.clip.requires_grad_(False)
        self.clip.eval()
        self.embed_dim: int = int(clip.config.projection_dim)
        self.image_size: int = int(clip.config.vision_config.image_size)
        self.cache_size = cache_size
        # Buffers so that .to(device) moves them along; not persistent (they are constants).
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.cache = FrameCache(cache_size)
        self.forward_calls = 0  # CLIP vision forwards actually run
        self.images_encoded = 0  # images that actually went through CLIP

    # -- bookkeeping -------------------------------------------------------------------------

    def train(self, mode: bool = True) -> "CLIPImageEncoder":
        """Keep CLIP in eval mode even when a parent policy switches to training."""
        super().train(mode)
        self.clip.eval()
        return self

    @property
    def hits(self) -> int:
        return self.cache.hits

    @property
    def misses(self) -> int:
        return self.cache.misses

    def hit_rate(self) -> float:
        """Fraction of images served without their own CLIP forward since the last reset."""
        return self.cache.hit_rate()

    def reset_stats(self) -> None:
        """Zero the hit/miss and forward counters (the cached features are kept)."""
        self.cache.reset_stats()
        self.forward_calls = self.images_encoded = 0

    def clear_cache(self) -> None:
        self.cache.clear()

    def cache_len(self) -> int:
        return len(self.cache)

    # -- computation ---------------------------------------------------------------------------

    def preprocess(self, frames_bhwc_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 [B,H,W,3] -> normalised float [B,3,S,S], as torchvision Resize(S) + CenterCrop(S).

        The short side is resized to S (bicubic, antialiased) and the long side cropped, so
        non-square frames (MiniWorld 60x80) keep their aspect ratio instead of being squashed.
        """
        x = torch.as_tensor(frames_bhwc_uint8, device=self.mean.device)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected frames of shape [B, H, W, 3], got {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float() / 255.0
        side = self.image_size
        h, w = x.shape[-2:]
        if (h, w) != (side, side):
            short, long = min(h, w), max(h, w)
            new_long = int(side * long / short)  # torchvision truncates the same way
            size = (side, new_long) if h <= w else (new_long, side)
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
            top = int(round((x.shape[-2] - side) / 2.0))
            left = int(round((x.shape[-1] - side) / 2.0))
            x = x[..., top : top + side, left : left + side]
        return (x - self.mean) / self.std

    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        """One batched CLIP forward on uint8 frames; returns float32 [B, embed_dim]."""
        pixels = self.preprocess(frames).to(self.clip.dtype)
        out = self.clip.get_image_features(pixel_values=pixels)
        emb = out.pooler_output if hasattr(out, "pooler_output") else out
        self.forward_calls += 1
        self.images_encoded += frames.shape[0]
        return emb.float()

    def forward(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """[B,H,W,3] uint8 -> [B, embed_dim] float32 projected CLIP image embeddings.

        The result is a normal (non-inference) tensor, so it may be fed into trained layers.
        Identical frames within one batch are encoded once.
        """
        if isinstance(frames, torch.Tensor):
            if frames.dtype != torch.uint8:
                raise ValueError(f"expected uint8 frames, got {frames.dtype}")
            frames_np = None
        else:
            frames_np = np.asarray(frames)
            if frames_np.dtype != np.uint8:
                raise ValueError(f"expected uint8 frames, got {frames_np.dtype}")
            frames = torch.from_numpy(np.ascontiguousarray(frames_np))
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected frames of shape [B, H, W, 3], got {tuple(frames.shape)}")
        batch = frames.shape[0]
        device = self.mean.device

        if self.cache_size == 0:
            with torch.inference_mode():
                emb = self._encode(frames)
            self.cache.misses += batch
            return emb.clone()  # clone outside inference mode -> ordinary tensor

        with torch.inference_mode():
            if frames_np is None:
                frames_np = frames.detach().cpu().contiguous().numpy()
            index_device = frames.device
            rows = self.cache.lookup(
                frames_np, lambda misses: self._encode(frames[torch.as_tensor(misses, device=index_device)])
            )
        # Outside inference mode: stack produces an ordinary tensor usable by autograd.
        return torch.stack([r.to(device) for r in rows])


def encode_texts(
    clip: transformers.CLIPModel,
    tokenizer,
    texts: list[str],
    batch_size: int = 256,
    progress: bool = False,
    normalize: bool = True,
) -> torch.Tensor:
    """CLIP text embeddings [N, D] (float32, CPU), L2-normalised unless `normalize=False`, in fixed batches.

    Batches are formed in input order, so the same call gives the same bits every time.
    """
    if not texts:
        return torch.zeros(0, int(clip.config.projection_dim))
    device = next(clip.parameters()).device
    max_len = int(clip.config.text_config.max_position_embeddings)
    starts = range(0, len(texts), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="CLIP text", unit="batch")
    chunks = []
    with torch.inference_mode():
        for start in starts:
            enc = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            )
            out = clip.get_text_features(
                input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)
            )
            emb = out.pooler_output if hasattr(out, "pooler_output") else out
            emb = emb.float()
            chunks.append((F.normalize(emb, dim=-1) if normalize else emb).cpu())
    return torch.cat(chunks).clone()
