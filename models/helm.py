"""HELM: a frozen pretrained language model as the agent's memory (Paischer et al., ICML 2022).

Each observation is mapped by the FrozenHopfield onto the LM's token-embedding space and enters
the LM as one token; the LM's output at that token summarises the episode so far. The policy
acts on [LM output || a trainable CNN of the current observation]. Only the CNN and the heads
train: the LM output is computed once per env step in the rollout and stored as a feature, so
the PPO update never runs the language model.
"""

from __future__ import annotations

from collections import deque

import torch
from torch import nn

from models.base import ActOutput, MemoryAgent
from models.frame_cache import FrameCache
from models.frozen_hopfield import FrozenHopfield
from models.frozen_lm import load_frozen_memory
from models.memory import Memory
from models.networks import SmallImpalaCNN, VectorEncoder, is_vector
from models.vocabulary import Vocabulary
from utils.errors import UserError

TEXT_STEPS = 32  # env 0's most recent steps that `step_text` shows


def hopfield_layout(env_id: str) -> str:
    """Which axis the original FrozenHopfield averaged for this env's frames.

    The original trainer ran inside SB3 1.4, which transposes every uint8 image space bounded
    [0, 255] to CHW (`VecTransposeImage`); the FrozenHopfield's `obs.mean(dim=1)` then averaged the
    colour channels: a grayscale frame. Psychlab's original observations were float32, never
    transposed, so there the same line averaged image height.
    """
    from envs import family_of

    family = family_of(env_id)
    return "height_mean" if family == "Psychlab" else "vector" if family == "POPGym" else "grayscale"


def hopfield_input(obs: torch.Tensor, layout: str = "grayscale") -> torch.Tensor:
    """The original preprocessing of uint8 HWC frames: scale to [0, 1], average one axis, flatten.

    "grayscale": mean over colour channels, H*W values (MiniGrid 3136, Procgen 4096);
    "height_mean": mean over image height, W*C values (the original's Psychlab input);
    "vector": a vector observation (POPGym) as it is: the projection reads the flattened observation.
    """
    if layout == "vector":
        return obs.float().flatten(1)
    x = obs.float().div(255.0)
    if layout == "grayscale":
        return x.mean(dim=3).flatten(1)
    if layout == "height_mean":
        return x.mean(dim=1).flatten(1)
    raise ValueError(f"unknown FrozenHopfield input layout {layout!r}")


def hopfield_input_dim(obs_shape: tuple[int, ...], layout: str) -> int:
    if layout == "vector":
        return int(obs_shape[0])
    height, width, channels = obs_shape
    return height * width if layout == "grayscale" else width * channels


