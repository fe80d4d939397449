"""Env-only steps/s of ``vec_env=sync`` vs ``async`` (and ``envpool`` where it applies), random actions.

``async`` steps each env in its own worker process (gymnasium ``AsyncVectorEnv``), so it pays for
inter-process messages every step and gains only where one env step costs more than that and
idle cores exist. This measures where that is, on the machine it runs on:

    python bench/vec_env_speed.py                         # writes bench/results/vec_env_speed.json
    python bench/vec_env_speed.py --ids MiniWorld-YMaze-v0 --seconds 5
    python bench/vec_env_speed.py --smoke         # seconds: KeyCorridor, 2 envs, 0.05 s per row, writes nothing

A backend or env that cannot run here (no EnvPool, no EGL for MiniWorld) is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

IDS = ["MiniGrid-KeyCorridorS3R1-v0", "MiniWorld-YMaze-v0", "RandomMaze-v0"]


def steps_per_s(env_id: str, vec_env: str, n_envs: int, seconds: float) -> float | None:
    from envs import make_env
    from utils.errors import UserError

    try:
        envs = make_env(env_id, n_envs, vec_env)
    except UserError as err:
        print(f"{env_id} {vec_env}: skipped ({err})", flush=True)
        return None
    try:
        rng = np.random.default_rng(0)
        envs.reset(seed=0)
        n_actions = int(envs.single_action_space.n)
        for _ in range(5):  # warm-up
            envs.step(rng.integers(0, n_actions, n_envs))
        steps, tick = 0, time.perf_counter()
        while time.perf_counter() - tick < seconds:
            envs.step(rng.integers(0, n_actions, n_envs))
            steps += n_envs
        return steps / (time.perf_counter() - tick)
    finally:
        envs.close()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", nargs="+", default=IDS)
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", default=None, help="default: bench/results/vec_env_speed.json; none with --smoke")
    parser.add_argument("--smoke", action="store_true", help="one env id, 2 envs, 0.05 s per row: checks that this script still runs")
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(ids=IDS[:1], n_envs=2, seconds=0.05)
        args = parser.parse_args(argv)
    elif args.json is None:
        args.json = str(ROOT / "bench" / "results" / "vec_env_speed.json")
    rows = []
    for env_id in args.ids:
        for vec_env in ("sync", "async", "envpool"):
            if vec_env == "envpool" and not env_id.startswith("MiniGrid-"):
                continue
            rate = steps_per_s(env_id, vec_env, args.n_envs, args.seconds)
            if rate is not None:
                rows.append({"env": env_id, "vec_env": vec_env, "steps_per_s": rate})
                print(f"{env_id:32s} {vec_env:8s} {rate:9.0f} env-steps/s", flush=True)
    result = {"setup": {"n_envs": args.n_envs, "seconds": args.seconds, "cpu_count": os.cpu_count(),
                        "load_average": os.getloadavg(), "machine": platform.platform(),
                        "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
              "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
