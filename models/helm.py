"""HELM: a frozen pretrained language model as the agent's memory (Paischer et al., ICML 2022).

Each observation is mapped by the FrozenHopfield onto the LM's token-embedding space and enters
the LM as one token; the LM's output at that token summarises the episode so far. The policy
acts on [LM output || a trainable CNN of the current observation]. Only the CNN and the heads
train: the LM output is computed once per env step in the rollout and stored as a feature, so
the PPO update never runs the language model.
"""

from __future__ import annotations

import sys
from collections import deque

import torch
import torch.nn.functional as F

from models.base import ActOutput, Agent, distribution, sample
from models.frame_cache import FrameCache
from models.frozen_hopfield import FrozenHopfield
from models.memory import build_memory
from models.networks import ActorCritic, SmallImpalaCNN
from utils.errors import UserError
from utils.hub import first_line

TEXT_STEPS = 32  # env 0's most recent steps that `step_text` shows
WORD_CACHE_SIZE = 65536  # distinct memory inputs whose nearest token is remembered (eval traces, text logs)


def hopfield_layout(env_id: str) -> str:
    """Which axis the original FrozenHopfield averaged for this env's frames.

    The original trainer ran inside SB3 1.4, which transposes every uint8 image space bounded
    [0, 255] to CHW (`VecTransposeImage`); the FrozenHopfield's `obs.mean(dim=1)` then averaged the
    colour channels: a grayscale frame. Psychlab's original observations were float32, never
    transposed, so there the same line averaged image height.
    """
    from envs import family_of

    return "height_mean" if family_of(env_id) == "Psychlab" else "grayscale"


def hopfield_input(obs: torch.Tensor, layout: str = "grayscale") -> torch.Tensor:
    """The original preprocessing of uint8 HWC frames: scale to [0, 1], average one axis, flatten.

    "grayscale": mean over colour channels, H*W values (MiniGrid 3136, Procgen 4096);
    "height_mean": mean over image height, W*C values (the original's Psychlab input).
    """
    x = obs.float().div(255.0)
    if layout == "grayscale":
        return x.mean(dim=3).flatten(1)
    if layout == "height_mean":
        return x.mean(dim=1).flatten(1)
    raise ValueError(f"unknown FrozenHopfield input layout {layout!r}")


def hopfield_input_dim(obs_shape: tuple[int, int, int], layout: str) -> int:
    height, width, channels = obs_shape
    return height * width if layout == "grayscale" else width * channels


