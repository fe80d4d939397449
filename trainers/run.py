"""The one training entry point: a resolved config and a run directory in, a trained run out.

`main.py`, `sweep.py` (one call per Ray Tune trial), the benchmarks and the tests all train
through `build_trainer` / `train`, so a run looks the same whoever started it: the resolved
`config.json`, TensorBoard events and `ckpt_last.pt` / `ckpt_best.pt` in the run directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils.errors import UserError


def pick_device(name: str):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is available; use --var device=cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def apply_threads(threads: int | None) -> None:
    """Fewer threads than cores helps on a shared machine, where spinning OpenMP threads stall."""
    import torch

    if threads is not None:
        if threads < 1:
            raise UserError(f"torch_threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def new_run_dir(cfg: dict[str, Any], experiments: Path, run_id: str | None) -> Path:
    """The path of a fresh run directory `experiments/<model>/<env>/<run_id>`, never one that exists.

    It is created by `build_trainer` once the envs and the agent are built, so a config that fails
    there leaves nothing behind.
    """
    parent = Path(experiments) / cfg["model"] / cfg["env"]
    if run_id is not None:
        run_dir = parent / run_id
        if run_dir.exists():
            raise UserError(f"run directory {run_dir} already exists: use --resume {run_dir} or another --run-id")
    else:
        base = f"{time.strftime('%Y%m%d-%H%M%S')}-seed{cfg['seed']}"
        run_dir, n = parent / base, 1
        while run_dir.exists():
            n += 1
            run_dir = parent / f"{base}-{n}"
    return run_dir


def build_trainer(cfg: dict[str, Any], run_dir: Path | None, checkpoint: dict[str, Any] | None = None,
                  progress: bool = False, writer: bool = True):
    """Envs, agent and `PPOTrainer` for `cfg`, writing into `run_dir` (None: nothing is written).

    A new run's `run_dir` gets the resolved `config.json`; with `checkpoint` (a loaded
    `ckpt_last.pt`) the trainer continues from it and TensorBoard drops events logged after it.
    """
    from envs import make_env
    from models import build_agent
    from trainers.ppo import PPOTrainer
    from utils.checkpoint import seed_everything

    seed_everything(cfg["seed"])
    apply_threads(cfg["torch_threads"])
    device = pick_device(cfg["device"])
    envs = make_env(cfg["env"], cfg["n_envs"], cfg["vec_env"])
    agent = build_agent(cfg["model"], envs.single_observation_space.shape, int(envs.single_action_space.n), cfg)
    agent.to(device)
    summary = None
    if run_dir is not None:
        if checkpoint is None:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            (Path(run_dir) / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        if writer:
            from torch.utils.tensorboard import SummaryWriter

            summary = SummaryWriter(str(run_dir), purge_step=checkpoint["step"] if checkpoint else None)
    trainer = PPOTrainer(cfg, agent, envs, device, run_dir, summary, progress=progress)
    if checkpoint is not None:
        try:
            trainer.load_state_dict(checkpoint)
        except (ValueError, KeyError, RuntimeError) as err:
            raise UserError(f"checkpoint in {run_dir} does not match its config: {str(err).splitlines()[0]}") from None
    return trainer


def train(cfg: dict[str, Any], run_dir: Path, checkpoint: dict[str, Any] | None = None, progress: bool = False,
          on_update: Callable[[dict[str, float], int], None] | None = None,
          last_ckpt_every_s: float | None = None) -> tuple[str, dict[str, float]]:
    """Train `cfg` into `run_dir` (continuing from `checkpoint` if given) until `n_steps`.

    `on_update(logs, step)` is called after every PPO update (a sweep reports metrics with it);
    `last_ckpt_every_s` overrides how often `ckpt_last.pt` is refreshed (0: after every update).
    Returns ('done' | 'interrupted', the last update's logs); the envs and the writer are closed.
    """
    trainer = build_trainer(cfg, run_dir, checkpoint, progress)
    if last_ckpt_every_s is not None:
        trainer.last_ckpt_every_s = last_ckpt_every_s
    try:
        status = trainer.train(on_update=on_update)
    finally:
        trainer.envs.close()
        if trainer.writer is not None:
            trainer.writer.close()
    return status, trainer.last_losses
