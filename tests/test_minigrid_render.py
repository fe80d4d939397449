"""The tile-atlas renderer draws exactly what minigrid's RGBImgPartialObsWrapper draws.

Three levels: synthetic grids holding every object kind, colour and state (and the agent carrying
each of them), thousands of states that random policies reach in the papers' seven envs (plus
three more for lava, boxes and a carried ball), and whole vector-env trajectories, final
observations included, against today's wrappers.
"""

from __future__ import annotations

import numpy as np
import pytest

from envs.minigrid_render import AGENT_CELL, N_CODES, N_COLORS, N_STATES, cell_codes, render_views

minigrid = pytest.importorskip("minigrid")

import gymnasium as gym  # noqa: E402
from minigrid.core.constants import OBJECT_TO_IDX  # noqa: E402

PAPER_ENVS = [
    "MiniGrid-DoorKey-5x5-v0", "MiniGrid-DoorKey-6x6-v0", "MiniGrid-Dynamic-Obstacles-Random-5x5-v0",
    "MiniGrid-KeyCorridorS3R1-v0", "MiniGrid-MemoryS11-v0", "MiniGrid-RedBlueDoors-6x6-v0", "MiniGrid-Unlock-v0",
]
# Not in the papers, but they reach what the seven do not: lava, boxes, a carried ball or box.
EXTRA_ENVS = ["MiniGrid-LavaGapS5-v0", "MiniGrid-ObstructedMaze-1Dlhb-v0", "MiniGrid-BlockedUnlockPickup-v0"]
STATES_PER_ENV = 600
SEEN: dict[str, set[int]] = {}  # env id -> atlas codes its random-policy states showed

T = OBJECT_TO_IDX


def code(kind: str, color: int = 0, state: int = 0) -> int:
    return (T[kind] * N_COLORS + color) * N_STATES + state


def reference(env) -> np.ndarray:
    """What ``ImgObsWrapper(RGBImgPartialObsWrapper(env))`` returns for the env's current state."""
    return env.unwrapped.get_frame(tile_size=8, agent_pov=True)


def atlas_image(env) -> np.ndarray:
    return render_views(env.unwrapped.gen_obs()["image"][None])[0]


def _random_object(rng: np.random.Generator):
    """Any object minigrid has, in any colour and door state (a box's content is not drawn)."""
    from minigrid.core.constants import IDX_TO_COLOR
    from minigrid.core.world_object import Ball, Box, Door, Floor, Goal, Key, Lava, Wall

    color = IDX_TO_COLOR[int(rng.integers(N_COLORS))]
    state = int(rng.integers(N_STATES))
    makers = [
        Wall, Floor, Key, Ball, Box, Goal, lambda c: Lava(), lambda c: Box(c, Key(c)),
        lambda c: Door(c, is_open=state == 0, is_locked=state == 2),
    ]
    return makers[int(rng.integers(len(makers)))](color)


def test_every_kind_colour_and_state_in_synthetic_grids():
    """Random grids of all objects, seen from random places, carrying anything: identical pixels,
    and every code of both atlas halves (plain cell, agent's cell) is exercised."""
    from minigrid.core.grid import Grid

    env = gym.make("MiniGrid-Empty-8x8-v0").unwrapped
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    seen = np.zeros(2 * N_CODES, bool)
    size = 9
    for _ in range(1500):
        env.grid = Grid(size, size)
        for x in range(size):
            for y in range(size):
                if rng.random() < 0.45:
                    env.grid.set(x, y, _random_object(rng))
        env.agent_pos = tuple(int(v) for v in rng.integers(0, size, 2))
        env.grid.set(*env.agent_pos, None)
        env.agent_dir = int(rng.integers(4))
        env.carrying = _random_object(rng) if rng.random() < 0.7 else None
        env.see_through_walls = bool(rng.random() < 0.2)  # most paper envs occlude, Dynamic-Obstacles does not
        views = env.gen_obs()["image"][None]
        np.testing.assert_array_equal(render_views(views)[0], reference(env))
        seen[cell_codes(views).ravel()] = True

    valid = {code("unseen"), code("empty"), code("lava")}
    for kind in ("wall", "floor", "key", "ball", "box", "goal"):
        valid |= {code(kind, c) for c in range(N_COLORS)}
    valid |= {code("door", c, s) for c in range(N_COLORS) for s in range(N_STATES)}
    assert seen[sorted(valid)].all()  # every object the view can show, in a plain cell...
    assert seen[[N_CODES + c for c in valid - {code("unseen")}]].all()  # ...and at the agent (carried)


