"""RandomMaze: every maze is solvable, the agent sees the right window, and rewards follow the paper."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from envs.random_maze import (
    AGENT,
    FREE,
    GOAL,
    MAX_SIZE,
    MIN_SIZE,
    MOVES,
    VIEW,
    VIEW_RADIUS,
    WALL,
    RandomMazeEnv,
    generate_maze,
    make_vector,
    maze_side,
)
from utils.errors import UserError

CENTRE = (VIEW_RADIUS, VIEW_RADIUS)
UP, DOWN, LEFT, RIGHT = range(4)


def _reachable(walls: np.ndarray, start: tuple[int, int]) -> set[tuple[int, int]]:
    seen, queue = {start}, deque([start])
    while queue:
        r, c = queue.popleft()
        for dr, dc in MOVES:
            nxt = (r + dr, c + dc)
            if not walls[nxt] and nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def _env(walls: np.ndarray, agent: tuple[int, int], goal: tuple[int, int]) -> RandomMazeEnv:
    """An env reset once, then given a hand-made layout."""
    env = RandomMazeEnv()
    env.reset(seed=0)
    env.walls, env.agent, env.goal = walls, agent, goal
    return env


def _corridor() -> np.ndarray:
    """A 5x5 maze whose only free cells are row 1, columns 1..3."""
    walls = np.ones((5, 5), dtype=bool)
    walls[1, 1:4] = False
    return walls


@pytest.mark.parametrize("size", range(MIN_SIZE, MAX_SIZE + 1, 2))
def test_mazes_are_walled_and_connected(size):
    for seed in range(10):
        walls = generate_maze(size, np.random.default_rng(seed))
        assert walls.shape == (size, size) and walls.dtype == bool
        assert walls[0].all() and walls[-1].all() and walls[:, 0].all() and walls[:, -1].all()
        free = {tuple(int(i) for i in cell) for cell in np.argwhere(~walls)}
        assert _reachable(walls, next(iter(free))) == free
        # a perfect maze: a tree over its free cells, so edges = cells - 1
        edges = int((~walls[:, :-1] & ~walls[:, 1:]).sum() + (~walls[:-1] & ~walls[1:]).sum())
        assert edges == len(free) - 1


def test_generate_maze_rejects_even_sizes():
    with pytest.raises(ValueError):
        generate_maze(6, np.random.default_rng(0))


def test_sizes_cover_the_range_and_start_goal_differ():
    env = RandomMazeEnv()
    sizes = set()
    for seed in range(300):
        _, info = env.reset(seed=seed)
        sizes.add(info["maze_size"])
        assert info["maze_size"] == env.walls.shape[0]
        assert env.agent != env.goal
        assert not env.walls[env.agent] and not env.walls[env.goal]
        assert env.goal in _reachable(env.walls, env.agent)
    assert sizes == {maze_side(s) for s in range(MIN_SIZE, MAX_SIZE + 1)} == set(range(MIN_SIZE, MAX_SIZE + 1, 2))


def test_observation_is_an_egocentric_window():
    env = RandomMazeEnv()
    obs, _ = env.reset(seed=3)
    assert obs.shape == (VIEW, VIEW, 3) == env.observation_space.shape and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    assert (obs[CENTRE] == AGENT).all()
    for _ in range(20):
        obs, *_ = env.step(env.action_space.sample())
        assert (obs[CENTRE] == AGENT).all()


def test_view_outside_the_maze_is_wall():
    env = _env(_corridor(), agent=(1, 1), goal=(1, 3))
    obs = env._observation()
    expected = np.broadcast_to(WALL, (VIEW, VIEW, 3)).copy()
    expected[CENTRE] = AGENT
    expected[4, 5] = FREE  # (1, 2)
    expected[4, 6] = GOAL  # (1, 3)
    np.testing.assert_array_equal(obs, expected)


def test_bumping_a_wall_costs_one_and_does_not_move():
    env = _env(_corridor(), agent=(1, 1), goal=(1, 3))
    for action in (UP, DOWN, LEFT):
        _, reward, terminated, truncated, _ = env.step(action)
        assert (reward, terminated, truncated, env.agent) == (-1.0, False, False, (1, 1))


def test_free_move_then_goal():
    env = _env(_corridor(), agent=(1, 1), goal=(1, 3))
    _, reward, terminated, truncated, _ = env.step(RIGHT)
    assert (reward, terminated, truncated, env.agent) == (-0.01, False, False, (1, 2))
    obs, reward, terminated, truncated, _ = env.step(RIGHT)
    assert (reward, terminated, truncated, env.agent) == (1.0, True, False, (1, 3))
    assert (obs[CENTRE] == AGENT).all()


def test_truncated_after_exactly_100_steps():
    env = _env(_corridor(), agent=(1, 1), goal=(1, 3))
    for t in range(1, 101):
        _, _, terminated, truncated, _ = env.step(LEFT)  # bump forever, never reach the goal
        assert not terminated
        assert truncated == (t == 100)


def test_reaching_the_goal_on_the_last_step_terminates_without_truncating():
    env = _env(_corridor(), agent=(1, 1), goal=(1, 3))
    for _ in range(98):
        env.step(LEFT)
    env.step(RIGHT)
    _, reward, terminated, truncated, _ = env.step(RIGHT)
    assert (reward, terminated, truncated) == (1.0, True, False)


def test_same_seed_same_episode():
    a, b = RandomMazeEnv(), RandomMazeEnv()
    obs_a, _ = a.reset(seed=7)
    obs_b, _ = b.reset(seed=7)
    np.testing.assert_array_equal(a.walls, b.walls)
    assert (a.agent, a.goal) == (b.agent, b.goal)
    np.testing.assert_array_equal(obs_a, obs_b)
    for action in np.random.default_rng(0).integers(4, size=50):
        step_a, step_b = a.step(action), b.step(action)
        np.testing.assert_array_equal(step_a[0], step_b[0])
        assert step_a[1:4] == step_b[1:4]
    a.reset(seed=8)
    assert a.walls.shape != b.walls.shape or (a.walls != b.walls).any()


def test_render_shows_the_whole_maze():
    env = RandomMazeEnv(render_mode="rgb_array")
    env.reset(seed=1)
    frame = env.render()
    size = env.walls.shape[0]
    assert frame.dtype == np.uint8 and frame.shape[:2] == (size * 8, size * 8)


def test_make_vector():
    with pytest.raises(UserError):
        make_vector("RandomMaze-v1", 2, "sync")
    envs = make_vector("RandomMaze-v0", 2, "sync")
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, VIEW, VIEW, 3) and obs.dtype == np.uint8
    for _ in range(5):
        obs, reward, terminated, truncated, _ = envs.step(envs.action_space.sample())
        assert obs.shape == (2, VIEW, VIEW, 3) and reward.shape == (2,)
    envs.close()


def test_make_env_builds_random_maze_with_same_step_autoreset():
    from envs import make_env

    envs = make_env("RandomMaze-v0", 1)
    envs.reset(seed=0)
    maze = envs.envs[0].unwrapped
    maze.walls, maze.agent, maze.goal = _corridor(), (1, 2), (1, 3)
    obs, reward, terminated, _, info = envs.step(np.array([RIGHT]))
    assert reward[0] == 1.0 and terminated[0]
    assert (info["final_obs"][0][VIEW_RADIUS, VIEW_RADIUS + 1] == WALL).all()  # right of the goal
    assert (obs[0][CENTRE] == AGENT).all()  # already the next episode's first observation
    envs.close()
