"""A minimal memory task: remember a cue shown only at the first step.

Step 0 shows one of two cue images (red or blue). The next ``delay`` steps show the same grey
image, whatever the agent does. Then a white query image asks for the answer: action 0 for red,
action 1 for blue, reward 1 if right and 0 otherwise, and the episode ends. An agent without
memory sees the same query either way and can do no better than chance (50% success).
Observations are 56x56x3 uint8 like MiniGrid's, so every agent runs on it unchanged.
"""

from __future__ import annotations

import functools
import re

import gymnasium as gym
import numpy as np

from utils.errors import UserError

SIZE = 56
CUE_COLOURS = ((200, 30, 30), (30, 30, 200))
WAIT_COLOUR = (100, 100, 100)
QUERY_COLOUR = (255, 255, 255)


# Where each frame's coloured block sits: (rows, cols) of one quadrant of the 40x40 centre.
QUADRANTS = {"red": (slice(8, 28), slice(8, 28)), "blue": (slice(28, 48), slice(28, 48)),
             "wait": (slice(8, 28), slice(28, 48)), "query": (slice(28, 48), slice(8, 28))}


def _frame(colour: tuple[int, int, int], where: str) -> np.ndarray:
    frame = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    frame[QUADRANTS[where]] = colour  # a coloured block on black, so frames are not flat
    return frame


def cue_frame(cue: int) -> np.ndarray:
    return _frame(CUE_COLOURS[cue], ("red", "blue")[cue])


def wait_frame() -> np.ndarray:
    return _frame(WAIT_COLOUR, "wait")


def query_frame() -> np.ndarray:
    return _frame(QUERY_COLOUR, "query")


# Each frame puts its block in another quadrant, so the four differ in shape, not only in colour:
# HELM's FrozenHopfield sees a grayscale frame through a cosine similarity (as the original did),
# so to it this red and blue (equally bright) and any frames that differ only in brightness look
# the same.


class CueRecallEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, delay: int = 4, render_mode: str | None = None):
        self.delay = delay
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(2)
        self._cues = [cue_frame(c) for c in range(len(CUE_COLOURS))]
        self._wait, self._query = wait_frame(), query_frame()
        self.cue, self.t, self._obs = 0, 0, self._wait

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.cue = int(self.np_random.integers(2))
        self.t = 0
        self._obs = self._cues[self.cue]
        return self._obs.copy(), {"cue": self.cue}

    def step(self, action):
        self.t += 1
        if self.t <= self.delay:
            self._obs = self._wait
            return self._obs.copy(), 0.0, False, False, {}
        if self.t == self.delay + 1:
            self._obs = self._query
            return self._obs.copy(), 0.0, False, False, {}
        reward = float(int(action) == self.cue)
        return self._obs.copy(), reward, True, False, {"cue": self.cue}

    def render(self):
        return self._obs.copy()


def parse_delay(env_id: str) -> int:
    match = re.fullmatch(r"CueRecall(?:-D(\d+))?-v0", env_id)
    if match is None:
        raise UserError(f"unknown env '{env_id}': use CueRecall-v0 or CueRecall-D<delay>-v0")
    return int(match.group(1)) if match.group(1) else 4


def make_vector(env_id: str, n_envs: int, vec_env: str) -> gym.vector.VectorEnv:
    from envs import vectorise

    return vectorise(functools.partial(CueRecallEnv, parse_delay(env_id)), n_envs, vec_env)
