"""RandomMaze, the HELM paper's navigation task, written here so it needs only numpy and gymnasium.

Every episode draws a new perfect maze (one path between any two free cells, so the goal is always
reachable) of 5 to 25 cells per side, outer wall included, and puts the agent and the goal on two
distinct random free cells. The agent sees only a 9x9 egocentric window around itself, so it must
remember where it has been: a memory task. A new maze per episode stops it memorising one layout.

Sizes are drawn uniformly from 5..25; the depth-first-search generator needs an odd side, so an
even draw is rounded down (6 -> 5, ..., 24 -> 23). Odd sides 7..23 are thus twice as likely as 5
and 25; each odd side keeps its own maze shape.

Rewards as in the paper: +1 for stepping onto the goal (the episode ends), -1 for bumping into a
wall (the agent stays put), -0.01 for any other step; the episode is truncated after 100 steps.
"""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np

from utils.errors import UserError

ENV_ID = "RandomMaze-v0"
MIN_SIZE, MAX_SIZE = 5, 25
VIEW_RADIUS = 4
VIEW = 2 * VIEW_RADIUS + 1  # 9x9 cells, one pixel each
MAX_EPISODE_STEPS = 100
GOAL_REWARD, WALL_REWARD, STEP_REWARD = 1.0, -1.0, -0.01
RENDER_SCALE = 8  # pixels per cell in render()'s full-maze picture

FREE = np.array((255, 255, 255), dtype=np.uint8)
WALL = np.array((0, 0, 0), dtype=np.uint8)
GOAL = np.array((0, 255, 0), dtype=np.uint8)
AGENT = np.array((255, 0, 0), dtype=np.uint8)

# action -> (row, column) move: 0 up, 1 down, 2 left, 3 right
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))


def maze_side(drawn: int) -> int:
    """The odd side the generator uses for a drawn size: an even size is rounded down."""
    return drawn if drawn % 2 else drawn - 1


def generate_maze(size: int, rng: np.random.Generator) -> np.ndarray:
    """A perfect maze as a ``(size, size)`` bool array, True for walls; ``size`` must be odd and >= 3.

    Randomised depth-first search (recursive backtracker) with an explicit stack: cells lie at odd
    coordinates, and carving from a cell into a random unvisited neighbour opens the wall between
    them. Every cell is visited once, so the free cells form a tree (all connected, no loops), and
    the border, never carved, stays wall.
    """
    if size < 3 or size % 2 == 0:
        raise ValueError(f"maze size must be odd and >= 3, got {size}")
    walls = np.ones((size, size), dtype=bool)
    start = (2 * int(rng.integers(size // 2)) + 1, 2 * int(rng.integers(size // 2)) + 1)
    walls[start] = False
    stack = [start]
    while stack:
        r, c = stack[-1]
        unvisited = [
            (r + 2 * dr, c + 2 * dc)
            for dr, dc in MOVES
            if 0 < r + 2 * dr < size - 1 and 0 < c + 2 * dc < size - 1 and walls[r + 2 * dr, c + 2 * dc]
        ]
        if not unvisited:
            stack.pop()
            continue
        nr, nc = unvisited[int(rng.integers(len(unvisited)))]
        walls[(r + nr) // 2, (c + nc) // 2] = False
        walls[nr, nc] = False
        stack.append((nr, nc))
    return walls


class RandomMazeEnv(gym.Env):
    """A new random maze each episode, seen through a 9x9x3 uint8 egocentric window.

    Observation colours: free white, wall black (also everything outside the maze), goal green,
    the agent red at the centre cell. ``render()`` ("rgb_array") returns instead the whole maze,
    ``RENDER_SCALE`` pixels per cell, for humans watching an episode.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None, max_episode_steps: int = MAX_EPISODE_STEPS):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unsupported render_mode {render_mode!r}: use 'rgb_array' or None")
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps
        self.observation_space = gym.spaces.Box(0, 255, (VIEW, VIEW, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(len(MOVES))
        self.walls = np.ones((MIN_SIZE, MIN_SIZE), dtype=bool)
        self.agent = (1, 1)
        self.goal = (1, 1)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.walls = generate_maze(maze_side(int(self.np_random.integers(MIN_SIZE, MAX_SIZE + 1))), self.np_random)
        free = np.argwhere(~self.walls)
        a, g = self.np_random.choice(len(free), size=2, replace=False)
        self.agent = (int(free[a][0]), int(free[a][1]))
        self.goal = (int(free[g][0]), int(free[g][1]))
        self.t = 0
        return self._observation(), {"maze_size": self.walls.shape[0]}

    def step(self, action):
        self.t += 1
        dr, dc = MOVES[int(action)]
        target = (self.agent[0] + dr, self.agent[1] + dc)
        terminated = False
        if self.walls[target]:  # the border is wall, so target is always inside the array
            reward = WALL_REWARD
        else:
            self.agent = target
            terminated = target == self.goal
            reward = GOAL_REWARD if terminated else STEP_REWARD
        truncated = not terminated and self.t >= self.max_episode_steps
        return self._observation(), reward, terminated, truncated, {}

    def _colours(self) -> np.ndarray:
        """The whole maze as a ``(size, size, 3)`` picture, one pixel per cell."""
        picture = np.where(self.walls[..., None], WALL, FREE)
        picture[self.goal] = GOAL
        picture[self.agent] = AGENT
        return picture

    def _observation(self) -> np.ndarray:
        size = self.walls.shape[0]
        padded = np.broadcast_to(WALL, (size + 2 * VIEW_RADIUS, size + 2 * VIEW_RADIUS, 3)).copy()
        padded[VIEW_RADIUS:-VIEW_RADIUS, VIEW_RADIUS:-VIEW_RADIUS] = self._colours()
        r, c = self.agent  # in padded coordinates the window starts at the agent's own index
        return padded[r : r + VIEW, c : c + VIEW].copy()

    def render(self):
        return np.repeat(np.repeat(self._colours(), RENDER_SCALE, axis=0), RENDER_SCALE, axis=1)


def make_vector(env_id: str, n_envs: int, vec_env: str) -> gym.vector.VectorEnv:
    from envs import vectorise

    if env_id != ENV_ID:
        raise UserError(f"unknown env '{env_id}': the only RandomMaze env is {ENV_ID}")
    return vectorise(functools.partial(RandomMazeEnv), n_envs, vec_env)
