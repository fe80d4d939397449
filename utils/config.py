"""Experiment configuration: one flat dict of typed keys, from JSON files and ``--var`` overrides.

Every key has a declared type and default here, so that a typo or a wrong type is an error that
names the key, instead of a setting that is silently ignored.
"""

from __future__ import annotations

import difflib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.errors import UserError


@dataclass(frozen=True)
class Key:
    default: Any
    type: type
    optional: bool = False  # may be null
    choices: tuple[str, ...] | None = None
    help: str = ""


DECAYS = ("none", "linear", "exponential")

SCHEMA: dict[str, Key] = {
    # experiment
    "env": Key("MiniGrid-KeyCorridorS3R1-v0", str, help="environment id"),
    "model": Key("HELM", str, help="agent: CNN-PPO, MLP-PPO, Impala-PPO (= LSTM-PPO), GRU-PPO, TrXL-PPO, HELM, HELMv2, SHELM"),
    "seed": Key(None, int, optional=True, help="null draws a seed and records it"),
    "device": Key("auto", str, choices=("auto", "cpu", "cuda"), help="auto: cuda if available"),
    "torch_threads": Key(None, int, optional=True,
                         help="CPU threads for torch; null: the cores that are idle now (at least 1)"),
    "save_ckpt": Key(True, bool, help="write ckpt_best.pt and ckpt_last.pt (true/false; 1/0 accepted)"),
    "ckpt_last_every_s": Key(30.0, float, help="refresh ckpt_last.pt when this much work would be unsaved "
                                                "(a hard kill loses at most this or one update)"),
    "best_min_episodes": Key(100, int, help="ckpt_best.pt only from a mean over at least this many episodes (<= 100)"),
    "source": Key("", str, help="where the numbers of this config come from (documentation only)"),
    "precision": Key("fp32", str, choices=("fp32", "bf16"),
                     help="bf16: the CNN runs under bfloat16 autocast (fp32 weights and gradients) and the frozen "
                          "LM holds bfloat16 weights; fp32: the papers' full precision"),
    "cuda_graph": Key(False, bool, help="capture each rollout step (encoder where it can, memory, heads, sampling) "
                                        "in one CUDA graph and replay it; needs device=cuda (see docs/design.md)"),
    # environment
    "n_envs": Key(16, int, help="parallel envs (all step together)"),
    "vec_env": Key("auto", str, choices=("auto", "sync", "async", "envpool"),
                   help="auto: envpool where EnvPool implements the id and is installed, else sync (config.json records "
                        "what ran); envpool: MiniGrid stepped by EnvPool's C++ port, drawn by the tile atlas"),
    "norm_reward": Key(True, bool, help="divide rewards by the running std of the return"),
    "clip_reward": Key(1.0, float, help="clip normalised rewards to [-clip_reward, clip_reward]"),
    # PPO
    "n_steps": Key(500_000, int, help="total environment steps over all envs"),
    "n_rollout_steps": Key(128, int, help="steps per env per rollout"),
    "n_epochs": Key(3, int, help="PPO epochs over each rollout"),
    "n_batches": Key(8, int, help="minibatches per epoch"),
    "learning_rate": Key(1e-4, float, help="optimizer learning rate (its start, with lr_decay)"),
    "lr_decay": Key("none", str, choices=DECAYS, help="decay of the learning rate to min_lr at the end of training"),
    "min_lr": Key(1e-6, float, help="final learning rate of a decay"),
    "ent_coef": Key(0.05, float, help="entropy bonus weight"),
    "ent_decay": Key("none", str, choices=DECAYS, help="decay of ent_coef to min_ent_coef"),
    "min_ent_coef": Key(0.0, float, help="final entropy weight of a decay"),
    "clip_range": Key(0.2, float, help="PPO's clip range of the probability ratio"),
    "clip_decay": Key("none", str, choices=DECAYS, help="decay of clip_range to min_clip_range"),
    "min_clip_range": Key(0.05, float, help="final clip range of a decay"),
    "clip_range_vf": Key(None, float, optional=True, help="null: no value clipping"),
    "gamma": Key(0.99, float, help="discount"),
    "gae_lambda": Key(0.99, float, help="GAE lambda"),
    "vf_coef": Key(0.5, float, help="value-loss weight"),
    "max_grad_norm": Key(0.5, float, help="gradient norm clip"),
    "adv_norm": Key(True, bool, help="normalise advantages per minibatch"),
    "optimizer": Key("AdamW", str, choices=("Adam", "AdamW"), help="the papers used AdamW"),
    "epsilon": Key(1e-8, float, help="optimizer epsilon"),
    # language-model memory (HELM family)
    "lm": Key("minilm", str, help="hub id or local dir; 'minilm' = offline pretrained MiniLM"),
    "lm_mode": Key("auto", str, choices=("auto", "causal", "bidirectional"),
                    help="causal: one token per step through a key/value cache; bidirectional: re-encode the window each "
                         "step (BERT-style); auto: bidirectional for encoder-only models, else causal"),
    "lm_layers": Key(None, int, optional=True, help="keep only the first N LM layers"),
    "mem_len": Key(511, int, help="tokens the LM memory keeps per env"),
    "mem_reset": Key("auto", str, choices=("auto", "mask", "zero"),
                     help="episode start: zero the memory as the original (Transformer-XL only), or mask earlier "
                          "tokens; auto: zero for Transformer-XL, mask for other LMs"),
    "beta": Key(100.0, float, help="FrozenHopfield inverse temperature"),
    "hopfield_cache_size": Key(100_000, int, help="HELM: FrozenHopfield outputs kept in the exact LRU cache (0: none)"),
    # CLIP observations (HELMv2, SHELM)
    "clip_model": Key("openai/clip-vit-base-patch16", str, help="CLIP hub id or local dir (frozen)"),
    "clip_cache_size": Key(100_000, int, help="CLIP image features kept in the exact LRU cache (0: none)"),
    "topk": Key(1, int, help="SHELM: words retrieved (LM tokens fed) per env step"),
    "templates": Key("none", str, help="SHELM prompt templates: none, psychlab, avalon or a file"),
    "semantic_db": Key(None, str, optional=True, help="SHELM database file; null: data/semantic_db__<clip>__<lm>__<templates>.pt"),
    # a Transformer-XL trained from scratch (TrXL-PPO, gated as GTrXL)
    "trxl_layers": Key(2, int, help="TrXL-PPO: GTrXL blocks"),
    "trxl_dim": Key(128, int, help="TrXL-PPO: width of the blocks (divisible by trxl_heads)"),
    "trxl_heads": Key(4, int, help="TrXL-PPO: attention heads"),
    "trxl_mem_len": Key(64, int, help="TrXL-PPO: earlier positions of the episode each position attends to"),
}


