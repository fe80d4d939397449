"""How long ``eval.py`` takes for 20 HELM episodes, as a user runs it (a fresh process, startup included).

Each row runs ``eval.py --ckpt-path CKPT --n-episodes 20`` in a new process with one torch thread
and reports its wall-clock seconds. Rows vary the policy (``--random``: uniformly random actions,
so every version of the code plays exactly the same episodes; ``--deterministic``: the checkpoint's
greedy policy) and ``--n-envs`` (1: one episode at a time; 8: the old default; none: the default,
one env per episode up to 32).

Without ``--ckpt-path`` a HELM checkpoint is trained for one update (2048 steps) with config.json's
settings; its policy is untrained, so most KeyCorridor episodes run to the 270-step limit (the slow
case). ``--before-tree DIR`` also times another checkout of this project (e.g. a git worktree of
the commit before the speed work) on a checkpoint it trains itself with the same settings and
seed, with ``--random`` so that both play the same episodes.

    python bench/eval_speed.py                                     # writes bench/results/eval_speed.json
    python bench/eval_speed.py --ckpt-path RUN_DIR --policies deterministic --n-envs 1 8 0
    python bench/eval_speed.py --smoke       # seconds: a tiny HELM checkpoint, 2 episodes, writes nothing

``--smoke`` trains its checkpoint with a tiny GPT-2 memory for 16 steps and times one row of 2
episodes (deterministic, eval.py's default --n-envs); without ``--before-tree`` it says that it
skipped that comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import smoke  # noqa: E402


def env_one_thread() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train_checkpoint(tree: Path, experiments: Path, extra_vars: dict | None = None) -> Path:
    """One update of HELM with config.json's settings (and ``extra_vars``), trained by `tree`'s own main.py."""
    variables = {"n_steps": 2048, "torch_threads": 1, **(extra_vars or {})}
    cmd = [sys.executable, str(tree / "main.py"), "--run-id", "bench", "--experiments-dir", str(experiments),
           "--no-progress", *(x for k, v in variables.items() for x in ("--var", f"{k}={v}"))]
    subprocess.run(cmd, cwd=tree, env=env_one_thread(), check=True, capture_output=True, text=True)
    (ckpt,) = experiments.glob("*/*/bench/ckpt_last.pt")
    return ckpt


def time_eval(tree: Path, ckpt: Path, policy: str, n_envs: int, out: Path, episodes: int) -> dict:
    cmd = [sys.executable, str(tree / "eval.py"), "--ckpt-path", str(ckpt), "--n-episodes", str(episodes),
           f"--{policy}", "--out", str(out), "--device", "cpu"]
    if n_envs:
        cmd += ["--n-envs", str(n_envs)]
    tick = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env_one_thread(), capture_output=True, text=True)
    seconds = time.perf_counter() - tick
    if proc.returncode != 0:
        raise SystemExit(f"eval.py failed ({' '.join(cmd)}): {proc.stderr.strip().splitlines()[-1]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"seconds": seconds, "return_mean": summary["return_mean"], "length_mean": summary["length_mean"],
            "success_rate": summary["success_rate"]}


def git_describe(tree: Path) -> str:
    proc = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    return proc.stdout.strip()[:80] if proc.returncode == 0 else str(tree)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt-path", help="checkpoint or run directory (default: train one update of HELM)")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--policies", nargs="+", default=["random", "deterministic"], choices=("random", "deterministic"))
    parser.add_argument("--n-envs", nargs="+", type=int, default=[1, 8, 0], help="0: eval.py's default")
    parser.add_argument("--before-tree", help="another checkout to time with --random on its own checkpoint")
    parser.add_argument("--json", default=None, help="default: bench/results/eval_speed.json; none with --smoke")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny HELM checkpoint and 2 episodes per row, seconds: checks that this script still runs")
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(episodes=2, policies=["deterministic"], n_envs=[0])
        args = parser.parse_args(argv)
    elif args.json is None:
        args.json = str(ROOT / "bench" / "results" / "eval_speed.json")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        extra_vars = None
        if args.smoke:
            extra_vars = {**smoke.TINY_TRAINER, "n_steps": 16, "lm": smoke.tiny_lm(tmp / "lm"), "mem_len": smoke.MEM_LEN}
            if not args.before_tree:
                smoke.note("skipped the --before-tree comparison (no older checkout given)")
        ckpt = Path(args.ckpt_path) if args.ckpt_path else train_checkpoint(ROOT, tmp / "experiments", extra_vars)
        if args.before_tree:
            before = Path(args.before_tree).resolve()
            before_ckpt = train_checkpoint(before, tmp / "experiments-before", extra_vars)
            for n_envs in args.n_envs:
                result = time_eval(before, before_ckpt, "random", n_envs, tmp / f"before-{n_envs}", args.episodes)
                rows.append({"code": f"before: {git_describe(before)}", "policy": "random", "n_envs": n_envs, **result})
                print(rows[-1], flush=True)
        for policy in args.policies:
            for n_envs in args.n_envs:
                result = time_eval(ROOT, ckpt, policy, n_envs, tmp / f"{policy}-{n_envs}", args.episodes)
                rows.append({"code": f"now: {git_describe(ROOT)}", "policy": policy, "n_envs": n_envs, **result})
                print(rows[-1], flush=True)

    print("\n| code | policy | --n-envs | seconds | mean episode length | return |\n|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['code']} | {r['policy']} | {r['n_envs'] or 'default'} | {r['seconds']:.1f} | "
              f"{r['length_mean']:.1f} | {r['return_mean']:.3f} |")
    result = {
        "setup": {"episodes": args.episodes, "checkpoint": args.ckpt_path or "HELM, one update (2048 steps)",
                  "threads": 1, "cpu_count": os.cpu_count(), "machine": platform.platform(),
                  "load_average": os.getloadavg(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "rows": rows,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
