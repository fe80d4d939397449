"""Tiny hand-made tokenizers and a tiny random CLIP model: for offline tests, and for trying
HELMv2 and SHELM end to end without downloads (`demo_clip.py`; a pipeline demo, not a model that
sees anything: its weights are random).

Three tokenizer families with different word markers:
  * CLIP BPE (byte-level, a word ends with "</w>"),
  * GPT-2 byte-level BPE (a word after a space starts with "Ġ"),
  * BERT WordPiece (continuation pieces start with "##").
Each is written as small vocabulary files to a directory and loaded from there, like a real one.
The word lists below are chosen so that the expected vocabulary intersections are known by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import pre_tokenizers
from transformers import BertTokenizer, CLIPConfig, CLIPModel, CLIPTokenizer, GPT2Tokenizer

EOW = "</w>"
SPACE = "Ġ"

# CLIP: words that end with "</w>" (whole words) and pieces that never end a word.
CLIP_WORDS = [
    "a", "of", "the", "red", "green", "blue", "key", "door", "ball", "box", "cat", "dog", "lamp",
    "render", "screenshot", "screen", "showing", "many", "biome", "containing", "full", "ing",
    "grey", "café",
]
CLIP_PIECES = ["purple", "wall"]

# GPT-2: "Ġ" tokens (whole words) listed in id order; capitalised variants deliberately come first
# so that "smallest id" alone would pick the wrong one. Plain tokens continue a word.
GPT2_SPACE_WORDS = [
    "Cat", "cat", "dog", "Box", "RED", "red", "key", "wall", "lamp", "café", "purple", "a", "grey",
    "Ball", "ball", "!", "3",
]
GPT2_PLAIN = ["door", "key", "ing"]

# BERT WordPiece vocabulary, one token per line in id order.
WORDPIECE_VOCAB = [
    "[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "!", ".", "'", "3", "a", "x",
    "cat", "dog", "red", "key", "door", "##ing", "##lamp", "wall", "ball", "café", "purple",
    "grey", "green", "##s", "don", "blue", "the", "of", "##cat",
]


def _to_byte_level(text: str) -> str:
    """Spell text in the byte-level alphabet (utf-8 bytes -> printable characters)."""
    alphabet = _byte_alphabet()
    return "".join(alphabet[b] for b in text.encode("utf-8"))


def _byte_alphabet() -> list[str]:
    """The 256 byte-level characters in byte order (same table as GPT-2/CLIP)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, shift = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    return [table[b] for b in range(256)]


def _add(vocab: dict[str, int], token: str) -> None:
    if token not in vocab:
        vocab[token] = len(vocab)


def write_clip_tokenizer_files(directory: str | Path) -> Path:
    """vocab.json + merges.txt of a CLIP-style BPE. Merges build words left to right, so the
    intermediate tokens ("c", "ca") are pieces without "</w>" and only full words end a word."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for char in alphabet:
        _add(vocab, char)
    for char in alphabet:
        _add(vocab, char + EOW)
    merges: list[str] = []
    for word, end in [(w, True) for w in CLIP_WORDS] + [(p, False) for p in CLIP_PIECES]:
        symbols = list(_to_byte_level(word))
        if end:
            symbols[-1] += EOW
        current = symbols[0]
        for symbol in symbols[1:]:
            merge = f"{current} {symbol}"
            current += symbol
            if merge not in merges:
                merges.append(merge)
            _add(vocab, current)
    _add(vocab, "<|startoftext|>")
    _add(vocab, "<|endoftext|>")
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return directory


def make_clip_tokenizer(directory: str | Path) -> CLIPTokenizer:
    """A tiny CLIP tokenizer loaded from vocabulary files written to ``directory``."""
    write_clip_tokenizer_files(directory)
    return CLIPTokenizer.from_pretrained(str(directory))


def make_gpt2_tokenizer(directory: str | Path) -> GPT2Tokenizer:
    """A tiny GPT-2 byte-level BPE. Merges build words right to left, so intermediates ("at")
    carry no "Ġ" and only the listed words are "Ġ" tokens."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for char in _byte_alphabet():
        _add(vocab, char)
    merges: list[str] = []
    words = [_to_byte_level(" " + w) for w in GPT2_SPACE_WORDS] + [_to_byte_level(w) for w in GPT2_PLAIN]
    for word in words:
        current = word[-1]
        for char in reversed(word[:-1]):
            merge = f"{char} {current}"
            current = char + current
            if merge not in merges:
                merges.append(merge)
            _add(vocab, current)
    _add(vocab, "<|endoftext|>")
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return GPT2Tokenizer.from_pretrained(str(directory))


def make_wordpiece_tokenizer(directory: str | Path) -> BertTokenizer:
    """A tiny BERT WordPiece tokenizer from a vocab.txt written to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(WORDPIECE_VOCAB) + "\n", encoding="utf-8")
    return BertTokenizer.from_pretrained(str(directory))


def tiny_clip_config(tokenizer: CLIPTokenizer | None = None, image_size: int = 32, patch_size: int = 8) -> CLIPConfig:
    """The tiny CLIP of stack.md 5, with the text special ids matched to ``tokenizer`` so the
    text tower pools at the real end-of-text token."""
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                vocab_size=1000, max_position_embeddings=32)
    if tokenizer is not None:
        assert len(tokenizer) <= 1000
        text.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=patch_size)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def make_tiny_clip(tokenizer: CLIPTokenizer | None = None, seed: int = 0, **config_kwargs) -> CLIPModel:
    """A randomly initialised tiny CLIPModel (deterministic for a given seed), in eval mode."""
    torch.manual_seed(seed)
    return CLIPModel(tiny_clip_config(tokenizer, **config_kwargs)).eval()


def save_tiny_clip(directory: str | Path, seed: int = 0) -> Path:
    """Save a tiny CLIP model and its tokenizer with save_pretrained, like a hub snapshot."""
    directory = Path(directory)
    tokenizer = make_clip_tokenizer(directory)
    make_tiny_clip(tokenizer, seed=seed).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def save_wordpiece_tokenizer(directory: str | Path) -> Path:
    """Save the tiny WordPiece tokenizer so AutoTokenizer can load it (a stand-in LM tokenizer)."""
    directory = Path(directory)
    make_wordpiece_tokenizer(directory).save_pretrained(str(directory))
    return directory
