"""The one training entry point: a resolved config and a run directory in, a trained run out.

`main.py`, `sweep.py` (one call per Ray Tune trial), the benchmarks and the tests all train
through `build_trainer` / `train`, so a run looks the same whoever started it: the resolved
`config.json`, TensorBoard events and `ckpt_last.pt` / `ckpt_best.pt` in the run directory.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils.errors import UserError


def pick_device(name: str, fix: str = "--var device=cpu or auto"):
    """The torch device `name` (auto: CUDA when available); `fix` is how the caller's user picks another."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device=cuda but no CUDA device is available; use {fix}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def idle_cores() -> int:
    """The cores nobody else is using now (1-minute load average), at least 1.

    On a busy machine torch's default (a thread per core) stalls on OpenMP threads that wait for
    busy cores: 5x slower than 1 thread on a loaded 2-core machine, while on a quiet one 2 threads
    beat 1 by a third. The idle cores are within a few percent of the better choice in both cases.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores
    return max(1, min(cores, round(cores - load)))


def apply_threads(threads: int | None) -> int:
    """Set torch's CPU threads (None: `idle_cores()`); returns the number used."""
    import torch

    if threads is None:
        threads = idle_cores()
    if threads < 1:
        raise UserError(f"torch_threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    return threads


def check_run_id(run_id: str, flag: str = "--run-id") -> None:
    """A run id (or sweep name) names one directory inside the experiments directory, nothing else."""
    if not run_id or run_id in (".", "..") or "/" in run_id or os.sep in run_id or run_id.startswith("."):
        raise UserError(f"{flag} {run_id!r} must be a plain directory name (no '/', not starting with '.')")


def check_writable(path: Path) -> None:
    """Fail now, naming the path, if `path` could not be created as a directory (and written into).

    Nothing is created: the nearest existing ancestor must be a writable directory.
    """
    path = Path(path)
    ancestor = path
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise UserError(f"cannot create {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot create {path}: {ancestor} is not writable")


def new_run_dir(cfg: dict[str, Any], experiments: Path, run_id: str | None) -> Path:
    """The path of a fresh run directory `experiments/<model>/<env>/<run_id>`, never one that exists.

    It is created by `build_trainer` once the envs and the agent are built, so a config that fails
    there leaves nothing behind.
    """
    parent = Path(experiments) / cfg["model"] / cfg["env"]
    if run_id is not None:
        check_run_id(run_id)
        run_dir = parent / run_id
        if run_dir.exists():
            raise UserError(f"run directory {run_dir} already exists: use --resume {run_dir} or another --run-id")
    else:
        base = f"{time.strftime('%Y%m%d-%H%M%S')}-seed{cfg['seed']}"
        run_dir, n = parent / base, 1
        while run_dir.exists():
            n += 1
            run_dir = parent / f"{base}-{n}"
    check_writable(run_dir)
    return run_dir


def build_trainer(cfg: dict[str, Any], run_dir: Path | None, checkpoint: dict[str, Any] | None = None,
                  progress: bool = False, writer: bool = True):
    """Envs, agent and `PPOTrainer` for `cfg`, writing into `run_dir` (None: nothing is written).

    A new run's `run_dir` gets the resolved `config.json`; with `checkpoint` (a loaded
    `ckpt_last.pt`) the trainer continues from it. The TensorBoard writer is made last, so a run
    that fails to build or to load leaves no events file behind.
    """
    from envs import episode_limit, make_env, resolve_vec_env
    from models import build_agent
    from trainers.ppo import PPOTrainer
    from utils.checkpoint import seed_everything

    seed_everything(cfg["seed"])
    apply_threads(cfg["torch_threads"])
    device = pick_device(cfg["device"])
    # the run records the backend that ran (auto -> envpool or sync): seeds play out differently on each
    cfg["vec_env"] = resolve_vec_env(cfg["env"], cfg["vec_env"])
    envs = make_env(cfg["env"], cfg["n_envs"], cfg["vec_env"])
    agent = build_agent(cfg["model"], envs.single_observation_space.shape, int(envs.single_action_space.n), cfg)
    agent.to(device)
    memory = getattr(agent, "memory", None)
    if cfg["cuda_graph"]:
        _check_cuda_graph(cfg, agent, device, episode_limit(envs), envs)
    elif (note := getattr(memory, "rebuild_note", None)) and (text := note(episode_limit(envs))):
        print(f"note: {cfg['env']} with lm={cfg['lm']}: {text}", file=sys.stderr)
    trainer = PPOTrainer(cfg, agent, envs, device, run_dir, None, progress=progress)
    if checkpoint is not None:
        try:
            trainer.load_state_dict(checkpoint)
        except (ValueError, KeyError, RuntimeError) as err:
            envs.close()
            raise UserError(f"checkpoint in {run_dir} does not match its config: {str(err).splitlines()[0]}") from None
    if run_dir is not None:
        try:
            if checkpoint is None:
                Path(run_dir).mkdir(parents=True, exist_ok=False)
            _write_json_atomic(Path(run_dir) / "config.json", cfg)
            record_runtime(Path(run_dir), cfg, device, trainer.step)
            if writer:
                from torch.utils.tensorboard import SummaryWriter

                # events after the checkpoint's own step were lost with the run: hide them, keep it
                purge = checkpoint["step"] + 1 if checkpoint else None
                trainer.writer = SummaryWriter(str(run_dir), purge_step=purge)
        except OSError as err:
            envs.close()
            raise UserError(f"cannot write to {run_dir}: {err.strerror or err}") from None
    return trainer


def _check_cuda_graph(cfg: dict[str, Any], agent, device, limit: int | None, envs) -> None:
    """Refuse, in one line, a cuda_graph run that cannot be captured or would not be exact."""
    from trainers.captured_step import check_capturable

    try:
        check_capturable(agent, device)
        reason = getattr(agent.memory, "unsupported_reason", lambda limit: None)(limit)
        if reason:
            raise UserError(f"cuda_graph with lm={cfg['lm']} on {cfg['env']}: {reason}; or set cuda_graph=false")
    except UserError:
        envs.close()
        raise
    if not getattr(agent.encoder, "graph_safe", True):
        print(f"note: cuda_graph: {cfg['model']}'s encoder does host work (a frame cache, CLIP's), so it runs before "
              "each replay, outside the graph" + ("; hopfield_cache_size=0 captures it too" if cfg["model"] == "HELM" else ""),
              file=sys.stderr)


RUNTIME_FILE = "runtime.json"


def record_runtime(run_dir: Path, cfg: dict[str, Any], device, step: int) -> None:
    """Append where this (re)start of the run executes to `runtime.json`: device and env backend
    (and, in a sweep's trial, the Ray node id).

    Seeds play out differently on a GPU than on a CPU, and on EnvPool than on Python envs, so a
    report must know whether a run moved between them (`report.py` says so).
    """
    import datetime

    import torch

    from envs import env_backend

    path = run_dir / RUNTIME_FILE
    try:
        segments = json.loads(path.read_text())["segments"] if path.is_file() else []
    except (OSError, ValueError, KeyError, TypeError):
        segments = []  # an unreadable record is replaced, never a reason to stop training
    name = str(device) if device.type != "cuda" else f"cuda ({torch.cuda.get_device_name(device)})"
    segment = {
        "from_step": int(step),
        "device": name,
        "env_backend": env_backend(cfg["env"], cfg["vec_env"]),
        "vec_env": cfg["vec_env"],
        "torch": torch.__version__,
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    ray = sys.modules.get("ray")  # imported only in a sweep's trial: which node of the Ray cluster ran it
    if ray is not None and ray.is_initialized():
        segment["ray_node"] = ray.get_runtime_context().get_node_id()
    segments.append(segment)
    _write_json_atomic(path, {"segments": segments})


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


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
