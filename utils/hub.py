"""One way to load Hugging Face models and tokenizers: local first, never waiting on a dead network.

`load_pretrained` is used for every LM, CLIP model and tokenizer. It turns the usual mistakes (a
mistyped path, an uncached hub id on an offline machine, a directory holding another kind of model)
into a one-line `UserError` before any weights are read, and refuses a checkpoint whose weights do
not fit the architecture instead of handing back a half randomly initialised model.

Standard library only at import time (huggingface_hub and transformers are imported when needed),
so that code which also runs outside the project's environment (models/transfo_xl.py in a side
virtualenv) can use `hub_offline` and `hub_reachable`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from utils.errors import UserError

CONFIG_FILE = "config.json"


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


def looks_like_path(name: str) -> bool:
    """Is `name` meant as a local path rather than a hub id ("name" or "org/name")?

    "runs/my_lm" with an existing local "runs/" is a path with a typo, not a hub id.
    """
    if os.path.exists(os.path.expanduser(name)) or name.startswith(("/", "./", "../", "~")) or name in (".", ".."):
        return True
    if name.count("/") > 1 or name.endswith("/") or "\\" in name:
        return True
    head = name.split("/", 1)[0]
    return "/" in name and os.path.isdir(head)


# -- what the paper configs download --------------------------------------------------------------

# The hub models the paper configs name, and their download size (the README's offline table).
DOWNLOAD_SIZES = {
    "transfo-xl/transfo-xl-wt103": "1.1 GB",  # every paper HELM, HELMv2 and SHELM config
    "openai/clip-vit-base-patch16": "600 MB",  # SHELM, and the default clip_model
    "openai/clip-vit-base-patch32": "600 MB",  # HELMv2's configs
}
HUB_ALIASES = {"transfo-xl-wt103": "transfo-xl/transfo-xl-wt103"}


def download_hint(name: str) -> str:
    """How to get a hub model onto a machine that cannot download it: the command and its size."""
    hub_id = HUB_ALIASES.get(name, name)
    size = f" ({DOWNLOAD_SIZES[hub_id]})" if hub_id in DOWNLOAD_SIZES else ""
    return (f"download it where the hub is reachable, `huggingface-cli download {hub_id}`{size}, and copy that "
            "machine's ~/.cache/huggingface here (or save it to a folder and pass the folder)")


# -- kinds of model -------------------------------------------------------------------------------


def expect_clip(config: dict[str, Any]) -> str | None:
    """Why a config.json is not a CLIP model (None when it is one)."""
    kind = config.get("model_type")
    return None if kind == "clip" else f"a {kind} model, not a CLIP model (config.json model_type {kind!r})"


def expect_text_model(config: dict[str, Any]) -> str | None:
    """Why a config.json is not a text model usable as a language model (None when it may be one)."""
    kind = str(config.get("model_type"))
    if "vision_config" in config or "vision" in kind:
        return f"a {kind} model (images), not a language model (config.json model_type {kind!r})"
    return None


# -- loading ----------------------------------------------------------------------------------------


class _NotCached(Exception):
    """A hub id whose files are not (all) in the local cache."""


def load_pretrained(
    loader: Any,
    name: str,
    what: str,
    expect: Callable[[dict[str, Any]], str | None] | None = None,
    model: bool = True,
    hint: str = "pass a local directory",
) -> Any:
    """`loader.from_pretrained` (a transformers model or tokenizer class) on a local directory or hub id.

    * A path (see `looks_like_path`) must be an existing directory; it loads with local_files_only.
    * A hub id loads from the local cache first; if it is not cached, the hub is tried only when
      it is online and reachable, otherwise this fails at once (no retries).
    * `expect(config) -> reason or None` checks config.json before any weights are read (for
      models config.json is required; for tokenizers it is checked when there is one).
    * Models must get every weight from the checkpoint (a base model's unused pooler aside): the
      models loaded here are frozen, so a randomly initialised part would never be trained.

    `what` names the thing in messages ("CLIP model", "LM", "LM tokenizer"); `hint` ends the
    message of an uncached hub id. Every failure is a one-line `UserError`.
    """
    local = looks_like_path(name)
    source = os.path.expanduser(name) if local else name
    if local:
        if not os.path.exists(source):
            raise UserError(f"{what} path {name!r} does not exist")
        if not os.path.isdir(source):
            raise UserError(f"{what} path {name!r} is a file; expected a directory saved with save_pretrained")
        if model and not os.path.isfile(os.path.join(source, CONFIG_FILE)):
            raise UserError(_no_config(what, name))
    else:
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(name)
        except ValueError:
            raise UserError(f"{what} {name!r} is neither an existing directory nor a valid hub id") from None
    with quiet_hub():
        try:
            return _load(loader, source, name, what, expect, model, offline=True)
        except _NotCached:
            pass
        if hub_offline():
            why = "the hub is offline (HF_HUB_OFFLINE)"
        elif not hub_reachable():
            why = "the hub is unreachable"
        else:
            return _load(loader, source, name, what, expect, model, offline=False)
    raise UserError(f"{what} {name!r} is not in the local cache and {why}: {download_hint(name)}; or {hint}")


def _load(loader: Any, source: str, name: str, what: str, expect, model: bool, offline: bool) -> Any:
    """One attempt: the config check, then `from_pretrained`. Raises _NotCached for a hub id missing from the cache."""
    hub_id = not os.path.isdir(source)
    if expect is not None:
        config = _read_config(source, name, what, offline, required=model)
        reason = expect(config) if config is not None else None
        if reason:
            raise UserError(f"{what} {name!r} is {reason}")
    kwargs = {"local_files_only": offline}
    if model:
        kwargs["output_loading_info"] = True
    try:
        loaded = loader.from_pretrained(source, **kwargs)
    except OSError as err:
        if hub_id and offline:
            raise _NotCached from None
        raise UserError(f"cannot load {what} from {name!r}: {first_line(err)}") from None
    except RuntimeError as err:
        if "mismatched" in str(err):
            raise UserError(f"cannot load {what} from {name!r}: its weights do not have the shapes its {CONFIG_FILE} gives") from None
        raise UserError(f"cannot load {what} from {name!r}: {first_line(err)}") from None
    except Exception as err:  # corrupt configs and weight files raise many kinds of errors
        raise UserError(f"cannot load {what} from {name!r}: {type(err).__name__}: {first_line(err)}") from None
    if not model:
        _check_tokenizer(loaded, name, what)
        return loaded
    loaded, info = loaded
    _check_weights(loaded, info, name, what)
    return loaded


def _read_config(source: str, name: str, what: str, offline: bool, required: bool) -> dict[str, Any] | None:
    if os.path.isdir(source):
        path = os.path.join(source, CONFIG_FILE)
        if not os.path.isfile(path):
            if required:
                raise UserError(_no_config(what, name))
            return None
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(source, CONFIG_FILE, local_files_only=offline)
        except Exception as err:  # not cached, no such repo, no such file: huggingface_hub's many errors
            if not required:
                return None
            if offline:
                raise _NotCached from None
            raise UserError(f"cannot load {what} {name!r} from the hub: {first_line(err)}") from None
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the {what}'s {path}: {first_line(err)}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise UserError(f"{what} {name!r}: {CONFIG_FILE} has no model_type, so it is not a transformers model")
    return config


def _no_config(what: str, name: str) -> str:
    return f"{what} directory {name!r} has no {CONFIG_FILE}, so it holds no model saved with save_pretrained"


def _check_weights(model: Any, info: dict[str, Any], name: str, what: str) -> None:
    """Refuse a model some of whose weights were newly initialised rather than read from the checkpoint."""
    params = dict(model.named_parameters())
    missing = sorted(key for key in info.get("missing_keys", ()) if key in params and "pooler" not in key)
    if missing:
        share = sum(params[key].numel() for key in missing) / max(sum(p.numel() for p in params.values()), 1)
        raise UserError(
            f"{what} {name!r}: {len(missing)} weight tensors ({share:.0%} of the parameters, e.g. {missing[0]!r}) are "
            f"not in its checkpoint, so they would be random; is it a {type(model).__name__} checkpoint?"
        )


def _check_tokenizer(tokenizer: Any, name: str, what: str) -> None:
    """transformers builds an empty tokenizer from a model directory without vocabulary files."""
    try:
        size = len(tokenizer.get_vocab())
    except Exception:  # a tokenizer without get_vocab: nothing to check
        return
    specials = len(set(getattr(tokenizer, "all_special_tokens", []) or []))
    if size <= specials:
        raise UserError(f"{what} {name!r} has no vocabulary (no tokenizer files such as tokenizer.json or vocab.txt)")


@contextlib.contextmanager
def quiet_hub() -> Iterator[None]:
    """No progress bars, load reports or retry warnings from transformers / huggingface_hub while loading."""
    import huggingface_hub.utils as hub_utils
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as tf_logging

    saved = (tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled(),
             hub_logging.get_verbosity(), hub_utils.are_progress_bars_disabled())
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    hub_logging.set_verbosity_error()
    hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        tf_logging.set_verbosity(saved[0])
        if saved[1]:
            tf_logging.enable_progress_bar()
        hub_logging.set_verbosity(saved[2])
        if not saved[3]:
            hub_utils.enable_progress_bars()
