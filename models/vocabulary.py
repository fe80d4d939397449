"""A frozen LM's vocabulary: its token embeddings, its tokenizer, and the words of embeddings.

The FrozenHopfield retrieves over the token embeddings, HELMv2 rescales to their statistics,
SHELM feeds the embeddings of retrieved words, and the memory traces name each memory input by
its nearest token. None of that is the memory's job, so it lives here, apart from `Memory`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from models.frame_cache import FrameCache
from utils.errors import UserError
from utils.hub import first_line

WORD_CACHE_SIZE = 65536  # distinct inputs whose nearest token is remembered (eval traces, text logs)


class Vocabulary:
    """Token embeddings [vocab, d_embed] (read from the LM, so they follow it across devices and
    dtypes) and a tokenizer loaded on first use (training never needs it; traces do)."""

    def __init__(self, name: str, embeddings: Callable[[], torch.Tensor], tokenizer: Callable[[], Any] | None) -> None:
        self.name = name
        self._embeddings = embeddings
        self._load_tokenizer = tokenizer
        self._tokenizer = None  # None: not tried yet; False: none available
        self._unit: torch.Tensor | None = None
        self._word_ids = FrameCache(WORD_CACHE_SIZE)  # memory input -> nearest token id
        self._texts: dict[int, str] = {}  # token id -> its text (decoding is per token, so memoised)

    def embeddings(self) -> torch.Tensor:
        """The LM's input embedding of every token id, [vocab, d_embed] (frozen; no gradient)."""
        return self._embeddings()

    def __len__(self) -> int:
        return int(self.embeddings().shape[0])

    def tokenizer(self):
        """The LM's tokenizer, or None when none can be loaded (a one-line warning says why, once)."""
        if self._tokenizer is None:
            self._tokenizer = False
            reason = "none available"
            try:
                self._tokenizer = (self._load_tokenizer() if self._load_tokenizer else None) or False
            except UserError as err:  # e.g. a refused vocab.pkl: its message names the file and why
                reason = first_line(err)
            except Exception as err:  # any failure just means we show token ids
                text = first_line(err)
                reason = text if text == type(err).__name__ else f"{type(err).__name__}: {text}"
            if self._tokenizer is False:
                print(f"warning: no tokenizer for LM {self.name!r} ({reason}); memory tokens shown as ids", file=sys.stderr)
        return self._tokenizer or None

    def nearest_tokens(self, embeds: torch.Tensor) -> torch.Tensor:
        """Ids of the tokens whose input embeddings are closest (cosine) to `embeds` [..., d] -> [...]."""
        vocab = self.embeddings()
        if self._unit is None or self._unit.device != vocab.device:
            self._unit = F.normalize(vocab.float(), dim=-1)
        query = F.normalize(embeds.to(vocab.device).float(), dim=-1)
        return (query @ self._unit.T).argmax(dim=-1)

    def words(self, items: torch.Tensor) -> list[list[str]]:
        """Words for rows of embeddings [B, k, d]: the nearest token of each, as text.

        A search over the whole vocabulary per env and step was a third of eval.py's time, while
        the inputs repeat as often as the frames do: each distinct input is searched once.
        """
        flat = items.detach().reshape(-1, items.shape[-1])
        rows = self._word_ids.lookup(flat.float().cpu().numpy(), lambda misses: self.nearest_tokens(flat[misses]))
        ids = torch.stack(rows).reshape(items.shape[:-1])
        return [self.token_texts(row) for row in ids.tolist()]

    def token_texts(self, ids: list[int]) -> list[str]:
        """Decode token ids one by one with the tokenizer ("#id" where none can be loaded)."""
        tokenizer = self.tokenizer()
        texts = []
        for i in ids:
            if i not in self._texts:
                text = ""
                if tokenizer is not None and 0 <= i < len(tokenizer):  # ids beyond it: padding rows, or an empty tokenizer
                    try:
                        text = tokenizer.decode([i]).strip() or str(tokenizer.convert_ids_to_tokens(i) or "")
                    except (IndexError, KeyError, TypeError, ValueError, OverflowError):
                        text = ""
                self._texts[i] = text or f"#{i}"
            texts.append(self._texts[i])
        return texts