class FrozenEncoder(nn.Module):
    """A fixed map from observations to the frozen LM's input embeddings (never trained).

    `encode` gives the inputs [B, k, d_embed] and extra per-step features for the rollout;
    `trace_items` what to keep of a step to name its memory words later, and `words` the words.
    """

    # whether `encode` may run inside a CUDA graph (no host work such as a frame cache's lookups)
    graph_safe: bool = False

    def __init__(self, vocabulary: Vocabulary) -> None:
        super().__init__()
        self.vocabulary = vocabulary

    def encode(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self(obs), {}

    def trace_items(self, inputs: torch.Tensor, extra: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per env, what names this step's memory tokens: by default the input embeddings [B, k, d]."""
        return inputs

    def words(self, items: torch.Tensor) -> list[list[str]]:
        """Words for a batch of `trace_items` rows: the vocabulary tokens nearest (cosine) to each input."""
        return self.vocabulary.words(items)

    def step_log(self) -> dict[str, float]:
        return {}


class HopfieldEncoder(FrozenEncoder):
    """HELM's map: the original preprocessing of a frame, then the FrozenHopfield, one token per frame."""

    def __init__(self, obs_shape: tuple[int, int, int], vocabulary: Vocabulary, env_id: str, beta: float, seed: int,
                 cache_size: int) -> None:
        super().__init__(vocabulary)
        self.layout = hopfield_layout(env_id)
        self.hopfield = FrozenHopfield(hopfield_input_dim(obs_shape, self.layout), vocabulary.embeddings().float(),
                                       beta, seed=seed)
        # The FrozenHopfield is fixed, so each distinct frame is mapped once (MiniGrid repeats frames a lot)
        self.cache = FrameCache(cache_size)
        self.graph_safe = not cache_size  # the cache hashes frames on the host

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        def retrieve(frames: torch.Tensor) -> torch.Tensor:
            return self.hopfield(hopfield_input(frames, self.layout))

        if not self.cache.capacity:
            return retrieve(obs).unsqueeze(1)
        rows = self.cache.lookup(obs.detach().cpu().numpy(),
                                 lambda misses: retrieve(obs[torch.as_tensor(misses, device=obs.device)]))
        return torch.stack(rows).unsqueeze(1)

    def step_log(self) -> dict[str, float]:
        return self.cache.interval_log("hopfield") if self.cache.capacity else {}


class LMMemoryAgent(MemoryAgent):
    """HELM, HELMv2 and SHELM: frozen encoder -> frozen LM -> [LM output || CNN] -> heads.

    The subclasses differ only in their encoder: how an observation becomes the LM's input
    embeddings. This class adds what reads the memory: the words fed to it per step, for eval
    traces (`describe_step`) and TensorBoard (`step_text`).
    """

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, cfg: dict, encoder: FrozenEncoder,
                 memory: Memory) -> None:
        if is_vector(obs_shape):  # POPGym: the MLP-PPO network beside the memory
            skip = VectorEncoder(obs_shape[0])
        else:
            skip = SmallImpalaCNN(obs_shape, channel_scale=4, hidden=1024, precision=cfg.get("precision", "fp32"))
        super().__init__(encoder, memory, n_actions, skip)
        self.lm_name: str = cfg["lm"]
        # What the last act() fed per env, and env 0's recent steps as (episode_start, item). Items
        # are cheap to keep; turning them into words happens only when someone asks.
        self._last_items: torch.Tensor | None = None
        self._last_scores: torch.Tensor | None = None  # SHELM: each retrieved word's cosine similarity
        self._recent: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=TEXT_STEPS)

    @property
    def vocabulary(self) -> Vocabulary:
        return self.encoder.vocabulary

    def encode(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.encoder.encode(obs)

    def initial_state(self, n_envs: int):
        self._last_items = None
        self._recent.clear()
        return super().initial_state(n_envs)

    def step_log(self) -> dict[str, float]:
        return self.encoder.step_log()

    # -- reading the memory ------------------------------------------------------------------------

    def record(self, inputs: torch.Tensor, extra: dict[str, torch.Tensor], episode_start: torch.Tensor) -> None:
        items = self.encoder.trace_items(inputs, extra).detach()
        self._last_items = items
        self._last_scores = extra.get("memory_scores")
        start = torch.as_tensor(episode_start).reshape(-1)[:1].clone()
        self._recent.append((start, items[0].clone()))

    def describe_step(self, out: ActOutput) -> list[dict]:
        """One dict per env for the last `act` (eval.py's trace): {"words": tokens fed to the memory}."""
        if self._last_items is None:
            return [{} for _ in range(len(out.actions))]
        rows = [{"words": words} for words in self.encoder.words(self._last_items)]
        if self._last_scores is not None:
            for row, scores in zip(rows, self._last_scores.tolist()):
                row["scores"] = [round(score, 4) for score in scores]
        return rows

    def step_text(self) -> dict[str, str]:
        """Env 0's recent memory tokens for TensorBoard text: steps joined by " / ", "||" starts an episode."""
        if not self._recent:
            return {}
        starts = [bool(start.item()) for start, _ in self._recent]
        words = self.encoder.words(torch.stack([item for _, item in self._recent]))
        pieces: list[str] = []
        for start, step_words in zip(starts, words):
            if pieces:
                pieces.append(" || " if start else " / ")
            pieces.append(" ".join(step_words))
        return {"memory/words": "".join(pieces)}


def frozen_memory(cfg: dict) -> tuple[Memory, Vocabulary]:
    """The config's frozen LM memory and its vocabulary."""
    return load_frozen_memory(cfg["lm"], cfg["mem_len"], cfg.get("lm_mode", "auto"), cfg.get("lm_layers"),
                              cfg.get("mem_reset", "auto"), cfg.get("precision", "fp32"),
                              static=cfg.get("cuda_graph", False),
                              tokens_per_step=cfg["topk"] if cfg.get("model") == "SHELM" else 1)


class HELM(LMMemoryAgent):
    def __init__(self, obs_shape: tuple[int, int, int], n_actions: int, cfg: dict):
        memory, vocabulary = frozen_memory(cfg)
        encoder = HopfieldEncoder(obs_shape, vocabulary, cfg["env"], cfg["beta"], cfg["seed"],
                                  cfg.get("hopfield_cache_size", 0))
        super().__init__(obs_shape, n_actions, cfg, encoder, memory)

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        saved = state.get("encoder.hopfield.projection")
        ours = self.encoder.hopfield.projection
        if saved is not None and saved.shape != ours.shape:
            raise UserError(
                f"checkpoint's FrozenHopfield reads {saved.shape[1]} values per frame, this version reads "
                f"{ours.shape[1]} ({self.encoder.layout} frames, as the original HELM); it was written by an "
                "older layout (height mean) and cannot be loaded: train it again"
            )
        super().load_checkpoint_state(state)
