"""Small shared helpers for loading from the Hugging Face hub without waiting on a dead network.

Standard library only at import time (huggingface_hub is imported when needed), so that code which
also runs outside the project's environment (models/transfo_xl.py in a side virtualenv) can use it.
"""

from __future__ import annotations

import os
import socket
import urllib.parse


def hub_offline() -> bool:
    """True when the user switched the hub off: HF_HUB_OFFLINE now, or when huggingface_hub was imported."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    import huggingface_hub

    if hasattr(huggingface_hub, "is_offline_mode"):
        return bool(huggingface_hub.is_offline_mode())
    from huggingface_hub import constants

    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Does the hub answer at all? (huggingface_hub otherwise retries for ~30 s before failing.)"""
    from huggingface_hub import constants

    url = urllib.parse.urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def first_line(err: BaseException) -> str:
    """An exception's message cut to one line (the error's type name when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
