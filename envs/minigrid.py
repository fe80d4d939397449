"""MiniGrid with the papers' observation: the agent's 7x7 partial view rendered as 56x56x3 RGB."""

from __future__ import annotations

import functools

import gymnasium as gym

from utils.errors import UserError


def make_single(env_id: str) -> gym.Env:
    import minigrid  # noqa: F401  (registers the MiniGrid-* ids, also inside async workers)
    from minigrid.wrappers import ImgObsWrapper, RGBImgPartialObsWrapper

    return ImgObsWrapper(RGBImgPartialObsWrapper(gym.make(env_id)))


def make_vector(env_id: str, n_envs: int, vec_env: str) -> gym.vector.VectorEnv:
    import minigrid  # noqa: F401

    if env_id not in gym.registry:
        known = sorted(k for k in gym.registry if k.startswith("MiniGrid-"))
        import difflib

        close = difflib.get_close_matches(env_id, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f" ({len(known)} MiniGrid ids exist)"
        raise UserError(f"unknown MiniGrid env '{env_id}'{hint}")
    from envs import vectorise

    return vectorise(functools.partial(make_single, env_id), n_envs, vec_env)
