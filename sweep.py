"""Many seeds x configs x grid values as Ray Tune trials: on this machine, or on a Ray cluster.

    python sweep.py --config configs/MiniGrid/KeyCorridor/{HELM,Impala-PPO,CNN-PPO}/config.json --seeds 5
    python sweep.py --config config.json --seeds 3 --grid beta=1,100 --var n_steps=100000 --name beta
    python sweep.py --name beta --resume            # continue an interrupted sweep

Every trial trains through the same entry point as `main.py` (`trainers.run.train`) into a normal
run directory, `experiments/<model>/<env>/<sweep>[-<key><value>...]-seed<seed>/`, with the same
config.json, TensorBoard events and checkpoints. The sweep's own state (its trial list and Ray
Tune's files) lives in `experiments/sweeps/<sweep>/`. A trial that fails is reported and the others
go on; Ctrl-C stops every trial with its `ckpt_last.pt` at most one update old; `--resume` skips
finished trials and continues the others from their `ckpt_last.pt`.

Seeds are 1..N for `--seeds N` (or `--seed-list 7,8,9`). Each trial uses `--cpus-per-trial` CPUs
(default 1, with `torch_threads=1` unless the config sets it) and `--gpus-per-trial` GPUs, and Ray
runs as many at once as the machine (or cluster) has room for. `--address` joins a running Ray
cluster (`ray start --head --port=6379` on one machine, `ray start --address=HEAD:6379` on the
others, all with one RAY_AUTH_TOKEN, and one --experiments-dir that every machine shares: README).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from utils.cli import OneLineArgumentParser  # noqa: E402  (standard library only)
from utils.errors import UserError  # noqa: E402

STATE_FILE = "sweep.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", default=[], metavar="FILE", help="config files (each a set of trials)")
    parser.add_argument("--seeds", type=int, help="seeds 1..N per config and grid point")
    parser.add_argument("--seed-list", help="explicit seeds, comma-separated (instead of --seeds)")
    parser.add_argument("--var", action="append", default=[], metavar="KEY=VALUE", help="override a key in every trial")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="one trial per value (crossed with other --grid)")
    parser.add_argument("--name", help="sweep name (default: from the configs' env); names the run directories")
    parser.add_argument("--experiments-dir", default="experiments")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--gpus-per-trial", type=float, default=0.0)
    parser.add_argument("--address", help="join a running Ray cluster (e.g. 10.0.0.1:6379 or auto)")
    parser.add_argument("--resume", action="store_true", help="continue the sweep --name from its saved state")
    return parser.parse_args(argv)


# -- the trials --------------------------------------------------------------------------------


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """`KEY=v1,v2` strings -> {KEY: [typed values]} (typed like --var, so bad keys or values fail now)."""
    from utils.config import parse_cli_value

    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        texts = [v.strip() for v in values.split(",")]
        if not sep or not key or not all(texts):
            raise UserError(f"--grid expects KEY=V1,V2,...; got {item!r}")
        if key in grid:
            raise UserError(f"--grid {key} given twice")
        grid[key] = [parse_cli_value(key, text) for text in texts]
    return grid


def parse_seeds(args: argparse.Namespace) -> list[int]:
    if args.seed_list is not None:
        try:
            seeds = [int(s) for s in args.seed_list.split(",")]
        except ValueError:
            raise UserError(f"--seed-list expects integers separated by commas, got {args.seed_list!r}") from None
    elif args.seeds is not None:
        seeds = list(range(1, args.seeds + 1))
    else:
        raise UserError("say how many seeds: --seeds N or --seed-list 1,2,3")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"seeds must be distinct non-negative integers, got {seeds}")
    return seeds


def _tag(value: Any) -> str:
    text = str(value).replace("/", "_").replace(" ", "")
    return text[-40:]  # long values (paths) keep their distinctive end


def build_trials(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    """(sweep name, one dict per trial: its resolved config and run directory)."""
    from utils import config as config_lib

    if not args.config:
        raise UserError("give at least one --config FILE (or --resume --name NAME)")
    grid = parse_grid(args.grid)
    seeds = parse_seeds(args)
    overrides = config_lib.parse_overrides(args.var)  # checks keys and types now
    if "seed" in overrides or "seed" in grid:
        raise UserError("set seeds with --seeds or --seed-list, not --var/--grid seed=")
    experiments = Path(args.experiments_dir).resolve()
    trials = []
    names = set()
    for config_file in args.config:
        base = config_lib.resolve(config_file, args.var, warn=False)
        # what the user set: their --var and --grid, and the file's keys, unless the grid picks the
        # model (then each model is checked against its own settings, not the file's other model)
        explicit = set(overrides) | set(grid) | (set() if "model" in grid else set(config_lib.load_file(config_file)))
        names.add(base["env"])
        for values in itertools.product(*grid.values()):
            point = dict(zip(grid, values))
            for seed in seeds:
                cfg = dict(base, **point, seed=seed)
                if base["torch_threads"] is None:
                    cfg["torch_threads"] = max(1, int(args.cpus_per_trial))
                config_lib.validate(cfg)
                if seed == seeds[0]:
                    config_lib.warn_unused(cfg, explicit, where=f" (trial {point or config_file})")
                trials.append({"cfg": cfg, "point": point, "config_file": str(Path(config_file).resolve())})
    name = args.name or "-".join(sorted(names)).replace("/", "_")
    for trial in trials:
        suffix = "".join(f"-{key}{_tag(value)}" for key, value in trial["point"].items())
        run_id = f"{name}{suffix}-seed{trial['cfg']['seed']}"
        trial["run_dir"] = str(experiments / trial["cfg"]["model"] / trial["cfg"]["env"] / run_id)
    run_dirs = [t["run_dir"] for t in trials]
    if len(set(run_dirs)) != len(run_dirs):
        raise UserError("two trials would share a run directory (the same config given twice?)")
    return name, trials


# -- fitting trials onto a GPU -------------------------------------------------------------------

GPU_OVERHEAD_BYTES = 600 * 2**20  # per trial: CUDA context, the CNN and heads, the optimiser, activations


def trial_gpu_bytes(cfg: dict[str, Any]) -> int:
    """About what one trial holds on its GPU: a frozen LM's weights and key/value buffers, and the rest."""
    from models.registry import spec_of

    if spec_of(cfg["model"]).kind != "frozen_lm":
        return GPU_OVERHEAD_BYTES
    from models.frozen_lm import estimate_memory_bytes

    lm = estimate_memory_bytes(cfg["lm"], cfg["mem_len"], cfg["n_envs"], cfg["precision"])
    return GPU_OVERHEAD_BYTES + (lm or 0)


