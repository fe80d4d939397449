"""MiniGrid with the papers' observation: the agent's 7x7 partial view rendered as 56x56x3 RGB.

The picture is exactly ``ImgObsWrapper(RGBImgPartialObsWrapper(env))``'s (tile size 8), drawn one
of three ways:

* ``vec_env='sync'`` / ``'async'`` (default ``renderer='atlas'``): minigrid's Python envs return
  their symbolic 7x7x3 view, and ``envs.minigrid_render`` draws the whole batch from a tile atlas,
  pixel-identical (tests/test_minigrid_render.py) and far cheaper than minigrid's per-cell redraw;
* ``renderer='minigrid'``: minigrid's own wrappers, the reference the atlas is tested against;
* ``vec_env='envpool'``: EnvPool's C++ MiniGrid steps the batch, the atlas draws it
  (``envs.minigrid_envpool``), for the ids EnvPool implements. Its episodes match minigrid's in
  distribution, not seed for seed (tests/test_minigrid_envpool.py).
"""

from __future__ import annotations

import functools

import gymnasium as gym

from utils.errors import UserError

RENDERERS = ("atlas", "minigrid")
ENVPOOL_INSTALL = "pip install -e '.[procgen]' (EnvPool)"


def make_single(env_id: str, renderer: str = "minigrid") -> gym.Env:
    """One env: RGB from minigrid's wrappers (``'minigrid'``), or the symbolic 7x7x3 view (``'atlas'``,
    rendered later for the whole batch)."""
    import minigrid  # noqa: F401  (registers the MiniGrid-* ids, also inside async workers)
    from minigrid.wrappers import ImgObsWrapper, RGBImgPartialObsWrapper

    env = gym.make(env_id)
    return ImgObsWrapper(RGBImgPartialObsWrapper(env) if renderer == "minigrid" else env)


def make_vector(env_id: str, n_envs: int, vec_env: str, renderer: str = "atlas") -> gym.vector.VectorEnv:
    """``n_envs`` copies of ``env_id`` observing 56x56x3 RGB, in same-step autoreset mode."""
    import minigrid  # noqa: F401

    from envs import check_registered, vectorise
    from envs.minigrid_render import RenderViews

    check_registered(env_id, "MiniGrid")
    if renderer not in RENDERERS:
        raise UserError(f"unknown MiniGrid renderer '{renderer}': choose one of {', '.join(RENDERERS)}")
    if vec_env == "envpool":
        if renderer != "atlas":
            raise UserError("vec_env=envpool gives symbolic views only: it needs renderer='atlas'")
        return RenderViews(_envpool_views(env_id, n_envs))
    envs = vectorise(functools.partial(make_single, env_id, renderer), n_envs, vec_env)
    return RenderViews(envs) if renderer == "atlas" else envs


def _envpool_views(env_id: str, n_envs: int) -> gym.vector.VectorEnv:
    try:
        from envs.minigrid_envpool import SameStepMiniGridPool, envpool_ids

        known = envpool_ids()
    except ImportError:
        raise UserError(f"vec_env=envpool needs EnvPool: {ENVPOOL_INSTALL}") from None
    if env_id not in known:
        raise UserError(f"EnvPool does not implement '{env_id}': use vec_env=sync or async for it")
    return SameStepMiniGridPool(env_id, n_envs)
