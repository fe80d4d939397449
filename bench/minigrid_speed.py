"""Env-only MiniGrid throughput for 16 envs on one core: today's RGB wrappers vs the tile atlas.

Rows (all same-step-autoreset vector envs from ``envs.minigrid.make_vector``, random actions,
56x56x3 observations, no model):

* ``minigrid wrappers``: minigrid's Python envs in ``RGBImgPartialObsWrapper`` + ``ImgObsWrapper``,
  ``SyncVectorEnv`` (the path before the atlas; ``renderer='minigrid'``);
* ``python + atlas``: the same Python envs returning their symbolic view, drawn by the atlas
  (``vec_env='sync'``, today's default);
* ``envpool + atlas``: EnvPool's C++ MiniGrid on one thread, drawn by the atlas (``vec_env='envpool'``);
* ``atlas render only``: ``render_views`` on a batch of 16 views, for scale.

The process is pinned to the least busy core and the rows run interleaved, ``--seconds`` each per
round, so that load from other processes falls on all of them; a row's figure is its best round
(the least disturbed), the mean in brackets.

    python bench/minigrid_speed.py                  # writes bench/results/minigrid_speed.json
    python bench/minigrid_speed.py --rounds 5 --seconds 2 --json /tmp/minigrid_speed.json
    python bench/minigrid_speed.py --smoke          # a second: one env, one short round, writes nothing

Without EnvPool (``pip install -e .[procgen]``) the EnvPool row is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from bench import smoke  # noqa: E402

N_ENVS = 16
ENV_IDS = ("MiniGrid-KeyCorridorS3R1-v0", "MiniGrid-MemoryS7-v0")
ROWS = {  # row -> (vec_env, renderer)
    "minigrid wrappers": ("sync", "minigrid"),
    "python + atlas": ("sync", "atlas"),
    "envpool + atlas": ("envpool", "atlas"),
}


def _busy_jiffies() -> dict[int, tuple[int, int]]:
    """cpu -> (busy, total) jiffies since boot, from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            values = list(map(int, fields))
            idle = values[3] + values[4]  # idle + iowait
            out[int(name[3:])] = (sum(values) - idle, sum(values))
    return out


def pin_to_least_busy_core(window_s: float = 0.5) -> tuple[int, dict[int, float]]:
    """Pin this process to the core that was least busy over ``window_s``; (core, busy fraction per core)."""
    allowed = os.sched_getaffinity(0)
    before = _busy_jiffies()
    time.sleep(window_s)
    after = _busy_jiffies()
    busy = {
        cpu: (after[cpu][0] - before[cpu][0]) / max(after[cpu][1] - before[cpu][1], 1)
        for cpu in allowed if cpu in before
    }
    core = min(busy, key=busy.get)
    os.sched_setaffinity(0, {core})
    return core, {cpu: round(b, 2) for cpu, b in sorted(busy.items())}


def timed_round(step, n_actions: int, seconds: float, rng: np.random.Generator) -> float:
    """Steps/s of ``step(actions)`` over at least ``seconds``."""
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(10):
            step(rng.integers(n_actions, size=N_ENVS))
        steps += 10 * N_ENVS
    return steps / elapsed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one timed round per row")
    parser.add_argument("--env", action="append", help=f"env id (repeatable; default {', '.join(ENV_IDS)})")
    parser.add_argument("--json", type=Path, default=None, help="default: bench/results/minigrid_speed.json; none with --smoke")
    parser.add_argument("--smoke", action="store_true", help="one env, one 0.05 s round: checks that this script still runs")
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(rounds=1, seconds=0.05, env=[ENV_IDS[0]])
        args = parser.parse_args(argv)
    elif args.json is None:
        args.json = ROOT / "bench" / "results" / "minigrid_speed.json"
    rows = dict(ROWS)
    if not smoke.installed("envpool"):
        print("skipped the EnvPool row (EnvPool is not installed: pip install -e .[procgen])", flush=True)
        del rows["envpool + atlas"]

    from envs.minigrid import make_vector
    from envs.minigrid_render import atlas, render_views

    core, busy = pin_to_least_busy_core()
    load_before = os.getloadavg()
    atlas_start = time.perf_counter()
    atlas()
    atlas_s = time.perf_counter() - atlas_start
    rng = np.random.default_rng(0)
    results: dict = {}
    for env_id in args.env or ENV_IDS:
        envs = {row: make_vector(env_id, N_ENVS, vec_env, renderer=renderer) for row, (vec_env, renderer) in rows.items()}
        steps = {row: env.step for row, env in envs.items()}
        n_actions = envs["minigrid wrappers"].single_action_space.n
        symbolic = envs["envpool + atlas" if "envpool + atlas" in envs else "python + atlas"].env
        views = np.stack([symbolic.reset(seed=0)[0][0]] * N_ENVS)
        steps["atlas render only"] = lambda _actions: render_views(views)
        for env in envs.values():
            env.reset(seed=0)
            for _ in range(20):  # warm-up
                env.step(rng.integers(n_actions, size=N_ENVS))
        rounds: dict[str, list[float]] = {row: [] for row in steps}
        for _ in range(args.rounds):
            for row, step in steps.items():
                rounds[row].append(timed_round(step, n_actions, args.seconds, rng))
        for env in envs.values():
            env.close()
        today = max(rounds["minigrid wrappers"])
        results[env_id] = {
            row: {
                "steps_per_s": round(max(r)), "mean_steps_per_s": round(float(np.mean(r))),
                "rounds": [round(x) for x in r], "speedup_vs_wrappers": round(max(r) / today, 1),
            }
            for row, r in rounds.items()
        }
        for row, r in results[env_id].items():
            print(f"{env_id:30s} {row:18s} {r['steps_per_s']:8d} ({r['mean_steps_per_s']}) steps/s  "
                  f"x{r['speedup_vs_wrappers']}", flush=True)

    import minigrid

    report = {
        "what": __doc__.splitlines()[0],
        "n_envs": N_ENVS,
        "figure": "best round's env steps/s (all envs together); mean of rounds in mean_steps_per_s",
        "rounds": args.rounds, "seconds_per_round": args.seconds,
        "atlas_build_s": round(atlas_s, 2),
        "machine": {
            "cpus": os.cpu_count(), "pinned_core": core, "busy_fraction_before": busy,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "note": "shared machine: other processes (training runs) were using the cores, so these are numbers under load",
        },
        "versions": {
            "python": platform.python_version(), "numpy": np.__version__,
            "minigrid": minigrid.__version__,
            "envpool": __import__("envpool").__version__ if "envpool + atlas" in rows else None,
        },
        "results": results,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
