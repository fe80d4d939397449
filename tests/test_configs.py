"""Every shipped paper config is valid, names its source, and builds and steps its env and agent.

The configs name full-size models (Pythia-410m, CLIP ViT-B) that cannot be downloaded here, so the
build swaps in tiny ones of the same kinds: a GPT-NeoX (Pythia's architecture) with a byte-level
BPE tokenizer and enough positions for the longest memory, and a tiny CLIP. Everything else, the
env, its observation shape, mem_len, top-k, is the config's own.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from conftest import ROOT
from tiny_clip import make_gpt2_tokenizer, save_tiny_clip
from tiny_lms import tiny_neox

from envs import family_of, make_env
from models import build_agent, check_model
from models.clip_encoder import load_clip
from models.semantic_db import build_database, save_database
from utils import config
from utils.errors import UserError

CONFIGS = sorted((ROOT / "configs").rglob("config.json"))
MODELS = ("HELM", "HELMv2", "SHELM", "Impala-PPO", "CNN-PPO")
EXPECTED = {  # the papers' env x model grid (issue 5)
    **{("MiniGrid", env, m): 1 for env in ("DoorKey5x5", "DoorKey6x6", "DynamicObstacles", "KeyCorridor", "Memory",
                                            "RedBlueDoors", "Unlock") for m in MODELS},
    **{("MiniWorld", env, m): 1 for env in ("CollectHealth", "FourRooms", "MazeS3Fast", "PickupObjs", "PutNext", "Sign",
                                             "TMaze", "YMaze") for m in MODELS},
    **{("Procgen", env, m): 1 for env in ("Caveflyer", "Dodgeball", "Heist", "Jumper", "Maze", "Miner")
       for m in ("HELM", "Impala-PPO", "CNN-PPO")},
    **{("RandomMaze", "RandomMaze", m): 1 for m in ("HELM", "Impala-PPO", "CNN-PPO")},
    **{("Psychlab", "ContinuousRecognition", m): 1 for m in ("HELM", "HELMv2", "SHELM")},
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT / "configs").parent)


def _load_generator():
    spec = importlib.util.spec_from_file_location("generate_configs", ROOT / "configs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_paper_experiment_has_a_config():
    found = {tuple(p.relative_to(ROOT / "configs").parts[:3]) for p in CONFIGS}
    assert found == set(EXPECTED)


def test_configs_on_disk_are_what_the_generator_writes():
    generator = _load_generator()
    expected = generator.all_configs()
    assert set(expected) == set(CONFIGS)
    for path, values in expected.items():
        assert path.read_text() == generator.render(values), f"{path}: run python configs/generate.py"


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_config_is_valid(path: Path):
    raw = json.loads(path.read_text())
    assert "env" in raw and raw.get("beta", 1.0) is not None, "every file names its env and a valid beta"
    cfg = config.resolve(path, [])
    check_model(cfg["model"])
    family = family_of(cfg["env"])
    assert path.parts[-4] == family
    assert path.parent.name == cfg["model"]
    assert cfg["source"], "every config records where its numbers come from"
    if cfg["model"] in ("HELM", "HELMv2", "SHELM"):
        assert "TransfoXL" in cfg["source"], "the LM substitution is stated"


# -- building every config with tiny models ---------------------------------------------------------


def _procgen_missing() -> str | None:
    try:
        import envpool.procgen

        envpool.procgen.ProcgenEnvSpec  # noqa: B018  (loads the C++ module, which needs Qt 5)
    except ImportError as err:
        return f"Procgen needs the procgen extra and Qt 5 ({str(err).splitlines()[0]})"
    return None


def _miniworld_missing() -> str | None:
    os.environ.setdefault("PYGLET_HEADLESS", "1")
    try:
        import miniworld  # noqa: F401
    except ImportError as err:
        return f"MiniWorld needs the miniworld extra ({err})"
    return None


def _skip_reason(family: str) -> str | None:
    if family == "Procgen":
        return _procgen_missing()
    if family == "MiniWorld":
        return _miniworld_missing()
    if family == "Psychlab":
        try:
            import deepmind_lab  # noqa: F401
        except ImportError:
            return "DeepMind Lab is not installed (it must be built from source)"
    return None


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("config_models")
    lm_dir = root / "neox"
    tokenizer = make_gpt2_tokenizer(lm_dir)
    tokenizer.save_pretrained(str(lm_dir))
    tiny_neox(str(lm_dir), vocab_size=len(tokenizer), max_positions=4096)  # room for SHELM's 2045-token memories
    clip_dir = str(save_tiny_clip(root / "clip"))
    dbs = {}
    for templates, strings in (("none", ["{}"]), ("psychlab", ["a render of {}", "a screenshot of {}"])):
        db = build_database(load_clip(clip_dir), AutoTokenizer.from_pretrained(clip_dir),
                            AutoTokenizer.from_pretrained(str(lm_dir)), strings, clip_dir, str(lm_dir), templates,
                            progress=False)
        save_database(db, root / f"db_{templates}.pt")
        dbs[templates] = str(root / f"db_{templates}.pt")
    return {"lm": str(lm_dir), "clip": clip_dir, "dbs": dbs}


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_config_builds_and_steps_with_tiny_models(path: Path, tiny_models):
    cfg = config.resolve(path, [])
    family = family_of(cfg["env"])
    reason = _skip_reason(family)
    if reason:
        if family == "Psychlab":  # what a user without DeepMind Lab gets: one line that says what to do
            with pytest.raises(UserError, match="DeepMind Lab.*build it from source"):
                make_env(cfg["env"], 1)
        pytest.skip(reason)
    cfg.update(lm=tiny_models["lm"], clip_model=tiny_models["clip"], semantic_db=tiny_models["dbs"][cfg["templates"]],
               n_envs=2, device="cpu")
    envs = make_env(cfg["env"], cfg["n_envs"], cfg["vec_env"])
    try:
        agent = build_agent(cfg["model"], envs.single_observation_space.shape, int(envs.single_action_space.n), cfg)
        if cfg["model"] in ("HELM", "HELMv2", "SHELM"):
            assert agent.memory.mem_len == cfg["mem_len"]
        obs, _ = envs.reset(seed=cfg["seed"])
        starts = np.ones(cfg["n_envs"], dtype=bool)
        state = agent.initial_state(cfg["n_envs"])
        with torch.no_grad():
            for _ in range(3):
                out, state = agent.act(torch.as_tensor(obs), state, torch.as_tensor(starts))
                obs, rewards, terminated, truncated, _ = envs.step(out.actions.numpy())
                starts = terminated | truncated
        assert obs.shape == (cfg["n_envs"], *envs.single_observation_space.shape)
        assert np.isfinite(rewards).all()
    finally:
        envs.close()