def check_gpu_plan(cfgs: list[dict[str, Any]], gpus_per_trial: float, gpu_bytes: int | None, address: str | None) -> None:
    """Refuse, before anything starts, trials that cannot fit: each loads its own copy of its LM, so
    1 / gpus_per_trial of them share one GPU's memory."""
    if gpus_per_trial <= 0:
        return
    if gpu_bytes is None:
        if address is None:  # Ray would keep every trial pending for ever
            raise UserError(f"--gpus-per-trial {gpus_per_trial:g} but this machine has no CUDA GPU; leave it out "
                            "(CPU trials), or join a cluster with GPUs with --address")
        return
    per_gpu = max(1, math.floor(1 / gpus_per_trial + 1e-9))
    need = max(trial_gpu_bytes(cfg) for cfg in cfgs)
    if per_gpu * need > gpu_bytes:
        raise UserError(f"{per_gpu} trials per GPU (--gpus-per-trial {gpus_per_trial:g}) need about {per_gpu} x "
                        f"{need / 2**30:.1f} GiB (each its own frozen LM and key/value buffers), but the GPU has "
                        f"{gpu_bytes / 2**30:.0f} GiB: raise --gpus-per-trial, or lower n_envs or mem_len")


def local_gpu_bytes() -> int | None:
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


