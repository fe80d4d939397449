"""HELMv2 and SHELM with a tiny CLIP and a tiny GPT-2 (both saved to disk, no downloads).

The tiny LM is a 1-layer GPT-2 with a large init scale: with GPT-2's usual 0.02 a random LM is
close to the identity, so an earlier token barely changes the output at later ones and the
cue-recall test would measure the LM's weakness rather than the agent.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, GPT2Config, GPT2Model

from conftest import ROOT, run_main
from tiny_clip import make_gpt2_tokenizer, save_tiny_clip

from envs.cue_recall import cue_frame, query_frame, wait_frame
from models import build_agent
from models.clip_encoder import CLIPImageEncoder, load_clip
from models.helmv2 import CLIPToTokenSpace
from models.lm_memory import LMMemory, load_frozen_lm
from models.semantic_db import build_database, default_db_path, save_database
from utils import config
from utils.errors import UserError

CLIP_SEED = 33  # with this seed the red and blue cue frames retrieve different words (asserted below)
OBS_SHAPE = (56, 56, 3)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_lm(path: Path, seed: int = 0) -> str:
    """1-layer GPT-2 (128-d, init std 0.2) with the tiny byte-level BPE tokenizer."""
    tokenizer = make_gpt2_tokenizer(path)
    tokenizer.save_pretrained(str(path))
    torch.manual_seed(seed)
    config_ = GPT2Config(n_layer=1, n_embd=128, n_head=4, n_positions=64, vocab_size=len(tokenizer),
                         initializer_range=0.2, bos_token_id=None, eos_token_id=None)
    GPT2Model(config_).save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("shelm")
    clip_dir = str(save_tiny_clip(root / "clip", seed=CLIP_SEED))
    lm_dir = tiny_lm(root / "lm")
    db = build_database(load_clip(clip_dir), AutoTokenizer.from_pretrained(clip_dir), AutoTokenizer.from_pretrained(lm_dir),
                        ["{}"], clip_dir, lm_dir, "none", progress=False)
    save_database(db, root / "db.pt")
    return {"root": root, "clip": clip_dir, "lm": lm_dir, "db": str(root / "db.pt"), "words": db["words"]}


def make_cfg(tiny, **overrides) -> dict:
    cfg = config.defaults()
    cfg.update(env="CueRecall-D1-v0", seed=0, lm=tiny["lm"], clip_model=tiny["clip"], semantic_db=tiny["db"], mem_len=6)
    cfg.update(overrides)
    return cfg


def agent_for(model: str, cfg: dict):
    return build_agent(model, OBS_SHAPE, 2, cfg)


def frames(n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, size=(n, *OBS_SHAPE), dtype=np.uint8))


def brute_force_topk(tiny, obs: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k database indices by cosine similarity, computed independently of the agent."""
    emb = CLIPImageEncoder(load_clip(tiny["clip"]), cache_size=0)(obs)
    db = torch.load(tiny["db"], weights_only=True)["embeddings"]
    sims = F.normalize(emb, dim=-1) @ F.normalize(db, dim=-1).T
    return sims.argsort(dim=-1, descending=True)[:, :k]


def cue_frames() -> torch.Tensor:
    return torch.from_numpy(np.stack([cue_frame(0), cue_frame(1), wait_frame(), query_frame()]))


# -- SHELM ----------------------------------------------------------------------------------------


def test_retrieval_returns_the_true_topk(tiny):
    agent = agent_for("SHELM", make_cfg(tiny, topk=3))
    obs = frames(6, seed=1)
    idx = agent.encoder.retrieve(obs)
    assert idx.shape == (6, 3) and idx.dtype == torch.long
    assert torch.equal(idx, brute_force_topk(tiny, obs, 3))


