"""What the benchmarks' ``--smoke`` modes share: tiny local models and a one-line note format.

A smoke run checks that a benchmark still runs against today's code (a renamed attribute or a
changed signature breaks it), not how fast anything is. So its models are tiny and built here from
the test helpers (``tests/tiny_lms.py``, ``tests/tiny_clip.py``), never downloaded, and its
results go to a temporary directory, never over ``bench/results/``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT), str(ROOT / "tests")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

# The LM memory of a smoke run: short enough for the tiny GPT-2's 64 positions.
MEM_LEN = 16
# Trainer settings that make one PPO update take a fraction of a second.
TINY_TRAINER = {"n_envs": 2, "n_rollout_steps": 8, "n_epochs": 1, "n_batches": 2}


def note(message: str) -> None:
    """One line that a smoke run printed on purpose (e.g. a comparison it skipped)."""
    print(f"smoke: {message}", flush=True)


def installed(module: str) -> bool:
    """Whether an optional package is importable, without importing it."""
    return importlib.util.find_spec(module) is not None


def tiny_lm(directory: Path) -> str:
    """A 1-layer GPT-2 (32 wide, 64 positions) with a tiny byte-level BPE tokenizer.

    The tokenizer has real whole words, so SHELM's semantic database works with it; HELM only
    needs the token embeddings.
    """
    import torch
    from tiny_clip import make_gpt2_tokenizer
    from transformers import GPT2Config, GPT2Model

    directory = Path(directory)
    tokenizer = make_gpt2_tokenizer(directory)
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=4, n_positions=64, vocab_size=len(tokenizer),
                        bos_token_id=None, eos_token_id=None)
    GPT2Model(config).save_pretrained(str(directory))
    return str(directory)


def tiny_clip(directory: Path) -> str:
    """The tests' tiny CLIP (32 px, 16-d projection) with its tokenizer."""
    from tiny_clip import save_tiny_clip

    return str(save_tiny_clip(directory))


def tiny_transfo_xl(directory: Path) -> str:
    """The committed tiny random Transformer-XL of the tests, in the hub's file layout."""
    from tiny_lms import tiny_transfo_xl as save

    return save(str(directory))


def tiny_neox(directory: Path) -> str:
    """A 2-layer GPT-NeoX (Pythia's architecture), 32 wide."""
    from tiny_lms import tiny_neox as save

    return save(str(directory))
