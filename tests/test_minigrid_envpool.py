"""EnvPool's C++ MiniGrid against minigrid 3.x: same dynamics in distribution, same pictures exactly.

EnvPool draws its layouts from its own random generator, so a seed gives different episodes than
minigrid's; what must agree is the distribution of episodes. Under a uniformly random policy each
paper env is compared on episode length, return, success and termination (two-sample tests at
p > 0.001, fixed seeds, so the outcome is deterministic), the reward formula is checked exactly,
and the symbolic views are compared in what they show. On ids whose layout is fixed (Empty,
DistShift) the two backends are deterministic and must agree step for step, pixels included.

``python tests/test_minigrid_envpool.py [episodes]`` prints the comparison table with more episodes.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("minigrid")
pytest.importorskip("envpool")

import gymnasium as gym  # noqa: E402
import minigrid  # noqa: E402,F401
from scipy import stats  # noqa: E402

from envs.minigrid_envpool import SameStepMiniGridPool  # noqa: E402
from envs.minigrid_render import N_CODES, N_COLORS, N_STATES, cell_codes  # noqa: E402

PAPER_ENVS = [
    "MiniGrid-DoorKey-5x5-v0", "MiniGrid-DoorKey-6x6-v0", "MiniGrid-Dynamic-Obstacles-Random-5x5-v0",
    "MiniGrid-KeyCorridorS3R1-v0", "MiniGrid-MemoryS11-v0", "MiniGrid-RedBlueDoors-6x6-v0", "MiniGrid-Unlock-v0",
]
EPISODES = 400
VIEW_EVERY = 40  # steps between sampled views (views cost minigrid far more than its steps)
P_MIN = 1e-3


def minigrid_episodes(env_id: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(episodes [n, 4] of length, return, terminated, truncated; sampled views; max_steps) of minigrid.

    The env skips building its observation except for the sampled views: dynamics do not read it,
    and without it minigrid steps ~20x faster.
    """
    env = gym.make(env_id).unwrapped
    view = env.gen_obs
    env.gen_obs = lambda: None
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    episodes, views, t = [], [], 0
    while len(episodes) < n:
        length, ret = 0, 0.0
        while True:
            _, reward, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
            length, ret, t = length + 1, ret + reward, t + 1
            if t % VIEW_EVERY == 0:
                views.append(view()["image"])
            if terminated or truncated:
                break
        episodes.append((length, ret, terminated, truncated))
        env.reset()
    return np.array(episodes, dtype=np.float64), np.array(views), env.max_steps


def envpool_episodes(env_id: str, n: int, seed: int, n_envs: int = 32) -> tuple[np.ndarray, np.ndarray, int]:
    """The same from ``SameStepMiniGridPool`` (the first ``n`` episodes to end)."""
    pool = SameStepMiniGridPool(env_id, n_envs, seed=seed)
    pool.reset()
    rng = np.random.default_rng(seed)
    length, ret = np.zeros(n_envs), np.zeros(n_envs)
    episodes, views, t = [], [], 0
    while len(episodes) < n:
        obs, reward, terminated, truncated, _ = pool.step(rng.integers(pool.single_action_space.n, size=n_envs))
        length, ret, t = length + 1, ret + reward, t + 1
        if t % VIEW_EVERY == 0:
            views.append(obs)
        for i in np.flatnonzero(terminated | truncated):
            episodes.append((length[i], ret[i], terminated[i], truncated[i]))
            length[i] = ret[i] = 0
    max_steps = pool._pool.spec.config.max_episode_steps
    pool.close()
    return np.array(episodes[:n], dtype=np.float64), np.concatenate(views), max_steps


def compare(env_id: str, n: int = EPISODES, seed: int = 0) -> dict:
    """The numbers the test asserts on (and the table prints)."""
    a, views_a, max_a = minigrid_episodes(env_id, n, seed)
    b, views_b, max_b = envpool_episodes(env_id, n, seed)
    succ_a, succ_b = a[:, 1] > 0, b[:, 1] > 0

    def proportions_p(x: np.ndarray, y: np.ndarray) -> float:
        table = [[x.sum(), (~x).sum()], [y.sum(), (~y).sum()]]
        return 1.0 if min(x.sum() + y.sum(), (~x).sum() + (~y).sum()) == 0 else stats.chi2_contingency(table).pvalue

    return {
        "max_steps": (max_a, max_b),
        "mean_length": (a[:, 0].mean(), b[:, 0].mean()),
        "mean_return": (a[:, 1].mean(), b[:, 1].mean()),
        "success": (succ_a.mean(), succ_b.mean()),
        "terminated": (a[:, 2].mean(), b[:, 2].mean()),
        "p_length": stats.ks_2samp(a[:, 0], b[:, 0]).pvalue,
        "p_return": stats.ks_2samp(a[:, 1], b[:, 1]).pvalue,
        "p_success": proportions_p(succ_a, succ_b),
        "p_terminated": proportions_p(a[:, 2] > 0, b[:, 2] > 0),
        "episodes": (a, b),
        "views": (views_a, views_b),
    }


