"""Agents by the papers' model names, built from the registry (`models.registry`)."""

from __future__ import annotations

import importlib

from models.registry import MODELS, spec_of


def _resolve(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def check_model(name: str) -> None:
    spec_of(name)


def build_agent(name: str, obs_shape: tuple[int, ...], n_actions: int, cfg: dict):
    spec = spec_of(name)
    if spec.memory is not None:
        from models.baselines import trained_memory_agent

        memory_cls = _resolve(spec.memory)
        return trained_memory_agent(tuple(obs_shape), n_actions, cfg, memory_cls)
    build = _resolve(spec.build)
    _quiet_transformers()  # once the agent's module has imported transformers
    return build(tuple(obs_shape), n_actions, cfg)


def _quiet_transformers() -> None:
    """No per-tensor 'Loading weights' bars or info logs from pretrained models we load."""
    import sys

    if "transformers" in sys.modules:
        from transformers.utils import logging

        logging.disable_progress_bar()
        logging.set_verbosity_error()


__all__ = ["MODELS", "build_agent", "check_model"]