def test_k_tokens_per_step_and_per_env_resets_as_in_helm(tiny):
    """The agent's memory output equals an LMMemory fed the retrieved words' embeddings by hand."""
    k, n_envs, steps = 2, 3, 7
    cfg = make_cfg(tiny, topk=k, mem_len=5)
    agent = agent_for("SHELM", cfg)
    reference = LMMemory(load_frozen_lm(tiny["lm"]), cfg["mem_len"])
    embeddings = reference.lm.get_input_embeddings().weight.detach()
    lm_ids = torch.load(tiny["db"], weights_only=True)["lm_ids"]
    starts = torch.zeros(steps, n_envs, dtype=torch.bool)
    starts[0] = True
    starts[3, 1] = starts[5, 0] = True  # envs restart at different steps
    obs = frames(steps * n_envs, seed=2).view(steps, n_envs, *OBS_SHAPE)

    state = agent.initial_state(n_envs)
    reference_state = reference.initial_state(n_envs)
    fresh = LMMemory(load_frozen_lm(tiny["lm"]), cfg["mem_len"])  # env 1 alone, from its restart on
    fresh_state = fresh.initial_state(1)
    with torch.no_grad():
        for t in range(steps):
            out, state = agent.act(obs[t], state, starts[t])
            words = brute_force_topk(tiny, obs[t], k)
            assert torch.equal(out.features["memory_tokens"], words)
            expected, reference_state = reference.step(embeddings[lm_ids[words]], reference_state, starts[t])
            torch.testing.assert_close(out.features["memory_out"], expected, atol=1e-5, rtol=1e-5)
            if t >= 3:  # a reset row forgets its old episode and leaves the other rows alone
                alone, fresh_state = fresh.step(embeddings[lm_ids[words[1:2]]], fresh_state, starts[t, 1:2])
                torch.testing.assert_close(out.features["memory_out"][1:2], alone, atol=1e-5, rtol=1e-5)
    # mem_len counts tokens: the window holds mem_len tokens, i.e. fewer steps when k > 1
    assert agent.memory.mem_len == 5


def test_words_in_traces_and_tensorboard_text(tiny):
    agent = agent_for("SHELM", make_cfg(tiny, topk=2))
    state = agent.initial_state(2)
    cues = cue_frames()
    with torch.no_grad():
        out, state = agent.act(cues[[0, 1]], state, torch.tensor([True, True]))
        described = agent.describe_step(out)
        _, state = agent.act(cues[[2, 2]], state, torch.tensor([False, False]))
        agent.act(cues[[0, 0]], state, torch.tensor([True, False]))
    expected = [[tiny["words"][i] for i in row] for row in out.features["memory_tokens"].tolist()]
    scores = [[round(s, 4) for s in row] for row in out.features["memory_scores"].tolist()]  # cosine, best first
    assert described == [{"words": w, "scores": s} for w, s in zip(expected, scores)]
    assert all(row == sorted(row, reverse=True) for row in scores)
    text = agent.step_text()["memory/words"]
    assert text.startswith(" ".join(expected[0])) and text.count("||") == 1
    log = agent.step_log()
    assert log["clip/cache_hit_rate"] == pytest.approx(3 / 6) and log["clip/cache_entries"] == 3


def test_missing_or_mismatched_database_names_the_command(tiny, tmp_path, monkeypatch):
    other_lm = tiny_lm(tmp_path / "other_lm", seed=1)
    with pytest.raises(UserError) as info:
        agent_for("SHELM", make_cfg(tiny, lm=other_lm))  # tiny["db"] was built for another LM
    message = str(info.value)
    assert "\n" not in message and "python prepare_embeddings.py" in message and f"--lm {other_lm}" in message

    monkeypatch.chdir(tmp_path)  # the default database lives under ./data
    with pytest.raises(UserError, match="not found; build it with: python prepare_embeddings.py") as info:
        agent_for("SHELM", make_cfg(tiny, semantic_db=None, templates="psychlab"))
    assert str(default_db_path(tiny["clip"], tiny["lm"], "psychlab")) in str(info.value)
    assert "--templates psychlab" in str(info.value)


# -- HELMv2 ---------------------------------------------------------------------------------------


