"""Train an agent: ``python main.py [--config FILE] [--var KEY=VALUE ...] [--seed N] [--run-id NAME]``.

Runs are written to ``experiments/<model>/<env>/<run_id>/``: the resolved config, TensorBoard
events and checkpoints. ``--resume RUN_DIR`` continues a run from its ``ckpt_last.pt``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "config.json"), help="JSON config (default: config.json)")
    parser.add_argument("--var", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--seed", type=int, help="shorthand for --var seed=N")
    parser.add_argument("--run-id", help="name of the run directory (default: date-time and seed)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from ckpt_last.pt")
    parser.add_argument("--experiments-dir", default="experiments", help="where run directories go")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def setup(args: argparse.Namespace):
    """Resolve config, run directory, envs, agent and trainer (new run or resumed)."""
    from trainers.run import build_trainer, new_run_dir
    from utils import config as config_lib
    from utils.checkpoint import load_checkpoint, resolve_checkpoint_path
    from utils.errors import UserError

    checkpoint = None
    if args.resume:
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise UserError(f"--resume: run directory not found: {run_dir}")
        checkpoint = load_checkpoint(resolve_checkpoint_path(run_dir, prefer="ckpt_last.pt"))
        cfg = dict(checkpoint["config"])
        overrides = config_lib.parse_overrides(args.var)
        if set(overrides) - {"n_steps", "device"}:
            raise UserError("--resume only accepts --var n_steps=... and --var device=... overrides")
        cfg.update(overrides)
    else:
        if args.seed is not None:
            args.var.append(f"seed={args.seed}")
        cfg = config_lib.resolve(args.config, args.var)
        if cfg["seed"] is None:
            cfg["seed"] = random.randrange(2**31)

    if checkpoint is None:
        run_dir = new_run_dir(cfg, Path(args.experiments_dir), args.run_id)
    trainer = build_trainer(cfg, run_dir, checkpoint, progress=not args.no_progress)
    return trainer, run_dir


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from trainers.ppo import NonFiniteLossError
    from utils.errors import UserError

    try:
        trainer, run_dir = setup(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted before training started", file=sys.stderr)
        return 130
    print(f"run directory: {run_dir}", file=sys.stderr)
    try:
        status = trainer.train()
    except NonFiniteLossError as err:
        print(f"error: {err}; training stopped, last good checkpoint kept in {run_dir}", file=sys.stderr)
        return 1
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        trainer.envs.close()
        if trainer.writer is not None:
            trainer.writer.close()
    if status == "interrupted":
        print(f"interrupted at step {trainer.step}; resume with: python main.py --resume {run_dir}", file=sys.stderr)
        return 130
    summary = {k: v for k, v in trainer.last_losses.items() if k.startswith("rollout/")}
    print(f"finished {trainer.step} steps in {run_dir}: {json.dumps(summary)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
