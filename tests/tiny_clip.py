"""The tests' tiny tokenizers and tiny CLIP: they live in `models.tiny_clip` (the offline demo uses them too)."""

import sys
from pathlib import Path

# Make "models" and "utils" importable however pytest is started.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from models.tiny_clip import *  # noqa: E402,F401,F403
from models.tiny_clip import CLIP_WORDS, GPT2_SPACE_WORDS, WORDPIECE_VOCAB  # noqa: E402,F401