@pytest.mark.parametrize("env_id", PAPER_ENVS + EXTRA_ENVS)
def test_states_reached_by_a_random_policy(env_id):
    """``STATES_PER_ENV`` consecutive states (several episodes) under a uniform random policy."""
    env = gym.make(env_id)
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    n_actions = env.action_space.n
    codes = []
    for _ in range(STATES_PER_ENV):
        _, _, terminated, truncated, _ = env.step(int(rng.integers(n_actions)))
        if terminated or truncated:
            env.reset()
        np.testing.assert_array_equal(atlas_image(env), reference(env))
        codes.append(cell_codes(env.unwrapped.gen_obs()["image"]).ravel())
    SEEN[env_id] = set(np.unique(codes).tolist())


def test_random_policies_reached_the_interesting_cases():
    """The env states above covered doors in all three states, carried keys, balls and boxes, unseen
    cells, lava and goals (run after the parametrised test, which records what it saw)."""
    if set(SEEN) != set(PAPER_ENVS + EXTRA_ENVS):
        pytest.skip("needs every case of test_states_reached_by_a_random_policy to have run first")
    seen = set().union(*SEEN.values())
    kinds = {(c % N_CODES) // (N_COLORS * N_STATES) for c in seen}
    assert {T[k] for k in ("unseen", "empty", "wall", "door", "key", "ball", "box", "goal", "lava")} <= kinds
    door_states = {c % N_STATES for c in seen if (c % N_CODES) // (N_COLORS * N_STATES) == T["door"]}
    assert door_states == {0, 1, 2}
    carried = {(c - N_CODES) // (N_COLORS * N_STATES) for c in seen if c >= N_CODES}
    assert {T["empty"], T["key"], T["ball"], T["box"]} <= carried


@pytest.mark.parametrize("env_id", ["MiniGrid-Dynamic-Obstacles-Random-5x5-v0", "MiniGrid-DoorKey-5x5-v0"])
def test_vector_env_identical_to_minigrids_wrappers(env_id):
    """The default (atlas) vector env and the minigrid-rendered one, same seed and actions: same
    observations, rewards, flags and final observations, over episode ends of both kinds."""
    from envs.minigrid import make_vector

    n_envs, steps = 4, 300  # DoorKey-5x5 truncates at 250, Dynamic-Obstacles terminates often
    atlas, wrappers = make_vector(env_id, n_envs, "sync"), make_vector(env_id, n_envs, "sync", renderer="minigrid")
    assert atlas.single_observation_space == wrappers.single_observation_space
    obs_a, _ = atlas.reset(seed=3)
    obs_w, _ = wrappers.reset(seed=3)
    np.testing.assert_array_equal(obs_a, obs_w)
    rng = np.random.default_rng(3)
    ends = 0
    for _ in range(steps):
        actions = rng.integers(atlas.single_action_space.n, size=n_envs)
        *out_a, info_a = atlas.step(actions)
        *out_w, info_w = wrappers.step(actions)
        for a, w in zip(out_a, out_w):
            np.testing.assert_array_equal(a, w)
        assert ("final_obs" in info_a) == ("final_obs" in info_w)
        if "final_obs" in info_w:
            np.testing.assert_array_equal(info_a["_final_obs"], info_w["_final_obs"])
            for i in np.flatnonzero(info_w["_final_obs"]):
                np.testing.assert_array_equal(info_a["final_obs"][i], info_w["final_obs"][i])
                ends += 1
    assert ends >= n_envs
    atlas.close()
    wrappers.close()


def test_agent_cell_is_the_bottom_centre():
    views = np.zeros((2, 7, 7, 3), np.uint8)
    views[:, :, :, 0] = T["empty"]
    images = render_views(views)
    x, y = AGENT_CELL
    agent = images[:, y * 8:(y + 1) * 8, x * 8:(x + 1) * 8]
    assert (agent[..., 0] > 200).any() and (np.delete(images, slice(y * 8, y * 8 + 8), axis=1)[..., 0] < 200).all()


def test_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"\[n, 7, 7, 3\]"):
        render_views(np.zeros((7, 7, 3), np.uint8))