# -- one trial (runs in a Ray worker) ----------------------------------------------------------


def trial_status(run_dir: str, n_steps: int) -> tuple[str, int]:
    """('finished' | 'resumable' | 'new', step of ckpt_last.pt) for a trial's run directory."""
    from utils.checkpoint import load_checkpoint

    last = Path(run_dir) / "ckpt_last.pt"
    if not last.is_file():
        return "new", 0
    step = int(load_checkpoint(last)["step"])
    return ("finished" if step >= n_steps else "resumable"), step


def run_trial(config: dict[str, Any]) -> None:
    """Ray Tune's function for one trial: train (or resume) into its run directory, reporting per update."""
    from ray import tune

    from trainers.run import train
    from utils.checkpoint import load_checkpoint, remove_stale_temporaries

    cfg, run_dir = config["trial"]["cfg"], Path(config["trial"]["run_dir"])
    if run_dir.is_dir():
        remove_stale_temporaries(run_dir)
    status, step = trial_status(str(run_dir), cfg["n_steps"])
    if status == "finished":
        tune.report({"step": step, "done_before": 1})
        return
    checkpoint = None
    if status == "resumable":
        checkpoint = load_checkpoint(run_dir / "ckpt_last.pt")
        checkpoint["config"] = dict(checkpoint["config"], n_steps=cfg["n_steps"])
    elif run_dir.exists():  # started but never checkpointed: start again, without its stale events
        for stale in run_dir.glob("events.out.tfevents.*"):
            stale.unlink()

    def report(logs: dict[str, float], step: int) -> None:
        tune.report({"step": step, "steps_per_s": logs.get("time/fps", 0.0),
                     "ep_rew_mean": logs.get("rollout/ep_rew_mean", float("nan")),
                     "success_rate": logs.get("rollout/success_rate", float("nan"))})

    try:
        train(checkpoint["config"] if checkpoint else cfg, run_dir, checkpoint, on_update=report, last_ckpt_every_s=0.0)
    except UserError as err:  # a user's mistake (a missing LM, a bad file): its one line, not Ray's traceback
        tune.report({"user_error": str(err)})


# -- the sweep ---------------------------------------------------------------------------------


def trial_name(trial) -> str:
    """<model>-<run id>: unique within a sweep (run ids repeat across models)."""
    return trial_name_of(trial.config["trial"])


def trial_name_of(trial: dict[str, Any]) -> str:
    run_dir = Path(trial["run_dir"])
    return f"{run_dir.parent.parent.name}-{run_dir.name}"


STATUS_EVERY_S = 60.0