def _kinds(views: np.ndarray) -> tuple[dict, float]:
    """What the views show, colours pooled: {(agent cell?, type, door state) : count per view}, and
    the mean number of unseen cells per view."""
    codes = cell_codes(views).reshape(len(views), -1)
    agent, rest = np.divmod(codes, N_CODES)
    kind, state = rest // (N_COLORS * N_STATES), rest % N_STATES
    state = np.where(kind == 4, state, 0)  # only doors have a state
    keys, counts = np.unique(np.stack([agent, kind, state], -1).reshape(-1, 3), axis=0, return_counts=True)
    return {tuple(k): c / len(views) for k, c in zip(keys.tolist(), counts)}, float((kind == 0).sum(1).mean())


@pytest.mark.parametrize("env_id", PAPER_ENVS)
def test_random_policy_episodes_match_minigrid(env_id):
    r = compare(env_id)
    assert r["max_steps"][0] == r["max_steps"][1]
    for key in ("p_length", "p_return", "p_success", "p_terminated"):
        assert r[key] > P_MIN, f"{key} = {r[key]:.2g}: {r}"
    for episodes, max_steps in zip(r["episodes"], r["max_steps"]):
        length, ret = episodes[:, 0], episodes[:, 1]
        won = ret > 0  # minigrid's reward for success; EnvPool's is float32
        np.testing.assert_allclose(ret[won], 1 - 0.9 * length[won] / max_steps, atol=1e-6)
        assert set(ret[~won]) <= {0.0, -1.0}  # -1: a collision in Dynamic-Obstacles
    # The views: the same kinds of cell (doors in each state, what the agent carries), and as much unseen.
    (kinds_a, unseen_a), (kinds_b, unseen_b) = (_kinds(v) for v in r["views"])
    common = {k for k in kinds_a.keys() | kinds_b.keys() if max(kinds_a.get(k, 0), kinds_b.get(k, 0)) > 0.02}
    assert common <= kinds_a.keys() & kinds_b.keys(), (kinds_a, kinds_b)
    assert abs(unseen_a - unseen_b) <= 0.1 * max(unseen_a, unseen_b) + 0.1


@pytest.mark.parametrize("env_id", ["MiniGrid-DistShift1-v0", "MiniGrid-Empty-8x8-v0"])
def test_fixed_layouts_step_for_step_identical_pictures(env_id):
    """Deterministic ids: EnvPool + atlas gives minigrid's wrappers' pictures, rewards, flags and
    final observations exactly (lava ends DistShift episodes, the time limit ends Empty's)."""
    from envs.minigrid import make_vector

    n_envs = 2
    pool, reference = make_vector(env_id, n_envs, "envpool"), make_vector(env_id, n_envs, "sync", renderer="minigrid")
    np.testing.assert_array_equal(pool.reset(seed=0)[0], reference.reset(seed=0)[0])
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(600):
        actions = rng.integers(3, size=n_envs)  # turn and move: enough to reach lava, the goal or the limit
        obs, reward, terminated, truncated, info = pool.step(actions)
        obs_r, reward_r, terminated_r, truncated_r, info_r = reference.step(actions)
        np.testing.assert_array_equal(obs, obs_r)
        np.testing.assert_allclose(reward, reward_r, atol=1e-6)
        np.testing.assert_array_equal(terminated, terminated_r)
        np.testing.assert_array_equal(truncated, truncated_r)
        if "final_obs" in info_r:
            np.testing.assert_array_equal(info["_final_obs"], info_r["_final_obs"])
            for i in np.flatnonzero(info_r["_final_obs"]):
                np.testing.assert_array_equal(info["final_obs"][i], info_r["final_obs"][i])
                assert not np.array_equal(info["final_obs"][i], obs[i])  # the next episode has begun
                ends += 1
    assert ends >= n_envs
    pool.close()
    reference.close()


@pytest.mark.parametrize("env_id, actions, reward", [
    ("MiniGrid-Empty-5x5-v0", [6] * 95 + [2, 2, 1, 2, 2], 0.1),  # wait, then reach the goal on step 100 of 100
    ("MiniGrid-Dynamic-Obstacles-5x5-v0", [0] * 99 + [2], -1.0),  # turn in place, then walk into what is ahead
])
def test_an_end_on_the_last_step_is_a_termination_as_in_minigrid(env_id, actions, reward):
    """EnvPool reports an episode that ends with a reward on its last allowed step as truncated only;
    minigrid (and so our pool) says terminated and truncated."""
    pool = SameStepMiniGridPool(env_id, 16)
    pool.reset(seed=0)
    for a in actions:
        _, r, terminated, truncated, _ = pool.step(np.full(16, a))
    ended = r != 0
    assert ended.any() and truncated.all()
    np.testing.assert_allclose(r[ended], reward, atol=1e-6)
    assert terminated[ended].all() and not terminated[~ended].any()

    env = gym.make(env_id).unwrapped
    for seed in range(16):  # minigrid: the same on the seeds where something was ahead
        env.reset(seed=seed)
        for a in actions:
            _, r_mg, terminated_mg, truncated_mg, _ = env.step(a)
        assert truncated_mg and terminated_mg == (r_mg != 0)


