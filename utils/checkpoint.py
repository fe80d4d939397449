"""Atomic checkpoint files that hold everything needed to resume a run exactly."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.errors import UserError

FORMAT = 1
REQUIRED = ("format", "config", "agent", "optimizer", "step")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"format": FORMAT, **payload}, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolve_checkpoint_path(path: str | Path, prefer: str = "ckpt_last.pt") -> Path:
    """A run directory or a checkpoint file -> the checkpoint file."""
    path = Path(path)
    if path.is_dir():
        for name in (prefer, "ckpt_last.pt", "ckpt_best.pt"):
            if (path / name).is_file():
                return path / name
        raise UserError(f"no checkpoint (ckpt_last.pt / ckpt_best.pt) in {path}")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many kinds for a damaged file
        raise UserError(f"checkpoint {path} is corrupt or unreadable ({type(err).__name__})") from None
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED):
        raise UserError(f"checkpoint {path} is not a checkpoint of this project")
    if payload["format"] != FORMAT:
        raise UserError(f"checkpoint {path} has format {payload['format']}, this version reads {FORMAT}")
    return payload


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
