"""Atomic checkpoint files that hold everything needed to resume a run exactly."""

from __future__ import annotations

import io
import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.errors import UserError

# 2: the config may lack keys added since (they take their defaults); best over a full window.
# 3: agents are compositions (encoder, memory, skip, heads): their parameters have new names.
FORMAT = 3
REQUIRED = ("format", "config", "agent", "optimizer", "step")
IDENTITY_KEYS = ("env", "model", "seed")  # every checkpoint's config has had these
TMP_GLOB = ".ckpt_*.pt.*.tmp"  # what save_checkpoint writes before its rename


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file.

    A full disk or a read-only folder becomes a one-line `UserError` naming the path; the previous
    checkpoint of that name is left as it was.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise UserError(f"cannot write checkpoint {path}: {err.strerror or err}") from None
    try:
        # serialise in memory first: torch.save reports a failed file write as an opaque RuntimeError
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, **payload}, buffer)
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write checkpoint {path}: {err.strerror or err}; the previous one is kept") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that a hard kill (SIGKILL, power loss) cut short."""
    stale = sorted(Path(run_dir).glob(TMP_GLOB))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def resolve_checkpoint_path(path: str | Path, prefer: str = "ckpt_last.pt") -> Path:
    """A run directory or a checkpoint file -> the checkpoint file (`prefer`, else the other one)."""
    path = Path(path)
    if path.is_dir():
        for name in (prefer, "ckpt_last.pt", "ckpt_best.pt"):
            if (path / name).is_file():
                return path / name
        raise UserError(f"no checkpoint (ckpt_last.pt / ckpt_best.pt) in {path}")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return path


def _numpy_array_globals() -> list:
    """What unpickling a numeric numpy array needs (checkpoints hold the numpy RNG state and the
    reward normaliser's returns): its reconstructor under numpy 2's and numpy 1's module names,
    `ndarray` and `dtype`. None of them runs code; an object array would need more and is refused."""
    import numpy

    reconstruct = numpy._core.multiarray._reconstruct if hasattr(numpy, "_core") else numpy.core.multiarray._reconstruct
    return [(reconstruct, "numpy._core.multiarray._reconstruct"), (reconstruct, "numpy.core.multiarray._reconstruct"),
            numpy.ndarray, numpy.dtype, *_numpy_dtype_classes()]


def _numpy_dtype_classes() -> list:
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles some dtypes by their class
    if dtypes is None:
        return []
    names = ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "UInt32DType", "UInt8DType", "BoolDType")
    return [getattr(dtypes, name) for name in names if hasattr(dtypes, name)]


def read_weights_only(path: str | Path, what: str = "checkpoint", allow: list | tuple = ()) -> Any:
    """`torch.load` that can only build tensors, containers, numbers, strings and the `allow`ed types.

    A file is data, never a program: a pickle that would call anything else (`os.system`, a class
    of some package) is refused before it runs, with one line naming what it wanted to call.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        names = _unsafe_globals(path, err)
        if names:
            raise UserError(f"{what} {path} refers to {', '.join(names)}, which a {what} never holds "
                            "(loading it could run code): refused") from None
        raise UserError(f"{what} {path} is corrupt or unreadable ({type(err).__name__})") from None
    except Exception as err:  # torch raises many kinds for a damaged file
        raise UserError(f"{what} {path} is corrupt or unreadable ({type(err).__name__})") from None


def _unsafe_globals(path: Path, err: Exception) -> list[str]:
    """The globals a refused pickle names (read without executing it); [] when it names none: damage."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy-format or damaged file: the error message names the global, if any
        names = re.findall(r"GLOBAL ([\w.]+)", str(err))
    return sorted(set(names))[:3]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint of any format this version knows, upgraded to the current one.

    Loaded weights-only: a crafted file cannot execute anything (see `read_weights_only`).
    """
    path = Path(path)
    payload = read_weights_only(path, "checkpoint", _numpy_array_globals())
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED):
        raise UserError(f"checkpoint {path} is not a checkpoint of this project")
    if not isinstance(payload["format"], int) or not 1 <= payload["format"] <= FORMAT:
        raise UserError(f"checkpoint {path} has format {payload['format']!r}; this version reads 1 to {FORMAT}")
    if not isinstance(payload["config"], dict):
        raise UserError(f"checkpoint {path} holds no config")
    payload["config"] = upgrade_config(payload["config"], str(path))
    if payload["format"] == 1:  # its best could come from 2 episodes; choose again over full windows
        payload["best_mean_return"] = -float("inf")
    if isinstance(payload["agent"], dict):
        from models.registry import upgrade_agent_state

        payload["agent"] = upgrade_agent_state(payload["config"]["model"], payload["agent"], payload["format"])
    payload["format"] = FORMAT
    return payload


def upgrade_config(saved: dict[str, Any], where: str) -> dict[str, Any]:
    """A saved config checked against today's schema; keys added since take their defaults.

    Configs gain keys over time, so an older run resumes and evaluates with the behaviour it had
    (each new key's default is the old behaviour). A value that is no longer valid, or a key that no
    longer exists, is a one-line error naming the checkpoint.
    """
    from utils import config as config_lib

    for name in IDENTITY_KEYS:  # no default can stand in for what the run was
        if name not in saved:
            raise UserError(f"checkpoint {where}: config lacks key '{name}'")
    unknown = sorted(set(saved) - set(config_lib.SCHEMA))
    if unknown:
        raise UserError(f"checkpoint {where}: its config has keys this version does not know: {', '.join(unknown)}")
    cfg = config_lib.defaults()
    try:
        cfg.update({name: config_lib.coerce(name, value) for name, value in saved.items()})
    except UserError as err:
        raise UserError(f"checkpoint {where}: {err}") from None
    return cfg


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