def StatusTable(names: list[str]):  # noqa: N802 (a class built on first use: Ray is imported lazily)
    """A Tune callback: one compact table of every trial (full names) at most once a minute and at
    the end, and one line when a trial ends."""
    import time

    from ray.tune import Callback

    class _StatusTable(Callback):
        def __init__(self) -> None:
            self.rows = {name: {"status": "pending", "step": 0, "steps_per_s": None, "ep_rew_mean": None} for name in names}
            self.last = time.monotonic()

        def row(self, trial) -> dict[str, Any]:
            return self.rows.setdefault(trial_name(trial), {"status": "pending", "step": 0, "steps_per_s": None,
                                                            "ep_rew_mean": None})

        def on_trial_start(self, iteration, trials, trial, **info):
            self.row(trial)["status"] = "running"

        def on_trial_result(self, iteration, trials, trial, result, **info):
            row = self.row(trial)
            if result.get("user_error"):
                row["status"] = "failed"
                return
            row.update({k: result.get(k) for k in ("step", "steps_per_s", "ep_rew_mean")},
                       status="finished before" if result.get("done_before") else "running")
            if time.monotonic() - self.last >= STATUS_EVERY_S:
                self.print()

        def on_trial_complete(self, iteration, trials, trial, **info):
            row = self.row(trial)
            row["status"] = "done" if row["status"] == "running" else row["status"]
            print(f"trial {trial_name(trial)} {row['status']} at {row['step']:,} env steps", file=sys.stderr, flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.row(trial)["status"] = "failed"
            print(f"trial {trial_name(trial)} failed (the reason follows at the end)", file=sys.stderr, flush=True)

        def on_experiment_end(self, trials, **info):
            self.print()

        def print(self) -> None:
            self.last = time.monotonic()
            width = max(len(name) for name in self.rows)
            fmt = lambda v, spec: "-" if v is None or v != v else format(v, spec)  # noqa: E731
            lines = [f"{'trial':<{width}}  {'status':<15} {'env steps':>10} {'steps/s':>8} {'return':>7}"]
            for name, row in self.rows.items():
                lines.append(f"{name:<{width}}  {row['status']:<15} {row['step']:>10,} {fmt(row['steps_per_s'], '.0f'):>8} "
                             f"{fmt(row['ep_rew_mean'], '.3f'):>7}")
            print("\n".join(lines), file=sys.stderr, flush=True)

    return _StatusTable()


def save_state(state_dir: Path, name: str, trials: list[dict[str, Any]], argv: list[str]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps({"name": name, "argv": argv, "trials": trials}, indent=1) + "\n")
    os.replace(tmp, state_dir / STATE_FILE)


def load_state(state_dir: Path) -> dict[str, Any]:
    path = state_dir / STATE_FILE
    if not path.is_file():
        raise UserError(f"no sweep to resume: {path} not found")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"sweep state {path} is unreadable ({err})") from None


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail at once on a Ray address that does not answer (ray.init would retry for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address expects HOST:PORT (or auto), got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return
    except OSError as err:
        raise UserError(f"cannot reach the Ray cluster at {address} ({err.strerror or err}); is `ray start --head` running there?") from None


def start_ray(address: str | None):
    try:
        import ray
    except ImportError:
        raise UserError("sweep.py needs Ray Tune: pip install -e '.[sweep]'") from None
    # Trials keep the sweep's working directory (relative paths such as data/ stay valid).
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # Tune's legacy output engine prints nothing at verbose=0: no boxes, no Tuner.restore() or
    # `tensorboard --logdir /tmp/ray/...` hints that would contradict ours (StatusTable says it all)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import logging

    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    if address and address != "auto":
        check_reachable(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
        else:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as err:
        reason = str(err).splitlines()[0]
        if "InvalidAuthToken" in str(err.__cause__):  # Ray turns token auth on for a head that finds ~/.ray/auth_token
            reason += "; the cluster wants a token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or ~/.ray/auth_token) as on its nodes"
        raise UserError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {reason}") from None
    return ray


def run_sweep(args: argparse.Namespace, argv: list[str]) -> tuple[str, dict[str, list[str]]]:
    from trainers.run import check_run_id

    experiments = Path(args.experiments_dir).resolve()
    created: Path | None = None  # what this call wrote, removed again if Ray cannot start
    if args.name is not None:
        check_run_id(args.name, "--name")  # it names folders inside the experiments directory
    if args.address and args.address != "auto":
        check_reachable(args.address)  # before anything is written: a rerun must not find a half-made sweep
    if args.resume:
        if not args.name:
            raise UserError("--resume needs --name NAME of the sweep")
        if args.config or args.grid or args.var or args.seeds or args.seed_list:
            raise UserError("--resume continues the sweep as it was started; it takes no --config/--var/--grid/--seeds")
        state = load_state(experiments / "sweeps" / args.name)
        name, trials = state["name"], state["trials"]
        from utils.checkpoint import upgrade_config

        for trial in trials:  # a sweep started by an older version: keys added since take their defaults
            trial["cfg"] = upgrade_config(trial["cfg"], f"sweep {name}, trial {trial['run_dir']}")
        check_gpu_plan([t["cfg"] for t in trials], args.gpus_per_trial,
                       None if args.address else local_gpu_bytes(), args.address)
    else:
        name, trials = build_trials(args)
        state_dir = experiments / "sweeps" / name
        if (state_dir / STATE_FILE).exists():
            raise UserError(f"sweep {name!r} exists in {state_dir}: continue it with --resume --name {name}, or pick another --name")
        taken = [t["run_dir"] for t in trials if Path(t["run_dir"]).exists()]
        if taken:
            raise UserError(f"run directory {taken[0]} already exists; pick another --name")
        check_gpu_plan([t["cfg"] for t in trials], args.gpus_per_trial,
                       None if args.address else local_gpu_bytes(), args.address)
        made_state_dir = not state_dir.exists()
        save_state(state_dir, name, trials, argv)
        created = state_dir if made_state_dir else state_dir / STATE_FILE

    outcome: dict[str, list[str]] = {"finished_before": [], "done": [], "failed": [], "stopped": []}
    todo = []
    for trial in trials:
        if trial_status(trial["run_dir"], trial["cfg"]["n_steps"])[0] == "finished":
            outcome["finished_before"].append(trial["run_dir"])
        else:
            todo.append(trial)
    print(f"sweep {name}: {len(trials)} trials, {len(outcome['finished_before'])} finished before, {len(todo)} to run",
          file=sys.stderr)
    if not todo:
        return name, outcome

    try:
        start_ray(args.address)
    except UserError:
        if created is not None:  # nothing ran: leave nothing behind, so the same command can be rerun
            shutil.rmtree(created) if created.is_dir() else created.unlink(missing_ok=True)
        raise
    from ray import tune

    # Ray Tune's own files (its experiment state, per-trial logs) are not the runs: they stay out of
    # experiments/, where TensorBoard would show them as duplicate runs, and go when the sweep ends
    storage = tempfile.mkdtemp(prefix=f"helm-sweep-{name}-")
    tuner = tune.Tuner(
        tune.with_resources(run_trial, {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}),
        param_space={"trial": tune.grid_search([{"cfg": t["cfg"], "run_dir": t["run_dir"]} for t in todo])},
        tune_config=tune.TuneConfig(
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            callbacks=[StatusTable([trial_name_of(t) for t in todo])],
            verbose=0,  # our one compact table instead of Ray's boxes, configs and hints
        ),
    )
    try:
        results = tuner.fit()
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    errors = {}
    for result in results:  # trials that never started (Ctrl-C while pending) come back without a config
        if result.config and result.error is not None:
            errors[result.config["trial"]["run_dir"]] = str(result.error).strip().splitlines()[-1]
        elif result.config and (result.metrics or {}).get("user_error"):
            errors[result.config["trial"]["run_dir"]] = f"error: {result.metrics['user_error']}"
    for trial in todo:
        run_dir = trial["run_dir"]
        if run_dir in errors:
            outcome["failed"].append(f"{run_dir}: {errors[run_dir]}")
        elif trial_status(run_dir, trial["cfg"]["n_steps"])[0] == "finished":
            outcome["done"].append(run_dir)
        else:
            outcome["stopped"].append(run_dir)
    return name, outcome


def main(argv: list[str] | None = None) -> int:
    from utils.cli import python_command

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        name, outcome = run_sweep(args, argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    done = len(outcome["done"]) + len(outcome["finished_before"])
    print(f"trials finished: {done}, failed: {len(outcome['failed'])}, stopped: {len(outcome['stopped'])}", file=sys.stderr)
    for line in outcome["failed"]:
        print(f"failed: {line}", file=sys.stderr)
    if outcome["stopped"]:
        print(f"continue with: {python_command()} sweep.py --name {name} --resume --experiments-dir {args.experiments_dir}", file=sys.stderr)
        return 130
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
