"""Loading a frozen pretrained LM as a memory (HELM, HELMv2, SHELM), with its vocabulary.

Two implementations of the memory exist:

* `models.lm_memory.LMMemory`: any Hugging Face text model (GPT-2, Pythia, Llama, BERT/MiniLM);
* `models.transfo_xl.TransfoXLMemory`: the papers' Transformer-XL (wt103), our own code.

`load_frozen_memory(...)` picks one from the config's `lm` and returns it with the LM's
`Vocabulary`; the agents see only the memory interface (`models.memory`) and the vocabulary.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from models.memory import Memory
from models.vocabulary import Vocabulary
from utils.errors import UserError

TRANSFO_XL_NAMES = ("transfo-xl-wt103", "transfo-xl/transfo-xl-wt103")  # short name, hub id


def is_transfo_xl(lm: str) -> bool:
    """True when `lm` names the papers' Transformer-XL: its hub id or a directory holding it."""
    if lm in TRANSFO_XL_NAMES:
        return True
    config = os.path.join(os.path.expanduser(lm), "config.json")
    if os.path.isfile(config):
        try:
            with open(config, encoding="utf-8") as f:
                return json.load(f).get("model_type") == "transfo-xl"
        except (OSError, ValueError, AttributeError):
            return False
    return False


def load_frozen_memory(lm: str, mem_len: int, lm_mode: str = "auto", lm_layers: int | None = None,
                       mem_reset: str = "auto", precision: str = "fp32", static: bool = False,
                       tokens_per_step: int = 1) -> tuple[Memory, Vocabulary]:
    """The memory that `lm` names, frozen and in eval mode, and the LM's vocabulary.

    `static=True` gives the variant whose step has fixed shapes and no host syncs, for a CUDA
    graph (`tokens_per_step` then fixes the tokens each step appends).
    """
    if is_transfo_xl(lm):
        from models.transfo_xl import TransfoXLMemory, load_transfo_xl, load_vocab

        if lm_mode not in ("auto", "causal"):
            raise UserError(f"lm_mode={lm_mode!r} does not apply to Transformer-XL, which is causal; use 'auto'")
        reset = "zero" if mem_reset == "auto" else mem_reset  # the original: an episode end zeroes the env's mems
        model = _in_precision(load_transfo_xl(lm, lm_layers), precision)
        vocab_file = model.vocab_file
        vocabulary = Vocabulary(lm, model.word_emb.cached_table, (lambda: load_vocab(vocab_file)) if vocab_file else None)
        return TransfoXLMemory(model, mem_len, reset=reset, static=static), vocabulary
    from models.lm_memory import LMMemory, load_frozen_lm, load_tokenizer_offline

    if mem_reset == "zero":
        raise UserError(f"mem_reset={mem_reset!r} is only available for Transformer-XL; other LMs mask earlier episodes")
    model = _in_precision(load_frozen_lm(lm, lm_layers), precision)
    vocabulary = Vocabulary(lm, lambda: model.get_input_embeddings().weight.detach(), lambda: load_tokenizer_offline(lm))
    if not static:
        return LMMemory(model, mem_len, lm_mode, name=lm), vocabulary
    from models.lm_memory import is_encoder_only
    from models.static_lm_memory import StaticLMMemory

    if lm_mode == "bidirectional" or (lm_mode == "auto" and is_encoder_only(model)):
        raise UserError(f"cuda_graph needs a causal LM memory, and {lm!r} runs bidirectionally (lm_mode={lm_mode!r}), "
                        "re-encoding its window every step: set lm_mode=causal or cuda_graph=false")
    return StaticLMMemory(model, mem_len, tokens_per_step, name=lm), vocabulary


def _in_precision(model: nn.Module, precision: str) -> nn.Module:
    """precision=bf16: the frozen LM holds bfloat16 weights, so its memory (keys, values) is bf16 too.

    Reading the cached keys and values and the weights is most of a memory step; bf16 halves
    both. Agents still see fp32 outputs, and the FrozenHopfield keeps an fp32 vocabulary.
    """
    return model.to(torch.bfloat16) if precision == "bf16" else model


def load_lm_tokenizer(lm: str):
    """The tokenizer of `lm` (what defines SHELM's LM vocabulary): Transformer-XL's word vocabulary,
    or a Hugging Face tokenizer (local files first, the hub only when reachable)."""
    if is_transfo_xl(lm):
        from models.transfo_xl import load_transfo_xl_vocab

        return load_transfo_xl_vocab(lm)
    from models.lm_memory import load_tokenizer, resolve_lm_path
    from utils.hub import expect_text_model

    return load_tokenizer(resolve_lm_path(lm), "LM", expect=expect_text_model)


def estimate_memory_bytes(lm: str, mem_len: int, n_envs: int, precision: str = "fp32") -> int | None:
    """What a frozen LM memory holds on its device: the LM's weights plus every env's keys and
    values (each layer, the window and its slack). None when the LM's config cannot be read offline.

    Built on the meta device from the config alone: no weights are loaded or downloaded.
    """
    bytes_per = 2 if precision == "bf16" else 4
    slots = mem_len + max(1, mem_len // 4)
    try:
        if is_transfo_xl(lm):
            from models.transfo_xl import TrXLConfig, _locate

            with open(_locate(lm)[0], encoding="utf-8") as f:
                config = TrXLConfig.from_dict(json.load(f))
            params = config.n_token * config.d_embed + config.n_layer * 12 * config.d_model**2  # rough, embeddings dominate
            kv = config.n_layer * 2 * config.n_head * config.d_head
        else:
            from transformers import AutoConfig, AutoModel

            from models.lm_memory import resolve_lm_path

            config = AutoConfig.from_pretrained(resolve_lm_path(lm), local_files_only=True)
            with torch.device("meta"):
                params = sum(p.numel() for p in AutoModel.from_config(config).parameters())
            heads = getattr(config, "num_attention_heads", 1)
            kv_heads = getattr(config, "num_key_value_heads", None) or heads
            kv = config.num_hidden_layers * 2 * kv_heads * (config.hidden_size // heads)
    except Exception:  # an uncached hub id, an odd config: no estimate
        return None
    return (params + n_envs * kv * slots) * bytes_per