def test_envpool_errors_are_one_line():
    from envs.minigrid import make_vector
    from utils.errors import UserError

    with pytest.raises(UserError, match="EnvPool does not implement 'MiniGrid-MultiRoom-N4-S5-v1'"):
        make_vector("MiniGrid-MultiRoom-N4-S5-v1", 2, "envpool")
    with pytest.raises(UserError, match="renderer='atlas'"):
        make_vector("MiniGrid-Unlock-v0", 2, "envpool", renderer="minigrid")


def test_a_new_seed_makes_a_new_pool():
    from envs.minigrid import make_vector

    envs = make_vector("MiniGrid-KeyCorridorS3R1-v0", 4, "envpool")
    first = envs.reset(seed=1)[0]
    assert first.shape == (4, 56, 56, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(envs.reset(seed=1)[0], first)
    assert not np.array_equal(envs.reset(seed=2)[0], first)
    envs.close()


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    print(f"{'env':42s} {'minigrid / envpool':>18s}: mean length, mean return, success, terminated | p-values")
    for env_id in PAPER_ENVS:
        r = compare(env_id, n)
        cells = ", ".join(f"{r[k][0]:.3f}/{r[k][1]:.3f}" for k in ("mean_length", "mean_return", "success", "terminated"))
        ps = ", ".join(f"{k[2:]} {r[k]:.3g}" for k in ("p_length", "p_return", "p_success", "p_terminated"))
        print(f"{env_id:42s} {n} episodes each: {cells} | {ps}", flush=True)


def test_main_trains_with_vec_env_envpool(tmp_path):
    from conftest import run_main
    from utils.checkpoint import load_checkpoint

    experiments = tmp_path / "experiments"
    assert run_main("--var", "model=CNN-PPO", "--var", "env=MiniGrid-MemoryS7-v0", "--var", "vec_env=envpool",
                    "--run-id", "ep", experiments=experiments) == 0
    run = experiments / "CNN-PPO" / "MiniGrid-MemoryS7-v0" / "ep"
    assert load_checkpoint(run / "ckpt_last.pt")["step"] == 64

    # eval.py steps the envs as training did, unless told otherwise
    import eval as evaluate
    from envs import minigrid_envpool

    made = []
    original = minigrid_envpool.SameStepMiniGridPool.__init__

    def spy(self, *args, **kwargs):
        made.append(True)
        original(self, *args, **kwargs)

    minigrid_envpool.SameStepMiniGridPool.__init__ = spy
    try:
        assert evaluate.main(["--ckpt-path", str(run), "--n-episodes", "2", "--out", str(tmp_path / "e1"),
                              "--no-progress"]) == 0
        assert made
        made.clear()
        assert evaluate.main(["--ckpt-path", str(run), "--n-episodes", "2", "--out", str(tmp_path / "e2"),
                              "--vec-env", "sync", "--no-progress"]) == 0
        assert not made
    finally:
        minigrid_envpool.SameStepMiniGridPool.__init__ = original


def test_vec_env_auto_picks_envpool_where_it_can_and_the_run_records_what_ran(tmp_path):
    import json

    from conftest import run_main
    from envs import resolve_vec_env

    assert resolve_vec_env("MiniGrid-KeyCorridorS3R1-v0", "auto") == "envpool"
    assert resolve_vec_env("MiniGrid-MultiRoom-N4-S5-v1", "auto") == "sync"  # an id EnvPool lacks
    assert resolve_vec_env("CueRecall-D1-v0", "auto") == resolve_vec_env("RandomMaze-v0", "auto") == "sync"
    assert resolve_vec_env("MiniGrid-KeyCorridorS3R1-v0", "sync") == "sync"  # an explicit choice stands
    experiments = tmp_path / "experiments"
    assert run_main("--var", "model=CNN-PPO", "--var", "env=MiniGrid-MemoryS7-v0", "--var", "vec_env=auto",
                    "--run-id", "a", experiments=experiments) == 0
    run = experiments / "CNN-PPO" / "MiniGrid-MemoryS7-v0" / "a"
    assert json.loads((run / "config.json").read_text())["vec_env"] == "envpool"
    assert json.loads((run / "runtime.json").read_text())["segments"][0]["env_backend"] == "envpool"


def test_vec_env_auto_falls_back_to_the_python_envs_without_envpool(monkeypatch):
    import builtins

    from envs import resolve_vec_env

    real_import = builtins.__import__

    def no_envpool(name, *args, **kwargs):
        if name == "envpool" or name.startswith("envpool."):
            raise ImportError("no envpool")
        return real_import(name, *args, **kwargs)

    from envs.minigrid_envpool import envpool_ids

    envpool_ids.cache_clear()  # its answer is cached per process
    monkeypatch.setattr(builtins, "__import__", no_envpool)
    try:
        assert resolve_vec_env("MiniGrid-KeyCorridorS3R1-v0", "auto") == "sync"
    finally:
        envpool_ids.cache_clear()
