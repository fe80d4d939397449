"""MiniGrid with the papers' observation: the agent's 7x7 partial view rendered as 56x56x3 RGB."""

from __future__ import annotations

import functools

import gymnasium as gym



def make_single(env_id: str) -> gym.Env:
    import minigrid  # noqa: F401  (registers the MiniGrid-* ids, also inside async workers)
    from minigrid.wrappers import ImgObsWrapper, RGBImgPartialObsWrapper

    return ImgObsWrapper(RGBImgPartialObsWrapper(gym.make(env_id)))


def make_vector(env_id: str, n_envs: int, vec_env: str) -> gym.vector.VectorEnv:
    import minigrid  # noqa: F401

    from envs import check_registered, vectorise

    check_registered(env_id, "MiniGrid")
    return vectorise(functools.partial(make_single, env_id), n_envs, vec_env)
