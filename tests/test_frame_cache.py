"""The exact frame cache shared by CLIP's image encoder and HELM's FrozenHopfield."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import build_agent
from models.frame_cache import FrameCache
from tests.tiny_lms import tiny_gpt2
from utils.config import defaults


def _frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 56, 56, 3), dtype=np.uint8)


def test_lookup_computes_each_distinct_miss_once_and_evicts_the_least_recent():
    cache = FrameCache(capacity=3)
    a, b, c, d = _frames(4, 0)
    calls = []

    def compute(indices):
        calls.append(list(indices))
        return torch.tensor([[float(frames[i].sum())] for i in indices])

    frames = np.stack([a, b, a])
    rows = cache.lookup(frames, compute)
    assert calls == [[0, 1]] and (cache.hits, cache.misses) == (1, 2)  # the second a is a hit
    assert torch.equal(rows[0], rows[2]) and rows[0].item() == float(a.sum())
    frames = np.stack([c, a])  # a becomes the most recent
    cache.lookup(frames, compute)
    frames = np.stack([d])  # evicts b, the least recently used
    cache.lookup(frames, compute)
    assert len(cache) == 3
    frames = np.stack([a, b])
    cache.lookup(frames, compute)
    assert calls[-1] == [1]  # b was evicted, a was not
    assert cache.interval_log("x") == {"x/cache_entries": 3.0, "x/cache_hit_rate": 3 / 8}
    assert cache.interval_log("x") == {"x/cache_entries": 3.0}  # nothing since the last call


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return tiny_gpt2(str(tmp_path_factory.mktemp("lm") / "gpt2"), n_positions=64)


def _helm(lm_dir, size):
    cfg = defaults() | {"model": "HELM", "lm": lm_dir, "mem_len": 8, "seed": 3, "hopfield_cache_size": size,
                        "env": "MiniGrid-MemoryS7-v0"}
    return build_agent("HELM", (56, 56, 3), 7, cfg)


def test_helm_with_the_cache_feeds_the_memory_what_it_would_without(lm_dir):
    cached, plain = _helm(lm_dir, 100), _helm(lm_dir, 0)
    plain.load_checkpoint_state(cached.checkpoint_state())
    frames = torch.from_numpy(_frames(6, 1))
    batches = [frames[:4], frames[2:6], torch.cat([frames[:2], frames[:2]])]
    for batch in batches:
        assert torch.allclose(cached.encoder(batch), plain.encoder(batch), atol=1e-6)
    # 4 new; then 2 hits + 2 new; then 4 hits
    assert (cached.encoder.cache.hits, cached.encoder.cache.misses) == (6, 6)
    assert cached.step_log() == {"hopfield/cache_entries": 6.0, "hopfield/cache_hit_rate": 0.5}
    assert plain.step_log() == {} and len(plain.encoder.cache) == 0


def test_more_distinct_frames_than_capacity_in_one_lookup_keeps_the_last_ones_right():
    cache = FrameCache(capacity=2)
    frames = _frames(3, 2)
    values = [float(f.sum()) for f in frames]

    def compute(indices):
        return torch.tensor([[values[i]] for i in indices])

    rows = cache.lookup(frames, compute)
    assert [r.item() for r in rows] == values and len(cache) == 2
    again = cache.lookup(frames[1:], lambda indices: pytest.fail("frames 1 and 2 are cached"))
    assert [r.item() for r in again] == values[1:]
    cache.lookup(_frames(2, 3), lambda indices: torch.zeros(len(indices), 1))  # evicts both
    assert [r.item() for r in again] == values[1:]  # rows handed out earlier are not overwritten


def test_frames_that_never_repeat_do_not_grow_the_process_past_the_cache():
    """A row per continuous observation (POPGym): ~400 KB each through heap fragmentation before
    the rows shared one table; 100 steps of 64 new frames then took the process up by ~3 GB."""
    from models.frozen_hopfield import FrozenHopfield

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 1e6

    hopfield = FrozenHopfield(8, torch.randn(30522, 384), 1.0, seed=0)
    cache = FrameCache(100_000)
    generator = torch.Generator().manual_seed(0)
    before = rss_mb()
    for _ in range(100):
        obs = torch.randn(64, 8, generator=generator)
        cache.lookup(obs.numpy(), lambda misses: hopfield(obs[torch.as_tensor(misses)]))
    assert len(cache) == 6400
    assert rss_mb() - before < 500  # the table: 6400 x 384 floats grown to 8192 rows, 12.6 MB