def test_helmv2_statistics_are_fixed_and_survive_a_checkpoint(tiny, monkeypatch):
    agent = agent_for("HELMv2", make_cfg(tiny))
    assert not agent.encoder.to_tokens.ready
    obs = frames(4, seed=3)
    with torch.no_grad():
        first = agent.encoder(obs)  # estimates the statistics from a random policy's frames
    assert first.shape == (4, 1, agent.memory.in_dim) and agent.encoder.to_tokens.ready
    # Fixed statistics: an observation's embedding does not depend on the rest of the batch.
    torch.testing.assert_close(agent.encoder(obs[:1]), first[:1], atol=1e-5, rtol=1e-5)
    # On the statistics sample the inputs have the LM's per-dimension token mean and std.
    from models.helmv2 import STATS_FRAMES, random_policy_frames

    sample = agent.encoder(torch.as_tensor(random_policy_frames("CueRecall-D1-v0", STATS_FRAMES, 0)))[:, 0]
    tokens = agent.vocabulary.embeddings()
    torch.testing.assert_close(sample.mean(0), tokens.mean(0), atol=1e-3, rtol=0)
    # (up to batch-norm's eps: a feature of variance v is scaled by 1/sqrt(v + eps), not 1/sqrt(v))
    from models.helmv2 import EPS

    shrink = (1 - EPS / agent.encoder.to_tokens.feature_std**2).sqrt()
    torch.testing.assert_close(sample.std(0, unbiased=False), tokens.std(0) * shrink, atol=1e-3, rtol=1e-2)

    state = agent.checkpoint_state()
    assert {"encoder.to_tokens.feature_mean", "encoder.to_tokens.feature_std", "encoder.to_tokens.projection",
            "encoder.to_tokens.ready"} <= set(state)
    assert not any(key.startswith("encoder.image_encoder.clip.") for key in state)

    def no_estimation(*args, **kwargs):
        raise AssertionError("a restored agent must not re-estimate its statistics")

    monkeypatch.setattr("models.helmv2.random_policy_frames", no_estimation)
    restored = agent_for("HELMv2", make_cfg(tiny, seed=99))  # another seed: another projection until loaded
    restored.load_checkpoint_state(state)
    assert torch.equal(restored.encoder(obs), first)


def test_equal_widths_need_no_projection():
    tokens = torch.randn(50, 16)
    mapping = CLIPToTokenSpace(16, tokens, seed=0)
    assert torch.equal(mapping.projection, torch.eye(16))
    features = torch.randn(200, 16) * 3 + 1
    mapping.set_statistics(features)
    out = mapping(features)
    torch.testing.assert_close(out.mean(0), tokens.mean(0), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(0, unbiased=False), tokens.std(0), atol=1e-4, rtol=1e-3)


def test_helm_family_traces_show_nearest_vocabulary_tokens(tiny, tmp_path):
    obs = cue_frames()[:2]
    for model in ("HELM", "HELMv2"):
        agent = agent_for(model, make_cfg(tiny))
        state = agent.initial_state(2)
        with torch.no_grad():
            out, state = agent.act(obs, state, torch.tensor([True, True]))
            inputs = agent.encoder(obs)[:, 0]
        nearest = (F.normalize(inputs, dim=-1) @ F.normalize(agent.vocabulary.embeddings(), dim=-1).T).argmax(-1)
        tokenizer = AutoTokenizer.from_pretrained(tiny["lm"])
        expected = [[tokenizer.decode([i]).strip() or tokenizer.convert_ids_to_tokens(i)] for i in nearest.tolist()]
        assert agent.describe_step(out) == [{"words": w} for w in expected]
        assert agent.step_text()["memory/words"] == " ".join(expected[0])
    # An LM without a tokenizer: token ids instead of words.
    bare = tmp_path / "bare"
    GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=4, n_positions=64, vocab_size=50,
                         bos_token_id=None, eos_token_id=None)).save_pretrained(str(bare))
    agent = agent_for("HELM", make_cfg(tiny, lm=str(bare)))
    state = agent.initial_state(2)
    with torch.no_grad():
        words = agent.describe_step(agent.act(obs, state, torch.tensor([True, True]))[0])
    assert all(w["words"][0].startswith("#") for w in words)