def defaults() -> dict[str, Any]:
    return {name: key.default for name, key in SCHEMA.items()}


def _unknown_key(name: str) -> UserError:
    close = difflib.get_close_matches(name, SCHEMA, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UserError(f"unknown config key '{name}'{hint}")


def coerce(name: str, value: Any) -> Any:
    """Check (and for JSON numbers, convert) one value against the key's declared type."""
    if name not in SCHEMA:
        raise _unknown_key(name)
    key = SCHEMA[name]
    bad = UserError(
        f"config key '{name}': {value!r} is not a valid {key.type.__name__}"
        + (" or null" if key.optional else "")
    )
    if value is None:
        if key.optional:
            return None
        raise bad
    if key.type is bool:
        if isinstance(value, bool):
            out = value
        elif isinstance(value, int) and value in (0, 1):
            out = bool(value)
        else:
            raise bad
    elif key.type is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise bad
        out = value
    elif key.type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        out = float(value)
    else:
        if not isinstance(value, str):
            raise bad
        out = value
    if key.choices is not None and out not in key.choices:
        raise UserError(f"config key '{name}': {out!r} is not one of {', '.join(key.choices)}")
    return out


def parse_cli_value(name: str, text: str) -> Any:
    """Parse a ``--var KEY=VALUE`` string to the type of KEY (ints accept ``5e5``)."""
    if name not in SCHEMA:
        raise _unknown_key(name)
    key = SCHEMA[name]
    if text.lower() in ("null", "none"):
        return coerce(name, None)
    if key.type is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        return coerce(name, text)
    if key.type in (int, float):
        try:
            number: Any = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise UserError(
                    f"config key '{name}': {text!r} is not a valid {key.type.__name__}"
                ) from None
        return coerce(name, number)
    return coerce(name, text)


def load_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"config file {path} is a directory; give a JSON file such as {path / 'config.json'}")
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"config file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a JSON object")
    return {name: coerce(name, value) for name, value in data.items()}


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--var expects KEY=VALUE, got {pair!r}")
        name, text = pair.split("=", 1)
        out[name.strip()] = parse_cli_value(name.strip(), text.strip())
    return out


