"""MiniGrid stepped by EnvPool's C++ port, as a same-step-autoreset batch of symbolic views.

EnvPool 1.2.5 reimplements most MiniGrid ids in C++ and steps a whole batch in one call, an order
of magnitude faster than minigrid's Python, but it only returns the symbolic 7x7x3 view (same
layout and codes as minigrid's ``obs["image"]``). ``envs.minigrid_render.RenderViews`` turns it
into the papers' 56x56x3 picture. Its layouts come from its own random generator, so episodes
match minigrid 3.x in distribution, not seed for seed (tests/test_minigrid_envpool.py).

Like Procgen's pool (envs/procgen.py), EnvPool resets a finished sub-env on the *next* ``step``;
``SameStepMiniGridPool`` resets it right away instead, which gives gymnasium's same-step
autoreset (the next episode's first view at once, the last one in ``info["final_obs"]``).

Dynamics checked against minigrid 3.2 (same max_steps, reward ``1 - 0.9 * steps / max_steps``,
same distributions of length, return and success under a random policy on the papers' seven ids),
with one difference, partly repaired in ``step``: an episode that ends on its very last step.
"""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np

from envs.minigrid_render import VIEW


@functools.lru_cache(maxsize=1)
def envpool_ids() -> frozenset[str]:
    """The MiniGrid ids EnvPool implements."""
    import envpool

    return frozenset(i for i in envpool.list_all_envs() if i.startswith("MiniGrid-"))


class SameStepMiniGridPool(gym.vector.VectorEnv):
    """EnvPool's batch of one MiniGrid id behind gymnasium's vector API: symbolic views, same-step autoreset."""

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def __init__(self, env_id: str, n_envs: int, seed: int = 0, num_threads: int = 1):
        self.env_id, self.num_envs, self.num_threads = env_id, n_envs, num_threads
        self._pool = self._make(seed)
        self.single_observation_space = gym.spaces.Box(0, 255, (VIEW, VIEW, 3), np.uint8)
        self.single_action_space = gym.spaces.Discrete(self._pool.action_space.n)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, n_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, n_envs)

    def _make(self, seed: int):
        import envpool

        # EnvPool seeds sub-env i with seed + i and needs an int32.
        return envpool.make(
            self.env_id, env_type="gymnasium", num_envs=self.num_envs, num_threads=self.num_threads,
            seed=int(seed) % (2**31 - self.num_envs),
        )

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:  # EnvPool takes its seed at construction: a new seed means a new pool
            self._pool.close()
            self._pool = self._make(seed)
        obs, _ = self._pool.reset()
        return obs["image"], {}

    def step(self, actions):
        obs, rewards, terminated, truncated, _ = self._pool.step(np.asarray(actions, dtype=np.int32))
        views = obs["image"]
        # EnvPool drops `terminated` when an episode ends on its last allowed step (minigrid sets both).
        # In MiniGrid a nonzero reward only comes with termination (goal, right object, collision),
        # so those are restored; a zero-reward end on that step (lava, wrong object) stays truncated.
        terminated = terminated | (truncated & (rewards != 0))
        done = terminated | truncated
        info: dict = {}
        if done.any():
            info["final_obs"], info["_final_obs"] = views, done
            first, reset_info = self._pool.reset(np.flatnonzero(done).astype(np.int32))
            views = views.copy()  # the final views stay in info["final_obs"]
            views[reset_info["env_id"]] = first["image"]
        return views, rewards.astype(np.float64), terminated, truncated, info

    def close(self, **kwargs) -> None:
        self._pool.close()
