"""MiniGrid's agent-view RGB image, drawn from the symbolic view with a tile atlas.

``RGBImgPartialObsWrapper`` redraws the agent's 7x7 view cell by cell in Python on every step
(``get_pov_render``: rebuild the view grid, then one ``Grid.render_tile`` lookup per cell), which
caps a 16-env MiniGrid at ~1.7k steps/s. Everything that picture shows is already in the symbolic
7x7x3 view (object type, colour, state) that minigrid and EnvPool return anyway:

* a cell the agent cannot see is "unseen" (type 0) and drawn without highlight;
* every visible cell is highlighted (``get_pov_render`` passes the visibility mask as highlight);
* the agent sits at the bottom centre (column 3, row 6) facing up (direction 3), drawn over the
  object it carries, which minigrid puts in that cell (or "empty" when it carries nothing);
* a tile's picture depends only on the cell's (type, colour, state): minigrid's own tile cache is
  keyed by exactly that.

So the tiles are drawn once, by minigrid's own ``Grid.render_tile``, into an atlas indexed by
(agent here, type, colour, state), and a batch of views becomes images with one fancy-indexing
gather. The result is pixel-identical to ``ImgObsWrapper(RGBImgPartialObsWrapper(env))``
(tests/test_minigrid_render.py checks this on every tile and on thousands of env states).
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
import numpy as np

VIEW = 7  # cells per side of the agent's view (minigrid's default agent_view_size)
TILE = 8  # pixels per cell, RGBImgPartialObsWrapper's default tile_size
N_TYPES, N_COLORS, N_STATES = 11, 6, 3  # minigrid's OBJECT_TO_IDX, COLOR_TO_IDX, STATE_TO_IDX sizes
N_CODES = N_TYPES * N_COLORS * N_STATES
AGENT_CELL = (VIEW // 2, VIEW - 1)  # (column, row) of the agent in its own view
AGENT_DIR_IN_VIEW = 3  # the view is rotated so that the agent faces up


def _object(type_idx: int, color_idx: int, state: int):
    """The world object a (type, colour, state) triple encodes (None for unseen/empty/agent).

    Unlike ``WorldObj.decode`` this keeps a goal's colour, so every atlas entry draws exactly the
    object whose ``encode()`` is its index (goals are green in every registered env anyway).
    """
    from minigrid.core.constants import IDX_TO_COLOR, IDX_TO_OBJECT
    from minigrid.core.world_object import Ball, Box, Door, Floor, Goal, Key, Lava, Wall

    kind, color = IDX_TO_OBJECT[type_idx], IDX_TO_COLOR[color_idx]
    simple = {"wall": Wall, "floor": Floor, "ball": Ball, "key": Key, "box": Box, "goal": Goal}
    if kind in simple:
        return simple[kind](color)
    if kind == "door":
        return Door(color, is_open=state == 0, is_locked=state == 2)
    if kind == "lava":
        return Lava()
    return None  # unseen, empty; "agent" never appears in a partial view (its cell shows the carried object)


@functools.lru_cache(maxsize=None)
def atlas(tile_size: int = TILE) -> np.ndarray:
    """Tiles ``[2 * N_CODES, tile_size, tile_size, 3]``: entry ``agent * N_CODES + code(type, colour, state)``.

    Drawn once by minigrid's ``Grid.render_tile``, with the same arguments ``get_pov_render`` gives
    it: highlight on every cell but unseen ones, the agent (facing up) in the agent variant.
    """
    from minigrid.core.grid import Grid

    tiles = np.zeros((2, N_TYPES, N_COLORS, N_STATES, tile_size, tile_size, 3), np.uint8)
    for agent in (0, 1):
        for t in range(N_TYPES):
            for c in range(N_COLORS):
                for s in range(N_STATES):
                    tiles[agent, t, c, s] = Grid.render_tile(
                        _object(t, c, s),
                        agent_dir=AGENT_DIR_IN_VIEW if agent else None,
                        highlight=t != 0,  # 0 = unseen
                        tile_size=tile_size,
                    )
    tiles = tiles.reshape(2 * N_CODES, tile_size, tile_size, 3)
    tiles.flags.writeable = False
    return tiles


@functools.lru_cache(maxsize=None)
def _atlas_rows(tile_size: int) -> np.ndarray:
    """The atlas as one opaque element per tile row, so the gather copies whole rows at once."""
    rows = np.ascontiguousarray(atlas(tile_size)).reshape(2 * N_CODES * tile_size, tile_size * 3)
    return rows.view(np.dtype((np.void, tile_size * 3))).reshape(-1)


def cell_codes(views: np.ndarray) -> np.ndarray:
    """Atlas index of every cell of ``views`` ``[..., VIEW, VIEW, 3]`` (indexed [column, row]); the agent's cell
    points into the agent half of the atlas."""
    v = views.astype(np.intp)
    codes = (v[..., 0] * N_COLORS + v[..., 1]) * N_STATES + v[..., 2]
    codes[..., AGENT_CELL[0], AGENT_CELL[1]] += N_CODES
    return codes


def render_views(views: np.ndarray, tile_size: int = TILE) -> np.ndarray:
    """RGB images ``[n, VIEW*tile, VIEW*tile, 3]`` of symbolic views ``[n, VIEW, VIEW, 3]`` (uint8).

    ``views`` is minigrid's ``obs["image"]`` layout (first axis = column); the image is row-major
    like ``get_frame``'s. Values must be valid minigrid codes (type < 11, colour < 6, state < 3).
    """
    views = np.asarray(views)
    if views.ndim != 4 or views.shape[1:] != (VIEW, VIEW, 3):
        raise ValueError(f"expected symbolic views of shape [n, {VIEW}, {VIEW}, 3], got {views.shape}")
    n = views.shape[0]
    codes = cell_codes(views).transpose(0, 2, 1)  # [n, row, column]
    # Image row (cell_row * tile + r) is, across the columns, the tile rows r of that cell row's tiles.
    index = codes[:, :, None, :] * tile_size + np.arange(tile_size)[None, None, :, None]
    rows = np.take(_atlas_rows(tile_size), index.ravel())  # n * VIEW * tile * VIEW rows of tile*3 bytes
    return rows.view(np.uint8).reshape(n, VIEW * tile_size, VIEW * tile_size, 3)


class RenderViews(gym.vector.VectorWrapper):
    """A same-step-autoreset vector env of symbolic 7x7x3 MiniGrid views, seen as 56x56x3 RGB.

    Renders ``info["final_obs"]`` too, in the format it came in (a dense batch, or gymnasium's
    object array with ``None`` for sub-envs that did not finish), so the trainer bootstraps from
    the same picture ``RGBImgPartialObsWrapper`` would have shown.
    """

    def __init__(self, env: gym.vector.VectorEnv, tile_size: int = TILE):
        super().__init__(env)
        self.tile_size = tile_size
        self._actions = None  # held between step_async and step_wait when the inner envs are synchronous
        side = VIEW * tile_size
        self.single_observation_space = gym.spaces.Box(0, 255, (side, side, 3), np.uint8)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return render_views(obs, self.tile_size), info

    def step(self, actions):
        return self._render_step(*self.env.step(actions))

    def step_async(self, actions) -> None:
        """Start the inner envs' step where they run off this thread (EnvPool, AsyncVectorEnv)."""
        if hasattr(self.env, "step_async"):
            self.env.step_async(actions)
        else:
            self._actions = actions

    def step_wait(self):
        if hasattr(self.env, "step_async"):
            return self._render_step(*self.env.step_wait())
        actions, self._actions = self._actions, None
        return self.step(actions)

    def _render_step(self, obs, rewards, terminated, truncated, info):
        if "final_obs" in info:
            info = {**info, "final_obs": self._render_final(info["final_obs"], info["_final_obs"])}
        return render_views(obs, self.tile_size), rewards, terminated, truncated, info

    def _render_final(self, final: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if final.dtype != object:
            return render_views(final, self.tile_size)
        done = np.flatnonzero(mask)
        images = render_views(np.stack([final[i] for i in done]), self.tile_size)
        out = np.full(len(final), None, dtype=object)
        for i, image in zip(done, images):
            out[i] = image
        return out