def resolve(config_file: str | Path, overrides: list[str], warn: bool = True, users_file: bool = True) -> dict[str, Any]:
    """Defaults < config file < ``--var`` overrides; with `warn`, settings the model ignores are reported.

    Only what the user set is reported: the `--var`s, and the file's keys when it is their file
    (`users_file`), not the project's default config.json that a plain `python main.py` reads.
    """
    cfg = defaults()
    from_file = load_file(config_file)
    from_cli = parse_overrides(overrides)
    cfg.update(from_file)
    cfg.update(from_cli)
    validate(cfg)
    if warn:
        warn_unused(cfg, (set(from_file) if users_file else set()) | set(from_cli))
    return cfg


def agent_keys() -> frozenset[str]:
    """Keys that only some agents read (from the model registry): setting one for another agent
    is reported, never silently ignored."""
    from models.registry import MODELS

    return frozenset(k for spec in MODELS.values() for k in spec.keys)

SEED_MAX = 2**32 - 1  # numpy's legacy seeds are 32-bit; gymnasium and torch accept more
N_STEPS_MAX = 10**10  # 400x the papers' largest budget (Procgen, 25M): a larger value is a typo

# (key, low, high, low inclusive, high inclusive); None: unbounded on that side
RANGES: tuple[tuple[str, float | None, float | None, bool, bool], ...] = (
    ("seed", 0, SEED_MAX, True, True),
    ("torch_threads", 1, 1024, True, True),
    ("best_min_episodes", 1, 100, True, True),
    ("ckpt_last_every_s", 0, 86_400, True, True),
    ("n_envs", 1, 4096, True, True),
    ("n_steps", 1, N_STEPS_MAX, True, True),
    ("n_rollout_steps", 1, 100_000, True, True),
    ("n_epochs", 1, 1000, True, True),
    ("n_batches", 1, None, True, True),
    ("learning_rate", 0, 1, False, True),
    ("min_lr", 0, 1, True, True),
    ("ent_coef", 0, None, True, True),
    ("min_ent_coef", 0, None, True, True),
    ("clip_range", 0, None, False, True),
    ("min_clip_range", 0, None, True, True),
    ("clip_range_vf", 0, None, False, True),
    ("gamma", 0, 1, False, True),
    ("gae_lambda", 0, 1, True, True),
    ("vf_coef", 0, None, True, True),
    ("max_grad_norm", 0, None, False, True),
    ("epsilon", 0, 1, False, False),
    ("clip_reward", 0, None, False, True),
    ("lm_layers", 1, None, True, True),
    ("mem_len", 1, 1_000_000, True, True),
    ("beta", 0, None, False, True),
    ("clip_cache_size", 0, None, True, True),
    ("hopfield_cache_size", 0, None, True, True),
    ("topk", 1, 10_000, True, True),
    ("trxl_layers", 1, 64, True, True),
    ("trxl_dim", 1, 8192, True, True),
    ("trxl_heads", 1, 256, True, True),
    ("trxl_mem_len", 1, 100_000, True, True),
)
DECAY_FLOORS = (("learning_rate", "lr_decay", "min_lr"), ("ent_coef", "ent_decay", "min_ent_coef"),
                ("clip_range", "clip_decay", "min_clip_range"))


