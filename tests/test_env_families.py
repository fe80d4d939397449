"""The environment families behind make_env: ids, observations, autoreset, and errors for missing extras."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_main
from test_configs import _miniworld_missing, _procgen_missing

from envs import family_of, make_env
from utils.errors import UserError

needs_procgen = pytest.mark.skipif(_procgen_missing() is not None, reason=str(_procgen_missing()))
needs_miniworld = pytest.mark.skipif(_miniworld_missing() is not None, reason=str(_miniworld_missing()))


@pytest.mark.parametrize("env_id, family", [
    ("MiniGrid-DoorKey-5x5-v0", "MiniGrid"), ("MiniWorld-Sign-v0", "MiniWorld"), ("maze", "Procgen"),
    ("HeistMemory-v0", "Procgen"), ("coinrun", "Procgen"), ("RandomMaze-v0", "RandomMaze"),
    ("Psychlab-ContinuousRecognition-v0", "Psychlab"), ("CueRecall-v0", "CueRecall"),
])
def test_family_is_picked_from_the_id(env_id, family):
    assert family_of(env_id) == family


def test_unknown_env_lists_the_families():
    with pytest.raises(UserError, match="known families are MiniGrid.*MiniWorld.*Procgen.*RandomMaze.*Psychlab"):
        family_of("Pong-v5")


def test_no_extra_is_imported_unless_its_family_is_used():
    code = ("import sys; from envs import make_env, family_of; family_of('maze'); family_of('MiniWorld-Sign-v0');"
            "make_env('MiniGrid-Unlock-v0', 1).close(); make_env('RandomMaze-v0', 1).close();"
            "print(sorted(m for m in ('envpool', 'miniworld', 'pyglet', 'deepmind_lab') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("env_id, module, command", [
    ("maze", "envpool", r"pip install -e '.\[procgen\]'"),
    ("MiniWorld-Sign-v0", "miniworld", r"pip install -e '.\[miniworld\]'"),
])
def test_missing_extra_is_one_line_naming_the_pip_command(monkeypatch, env_id, module, command):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(UserError, match=command) as err:
        make_env(env_id, 1)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("env_id", ["coinrun", "MazeEasy-v0", "bigfish"])
def test_procgen_game_without_memory_mode_lists_the_six(env_id):
    with pytest.raises(UserError, match="caveflyer, dodgeball, heist, jumper, maze, miner"):
        make_env(env_id, 1)


def test_psychlab_without_deepmind_lab_says_how_to_get_it():
    pytest.importorskip("envs.psychlab")
    if _has("deepmind_lab"):
        pytest.skip("DeepMind Lab is installed")
    with pytest.raises(UserError, match="not on PyPI.*build it from source.*PSYCHLAB_DATASET"):
        make_env("Psychlab-ContinuousRecognition-v0", 1)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# -- Procgen (EnvPool) ------------------------------------------------------------------------------


@needs_procgen
@pytest.mark.parametrize("env_id", ["maze", "MazeMemory-v0", "procgen-heist"])
def test_procgen_memory_mode_observations(env_id):
    envs = make_env(env_id, 3)
    obs, _ = envs.reset(seed=4089113149)  # larger than int32: folded into EnvPool's range
    assert obs.shape == (3, 64, 64, 3) and obs.dtype == np.uint8
    assert envs.single_action_space.n == 15
    assert envs._pool.spec.config.distribution_mode == 10  # Procgen's memory mode
    assert envs._pool.spec.config.num_levels == 0  # unbounded levels
    envs.close()


@needs_procgen
def test_procgen_same_seed_same_levels():
    first, second = make_env("maze", 2), make_env("maze", 2)
    a, _ = first.reset(seed=7)
    b, _ = second.reset(seed=7)
    c, _ = second.reset(seed=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@needs_procgen
def test_procgen_same_step_autoreset_gives_final_and_first_observation():
    """Jumper's random-policy episodes end quickly; a finished env returns the next episode's start at once."""
    envs = make_env("jumper", 4)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        obs, rewards, terminated, truncated, info = envs.step(rng.integers(15, size=4))
        done = terminated | truncated
        if done.any():
            break
    assert done.any(), "no episode ended"
    assert set(np.flatnonzero(info["_final_obs"])) == set(np.flatnonzero(done))
    for i in np.flatnonzero(done):
        assert not np.array_equal(info["final_obs"][i], obs[i])  # last frame of the old level vs first of a new one
    # the finished env really started over: its next steps do not end the episode at once
    obs2, _, terminated2, truncated2, _ = envs.step(np.zeros(4, dtype=np.int64))
    assert not (terminated2 | truncated2)[done].any()
    envs.close()


@needs_procgen
def test_main_trains_and_eval_runs_on_procgen(experiments, tmp_path):
    assert run_main("--var", "model=CNN-PPO", "--var", "env=maze", "--run-id", "p", experiments=experiments) == 0
    (run,) = [p for p in experiments.glob("*/*/*") if p.is_dir()]
    import eval as evaluate

    assert evaluate.main(["--ckpt-path", str(run), "--n-episodes", "1", "--n-envs", "1", "--out", str(tmp_path / "e"),
                          "--random"]) == 0
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["episodes"] == 1


# -- MiniWorld --------------------------------------------------------------------------------------


@needs_miniworld
def test_sign_observation_is_its_image():
    envs = make_env("MiniWorld-Sign-v0", 1)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (1, 60, 80, 3) and obs.dtype == np.uint8
    envs.close()


@needs_miniworld
def test_papers_pickupobjs_id_maps_to_miniworld_2():
    envs = make_env("MiniWorld-PickupObjs-v0", 1)
    assert envs.envs[0].spec.id == "MiniWorld-PickupObjects-v0"
    envs.close()


@needs_miniworld
def test_unknown_miniworld_id_suggests_close_ones():
    with pytest.raises(UserError, match="did you mean MiniWorld-Sign-v0"):
        make_env("MiniWorld-Sgn-v0", 1)


@needs_miniworld
@pytest.mark.slow
def test_miniworld_async_workers_start_headless():
    envs = make_env("MiniWorld-TMaze-v0", 2, "async")
    obs, _ = envs.reset(seed=0)
    obs, *_ = envs.step(np.zeros(2, dtype=np.int64))
    assert obs.shape == (2, 60, 80, 3)
    envs.close()


@needs_miniworld
def test_main_trains_on_miniworld(experiments, tmp_path):
    from tests.tiny_lms import tiny_gpt2

    lm = tiny_gpt2(str(tmp_path / "lm"))
    assert run_main("--var", "model=HELM", "--var", "env=MiniWorld-YMaze-v0", "--var", f"lm={lm}",
                    "--var", "mem_len=8", experiments=experiments) == 0


# -- RandomMaze -------------------------------------------------------------------------------------


def test_main_trains_on_random_maze_without_reward_normalisation(experiments):
    assert run_main("--config", str(ROOT / "configs/RandomMaze/RandomMaze/Impala-PPO/config.json"),
                    experiments=experiments) == 0
