"""Procgen in its memory distribution mode, stepped by EnvPool (the ``procgen`` extra).

HELM's Procgen experiments use six games in ``distribution_mode="memory"`` with unbounded levels
(``num_levels=0``, ``start_level=0``) and 64x64x3 observations. EnvPool ships these as
``<Game>Memory-v0`` and steps the whole batch in C++, which keeps the environment far from being
the bottleneck (about 33k env-steps/s on 2 cores). The old ``procgen`` wheels pin numpy<2 and gym
0.26, so they cannot share an environment with the rest of the project.

EnvPool resets a finished sub-env on the *next* ``step`` call; the trainer expects gymnasium's
same-step autoreset (the next episode's first observation at once, the last one in
``info["final_obs"]``). ``SameStepEnvPool`` converts one into the other by resetting finished
sub-envs explicitly, right after the step that ended them.
"""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np

from utils.errors import UserError

MEMORY_GAMES = ("caveflyer", "dodgeball", "heist", "jumper", "maze", "miner")
ALL_GAMES = (
    "bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball", "fruitbot",
    "heist", "jumper", "leaper", "maze", "miner", "ninja", "plunder", "starpilot",
)
INSTALL = "pip install -e '.[procgen]' (and the system Qt 5 runtime: apt-get install libqt5gui5)"


def _parse(env_id: str) -> tuple[str, str | None] | None:
    """(game, distribution mode or None) of a Procgen id (``maze``, ``MazeMemory-v0``, ``procgen-maze``)."""
    name = env_id.lower().removeprefix("procgen-").removeprefix("procgen:")
    match = re.fullmatch(r"([a-z]+?)(easy|hard|extreme|memory|exploration)?(-v0)?", name)
    if match and match.group(1) in ALL_GAMES:
        return match.group(1), match.group(2)
    return None


def game_of(env_id: str) -> str | None:
    """The Procgen game an id names, or None."""
    parsed = _parse(env_id)
    return parsed[0] if parsed else None


def memory_game(env_id: str) -> str:
    game, mode = _parse(env_id) or (None, None)
    if game not in MEMORY_GAMES or mode not in (None, "memory"):
        raise UserError(
            f"env '{env_id}': Procgen runs in memory mode, which only these games have: {', '.join(MEMORY_GAMES)}"
        )
    return game


class SameStepEnvPool(gym.vector.VectorEnv):
    """An EnvPool batch of one task behind gymnasium's vector API, in same-step autoreset mode.

    Shared by Procgen and EnvPool's MiniGrid (`envs.minigrid_envpool`), which override `_observe`
    (how EnvPool's observation becomes ours) and `_terminated` (flags EnvPool reports differently).
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def __init__(self, task_id: str, n_envs: int, num_threads: int, seed: int = 0,
                 obs_shape: tuple[int, ...] = (64, 64, 3), **make_kwargs):
        self.task_id, self.num_envs, self.num_threads = task_id, n_envs, num_threads
        self._make_kwargs = make_kwargs
        self._pool = self._make(seed)
        self.single_observation_space = gym.spaces.Box(0, 255, obs_shape, np.uint8)
        self.single_action_space = gym.spaces.Discrete(self._pool.action_space.n)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, n_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, n_envs)

    def _make(self, seed: int):
        import envpool

        # EnvPool seeds sub-env i with seed + i and needs an int32.
        return envpool.make(
            self.task_id, env_type="gymnasium", num_envs=self.num_envs, num_threads=self.num_threads,
            seed=int(seed) % (2**31 - self.num_envs), **self._make_kwargs,
        )

    def _observe(self, obs):
        return obs

    def _terminated(self, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray) -> np.ndarray:
        return terminated

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:  # EnvPool takes its seed at construction: a new seed means a new pool
            self._pool.close()
            self._pool = self._make(seed)
        obs, _ = self._pool.reset()
        return self._observe(obs), {}

    def step(self, actions):
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions) -> None:
        """Hand the actions to EnvPool's threads and return at once; `step_wait` collects the step."""
        self._pool.send(np.asarray(actions, dtype=np.int32))

    def step_wait(self):
        obs, rewards, terminated, truncated, _ = self._pool.recv()
        obs = self._observe(obs)
        terminated = self._terminated(rewards, terminated, truncated)
        done = terminated | truncated
        info: dict = {}
        if done.any():
            info["final_obs"], info["_final_obs"] = obs, done
            first_obs, reset_info = self._pool.reset(np.flatnonzero(done).astype(np.int32))
            obs = obs.copy()  # the final observations stay in info["final_obs"]
            obs[reset_info["env_id"]] = self._observe(first_obs)
        return obs, rewards.astype(np.float64), terminated, truncated, info

    def close(self, **kwargs) -> None:
        self._pool.close()


def make_vector(env_id: str, n_envs: int, vec_env: str) -> gym.vector.VectorEnv:
    """``vec_env='sync'`` steps the batch on one EnvPool thread, ``'async'`` on as many as it likes."""
    game = memory_game(env_id)
    try:
        import envpool  # noqa: F401
    except ImportError:
        raise UserError(f"Procgen envs need the procgen extra: {INSTALL}") from None
    try:
        # levels are unbounded (num_levels=0), frames HWC like every other family
        return SameStepEnvPool(f"{game.capitalize()}Memory-v0", n_envs, num_threads=1 if vec_env == "sync" else 0,
                               channel_first=False, num_levels=0, start_level=0)
    except ImportError as err:  # EnvPool imports its Procgen module lazily; it needs Qt 5 from the system
        raise UserError(f"EnvPool's Procgen could not load ({str(err).splitlines()[0]}): {INSTALL}") from None