# -- end to end -----------------------------------------------------------------------------------


def _scalars(run_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("model", ["SHELM", "HELMv2"])
def test_prepare_train_eval_with_traces_and_video(model, tiny, tmp_path, monkeypatch):
    import imageio.v2 as imageio

    import eval as evaluate

    monkeypatch.chdir(tmp_path)  # the default database goes to ./data, never the repo's data/
    variables = ["model=" + model, "env=CueRecall-D1-v0", f"lm={tiny['lm']}", f"clip_model={tiny['clip']}", "mem_len=8"]
    if model == "SHELM":
        proc = subprocess.run(
            [sys.executable, str(ROOT / "prepare_embeddings.py"), "--clip-model", tiny["clip"], "--lm", tiny["lm"]],
            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert proc.returncode == 0, proc.stderr
        assert default_db_path(tiny["clip"], tiny["lm"], "none").is_file()  # relative to the cwd: tmp_path
        variables += ["topk=2", "semantic_db=null"]
    args = [a for v in variables for a in ("--var", v)]
    assert run_main(*args, "--run-id", "r", experiments=tmp_path / "experiments") == 0
    run = tmp_path / "experiments" / model / "CueRecall-D1-v0" / "r"
    assert "clip/cache_hit_rate" in _scalars(run)

    k = 2 if model == "SHELM" else 1
    for fmt in ("json", "csv"):
        out = tmp_path / fmt
        video = ["--video", "--video-episodes", "1"] if fmt == "json" else []
        assert evaluate.main(["--ckpt-path", str(run), "--n-episodes", "2", "--trace-format", fmt, "--out", str(out), *video]) == 0
        if fmt == "json":
            rows = json.loads((out / "trace.json").read_text())
            words = [row["words"] for row in rows]
        else:
            with open(out / "trace.csv", newline="") as handle:
                rows = list(csv.DictReader(handle))
            words = [row["words"].split(" ") for row in rows]
        assert len(rows) == 6 and [int(r["step"]) for r in rows] == [0, 1, 2] * 2  # 2 episodes of 3 steps
        assert {"episode", "step", "action", "reward", "words"} <= set(rows[0])
        assert all(len(w) == k and all(w) for w in words)
    gif = imageio.mimread(tmp_path / "json" / "episodes.gif")
    assert len(gif) == 3 and gif[0].shape[0] > 56 * 4  # a caption band under the upscaled frame
    assert gif[0][56 * 4 :].max() > 0  # with text in it


@pytest.mark.slow
def test_shelm_learns_cue_recall(tiny, tmp_path):
    import eval as evaluate

    # Precondition: the two cues are told apart by the words they retrieve.
    red, blue = brute_force_topk(tiny, cue_frames()[:2], 1)[:, 0].tolist()
    assert red != blue, "the tiny CLIP retrieves the same word for both cues; pick another CLIP_SEED"

    variables = ["model=SHELM", "env=CueRecall-D1-v0", f"lm={tiny['lm']}", f"clip_model={tiny['clip']}",
                 f"semantic_db={tiny['db']}", "mem_len=8", "n_envs=16", "n_rollout_steps=24", "n_batches=4",
                 "n_epochs=3", "learning_rate=1e-3", "ent_coef=0.01", "n_steps=3840", "seed=2"]
    args = [a for v in variables for a in ("--var", v)]
    assert run_main(*args, "--run-id", "learn", experiments=tmp_path / "experiments") == 0
    run = tmp_path / "experiments" / "SHELM" / "CueRecall-D1-v0" / "learn"
    out = tmp_path / "eval"
    assert evaluate.main(["--ckpt-path", str(run), "--n-episodes", "32", "--deterministic", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["success_rate"] >= 0.75, (summary, _scalars(run).get("rollout/success_rate"))
