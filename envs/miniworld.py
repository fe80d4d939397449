"""MiniWorld, the 3-D tasks of HELMv2 and SHELM (the ``miniworld`` extra), rendered headless.

MiniWorld draws with OpenGL through pyglet. Without a display we default to ``PYGLET_HEADLESS=1``
(EGL, software rendering with Mesa: Debian's ``libegl1 libegl-mesa0 libgl1-mesa-dri``); set
``PYGLET_HEADLESS=0`` before starting to use a real display instead. The variable must be set
before pyglet is imported, and worker processes inherit it.

Async vector envs use the ``forkserver`` start method: a forked copy of a process that has
already created an OpenGL context hangs.
"""

from __future__ import annotations

import functools
import os

import gymnasium as gym

from utils.errors import UserError

# ids of the papers' gym-miniworld that miniworld 2.x renamed
RENAMED = {"MiniWorld-PickupObjs-v0": "MiniWorld-PickupObjects-v0"}
INSTALL = "pip install -e '.[miniworld]' (headless rendering also needs: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri)"


class ImageOnly(gym.ObservationWrapper):
    """Sign's observation is ``{"obs": image, "goal": int}``; the agents see only the image, as in the papers."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = env.observation_space["obs"]

    def observation(self, observation):
        return observation["obs"]


def _import_miniworld():
    os.environ.setdefault("PYGLET_HEADLESS", "1")
    try:
        import miniworld  # noqa: F401  (registers the MiniWorld-* ids)
    except ImportError:
        raise UserError(f"MiniWorld envs need the miniworld extra: {INSTALL}") from None


def make_single(env_id: str) -> gym.Env:
    _import_miniworld()  # again inside async workers, which start from a fresh interpreter
    # gymnasium's passive checker warns once per env that TMaze/YMaze reuse their info dict between
    # steps; nothing here keeps infos, and the warning would only alarm users.
    env = gym.make(env_id, disable_env_checker=True)
    if isinstance(env.observation_space, gym.spaces.Dict):
        env = ImageOnly(env)
    return env


def resolve_id(env_id: str) -> str:
    _import_miniworld()
    from envs import check_registered

    env_id = RENAMED.get(env_id, env_id)
    check_registered(env_id, "MiniWorld")
    return env_id


def make_vector(env_id: str, n_envs: int, vec_env: str) -> gym.vector.VectorEnv:
    from envs import vectorise

    thunk = functools.partial(make_single, resolve_id(env_id))
    try:
        return vectorise(thunk, n_envs, vec_env, context="forkserver")
    except Exception as err:  # pyglet reports a missing display or EGL only when the first env renders
        if type(err).__name__ in {"NoSuchDisplayException", "ImportError", "OSError"} or "EGL" in str(err):
            raise UserError(f"MiniWorld could not render ({str(err).splitlines()[0]}): {INSTALL}") from None
        raise
