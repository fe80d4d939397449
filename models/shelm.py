"""SHELM: Semantic HELM, a memory of words (Paischer et al., NeurIPS 2023).

Each observation is embedded by frozen CLIP, the ``topk`` words whose CLIP text embedding is most
cosine-similar are retrieved from the semantic database (``models.semantic_db``), and those
words' LM input token embeddings enter the frozen LM memory: k tokens per env step, most similar
first, so ``mem_len`` counts tokens. The policy acts on [LM output at the last token || CNN], as
in HELM. Because the memory holds real words, it can be read: the retrieved database indices are
returned as the per-step feature ``memory_tokens`` (stored with the rollout), ``describe_step``
gives eval traces the words, and ``step_text`` shows env 0's recent words.

The database is built once per (CLIP, LM, templates) by ``prepare_embeddings.py``; by default it
is ``data/semantic_db__<clip>__<lm>__<templates>.pt`` (relative to the working directory, like
prepare_embeddings.py's default output), or the ``semantic_db`` file. A missing database or one
built for another CLIP/LM/templates is a one-line error naming the command that builds it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.clip_encoder import CLIPImageEncoder, load_clip
from models.helm import FrozenEncoder, LMMemoryAgent
from models.helmv2 import clip_agent_memory, clip_cache_log
from models.vocabulary import Vocabulary
from models.semantic_db import default_db_path, load_database, retrieve_topk
from utils.errors import UserError


class WordRetrievalEncoder(FrozenEncoder):
    """SHELM's map: CLIP retrieves the top-k words of each frame; their LM token embeddings are the inputs."""

    def __init__(self, vocabulary: Vocabulary, cfg: dict) -> None:
        super().__init__(vocabulary)
        # CLIP (and, in load_database, the templates) before the database: a "build it with
        # prepare_embeddings.py ..." hint must name a command that can work.
        self.image_encoder = CLIPImageEncoder(load_clip(cfg["clip_model"]), cfg["clip_cache_size"])
        path = cfg["semantic_db"] or default_db_path(cfg["clip_model"], cfg["lm"], cfg["templates"])
        db = load_database(path, cfg["clip_model"], cfg["lm"], cfg["templates"])
        self.topk: int = cfg["topk"]
        if not 1 <= self.topk <= len(db["words"]):
            raise UserError(f"topk={self.topk} but the semantic database {path} holds {len(db['words'])} words")
        vocab_size = len(vocabulary)
        if int(db["lm_ids"].max()) >= vocab_size:
            raise UserError(f"semantic database {path} has LM token ids beyond the LM's {vocab_size} embeddings; rebuild it")
        if db["embeddings"].shape[1] != self.image_encoder.embed_dim:
            raise UserError(f"semantic database {path} has {db['embeddings'].shape[1]}-d embeddings, CLIP gives "
                            f"{self.image_encoder.embed_dim}-d; rebuild it with prepare_embeddings.py")
        self.db_words: list[str] = list(db["words"])
        # Rebuilt from the database file, so not part of checkpoints.
        self.register_buffer("db_embeddings", F.normalize(db["embeddings"].float(), dim=-1), persistent=False)
        self.register_buffer("db_lm_ids", db["lm_ids"].long(), persistent=False)

    def retrieve(self, obs: torch.Tensor) -> torch.Tensor:
        """Database indices of the top-k words of each observation, [B, k], most similar first."""
        return retrieve_topk(self.image_encoder(obs), self.db_embeddings, self.topk, db_normalized=True)[1]

    def encode(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scores, idx = retrieve_topk(self.image_encoder(obs), self.db_embeddings, self.topk, db_normalized=True)
        embeds = self.vocabulary.embeddings()[self.db_lm_ids[idx]]  # [B, k, d_embed]
        return embeds, {"memory_tokens": idx, "memory_scores": scores}

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.encode(obs)[0]

    # Words come straight from the database: no nearest-token search, no tokenizer.
    def trace_items(self, inputs: torch.Tensor, extra: dict[str, torch.Tensor]) -> torch.Tensor:
        return extra["memory_tokens"]

    def words(self, items: torch.Tensor) -> list[list[str]]:
        return [[self.db_words[i] for i in row] for row in items.tolist()]

    def step_log(self) -> dict[str, float]:
        return clip_cache_log(self)


class SHELM(LMMemoryAgent):
    frozen_prefixes = ("encoder.image_encoder.clip.",)

    def __init__(self, obs_shape: tuple[int, int, int], n_actions: int, cfg: dict):
        memory, vocabulary = clip_agent_memory("SHELM", obs_shape, cfg)
        super().__init__(obs_shape, n_actions, cfg, WordRetrievalEncoder(vocabulary, cfg), memory)
