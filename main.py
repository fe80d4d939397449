"""Train an agent: ``python main.py [--config FILE] [--var KEY=VALUE ...] [--seed N] [--run-id NAME]``.

Runs are written to ``experiments/<model>/<env>/<run_id>/``: the resolved config, TensorBoard
events and checkpoints. ``--resume RUN_DIR`` continues a run from its ``ckpt_last.pt``.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from utils.cli import OneLineArgumentParser, python_command  # noqa: E402  (standard library only)

# what --resume may change: how long to train and where; everything else would be another run
RESUME_OVERRIDES = ("n_steps", "device", "torch_threads")


def parse_args(argv: list[str] | None = None):
    parser = OneLineArgumentParser(description=__doc__)
    parser.add_argument("--config", help="JSON config (default: config.json)")
    parser.add_argument("--var", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--seed", type=int, help="shorthand for --var seed=N")
    parser.add_argument("--run-id", help="name of the run directory (default: date-time and seed)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help=f"continue the run in RUN_DIR from ckpt_last.pt (--var {', '.join(RESUME_OVERRIDES)} only)")
    parser.add_argument("--experiments-dir", help="where run directories go (default: experiments)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def resume_setup(args) -> tuple[dict, dict, Path, dict]:
    """The checkpoint, its config with the allowed overrides, the run directory of `--resume` and
    the overrides that change the config ({key: (old, new)})."""
    from utils import config as config_lib
    from utils.checkpoint import load_checkpoint, remove_stale_temporaries
    from utils.errors import UserError

    run_dir = Path(args.resume)
    if run_dir.is_file():  # RUN/ckpt_last.pt: the run is its directory
        if run_dir.name != "ckpt_last.pt":
            raise UserError(f"--resume takes a run directory (it continues from its ckpt_last.pt), not {run_dir}")
        run_dir = run_dir.parent
    if not run_dir.is_dir():
        raise UserError(f"--resume: run directory not found: {run_dir}")
    given = [flag for flag, value in (("--config", args.config), ("--seed", args.seed), ("--run-id", args.run_id),
                                      ("--experiments-dir", args.experiments_dir)) if value is not None]
    if given:
        raise UserError(f"--resume continues the run as configured; {', '.join(given)} would make it another run "
                        "(start a new one instead)")
    overrides = config_lib.parse_overrides(args.var)
    refused = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if refused:
        raise UserError(f"--resume accepts only --var {', '.join(RESUME_OVERRIDES)}; not {', '.join(refused)}")
    remove_stale_temporaries(run_dir)
    last = run_dir / "ckpt_last.pt"
    if not last.is_file():
        hint = " (ckpt_best.pt is a policy for eval.py, not a training state)" if (run_dir / "ckpt_best.pt").exists() else ""
        raise UserError(f"--resume: no ckpt_last.pt in {run_dir}; nothing to resume{hint}")
    checkpoint = load_checkpoint(last)
    cfg = dict(checkpoint["config"])
    changes = {name: (cfg[name], value) for name, value in overrides.items() if cfg[name] != value}
    cfg.update(overrides)
    config_lib.validate(cfg)
    if checkpoint["step"] >= cfg["n_steps"]:
        raise UserError(f"the run in {run_dir} is already at step {checkpoint['step']} of n_steps={cfg['n_steps']}; "
                        "raise it with --var n_steps=N to train longer")
    return checkpoint, cfg, run_dir, changes


def setup(args):
    """Resolve config, run directory, envs, agent and trainer (new run or resumed)."""
    from trainers.run import build_trainer, new_run_dir
    from utils import config as config_lib

    changes = {}
    if args.resume:
        checkpoint, cfg, run_dir, changes = resume_setup(args)
    else:
        checkpoint = None
        if args.seed is not None:
            args.var.append(f"seed={args.seed}")
        cfg = config_lib.resolve(args.config or ROOT / "config.json", args.var, users_file=args.config is not None)
        if cfg["seed"] is None:
            cfg["seed"] = random.randrange(2**31)
        run_dir = new_run_dir(cfg, Path(args.experiments_dir or "experiments"), args.run_id)
    trainer = build_trainer(cfg, run_dir, checkpoint, progress=not args.no_progress)
    # only now is config.json rewritten: a resume that failed above changed nothing
    for name, (old, new) in changes.items():
        print(f"resume: {name} {old!r} -> {new!r} (recorded in {run_dir / 'config.json'})", file=sys.stderr)
    if checkpoint is not None:
        print(f"resuming from step {checkpoint['step']} of {cfg['n_steps']}", file=sys.stderr)
    return trainer, run_dir


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
    except OSError as err:  # e.g. a full disk under TensorBoard's writer
        where = f" ({err.filename})" if err.filename else f" (in {run_dir})"
        print(f"error: {err.strerror or err}{where}; resume from the last checkpoint once fixed", file=sys.stderr)
        return 1
    finally:
        trainer.envs.close()
        if trainer.writer is not None:
            try:
                trainer.writer.close()
            except OSError:
                pass
    if status == "interrupted":
        print(f"interrupted at step {trainer.step}; resume with: {python_command()} main.py --resume {run_dir}",
              file=sys.stderr)
        return 128 + (trainer.stop_signal or 2)
    summary = {k: v for k, v in trainer.last_losses.items() if k.startswith("rollout/")}
    result = json.dumps(summary) if summary else "no episode finished (episodes are longer than the run)"
    print(f"finished {trainer.step} steps in {run_dir}: {result}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