def _interval(low, high, low_in: bool, high_in: bool) -> str:
    if high is None:
        return f"{'>=' if low_in else '>'} {low}"
    if low is None:
        return f"{'<=' if high_in else '<'} {high}"
    return f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


def validate(cfg: dict[str, Any]) -> None:
    """Every key's range, and the checks across keys that a single key's type cannot express."""
    for name, low, high, low_in, high_in in RANGES:
        value = cfg.get(name)
        if value is None:
            continue
        too_low = low is not None and (value < low if low_in else value <= low)
        too_high = high is not None and (value > high if high_in else value >= high)
        if too_low or too_high or value != value:  # value != value: NaN
            raise UserError(f"config key '{name}' must be {_interval(low, high, low_in, high_in)}, got {value}")
    for start, decay, floor in DECAY_FLOORS:
        if cfg[decay] != "none" and cfg[floor] > cfg[start]:
            raise UserError(f"config key '{floor}' ({cfg[floor]}) must not exceed '{start}' ({cfg[start]}) "
                            f"with {decay}={cfg[decay]}")
    if cfg["trxl_dim"] % cfg["trxl_heads"]:
        raise UserError(f"trxl_dim ({cfg['trxl_dim']}) must be divisible by trxl_heads ({cfg['trxl_heads']})")
    batch = cfg["n_envs"] * cfg["n_rollout_steps"]
    if batch % cfg["n_batches"]:
        raise UserError(f"n_envs * n_rollout_steps ({batch}) must be divisible by n_batches ({cfg['n_batches']})")


def unused_settings(cfg: dict[str, Any], explicit: set[str] | dict[str, Any]) -> list[str]:
    """Keys the user set (in `explicit`) to a non-default value that `cfg["model"]` does not read."""
    from models.registry import MODELS

    model_specific = agent_keys()
    spec = MODELS.get(cfg["model"])
    used = set(spec.keys) if spec is not None else model_specific
    return sorted(name for name in explicit
                  if name in model_specific and name not in used and cfg[name] != SCHEMA[name].default)


def warn_unused(cfg: dict[str, Any], explicit: set[str] | dict[str, Any], where: str = "") -> None:
    """One line on stderr naming the settings that the chosen model ignores."""
    unused = unused_settings(cfg, explicit)
    if unused:
        settings = ", ".join(f"{name}={cfg[name]!r}" for name in unused)
        print(f"warning: {cfg['model']} does not use {settings}{where}; ignored", file=sys.stderr)


def reference_markdown() -> str:
    """docs/configuration.md: every key with its type, default, allowed values and meaning (a test
    keeps the file equal to this, so the two cannot drift apart)."""
    from models.registry import MODELS

    ranges = {name: _interval(low, high, low_in, high_in) for name, low, high, low_in, high_in in RANGES}
    users: dict[str, list[str]] = {}
    for spec in MODELS.values():
        for key in spec.keys:
            users.setdefault(key, []).append(spec.name)
    lines = ["# Configuration keys", "",
             "Every key of a config (`config.json`, `--config FILE`, `--var KEY=VALUE`). Generated from the schema in "
             "`utils/config.py` by `python -m utils.config > docs/configuration.md`; a test keeps the two equal. A key "
             "only some models read is reported (one line) when set for another model.", "",
             "| key | type | default | allowed | read by | meaning |", "|---|---|---|---|---|---|"]
    for name, key in SCHEMA.items():
        kind = key.type.__name__ + (" or null" if key.optional else "")
        allowed = ", ".join(f"`{c}`" for c in key.choices) if key.choices else ranges.get(name, "")
        models = ", ".join(users[name]) if name in users else "all"
        default = "null" if key.default is None else json.dumps(key.default)
        lines.append(f"| `{name}` | {kind} | `{default}` | {allowed} | {models} | {key.help.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(reference_markdown(), end="")

