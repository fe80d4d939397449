"""Psychlab continuous recognition (SHELM), through DeepMind Lab, which is not on PyPI.

The agent sees a stream of object images and must say, for each one, whether it has seen it
before in the episode: a memory task whose horizon grows with the episode. Setting as in SHELM:
level ``contributed/psychlab/continuous_recognition``, 80x80 RGB, every action repeated for 4
frames, 15 discrete actions, the object images of Brady, Konkle & Oliva (2008).

DeepMind Lab must be built from source (Bazel) and its Python module ``deepmind_lab`` installed
into this environment; the README lists the steps. Nothing here is imported until a Psychlab env
is requested, so the rest of the project never needs it.
"""

from __future__ import annotations

import functools
import os

import gymnasium as gym
import numpy as np

from utils.errors import UserError

ENV_ID = "Psychlab-ContinuousRecognition-v0"
LEVEL = "contributed/psychlab/continuous_recognition"
SIZE = 80
ACTION_REPEAT = 4
DATASET_VARIABLE = "PSYCHLAB_DATASET"
BUILD_HINT = (
    "Psychlab needs DeepMind Lab, which is not on PyPI: build it from source "
    "(https://github.com/google-deepmind/lab, `bazel build -c opt //python/pip_package:build_pip_package`, "
    "then pip install the wheel it makes) and put the Brady, Konkle & Oliva (2008) object images in a "
    f"directory named by ${DATASET_VARIABLE}; see the README's Psychlab section"
)

# DeepMind Lab's action is 7 integers: look left/right, look down/up (pixels per frame), strafe,
# move, fire, jump, crouch. In Psychlab the agent only moves its gaze, so the 15 actions are
# gaze moves: none, 4 directions at 2 speeds, 4 diagonals, and 2 extra-fast horizontal sweeps.
_LOOK = (
    (0, 0),
    (-10, 0), (10, 0), (0, -10), (0, 10),
    (-60, 0), (60, 0), (0, -60), (0, 60),
    (-10, -10), (10, -10), (-10, 10), (10, 10),
    (-120, 0), (120, 0),
)
ACTIONS = np.array([[yaw, pitch, 0, 0, 0, 0, 0] for yaw, pitch in _LOOK], dtype=np.intc)


class PsychlabEnv(gym.Env):
    """One DeepMind Lab instance of the continuous recognition level as a gymnasium env."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, dataset_path: str, render_mode: str | None = None):
        import deepmind_lab

        self.render_mode = render_mode
        self._lab = deepmind_lab.Lab(
            LEVEL, ["RGB_INTERLEAVED"],
            config={"width": str(SIZE), "height": str(SIZE), "datasetPath": dataset_path},
        )
        self.observation_space = gym.spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(len(ACTIONS))
        self._obs = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._lab.reset(seed=int(self.np_random.integers(2**31 - 1)))
        self._obs = self._lab.observations()["RGB_INTERLEAVED"]
        return self._obs.copy(), {}

    def step(self, action):
        reward = float(self._lab.step(ACTIONS[int(action)], num_steps=ACTION_REPEAT))
        terminated = not self._lab.is_running()
        if not terminated:  # after the level ends, DeepMind Lab has no observation to give
            self._obs = self._lab.observations()["RGB_INTERLEAVED"]
        return self._obs.copy(), reward, terminated, False, {}

    def render(self):
        return self._obs.copy()

    def close(self):
        self._lab.close()


def make_vector(env_id: str, n_envs: int, vec_env: str) -> gym.vector.VectorEnv:
    if env_id != ENV_ID:
        raise UserError(f"unknown Psychlab env '{env_id}': the one task is {ENV_ID}")
    try:
        import deepmind_lab  # noqa: F401
    except ImportError:
        raise UserError(BUILD_HINT) from None
    dataset = os.environ.get(DATASET_VARIABLE)
    if not dataset or not os.path.isdir(dataset):
        raise UserError(f"${DATASET_VARIABLE} must name the directory of the Psychlab stimuli: {BUILD_HINT}")
    from envs import vectorise

    return vectorise(functools.partial(PsychlabEnv, dataset), n_envs, vec_env)
