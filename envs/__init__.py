"""Environment families behind one ``make_env`` entry point.

Every family returns a gymnasium vector env in the *same-step* autoreset mode: when a sub-env's
episode ends, ``step`` already returns the first observation of the next episode and puts the last
one in ``info["final_obs"]``. The trainer needs that final observation to bootstrap truncated
episodes, and no transition is ever wasted on a reset.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym

from utils.errors import UserError

# family name -> (predicate on the env id, module path of a make_vector(env_id, n_envs, vec_env) fn)
FAMILIES: dict[str, tuple[Callable[[str], bool], str]] = {
    "MiniGrid": (lambda env_id: env_id.startswith("MiniGrid-"), "envs.minigrid"),
    "CueRecall": (lambda env_id: env_id.startswith("CueRecall"), "envs.cue_recall"),
}


def family_of(env_id: str) -> str:
    for name, (matches, _) in FAMILIES.items():
        if matches(env_id):
            return name
    raise UserError(
        f"unknown env '{env_id}': known families are "
        + ", ".join(f"{name} ({_EXAMPLES[name]})" for name in FAMILIES)
    )


_EXAMPLES = {
    "MiniGrid": "any registered MiniGrid-* id, e.g. MiniGrid-KeyCorridorS3R1-v0",
    "CueRecall": "CueRecall-v0, or CueRecall-D<delay>-v0",
}


def make_env(env_id: str, n_envs: int, vec_env: str = "sync") -> gym.vector.VectorEnv:
    """Build ``n_envs`` copies of ``env_id`` as one vector env (same-step autoreset)."""
    import importlib

    module = importlib.import_module(FAMILIES[family_of(env_id)][1])
    return module.make_vector(env_id, n_envs, vec_env)


def vectorise(thunk: Callable[[], gym.Env], n_envs: int, vec_env: str) -> gym.vector.VectorEnv:
    mode = gym.vector.AutoresetMode.SAME_STEP
    if vec_env == "async":
        return gym.vector.AsyncVectorEnv([thunk] * n_envs, autoreset_mode=mode)
    return gym.vector.SyncVectorEnv([thunk] * n_envs, autoreset_mode=mode)


def success(episode_return: float) -> bool:
    """Success as the papers count it on MiniGrid: the agent got any positive return."""
    return episode_return > 0
