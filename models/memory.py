"""The agent's memory: a frozen language model that remembers each env's last `mem_len` tokens.

HELM, HELMv2 and SHELM differ only in how an observation becomes input embeddings; what happens
to those embeddings is the job of a `Memory`. Two implementations exist:

* `models.lm_memory.LMMemory`: any Hugging Face text model (GPT-2, Pythia, Llama, BERT/MiniLM);
* `models.transfo_xl.TransfoXLMemory`: the papers' Transformer-XL (wt103), our own code.

`build_memory(cfg)` picks one from the config's `lm`; the agents and the trainer see only this
interface. The state is explicit: `reset` sets the number of rows, `reset_rows` and `step` are the
only calls that change what is remembered, `peek` never changes anything, and moving the module
between devices (`.to()`) moves the remembered state with it.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from utils.errors import UserError


TRANSFO_XL_NAMES = ("transfo-xl-wt103", "transfo-xl/transfo-xl-wt103")  # short name, hub id


class Memory(nn.Module):
    """Per-env memory of input embeddings, read out as the LM's hidden state at the newest token.

    Attributes every implementation sets: `mem_len` (tokens remembered per env), `d_embed` (width
    of an input token) and `d_model` (width of the output).
    """

    mem_len: int
    d_embed: int
    d_model: int

    def token_embeddings(self) -> torch.Tensor:
        """The LM's input embedding of every token id, [vocab, d_embed] (frozen; no gradient)."""
        raise NotImplementedError

    def tokenizer(self):
        """An object with `decode([id])`, `convert_ids_to_tokens(id)`, `get_vocab()` and `len()`,
        or None when the LM has none available offline (words are then shown as ids)."""
        return None

    def reset(self, n_envs: int) -> None:
        """Forget everything and hold `n_envs` rows."""
        raise NotImplementedError

    def reset_rows(self, rows: torch.Tensor) -> None:
        """Forget what the rows marked True (bool [n_envs]) remember: their episodes start anew."""
        raise NotImplementedError

    def step(self, embeds: torch.Tensor, episode_start: torch.Tensor) -> torch.Tensor:
        """Forget rows with `episode_start`, append `embeds` [B, k, d_embed] (or [B, d_embed]),
        and return the hidden state at each row's newest token, [B, d_model]."""
        raise NotImplementedError

    def peek(self, embeds: torch.Tensor, episode_start: torch.Tensor) -> torch.Tensor:
        """What `step` would return, with no effect on the memory (bootstrapping final observations)."""
        raise NotImplementedError


def is_transfo_xl(lm: str) -> bool:
    """True when `lm` names the papers' Transformer-XL: its hub id or a directory holding it."""
    if lm in TRANSFO_XL_NAMES:
        return True
    config = os.path.join(os.path.expanduser(lm), "config.json")
    if os.path.isfile(config):
        import json

        try:
            with open(config, encoding="utf-8") as f:
                return json.load(f).get("model_type") == "transfo-xl"
        except (OSError, ValueError, AttributeError):
            return False
    return False


def build_memory(cfg: dict) -> Memory:
    """The memory implementation that `cfg["lm"]` names, frozen and in eval mode."""
    lm = cfg["lm"]
    if is_transfo_xl(lm):
        from models.transfo_xl import TransfoXLMemory, load_transfo_xl

        if cfg.get("lm_mode", "auto") not in ("auto", "causal"):
            raise UserError(f"lm_mode={cfg['lm_mode']!r} does not apply to Transformer-XL, which is causal; use 'auto'")
        reset = cfg.get("mem_reset", "auto")
        reset = "zero" if reset == "auto" else reset  # the original: an episode end zeroes the env's mems
        model = _in_precision(load_transfo_xl(lm, cfg.get("lm_layers")), cfg)
        return TransfoXLMemory(model, cfg["mem_len"], reset=reset)
    from models.lm_memory import LMMemory, load_frozen_lm

    if cfg.get("mem_reset", "auto") == "zero":
        raise UserError(f"mem_reset={cfg['mem_reset']!r} is only available for Transformer-XL; other LMs mask earlier episodes")
    model = _in_precision(load_frozen_lm(lm, cfg.get("lm_layers")), cfg)
    return LMMemory(model, cfg["mem_len"], cfg.get("lm_mode", "auto"), name=lm)


def _in_precision(model: nn.Module, cfg: dict) -> nn.Module:
    """precision=bf16: the frozen LM holds bfloat16 weights, so its memory (keys, values) is bf16 too.

    Reading the cached keys and values and the weights is most of a memory step; bf16 halves
    both. Agents still see fp32 outputs, and the FrozenHopfield keeps an fp32 vocabulary.
    """
    return model.to(torch.bfloat16) if cfg.get("precision", "fp32") == "bf16" else model


def load_lm_tokenizer(lm: str):
    """The tokenizer of `lm` (what defines SHELM's LM vocabulary): Transformer-XL's word vocabulary,
    or a Hugging Face tokenizer (local files first, the hub only when reachable)."""
    if is_transfo_xl(lm):
        from models.transfo_xl import load_transfo_xl_vocab

        return load_transfo_xl_vocab(lm)
    from models.lm_memory import load_tokenizer, resolve_lm_path
    from utils.hub import expect_text_model

    return load_tokenizer(resolve_lm_path(lm), "LM", expect=expect_text_model)
