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

import numpy as np

from envs.minigrid_render import VIEW
from envs.procgen import SameStepEnvPool


@functools.lru_cache(maxsize=1)
def envpool_ids() -> frozenset[str]:
    """The MiniGrid ids EnvPool implements."""
    import envpool

    return frozenset(i for i in envpool.list_all_envs() if i.startswith("MiniGrid-"))


class SameStepMiniGridPool(SameStepEnvPool):
    """EnvPool's batch of one MiniGrid id behind gymnasium's vector API: symbolic views, same-step autoreset."""

    def __init__(self, env_id: str, n_envs: int, seed: int = 0, num_threads: int = 1):
        super().__init__(env_id, n_envs, num_threads, seed, obs_shape=(VIEW, VIEW, 3))

    def _observe(self, obs):
        return obs["image"]

    def _terminated(self, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray) -> np.ndarray:
        # EnvPool drops `terminated` when an episode ends on its last allowed step (minigrid sets both).
        # In MiniGrid a nonzero reward only comes with termination (goal, right object, collision),
        # so those are restored; a zero-reward end on that step (lava, wrong object) stays truncated.
        return terminated | (truncated & (rewards != 0))
