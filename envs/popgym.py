"""POPGym (Morad et al., ICLR 2023): partially observable tasks with vector observations.

The ids are the ones POPGym registers, ``popgym-<Task><Difficulty>-v0``. Each env is set up as in
the POPGym paper's PPO experiments, with POPGym's own wrappers: the previous action is part of
the observation (``PreviousAction``), with a flag for the first step (``Antialias``); discrete and
multi-discrete parts become one-hot vectors (``Flatten``); a multi-discrete action becomes one
discrete action (``DiscreteAction``). Observations are float32 vectors. POPGym scales each task's
rewards so that an episode's return lies in [-1, 1], which is why the configs do not normalise
rewards. Tasks with continuous actions (the pendulums) are refused; the labyrinths need mazelib.
"""

from __future__ import annotations

import functools
import re

import gymnasium as gym
import numpy as np

from utils.errors import UserError

INSTALL = "pip install -e '.[popgym]'"
ID = re.compile(r"popgym-(?P<task>[A-Za-z]+?)(?P<difficulty>Easy|Medium|Hard)-v0")


def task_classes() -> dict[str, type]:
    """POPGym's registered id -> env class."""
    try:
        import popgym.envs
    except ImportError:
        raise UserError(f"POPGym envs need the popgym package: {INSTALL}") from None
    return {info["id"]: cls for cls, info in popgym.envs.ALL.items()}


class FloatObservation(gym.ObservationWrapper):
    """The flattened observation as float32 (one-hot parts are 0/1), what the agents read."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32)

    def observation(self, obs):
        return np.asarray(obs, dtype=np.float32)


def make_single(env_id: str) -> gym.Env:
    """One POPGym env with the paper's wrappers (previous action, first-step flag, one-hot, one discrete action)."""
    from popgym import wrappers

    env = task_classes()[env_id]()
    env = wrappers.Flatten(wrappers.Antialias(wrappers.PreviousAction(env)))
    return FloatObservation(wrappers.DiscreteAction(env))


def check_id(env_id: str) -> None:
    classes = task_classes()
    if env_id in classes:
        action_space = classes[env_id]().action_space
        if not isinstance(action_space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
            raise UserError(f"{env_id} has continuous actions; the agents here choose one discrete action")
        return
    match = ID.fullmatch(env_id)
    if match and match["task"].startswith("Labyrinth"):
        raise UserError(f"{env_id} needs mazelib, which POPGym's labyrinths are built with: pip install mazelib")
    import difflib

    close = difflib.get_close_matches(env_id, sorted(classes), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f" ({len(classes)} POPGym ids exist, e.g. popgym-RepeatPreviousEasy-v0)"
    raise UserError(f"unknown POPGym env '{env_id}'{hint}")


def make_vector(env_id: str, n_envs: int, vec_env: str) -> gym.vector.VectorEnv:
    from envs import vectorise

    check_id(env_id)
    return vectorise(functools.partial(make_single, env_id), n_envs, vec_env)
