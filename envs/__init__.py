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


def _is_procgen(env_id: str) -> bool:
    from envs.procgen import game_of  # imports nothing from the extra

    return game_of(env_id) is not None


# family name -> (predicate on the env id, module path of a make_vector(env_id, n_envs, vec_env) fn).
# A family's module imports its extra only when an env of that family is built.
FAMILIES: dict[str, tuple[Callable[[str], bool], str]] = {
    "MiniGrid": (lambda env_id: env_id.startswith("MiniGrid-"), "envs.minigrid"),
    "MiniWorld": (lambda env_id: env_id.startswith("MiniWorld-"), "envs.miniworld"),
    "Procgen": (_is_procgen, "envs.procgen"),
    "RandomMaze": (lambda env_id: env_id.startswith("RandomMaze"), "envs.random_maze"),
    "Psychlab": (lambda env_id: env_id.startswith("Psychlab"), "envs.psychlab"),
    "CueRecall": (lambda env_id: env_id.startswith("CueRecall"), "envs.cue_recall"),
    "POPGym": (lambda env_id: env_id.startswith("popgym-"), "envs.popgym"),
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
    "MiniWorld": "any MiniWorld-* id, e.g. MiniWorld-Sign-v0",
    "Procgen": "caveflyer, dodgeball, heist, jumper, maze or miner, in memory mode",
    "RandomMaze": "RandomMaze-v0",
    "Psychlab": "Psychlab-ContinuousRecognition-v0",
    "CueRecall": "CueRecall-v0, or CueRecall-D<delay>-v0",
    "POPGym": "popgym-<Task><Easy|Medium|Hard>-v0, e.g. popgym-RepeatPreviousEasy-v0",
}


def resolve_vec_env(env_id: str, vec_env: str) -> str:
    """``auto``: EnvPool where it implements the id and is installed (MiniGrid), else ``sync``.

    EnvPool steps MiniGrid in C++ (about 10x faster than the Python envs, statistically the same
    episodes), which keeps the env off a GPU's critical path; Procgen always runs in EnvPool, and
    ``sync`` steps it on one thread. Any other value is returned as it is.
    """
    if vec_env != "auto":
        return vec_env
    if family_of(env_id) == "MiniGrid":
        try:
            from envs.minigrid_envpool import envpool_ids

            if env_id in envpool_ids():
                return "envpool"
        except ImportError:  # the extra is not installed: the Python envs
            pass
    return "sync"


def make_env(env_id: str, n_envs: int, vec_env: str = "sync") -> gym.vector.VectorEnv:
    """Build ``n_envs`` copies of ``env_id`` as one vector env (same-step autoreset)."""
    import importlib

    family = family_of(env_id)
    vec_env = resolve_vec_env(env_id, vec_env)
    if vec_env == "envpool" and family != "MiniGrid":
        hint = " (Procgen always steps in EnvPool: sync uses one thread, async several)" if family == "Procgen" else ""
        raise UserError(f"vec_env=envpool is for MiniGrid ids; use sync or async for {family}{hint}")
    module = importlib.import_module(FAMILIES[family][1])
    return module.make_vector(env_id, n_envs, vec_env)


def env_backend(env_id: str, vec_env: str) -> str:
    """What steps this env's episodes: seeds play out differently on each, so runs record it.

    "envpool" for EnvPool's C++ envs (Procgen always, MiniGrid with vec_env=envpool), otherwise the
    family's Python package (e.g. "minigrid").
    """
    family = family_of(env_id)
    if family == "Procgen" or vec_env == "envpool":
        return "envpool"
    return family.lower()


def episode_limit(envs: gym.vector.VectorEnv) -> int | None:
    """The most steps an episode of these envs can last (None when the envs do not say)."""
    inner = getattr(envs, "unwrapped", envs)
    sub = (getattr(inner, "envs", None) or [None])[0]
    for env in (sub, inner):
        if env is None:
            continue
        steps = getattr(getattr(env, "unwrapped", env), "max_steps", None)  # MiniGrid's own limit
        spec = getattr(env, "spec", None)
        steps = steps or getattr(spec, "max_episode_steps", None)
        if isinstance(steps, int) and steps > 0:
            return steps
    return None


def action_names(env_id: str, envs: gym.vector.VectorEnv) -> list[str]:
    """What each action index means, for people reading an evaluation ("forward", not 2)."""
    n = int(envs.single_action_space.n)
    family = family_of(env_id)
    names: list[str] | None = None
    if family == "MiniGrid":
        from minigrid.core.actions import Actions

        names = [a.name for a in Actions]
    elif family == "CueRecall":
        names = ["answer red", "answer blue"]
    elif family == "RandomMaze":
        names = ["up", "down", "left", "right"]  # envs.random_maze.MOVES as (row, column) steps
    elif family == "MiniWorld":
        inner = getattr(envs, "unwrapped", envs)
        sub = (getattr(inner, "envs", None) or [None])[0]
        actions = getattr(getattr(sub, "unwrapped", None), "actions", None)
        names = [a.name.replace("_", " ") for a in actions] if actions is not None else None
    if names is None or len(names) < n:
        return [f"action {i}" for i in range(n)]
    return names[:n]


def check_registered(env_id: str, family: str) -> None:
    """A one-line error for an id gymnasium does not know, with the closest ids of its family."""
    if env_id in gym.registry:
        return
    import difflib

    known = sorted(k for k in gym.registry if k.startswith(f"{family}-"))
    close = difflib.get_close_matches(env_id, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f" ({len(known)} {family} ids exist)"
    raise UserError(f"unknown {family} env '{env_id}'{hint}")


def vectorise(
    thunk: Callable[[], gym.Env], n_envs: int, vec_env: str, context: str | None = None
) -> gym.vector.VectorEnv:
    """``context`` is the multiprocessing start method of async workers (None: the platform's default)."""
    mode = gym.vector.AutoresetMode.SAME_STEP
    if vec_env == "async":
        return gym.vector.AsyncVectorEnv([thunk] * n_envs, autoreset_mode=mode, context=context)
    return gym.vector.SyncVectorEnv([thunk] * n_envs, autoreset_mode=mode)


def success(final_reward: float) -> bool:
    """An episode succeeds when it ends on a positive reward: it reached its goal.

    On MiniGrid this is the papers' "return > 0" (the only reward comes at the goal). It also holds
    where a return mixes step penalties with the goal bonus (RandomMaze: -1 per wall bump, +1 at
    the goal) or rewards along the way (Procgen's goal bonus comes on the last step).
    """
    return final_reward > 0
