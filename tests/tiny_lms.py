"""Tiny random language models saved to disk, so tests load them like real ones (no downloads)."""

from __future__ import annotations

import os

import torch
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    GPT2Config,
    GPT2Model,
    GPTNeoXConfig,
    GPTNeoXModel,
    LlamaConfig,
    LlamaModel,
)


def _save(model, path: str) -> str:
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    return str(path)


def tiny_gpt2(path: str, n_layer: int = 2, n_positions: int = 64, vocab_size: int = 100, seed: int = 0) -> str:
    """GPT-2 (absolute positions) with 32-dim states; returns the directory."""
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=n_layer,
        n_embd=32,
        n_head=4,
        n_positions=n_positions,
        vocab_size=vocab_size,
        bos_token_id=None,  # the defaults (50256) lie outside a tiny vocabulary
        eos_token_id=None,
    )
    return _save(GPT2Model(config), path)


def tiny_llama(path: str, n_layer: int = 2, vocab_size: int = 100, seed: int = 0) -> str:
    """Llama-style model (RoPE, grouped-query attention) with 32-dim states; returns the directory."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layer,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=128,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return _save(LlamaModel(config), path)


def tiny_neox(path: str, n_layer: int = 2, vocab_size: int = 100, seed: int = 0, max_positions: int = 128) -> str:
    """GPT-NeoX (Pythia's architecture: partial rotary, parallel residual) with 32-dim states."""
    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layer,
        num_attention_heads=4,
        rotary_pct=0.25,
        use_parallel_residual=True,
        vocab_size=vocab_size,
        max_position_embeddings=max_positions,
        bos_token_id=None,
        eos_token_id=None,
    )
    return _save(GPTNeoXModel(config), path)


def tiny_bert(
    path: str,
    n_layer: int = 2,
    max_position_embeddings: int = 64,
    vocab_size: int = 100,
    seed: int = 0,
    with_tokenizer: bool = True,
) -> str:
    """Encoder-only BERT with 32-dim states (and a matching word-piece tokenizer); returns the directory."""
    torch.manual_seed(seed)
    config = BertConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layer,
        num_attention_heads=4,
        max_position_embeddings=max_position_embeddings,
        vocab_size=vocab_size,
    )
    _save(BertModel(config), path)
    if with_tokenizer:
        special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        words = [f"w{i}" for i in range(vocab_size - len(special))]
        vocab_file = os.path.join(path, "vocab.txt")
        with open(vocab_file, "w") as f:
            f.write("\n".join(special + words) + "\n")
        BertTokenizer(vocab_file).save_pretrained(path)
    return str(path)


# -- Transformer-XL (our own implementation; transformers 5 has none) ------------------------------

TRXL_FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "trxl_tiny.pt")
# Whole words first, so SHELM's vocabulary intersection with the tiny CLIP tokenizer is not empty.
TRXL_WORDS = ["<eos>", "<unk>", "the", "door", "key", "red", "blue", "ball", "cat", "dog", "box", "lamp", "grey"]


def trxl_words(n: int) -> list[str]:
    return TRXL_WORDS + [f"w{i}" for i in range(n - len(TRXL_WORDS))]


def make_vocab_pickle(path, words: list[str]) -> None:
    """A vocab.pkl of plain data only (builtins and collections), the simplest file load_vocab reads.

    Not what real files are: the hub's vocab.pkl is a legacy torch.save stream, and transformers'
    save_pretrained pickles the tokenizer's __dict__ with regex, sacremoses, tokenizers and
    transformers objects (tests/fixtures/trxl_vocab_*.pkl, made by tests/make_trxl_vocab_fixtures.py).
    """
    import collections
    import pickle

    state = {
        "special": ["<eos>"],
        "min_freq": 0,
        "max_size": None,
        "lower_case": False,
        "delimiter": None,
        "never_split": ["<eos>", "<unk>"],
        "counter": collections.Counter({w: len(words) - i for i, w in enumerate(words)}),
        "idx2sym": list(words),
        "sym2idx": collections.OrderedDict((w, i) for i, w in enumerate(words)),
        "unk_idx": words.index("<unk>"),
        "extras": collections.defaultdict(list, {"x": [1, 2]}),
        "flags": {1, 2, frozenset({3})},
    }
    with open(path, "wb") as f:
        pickle.dump(state, f)


def tiny_transfo_xl(path: str) -> str:
    """The committed tiny random Transformer-XL (hub file layout) with a word vocabulary; returns the directory."""
    import json

    recorded = torch.load(TRXL_FIXTURE, weights_only=True)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(recorded["config"], f)
    torch.save(recorded["state_dict"], os.path.join(path, "pytorch_model.bin"))
    make_vocab_pickle(os.path.join(path, "vocab.pkl"), trxl_words(recorded["config"]["vocab_size"]))
    return str(path)