class LMMemoryAgent(Agent):
    """Shared by HELM, HELMv2 and SHELM: memory tokens -> frozen LM -> [LM out || CNN] -> heads.

    Subclasses only say how an observation becomes the LM's input embeddings (``memory_inputs``).
    """

    def __init__(self, obs_shape: tuple[int, int, int], n_actions: int, cfg: dict):
        super().__init__()
        self.memory = build_memory(cfg)
        self.cnn = SmallImpalaCNN(obs_shape, channel_scale=4, hidden=1024, precision=cfg.get("precision", "fp32"))
        self.heads = ActorCritic(self.memory.d_model + self.cnn.out_dim, n_actions)
        # Reading the memory (traces, TensorBoard text): what the last act() fed per env, and
        # env 0's recent steps as (episode_start, item). Items are cheap to keep; turning them into
        # words (nearest vocabulary tokens, a tokenizer) happens only when someone asks.
        self.lm_name: str = cfg["lm"]
        self._last_items: torch.Tensor | None = None
        self._recent: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=TEXT_STEPS)
        self._tokenizer = None  # None: not tried yet; False: none available
        self._unit_vocab: torch.Tensor | None = None
        self._word_ids = FrameCache(WORD_CACHE_SIZE)  # memory input -> nearest token id
        self._texts: dict[int, str] = {}  # token id -> its text (decoding is per token, so memoised)

    def memory_inputs(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 observations [B, H, W, C] -> LM input embeddings [B, k, d_embed]."""
        raise NotImplementedError

    def encode_memory(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Memory inputs plus extra per-step features that the rollout should keep (SHELM's word ids)."""
        return self.memory_inputs(obs), {}

    def reset_memory(self, n_envs: int) -> None:
        self.memory.reset(n_envs)
        self._last_items = None
        self._recent.clear()

    def _policy(self, lm_out: torch.Tensor, obs: torch.Tensor):
        return self.heads(torch.cat([lm_out, self.cnn(obs)], dim=-1))

    def act(self, obs: torch.Tensor, episode_start: torch.Tensor, deterministic: bool = False) -> ActOutput:
        inputs, extra = self.encode_memory(obs)
        lm_out = self.memory.step(inputs, episode_start).float()  # a bf16 LM (precision=bf16) too
        logits, values = self._policy(lm_out, obs)
        self._record(self.trace_items(inputs, extra), episode_start)
        return sample(logits, values, deterministic, {"lm_out": lm_out, **extra})

    def peek_values(self, obs: torch.Tensor, episode_start: torch.Tensor) -> torch.Tensor:
        return self._policy(self.memory.peek(self.encode_memory(obs)[0], episode_start).float(), obs)[1]

    def evaluate(self, batch):
        logits, values = self._policy(batch["lm_out"], batch["obs"])
        dist = distribution(logits)
        return dist.log_prob(batch["actions"]), dist.entropy(), values

    # -- reading the memory ------------------------------------------------------------------------

    def trace_items(self, inputs: torch.Tensor, extra: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per env, what is kept to name this step's memory tokens later: here the input embeddings [B, k, d]."""
        return inputs

    def memory_words(self, items: torch.Tensor) -> list[list[str]]:
        """Words for a batch of `trace_items` rows: the vocabulary tokens nearest (cosine) to each input.

        A search over the whole vocabulary per env and step was a third of eval.py's time, while
        the inputs repeat as often as the frames do: each distinct input is searched once.
        """
        flat = items.detach().reshape(-1, items.shape[-1])
        rows = self._word_ids.lookup(flat.float().cpu().numpy(), lambda misses: self.nearest_tokens(flat[misses]))
        ids = torch.stack(rows).reshape(items.shape[:-1])
        return [self.token_texts(row) for row in ids.tolist()]

    def nearest_tokens(self, embeds: torch.Tensor) -> torch.Tensor:
        """Ids of the LM vocabulary tokens whose input embeddings are closest (cosine) to `embeds` [..., d] -> [...]."""
        vocab = self.memory.token_embeddings()
        if self._unit_vocab is None or self._unit_vocab.device != vocab.device:
            self._unit_vocab = F.normalize(vocab.float(), dim=-1)
        query = F.normalize(embeds.to(vocab.device).float(), dim=-1)
        return (query @ self._unit_vocab.T).argmax(dim=-1)

    def token_texts(self, ids: list[int]) -> list[str]:
        """Decode token ids one by one with the LM's tokenizer ("#id" where none can be loaded)."""
        tokenizer = self._lm_tokenizer()
        texts = []
        for i in ids:
            if i in self._texts:
                texts.append(self._texts[i])
                continue
            text = ""
            if tokenizer is not None and 0 <= i < len(tokenizer):  # ids beyond it: padding rows, or an empty tokenizer
                try:
                    text = tokenizer.decode([i]).strip() or str(tokenizer.convert_ids_to_tokens(i) or "")
                except (IndexError, KeyError, TypeError, ValueError, OverflowError):
                    text = ""
            self._texts[i] = text or f"#{i}"
            texts.append(self._texts[i])
        return texts

    def _lm_tokenizer(self):
        """The memory's tokenizer, loaded on first use: training never needs it, only traces and text logs."""
        if self._tokenizer is None:
            self._tokenizer = False
            reason = "none available"
            try:
                self._tokenizer = self.memory.tokenizer() or False
            except UserError as err:  # e.g. a refused vocab.pkl: its message names the file and why
                reason = first_line(err)
            except Exception as err:  # any failure just means we show token ids
                text = first_line(err)
                reason = text if text == type(err).__name__ else f"{type(err).__name__}: {text}"
            if self._tokenizer is False:
                # one line on stderr, like the other warnings (a Python warning prints its source line too)
                print(f"warning: no tokenizer for LM {self.lm_name!r} ({reason}); memory tokens shown as ids",
                      file=sys.stderr)
        return self._tokenizer or None

    def _record(self, items: torch.Tensor, episode_start: torch.Tensor) -> None:
        self._last_items = items.detach()
        start = torch.as_tensor(episode_start).reshape(-1)[:1].clone()
        self._recent.append((start, items[0].detach().clone()))

    def describe_step(self, out: ActOutput) -> list[dict]:
        """One dict per env for the last `act` (eval.py's trace): {"words": tokens fed to the memory}."""
        if self._last_items is None:
            return [{} for _ in range(len(out.actions))]
        return [{"words": words} for words in self.memory_words(self._last_items)]

    def step_text(self) -> dict[str, str]:
        """Env 0's recent memory tokens for TensorBoard text: steps joined by " / ", "||" starts an episode."""
        if not self._recent:
            return {}
        starts = [bool(start.item()) for start, _ in self._recent]
        words = self.memory_words(torch.stack([item for _, item in self._recent]))
        pieces: list[str] = []
        for start, step_words in zip(starts, words):
            if pieces:
                pieces.append(" || " if start else " / ")
            pieces.append(" ".join(step_words))
        text = "".join(pieces)
        return {"memory/words": text}


class HELM(LMMemoryAgent):
    def __init__(self, obs_shape: tuple[int, int, int], n_actions: int, cfg: dict):
        super().__init__(obs_shape, n_actions, cfg)
        self.hopfield_layout = hopfield_layout(cfg["env"])
        input_dim = hopfield_input_dim(obs_shape, self.hopfield_layout)
        self.hopfield = FrozenHopfield(input_dim, self.memory.token_embeddings().float(), cfg["beta"], seed=cfg["seed"])
        # The FrozenHopfield is fixed, so each distinct frame is mapped once (MiniGrid repeats frames a lot)
        self.hopfield_cache = FrameCache(cfg.get("hopfield_cache_size", 0))

    def memory_inputs(self, obs: torch.Tensor) -> torch.Tensor:
        def retrieve(frames: torch.Tensor) -> torch.Tensor:
            return self.hopfield(hopfield_input(frames, self.hopfield_layout))

        if not self.hopfield_cache.capacity:
            return retrieve(obs).unsqueeze(1)
        rows = self.hopfield_cache.lookup(
            obs.detach().cpu().numpy(), lambda misses: retrieve(obs[torch.as_tensor(misses, device=obs.device)])
        )
        return torch.stack(rows).unsqueeze(1)

    def step_log(self) -> dict[str, float]:
        return self.hopfield_cache.interval_log("hopfield") if self.hopfield_cache.capacity else {}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        saved = state.get("hopfield.projection")
        ours = self.hopfield.projection
        if saved is not None and saved.shape != ours.shape:
            raise UserError(
                f"checkpoint's FrozenHopfield reads {saved.shape[1]} values per frame, this version reads "
                f"{ours.shape[1]} ({self.hopfield_layout} frames, as the original HELM); it was written by an "
                "older layout (height mean) and cannot be loaded: train it again"
            )
        super().load_checkpoint_state(state)
