"""Agent registry: the paper's model names -> agent classes (imported lazily)."""

from __future__ import annotations

import importlib

from utils.errors import UserError

MODELS: dict[str, str] = {
    "CNN-PPO": "models.cnn_ppo:CNNPPO",
    "Impala-PPO": "models.impala_ppo:ImpalaPPO",
    "HELM": "models.helm:HELM",
    "HELMv2": "models.helmv2:HELMv2",
    "SHELM": "models.shelm:SHELM",
}


def check_model(name: str) -> None:
    if name not in MODELS:
        raise UserError(f"unknown model '{name}': choose one of {', '.join(MODELS)}")


def build_agent(name: str, obs_shape: tuple[int, ...], n_actions: int, cfg: dict):
    check_model(name)
    module, cls = MODELS[name].split(":")
    agent_cls = getattr(importlib.import_module(module), cls)
    _quiet_transformers()
    return agent_cls(tuple(obs_shape), n_actions, cfg)


def _quiet_transformers() -> None:
    """No per-tensor 'Loading weights' bars or info logs from pretrained models we load."""
    import sys

    if "transformers" in sys.modules:
        from transformers.utils import logging

        logging.disable_progress_bar()
        logging.set_verbosity_error()
